"""Matrix-vector products for decode: ternary (2-bit GEMV layout) or dense fp16 weights, with fused norms.

    out[m, n] = sum_k W[n, k] * xn[m, k]  (+ res[m, n])

where ``xn`` is the activation row after an optional fused prologue:

* ``norm="rms"``:   xn = x * rsqrt(mean(x**2) + eps) * nw     (the block's pre-norm; x is the fp32 residual stream)
* ``norm="gated"``: xn = h * rsqrt(mean_group(h**2) + eps) * nw  (Mamba-2's gated RMSNorm; h = y * silu(z) is
  produced by the SSM step kernel, the mean runs over groups of ``norm_group`` channels)

and an optional fused epilogue ``+ res`` (the residual add; ``out`` may be ``res`` itself, updated in place).
Fusing the norms here saves a kernel each: a kernel boundary costs about 1.1 us even inside a CUDA graph, about
what a whole ternary GEMV costs at Mamba-2 1.3B shapes. Every program recomputes the norm statistics of its row
(K values from L2), which is cheap next to its (BN, K) slice of weights.

Grid: (cdiv(N, BN), M). Each program owns BN output rows of one activation row and reads its whole slice of the
weight in tiles of (BN, BKW) words. Ternary decoding is described in ``kernels/layout.py``; accumulation is fp32.
Batch rows are separate programs, so at M > 1 the weights are re-read from L2, not from HBM; for M >= 16 the
tensor-core GEMM (``gemm.py``) is faster.

Reference: :func:`gemv_ref`. Mirrors nothing in mamba-ssm (it decodes with cuBLAS GEMV and separate norm kernels).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..layout import CODES_PER_WORD, GemvTernaryWeight, dequant_ref

_NORMS = {None: 0, "rms": 1, "gated": 2}


@triton.jit
def _xload(xrow, nw_ptr, k, mask, r, NORM: tl.constexpr):
    """Activations at inputs ``k`` after the fused norm (``r``: the row's or the columns' inverse rms)."""
    v = tl.load(xrow + k, mask=mask, other=0.0).to(tl.float32)
    if NORM != 0:
        v = v * tl.load(nw_ptr + k, mask=mask, other=0.0) * r
    return v


@triton.jit
def _field(words, whi, xj, J: tl.constexpr):
    """code_J * x_J for bit field J of every word: (code + 1) * 4**jj sits in the mantissa of 2**23, so the decode
    is exact integer arithmetic in fp32 and needs no int->float conversion."""
    if J < 11:
        f = ((words & (3 << (2 * J))) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + (1 << (2 * J)))
        xs = xj * (1.0 / (1 << (2 * J)))
    else:
        f = ((whi & (3 << (2 * (J - 11)))) | 0x4B000000).to(tl.float32, bitcast=True) - \
            (8388608.0 + (1 << (2 * (J - 11))))
        xs = xj * (1.0 / (1 << (2 * (J - 11))))
    return f * xs[None, :]


@triton.jit
def _gemv_kernel(x_ptr, stride_xm, nw_ptr, w_ptr, stride_wn, s_ptr, stride_sn, res_ptr, stride_rm,
                 out_ptr, stride_om, N, K, eps,
                 G: tl.constexpr, KW: tl.constexpr, TERNARY: tl.constexpr,
                 NORM: tl.constexpr, NORM_GS: tl.constexpr, NORM_NG: tl.constexpr, NG_P2: tl.constexpr,
                 ADD_RES: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr, BK_NORM: tl.constexpr):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    xrow = x_ptr + m * stride_xm
    KB: tl.constexpr = KW * 16
    KWT = K // 16
    if TERNARY:
        # Issue the first weight tile before the norm prologue, so HBM latency overlaps the statistics.
        cols = tl.arange(0, BKW)
        words = tl.load(w_ptr + offs_n[:, None] * stride_wn + cols[None, :],
                        mask=nmask[:, None] & (cols < KWT)[None, :], other=0)

    # ---- prologue: norm statistics of this activation row ----
    r = 1.0
    if NORM == 1:
        ss = tl.zeros([BK_NORM], tl.float32)
        for k0 in range(0, K, BK_NORM):
            kk = k0 + tl.arange(0, BK_NORM)
            v = tl.load(xrow + kk, mask=kk < K, other=0.0).to(tl.float32)
            ss += v * v
        r = tl.rsqrt(tl.sum(ss, 0) / K + eps)
    if NORM == 2:
        gg = tl.arange(0, NG_P2)
        ss2 = tl.zeros([NG_P2, BK_NORM], tl.float32)
        for k0 in range(0, NORM_GS, BK_NORM):
            kk = k0 + tl.arange(0, BK_NORM)
            msk = (gg[:, None] < NORM_NG) & (kk[None, :] < NORM_GS)
            v = tl.load(xrow + gg[:, None] * NORM_GS + kk[None, :], mask=msk, other=0.0).to(tl.float32)
            ss2 += v * v
        rg = tl.rsqrt(tl.sum(ss2, 1) / NORM_GS + eps)                       # (NG_P2,)

    acc = tl.zeros([BN, BKW], tl.float32)
    if TERNARY:
        for c0 in range(0, KWT, BKW):
            cols = c0 + tl.arange(0, BKW)
            cmask = cols < KWT
            kstart = (cols // KW) * KB                                      # first input of each word's block
            kbase = kstart + cols % KW                                      # input of field 0
            sc = tl.load(s_ptr + offs_n[:, None] * stride_sn + (kstart // G)[None, :],
                         mask=nmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            # Inverse rms per column (gated norm: of each column's group), defined fresh in each iteration.
            if NORM == 2:
                rv = tl.sum(tl.where(gg[:, None] == (kstart // NORM_GS)[None, :], rg[:, None], 0.0), 0)
            else:
                rv = r
            # All 16 activation slices are loaded before any is used: their L2 latencies overlap.
            x0 = _xload(xrow, nw_ptr, kbase + 0 * KW, cmask, rv, NORM)
            x1 = _xload(xrow, nw_ptr, kbase + 1 * KW, cmask, rv, NORM)
            x2 = _xload(xrow, nw_ptr, kbase + 2 * KW, cmask, rv, NORM)
            x3 = _xload(xrow, nw_ptr, kbase + 3 * KW, cmask, rv, NORM)
            x4 = _xload(xrow, nw_ptr, kbase + 4 * KW, cmask, rv, NORM)
            x5 = _xload(xrow, nw_ptr, kbase + 5 * KW, cmask, rv, NORM)
            x6 = _xload(xrow, nw_ptr, kbase + 6 * KW, cmask, rv, NORM)
            x7 = _xload(xrow, nw_ptr, kbase + 7 * KW, cmask, rv, NORM)
            x8 = _xload(xrow, nw_ptr, kbase + 8 * KW, cmask, rv, NORM)
            x9 = _xload(xrow, nw_ptr, kbase + 9 * KW, cmask, rv, NORM)
            x10 = _xload(xrow, nw_ptr, kbase + 10 * KW, cmask, rv, NORM)
            x11 = _xload(xrow, nw_ptr, kbase + 11 * KW, cmask, rv, NORM)
            x12 = _xload(xrow, nw_ptr, kbase + 12 * KW, cmask, rv, NORM)
            x13 = _xload(xrow, nw_ptr, kbase + 13 * KW, cmask, rv, NORM)
            x14 = _xload(xrow, nw_ptr, kbase + 14 * KW, cmask, rv, NORM)
            x15 = _xload(xrow, nw_ptr, kbase + 15 * KW, cmask, rv, NORM)
            whi = words >> 22
            t = (_field(words, whi, x0, 0) +
                 _field(words, whi, x1, 1) +
                 _field(words, whi, x2, 2) +
                 _field(words, whi, x3, 3) +
                 _field(words, whi, x4, 4) +
                 _field(words, whi, x5, 5) +
                 _field(words, whi, x6, 6) +
                 _field(words, whi, x7, 7) +
                 _field(words, whi, x8, 8) +
                 _field(words, whi, x9, 9) +
                 _field(words, whi, x10, 10) +
                 _field(words, whi, x11, 11) +
                 _field(words, whi, x12, 12) +
                 _field(words, whi, x13, 13) +
                 _field(words, whi, x14, 14) +
                 _field(words, whi, x15, 15))
            acc += t * sc
            # Prefetch the next weight tile (fully masked after the last).
            nxt = cols + BKW
            words = tl.load(w_ptr + offs_n[:, None] * stride_wn + nxt[None, :],
                            mask=nmask[:, None] & (nxt < KWT)[None, :], other=0)
    else:
        for k0 in range(0, K, BKW):
            kk = k0 + tl.arange(0, BKW)
            kmask = kk < K
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + kk[None, :], mask=nmask[:, None] & kmask[None, :],
                        other=0.0).to(tl.float32)
            if NORM == 2:
                rv = tl.sum(tl.where(gg[:, None] == (kk // NORM_GS)[None, :], rg[:, None], 0.0), 0)
            else:
                rv = r
            acc += w * _xload(xrow, nw_ptr, kk, kmask, rv, NORM)[None, :]

    out = tl.sum(acc, 1)
    if ADD_RES:
        out += tl.load(res_ptr + m * stride_rm + offs_n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)


def default_config(N: int, K: int, ternary: bool) -> dict:
    """Tile sizes: every program loads its whole weight slice in one or two tiles, so many loads are in flight."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        # The CPU interpreter's cost grows with the number of programs, not with tile size.
        return dict(BN=min(256, triton.next_power_of_2(N)), BKW=min(64, triton.next_power_of_2(K // 16)),
                    num_warps=4)
    if ternary:
        kwt = K // CODES_PER_WORD
        bkw = min(triton.next_power_of_2(kwt), 256)
        bn = max(4, min(64, 2048 // bkw))
        return dict(BN=bn, BKW=bkw, num_warps=4)
    # Measured on H100 (benchmarks/gpu_inference.py --sweep): 4 rows per program for the projections, 8 for the head.
    return dict(BN=4 if N < 16384 else 8, BKW=512 if K >= 512 else triton.next_power_of_2(K), num_warps=4)


def gemv(x: torch.Tensor, weight, *, norm: str | None = None, norm_weight: torch.Tensor | None = None,
         norm_group: int | None = None, eps: float = 1e-5, residual: torch.Tensor | None = None,
         out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32, config: dict | None = None
         ) -> torch.Tensor:
    """x (M, K) -> (M, N). ``weight``: :class:`GemvTernaryWeight` or a dense (N, K) tensor. See the module docstring.

    ``residual`` (M, N) fp32 is added; ``out`` may be ``residual`` (in-place residual update).
    """
    ternary = isinstance(weight, GemvTernaryWeight)
    N, K = weight.shape
    M = x.shape[0]
    if x.dim() != 2 or x.shape[1] != K or x.stride(1) != 1:
        raise ValueError(f"x must be (M, {K}) with unit last stride, got {tuple(x.shape)}")
    if norm not in _NORMS:
        raise ValueError(f"norm={norm!r}, expected one of {list(_NORMS)}")
    if norm is not None and (norm_weight is None or norm_weight.shape != (K,)):
        raise ValueError("a fused norm needs norm_weight of shape (K,)")
    ng = 1
    gs = K
    if norm == "gated":
        gs = norm_group or K
        ng = K // gs
        if K % gs or (ternary and gs % weight.block):
            raise ValueError(f"gated norm group {gs} must divide K={K} and be a multiple of the pack block")
    if out is None:
        out = torch.empty(M, N, device=x.device, dtype=out_dtype)
    if residual is not None and residual.shape != (M, N):
        raise ValueError(f"residual must be ({M}, {N})")
    cfg = dict(default_config(N, K, ternary), **(config or {}))
    if ternary:
        w_ptr, stride_wn, s_ptr, stride_sn = weight.words, weight.words.stride(0), weight.scale, weight.scale.stride(0)
        G, KW = weight.group_size, weight.block // CODES_PER_WORD
    else:
        if weight.stride(1) != 1:
            raise ValueError("dense weight must have unit last stride")
        w_ptr, stride_wn, s_ptr, stride_sn, G, KW = weight, weight.stride(0), weight, 0, 1, 1
    nw = norm_weight if norm_weight is not None else x
    res = residual if residual is not None else out
    grid = (triton.cdiv(N, cfg["BN"]), M)
    _gemv_kernel[grid](
        x, x.stride(0), nw, w_ptr, stride_wn, s_ptr, stride_sn, res, res.stride(0), out, out.stride(0), N, K, eps,
        G=G, KW=KW, TERNARY=ternary, NORM=_NORMS[norm], NORM_GS=gs, NORM_NG=ng,
        NG_P2=triton.next_power_of_2(ng), ADD_RES=residual is not None, BN=cfg["BN"], BKW=cfg["BKW"],
        BK_NORM=min(1024, triton.next_power_of_2(gs)), num_warps=cfg["num_warps"])
    return out


def gemv_ref(x: torch.Tensor, weight, *, norm: str | None = None, norm_weight: torch.Tensor | None = None,
             norm_group: int | None = None, eps: float = 1e-5, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch :func:`gemv` in fp32: x (M, K) -> (M, N)."""
    xf = x.float()
    K = xf.shape[1]
    if norm == "rms":
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    elif norm == "gated":
        hg = xf.unflatten(-1, (-1, norm_group or K))
        xf = (hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * norm_weight.float()
    W = dequant_ref(weight) if isinstance(weight, GemvTernaryWeight) else weight.float()
    out = xf @ W.t()
    return out if residual is None else out + residual.float()
