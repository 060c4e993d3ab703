"""Ternary GEMV for decode on tensor cores (CUDA C++ compiled by NVRTC): ``out = W norm(x) (+ res)``, M <= 8.

Why a tensor-core GEMV. The Triton GEMV (``kernels/triton/gemv.py``) spends two instructions per weight at best
(AND + FFMA, 3.6 in its SASS), which at Mamba-2 1.3B shapes leaves it bound by instruction issue and latency at
23-37% of HBM bandwidth (benchmarks/RESULTS.md). Here a weight costs one instruction: a ``lop3`` + ``fma.f16x2``
pair decodes *two* codes into fp16 ``code`` values (``ternary_mma.cu`` has the arithmetic), and one
``mma.m16n8k16`` multiplies 256 of them by the activations. Batch rows 1..8 are MMA columns, so batch 2-8 costs
the same instructions as batch 1. Measured (H100, benchmarks/RESULTS.md run 7): 1.7x / 1.6x the Triton GEMV at
batch 4 (1.3B in_proj / out_proj), no gain at batch 1, where per-warp set-up, the activation staging and the
split-K reduction outweigh the cheaper decode; ``FastDecoder`` uses it from batch 4.

Work split: a CTA owns 16 output rows (an MMA tile); its warps split K into runs of ``CPW`` chunks of 128 inputs,
each lane issuing all of its weight loads (``CPW`` x 16 bytes) before anything else; partial sums meet in shared
memory. With programmatic dependent launch (Hopper) the weight and scale loads are issued before
``griddepcontrol.wait``, so they overlap the kernels before it, with the rules of ``kernels/pdl.py`` (nothing the
previous kernel writes is read, and nothing is written, before the wait; in mode "early" dependents are released
before the wait, in mode "after" after it).

Fused prologue: ``norm="rms"`` (or ``"gated"`` with one norm group, the same arithmetic over the whole row):
``xn = x * rsqrt(mean(x**2) + eps) * nw`` rounded to fp16 (as the PyTorch model rounds the normed input of its
fp16 linear), the statistics summed across the CTA's warps. Epilogue: ``+ residual`` (``out`` may be it).

Reference: :func:`mma_gemv_ref` (dequantized weight, fp32) and, for the decode arithmetic,
:func:`decode_pairs_ref` (the kernel's fp16 instructions emulated in NumPy).
"""

from __future__ import annotations

import ctypes
import functools
import os
from importlib import resources

import numpy as np
import torch

from ..layout_mma import CHUNK_K, TILE_N, MmaTernaryWeight, mma_dequant_ref
from ..pdl import resolve as resolve_pdl

MAX_ROWS = 8              # activation rows (MMA N)
# Shared memory per CTA (the activations are dynamic shared memory): 96 KB fits every GPU from sm_80 (sm_86 / 89
# allow 99 KB per CTA, A100 163 KB, H100 227 KB) and takes 8 rows of K up to 5120 (2.7B's out_proj).
_SMEM_LIMIT = 96 * 1024


def decode_constants() -> list[tuple[int, int, int]]:
    """(mask, mul, add) per field position p = 0..4: ``fma((w & mask) | 0x64006400, mul, add)`` in f16x2 is
    code - 1 for the 2-bit field at bits 2p (low half) and 16 + 2p (high half). mul = 4**-p, add = -(2**(10-2p)+1)."""
    out = []
    for p in range(5):
        mul = int(np.array(4.0 ** -p, np.float16).view(np.uint16))
        add = int(np.array(-(2.0 ** (10 - 2 * p) + 1), np.float16).view(np.uint16))
        out.append(((0x00030003 << (2 * p)) & 0xFFFFFFFF, mul * 0x10001, add * 0x10001))
    return out


def decode_pairs_ref(words: np.ndarray) -> np.ndarray:
    """The kernel's decode, emulated: uint32 words (...,) -> (..., 16) fp16 values in the order (q, h): field q's
    register (q = 0..3 first k-step, 4..7 second), half h. Each fp16 op is done exactly in fp64 and rounded once,
    as ``fma.rn.f16x2`` does."""
    w = words.astype(np.uint64)
    consts = decode_constants()
    out = []
    for q in range(8):
        src, p = (w, q) if q <= 4 else (w >> np.uint64(10), q - 5)
        mask, mul, add = consts[p]
        v = ((src & np.uint64(mask)) | np.uint64(0x64006400)).astype(np.uint32)
        for h in range(2):
            half = ((v >> np.uint32(16 * h)) & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16)
            m = np.array(mul & 0xFFFF, np.uint16).view(np.float16)
            a = np.array(add & 0xFFFF, np.uint16).view(np.float16)
            out.append((half.astype(np.float64) * float(m) + float(a)).astype(np.float16))
    return np.stack(out, -1)


def mma_supported() -> bool:
    """A CUDA device of compute capability >= 8.0 (``mma.m16n8k16``), NVRTC loadable, not the Triton
    interpreter, and not switched off with ``SSMQUANT_MMA=0``."""
    from .nvrtc import nvrtc_supported

    return os.environ.get("SSMQUANT_MMA", "1") != "0" and nvrtc_supported()


def default_cpw(M: int, K: int, rt: int = 1) -> int:
    """Chunks of 128 inputs per warp, the first of a preference list whose CTA fits 32 warps and the shared memory.
    Measured on H100 (benchmarks/RESULTS.md, run 7): up to 4 rows, 1 chunk (most warps, fewest registers): 1.3B
    in_proj at batch 1 4.82 us against 5.19 at 4 chunks; out_proj at batch 4 (run 15, 1 chunk fits since the
    activations moved to dynamic shared memory) 3.44 us at 1 chunk, 3.61 at 2, 4.02 at 4, and decode at batch 4
    1.59-1.60 ms/token as at 2 chunks before; at 8 rows 4 chunks: 1.3B decode at batch 8 2.52 ms/token against 2.60
    at 1 chunk for both projections (run 15; run 7: 2.72 against 2.84), although a GEMV alone prefers 1 chunk."""
    for cpw in ((1, 2, 4, 8, 16) if M <= 4 else (4, 8, 16, 2, 1)):
        nwarps = _nwarps(K, cpw)
        if nwarps <= 32 and _smem(M, cpw, nwarps, rt) <= _SMEM_LIMIT:
            return cpw
    return 16


def _nwarps(K: int, cpw: int) -> int:
    """Warps of a CTA: one per ``cpw`` chunks of 128 inputs."""
    return -(-max(1, K // CHUNK_K) // cpw)


def _smem_dynamic(M: int, cpw: int, nwarps: int) -> int:
    """Bytes of the activations' dynamic shared memory (``xs`` in ternary_mma.cu)."""
    return nwarps * M * (cpw * 64 + 8) * 4


def _smem(M: int, cpw: int, nwarps: int, rt: int = 1) -> int:
    """All shared memory of a CTA: the activations plus the static reduction and norm buffers."""
    return _smem_dynamic(M, cpw, nwarps) + nwarps * (16 * rt * 9 * 4 + M * 4)


def mma_gemv_error(M: int, N: int, K: int, group_size: int, cpw: int | None = None, rt: int = 1) -> str | None:
    """Why these shapes cannot run here, or None."""
    from ..layout_mma import mma_layout_error

    err = mma_layout_error(N, K, group_size)
    if err:
        return err
    if not 1 <= M <= MAX_ROWS:
        return f"batch {M} (1..{MAX_ROWS} rows)"
    cpw = cpw or default_cpw(M, K, rt)
    nwarps = _nwarps(K, cpw)
    if nwarps > 32 or _smem(M, cpw, nwarps, rt) > _SMEM_LIMIT:
        return f"K={K} at batch {M} needs more than {_SMEM_LIMIT} bytes of shared memory per CTA"
    return None


@functools.lru_cache(maxsize=None)
def _source() -> str:
    return resources.files(__package__).joinpath("ternary_mma.cu").read_text()


@functools.lru_cache(maxsize=None)
def _options(M: int, cpw: int, nwarps: int, xhalf: bool, ohalf: bool, norm: bool, res: bool, group_size: int,
             rt: int, early: bool = False) -> tuple[str, ...]:
    """The NVRTC ``-D`` constants of one kernel variant (built once: ``mma_gemv`` runs per decode step)."""
    opts = [f"-DNWARPS={nwarps}", f"-DCPW={cpw}", f"-DMROWS={M}", f"-DXHALF={int(xhalf)}", f"-DOHALF={int(ohalf)}",
            f"-DNORM={int(norm)}", f"-DRES={int(res)}", f"-DG64={int(group_size == 64)}",
            f"-DGCH={max(1, group_size // CHUNK_K)}", f"-DRT={rt}", f"-DPDL_EARLY={int(early)}"]
    for p, (mask, mul, add) in enumerate(decode_constants()):
        opts += [f"-DMSK{p}={mask:#x}u", f"-DMUL{p}={mul:#x}u", f"-DADD{p}={add:#x}u"]
    return tuple(opts)


def _kernel(*variant):
    """The compiled kernel of one variant (``_options``' arguments), on the current device."""
    from .nvrtc import get_kernel

    return get_kernel(_source(), "ternary_mma_gemv", list(_options(*variant)))


def mma_gemv(x: torch.Tensor, w: MmaTernaryWeight, *, norm: str | None = None,
             norm_weight: torch.Tensor | None = None, norm_group: int | None = None, eps: float = 1e-5,
             residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
             out_dtype: torch.dtype = torch.float32, cpw: int | None = None, rt: int = 1,
             pdl: bool | str | None = None) -> torch.Tensor:
    """x (M, K) fp32/fp16 -> (M, N) = W norm(x) (+ residual), M <= 8. ``norm``: None, "rms", or "gated" with a
    single group (``norm_group`` None or K). ``out`` may be ``residual`` (in-place update). ``pdl``: programmatic
    dependent launch mode, False / "after" / "early" (``kernels/pdl.py``; default: "early" where supported)."""
    N, K = w.shape
    M = x.shape[0]
    if x.dim() != 2 or x.shape[1] != K or x.stride(1) != 1 or x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"x must be (M, {K}) fp32/fp16 with unit last stride, got {tuple(x.shape)} {x.dtype}")
    if norm == "gated" and norm_group not in (None, K):
        raise ValueError("the tensor-core GEMV fuses a gated norm with a single group only")
    if norm not in (None, "rms", "gated"):
        raise ValueError(f"norm={norm!r}")
    if norm is not None and (norm_weight is None or norm_weight.shape != (K,)):
        raise ValueError("a fused norm needs norm_weight of shape (K,)")
    cpw = cpw or default_cpw(M, K, rt)
    err = mma_gemv_error(M, N, K, w.group_size, cpw, rt)
    if err:
        raise ValueError(f"tensor-core GEMV: {err}")
    if out is None:
        out = torch.empty(M, N, device=x.device, dtype=out_dtype)
    if out.dtype not in (torch.float32, torch.float16) or out.shape != (M, N) or out.stride(1) != 1:
        raise ValueError(f"out must be ({M}, {N}) fp32/fp16 with unit last stride")
    if residual is not None and (residual.shape != (M, N) or residual.dtype != torch.float32
                                 or residual.stride(1) != 1):
        raise ValueError(f"residual must be ({M}, {N}) fp32")
    nw = None
    if norm is not None:
        nw = norm_weight if norm_weight.dtype == torch.float32 and norm_weight.is_contiguous() else \
            norm_weight.float().contiguous()
    pdl = resolve_pdl(pdl, "mma")
    nwarps = _nwarps(K, cpw)
    kern = _kernel(M, cpw, nwarps, x.dtype == torch.float16, out.dtype == torch.float16, norm is not None,
                   residual is not None, w.group_size, rt, pdl == "early")
    res = residual if residual is not None else out
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    args = [ptr(w.words), ptr(w.scale), ptr(x), ctypes.c_long(x.stride(0)), ptr(nw if nw is not None else x),
            ptr(res), ctypes.c_long(res.stride(0)), ptr(out), ctypes.c_long(out.stride(0)), ctypes.c_int(N),
            ctypes.c_int(K), ctypes.c_int(w.scale.shape[1]), ctypes.c_float(eps)]
    kern.launch((-(-w.words.shape[0] // rt), 1, 1), (32 * nwarps, 1, 1), args, pdl=bool(pdl),
                smem=_smem_dynamic(M, cpw, nwarps))
    return out


def mma_gemv_ref(x: torch.Tensor, w: MmaTernaryWeight, *, norm: str | None = None,
                 norm_weight: torch.Tensor | None = None, eps: float = 1e-5,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch :func:`mma_gemv` in fp32 (the normed activations rounded to fp16, as the kernel and the
    fp16 model do): x (M, K) -> (M, N)."""
    from ..triton.gemv import norm_ref

    xf = norm_ref(x, norm, norm_weight, None, eps).half().float()
    y = xf @ mma_dequant_ref(w).t()
    return y if residual is None else y + residual.float()


__all__ = ["MAX_ROWS", "TILE_N", "decode_constants", "decode_pairs_ref", "mma_gemv", "mma_gemv_error",
           "mma_gemv_ref", "mma_supported"]
