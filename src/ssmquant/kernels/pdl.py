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
   ``"after"`` (the default), or as soon as their weight loads are issued (before the wait) in mode ``"early"``.

Why rule 2 holds with early release: a decode step launches at most four GEMVs between two ``ssm_step``
(DF-SSM: ``V x`` and the scaffold GEMV for out_proj, then for the next in_proj), so when any kernel starts, the
latest ``ssm_step`` launched before it (at most five launches back) has passed its wait; hence the kernel before
that one has finished, and so has every earlier kernel (each finished only after its own wait). Kernels launched without PDL (the
embedding, the sampling ops) wait for their predecessor to finish, which also bounds the chain.

What early release should buy: in ``"after"`` mode a GEMV's weight loads overlap only the kernel right before
it; in ``"early"`` mode the next layer's in_proj can load its weights while the SSM step and out_proj of this
layer run. What it did on an H100 (benchmarks/RESULTS.md, run 8): 1.3B decode within run-to-run noise (batch 1
0.775 vs 0.779 ms/token, batch 4 1.523 vs 1.580, batch 8 2.614 vs 2.725, while the same configuration measured
0.756 and 0.778 in one run), and a chain of GEMVs alone slower (in_proj 4.54 vs 4.26 us, out_proj 4.15 vs 3.15:
the early CTAs sit on the SMs the running kernel needs). Hence the default stays "after"; ``ssmquant bench decode``
times the other mode beside it.

``SSMQUANT_PDL``: ``0`` switches PDL off, ``early`` selects early release; unset, ``1`` or ``after``: the default.
"""

from __future__ import annotations

import os

import torch

MODES = (False, "after", "early")


def pdl_mode() -> bool | str:
    """The PDL mode of the decode kernels here: False (not supported or switched off), "after" or "early".

    Needs a Hopper or newer GPU, a Triton that exposes ``gdc_wait``, not the Triton interpreter."""
    env = os.environ.get("SSMQUANT_PDL", "1").strip().lower()
    if env == "0" or os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability()[0] < 9:
        return False
    import triton.language as tl

    if not hasattr(tl.extra.cuda, "gdc_wait"):
        return False
    return "early" if env == "early" else "after"


def resolve(pdl) -> bool | str:
    """A kernel's ``pdl`` argument as a mode: None -> :func:`pdl_mode`; True -> "after" ("early" with
    ``SSMQUANT_PDL=early``); False / "after" / "early" as they are."""
    if pdl is None:
        return pdl_mode()
    if pdl is True:
        return "early" if os.environ.get("SSMQUANT_PDL", "").strip().lower() == "early" else "after"
    if pdl not in MODES:
        raise ValueError(f"pdl={pdl!r}, expected one of {MODES} or True / None")
    return pdl
