"""Mamba-2's causal depthwise conv1d + SiLU for training and prefill: one Triton kernel forward, one backward.

    out[t, c] = silu(bias[c] + sum_k w[c, k] x[t - K + 1 + k, c])        (x = 0 before the start)

Reference: ``ssmquant.model.ops.causal_conv1d_silu_ref`` (= ``nn.Conv1d(padding=K - 1)`` cut to l, then SiLU; what
mamba-ssm gets from the causal-conv1d package). In PyTorch the mixer transposes the xBC slice of the in_proj output
into a contiguous (b, c, l) copy, runs cuDNN's depthwise conv, SiLU and transposes back; here the kernel reads the
(b, l, c) slice in place (any row stride), accumulates in fp32 with fp32 weights, and writes (b, l, c) in x's dtype.

Backward, with pre the conv output before SiLU and dpre = dout * silu'(pre) (pre recomputed, nothing saved but
the inputs): dx[t] = sum_k w[k] dpre[t + K - 1 - k], dw[k] = sum_t dpre[t] x[t - K + 1 + k], dbias = sum_t dpre[t].
A program recomputes dpre at the K shifted positions it needs (K^2 multiply-adds per element, from cached
loads) rather than round-tripping dpre through memory; dw and dbias are summed per program and then in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pre(x_ptr, w_ptr, b_ptr, row, t, cc, L, s_xl, mc, K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    """Conv output before SiLU at positions t (BL,) for channels cc (BC,): fp32 (BL, BC)."""
    acc = tl.zeros((BL, BC), dtype=tl.float32) + tl.load(b_ptr + cc, mask=mc, other=0.0)[None, :]
    for k in tl.static_range(K):
        src = t - (K - 1) + k
        m = ((src >= 0) & (src < L))[:, None] & mc[None, :]
        xv = tl.load(x_ptr + row + src[:, None] * s_xl + cc[None, :], mask=m, other=0.0).to(tl.float32)
        acc += xv * tl.load(w_ptr + cc * K + k, mask=mc, other=0.0)[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, init_ptr, L, CD, s_xb, s_xl, s_ob, s_ol, s_ib, s_ic, s_ik,
                     K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, HAS_INIT: tl.constexpr):
    """Grid (b, cdiv(l, BL), cdiv(c, BC)). x (b, l, c) with channel stride 1; init (b, c, K - 1) any strides."""
    bi = tl.program_id(0)
    t = tl.program_id(1) * BL + tl.arange(0, BL)
    cc = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = cc < CD
    pre = _pre(x_ptr, w_ptr, b_ptr, bi * s_xb, t, cc, L, s_xl, mc, K, BL, BC)
    if HAS_INIT:
        # Positions src < 0 read the window before the segment: input src is init[..., K - 1 + src].
        for k in tl.static_range(K - 1):
            src = t - (K - 1) + k
            m = (src < 0)[:, None] & mc[None, :]
            iv = tl.load(init_ptr + bi * s_ib + cc[None, :] * s_ic + (K - 1 + src)[:, None] * s_ik, mask=m,
                         other=0.0).to(tl.float32)
            pre += iv * tl.load(w_ptr + cc * K + k, mask=mc, other=0.0)[None, :]
    out = pre * tl.sigmoid(pre)
    tl.store(out_ptr + bi * s_ob + t[:, None] * s_ol + cc[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(t < L)[:, None] & mc[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, do_ptr, dx_ptr, dw_ptr, db_ptr, L, CD, NLB, s_xb, s_xl, s_db, s_dl,
                     K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    """Grid (b, cdiv(l, BL), cdiv(c, BC)). dout, dx (b, l, c) contiguous; dw (b, NLB, c, K), db (b, NLB, c)."""
    bi = tl.program_id(0)
    lb = tl.program_id(1)
    t = lb * BL + tl.arange(0, BL)
    cc = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = cc < CD
    row = bi * s_xb
    dx = tl.zeros((BL, BC), dtype=tl.float32)
    part = (bi * NLB + lb) * CD
    for s in tl.static_range(K):
        ts = t + s                                                     # positions whose input window holds t
        pre = _pre(x_ptr, w_ptr, b_ptr, row, ts, cc, L, s_xl, mc, K, BL, BC)
        sg = tl.sigmoid(pre)
        do = tl.load(do_ptr + bi * s_db + ts[:, None] * s_dl + cc[None, :],
                     mask=(ts < L)[:, None] & mc[None, :], other=0.0).to(tl.float32)
        dpre = do * sg * (1.0 + pre * (1.0 - sg))
        dx += dpre * tl.load(w_ptr + cc * K + (K - 1 - s), mask=mc, other=0.0)[None, :]
        if s == 0:
            tl.store(db_ptr + part + cc, tl.sum(dpre, axis=0), mask=mc)
            for k in tl.static_range(K):
                src = t - (K - 1) + k
                m = ((src >= 0) & (src < L))[:, None] & mc[None, :]
                xv = tl.load(x_ptr + row + src[:, None] * s_xl + cc[None, :], mask=m, other=0.0).to(tl.float32)
                tl.store(dw_ptr + (part + cc) * K + k, tl.sum(dpre * xv, axis=0), mask=mc)
    tl.store(dx_ptr + bi * s_db + t[:, None] * s_dl + cc[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(t < L)[:, None] & mc[None, :])


_BL, _BC = 64, 64


class _CausalConv1dSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial):
        b, l, cd = x.shape
        K = weight.shape[-1]
        w = weight.reshape(cd, K).float().contiguous()
        bias32 = bias.float().contiguous()
        out = torch.empty(b, l, cd, device=x.device, dtype=x.dtype)
        grid = (b, triton.cdiv(l, _BL), triton.cdiv(cd, _BC))
        if initial is not None and initial.shape != (b, cd, K - 1):
            raise ValueError(f"initial must be (b, c, k - 1) = {(b, cd, K - 1)}, got {tuple(initial.shape)}")
        init = initial if initial is not None else x
        s_init = initial.stride() if initial is not None else (0, 0, 0)
        _conv_fwd_kernel[grid](x, w, bias32, out, init, l, cd, x.stride(0), x.stride(1), out.stride(0),
                               out.stride(1), *s_init, K=K, BL=_BL, BC=_BC, HAS_INIT=initial is not None,
                               num_warps=4)
        ctx.has_init = initial is not None
        ctx.save_for_backward(x, w, bias32)
        ctx.weight_shape, ctx.weight_dtype, ctx.bias_dtype = weight.shape, weight.dtype, bias.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        if ctx.has_init:
            raise NotImplementedError("causal_conv1d_silu with an initial window is forward-only (inference)")
        x, w, bias32 = ctx.saved_tensors
        b, l, cd = x.shape
        K = w.shape[-1]
        do = dout.contiguous()
        nlb = triton.cdiv(l, _BL)
        dx = torch.empty(b, l, cd, device=x.device, dtype=x.dtype)
        dw = torch.empty(b, nlb, cd, K, device=x.device, dtype=torch.float32)
        db = torch.empty(b, nlb, cd, device=x.device, dtype=torch.float32)
        _conv_bwd_kernel[(b, nlb, triton.cdiv(cd, _BC))](x, w, bias32, do, dx, dw, db, l, cd, nlb, x.stride(0),
                                                          x.stride(1), do.stride(0), do.stride(1), K=K, BL=_BL,
                                                          BC=_BC, num_warps=4)
        dw = dw.sum((0, 1)).reshape(ctx.weight_shape).to(ctx.weight_dtype)
        return dx, dw, db.sum((0, 1)).to(ctx.bias_dtype), None


def supported(x: torch.Tensor) -> bool:
    return x.dim() == 3 and x.stride(-1) == 1


def causal_conv1d_silu(x, weight, bias, initial=None):
    """``model.ops.causal_conv1d_silu_ref`` in one kernel each way: x (b, l, c) with unit channel stride (a slice
    of a wider tensor is fine) -> (b, l, c) in x's dtype; weight (c, 1, k) or (c, k); bias (c,).

    ``initial`` (b, c, k - 1), any strides: the k - 1 inputs before x, oldest first (a continued sequence: the
    decode cache's window ``conv_states[:, :, 1:]``), instead of zeros. Forward only."""
    return _CausalConv1dSiLU.apply(x, weight, bias, initial)
