"""Prompt processing (prefill) of a packed model on the Triton kernels.

``prefill_model(model)`` returns a structural copy of a ``Mamba2LMHeadModel`` sharing its tensors, with its ternary
projections (``quant.layers.PackedTernaryLinear``) swapped for :class:`FastLinear`: the model's own forward, scan and
cache, with projections on the GEMV (few rows) or the tensor-core ternary product (``triton/gemm.py``, many rows).
``FastDecoder`` (``fast_decode.py``) prefills its prompt with it and shares ``fast_weight`` and ``GEMM_MIN_BATCH``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layout import GemvTernaryWeight, pack_gemv, pack_lowrank
from .triton.gemm import ternary_matmul
from .triton.gemv import gemv

# Rows from which a projection runs as a tensor-core product instead of a GEMV.
GEMM_MIN_BATCH = 16


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
    """A projection on the Triton kernels: GEMV below ``GEMM_MIN_BATCH`` rows, tensor-core product above."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if not isinstance(self.weight, GemvTernaryWeight):
            return F.linear(x, self.weight.to(x.dtype))
        if x2.shape[0] >= GEMM_MIN_BATCH:
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
