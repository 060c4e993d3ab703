"""Layer-wise logit lens and hidden-state error vs position, for any model with our module tree.

Two analyses of the replication study (issue 10, docs/RESULTS.md):

* **Logit lens** (nostalgebraist 2020; the DF-SSM paper's "knowledge organization" analysis, arXiv 2606.10932):
  the model's own final norm and head applied to the residual stream after each layer,
  ``lens_l = lm_head(norm_f(h_l))``, compared with the *teacher's final* next-token distribution:
  KL(teacher_final ‖ lens_l) and top-1 agreement (argmax lens_l == argmax teacher_final), averaged over tokens.
  Layer 0 is the embedding, layer n_layer the model's output. A quantized student that organises knowledge like its
  teacher shows the same curve; one that only matches at the end (KD on logits alone) rises late.
* **Error vs position**: per layer, the relative error of the student's residual stream against the teacher's,
  ``‖h_s − h_t‖ / ‖h_t‖`` per token, and the KL of the final distributions, averaged within position buckets.
  ``ssmquant drift`` (``eval/drift.py``) measures the Mamba *state* error; this measure needs no state and applies to
  the Transformer control too, so the study compares both architectures with it.

Both read the residual streams through ``forward(..., hidden_states_out=list)`` (``Mamba2LMHeadModel`` and
``TransformerControlLM``: the stream entering each layer, then the last one) and the model's ``backbone.norm_f`` and
``lm_head``, so packed and fake-quantized models work unchanged. Everything runs in fp32 under ``no_grad``.

Shapes: b sequences, l positions, d d_model, v vocabulary, L = n_layer + 1 lens points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_BUCKETS = (16, 64, 256, 512, 1024, 2048)


def heldout_sequences(tokenizer, text_path: str, n_seqs: int, seqlen: int) -> torch.Tensor:
    """(n, l) long: consecutive chunks of the text's tokens, preceded by EOS as in ``eval.perplexity``."""
    from pathlib import Path

    ids = [tokenizer.eos_token_id] + tokenizer.encode(Path(text_path).read_text())
    n = min(n_seqs, len(ids) // seqlen)
    if n < 1:
        raise ValueError(f"{text_path}: {len(ids)} tokens, fewer than one sequence of {seqlen}")
    return torch.tensor(ids[: n * seqlen]).view(n, seqlen)


def _streams(model, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Residual streams (L tensors (b, l, d) fp32) and final logits (b, l, v) fp32."""
    hs: list[torch.Tensor] = []
    logits = model(x, hidden_states_out=hs)
    return [h.float() for h in hs], logits.float()


def _lens_logits(model, h: torch.Tensor) -> torch.Tensor:
    return model.lm_head(model.backbone.norm_f(h.to(model.backbone.embedding.weight.dtype))).float()


@torch.no_grad()
def logit_lens(model, teacher, x: torch.Tensor, *, batch_size: int = 4, vocab: int | None = None) -> dict:
    """Per-layer KL(teacher_final ‖ lens_l) and top-1 agreement with the teacher's final argmax.

    x: (n, l) token ids. ``vocab``: score only the first ``vocab`` logits (the tokenizer's, not the padding rows).
    Returns {"kl": [L floats], "top1": [L floats], "n_tokens": int}; the last entries are the model's output.
    """
    kl_sum = top_sum = None
    n_tok = 0
    dev = next(model.parameters()).device
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(dev)
        t_logits = teacher(xb).float()[..., :vocab]
        t_logp = F.log_softmax(t_logits, -1)
        t_top = t_logits.argmax(-1)
        hs, _ = _streams(model, xb)
        kls, tops = [], []
        for h in hs:
            lp = F.log_softmax(_lens_logits(model, h)[..., :vocab], -1)
            kls.append(float((t_logp.exp() * (t_logp - lp)).sum(-1).sum()))
            tops.append(float((lp.argmax(-1) == t_top).sum()))
        kl_sum = kls if kl_sum is None else [a + b for a, b in zip(kl_sum, kls)]
        top_sum = tops if top_sum is None else [a + b for a, b in zip(top_sum, tops)]
        n_tok += xb.numel()
    return {"kl": [k / n_tok for k in kl_sum], "top1": [t / n_tok for t in top_sum], "n_tokens": n_tok}


@torch.no_grad()
def error_vs_position(model, teacher, x: torch.Tensor, *, buckets=DEFAULT_BUCKETS, batch_size: int = 2,
                      vocab: int | None = None) -> dict:
    """Relative residual-stream error per layer and final-logit KL, averaged in position buckets.

    x: (n, l). Bucket k holds positions (buckets[k-1], buckets[k]] (1-based; the first starts at 1); buckets past
    l are dropped. Returns {"buckets": [[lo, hi], ...], "rel_err": [[per bucket] per layer (L lists)],
    "kl": [per bucket], "growth": [last / first bucket per layer]}.
    """
    l = x.shape[1]
    edges = [b for b in buckets if b <= l] or [l]
    spans = [(1 if k == 0 else edges[k - 1] + 1, edges[k]) for k in range(len(edges))]
    dev = next(model.parameters()).device
    err_sum: torch.Tensor | None = None          # (L, l)
    kl_sum = torch.zeros(l, dtype=torch.float64)
    n = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(dev)
        hs_s, lg_s = _streams(model, xb)
        hs_t, lg_t = _streams(teacher, xb)
        rel = torch.stack([((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)).sum(0)
                           for a, b in zip(hs_s, hs_t)]).double().cpu()          # (L, l)
        err_sum = rel if err_sum is None else err_sum + rel
        lt = F.log_softmax(lg_t[..., :vocab], -1)
        ls = F.log_softmax(lg_s[..., :vocab], -1)
        kl_sum += (lt.exp() * (lt - ls)).sum(-1).sum(0).double().cpu()
        n += xb.shape[0]
    err = err_sum / n
    kl = kl_sum / n

    def bucket(v: torch.Tensor) -> list[float]:
        return [float(v[lo - 1:hi].mean()) for lo, hi in spans]

    rel_err = [bucket(e) for e in err]
    return {"buckets": [list(s) for s in spans], "rel_err": rel_err, "kl": bucket(kl),
            "growth": [r[-1] / r[0] if r[0] > 0 else math.nan for r in rel_err], "n_seqs": n, "seqlen": l}
