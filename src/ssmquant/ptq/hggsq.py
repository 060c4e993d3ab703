"""Hessian-guided Gumbel-Softmax rounding (HG-GSQ) of grouped ternary weights.

The Ternary Mamba paper reports this family (learned rounding guided by the layer Hessian, AdaRound-style, with a
Gumbel-Softmax relaxation) as a *negative* result for SSMs; this is our implementation so the claim can be checked.

How this works: scales stay the absmean ones (fp16-rounded). Each weight chooses between its two nearest ternary
levels, ``lo = clamp(floor(w/s), −1, 1)`` and ``hi = clamp(floor(w/s) + 1, −1, 1)`` (equal when ``|w/s| >= 1``),
through a logit ``a``. Training samples the binary-concrete (two-way Gumbel-Softmax) relaxation

    p = sigmoid((a + log u − log(1 − u)) / τ),   u ~ U(0, 1);   Ŵ = s · (lo + p (hi − lo))

and minimizes the Hessian-weighted output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` with ``ΔW = W − Ŵ`` and
``H = XᵀX`` from calibration inputs (``ptq.calib``), with Adam while ``τ`` anneals geometrically from ``tau[0]`` to
``tau[1]``. Logits start at ``logit(frac(w/s))``, whose hard decision ``a > 0`` is round-to-nearest. The result is
the hard decision. :func:`hggsq_ternary` returns it with its Hessian loss and round-to-nearest's, and
``guard=True`` keeps round-to-nearest for a layer where learning made things worse.

With ``H ∝ I`` every weight is independent and round-to-nearest is the exact optimum: the learned codes can only
tie or lose (they lose slightly on weights with ``w/s`` near a half-integer, where the relaxation cannot tell the
two levels apart), and the guarded result is round-to-nearest (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..quant.ternary import _grouped, absmean_scale, round_scale


def hessian_loss(w: Tensor, w_hat: Tensor, H: Tensor) -> Tensor:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (relative output error on the calibration inputs)."""
    d, H = (w - w_hat).double(), H.double()
    return ((d @ H) * d).sum() / ((w.double() @ H) * w.double()).sum().clamp_min(1e-30)


def hggsq_ternary(w: Tensor, H: Tensor, group_size: int, *, steps: int = 300, lr: float = 0.05,
                  tau: tuple[float, float] = (1.0, 0.05), guard: bool = True, seed: int = 0,
                  scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor, dict]:
    """``w: (r, c)``, ``H: (c, c)`` -> ``codes (r, c) int8``, ``scale (r, c/G)``, info {loss, rtn_loss, kept}."""
    w = w.detach().float()
    r, c = w.shape
    s = round_scale(absmean_scale(w, group_size), scale_dtype)           # (r, n) fp32, storage-representable
    s_full = s.repeat_interleave(group_size, dim=1)                      # (r, c)
    v = (_grouped(w, group_size) / s.unsqueeze(-1)).reshape(r, c)        # same division as the ternary codes
    fl = v.floor()
    lo, hi = fl.clamp(-1, 1), (fl + 1).clamp(-1, 1)
    frac = (v - fl).clamp(0.01, 0.99)
    logits = torch.log(frac / (1 - frac)).requires_grad_(True)
    Hf = H.float() / H.diagonal().mean().clamp_min(1e-30).float()        # scale-free
    norm = ((w @ Hf) * w).sum().clamp_min(1e-30)
    opt = torch.optim.Adam([logits], lr=lr)
    # Cosine-decayed step size: a constant Adam step random-walks the logits of weights whose two levels are
    # nearly equally good (w/s close to a half-integer), so late flips would be noise rather than signal.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(1, steps))))
    gen = torch.Generator(device=w.device).manual_seed(seed)
    for t in range(steps):
        temp = tau[0] * (tau[1] / tau[0]) ** (t / max(1, steps - 1))
        u = torch.rand(r, c, generator=gen, device=w.device).clamp_(1e-6, 1 - 1e-6)
        p = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temp)
        d = w - s_full * (lo + p * (hi - lo))
        loss = ((d @ Hf) * d).sum() / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        learned = torch.where(logits > 0, hi, lo)
        rtn = v.round().clamp(-1, 1)
        l_learned = float(hessian_loss(w, learned * s_full, H))
        l_rtn = float(hessian_loss(w, rtn * s_full, H))
        keep_rtn = guard and l_rtn < l_learned
        codes = (rtn if keep_rtn else learned).to(torch.int8)
    return codes, s.to(scale_dtype), {"loss": min(l_learned, l_rtn) if guard else l_learned,
                                      "learned_loss": l_learned, "rtn_loss": l_rtn, "kept_rtn": keep_rtn}
