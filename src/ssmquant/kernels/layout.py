"""The GPU weight layout of a ternary matrix: 2-bit codes in int32 words, interleaved for a fast GEMV.

This is the kernels' own layout, chosen for how a GEMV program decodes it; the storage/export packings
(``ssmquant.quant.packing``, GGUF TQ2_0) are converted into it once, at load time, by :func:`pack_gemv`.

Layout
------
A ternary weight ``codes: (N, K) int8 in {-1, 0, 1}`` with ``scale: (N, K / G)`` (one scale per G consecutive inputs,
``w = code * scale``) becomes

    words: (N, K / 16) int32      16 codes per word, each stored as code + 1 in {0, 1, 2} (2 bits)
    scale: (N, K / G)  fp16       unchanged

The input dimension is cut into *pack blocks* of KB = 16 * KW inputs (KB divides G, so one block has one scale).
Inside block ``b`` of a row, word ``w`` (0 <= w < KW) holds in its bits ``2j, 2j+1`` the code of input
``b * KB + j * KW + w``, for j = 0..15. So bit field j of the KW words of a block covers KW *consecutive* inputs:
a GEMV program loads a (rows, words) tile once and, for each j, multiplies the field-j tile by one contiguous slice
of the activations, every operand staying in the tile's own register layout (no reshapes, no shuffles).

Decoding a field needs no shift for j <= 10: ``(word & (3 << 2j)) | 0x4B000000`` read as fp32 is
``2**23 + (code + 1) * 4**j``, exactly; subtracting ``2**23 + 4**j`` leaves ``code * 4**j`` and the activation is
pre-multiplied by ``4**-j`` (power-of-two scalings, exact). Fields 11..15 do the same on ``word >> 22``. That is
one integer and two fp32 operations per weight, no int->float conversion instruction (those run at a quarter of the
fp32 rate on Hopper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CODES_PER_WORD = 16
PACK_BLOCKS = (256, 128, 64, 32, 16)


def pack_block_size(K: int, group_size: int) -> int:
    """Largest pack block (<= 256 inputs) dividing both the group size and K."""
    for kb in PACK_BLOCKS:
        if group_size % kb == 0 and K % kb == 0:
            return kb
    raise ValueError(f"ternary GEMV layout needs K={K} and group_size={group_size} to be multiples of 16")


@dataclass
class GemvTernaryWeight:
    """A ternary (N, K) matrix in the GEMV layout (see the module docstring)."""

    words: torch.Tensor        # (N, K / 16) int32
    scale: torch.Tensor        # (N, K / G) fp16
    group_size: int            # G
    block: int                 # KB

    @property
    def shape(self) -> tuple[int, int]:
        return self.words.shape[0], self.words.shape[1] * CODES_PER_WORD

    def to(self, device) -> "GemvTernaryWeight":
        return GemvTernaryWeight(self.words.to(device), self.scale.to(device), self.group_size, self.block)

    def nbytes(self) -> int:
        return self.words.numel() * 4 + self.scale.numel() * self.scale.element_size()


def pack_gemv(codes: torch.Tensor, scale: torch.Tensor, group_size: int, block: int | None = None
              ) -> GemvTernaryWeight:
    """codes (N, K) int8 in {-1, 0, 1}, scale (N, K / G) -> :class:`GemvTernaryWeight` (on codes' device)."""
    N, K = codes.shape
    if scale.shape != (N, K // group_size) or K % group_size:
        raise ValueError(f"scale {tuple(scale.shape)} does not match codes {(N, K)} with group_size={group_size}")
    kb = block or pack_block_size(K, group_size)
    kw = kb // CODES_PER_WORD
    c = (codes.to(torch.int64) + 1).reshape(N, K // kb, CODES_PER_WORD, kw)     # (N, blocks, j, w)
    shifts = (2 * torch.arange(CODES_PER_WORD, device=codes.device)).view(1, 1, -1, 1)
    words = (c << shifts).sum(2)                                                # (N, blocks, w), < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return GemvTernaryWeight(words.reshape(N, K // CODES_PER_WORD).contiguous(),
                             scale.to(torch.float16).contiguous(), group_size, kb)


def unpack_codes_ref(w: GemvTernaryWeight) -> torch.Tensor:
    """Inverse of the code packing: (N, K) int8 in {-1, 0, 1}."""
    N, K = w.shape
    kw = w.block // CODES_PER_WORD
    words = w.words.to(torch.int64).reshape(N, K // w.block, 1, kw) & 0xFFFFFFFF
    shifts = (2 * torch.arange(CODES_PER_WORD, device=words.device)).view(1, 1, -1, 1)
    c = ((words >> shifts) & 3) - 1                                            # (N, blocks, j, w)
    return c.reshape(N, K).to(torch.int8)


def dequant_ref(w: GemvTernaryWeight) -> torch.Tensor:
    """(N, K) fp32 weight ``code * scale``, equal to ``quant.ternary.dequantize_ternary``."""
    N, K = w.shape
    c = unpack_codes_ref(w).float().view(N, K // w.group_size, w.group_size)
    return (c * w.scale.float().unsqueeze(-1)).reshape(N, K)


def ternary_linear_ref(x: torch.Tensor, w: GemvTernaryWeight) -> torch.Tensor:
    """x (..., K) -> (..., N) in fp32: the function every ternary kernel computes."""
    return x.float() @ dequant_ref(w).t()
