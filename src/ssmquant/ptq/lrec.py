"""Low-rank error correction (LREC-style) of a quantized weight: ``W ≈ Q(W) + U·V`` with ``U·V`` the rank-``k``
truncated SVD of the quantization error ``E = W − Q(W)``.

By Eckart–Young the truncated SVD is the best rank-``k`` approximation of ``E`` in Frobenius (and spectral) norm, so
``k >= rank(E)`` recovers ``W`` exactly (up to fp rounding) and, at any ``k``, no rank-``k`` correction does better.
Factors are split ``U = U_k √Σ``, ``V = √Σ V_kᵀ`` (``binary_lowrank.svd_factors``) and stored in fp16 or as int8
with one fp16 scale per row (``quant.int8.int8_rowwise``). The forward is ``Q(W) x + U (V x)``
(:class:`LowRankCorrectedLinear`); the ptq command saves the folded dense weight ``Q(W) + U V`` (see
docs/ptq_dfssm.md for why) and records the factored size in the config note.

Glossary: ``r`` rows (out_features), ``c`` cols (in_features), ``k`` rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant.binary_lowrank import svd_factors
from ..quant.int8 import dequantize_int8, int8_rowwise

FACTOR_DTYPES = ("fp16", "int8")


def quantize_factor(t: Tensor, factor_dtype: str) -> Tensor:
    """A factor as stored, returned as fp32 values: fp16 rounding or int8 per row (fp16 scale)."""
    if factor_dtype == "fp16":
        return t.half().float()
    if factor_dtype == "int8":
        return dequantize_int8(*int8_rowwise(t))
    raise ValueError(f"factor_dtype={factor_dtype!r}: use one of {FACTOR_DTYPES}")


@torch.no_grad()
def lrec_factors(w: Tensor, w_q: Tensor, rank: int, factor_dtype: str = "fp16") -> tuple[Tensor, Tensor]:
    """``w, w_q: (r, c)`` -> stored factors ``U: (r, k)``, ``V: (k, c)`` fp32 with ``U V ≈ w − w_q``."""
    u, v = svd_factors(w.float() - w_q.float(), rank)
    return quantize_factor(u, factor_dtype), quantize_factor(v, factor_dtype)


def factor_bytes(rows: int, cols: int, rank: int, factor_dtype: str) -> int:
    """Bytes of one layer's factors: fp16 = 2 k (r + c); int8 = k (r + c) + 2 (r + k) for the row scales."""
    if factor_dtype == "fp16":
        return 2 * rank * (rows + cols)
    return rank * (rows + cols) + (2 * (rows + rank) if rank else 0)


class LowRankCorrectedLinear(nn.Module):
    """``y = x W_qᵀ + (x Vᵀ) Uᵀ (+ bias)``. x: (..., c) -> (..., r). ``base: (r, c)`` the dequantized Q(W)."""

    def __init__(self, base: Tensor, u: Tensor, v: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.register_buffer("base", base.float())
        self.register_buffer("U", u.float())
        self.register_buffer("V", v.float())
        self.bias = bias
        self.out_features, self.in_features = base.shape

    def folded_weight(self) -> Tensor:
        """``(r, c)`` fp32 ``W_q + U V``: equal to the forward up to fp summation order."""
        return self.base + self.U @ self.V

    def forward(self, x: Tensor) -> Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.base.to(x.dtype), b) + F.linear(F.linear(x, self.V.to(x.dtype)), self.U.to(x.dtype))
