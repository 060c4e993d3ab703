"""Distillation losses with bounded memory.

``kd_loss`` computes, from the final hidden states of student and teacher, the mean over tokens of

    T² · KL(softmax(t / T) ‖ softmax(s / T))  ·  kd_weight   +   CE(s, labels) · ce_weight

over the full vocabulary, in fp32. At a 50k vocabulary and long sequences the fp32 logits of both models would not
fit at once, so tokens are processed in chunks of at most ``max_logits`` logits and each chunk's logits are
recomputed during backward (``torch.utils.checkpoint``): peak extra memory is two (chunk, vocab) fp32 blocks,
whatever the sequence length. When everything fits in one chunk nothing is recomputed (the recomputation would
cost a third head forward, which on a CPU is a large share of a small model's step).
The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).

``hidden_mse`` matches the residual streams layer by layer (normalised by the teacher's mean square), an option for
the per-layer hidden-state matching the issue asks for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_terms(s_hidden, t_logits_fn, s_head, labels, temperature: float, kd_weight: float, ce_weight: float):
    """Sum (not mean) of the weighted per-token loss over one chunk, plus the summed KL alone (for logging)."""
    s = s_head(s_hidden).float()                                   # (n, v)
    loss = s.new_zeros(())
    kl_sum = s.new_zeros(())
    if kd_weight:
        with torch.no_grad():
            t = t_logits_fn().float()
        log_ps = F.log_softmax(s / temperature, dim=-1)
        log_pt = F.log_softmax(t / temperature, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)            # (n,)
        kl_sum = kl.sum()
        loss = loss + kd_weight * temperature**2 * kl_sum
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(s, labels, reduction="sum")
    return loss, kl_sum.detach()


def _out_features(head) -> int:
    """Rows of a head module: nn.Linear, a ternary fake-quant or a packed one."""
    for attr in ("out_features", "weight", "codes"):
        v = getattr(head, attr, None)
        if isinstance(v, int):
            return v
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    raise TypeError(f"cannot tell the output size of {type(head).__name__}")


def kd_loss(student_hidden: torch.Tensor, student_head, teacher_hidden: torch.Tensor | None, teacher_head,
            labels: torch.Tensor, *, temperature: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 0.0,
            max_logits: int = 2**25) -> tuple[torch.Tensor, dict]:
    """student_hidden, teacher_hidden: (b, l, d) final normed hidden states; labels (b, l).

    ``max_logits`` bounds a chunk's (tokens x vocab) logits (default 32M: 128 MB per fp32 block).
    Returns (loss, {"kl": mean KL at temperature T}) — loss is a mean over tokens.
    """
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]) if teacher_hidden is not None else None
    y = labels.reshape(-1)
    n = hs.shape[0]
    chunk_tokens = max(1, max_logits // _out_features(student_head))
    recompute = n > chunk_tokens
    total = hs.new_zeros((), dtype=torch.float32)
    kl_total = hs.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk_tokens):
        sl = slice(i, min(n, i + chunk_tokens))
        t_fn = (lambda sl=sl: teacher_head(ht[sl])) if ht is not None else None
        args = (hs[sl], t_fn, student_head, y[sl], temperature, kd_weight if ht is not None else 0.0, ce_weight)
        if recompute and torch.is_grad_enabled() and hs.requires_grad:
            part, kl = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            part, kl = _chunk_terms(*args)
        total = total + part
        kl_total = kl_total + kl
    return total / n, {"kl": float(kl_total / n)}


def hidden_mse(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ‖h_s − h_t‖² / ‖h_t‖² on the residual streams (skipping the shared embedding output)."""
    terms = []
    for hs, ht in zip(student_states[1:], teacher_states[1:]):
        ht = ht.float()
        terms.append((hs.float() - ht).pow(2).mean() / ht.pow(2).mean().clamp_min(1e-12))
    return torch.stack(terms).mean()
