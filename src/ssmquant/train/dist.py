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


def no_sync(model, ctx: DistContext, *, last: bool, fsdp: bool = False):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP2) on all but the last micro-batch."""
    if not ctx.enabled:
        return nullcontext()
    if fsdp:
        model.set_requires_gradient_sync(last)
        return nullcontext()
    return model.no_sync() if not last else nullcontext()


def shard_fsdp(model: torch.nn.Module) -> None:
    """FSDP2: shard each Mamba-2 block, then the root (embedding, final norm, head stay together, tied or not)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.backbone.layers:
        fully_shard(layer)
    fully_shard(model)


def full_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict | None]:
    """Unsharded model and optimizer state on CPU, keyed by parameter names (valid for any process count).

    Collective when the model is sharded: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_full_state(model: torch.nn.Module, optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Inverse of ``full_state`` on every rank (sharded or not)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)


def to_float(t) -> float:
    """A scalar tensor (or DTensor, as FSDP2's gradient norm is) as a Python float."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t)


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
