"""RMSNorm and Mamba-2's gated, grouped RMSNorm for training: one Triton kernel forward, one backward.

    h   = x * silu(z)          (gated; plain RMSNorm: h = x)
    out = h / sqrt(mean_group(h^2) + eps) * weight        fp32 inside, written in ``out_dtype``

Mirrors ``ssmquant.model.mamba2.RMSNorm`` / ``GatedRMSNorm`` (mamba-ssm's ``RMSNorm`` and ``RMSNormGated`` with
norm_before_gate=False); the PyTorch reference is ``ssmquant.model.ops.rms_norm_ref``, used off the GPU. In
PyTorch each norm is ~10 elementwise kernels forward and ~20 backward over fp32 copies of the activations; here a
program reads a row's groups once and writes the output once, and the backward recomputes h and the group rms
from x and z (nothing saved but the inputs). x and z may be row-strided views (z is a slice of the in_proj output),
read in place.

Backward, per group with r = rsqrt(mean(h^2) + eps), hn = h * r, g = dout * weight:
    dh = r * (g - hn * mean(hn * g));  dweight = sum_rows dout * hn
    dx = dh * silu(z);  dz = dh * x * sigmoid(z) * (1 + z * (1 - sigmoid(z)))
dweight is summed per program over its rows and the partial sums are added in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, z_ptr, w_ptr, out_ptr, rows, D, s_x, s_z, eps, GS: tl.constexpr, BR: tl.constexpr,
                         NG: tl.constexpr, HAS_Z: tl.constexpr):
    """BR rows per program, each row as NG groups of GS: tiles (BR, NG, GS). x, z rows at strides s_x, s_z (a slice
    of a wider tensor is read in place); out contiguous."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    col = tl.arange(0, NG)[:, None] * GS + tl.arange(0, GS)[None, :]         # (NG, GS)
    m = (r < rows)[:, None, None]
    r64 = r.to(tl.int64)[:, None, None]
    off = r64 * D + col[None, :, :]
    h = tl.load(x_ptr + r64 * s_x + col[None, :, :], mask=m, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + r64 * s_z + col[None, :, :], mask=m, other=0.0).to(tl.float32)
        h = h * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=2) / GS + eps)                  # (BR, NG)
    w = tl.load(w_ptr + col).to(tl.float32)
    tl.store(out_ptr + off, (h * rstd[:, :, None] * w[None, :, :]).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rms_norm_bwd_kernel(x_ptr, z_ptr, w_ptr, do_ptr, dx_ptr, dz_ptr, dw_ptr, rows, D, s_x, s_z, eps, rows_per_prog,
                         GS: tl.constexpr, BR: tl.constexpr, NG: tl.constexpr, HAS_Z: tl.constexpr):
    """Rows [pid * rows_per_prog, ...) in tiles of BR; dw_ptr: (programs, D) fp32 partial sums."""
    pid = tl.program_id(0)
    col = tl.arange(0, NG)[:, None] * GS + tl.arange(0, GS)[None, :]
    w = tl.load(w_ptr + col).to(tl.float32)
    dw = tl.zeros((NG, GS), dtype=tl.float32)
    start = pid * rows_per_prog
    for r0 in range(start, start + rows_per_prog, BR):
        r = r0 + tl.arange(0, BR)
        m = ((r < rows) & (r < start + rows_per_prog))[:, None, None]
        r64 = r.to(tl.int64)[:, None, None]
        off = r64 * D + col[None, :, :]
        x = tl.load(x_ptr + r64 * s_x + col[None, :, :], mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + r64 * s_z + col[None, :, :], mask=m, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            h = x * z * sz
        else:
            h = x
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=2) / GS + eps)
        hn = h * rstd[:, :, None]
        do = tl.load(do_ptr + off, mask=m, other=0.0).to(tl.float32)
        dw += tl.sum(do * hn, axis=0)
        g = do * w[None, :, :]
        dh = rstd[:, :, None] * (g - hn * (tl.sum(hn * g, axis=2) / GS)[:, :, None])
        if HAS_Z:
            tl.store(dx_ptr + off, (dh * z * sz).to(dx_ptr.dtype.element_ty), mask=m)
            tl.store(dz_ptr + off, (dh * x * sz * (1.0 + z * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=m)
        else:
            tl.store(dx_ptr + off, dh.to(dx_ptr.dtype.element_ty), mask=m)
    tl.store(dw_ptr + pid * D + col, dw)


def _tiles(D: int, GS: int) -> tuple[int, int]:
    """(rows per tile, warps) for rows of D: about 4096 elements per tile."""
    return max(1, 4096 // D), 8 if D >= 2048 else 4


def _rows(t: torch.Tensor, D: int) -> torch.Tensor:
    """t (..., D) as (rows, D) with unit column stride, a view where one exists (e.g. Mamba-2's z, a slice of the
    in_proj output: no copy), else a contiguous copy."""
    t2 = t.reshape(-1, D)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, z, eps: float, group_size: int, out_dtype):
        shape = x.shape
        D = shape[-1]
        x2 = _rows(x, D)
        z2 = _rows(z, D) if z is not None else None
        rows = x2.shape[0]
        out = torch.empty(rows, D, device=x.device, dtype=out_dtype)
        BR, warps = _tiles(D, group_size)
        zz = z2 if z2 is not None else x2
        _rms_norm_fwd_kernel[(triton.cdiv(rows, BR),)](x2, zz, weight, out, rows, D, x2.stride(0), zz.stride(0),
                                                       eps, GS=group_size, BR=BR, NG=D // group_size,
                                                       HAS_Z=z is not None, num_warps=warps)
        ctx.save_for_backward(x2, z2, weight)
        ctx.eps, ctx.group_size, ctx.shape = eps, group_size, shape
        ctx.x_dtype, ctx.z_dtype = x.dtype, z.dtype if z is not None else None
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout):
        x2, z2, weight = ctx.saved_tensors
        rows, D = x2.shape
        do = dout.reshape(rows, D).contiguous()
        BR, warps = _tiles(D, ctx.group_size)
        programs = min(triton.cdiv(rows, BR), 4 * 132)
        rows_per_prog = triton.cdiv(triton.cdiv(rows, programs), BR) * BR
        programs = triton.cdiv(rows, rows_per_prog)
        dx = torch.empty(rows, D, device=x2.device, dtype=ctx.x_dtype)
        dz = torch.empty(rows, D, device=x2.device, dtype=ctx.z_dtype) if z2 is not None else None
        dw = torch.empty(programs, D, device=x2.device, dtype=torch.float32)
        zz = z2 if z2 is not None else x2
        _rms_norm_bwd_kernel[(programs,)](x2, zz, weight, do, dx, dz if dz is not None else dx, dw, rows, D,
                                          x2.stride(0), zz.stride(0), ctx.eps, rows_per_prog,
                                          GS=ctx.group_size, BR=BR, NG=D // ctx.group_size,
                                          HAS_Z=z2 is not None, num_warps=warps)
        dz = dz.view(ctx.shape) if dz is not None else None
        return dx.view(ctx.shape), dw.sum(0).to(weight.dtype), dz, None, None, None


def supported(x: torch.Tensor, group_size: int) -> bool:
    """Power-of-two groups and rows of at most 16k elements (one tile row per program)."""
    D = x.shape[-1]
    return (group_size >= 16 and group_size & (group_size - 1) == 0 and D % group_size == 0 and D <= 16384
            and (D // group_size) & (D // group_size - 1) == 0)


def rms_norm_fused(x, weight, eps: float, *, z=None, group_size: int | None = None, out_dtype=None):
    """``model.ops.rms_norm_ref`` in one kernel each way. x, z (..., d) any float dtype; weight (d,) fp32."""
    return _RMSNorm.apply(x, weight, z, float(eps), group_size or x.shape[-1], out_dtype or x.dtype)
