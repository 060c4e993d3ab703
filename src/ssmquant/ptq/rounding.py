"""Calibration-free grouped ternary rounding: round-to-nearest, grid-searched scales, James–Stein scale shrinkage.

All three keep the ternary format of ``quant/ternary.py`` (codes in {−1, 0, +1}, one fp16 scale per group of ``G``
inputs, ``w_q = code · s``) and differ only in the scale each group gets; codes are then round-to-nearest for that
scale, which is the best code for a given scale (the nearest of −s, 0, +s). Every scale is rounded to its storage
dtype *before* the codes are chosen and before errors are measured, so what is searched is what is deployed.

* :func:`rtn_ternary` — BitNet b1.58 absmean scale (= ``train.distill.post_hoc_ternary``).
* :func:`grid_search_ternary` — per group, the scale ``m · absmean`` over a grid of multipliers ``m`` that
  minimizes ``‖w − s·q(w/s)‖²``. The grid always starts with ``m = 1`` and a later multiplier wins only when its
  error is strictly lower, so no group's error can exceed round-to-nearest's.
* :func:`js_shrink_ternary` — positive-part James–Stein shrinkage of the group scales toward their mean
  (layer-wide or per row)::

      s_j   = absmean of group j                  (N groups share one target)
      σ²_j  = var(|w| in group j) / G             (sampling variance of that mean)
      m     = mean_j s_j
      λ     = min(1, (N − 3) · mean_j σ²_j / Σ_j (s_j − m)²)        (λ = 0 when N <= 3)
      s'_j  = s_j − λ (s_j − m)

  The classic estimator assumes one shared variance; we plug in the mean of the per-group variances. ``factor``
  fixes λ instead (0 = round-to-nearest, 1 = one scale for the whole layer / row).

Glossary: ``r`` rows (out_features), ``c`` cols (in_features), ``G`` group size, ``n = c / G``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant.ternary import (
    _grouped,
    absmean_scale,
    round_scale,
    ternary_codes_and_scales,
)


def rtn_ternary(w: Tensor, group_size: int, scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """``w: (r, c)`` -> ``codes: (r, c) int8``, ``scale: (r, n)`` (absmean, round-to-nearest codes)."""
    return ternary_codes_and_scales(w, group_size, scale_dtype=scale_dtype)


def group_errors(w: Tensor, codes: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """Per-group squared error ``‖w − code·s‖²``: ``(r, n)`` fp32."""
    d = _grouped(w.float(), group_size) - _grouped(codes.float(), group_size) * scale.float().unsqueeze(-1)
    return d.pow(2).sum(-1)


def default_grid(lo: float = 0.5, hi: float = 2.0, steps: int = 31) -> list[float]:
    """Multipliers of absmean to try: 1.0 first (the baseline), then ``steps`` values evenly in [lo, hi]."""
    grid = torch.linspace(lo, hi, steps).tolist()
    return [1.0] + [m for m in grid if m != 1.0]


@torch.no_grad()
def grid_search_ternary(w: Tensor, group_size: int, grid: list[float] | None = None,
                        scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """Per-group scale ``m · absmean`` (m in ``grid``, first entry 1.0) minimizing the group's squared error.

    Loops over multipliers (memory stays one weight-sized tensor). Returns ``codes``, ``scale`` like
    :func:`rtn_ternary`.
    """
    grid = default_grid() if grid is None else list(grid)
    if grid[0] != 1.0:
        grid = [1.0] + [m for m in grid if m != 1.0]  # the baseline first: ties keep absmean
    w = w.detach().float()
    base = absmean_scale(w, group_size)                                   # (r, n)
    best_s = best_err = None
    for m in grid:
        s = round_scale(base * m, scale_dtype)
        codes, stored = ternary_codes_and_scales(w, group_size, s, scale_dtype=scale_dtype)
        err = group_errors(w, codes, stored, group_size)
        if best_s is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s = torch.where(better, s, best_s)
            best_err = torch.where(better, err, best_err)
    return ternary_codes_and_scales(w, group_size, best_s, scale_dtype=scale_dtype)


@torch.no_grad()
def js_shrinkage_factor(w: Tensor, group_size: int, target: str = "layer") -> Tensor:
    """The data-driven λ of the module docstring: a scalar (``target="layer"``) or ``(r, 1)`` (``"row"``)."""
    a = _grouped(w.detach().float(), group_size).abs()                   # (r, n, G)
    s = a.mean(-1)                                                       # (r, n)
    var = a.var(-1, unbiased=True) / group_size if group_size > 1 else torch.zeros_like(s)
    if target == "layer":
        s, var = s.reshape(1, -1), var.reshape(1, -1)
    elif target != "row":
        raise ValueError(f"target={target!r}: use 'layer' or 'row'")
    n = s.shape[1]
    spread = (s - s.mean(1, keepdim=True)).pow(2).sum(1, keepdim=True)  # (1 or r, 1)
    lam = (n - 3) * var.mean(1, keepdim=True) / spread.clamp_min(1e-30)
    lam = lam.clamp(0.0, 1.0) if n > 3 else torch.zeros_like(lam)
    return lam.reshape(()) if target == "layer" else lam


@torch.no_grad()
def js_shrink_ternary(w: Tensor, group_size: int, factor: float | None = None, target: str = "layer",
                      scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """Group scales shrunk toward the layer (or row) mean by λ (data-driven unless ``factor`` is given)."""
    s = absmean_scale(w, group_size)                                     # (r, n)
    lam = js_shrinkage_factor(w, group_size, target) if factor is None else torch.tensor(float(factor))
    if target == "layer":
        m = s.mean()
    elif target == "row":
        m = s.mean(1, keepdim=True)
    else:
        raise ValueError(f"target={target!r}: use 'layer' or 'row'")
    shrunk = s - lam * (s - m)  # λ = 0 returns s unchanged, bit for bit
    return ternary_codes_and_scales(w, group_size, shrunk, scale_dtype=scale_dtype)
