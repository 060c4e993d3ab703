"""RMSNorm of Mamba-2 in plain PyTorch: the reference that ``dispatch.rms_norm`` routes to off the GPU.

One function for both of the model's norms: the block's pre-norm (mamba-ssm ``RMSNorm``) and the mixer's gated,
grouped norm (``RMSNormGated`` with norm_before_gate=False: the gate multiplies first, then each group of
``group_size`` channels is normalised). The fused Triton version is ``ssmquant.kernels.triton.rmsnorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(x, weight, eps: float, *, z=None, group_size: int | None = None, out_dtype=None):
    """out = h / sqrt(mean_group(h²) + eps) * weight with h = x * silu(z) (or x), computed in fp32.

    x, z: (..., d); weight (d,); groups of ``group_size`` (default d) along the last dim. Returns (..., d) in
    ``out_dtype`` (default x's dtype).
    """
    h = x.float()
    if z is not None:
        h = h * F.silu(z.float())
    hg = h.unflatten(-1, (-1, group_size or h.shape[-1]))
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    return (hg.flatten(-2) * weight.float()).to(out_dtype or x.dtype)
