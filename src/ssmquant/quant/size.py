"""Honest size accounting of a (packed or would-be packed) Mamba-2 LM, from shapes alone.

Bytes are what the packed safetensors file holds (header excluded), split into five parts:

    codes      packed ternary codes (2-bit: ceil(c/4) bytes per row, 1.6-bit: ceil(c/5))
    scales     ternary scales (one per group, in their storage dtype)
    embedding  the input embedding (fp16/fp32, int8 + per-row scale, or ternary codes + scales)
    head       the LM head, 0 when tied to the embedding (stored once)
    rest       everything else: conv1d, norms, dt_bias, A_log, D (as stored)

The paper (Ternary Mamba's 744 MB for Mamba-2 1.3B) counts a tied embedding twice, as if the head were stored
separately; ``paper_total_mb`` reports that figure beside ours. MB = 10**6 bytes.

Only shapes and dtypes are read, so it works on models built on the meta device ("what would 1.3B weigh with group
128 and 2-bit codes?") and on real packed models alike. Hypothetical settings (``packing``, ``group_size``,
``embedding``, ``rest_dtype``) override what the model holds; without them the model is described as it is.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .packing import BITS_PER_CODE, packed_nbytes

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
PARTS = ("codes", "scales", "embedding", "head", "rest")


def _ternary_kind(m: nn.Module) -> bool:
    from .layers import _PackedTernary, _TernaryWeight

    return isinstance(m, (_PackedTernary, _TernaryWeight))


def _shape(m: nn.Module) -> tuple[int, int]:
    t = getattr(m, "codes", None)
    if t is None:
        t = m.weight
    return tuple(t.shape)  # type: ignore[return-value]


def _bytes(t: torch.Tensor, dtype: str | None = None) -> int:
    return t.numel() * (_DTYPE_BYTES[dtype] if dtype else t.element_size())


def size_report(
    model: nn.Module,
    *,
    packing: str | None = None,
    group_size: int | None = None,
    quantize: tuple[str, ...] = (r"\.in_proj$", r"\.out_proj$"),
    scale_dtype: str = "float16",
    embedding: str | None = None,
    rest_dtype: str | None = None,
) -> dict:
    """Bytes by part of ``model`` stored in ssmquant's packed format.

    packing: "2bit" or "1.6bit"; default the model's ``quantization_config["packing"]``, else "2bit".
    group_size: if given, plain ``nn.Linear`` modules matching ``quantize`` are counted as ternary with this group
        size (scales in ``scale_dtype``); already-ternary modules keep their own group size and scale dtype.
    embedding: "float16", "float32" or "int8" (per-row fp16 scale) to count the embedding (and a head) that way.
    rest_dtype: count every other tensor in this dtype (e.g. "float16" as the paper does).
    """
    from .int8 import _Int8Weight

    qc = getattr(model, "quantization_config", None) or {}
    packing = packing or qc.get("packing", "2bit")
    parts = dict.fromkeys(PARTS, 0)
    n_quant = 0
    group_sizes: set[int] = set()
    counted: set[str] = set()  # module prefixes whose tensors are accounted for

    for name, m in model.named_modules():
        is_emb_or_head = name in ("backbone.embedding", "lm_head")
        if _ternary_kind(m) or (group_size is not None and isinstance(m, nn.Linear) and not is_emb_or_head
                                and any(re.search(p, name) for p in quantize)):
            r, c = _shape(m)
            g = m.group_size if _ternary_kind(m) else min(group_size, c)
            sbytes = m.scale.element_size() if _ternary_kind(m) and m.scale is not None else _DTYPE_BYTES[scale_dtype]
            code_b, scale_b = packed_nbytes(r, c, packing), r * (c // g) * sbytes
            if is_emb_or_head:
                parts["embedding" if name == "backbone.embedding" else "head"] += code_b + scale_b
            else:
                parts["codes"] += code_b
                parts["scales"] += scale_b
                n_quant += r * c
                group_sizes.add(g)
            counted.add(name)
            bias = getattr(m, "bias", None)
            if bias is not None:
                parts["rest"] += _bytes(bias, rest_dtype)

    tied = _is_tied(model)
    for name in ("backbone.embedding", "lm_head"):
        if name in counted:
            continue
        m = model.get_submodule(name)
        part = "embedding" if name == "backbone.embedding" else "head"
        counted.add(name)
        if tied and part == "head":
            continue
        if embedding is not None:
            r, c = _shape(m) if not isinstance(m, _Int8Weight) else tuple(m.qweight.shape)
            parts[part] += r * c * _DTYPE_BYTES[embedding] + (r * 2 if embedding == "int8" else 0)
        elif isinstance(m, _Int8Weight):
            parts[part] += _bytes(m.qweight) + _bytes(m.scale)
        else:
            parts[part] += _bytes(m.weight)

    seen: set[int] = set()
    persistent = set(model.state_dict(keep_vars=True))
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        owner = pname.rsplit(".", 1)[0]
        if owner in counted or id(t) in seen or pname not in persistent:
            continue
        seen.add(id(t))
        parts["rest"] += _bytes(t, rest_dtype)

    total = sum(parts.values())
    paper_head = parts["embedding"] if tied else parts["head"]
    bits = 8 * (parts["codes"] + parts["scales"]) / n_quant if n_quant else None
    return {
        "packing": packing,
        "group_sizes": sorted(group_sizes),
        "quantized_weights": n_quant,
        "bits_per_quantized_weight": bits,
        "code_bits": BITS_PER_CODE[packing],
        "tied_head": tied,
        "parts_bytes": parts,
        "parts_mb": {k: v / 1e6 for k, v in parts.items()},
        "total_bytes": total,
        "total_mb": total / 1e6,
        "paper_total_bytes": total - parts["head"] + paper_head,
        "paper_total_mb": (total - parts["head"] + paper_head) / 1e6,
    }


def _is_tied(model: nn.Module) -> bool:
    from .int8 import _Int8Weight

    emb, head = model.backbone.embedding, model.lm_head
    if isinstance(emb, _Int8Weight) and isinstance(head, _Int8Weight):
        return head.qweight is emb.qweight or bool(getattr(model.config, "tie_embeddings", False))
    w_e, w_h = getattr(emb, "weight", None), getattr(head, "weight", None)
    return w_e is not None and w_e is w_h


def format_size_report(rep: dict) -> str:
    """A few aligned lines for ``ssmquant info`` and the end of ``ssmquant distill``."""
    lines = [f"packed size ({rep['packing']} codes, groups {rep['group_sizes'] or '-'}; MB = 1e6 bytes)"]
    for k in PARTS:
        note = "  (tied: stored once)" if k == "head" and rep["tied_head"] else ""
        lines.append(f"  {k:<10} {rep['parts_mb'][k]:>10.2f} MB{note}")
    lines.append(f"  {'total':<10} {rep['total_mb']:>10.2f} MB")
    if rep["tied_head"]:
        lines.append(f"  {'paper way':<10} {rep['paper_total_mb']:>10.2f} MB  (tied embedding counted twice)")
    if rep["bits_per_quantized_weight"] is not None:
        lines.append(f"  bits per quantized weight {rep['bits_per_quantized_weight']:.4f} "
                     f"({rep['quantized_weights']:,} weights: codes + scales)")
    return "\n".join(lines)
