"""Bit packing of ternary codes: 2 bits per weight (4 codes per byte) and 1.6 bits (5 trits per byte, base 3).

How this works
--------------
Both layouts pack each row of a ``codes: (r, c) int8`` matrix (values -1, 0, +1) on its own, so the packed tensor
keeps the row count and its shape says what it holds: ``(r, ceil(c / k))`` uint8 with ``k`` codes per byte. A row
whose length is not a multiple of ``k`` is padded with code 0; unpacking checks the padding is still 0.

``2bit``   byte ``j`` of a row holds columns ``4j + i`` (``i = 0..3``) at bit shift ``2i`` as ``code + 1``
           (0, 1, 2). The value 3 is invalid.
``1.6bit`` byte ``j`` of a row holds columns ``5j + i`` (``i = 0..4``) as the base-3 number
           ``sum_i (code_i + 1) * 3**i`` (0..242). Bytes 243..255 are invalid. 3**5 = 243 <= 256, so 5 trits is
           the most a byte holds: 1.6 bits per weight, 1.3% above the log2(3) = 1.585 bit entropy bound.

These are our on-disk layouts (simple, row-aligned, easy to validate). llama.cpp's TQ2_0 / TQ1_0 blocks interleave
codes differently and carry their scale inside the block; ``ssmquant.export.gguf`` writes those.

Unpacking never trusts its input: an invalid byte raises ``ValueError`` saying where; callers add the tensor name.
``pack_ref`` / ``unpack_ref`` are slow per-element references for the tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# codes per byte of each packing; the packing names are the on-disk ``quantization_config.packing`` values.
CODES_PER_BYTE = {"2bit": 4, "1.6bit": 5}
BITS_PER_CODE = {"2bit": 2.0, "1.6bit": 1.6}
_POW3 = (1, 3, 9, 27, 81)


def check_packing(packing: str) -> int:
    """Codes per byte of ``packing``, or ValueError naming the valid packings."""
    if packing not in CODES_PER_BYTE:
        raise ValueError(f"unknown packing {packing!r}; use one of {list(CODES_PER_BYTE)}")
    return CODES_PER_BYTE[packing]


def packed_cols(cols: int, packing: str) -> int:
    """Bytes per packed row of ``cols`` codes."""
    return math.ceil(cols / check_packing(packing))


def packed_nbytes(rows: int, cols: int, packing: str) -> int:
    """Bytes of a packed ``(rows, cols)`` code matrix (what the file holds, padding included)."""
    return rows * packed_cols(cols, packing)


def _padded(codes: Tensor, k: int) -> Tensor:
    """``(r, c) int8`` -> ``(r, ceil(c/k), k)`` uint8 digits ``code + 1``, padded with code 0 (digit 1)."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {tuple(codes.shape)}")
    r, c = codes.shape
    pad = -c % k
    digits = (codes.to(torch.int16) + 1)
    if bool(((digits < 0) | (digits > 2)).any()):
        raise ValueError("codes hold values outside {-1, 0, 1}")
    if pad:
        digits = torch.nn.functional.pad(digits, (0, pad), value=1)
    return digits.to(torch.uint8).reshape(r, (c + pad) // k, k)


def pack(codes: Tensor, packing: str) -> Tensor:
    """``codes: (r, c) int8`` in {-1, 0, 1} -> ``(r, ceil(c / k)) uint8`` (k = 4 for "2bit", 5 for "1.6bit")."""
    k = check_packing(packing)
    d = _padded(codes.cpu(), k)                                              # (r, m, k)
    if packing == "2bit":
        out = d[..., 0] | (d[..., 1] << 2) | (d[..., 2] << 4) | (d[..., 3] << 6)
    else:
        w = torch.tensor(_POW3, dtype=torch.int16)
        out = (d.to(torch.int16) * w).sum(-1).to(torch.uint8)               # <= 242
    return out.contiguous()


def unpack(packed: Tensor, cols: int, packing: str) -> Tensor:
    """Inverse of :func:`pack`: ``(r, ceil(cols / k)) uint8`` -> ``(r, cols) int8``; ValueError on invalid bytes."""
    k = check_packing(packing)
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed codes must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if packed.shape[1] != math.ceil(cols / k):
        raise ValueError(f"packed codes have {packed.shape[1]} bytes per row; {cols} columns at {packing} need "
                         f"{math.ceil(cols / k)}")
    r = packed.shape[0]
    if packing == "2bit":
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
        d = (packed.unsqueeze(-1) >> shifts) & 3                            # (r, m, 4)
        bad = d == 3
        if bool(bad.any()):
            row, byte = _first(bad.any(-1))
            raise ValueError(f"invalid 2-bit code 3 (only 0, 1, 2 encode -1, 0, +1) in row {row}, byte {byte}")
    else:
        b = packed.to(torch.int16)
        if bool((b >= 243).any()):
            row, byte = _first(b >= 243)
            raise ValueError(f"invalid trit byte {int(b[row, byte])} >= 243 in row {row}, byte {byte}")
        d = torch.stack([(b // p) % 3 for p in _POW3], dim=-1)              # (r, m, 5)
    d = d.reshape(r, -1)
    if d.shape[1] > cols and bool((d[:, cols:] != 1).any()):
        raise ValueError(f"padding codes after column {cols} are not 0 (corrupt or mis-sized tensor)")
    return (d[:, :cols].to(torch.int8) - 1).contiguous()


def _first(mask: Tensor) -> tuple[int, int]:
    idx = mask.nonzero()[0]
    return int(idx[0]), int(idx[1])


# ---------------------------------------------------------------------------------------------------------------
# Slow references (one element at a time), for the tests.
# ---------------------------------------------------------------------------------------------------------------

def pack_ref(codes: Tensor, packing: str) -> Tensor:
    k = check_packing(packing)
    r, c = codes.shape
    m = math.ceil(c / k)
    out = torch.zeros(r, m, dtype=torch.uint8)
    for i in range(r):
        for j in range(m):
            v = 0
            for t in range(k):
                col = j * k + t
                digit = int(codes[i, col]) + 1 if col < c else 1
                v += digit << (2 * t) if packing == "2bit" else digit * 3**t
            out[i, j] = v
    return out


def unpack_ref(packed: Tensor, cols: int, packing: str) -> Tensor:
    k = check_packing(packing)
    r, m = packed.shape
    out = torch.zeros(r, cols, dtype=torch.int8)
    for i in range(r):
        for j in range(m):
            v = int(packed[i, j])
            for t in range(k):
                digit = (v >> (2 * t)) & 3 if packing == "2bit" else (v // 3**t) % 3
                if j * k + t < cols:
                    out[i, j * k + t] = digit - 1
    return out
