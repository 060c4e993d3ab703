"""Ternary modules: the QAT modules ``quantize_`` swaps in, and the packed modules ``convert`` swaps them for.

How this works
--------------
``TernaryLinear`` / ``TernaryEmbedding`` hold the fp32 latent ``weight`` (same name and layout as the module they
replace, so optimizers, weight decay rules and state-dict keys keep working) plus the scale state of their mode:

============  ==========================================================  =============================
scale_mode    scale used in forward                                        state
============  ==========================================================  =============================
fixed         absmean of the current latent weights, no gradient           none (recomputed each forward)
learnable     ``scale`` parameter, initialised to absmean, LSQ gradient    ``scale`` parameter (r, n) fp32
ema           EMA of absmean, updated by each forward in training mode      ``scale`` buffer (r, n) fp32
============  ==========================================================  =============================

In every mode the scale is floored and rounded to ``scale_dtype`` before use (``ternary.round_scale``), and the
forward is ``F.linear(x, ternary_fake_quant(weight, scale))``. The forward never exposes the latent weight, so any
code that calls the module gets the quantized weight; code that reads ``.weight`` raw (fused kernels) would bypass
it, which ``api.find_bypassed_modules`` detects.

``PackedTernaryLinear`` / ``PackedTernaryEmbedding`` hold ``codes: (r, c) int8`` and ``scale: (r, n)`` in the
storage dtype and compute ``dequantize_ternary(codes, scale)``, the same function the fake-quant forward returns,
so packed and fake-quant weights are equal bit for bit. These are reference (dequantize-then-matmul) modules; the
2-bit packing and fast kernels live elsewhere and are tested against them.

The weight is cast to the activation dtype right before ``F.linear``: under autocast that is what autocast would
do anyway, and without it a bf16 model still gets a weight computed in fp32 from fp32 latents and a rounded scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ternary import (
    SCALE_FLOOR,
    absmean_scale,
    dequantize_ternary,
    lsq_grad_scale,
    round_scale,
    ternary_codes_and_scales,
    ternary_fake_quant,
)

SCALE_MODES = ("fixed", "learnable", "ema")


class _TernaryWeight(nn.Module):
    """Latent weight ``(r, c)`` + scale state + fake quantization; subclasses only add their ``forward``."""

    def __init__(
        self,
        weight: Tensor,
        group_size: int,
        scale_mode: str = "fixed",
        scale_dtype: torch.dtype = torch.float16,
        ema_decay: float = 0.99,
        lsq_grad_scaling: bool = True,
        scale_floor: float = SCALE_FLOOR,
    ):
        super().__init__()
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode={scale_mode!r}, expected one of {SCALE_MODES}")
        # Latent weights are fp32 whatever the source dtype: ternary QAT updates are far below bf16 resolution.
        if isinstance(weight, nn.Parameter) and weight.dtype == torch.float32:
            self.weight = weight  # the same Parameter object: nothing to copy
        else:
            trainable = weight.requires_grad if isinstance(weight, nn.Parameter) else True
            self.weight = nn.Parameter(weight.detach().float(), requires_grad=trainable)
        self.group_size = group_size
        self.scale_mode = scale_mode
        self.scale_dtype = scale_dtype
        self.ema_decay = ema_decay
        self.lsq_grad_scaling = lsq_grad_scaling
        self.scale_floor = scale_floor
        init = absmean_scale(self.weight, group_size, scale_floor)  # (r, n)
        if scale_mode == "learnable":
            self.scale = nn.Parameter(init)
        elif scale_mode == "ema":
            self.register_buffer("scale", init)
        else:
            self.register_parameter("scale", None)

    @property
    def n_groups(self) -> int:
        return self.weight.shape[1] // self.group_size

    def absmean(self) -> Tensor:
        """``(r, n)`` fp32 floored absmean of the current latent weights (no gradient)."""
        return absmean_scale(self.weight, self.group_size, self.scale_floor)

    def effective_scale(self) -> Tensor:
        """``(r, n)`` fp32 scale the forward uses: floored, rounded to ``scale_dtype``; carries LSQ's gradient in
        learnable mode. Reading it never updates EMA state."""
        s = self.absmean() if self.scale is None else self.scale
        return round_scale(s, self.scale_dtype, self.scale_floor)

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.scale.mul_(self.ema_decay).add_(self.absmean(), alpha=1.0 - self.ema_decay)

    def fake_quant_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """``(r, c)`` ternary weight, fp32 or in ``dtype``, with STE (weights) and LSQ (learnable scale) gradients."""
        if self.scale_mode == "ema" and self.training:
            self._update_ema()
        grad_scale = lsq_grad_scale(self.group_size) if self.lsq_grad_scaling else 1.0
        return ternary_fake_quant(
            self.weight, self.effective_scale(), self.group_size, scale_dtype=self.scale_dtype, grad_scale=grad_scale,
            out_dtype=dtype,
        )

    def codes_and_scale(self) -> tuple[Tensor, Tensor]:
        """``codes: (r, c) int8`` and ``scale: (r, n)`` in ``scale_dtype``, exactly what the forward uses."""
        return ternary_codes_and_scales(
            self.weight, self.group_size, self.effective_scale(), scale_dtype=self.scale_dtype, floor=self.scale_floor
        )

    def extra_repr(self) -> str:
        return (f"shape={tuple(self.weight.shape)}, group_size={self.group_size}, scale_mode={self.scale_mode}, "
                f"scale_dtype={self.scale_dtype}")


class TernaryLinear(_TernaryWeight):
    """QAT replacement of ``nn.Linear``. x: (..., in_features) -> (..., out_features)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, **kwargs):
        super().__init__(weight, **kwargs)
        self.out_features, self.in_features = self.weight.shape
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, **kwargs) -> TernaryLinear:
        return cls(linear.weight, linear.bias, group_size=group_size, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        # The weight in the dtype the product runs in: autocast's when it is on (it would cast it there anyway),
        # else x's. Asking for it here lets the fused fake-quant write it directly (same values as a later cast).
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        return F.linear(x, self.fake_quant_weight(dtype), bias)


class TernaryEmbedding(_TernaryWeight):
    """QAT replacement of ``nn.Embedding``; groups run along ``embedding_dim``. ids: (...) -> (..., d)."""

    def __init__(self, weight: Tensor, padding_idx: int | None = None, **kwargs):
        super().__init__(weight, **kwargs)
        self.num_embeddings, self.embedding_dim = self.weight.shape
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group_size: int, **kwargs) -> TernaryEmbedding:
        if emb.max_norm is not None or emb.sparse or emb.scale_grad_by_freq:
            # max_norm renormalises the latent weight in place during lookup; sparse grads cannot pass an STE.
            raise ValueError("TernaryEmbedding needs a plain embedding (no max_norm, sparse, scale_grad_by_freq)")
        return cls(emb.weight, emb.padding_idx, group_size=group_size, **kwargs)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.fake_quant_weight(), self.padding_idx)


class _PackedTernary(nn.Module):
    """``codes: (r, c) int8`` and ``scale: (r, n)`` buffers; :meth:`weight_dequantized` is the deployed weight."""

    def __init__(self, codes: Tensor, scale: Tensor, group_size: int):
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.group_size = group_size

    @classmethod
    def _from_ternary(cls, module: _TernaryWeight, **kwargs) -> _PackedTernary:
        with torch.no_grad():
            codes, scale = module.codes_and_scale()
        return cls(codes, scale, module.group_size, **kwargs)

    def weight_dequantized(self) -> Tensor:
        """``(r, c)`` fp32, equal bit for bit to the source module's ``fake_quant_weight()``."""
        return dequantize_ternary(self.codes, self.scale, self.group_size)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.codes.shape)}, group_size={self.group_size}, scale_dtype={self.scale.dtype}"


class PackedTernaryLinear(_PackedTernary):
    """Deployed ``TernaryLinear``. x: (..., in_features) -> (..., out_features)."""

    def __init__(self, codes: Tensor, scale: Tensor, group_size: int, bias: Tensor | None = None):
        super().__init__(codes, scale, group_size)
        self.out_features, self.in_features = codes.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_ternary(cls, module: TernaryLinear) -> PackedTernaryLinear:
        return cls._from_ternary(module, bias=module.bias)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight_dequantized().to(x.dtype), bias)


class PackedTernaryEmbedding(_PackedTernary):
    """Deployed ``TernaryEmbedding``. ids: (...) -> (..., d)."""

    def __init__(self, codes: Tensor, scale: Tensor, group_size: int, padding_idx: int | None = None):
        super().__init__(codes, scale, group_size)
        self.num_embeddings, self.embedding_dim = codes.shape
        self.padding_idx = padding_idx

    @classmethod
    def from_ternary(cls, module: TernaryEmbedding) -> PackedTernaryEmbedding:
        return cls._from_ternary(module, padding_idx=module.padding_idx)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight_dequantized(), self.padding_idx)
