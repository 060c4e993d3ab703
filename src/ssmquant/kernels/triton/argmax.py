"""Greedy decoding's argmax over the vocabulary, one launch, many CTAs (``FastDecoder``'s sampling).

Why. ``torch.argmax`` over one row of 50k logits runs a single-CTA reduction: 17.8 us of a 1.3B decode step on an
H100 (``benchmarks/decode_breakdown.py``), about 3% of the step. Here each program reduces a block of the row and
folds its (value, index) into one int64 per row by an atomic max; the last program to finish (a counter) reads the
result, writes the token and resets the key and the counter, so the kernel is self-contained inside a CUDA graph.
With ``append`` it also writes the token after the sequence's last one and advances the decoder's position (the
decode step's append, without a launch of its own).

The key orders like torch.argmax: value first, then the *lowest* index among equal values. A float's bits read as
int32 order like the float for non-negatives; for negatives the magnitude bits are flipped. NaN compares above
+inf (torch.argmax returns a NaN's index too), and -0.0 is taken as +0.0 (torch compares them equal). Key =
ordered value << 32 | (2**32 - 1 - index).

Reference: ``torch.argmax(x, -1)`` (``tests/test_kernels_argmax.py``, also under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

INT64_MIN = -(2**63)


@triton.jit
def _fold_argmax(v, offs, N, key_ptr, count_ptr, out_ptr, programs, APPEND: tl.constexpr, ids_ptr, pos_ptr,
                 rows_ptr, M):
    """One program's share of a row's argmax: ``v`` (BLOCK,) fp32 values at indices ``offs`` (those >= N are
    ignored) folded into the row's key (``key_ptr``) by an atomic max; the ``programs``-th program to arrive
    (``count_ptr``) writes the token to ``out_ptr`` and resets key and counter. APPEND: it also writes the token to
    ``ids_ptr`` (the row's ids) at pos + 1, and the last of the M rows to finish (``rows_ptr``; at M = 1 that row's
    last program directly) advances ``pos`` (FastDecoder's append step: one launch fewer)."""
    if APPEND:
        # Read before this program's arrival, so that the last one need not wait for it; pos changes only after
        # every program of every row has arrived.
        pos = tl.load(pos_ptr)
    v = tl.where(offs < N, v, float("-inf")) + 0.0                  # -0 -> +0
    bits = v.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    best = tl.max(ordered, 0)
    idx = tl.min(tl.where(ordered == best, offs, N), 0)
    key = (best.to(tl.int64) << 32) | (0xFFFFFFFF - idx.to(tl.int64))
    tl.atomic_max(key_ptr, key)
    done = tl.atomic_add(count_ptr, 1)                 # acq_rel: the last sees every program's max
    if done == programs - 1:
        final = tl.atomic_xchg(key_ptr, -9223372036854775808)
        tl.atomic_xchg(count_ptr, 0)
        tok = 0xFFFFFFFF - (final & 0xFFFFFFFF)
        tl.store(out_ptr, tok)
        if APPEND:
            tl.store(ids_ptr + pos + 1, tok)
            if M == 1:
                tl.store(pos_ptr, pos + 1)
            elif tl.atomic_add(rows_ptr, 1) == M - 1:      # acq_rel: the last row to finish moves pos on
                tl.atomic_xchg(rows_ptr, 0)
                tl.store(pos_ptr, pos + 1)


@triton.jit
def _argmax_kernel(x_ptr, stride_m, N, key_ptr, count_ptr, out_ptr, ids_ptr, stride_im, pos_ptr, rows_ptr, M,
                   BLOCK: tl.constexpr, APPEND: tl.constexpr):
    m = tl.program_id(0)
    pid = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + m * stride_m + offs, mask=offs < N, other=float("-inf")).to(tl.float32)
    _fold_argmax(v, offs, N, key_ptr + m, count_ptr + m, out_ptr + m, tl.num_programs(1), APPEND,
                ids_ptr + m * stride_im, pos_ptr, rows_ptr, M)


class ArgmaxRows:
    """``out[m] = argmax(x[m])`` for (M, N) x (fp32 / fp16 / bf16, rows of stride ``x.stride(0)``, unit stride
    along N) into ``out`` (M,) int64, with its own (M,) key and counter scratch on ``device``."""

    BLOCK = 4096

    def __init__(self, rows: int, device):
        self.key = torch.full((rows,), INT64_MIN, dtype=torch.int64, device=device)
        self.count = torch.zeros(rows, dtype=torch.int32, device=device)
        self.rows_done = torch.zeros(1, dtype=torch.int32, device=device)     # (_fold_argmax's APPEND)

    def __call__(self, x: torch.Tensor, out: torch.Tensor, append: tuple | None = None) -> torch.Tensor:
        """``append = (ids, pos)``: also ids[m, pos + 1] = out[m] ((M, L) int64, unit last stride) and pos += 1
        (one int32), once every row is done."""
        M, N = x.shape
        if M > self.key.numel() or x.stride(1) != 1 or out.dtype != torch.int64 or N >= 2**31:
            raise ValueError(f"ArgmaxRows: x {tuple(x.shape)} stride {x.stride()}, out {out.dtype} (rows <= "
                             f"{self.key.numel()}, unit stride along N, int64 out)")
        ids, pos = append if append is not None else (out, out)
        if append is not None and (ids.dtype != torch.int64 or ids.shape[0] != M or ids.stride(1) != 1
                                   or pos.numel() != 1 or pos.dtype != torch.int32):
            raise ValueError(f"ArgmaxRows: append to ids {tuple(ids.shape)} {ids.dtype} at pos {pos.dtype} "
                             f"(({M}, L) int64 with unit last stride, one int32)")
        _argmax_kernel[(M, triton.cdiv(N, self.BLOCK))](x, x.stride(0), N, self.key, self.count, out, ids,
                                                       ids.stride(0), pos, self.rows_done, M, BLOCK=self.BLOCK,
                                                       APPEND=append is not None, num_warps=8)
        return out


__all__ = ["ArgmaxRows"]
