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
    """Unique tensors (parameters and buffers; a tied head counted once) -> counts and bytes by dtype and part."""
    seen: set[int] = set()
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_part: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    n_params = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
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
