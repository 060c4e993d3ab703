"""What a model holds: parameter counts and bytes, by dtype and by part (counting a tied head once)."""

from __future__ import annotations

from collections import defaultdict

import torch


def _part(name: str) -> str:
    if "embedding" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.endswith(("in_proj.weight", "out_proj.weight")):
        return "projections"
    return "rest"


def tensor_summary(model: torch.nn.Module) -> dict:
    """Unique tensors (parameters and persistent buffers; a tied head counted once), as held in memory (int8 codes
    one byte each) -> counts and bytes by dtype and part. On-disk packed sizes: ``ssmquant.quant.size``."""
    seen: set[int] = set()
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_part: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    n_params = 0
    # Persistent buffers only: a runtime cache (e.g. a packed model's dequantized weights) is not part of the model.
    buffers = [(f"{mn}.{bn}" if mn else bn, b) for mn, m in model.named_modules()
               for bn, b in m.named_buffers(recurse=False) if bn not in m._non_persistent_buffers_set]
    for name, t in list(model.named_parameters()) + buffers:
        key = id(t)
        if key in seen:
            continue
        seen.add(key)
        nbytes = t.numel() * t.element_size()
        dt = str(t.dtype).replace("torch.", "")
        by_dtype[dt][0] += t.numel()
        by_dtype[dt][1] += nbytes
        by_part[_part(name)][0] += t.numel()
        by_part[_part(name)][1] += nbytes
        if isinstance(t, torch.nn.Parameter):
            n_params += t.numel()
    return {
        "parameters": n_params,
        "bytes": sum(v[1] for v in by_dtype.values()),
        "by_dtype": {k: {"numel": v[0], "bytes": v[1]} for k, v in sorted(by_dtype.items())},
        "by_part": {k: {"numel": v[0], "bytes": v[1]} for k, v in sorted(by_part.items())},
    }
