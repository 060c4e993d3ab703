"""The frozen teacher's forward for distillation, replayed from a CUDA graph on the GPU.

Each training step runs the teacher once on a batch of fixed shape, without gradients. In eager PyTorch that is
thousands of kernel launches whose CPU cost (~10-40 us each through the dispatcher) exceeds the GPU time of a
1.3B teacher at sequence 2048; captured once in a CUDA graph, a step costs one replay. The graph holds the
teacher's parameters by address, which is fine for a frozen teacher, and its activations live in the graph's
private memory pool (one forward's worth, no stored activations: it runs under ``no_grad``).

Off the GPU, with ``hidden_states_out``, or if a capture fails, the teacher runs eagerly. Outputs equal the eager
forward's (the same kernels run); tests/test_kernels_ssd_scan.py checks it on the GPU.
"""

from __future__ import annotations

import warnings

import torch


class TeacherForward:
    """``teacher(x, return_hidden=True)`` under ``no_grad``; graphs are captured per (shape, autocast state)."""

    def __init__(self, teacher: torch.nn.Module, *, use_graphs: bool = True):
        self.teacher = teacher
        self.use_graphs = use_graphs
        self._graphs: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, l) token ids -> final normed hidden states (b, l, d) (a fresh tensor, safe to keep)."""
        if not (self.use_graphs and x.is_cuda):
            with torch.no_grad():
                return self.teacher(x, return_hidden=True)
        key = (tuple(x.shape), x.device, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(x)
            except RuntimeError as e:        # e.g. an op that cannot be captured: run eagerly from now on
                warnings.warn(f"teacher forward runs eagerly: CUDA graph capture failed ({e})", stacklevel=2)
                self.use_graphs = False
                return self(x)
            self._graphs[key] = entry
        graph, x_in, out = entry
        x_in.copy_(x)
        graph.replay()
        return out.clone()

    @torch.no_grad()
    def _capture(self, x: torch.Tensor):
        x_in = x.clone()
        # Warm up on a side stream (Triton compiles, cuBLAS picks its kernels) before capturing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.teacher(x_in, return_hidden=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.teacher(x_in, return_hidden=True)
        return graph, x_in, out
