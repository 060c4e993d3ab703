"""Optional int8 embedding / LM head with one scale per row (weight-only, symmetric absmax).

At batch-1 decode the LM head (``padded_vocab x d_model``) is the largest single tensor read per token: 206 MB in
fp16 at 1.3B, more than all ternary projections together. Storing it as int8 with one fp16 scale per row halves it::

    scale[r] = max(|w[r, :]|) / 127   (floored at 2**-14 so an all-zero row still has a positive scale)
    q[r, c]  = round(w[r, c] / scale[r])   in [-127, 127]
    w_q      = q * scale[r]

The scale is rounded to fp16 *before* the codes are computed, so the stored pair reproduces ``w_q`` exactly (the
same rule as the ternary scales). Per-row int8 with an fp16 scale is exactly llama.cpp's Q8_0 when each 32-block
repeats the row's scale, so GGUF export stays lossless.

A tied embedding and head share one int8 tensor: :func:`quantize_int8_` builds one :class:`Int8Embedding` and an
:class:`Int8Linear` holding the *same* buffer objects, and the packed format stores them once.

Forward: ``Int8Embedding`` gathers int8 rows and scales them (cheap); ``Int8Linear`` multiplies with the dequantized
weight, cached in the compute dtype after the first call (``cache_dense``), trading RAM for CPU speed: torch has no
general int8-weight GEMV on CPU, and dequantizing the whole head every token would dominate decode.

The quality cost on the bundled teacher is measured in ``docs/formats.md`` (perplexity, fp32 vs int8 head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INT8_SCALE_FLOOR = 2.0**-14


def int8_rowwise(weight: Tensor, scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """``weight: (r, c)`` -> ``q: (r, c) int8`` in [-127, 127] and ``scale: (r,)`` in ``scale_dtype``."""
    w = weight.detach().float()
    s = (w.abs().amax(dim=1) / 127.0).clamp_min(INT8_SCALE_FLOOR).to(scale_dtype)
    q = (w / s.float().unsqueeze(1)).round().clamp_(-127, 127).to(torch.int8)
    return q, s


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """``q: (r, c) int8`` times ``scale: (r,)`` -> ``(r, c)`` fp32."""
    return q.float() * scale.float().unsqueeze(1)


class _Int8Weight(nn.Module):
    """``qweight: (r, c) int8`` and ``scale: (r,)`` buffers; ``weight`` is the dequantized (cached) weight."""

    def __init__(self, qweight: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.compute_dtype = dtype
        self._dense: Tensor | None = None

    def weight_dequantized(self) -> Tensor:
        return dequantize_int8(self.qweight, self.scale)

    @property
    def weight(self) -> Tensor:
        """Dense weight in the compute dtype (built once; code that reads ``.weight.dtype/.device`` keeps working)."""
        d = self._dense
        if d is None or d.device != self.qweight.device:
            d = self._dense = self.weight_dequantized().to(self.compute_dtype)
        return d

    def _apply(self, fn, recurse=True):
        self._dense = None  # .to(device/dtype) invalidates the cache
        out = super()._apply(fn, recurse)
        probe = fn(torch.zeros((), dtype=self.compute_dtype, device=self.qweight.device))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        return out

    def extra_repr(self) -> str:
        return f"shape={tuple(self.qweight.shape)}, scale_dtype={self.scale.dtype}"


class Int8Embedding(_Int8Weight):
    """ids: (...) -> (..., d) in the compute dtype."""

    def forward(self, ids: Tensor) -> Tensor:
        rows = F.embedding(ids, self.qweight)                                # (..., d) int8
        return (rows.float() * F.embedding(ids, self.scale.float().unsqueeze(1))).to(self.compute_dtype)


class Int8Linear(_Int8Weight):
    """x: (..., c) -> (..., r), no bias."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        return F.linear(x, w if w.dtype == x.dtype else w.to(x.dtype))


def quantize_int8_(model: nn.Module, *, embedding: bool = True, head: bool = True,
                   scale_dtype: torch.dtype = torch.float16) -> nn.Module:
    """Replace ``backbone.embedding`` and/or ``lm_head`` of a Mamba-2 LM by int8 per-row modules, in place.

    A tied pair (``lm_head.weight is backbone.embedding.weight``) must be converted together and stays tied
    (one int8 tensor). Returns ``model``.
    """
    emb, lm = model.backbone.embedding, model.lm_head
    if not isinstance(emb, nn.Embedding) or not isinstance(lm, nn.Linear):
        raise TypeError("quantize_int8_ needs a plain nn.Embedding embedding and nn.Linear lm_head")
    tied = lm.weight is emb.weight
    if tied and embedding != head:
        raise ValueError("the head is tied to the embedding: quantize both (embedding=True, head=True) or neither")
    dtype = emb.weight.dtype
    if embedding:
        q, s = int8_rowwise(emb.weight, scale_dtype)
        model.backbone.embedding = Int8Embedding(q, s, dtype)
    if head:
        if tied:
            model.lm_head = Int8Linear(model.backbone.embedding.qweight, model.backbone.embedding.scale, dtype)
        else:
            q, s = int8_rowwise(lm.weight, scale_dtype)
            model.lm_head = Int8Linear(q, s, dtype)
    return model
