"""Grouped ternary (W1.58) weight quantization: codes, scales, dequantization and the straight-through fake quant.

How this works
--------------
A weight ``w: (rows, cols)`` (``nn.Linear`` layout ``(out, in)``; an embedding is ``(vocab, d)``) is cut into groups
of ``G`` consecutive weights along ``cols``. Each group ``j`` of row ``r`` has one scale ``s[r, j]`` and codes::

    s      = max(mean(|w_group|), floor)            # BitNet b1.58 "absmean" (Ma et al. 2024, eq. 1-3)
    code   = clamp(round(w / s), -1, 1)             # int8 in {-1, 0, +1}
    w_q    = code * s                               # what the layer multiplies with

The scale is *stored* in a low precision dtype (fp16 by default, as llama.cpp's TQ1_0/TQ2_0 blocks do), so every
scale is rounded to that dtype **before** it is used for the codes and for ``w_q``; training then sees exactly the
weights that are deployed.

Bit exactness between training and deployment is by construction, not by tolerance: the training path
(:func:`ternary_fake_quant`) and the packed path (``PackedTernaryLinear``) both call the same two functions,
:func:`ternary_codes_and_scales` then :func:`dequantize_ternary`, on the same fp32 latent weight and the same
storage-rounded scale. ``code * s`` with ``code`` in {-1, 0, 1} is exact in any float format, and no
``w + (w_q - w).detach()`` trick is used: that sum is ``w_q`` only when ``w_q - w`` is exact in fp32 (true for fp16
scales and moderate ``|w|/s``, false for fp32 scales or large outliers). The straight-through estimator lives in a
custom ``autograd.Function`` whose forward returns ``dequantize_ternary(...)`` itself.

Gradients (``_TernaryFakeQuant.backward``):

* weights: identity straight-through estimator, ``dL/dw = dL/dw_q`` (BitNet b1.58: no clipping of the latent weight).
* scale (learnable mode only): the LSQ estimator (Esser et al. 2020, "Learned Step Size Quantization", eq. 3) with
  ``Qn = Qp = 1``. With ``v = w / s``::

      d w_q / d s = round(v) - v     if -1 <= v <= 1
                  = clamp(round(v))  otherwise (= sign(v))

  summed over the group and optionally multiplied by LSQ's gradient scale ``g = 1 / sqrt(N * Qp)``. LSQ's ``N`` is
  the number of weights sharing one step size; with one scale per group that is ``G`` (not the layer's numel).
  This is an estimator, not a derivative: the forward is piecewise ``code * s``, whose true derivative is ``code``.
  A finite-difference check therefore cannot validate it; :func:`ternary_fake_quant_ref` writes the same estimator
  as plain autograd over a ``round`` with a detached residual, and the tests compare the two.

Glossary: ``r`` rows (out_features or vocab), ``c`` cols (in_features or d_model), ``G`` group size, ``n = c / G``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..model import dispatch

# Smallest normal fp16 (2**-14), exactly representable in fp16, bf16 and fp32, so an all-zero group's floored scale
# is the same number before and after rounding to the storage dtype. Real absmean values are ~1e-2; a group below
# this floor is numerically zero and quantizes to all-zero codes whatever its scale.
SCALE_FLOOR = 2.0**-14

# Ternary codes reach +-1: LSQ's Qp (and Qn).
TERNARY_QP = 1


def _grouped(weight: Tensor, group_size: int) -> Tensor:
    """``(r, c) -> (r, n, G)`` view; ``c`` must be a multiple of ``group_size`` (checked by the config layer)."""
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"{cols} columns are not divisible by group_size={group_size}")
    return weight.reshape(rows, cols // group_size, group_size)


def absmean_scale(weight: Tensor, group_size: int, floor: float = SCALE_FLOOR) -> Tensor:
    """Per-group mean |w|, floored. ``weight: (r, c)`` -> ``(r, c / G)`` fp32 (not yet rounded to storage dtype)."""
    return _grouped(weight.detach().float(), group_size).abs().mean(dim=-1).clamp_min(floor)


def round_scale(scale: Tensor, scale_dtype: torch.dtype, floor: float = SCALE_FLOOR) -> Tensor:
    """Floor a scale and round it to ``scale_dtype``, returned as fp32 holding storage-representable values.

    Differentiable: ``clamp_min`` and the dtype casts pass the gradient straight through (zero below the floor),
    so a learnable scale keeps its fp32 master copy while the forward uses the rounded value. Rounding is monotone
    and the floor is representable, so the result never drops below ``floor``.
    """
    return scale.float().clamp_min(floor).to(scale_dtype).float()


def ternary_codes_and_scales(
    weight: Tensor,
    group_size: int,
    scale: Tensor | None = None,
    *,
    scale_dtype: torch.dtype = torch.float16,
    floor: float = SCALE_FLOOR,
) -> tuple[Tensor, Tensor]:
    """Ternary codes and stored scales of a weight. Shared by the training and the packed path.

    weight: (r, c) latent weight (computed in fp32 whatever its dtype).
    scale:  (r, c / G) scale to use, or None for the absmean of each group; floored and rounded to ``scale_dtype``.
    Returns ``codes: (r, c) int8 in {-1, 0, 1}`` and ``scale: (r, c / G)`` in ``scale_dtype``.
    """
    with torch.no_grad():
        s = absmean_scale(weight, group_size, floor) if scale is None else scale.detach()
        s = round_scale(s, scale_dtype, floor)  # (r, n) fp32, storage-representable
        v = _grouped(weight.detach().float(), group_size) / s.unsqueeze(-1)  # (r, n, G)
        codes = v.round().clamp_(-1, 1).to(torch.int8).reshape(weight.shape)
    return codes, s.to(scale_dtype)


def dequantize_ternary(codes: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """``codes: (r, c) int8`` times ``scale: (r, c / G)`` (any float dtype) -> ``(r, c)`` fp32.

    The single definition of a ternary weight's value: the fake-quant forward and the packed modules both call it.
    """
    w = _grouped(codes.float(), group_size) * scale.float().unsqueeze(-1)  # (r, n, G)
    return w.reshape(codes.shape)


class _TernaryFakeQuant(torch.autograd.Function):
    """Forward: ``dequantize_ternary(ternary_codes_and_scales(w, G, s))``. Backward: identity STE for ``w``, LSQ for
    ``s`` (see the module docstring). ``scale`` must already be storage-rounded (:func:`round_scale`)."""

    @staticmethod
    def forward(ctx, weight: Tensor, scale: Tensor, group_size: int, scale_dtype: torch.dtype, grad_scale: float):
        codes, stored = ternary_codes_and_scales(weight, group_size, scale, scale_dtype=scale_dtype)
        ctx.save_for_backward(weight, scale, codes)
        ctx.group_size, ctx.grad_scale = group_size, grad_scale
        return dequantize_ternary(codes, stored, group_size)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weight, scale, codes = ctx.saved_tensors
        grad_w = grad_out.to(weight.dtype) if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            g = ctx.group_size
            # Same division as the forward, so the in-range mask agrees with the codes that were used.
            v = _grouped(weight.float(), g) / scale.float().unsqueeze(-1)  # (r, n, G)
            q = _grouped(codes.float(), g)
            dwq_ds = torch.where(v.abs() <= TERNARY_QP, q - v, q)
            grad_s = (_grouped(grad_out.float(), g) * dwq_ds).sum(dim=-1) * ctx.grad_scale
            grad_s = grad_s.to(scale.dtype)
        return grad_w, grad_s, None, None, None


def ternary_fake_quant(
    weight: Tensor,
    scale: Tensor,
    group_size: int,
    *,
    scale_dtype: torch.dtype = torch.float16,
    grad_scale: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Fake-quantized weight ``(r, c)`` with STE/LSQ gradients, fp32 or in ``out_dtype`` (the compute dtype).

    weight: (r, c) latent weight. scale: (r, c / G), already passed through :func:`round_scale` (it may carry a
    gradient: learnable mode). grad_scale multiplies the scale gradient (LSQ's ``1/sqrt(G * Qp)`` or 1).

    With ``out_dtype`` and a CUDA weight this is the one place that picks the fused Triton kernels
    (``ssmquant.kernels.triton.ternary_qat``, one pass over the weight each way): they return the reference's
    ``dequantize_ternary(...).to(out_dtype)`` bit for bit, so training still sees exactly the deployed weights.
    """
    if out_dtype is not None and weight.is_cuda:
        fused = dispatch.triton_module("ternary_qat")
        if fused is not None and fused.supported(weight, group_size):
            return fused.ternary_fake_quant_fused(weight, scale, group_size, out_dtype, grad_scale=grad_scale)
    w_q = _TernaryFakeQuant.apply(weight, scale, group_size, scale_dtype, grad_scale)
    return w_q if out_dtype is None else w_q.to(out_dtype)


def ternary_fake_quant_ref(weight: Tensor, scale: Tensor, group_size: int, *, grad_scale: float = 1.0) -> Tensor:
    """Slow plain-autograd reference of :func:`ternary_fake_quant` (values equal up to fp rounding, same gradients).

    Written the way LSQ's paper writes it: ``s * round_ste(clamp(w / s, -1, 1))`` with the gradient-scale trick
    on ``s``; the weight term is detached and re-attached with an identity gradient (BitNet's unclipped STE).
    """
    rows, cols = weight.shape
    s = scale * grad_scale + (scale - scale * grad_scale).detach()
    s = s.repeat_interleave(group_size, dim=1)  # (r, c)
    v = (weight.detach().float() / s).clamp(-TERNARY_QP, TERNARY_QP)
    q = v + (v.round() - v).detach()
    return s * q + (weight - weight.detach())


def lsq_grad_scale(group_size: int) -> float:
    """LSQ's step-size gradient scale ``1 / sqrt(N * Qp)`` with ``N = group_size`` weights per scale."""
    return 1.0 / math.sqrt(group_size * TERNARY_QP)
