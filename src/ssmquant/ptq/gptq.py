"""GPTQ for grouped ternary weights, with optional QEP weight correction.

GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
Algorithm 1; mirrors ``gptq.py: GPTQ.fasterquant`` of the official repository) quantizes the columns of
``W: (r, c)`` one at a time and spreads each column's error over the columns not yet quantized, so that the layer
output error ``‖X Wᵀ − X Ŵᵀ‖²`` (Hessian ``H = XᵀX``) stays small::

    H += damp · mean(diag H) · I;  U = chol(H⁻¹)ᵀ (upper)
    for column i:
        if i starts a group: s = fp16(absmean(W[:, group]))      # the *updated* weights, as GPTQ's groups do
        q_i  = clamp(round(W[:, i] / s), −1, 1)
        e    = (W[:, i] − q_i s) / U[i, i]
        W[:, j>i] −= e · U[i, j>i]                               # lazily, per block of columns

With ``H ∝ I`` the Cholesky factor is diagonal, nothing is propagated, and the result is round-to-nearest exactly.
Departures from the reference: ternary codes and absmean group scales instead of a uniform min/max grid; no
act-order (with groups it reorders the group boundaries; left out for simplicity); dead inputs (``H_ii = 0``) keep
their weights for the scale computation (GPTQ zeroes them, which would shrink the group's absmean).

QEP (Arai & Ichikawa 2025, "Quantization Error Propagation") notes that a layer's *input* already differs from the
full-precision model's once earlier layers are quantized (``X̂`` instead of ``X``) and corrects the target before
quantizing: ``W* = argmin ‖X Wᵀ − X̂ W*ᵀ‖² = W + W (X − X̂)ᵀ X̂ (X̂ᵀX̂)⁻¹``, blended as
``W_α = W + α (W* − W)`` (:func:`qep_target`); then GPTQ quantizes ``W_α`` with ``Ĥ = X̂ᵀ X̂``. With α = 0 this is
plain sequential GPTQ (inputs from the partly quantized model, which GPTQ's reference code also does).

Glossary: ``r`` rows (out_features), ``c`` cols (in_features), ``G`` group size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant.ternary import absmean_scale, round_scale


def _damped(H: Tensor, damp: float) -> Tensor:
    H = H.double().clone()
    H.diagonal().add_(damp * H.diagonal().mean().clamp_min(1e-12))
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    return H


def inverse_cholesky_upper(H: Tensor, damp: float = 0.01) -> Tensor:
    """Upper Cholesky factor of ``(H + damp·mean(diag H)·I)⁻¹``: ``(c, c)`` float64."""
    Hd = _damped(H, damp)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd))
    return torch.linalg.cholesky(Hinv, upper=True)


@torch.no_grad()
def gptq_ternary(w: Tensor, H: Tensor, group_size: int, *, damp: float = 0.01, block_size: int = 128,
                 scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """``w: (r, c)``, ``H: (c, c)`` -> ``codes: (r, c) int8``, ``scale: (r, c/G)`` in ``scale_dtype``.

    ``block_size`` is rounded down to whole groups (at least one). Column arithmetic runs in fp32 (as in the
    reference), so that with no error feedback the codes and scales are bit-identical to
    ``ternary_codes_and_scales``; the inverse Hessian is formed in float64.
    """
    r, c = w.shape
    if c % group_size:
        raise ValueError(f"{c} columns are not divisible by group_size={group_size}")
    block_size = max(1, block_size // group_size) * group_size
    W = w.detach().float().clone()
    Uinv = inverse_cholesky_upper(H, damp).float()
    codes = torch.zeros(r, c, dtype=torch.int8, device=w.device)
    scale = torch.zeros(r, c // group_size, dtype=torch.float32, device=w.device)
    for b0 in range(0, c, block_size):
        b1 = min(c, b0 + block_size)
        Wb = W[:, b0:b1].clone()
        Err = torch.zeros_like(Wb)
        for j in range(b1 - b0):
            i = b0 + j
            if i % group_size == 0:  # whole groups per block, so the group's columns are all in Wb
                g = i // group_size
                s = round_scale(absmean_scale(Wb[:, j:j + group_size], group_size), scale_dtype)[:, 0]
                scale[:, g] = s
            s = scale[:, i // group_size]
            q = (Wb[:, j] / s).round().clamp_(-1, 1)
            codes[:, i] = q.to(torch.int8)
            e = (Wb[:, j] - q * s) / Uinv[i, i]
            Wb[:, j:] -= e[:, None] * Uinv[i, i:b1][None, :]
            Err[:, j] = e
        W[:, b1:] -= Err @ Uinv[b0:b1, b1:]
    return codes, scale.to(scale_dtype)


@torch.no_grad()
def qep_target(w: Tensor, H_hat: Tensor, C: Tensor, alpha: float, damp: float = 0.01) -> Tensor:
    """QEP-corrected weight ``W + α W C Ĥ⁻¹`` with ``C = (X − X̂)ᵀ X̂``, ``Ĥ = X̂ᵀX̂`` (damped): ``(r, c)`` fp32."""
    if alpha == 0:
        return w.detach().float()
    Hd = _damped(H_hat, damp)
    delta = torch.linalg.solve(Hd, (w.double() @ C).T).T           # W C Ĥ⁻¹ (Ĥ symmetric)
    return (w.double() + alpha * delta).float()
