"""Loglikelihood scoring of (context, continuation) pairs: the one primitive every evaluation here rests on.

Follows lm-evaluation-harness 0.4.13 (``TemplateLM._encode_pair`` and ``HFLM._loglikelihood_tokens``):

* **Tokenization** — trailing whitespace of the context moves to the continuation, the whole string is encoded
  and split after the context's own tokens (so a word-initial space merges with its word as the tokenizer would
  do in running text). An empty context is replaced by one prefix token (EOS), as lm-eval does.
* **Truncation** — the model sees at most ``max_length`` tokens: ``(ctx + cont)[-(max_length + 1):][:-1]``.
* **Scores** — sum of log-softmax probabilities of the continuation tokens (fp32), and ``is_greedy``: every
  continuation token is the argmax at its position.

Batching is the one place this departs from a naive loop, and the reason this file exists: sequences are sorted
by length (longest first, so the first batch shows an out-of-memory at once) and **right-padded**. A state-space
model reads the sequence left to right, so padding on the left would run pad tokens through the recurrent state
before the real text and change every score; padding on the right only appends positions nobody reads.
``score_pairs_ref`` scores one pair at a time and is the reference the batched path is tested against.

Shapes: b = batch, l = padded length, V = padded vocabulary (log-softmax runs over all V logits, as lm-eval's
HF backend does).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

TokenPair = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


def encode_pair(tokenizer, context: str, continuation: str) -> TokenPair:
    """Tokenize a (context, continuation) pair the way lm-eval 0.4.13 does for causal models."""
    if context == "":
        prefix = tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("an empty context needs a prefix token, and this tokenizer has no EOS token")
        return [prefix], tokenizer.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def forward_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``model(input_ids)`` as a (b, l, V) tensor; also accepts transformers-style outputs with ``.logits``."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def _model_input(pair: TokenPair, max_length: int) -> tuple[list[int], int]:
    ctx, cont = pair
    if not cont:
        raise ValueError("empty continuation: nothing to score")
    if len(cont) > max_length:
        raise ValueError(f"continuation of {len(cont)} tokens is longer than max_length={max_length}")
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    return inp, len(cont)


def _score_rows(logits: torch.Tensor, rows: list[tuple[int, int, list[int]]]) -> list[tuple[float, bool]]:
    """rows: (batch row, input length, continuation tokens); logits: (b, l, V)."""
    out = []
    for r, n_in, cont in rows:
        pos = logits[r, n_in - len(cont):n_in].float()  # (len(cont), V): positions predicting the continuation
        logp = torch.log_softmax(pos, dim=-1)
        target = torch.tensor(cont, device=logits.device)
        ll = logp.gather(-1, target[:, None]).sum().item()
        greedy = bool((pos.argmax(-1) == target).all().item())
        out.append((ll, greedy))
    return out


@torch.no_grad()
def score_pairs(
    model,
    pairs: Sequence[TokenPair],
    *,
    batch_size: int = 16,
    max_length: int = 2048,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(loglikelihood, is_greedy) of each continuation given its context, batched and right-padded.

    Args:
        pairs: token pairs as made by ``encode_pair``; the context must hold at least one token.
        batch_size: sequences per forward pass.
        progress: called with the number of pairs finished after each batch.
    Returns one tuple per pair, in input order; equal (to float rounding) to ``score_pairs_ref``.
    """
    device = torch.device(device) if device is not None else model_device(model)
    prepared = [_model_input(p, max_length) for p in pairs]
    # Longest first; ties broken by tokens so the order (and any float rounding) is reproducible.
    order = sorted(range(len(prepared)), key=lambda i: (-len(prepared[i][0]), prepared[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(prepared)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = len(prepared[idx[0]][0])
        batch = torch.zeros(len(idx), width, dtype=torch.long)  # pad id 0: right-padded positions are never read
        rows = []
        for r, i in enumerate(idx):
            inp, n_cont = prepared[i]
            batch[r, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            rows.append((r, len(inp), pairs[i][1][-n_cont:]))
        logits = forward_logits(model, batch.to(device))  # (b, l, V)
        for i, res in zip(idx, _score_rows(logits, rows)):
            results[i] = res
        if progress is not None:
            progress(len(idx))
    return results  # type: ignore[return-value]


@torch.no_grad()
def score_pairs_ref(model, pairs: Sequence[TokenPair], *, max_length: int = 2048,
                    device: torch.device | str | None = None) -> list[tuple[float, bool]]:
    """Reference for ``score_pairs``: one unpadded sequence per forward pass."""
    device = torch.device(device) if device is not None else model_device(model)
    out = []
    for pair in pairs:
        inp, _ = _model_input(pair, max_length)
        logits = forward_logits(model, torch.tensor([inp], dtype=torch.long, device=device))
        out.extend(_score_rows(logits, [(0, len(inp), pair[1])]))
    return out
