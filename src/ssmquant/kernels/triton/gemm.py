"""Ternary matrix product for prefill and batched decode: 2-bit tiles decoded to fp16 in registers, tensor cores.

    out (M, N) = x (M, K) @ (codes * scale)^T      fp16 operands, fp32 accumulation

Each program computes a (BM, BN) output tile. Per pack block of KB inputs (``kernels/layout.py``; KB divides the
scale group, so the block has one scale per row) it loads the (BN, KB/16) words once, expands the 16 bit fields into
a (BN, 16, KB/16) tile whose row-major order is exactly the block's input order (field j, word w = input j*KW + w),
reshapes it to (BN, KB), and feeds ``tl.dot``. Codes are exact in fp16; the scale multiplies the fp32 partial
product of the block, once per (row, block), not per weight. The weight never exists in fp16 in memory:
2 bits per weight cross HBM, against 16 for a dense fp16 GEMM.

Reference: ``kernels.layout.ternary_linear_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import CODES_PER_WORD, GemvTernaryWeight


@triton.jit
def _ternary_mm_kernel(x_ptr, stride_xm, w_ptr, stride_wn, s_ptr, stride_sn, out_ptr, stride_om, res_ptr, stride_rm,
                       M, N, K, G: tl.constexpr, KW: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       GROUP_M: tl.constexpr, ADD_RES: tl.constexpr):
    KB: tl.constexpr = KW * 16
    # Grouped ordering of the tiles so consecutive programs share weight tiles in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    gsize = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % gsize
    pid_n = (pid % per_group) // gsize
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mmask = offs_m < M
    nmask = offs_n < N
    jj = tl.arange(0, 16)
    ww = tl.arange(0, KW)
    kk = tl.arange(0, KB)
    acc = tl.zeros([BM, BN], tl.float32)
    for b in range(0, K // KB):
        words = tl.load(w_ptr + offs_n[:, None] * stride_wn + b * KW + ww[None, :], mask=nmask[:, None], other=0)
        codes = (words[:, None, :] >> (2 * jj)[None, :, None]) & 3                       # (BN, 16, KW)
        wt = tl.reshape((codes - 1).to(tl.float16), (BN, KB))                             # (BN, KB), input order
        xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + b * KB + kk[None, :], mask=mmask[:, None], other=0.0)
        sc = tl.load(s_ptr + offs_n * stride_sn + (b * KB) // G, mask=nmask, other=0.0).to(tl.float32)
        acc += tl.dot(xt.to(tl.float16), tl.trans(wt)) * sc[None, :]
    if ADD_RES:
        # Residual epilogue (batched decode's out_proj): fp32, read before the store, so ``out`` may be ``res``.
        acc += tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :],
                       mask=mmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


def default_tiles(M: int, K: int) -> dict:
    """Launch settings for M rows of K inputs.

    Batched decode (M <= 64): the smallest BM of 16 / 32 / 64 that holds M (padding rows cost a whole tile's
    decode) and narrow BN (more programs, each decoding fewer weights). Measured on H100 at 1.3B's shapes
    (``benchmarks/gemm_tiles.py``, benchmarks/RESULTS.md): in_proj (K 2048) at 16 rows 16.4 us against 23.9 with
    BN 64, 4 warps, 2 stages (the previous tiles), out_proj (K 4096) 16.0 against 40.7; 64 rows 23.4 / 17.0
    against 29.5 / 45.8.
    Long rows (K >= 4096) want more warps and stages in flight. Above 64 rows (prefill) the 64 x 64 tiles stay."""
    if M > 64:
        return dict(BM=64, BN=64, num_warps=4, num_stages=2)
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    if K >= 4096:
        return dict(BM=bm, BN=16, num_warps=4, num_stages=4)
    if M <= 32:
        return dict(BM=bm, BN=16, num_warps=2, num_stages=3)
    return dict(BM=bm, BN=32, num_warps=4, num_stages=3)


def ternary_matmul(x: torch.Tensor, w: GemvTernaryWeight, *, out_dtype: torch.dtype | None = None,
                   out: torch.Tensor | None = None, residual: torch.Tensor | None = None, **tiles) -> torch.Tensor:
    """x (M, K) fp16 -> (M, N) in ``out_dtype`` (default fp16), or into ``out`` (M, N), unit column stride.
    ``residual`` (M, N) is added in fp32 (``out`` may be ``residual``: the in-place residual update). ``tiles``:
    any of BM, BN, num_warps, num_stages, overriding :func:`default_tiles`."""
    N, K = w.shape
    if x.dim() != 2 or x.shape[1] != K:
        raise ValueError(f"x must be (M, {K}), got {tuple(x.shape)}")
    x = x.to(torch.float16)
    if x.stride(1) != 1:
        x = x.contiguous()
    M = x.shape[0]
    if out is None:
        out = torch.empty(M, N, device=x.device, dtype=out_dtype or torch.float16)
    elif out.shape != (M, N) or out.stride(1) != 1:
        raise ValueError(f"out must be ({M}, {N}) with unit column stride, got {tuple(out.shape)}")
    if residual is not None and (residual.shape != (M, N) or residual.stride(1) != 1):
        raise ValueError(f"residual must be ({M}, {N}) with unit column stride, got {tuple(residual.shape)}")
    if M == 0:
        return out
    unknown = set(tiles) - {"BM", "BN", "num_warps", "num_stages"}
    if unknown:
        raise TypeError(f"ternary_matmul: unknown tile settings {sorted(unknown)}")
    t = {**default_tiles(M, K), **tiles}
    res = residual if residual is not None else out
    grid = (triton.cdiv(M, t["BM"]) * triton.cdiv(N, t["BN"]),)
    _ternary_mm_kernel[grid](x, x.stride(0), w.words, w.words.stride(0), w.scale, w.scale.stride(0), out,
                             out.stride(0), res, res.stride(0), M, N, K, G=w.group_size,
                             KW=w.block // CODES_PER_WORD, BM=t["BM"], BN=t["BN"], GROUP_M=8,
                             ADD_RES=residual is not None, num_warps=t["num_warps"], num_stages=t["num_stages"])
    return out
