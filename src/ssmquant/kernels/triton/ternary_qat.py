"""Ternary fake quantization for QAT in two Triton kernels: one pass forward, one pass backward.

The reference is ``ssmquant.quant.ternary`` (``ternary_fake_quant`` = ``ternary_codes_and_scales`` +
``dequantize_ternary`` with its STE / LSQ backward). There, one forward of a (r, c) fp32 weight runs about eight
elementwise PyTorch kernels over it (divide, round, clamp, to int8, to float, times scale, cast to the compute
dtype) and the backward about ten more: at Mamba-2 1.3B's 1.24 G projection weights that is ~150 GB of memory
traffic per training step. Here:

forward   w_q = code(w / s) * s written straight in the compute dtype (bf16 under autocast): reads w (4 B) and
          writes w_q (2 B) per weight. code(v) = clamp(round_half_even(v), -1, 1) = sign(v) if |v| > 1/2 else 0,
          and w / s is the correctly rounded division (``div_rn``), as PyTorch's: the codes, hence w_q, are the
          reference's bit for bit (and so the packed model's).
backward  dL/dw = dL/dw_q (identity STE) written in fp32, and for a learnable scale the LSQ gradient
          sum_group dL/dw_q * (|v| <= 1 ? code - v : code) * grad_scale, recomputing v from w and s (nothing but the
          weight and scale is saved): reads w and the 16-bit gradient, writes the fp32 gradient.

A weight is handled as a flat array: with c = n * G, element e of the row-major (r, c) weight belongs to scale
e // G of the row-major (r, n) scale, so the kernels need no row / column index arithmetic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _code(w, s):
    v = tl.math.div_rn(w, s)
    return v, tl.where(v > 0.5, 1.0, tl.where(v < -0.5, -1.0, 0.0))


@triton.jit
def _fake_quant_fwd_kernel(w_ptr, s_ptr, out_ptr, numel, G: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    s = tl.load(s_ptr + offs // G, mask=m, other=1.0)
    _, q = _code(w, s)
    tl.store(out_ptr + offs, (q * s).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _fake_quant_bwd_kernel(w_ptr, s_ptr, g_ptr, gw_ptr, gs_ptr, ngroups, grad_scale, G: tl.constexpr,
                           BG: tl.constexpr, SCALE_GRAD: tl.constexpr):
    """BG groups of G weights per program: gw = g (fp32); gs[group] = LSQ sum if SCALE_GRAD."""
    grp = tl.program_id(0).to(tl.int64) * BG + tl.arange(0, BG)
    mg = grp < ngroups
    offs = grp[:, None] * G + tl.arange(0, G)[None, :]                 # (BG, G)
    m = mg[:, None]
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(gw_ptr + offs, g, mask=m)
    if SCALE_GRAD:
        w = tl.load(w_ptr + offs, mask=m, other=0.0)
        s = tl.load(s_ptr + grp, mask=mg, other=1.0)
        v, q = _code(w, s[:, None])
        d = tl.where(tl.abs(v) <= 1.0, q - v, q)
        tl.store(gs_ptr + grp, tl.sum(g * d, axis=1) * grad_scale, mask=mg)


_BLOCK = 4096


class _FusedTernaryFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, scale, group_size: int, out_dtype: torch.dtype, grad_scale: float):
        w = weight.contiguous()
        s = scale.detach().float().contiguous()
        out = torch.empty(w.shape, device=w.device, dtype=out_dtype)
        _fake_quant_fwd_kernel[(triton.cdiv(w.numel(), _BLOCK),)](w, s, out, w.numel(), G=group_size, BLOCK=_BLOCK,
                                                                 num_warps=8)
        ctx.save_for_backward(w, s)
        ctx.group_size, ctx.grad_scale, ctx.scale_dtype = group_size, grad_scale, scale.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w, s = ctx.saved_tensors
        G = ctx.group_size
        need_s = ctx.needs_input_grad[1]
        g = grad_out.contiguous()
        gw = torch.empty(w.shape, device=w.device, dtype=torch.float32)
        gs = torch.empty(s.shape, device=w.device, dtype=torch.float32) if need_s else gw
        ngroups = w.numel() // G
        BG = max(1, 4096 // G)
        _fake_quant_bwd_kernel[(triton.cdiv(ngroups, BG),)](w, s, g, gw, gs, ngroups, float(ctx.grad_scale), G=G,
                                                            BG=BG, SCALE_GRAD=need_s, num_warps=8)
        return (gw.to(w.dtype) if ctx.needs_input_grad[0] else None, gs.to(ctx.scale_dtype) if need_s else None,
                None, None, None)


def supported(weight: torch.Tensor, group_size: int) -> bool:
    """Whether the fused kernels take this weight: CUDA (or the interpreter), fp32, power-of-two groups."""
    import os

    on_device = weight.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"
    return (on_device and weight.dtype == torch.float32 and weight.dim() == 2 and group_size >= 16
            and group_size & (group_size - 1) == 0 and weight.shape[1] % group_size == 0)


def ternary_fake_quant_fused(weight, scale, group_size: int, out_dtype: torch.dtype, *, grad_scale: float = 1.0):
    """``ternary_fake_quant(weight, scale, group_size, grad_scale=...).to(out_dtype)`` in one pass each way.

    weight (r, c) fp32; scale (r, c / G), already storage-rounded (``ternary.round_scale``), may need a gradient.
    Returns (r, c) in ``out_dtype``, equal bit for bit to the reference; gradients equal to its up to the order
    of the LSQ group sum.
    """
    return _FusedTernaryFakeQuant.apply(weight, scale, group_size, out_dtype, grad_scale)
