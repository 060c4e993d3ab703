"""Several processes (``torchrun``): process-group setup and the few collectives the trainer needs.

Single-process runs go through the same functions, which then do nothing, so the trainer has no ``if distributed``
branches of its own. NCCL on CUDA, gloo on CPU. NVLink multicast (NVLS) is left off: on shared hosts it can take
the GPUs down (``NCCL_NVLS_ENABLE=0`` is set unless the user set it).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        tdist.init_process_group(backend=backend)
        here = True
    return DistContext(rank, local, world, here)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, device: torch.device):
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model, ctx: DistContext, *, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if ctx.enabled and not last:
        return model.no_sync()
    return nullcontext()


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if not ctx.enabled:
        return t
    t = t.clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t / ctx.world_size


def gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def cleanup(ctx: DistContext) -> None:
    if ctx.initialized_here and tdist.is_initialized():
        tdist.destroy_process_group()
