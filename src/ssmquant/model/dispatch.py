"""The one place where the model's scan and norm calls are routed to an implementation.

The model calls ``ssd_scan`` (training / prefill), ``ssd_step`` (decode) and ``rms_norm`` (its two norms); which
code runs is decided here, never by ``if cuda:`` branches scattered through the model. Backends:

``auto`` (default)
    CUDA tensors go to the Triton chunked scan (``ssmquant.kernels.triton.ssd_scan.ssd_chunk_scan``, forward and
    backward) when Triton imports and the chunk size is a power of two >= 16; everything else (CPU tensors, no
    Triton, odd chunk sizes) goes to the PyTorch reference. This is what ``ssmquant distill``, ``pretrain``,
    ``bench train``, prefill and evaluation use with no flag.
``torch``
    The PyTorch references (``ssd.ssd_chunked``, ``ops.rms_norm_ref``): the oracles every backend is tested
    against.
``triton``
    The Triton scan always (CPU tensors only under ``TRITON_INTERPRET=1``); an error where it cannot run.

``rms_norm`` and ``causal_conv1d_silu`` follow the same rule: the fused Triton kernels (``kernels.triton.rmsnorm``,
``kernels.triton.conv1d``: one kernel forward and one backward instead of ~30 elementwise ones, or a transpose copy,
cuDNN's conv and a SiLU) for CUDA tensors under ``auto`` (any tensor under ``triton``) where their shape fits, else
the references in ``ops``; registered backends other than these three use the ``auto`` rule.

The recurrent step (``ssd_step``, one token) is PyTorch in every backend; the fused decode kernels live in
``ssmquant.kernels.fast_decode``. Select with ``set_backend(name)`` or the ``SSMQUANT_SCAN`` environment variable
(read at import); add one with ``register_backend``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from . import ops, ssd


@functools.cache
def triton_module(name: str):
    """``ssmquant.kernels.triton.<name>``, or None without Triton (imported on first use: Triton is optional).

    The one place an optional Triton kernel module is imported (the scan, norms and conv here; the fused fake
    quantization in ``quant.ternary``)."""
    import importlib

    try:
        return importlib.import_module(f"..kernels.triton.{name}", __package__)
    except ImportError:
        return None


def _fused(name: str, x):
    """The fused module for ``x`` under the current backend, or None for the reference."""
    if _current != "torch" and (x.is_cuda or _current == "triton"):
        return triton_module(name)
    return None


def _triton_scan() -> Callable | None:
    mod = triton_module("ssd_scan")
    return None if mod is None else mod.ssd_chunk_scan


def _triton_ok(chunk_size: int) -> bool:
    return chunk_size >= 16 and chunk_size & (chunk_size - 1) == 0


def _with_skip(scan: Callable) -> Callable:
    """A scan without Mamba-2's D skip -> one taking ``D``: y + x * D added after (the mixer's former code)."""

    def scan_d(x, dt, A, B, C, chunk_size, initial_state=None, D=None):
        y, final = scan(x, dt, A, B, C, chunk_size, initial_state=initial_state)
        return (y if D is None else y + x * D.to(x.dtype)[:, None]), final

    return scan_d


_reference_scan = _with_skip(ssd.ssd_chunked)


def _auto_scan(x, dt, A, B, C, chunk_size, initial_state=None, D=None):
    if x.is_cuda and _triton_ok(chunk_size) and _triton_scan() is not None:
        return _triton_scan()(x, dt, A, B, C, chunk_size, initial_state=initial_state, D=D)
    return _reference_scan(x, dt, A, B, C, chunk_size, initial_state=initial_state, D=D)


def _forced_triton_scan(x, dt, A, B, C, chunk_size, initial_state=None, D=None):
    scan = _triton_scan()
    if scan is None:
        raise RuntimeError("scan backend 'triton' needs the triton package; use 'auto' or 'torch'")
    return scan(x, dt, A, B, C, chunk_size, initial_state=initial_state, D=D)


_BACKENDS: dict[str, tuple[Callable, Callable]] = {
    "auto": (_auto_scan, ssd.ssd_step),
    "torch": (_reference_scan, ssd.ssd_step),
    "triton": (_forced_triton_scan, ssd.ssd_step),
}
_current = os.environ.get("SSMQUANT_SCAN", "auto")


def register_backend(name: str, scan: Callable, step: Callable) -> None:
    """``scan(x, dt, A, B, C, chunk_size, initial_state) -> (y, final_state)``; ``step(x, dt, A, B, C, state) -> y``.
    The D skip is added after ``scan``."""
    _BACKENDS[name] = (_with_skip(scan), step)


def set_backend(name: str) -> None:
    global _current
    if name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; available: {sorted(_BACKENDS)}")
    _current = name


def get_backend() -> str:
    return _current


def ssd_scan(x, dt, A, B, C, *, chunk_size: int, initial_state=None, D=None):
    """``ssd.ssd_chunked``'s contract; with ``D`` (h,), y includes Mamba-2's skip ``D_h x`` (fused into the Triton
    scan's last kernel, added after the others)."""
    return _BACKENDS[_current][0](x, dt, A, B, C, chunk_size, initial_state=initial_state, D=D)


def ssd_step(x, dt, A, B, C, state):
    return _BACKENDS[_current][1](x, dt, A, B, C, state)


def rms_norm(x, weight, eps: float, *, z=None, group_size: int | None = None, out_dtype=None):
    """``ops.rms_norm_ref``'s contract: (gated) grouped RMSNorm of x (..., d) in fp32, out in ``out_dtype``."""
    fused = _fused("rmsnorm", x)
    if fused is not None and fused.supported(x, group_size or x.shape[-1]):
        return fused.rms_norm_fused(x, weight, eps, z=z, group_size=group_size, out_dtype=out_dtype)
    return ops.rms_norm_ref(x, weight, eps, z=z, group_size=group_size, out_dtype=out_dtype)


def causal_conv1d_silu(x, weight, bias, initial=None):
    """``ops.causal_conv1d_silu_ref``'s contract: x (b, l, c) -> silu(causal depthwise conv) (b, l, c).

    ``initial`` (b, c, k - 1): the inputs before x (a continued sequence), zeros when None; forward only."""
    fused = _fused("conv1d", x)
    if fused is not None and fused.supported(x):
        return fused.causal_conv1d_silu(x, weight, bias, initial)
    if initial is None:
        return ops.causal_conv1d_silu_ref(x, weight, bias)
    k1 = initial.shape[-1]
    full = torch.cat([initial.transpose(1, 2).to(x.dtype), x], dim=1)             # (b, k - 1 + l, c)
    return ops.causal_conv1d_silu_ref(full, weight, bias)[:, k1:]
