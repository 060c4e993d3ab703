"""Prompt processing (prefill) of a packed model on the Triton kernels.

``prefill_model(model)`` returns a structural copy of a ``Mamba2LMHeadModel`` sharing its tensors, with its ternary
projections (``quant.layers.PackedTernaryLinear``) swapped for :class:`FastLinear`: the model's own forward, scan and
cache, with projections on one of three paths by the number of rows (tokens) they see:

    rows < GEMM_MIN_BATCH                 ternary GEMV (``triton/gemv.py``): bound by the 2-bit weight's bytes
    GEMM_MIN_BATCH <= rows < DEQUANT_MIN_ROWS
                                          Triton ternary product (``triton/gemm.py``): tiles decoded in registers
    rows >= DEQUANT_MIN_ROWS              weight decoded once into an fp16 scratch matrix (``triton/dequant.py``,
                                          exact) and cuBLAS's fp16 GEMM: compute-bound, so 2-bit storage saves
                                          nothing, and cuBLAS ran 3x faster than the Triton product at 16k rows

All three compute ``x @ (code * scale)^T`` with fp32 accumulation and differ only in rounding order.
``FastDecoder`` (``fast_decode.py``) prefills its prompt with it and shares ``fast_weight`` and ``GEMM_MIN_BATCH``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layout import GemvTernaryWeight, pack_gemv, pack_lowrank
from .triton.dequant import dequant_ternary
from .triton.gemm import ternary_matmul
from .triton.gemv import gemv

# Rows from which a projection runs as a tensor-core product instead of a GEMV.
GEMM_MIN_BATCH = 16
# Rows from which it decodes the weight to fp16 and calls cuBLAS instead. H100, 1.3B in_proj, launches included:
# even with the Triton product at 256 rows (114 vs 122 us), 1.3x faster at 512, 3x at 16k.
DEQUANT_MIN_ROWS = 256

# One fp16 scratch matrix per device, grown to the largest projection and reused by every layer: kernels on one
# stream run in order, so a layer's decode never overwrites a weight the previous GEMM still reads. (A graph
# captured by GraphedPrefill uses the buffer its warm-up allocated.)
_SCRATCH: dict[torch.device, torch.Tensor] = {}


def _scratch(numel: int, device: torch.device) -> torch.Tensor:
    buf = _SCRATCH.get(device)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[device] = torch.empty(numel, device=device, dtype=torch.float16)
    return buf


def fast_weight_supported(mod: nn.Module) -> bool:
    """Whether :func:`fast_weight` takes ``mod``: a dense, ternary or DF-SSM projection without a bias."""
    from ..quant.binary_lowrank import PackedBinaryLowRankLinear
    from ..quant.layers import PackedTernaryLinear

    return isinstance(mod, FastLinear) or (
        isinstance(mod, (nn.Linear, PackedTernaryLinear, PackedBinaryLowRankLinear))
        and getattr(mod, "bias", None) is None)


def fast_weight(mod: nn.Module, dtype: torch.dtype, scaffold_bits: int = 2):
    """A projection's weight as the kernels want it: GemvTernaryWeight, GemvLowRankWeight (DF-SSM scaffold in
    ``scaffold_bits``-bit words, see ``layout.pack_lowrank``), or a contiguous dense tensor."""
    from ..quant.binary_lowrank import PackedBinaryLowRankLinear
    from ..quant.layers import PackedTernaryLinear

    if isinstance(mod, FastLinear):
        return mod.weight
    if getattr(mod, "bias", None) is not None:
        raise ValueError("projections with a bias are not supported (Mamba-2 has none)")
    if isinstance(mod, PackedTernaryLinear):
        return pack_gemv(mod.codes, mod.scale, mod.group_size)
    if isinstance(mod, PackedBinaryLowRankLinear):
        return pack_lowrank(mod.signs, mod.scale, mod.u_q, mod.u_scale, mod.v_q, mod.v_scale, mod.group_size,
                            bits=scaffold_bits)
    if isinstance(mod, nn.Linear):
        return mod.weight.detach().to(dtype).contiguous()
    raise TypeError(f"cannot run a {type(mod).__name__} projection in the fast decoder")


class FastLinear(nn.Module):
    """A projection on the Triton kernels: GEMV below ``GEMM_MIN_BATCH`` rows, Triton ternary product up to
    ``DEQUANT_MIN_ROWS``, decoded fp16 weight + cuBLAS from there (see the module docstring)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if not isinstance(self.weight, GemvTernaryWeight):
            return F.linear(x, self.weight.to(x.dtype))
        rows = x2.shape[0]
        if rows >= DEQUANT_MIN_ROWS and self.weight.bits == 2:
            w16 = dequant_ternary(self.weight, _scratch(self.out_features * self.in_features, x.device))
            out = F.linear(x2.to(torch.float16), w16).to(x.dtype)
        elif rows >= GEMM_MIN_BATCH:
            out = ternary_matmul(x2, self.weight, out_dtype=x.dtype)
        else:
            out = gemv(x2.contiguous(), self.weight, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def prefill_model(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` sharing its tensors, with ternary projections swapped for :class:`FastLinear`."""
    from ..quant.layers import PackedTernaryLinear

    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    clone = copy.deepcopy(model, memo)
    for layer in clone.backbone.layers:
        mix = layer.mixer
        for name in ("in_proj", "out_proj"):
            mod = getattr(mix, name)
            if isinstance(mod, PackedTernaryLinear):
                setattr(mix, name, FastLinear(fast_weight(mod, torch.float16)))
    return clone


class GraphedPrefill:
    """Prefill of one fixed (batch, seqlen) replayed from a CUDA graph: ``logits = gp(ids)``.

    An eager prefill of a 1.3B model at batch 1 is bound by the host (about 1 ms of Python and launches per layer
    for ~0.4 ms of GPU work on an H100); one graph replay launches the whole forward at once, as the training
    teacher does (``train/teacher.py``). The graph is captured from ``model(ids, cache, logits_to_keep=...)`` on a
    fresh cache (offset 0) after ``warmup`` eager calls (Triton compiles, cuBLAS picks its kernels, ``FastLinear``
    allocates its scratch). Each call copies ``ids`` (batch, seqlen) into the static input, replays, and leaves
    the new states in ``self.cache`` (offset ``seqlen``); the returned logits are a static tensor that the next
    call overwrites. Works for any ``Mamba2LMHeadModel`` (``prefill_model``'s copy or the dense model).
    """

    def __init__(self, model: nn.Module, batch: int, seqlen: int, *, logits_to_keep: int = 1, warmup: int = 2):
        dev = model.backbone.embedding.weight.device
        self.model, self.logits_to_keep = model, logits_to_keep
        self.ids = torch.zeros(batch, seqlen, dtype=torch.long, device=dev)
        self.cache = model.allocate_cache(batch)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                self._forward()
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.logits = self._forward()
        self.cache.seqlen_offset = seqlen

    def _forward(self) -> torch.Tensor:
        self.cache.seqlen_offset = 0
        return self.model(self.ids, self.cache, logits_to_keep=self.logits_to_keep)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape != self.ids.shape:
            raise ValueError(f"this graph prefills {tuple(self.ids.shape)} ids, got {tuple(ids.shape)}")
        self.ids.copy_(ids)
        self.graph.replay()
        self.cache.seqlen_offset = ids.shape[1]
        return self.logits
