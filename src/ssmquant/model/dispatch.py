"""The one place where the model's scan calls are routed to an implementation.

The model calls ``ssd_scan`` (training / prefill) and ``ssd_step`` (decode); which code runs is decided here, never by
``if cuda:`` branches scattered through the model. Faster kernels register themselves with ``register_backend`` and
are selected with ``set_backend`` (or the ``SSMQUANT_SCAN`` environment variable); the PyTorch reference is the
default and the oracle every backend is tested against.
"""

from __future__ import annotations

import os
from typing import Callable

from . import ssd

_BACKENDS: dict[str, tuple[Callable, Callable]] = {"torch": (ssd.ssd_chunked, ssd.ssd_step)}
_current = os.environ.get("SSMQUANT_SCAN", "torch")


def register_backend(name: str, scan: Callable, step: Callable) -> None:
    """``scan(x, dt, A, B, C, chunk_size, initial_state) -> (y, final_state)``; ``step(x, dt, A, B, C, state) -> y``."""
    _BACKENDS[name] = (scan, step)


def set_backend(name: str) -> None:
    global _current
    if name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; available: {sorted(_BACKENDS)}")
    _current = name


def get_backend() -> str:
    return _current


def ssd_scan(x, dt, A, B, C, *, chunk_size: int, initial_state=None):
    return _BACKENDS[_current][0](x, dt, A, B, C, chunk_size, initial_state=initial_state)


def ssd_step(x, dt, A, B, C, state):
    return _BACKENDS[_current][1](x, dt, A, B, C, state)
