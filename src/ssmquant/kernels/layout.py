"""The GPU weight layout of a ternary (2-bit) or binary (1-bit) matrix: codes in int32 words, interleaved per block.

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

Binary scaffolds (DF-SSM, ``bits=1``): the same layout with 32 one-bit fields per word (bit set = +1, clear = -1),
pack blocks of KB = 32 * KW inputs. :class:`GemvLowRankWeight` adds DF-SSM's int8 factors ``U (N, r)``, ``V (r, K)``
with their per-row scales, untouched (they are tiny).

Decoding (``kernels/triton/gemv.py``): field j masked in place, ``word & (3 << 2j)``, read as fp32 is the denormal
``(code + 1) * 2**(2j - 149)``, exactly; one FFMA with the activation pre-scaled by a power of two adds
``(code + 1) * x`` (times a fixed power of two), so a weight costs one integer and one fp32 instruction, with no
int->float conversion (a quarter of the fp32 rate on Hopper). Fields 11..15 do the same on ``word >> 20``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CODES_PER_WORD = 16            # 2-bit codes; a 1-bit scaffold holds 32 per word (``fields_per_word``)
PACK_BLOCKS = (256, 128, 64, 32, 16)


def fields_per_word(bits: int) -> int:
    if bits not in (1, 2):
        raise ValueError(f"bits={bits}: the GEMV layout holds 2-bit ternary or 1-bit binary codes")
    return 32 // bits


def pack_block_size(K: int, group_size: int, bits: int = 2) -> int:
    """Largest pack block (<= 256 inputs) dividing both the group size and K."""
    f = fields_per_word(bits)
    for kb in PACK_BLOCKS:
        if kb % f == 0 and group_size % kb == 0 and K % kb == 0:
            return kb
    raise ValueError(f"{bits}-bit GEMV layout needs K={K} and group_size={group_size} to be multiples of {f}")


@dataclass
class GemvTernaryWeight:
    """A ternary (``bits=2``) or binary (``bits=1``) (N, K) matrix in the GEMV layout (see the module docstring)."""

    words: torch.Tensor        # (N, K * bits / 32) int32
    scale: torch.Tensor        # (N, K / G) fp16
    group_size: int            # G
    block: int                 # KB
    bits: int = 2

    @property
    def fields(self) -> int:
        return fields_per_word(self.bits)

    @property
    def words_per_block(self) -> int:
        return self.block // self.fields

    @property
    def shape(self) -> tuple[int, int]:
        return self.words.shape[0], self.words.shape[1] * self.fields

    def to(self, device) -> "GemvTernaryWeight":
        return GemvTernaryWeight(self.words.to(device), self.scale.to(device), self.group_size, self.block, self.bits)

    def nbytes(self) -> int:
        return self.words.numel() * 4 + self.scale.numel() * self.scale.element_size()


def pack_gemv(codes: torch.Tensor, scale: torch.Tensor, group_size: int, block: int | None = None, *,
              bits: int = 2) -> GemvTernaryWeight:
    """codes (N, K) int8 in {-1, 0, 1} (``bits=2``) or {-1, 1} (``bits=1``), scale (N, K / G)
    -> :class:`GemvTernaryWeight` (on codes' device)."""
    N, K = codes.shape
    if scale.shape != (N, K // group_size) or K % group_size:
        raise ValueError(f"scale {tuple(scale.shape)} does not match codes {(N, K)} with group_size={group_size}")
    f = fields_per_word(bits)
    kb = block or pack_block_size(K, group_size, bits)
    kw = kb // f
    if bits == 1:
        if bool((codes == 0).any()):
            raise ValueError("a 1-bit (binary) layout holds signs in {-1, 1}, got zeros")
        stored = (codes > 0).to(torch.int64)
    else:
        stored = codes.to(torch.int64) + 1
    c = stored.reshape(N, K // kb, f, kw)                                      # (N, blocks, j, w)
    shifts = (bits * torch.arange(f, device=codes.device)).view(1, 1, -1, 1)
    words = (c << shifts).sum(2)                                                # (N, blocks, w), < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return GemvTernaryWeight(words.reshape(N, K // f).contiguous(),
                             scale.to(torch.float16).contiguous(), group_size, kb, bits)


def unpack_codes_ref(w: GemvTernaryWeight) -> torch.Tensor:
    """Inverse of the code packing: (N, K) int8 in {-1, 0, 1}."""
    N, K = w.shape
    f, kw = w.fields, w.words_per_block
    words = w.words.to(torch.int64).reshape(N, K // w.block, 1, kw) & 0xFFFFFFFF
    shifts = (w.bits * torch.arange(f, device=words.device)).view(1, 1, -1, 1)
    stored = (words >> shifts) & ((1 << w.bits) - 1)                           # (N, blocks, j, w)
    c = stored - 1 if w.bits == 2 else 2 * stored - 1
    return c.reshape(N, K).to(torch.int8)


def codes_times_scale_ref(codes: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """codes (N, K), scale (N, K / G) -> (N, K) fp32 ``code * scale``, equal to ``quant.ternary.dequantize_ternary``
    (which the kernels' layer may not import)."""
    N, K = codes.shape
    c = codes.float().view(N, K // group_size, group_size)
    return (c * scale.float().unsqueeze(-1)).reshape(N, K)


def dequant_ref(w: GemvTernaryWeight) -> torch.Tensor:
    """(N, K) fp32 weight ``code * scale``, equal to ``quant.ternary.dequantize_ternary``."""
    return codes_times_scale_ref(unpack_codes_ref(w), w.scale, w.group_size)


def ternary_linear_ref(x: torch.Tensor, w: GemvTernaryWeight) -> torch.Tensor:
    """x (..., K) -> (..., N) in fp32: the function every ternary kernel computes."""
    return x.float() @ dequant_ref(w).t()


@dataclass
class GemvLowRankWeight:
    """A DF-SSM projection for the kernels: binary scaffold (``bits=1``) + int8 ``U (N, r)``, ``V (r, K)``.

    ``W = sign * scale + (u_q * u_scale) @ (v_q * v_scale)`` (``quant.binary_lowrank.PackedBinaryLowRankLinear``).
    """

    scaffold: GemvTernaryWeight   # bits=1 (or 2: signs as -1 / +1 ternary codes)
    u_q: torch.Tensor             # (N, r) int8
    u_scale: torch.Tensor         # (N,) fp16
    v_q: torch.Tensor             # (r, K) int8
    v_scale: torch.Tensor         # (r,) fp16

    @property
    def shape(self) -> tuple[int, int]:
        return self.scaffold.shape

    @property
    def rank(self) -> int:
        return self.u_q.shape[1]

    def nbytes(self) -> int:
        return self.scaffold.nbytes() + sum(t.numel() * t.element_size()
                                            for t in (self.u_q, self.u_scale, self.v_q, self.v_scale))


def pack_lowrank(signs, scale, u_q, u_scale, v_q, v_scale, group_size: int, *, bits: int = 1) -> GemvLowRankWeight:
    """The buffers of a ``PackedBinaryLowRankLinear`` -> :class:`GemvLowRankWeight` (on their device).

    ``bits=2`` stores the signs as 2-bit codes (-1 / +1 in the ternary layout): twice the scaffold's bytes, but the
    2-bit GEMV spends fewer instructions per weight than the 1-bit one, and decode GEMVs here are bound by
    instructions, not bytes (benchmarks/RESULTS.md)."""
    return GemvLowRankWeight(pack_gemv(signs, scale, group_size, bits=bits), u_q.to(torch.int8).contiguous(),
                             u_scale.to(torch.float16).contiguous(), v_q.to(torch.int8).contiguous(),
                             v_scale.to(torch.float16).contiguous())


def lowrank_linear_ref(x: torch.Tensor, w: GemvLowRankWeight) -> torch.Tensor:
    """x (..., K) -> (..., N) fp32: scaffold product plus ``U (V x)``, every operand dequantized in fp32."""
    u = w.u_q.float() * w.u_scale.float()[:, None]
    v = w.v_q.float() * w.v_scale.float()[:, None]
    return ternary_linear_ref(x, w.scaffold) + (x.float() @ v.t()) @ u.t()
