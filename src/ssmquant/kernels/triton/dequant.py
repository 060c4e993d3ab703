"""Ternary weight -> dense fp16 matrix in one pass, for prompts long enough that the product is compute-bound.

    out (N, K) fp16 = code * scale          exact: code in {-1, 0, 1} times an fp16 scale is an fp16 number

Why: at thousands of rows (prefill of a 2048-token prompt, 16k rows at batch 8) a projection is a compute-bound
GEMM; what the weight's 2-bit storage saves in bytes no longer matters, and cuBLAS's fp16 GEMM beats our Triton
ternary product (``gemm.py``), which decodes every weight tile once per row tile. Decoding the weight once per call
into a scratch matrix costs one read of the 2-bit words and one fp16 write (35 MB for the 1.3B in_proj, about 15 us
on an H100), against ~1 ms for the GEMM at 16k rows. ``kernels/prefill.py`` (``FastLinear``) chooses between them.

Each program writes a (BN, BK) tile of the output, contiguous along the inputs: column k reads field
(k mod KB) / KW of word (k / KB) KW + k mod KW (``kernels/layout.py``), a gather that L1 serves, since 16 neighbouring
columns share a word. (A first version decoded (BN, 16, KW) tiles of whole words and stored them scattered, 16-byte
pieces per row: 93 us for the 1.3B in_proj on an H100, a fifth of the bandwidth.) Reference:
``kernels.layout.dequant_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import CODES_PER_WORD, GemvTernaryWeight


@triton.jit
def _dequant_kernel(w_ptr, stride_wn, s_ptr, stride_sn, out_ptr, stride_on, N,
                    G: tl.constexpr, KW: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Grid (cdiv(N, BN), K / BK): a (BN, BK) tile of the output, BK a multiple of the pack block KB = 16 KW."""
    KB: tl.constexpr = KW * 16
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    col = tl.program_id(1) * BK + tl.arange(0, BK)                       # input index k
    mask = (rows < N)[:, None] & (col >= 0)[None, :]                      # (BN, BK): whole-tile masks
    # Input k = b * KB + j * KW + w sits in field j of word b * KW + w (``kernels/layout.py``); each word is read
    # by 16 neighbouring columns (from L1), the fp16 store is contiguous along k.
    word = (col // KB) * KW + col % KW
    shift = 2 * ((col % KB) // KW)
    words = tl.load(w_ptr + rows[:, None] * stride_wn + word[None, :], mask=mask, other=0)
    sc = tl.load(s_ptr + rows[:, None] * stride_sn + (col // G)[None, :], mask=mask, other=0.0).to(tl.float16)
    val = (((words >> shift[None, :]) & 3) - 1).to(tl.float16) * sc
    tl.store(out_ptr + rows[:, None] * stride_on + col[None, :], val, mask=mask)


def dequant_ternary(w: GemvTernaryWeight, out: torch.Tensor | None = None, *, BN: int = 16,
                    BK: int = 512) -> torch.Tensor:
    """(N, K) fp16 ``code * scale`` of a 2-bit :class:`GemvTernaryWeight`, written into ``out`` if given (a
    contiguous fp16 tensor of at least N * K elements, e.g. a reused scratch buffer) and returned as (N, K)."""
    if w.bits != 2:
        raise ValueError("dequant_ternary decodes the 2-bit ternary layout (bits=2)")
    N, K = w.shape
    if out is None:
        out = torch.empty(N, K, device=w.words.device, dtype=torch.float16)
    else:
        if out.dtype != torch.float16 or not out.is_contiguous() or out.numel() < N * K:
            raise ValueError(f"out must be contiguous fp16 with >= {N * K} elements")
        out = out.view(-1)[:N * K].view(N, K)
    kw = w.block // CODES_PER_WORD
    BK = min(BK, K)
    while K % BK or BK % w.block:      # a tile of whole pack blocks dividing K (K itself at worst)
        BK = K if BK <= w.block else BK // 2
    grid = (triton.cdiv(N, BN), K // BK)
    _dequant_kernel[grid](w.words, w.words.stride(0), w.scale, w.scale.stride(0), out, out.stride(0), N,
                          G=w.group_size, KW=kw, BN=BN, BK=BK, num_warps=8)
    return out
