"""The tensor-core layout of a ternary (2-bit) matrix: codes placed where ``mma.m16n8k16``'s A fragments want them.

Used by the CUDA decode GEMV (``kernels/cuda/ternary_mma.py``); converted from :class:`~.layout.GemvTernaryWeight`
(or from codes) once, at load time, like the Triton layout. Same bytes per weight: 2 bits + the group scales.

Layout
------
``codes: (N, K) int8 in {-1, 0, 1}`` with ``scale: (N, K / G)`` becomes

    words: (N16 / 16, K / 128, 32, 4) int32    N16 = N rounded up to 16 (padding rows hold code 0)
    scale: (N16, K / G) fp16                  padding rows 0

Rows are cut into tiles of 16, inputs into chunks of 128 (eight MMA k-steps of 16). The 512 bytes of a (tile,
chunk) are one uint4 per lane of a warp, lane ``L = 4 g + t`` (g = L // 4, t = L % 4 as in the PTX fragment
tables). Word ``j`` (0..3) of a lane serves k-steps ``2j`` and ``2j + 1``; its bit pair ``16 h + 2 q`` (half h,
field q = 0..7) holds code + 1 of

    row = 16 * tile + g + 8 * (a % 2),   k = 128 * chunk + 16 * (2 j + q // 4) + 2 t + 8 * (a // 2) + h,  a = q % 4

that is, element h of A register ``a`` of the k-step: register a0 = (row g, k 2t..2t+1), a1 = (row g+8, same k),
a2 = (row g, k 2t+8..2t+9), a3 = (row g+8, k 2t+8..2t+9). A lane's 16-byte load is its fragments for 8 MMAs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import GemvTernaryWeight, codes_times_scale_ref, unpack_codes_ref

TILE_N = 16          # output rows per tile (MMA M)
CHUNK_K = 128        # inputs per chunk (8 MMA k-steps)


@dataclass
class MmaTernaryWeight:
    """A ternary (N, K) matrix in the tensor-core layout (module docstring)."""

    words: torch.Tensor        # (N16 / 16, K / 128, 32, 4) int32
    scale: torch.Tensor        # (N16, K / G) fp16
    n: int                     # N (rows beyond it are padding)
    group_size: int            # G

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.words.shape[1] * CHUNK_K

    def nbytes(self) -> int:
        return self.words.numel() * 4 + self.scale.numel() * self.scale.element_size()


def mma_layout_error(N: int, K: int, group_size: int) -> str | None:
    """Why (N, K, G) cannot take this layout, or None. The kernel applies one scale per chunk or half chunk."""
    if K % CHUNK_K:
        return f"K={K} is not a multiple of {CHUNK_K}"
    if K % group_size or not (group_size == 64 or group_size % CHUNK_K == 0):
        return f"group size {group_size} must divide K={K} and be 64 or a multiple of {CHUNK_K}"
    return None


def _index(N16: int, K: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every bit pair of the packed words: its (row, k) and bit shift, each shaped (N16/16, KC, 32, 4, 16)
    (tile, chunk, lane, word, 2 q + h)."""
    NT, KC = N16 // TILE_N, K // CHUNK_K
    tile = torch.arange(NT, device=device).view(NT, 1, 1, 1, 1)
    chunk = torch.arange(KC, device=device).view(1, KC, 1, 1, 1)
    lane = torch.arange(32, device=device).view(1, 1, 32, 1, 1)
    j = torch.arange(4, device=device).view(1, 1, 1, 4, 1)
    f = torch.arange(16, device=device).view(1, 1, 1, 1, 16)
    q, h = f // 2, f % 2
    g, t, a = lane // 4, lane % 4, q % 4
    row = TILE_N * tile + g + 8 * (a % 2)
    k = CHUNK_K * chunk + 16 * (2 * j + q // 4) + 2 * t + 8 * (a // 2) + h
    shift = 16 * h + 2 * q
    return row, k, shift


def pack_mma(codes: torch.Tensor, scale: torch.Tensor, group_size: int) -> MmaTernaryWeight:
    """codes (N, K) int8 in {-1, 0, 1}, scale (N, K / G) -> :class:`MmaTernaryWeight` (on codes' device)."""
    N, K = codes.shape
    if scale.shape != (N, K // group_size):
        raise ValueError(f"scale {tuple(scale.shape)} does not match codes {(N, K)} with group_size={group_size}")
    err = mma_layout_error(N, K, group_size)
    if err:
        raise ValueError(f"tensor-core layout: {err}")
    N16 = -(-N // TILE_N) * TILE_N
    stored = torch.ones(N16, K, dtype=torch.int64, device=codes.device)          # code 0 in the padding rows
    stored[:N] = codes.to(torch.int64) + 1
    row, k, shift = _index(N16, K, codes.device)
    words = (stored[row, k] << shift).sum(-1)                                      # (NT, KC, 32, 4) < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    sc = torch.zeros(N16, K // group_size, dtype=torch.float16, device=codes.device)
    sc[:N] = scale.to(torch.float16)
    return MmaTernaryWeight(words.contiguous(), sc, N, group_size)


def unpack_mma_codes_ref(w: MmaTernaryWeight) -> torch.Tensor:
    """Inverse of :func:`pack_mma`'s code placement: (N, K) int8 in {-1, 0, 1}."""
    NT, KC = w.words.shape[:2]
    N16, K = NT * TILE_N, KC * CHUNK_K
    row, k, shift = _index(N16, K, w.words.device)
    stored = ((w.words.to(torch.int64) & 0xFFFFFFFF).unsqueeze(-1) >> shift) & 3
    codes = torch.empty(N16, K, dtype=torch.int64, device=w.words.device)
    codes[row.expand_as(stored).reshape(-1), k.expand_as(stored).reshape(-1)] = stored.reshape(-1) - 1
    return codes[: w.n].to(torch.int8)


def mma_dequant_ref(w: MmaTernaryWeight) -> torch.Tensor:
    """(N, K) fp32 weight ``code * scale``."""
    return codes_times_scale_ref(unpack_mma_codes_ref(w), w.scale[: w.n], w.group_size)


def mma_from_gemv(w: GemvTernaryWeight) -> MmaTernaryWeight:
    """Repack a 2-bit :class:`GemvTernaryWeight` (same codes and scales)."""
    if w.bits != 2:
        raise ValueError("the tensor-core layout holds 2-bit ternary codes")
    return pack_mma(unpack_codes_ref(w), w.scale, w.group_size)
