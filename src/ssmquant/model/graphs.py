"""CUDA graphs of the backbone's blocks for training: each block's forward and backward replayed, not launched.

Why: at Mamba-2 1.3B and sequence 2048 a training step launches thousands of small kernels (projections, fused
norms, conv, scan, fake quant and their backwards), and the CPU time to launch them through PyTorch's dispatcher,
autograd and Triton's launcher exceeds the GPU time they take. A replayed graph costs one launch per block and
direction.

How: ``torch.cuda.make_graphed_callables`` over all blocks at once, so they share one memory pool (forward graphs
captured in layer order, backward graphs in reverse: the order a training step runs them). Each block is wrapped
so that the residual stream is its only argument. Capture happens at the first training forward that needs a new
key (input shape and dtype, whether it needs a gradient, the autocast state, which parameters need gradients)
and takes a couple of extra forward + backward passes on random inputs (warm-up) once. The kernels replayed are the
ones the eager forward runs, so the results are the same; tests/test_kernels_ssd_scan.py checks a training step.

Limits: graphs read parameters by address, so in-place optimizer updates are seen but a parameter replaced by a new
tensor is not (change of requires_grad triggers a re-capture; anything else: call ``reset``); the warm-up runs
forwards, which advance state that a forward updates (the EMA scale mode). Not for FSDP-sharded models (their
parameters move); the trainer does not switch it on there. Autocast's weight-cast cache is off during capture
(graphed callables refuse it); nothing in the blocks uses it: the projections cast their weights themselves.
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    """A block with the residual stream as its only argument (graphed callables take tensors only)."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.block = block
        self.dtype = dtype

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return self.block(residual, None, self.dtype)


class LayerGraphs:
    """The graphed blocks of one backbone, captured for one key at a time."""

    def __init__(self):
        self.key = None
        self.fns: tuple | None = None

    def reset(self) -> None:
        self.key, self.fns = None, None

    def get(self, layers: nn.ModuleList, residual: torch.Tensor, dtype: torch.dtype) -> tuple:
        """Callables ``f_i(residual) -> residual`` for ``layers``, captured for ``residual``'s key if needed."""
        key = (tuple(residual.shape), residual.dtype, residual.device, residual.requires_grad, dtype,
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
               tuple(p.requires_grad for p in layers.parameters()))
        if key != self.key:
            self.reset()
            wrappers = tuple(_Block(layer, dtype) for layer in layers)
            samples = tuple((torch.randn_like(residual).requires_grad_(residual.requires_grad or i > 0),)
                            for i in range(len(layers)))
            with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False):
                self.fns = torch.cuda.make_graphed_callables(wrappers, samples, num_warmup_iters=2)
            self.key = key
        return self.fns

    def __deepcopy__(self, memo):
        return LayerGraphs()            # graphs belong to the blocks they captured; a copy captures its own
