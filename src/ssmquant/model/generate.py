"""Autoregressive generation: prefill the prompt once, then one recurrent step per token.

Sampling follows the usual order (temperature, then top-k, then top-p/nucleus); ``temperature=0`` is greedy. Token ids
at or beyond ``vocab_size`` (the padding rows of the embedding) are never sampled.
"""

from __future__ import annotations

from typing import Callable

import torch


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (b, v) fp32 -> next ids (b,)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the mass *before* it already reaches top_p (the top token always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int = 32, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, eos_token_id: int | None = None,
             vocab_size: int | None = None, callback: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """input_ids (b, l) -> (b, l + new) ids. ``callback(next_ids (b,))`` is called per token (streaming).

    Stops early once every sequence has produced ``eos_token_id``; finished sequences keep emitting EOS.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be (batch, seqlen) with seqlen >= 1")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    b = input_ids.shape[0]
    cache = model.allocate_cache(b)
    logits = model(input_ids, cache, logits_to_keep=1)[:, -1].float()
    out = [input_ids]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits[:, vocab_size:] = float("-inf")
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        out.append(nxt[:, None])
        if callback is not None:
            callback(nxt)
        if eos_token_id is not None and bool(done.all()):
            break
        logits = model(nxt[:, None], cache)[:, -1].float()
    return torch.cat(out, dim=1)
