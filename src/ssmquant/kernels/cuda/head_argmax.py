"""The batch-1 LM head with greedy sampling fused into it (CUDA C++ compiled by NVRTC): one launch computes
``logits = W x`` (int8 rows times their scales, or fp16 / bf16 rows), the token ``argmax(logits[:V])``, and
appends it to the sequence (``ids[pos + 1] = token; pos += 1``).

Why. After the persistent decode step (``persistent_decode.py``), a 1.3B step on an H100 spent 39.2 us in the
int8 head's Triton GEMV (2.6 TB/s: its int -> float conversions run at a quarter of the FFMA rate) and 4.6 us in
the argmax's own launch (``triton/argmax.py``; benchmarks/RESULTS.md, run 50). Here the int8 rows decode by bit
patterns read as floats (``head_argmax.cu``: 5 integer instructions and 4 FFMA per 4 weights, exact), the warps
take groups of rows in turn (the grid sweeps the matrix) with the next group's loads in flight, and each CTA folds
its best (value, index)
into one key by one atomic: the argmax costs the last CTA's few instructions instead of a launch. The first rows
are loaded before ``griddepcontrol.wait`` (programmatic dependent launch, ``kernels/pdl.py``'s rules), so they
overlap the end of the kernel before.

The argmax is ``triton/argmax.py``'s: the lowest index among equal values, NaN above +inf, -0 as +0, and only the
first ``V`` rows are candidates (the embedding's padding rows get logits but are never sampled).

Exactness of the int8 decode: the products are exact and accumulated in fp32 as ``(q + 128) x 2**-64`` with
``-128 sum(x)`` folded into the start value; inputs are pre-scaled by up to ``2**85``, so an input must lie in
``[2**-62, 2**43)`` in magnitude (or be 0) for no pre-scaled value to overflow or product to underflow: every
normal and subnormal fp16 does; bf16 values outside it (normed activations of 1e13) would not.

Reference: :func:`head_argmax_ref` (PyTorch, fp32) and, for the decode, :func:`int8_decode_ref` (the kernel's bit
patterns emulated in NumPy).
"""

from __future__ import annotations

import ctypes
import functools
from importlib import resources

import numpy as np
import torch

NT = 256                    # threads a CTA
INT64_MIN = -(2**63)
_XDTYPES = {torch.float16: 0, torch.bfloat16: 1}
_SCALE_T = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def int8_decode_ref(words: np.ndarray) -> np.ndarray:
    """The kernel's int8 decode, emulated: uint32 words (...,) of 4 int8 codes -> (..., 4) float64 values, each the
    fp32 that the kernel's bit pattern reads as, times the input's pre-scale (``2**(85 - 8 min(j, 2))``) and
    ``2**64``: the code plus 128, exactly, when the decode is right."""
    t = (words.astype(np.uint32) ^ np.uint32(0x80808080)).astype(np.uint32)
    pats = [t & np.uint32(0xFF), t & np.uint32(0xFF00), t & np.uint32(0xFF0000),
            (t >> np.uint32(8)) & np.uint32(0xFF0000)]
    out = []
    for j, p in enumerate(pats):
        f = p.astype(np.uint32).view(np.float32).astype(np.float64)
        out.append(f * 2.0 ** (85 - 8 * min(j, 2)) * 2.0**64)
    return np.stack(out, -1)


def head_argmax_ref(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                    vocab: int | None = None) -> tuple[torch.Tensor, int]:
    """x (K,) -> (logits (N,) fp32, token): ``logits = (W.float() @ x.float()) * scale``; token = the lowest index of
    the largest of the first ``vocab`` logits (``torch.argmax``)."""
    y = weight.float() @ x.float().reshape(-1)
    if scale is not None:
        y = y * scale.float()
    V = weight.shape[0] if vocab is None else vocab
    return y, int(torch.argmax(y[:V]))


def head_argmax_error(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> str | None:
    """Why :class:`HeadArgmax` cannot take these tensors, or None."""
    if weight.dim() != 2 or not weight.is_contiguous():
        return f"weight must be a contiguous (N, K) matrix, got {tuple(weight.shape)}"
    N, K = weight.shape
    if x.dtype not in _XDTYPES:
        return f"x must be fp16 or bf16, got {x.dtype}"
    if x.numel() != K or not x.is_contiguous():
        return f"x must hold K={K} contiguous values, got {tuple(x.shape)}"
    if weight.dtype == torch.int8:
        if scale is None or scale.shape != (N,) or scale.dtype not in _SCALE_T or not scale.is_contiguous():
            return "int8 rows need a contiguous (N,) fp16 / bf16 / fp32 scale"
        if K % 16:
            return f"int8 rows need K divisible by 16, got {K}"
    elif weight.dtype == x.dtype:
        if scale is not None:
            return "a row scale applies to int8 rows only"
        if K % 8:
            return f"fp16 / bf16 rows need K divisible by 8, got {K}"
    else:
        return f"rows must be int8 or x's dtype ({x.dtype}), got {weight.dtype}"
    if N >= 2**31 - 1:
        return f"{N} rows (below 2**31 - 1)"
    if x.data_ptr() % 16 or weight.data_ptr() % 16:
        return "x and the weight must start 16-byte aligned"
    return None


def _plan(K: int, int8: bool) -> tuple[int, int]:
    """(R, MINB): rows a warp loads at once and CTAs an SM, from the registers a lane holds: its inputs
    (``CNT * EPS`` fp32) and two buffers of R rows of ``CNT`` 16-byte segments; two CTAs an SM where that stays
    within 100 registers (of 128), else one (of 255), with R = 2 where it fits."""
    eps = 16 if int8 else 8
    cnt = -(-(K // eps) // 32)
    xregs, wregs = cnt * eps, 2 * cnt * 4
    for minb, budget in ((2, 100), (1, 200)):
        for r in (2, 1):
            if xregs + r * wregs <= budget:
                return r, minb
    return 1, 1


@functools.cache
def _source() -> str:
    return resources.files(__package__).joinpath("head_argmax.cu").read_text()


def _kernel(K: int, int8: bool, xbf16: bool, scale_t: int, plan: tuple[int, int] | None = None):
    from .nvrtc import get_kernel

    r, minb = plan or _plan(K, int8)
    opts = [f"-DK={K}", f"-DINT8={int(int8)}", f"-DXBF16={int(xbf16)}", f"-DSCALE_T={scale_t}", f"-DR={r}",
            f"-DNT={NT}", f"-DMINB={minb}"]
    return get_kernel(_source(), "head_argmax", opts)


class HeadArgmax:
    """``logits = W x (* scale)``, ``tok = argmax(logits[:vocab])``, optionally appended: one launch, batch 1.

    Owns its scratch (the argmax key and the CTAs' counter, reset by the kernel's last CTA, so that a captured
    CUDA graph replays it as is). ``plan``: (R, MINB) instead of :func:`_plan`'s, for measurements
    (``benchmarks/head_argmax_plans.py``)."""

    def __init__(self, device, plan: tuple[int, int] | None = None):
        self.plan = plan
        self.key = torch.full((1,), INT64_MIN, dtype=torch.int64, device=device)
        self.count = torch.zeros(1, dtype=torch.int32, device=device)
        self._grid: dict = {}

    def _grid_for(self, kern, N: int, device) -> int:
        # (Compiled kernels are cached for the process, so a kernel's id names it.)
        g = self._grid.get((id(kern), N))
        if g is None:
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            g = self._grid[(id(kern), N)] = max(1, min(sms * kern.blocks_per_sm(NT), -(-N // (NT // 32))))
        return g

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, logits: torch.Tensor,
                 tok: torch.Tensor, *, vocab: int | None = None, append: tuple | None = None, pdl: bool = True,
                 grid: int | None = None) -> torch.Tensor:
        """x (K,) or (1, K) fp16 / bf16; weight (N, K) int8 with ``scale`` (N,), or in x's dtype with None;
        logits (N,) or (1, N) fp32 (written); tok (1,) int64 (the token). ``vocab``: tokens are chosen among the
        first ``vocab`` rows (default N). ``append = (ids, pos)``: also ids[0, pos + 1] = token and pos += 1 ((1, L)
        int64, one int32). ``grid``: CTAs (default: as many as fit the GPU at once, for tests)."""
        err = head_argmax_error(x, weight, scale)
        if err:
            raise ValueError(f"HeadArgmax: {err}")
        N, K = weight.shape
        V = N if vocab is None else vocab
        if not 1 <= V <= N:
            raise ValueError(f"HeadArgmax: vocab {V} outside 1..{N}")
        if logits.numel() != N or logits.dtype != torch.float32 or not logits.is_contiguous():
            raise ValueError(f"HeadArgmax: logits must be {N} contiguous fp32 values, got {tuple(logits.shape)} "
                             f"{logits.dtype}")
        if tok.numel() != 1 or tok.dtype != torch.int64:
            raise ValueError("HeadArgmax: tok must be one int64")
        ids, pos = append if append is not None else (tok, self.count)
        if append is not None and (ids.dtype != torch.int64 or ids.dim() != 2 or ids.shape[0] != 1
                                   or ids.stride(1) != 1 or pos.numel() != 1 or pos.dtype != torch.int32):
            raise ValueError("HeadArgmax: append to ids (1, L) int64 with unit last stride at pos, one int32")
        int8 = weight.dtype == torch.int8
        kern = _kernel(K, int8, x.dtype == torch.bfloat16, _SCALE_T[scale.dtype] if int8 else 0, self.plan)
        g = grid or self._grid_for(kern, N, x.device)
        def ptr(t):
            return ctypes.c_void_p(t.data_ptr())

        args = [ptr(weight), ptr(scale if int8 else weight), ptr(x), ptr(logits), ctypes.c_int(N), ctypes.c_int(V),
                ptr(self.key), ptr(self.count), ptr(tok), ptr(ids), ptr(pos), ctypes.c_int(append is not None)]
        kern.launch((g, 1, 1), (NT, 1, 1), args, pdl=pdl)
        return tok


__all__ = ["HeadArgmax", "head_argmax_error", "head_argmax_ref", "int8_decode_ref"]
