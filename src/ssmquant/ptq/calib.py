"""Calibration data and per-layer input statistics for the Hessian-based methods (GPTQ, QEP, HG-GSQ).

``calibration_batches`` cuts a text into ``n`` token windows of ``length`` (evenly spaced over the text, so a few
hundred windows cover a whole file rather than its first pages). ``input_stats`` runs a model on them and
accumulates, for one ``nn.Module`` (its input ``X``: every token's input row),

    H = Σ Xᵀ X                       (c, c) float64  — the layer Hessian of ‖X Wᵀ − X Ŵᵀ‖² up to a factor 2
    C = Σ (X_ref − X)ᵀ X             (c, c) float64  — only with a reference model (QEP's cross term)

where ``X`` comes from ``model`` (the partly quantized one: error propagation) and ``X_ref`` from ``reference``
(the full-precision one) on the same tokens. A forward stops as soon as the module's input is seen
(:class:`_Stop`), so layers late in the model do not pay for the rest of the network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import DataError


class _Stop(Exception):
    """Raised by the hook once the watched module's input is captured."""


@torch.no_grad()
def calibration_batches(tokenizer, path: str | Path, n: int, length: int) -> Tensor:
    """``(n, length)`` long tensor of windows evenly spaced over the tokenized text of ``path``."""
    ids = tokenizer.encode(Path(path).read_text(encoding="utf-8"))
    if len(ids) < n * length:
        raise DataError(f"{path}: {len(ids)} tokens, fewer than --calib-seqs {n} x --calib-len {length}; "
                        "lower them or give a larger --calib-data")
    starts = torch.linspace(0, len(ids) - length, n).long().tolist()
    t = torch.tensor(ids, dtype=torch.long)
    return torch.stack([t[s:s + length] for s in starts])


def _capture(model: nn.Module, name: str, ids: Tensor) -> Tensor:
    """Input of ``model.<name>`` on ``ids``: ``(b·l, c)`` fp32."""
    box: list[Tensor] = []

    def hook(_mod, args):
        box.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
        raise _Stop

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        model(ids.to(model.backbone.embedding.weight.device))
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError(f"module {name} was never called by the forward pass")
    return box[0]


@torch.no_grad()
def input_stats(model: nn.Module, name: str, batches: Tensor, *, reference: nn.Module | None = None,
                batch_size: int = 16) -> tuple[Tensor, Tensor | None, int]:
    """``(H, C, n_rows)`` for module ``name`` over ``batches: (n, l)`` (``C`` is None without ``reference``)."""
    H = C = None
    rows = 0
    for i in range(0, batches.shape[0], batch_size):
        ids = batches[i:i + batch_size]
        x = _capture(model, name, ids).double()                        # (b·l, c)
        H = x.T @ x if H is None else H.add_(x.T @ x)
        if reference is not None:
            d = _capture(reference, name, ids).double() - x
            C = d.T @ x if C is None else C.add_(d.T @ x)
        rows += x.shape[0]
    return H, C, rows
