"""Programmatic dependent launch (PDL, Hopper): the launch rules every decode kernel follows, in one place.

A kernel launched with PDL may start while the kernel before it is still running: the grid is scheduled once
every CTA of its predecessor has executed ``griddepcontrol.launch_dependents`` ("released" its dependents), and
``griddepcontrol.wait`` then blocks until the predecessor has finished and its writes are visible. What a decode
kernel does before its wait overlaps the kernels before it; that is where its weights are loaded.

Rules (``gemv.py``, ``ssm_step.py``, ``cuda/ternary_mma.cu``):

1. Nothing is written before the wait.
2. Before the wait a kernel reads only data that no kernel of the last four launches writes: weights and
   parameters (never written while decoding) and, for ``ssm_step``, its layer's SSM state, conv ring and the token
   counter, which the previous token's step wrote (3 x n_layer + 3 launches back at least; the counter is bumped
   at the end of the step).
3. ``ssm_step`` releases its dependents only after its wait. The GEMVs release theirs after the wait in mode
   ``"after"``, or as soon as their weight loads are issued (before the wait) in mode ``"early"``. Defaults
   (:data:`DEFAULTS`): "after" for the Triton GEMV, "early" for the tensor-core GEMV.

Why rule 2 holds with early release: a decode step launches at most four GEMVs between two ``ssm_step``
(DF-SSM: ``V x`` and the scaffold GEMV for out_proj, then for the next in_proj), so when any kernel starts, the
latest ``ssm_step`` launched before it (at most five launches back) has passed its wait; hence the kernel before
that one has finished, and so has every earlier kernel (each finished only after its own wait). Kernels launched
without PDL (the embedding, the sampling ops) wait for their predecessor to finish, which also bounds the chain.

What early release should buy: in ``"after"`` mode a GEMV's weight loads overlap only the kernel right before
it; in ``"early"`` mode the next layer's in_proj can load its weights while the SSM step and out_proj of this
layer run. What it did on an H100 (benchmarks/RESULTS.md, runs 8-15), 1.3B decode: with the tensor-core GEMV
(batch 4-8) 4-5% faster in every run (batch 4 1.523 / 1.538 vs 1.580 / 1.604 ms/token, batch 8 2.614 / 2.408 vs
2.725 / 2.526); with the Triton GEMV (batch 1) and the batched path (16, 64) no difference beyond the ~3%
run-to-run spread; and a chain of Triton GEMVs alone slower (in_proj 4.54 vs 4.26 us, out_proj 4.15 vs 3.15: the
early CTAs sit on the SMs the running kernel needs). Hence the per-kernel defaults; ``ssmquant bench decode``
times the other choice beside them.

``SSMQUANT_PDL``: ``0`` switches PDL off; ``early`` or ``after`` forces that mode on every GEMV; unset or ``1``:
the defaults.
"""

from __future__ import annotations

import functools
import os

import torch

MODES = (False, "after", "early")
# Release mode per kernel kind where PDL is on (measured, see above): the Triton GEMV (triton/gemv.py), the
# tensor-core GEMV (cuda/ternary_mma.py), the SSM step (always after its wait: rule 3).
DEFAULTS = {"gemv": "after", "mma": "early", "ssm": "after"}


def _forced() -> str | None:
    env = os.environ.get("SSMQUANT_PDL", "1").strip().lower()
    return env if env in ("early", "after") else None


@functools.lru_cache(maxsize=None)
def _device_supports(device: int) -> bool:
    """Hopper or newer and a Triton that exposes ``gdc_wait``: asked once per device, not per launch (every
    decode kernel resolves its mode when it is launched)."""
    import triton.language as tl

    return torch.cuda.get_device_capability(device)[0] >= 9 and hasattr(tl.extra.cuda, "gdc_wait")


def pdl_mode(kernel: str = "gemv") -> bool | str:
    """The PDL mode of a decode kernel of kind ``kernel`` ("gemv", "mma", "ssm"): False (not supported or
    switched off), "after" or "early".

    Needs a Hopper or newer GPU, a Triton that exposes ``gdc_wait``, not the Triton interpreter."""
    if os.environ.get("SSMQUANT_PDL", "1").strip() == "0" or os.environ.get("TRITON_INTERPRET") == "1" \
            or not torch.cuda.is_available():
        return False
    if not _device_supports(torch.cuda.current_device()):
        return False
    return resolve(True, kernel)


def resolve(pdl, kernel: str = "gemv") -> bool | str:
    """A kernel's ``pdl`` argument as a mode: None -> :func:`pdl_mode`; True -> the kernel kind's default
    (:data:`DEFAULTS`, or the mode ``SSMQUANT_PDL`` forces); False / "after" / "early" as they are."""
    if kernel not in DEFAULTS:
        raise ValueError(f"kernel={kernel!r}, expected one of {list(DEFAULTS)}")
    if pdl is None:
        return pdl_mode(kernel)
    if pdl is True:
        return _forced() or DEFAULTS[kernel]
    if pdl not in MODES:
        raise ValueError(f"pdl={pdl!r}, expected one of {MODES} or True / None")
    return pdl
