"""Plain-PyTorch references of the mixer's non-scan ops, which ``dispatch`` routes to off the GPU.

``rms_norm_ref``: both of the model's norms, the block's pre-norm (mamba-ssm ``RMSNorm``) and the mixer's gated,
grouped norm (``RMSNormGated`` with norm_before_gate=False: the gate multiplies first, then each group of
``group_size`` channels is normalised); fused version ``ssmquant.kernels.triton.rmsnorm``.
``causal_conv1d_silu_ref``: the depthwise causal conv over time and its SiLU (mamba-ssm uses the causal-conv1d
package); fused version ``ssmquant.kernels.triton.conv1d``.
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


def causal_conv1d_silu_ref(x, weight, bias):
    """silu(causal depthwise conv1d over time): x (b, l, c) -> (b, l, c); weight (c, 1, k) or (c, k); bias (c,).

    Output position t sees inputs t - k + 1 .. t (zeros before the start), as ``nn.Conv1d(padding=k - 1)`` cut
    to the first l outputs.
    """
    c = x.shape[-1]
    w = weight.reshape(c, 1, -1)
    y = F.conv1d(x.transpose(1, 2), w, bias, padding=w.shape[-1] - 1, groups=c)[..., :x.shape[1]]
    return F.silu(y).transpose(1, 2)
