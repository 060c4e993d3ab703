"""Autoregressive generation: prefill the prompt once, then one recurrent step per token.

Sampling follows the usual order (temperature, then top-k, then top-p/nucleus); ``temperature=0`` is greedy. Token ids
at or beyond ``vocab_size`` (the padding rows of the embedding) are never sampled.

On a CUDA model :func:`generate` runs ``kernels.fast_decode.FastDecoder`` (fused Triton kernels, one CUDA graph per
token) whenever the request allows it: no ``top_p``, ``seed`` or ``callback`` (those need the step-by-step loop
below), and projections the decoder knows. Greedy decoding is the same argmax; temperature / top-k sampling draws
from the same distribution with another random stream (GPU exponential race instead of ``torch.multinomial``).
``fast=False`` forces the PyTorch loop, ``fast=True`` refuses to fall back.
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


def _fast_path_blocker(model, *, top_p: float, seed, callback, explicit: bool) -> str | None:
    """Why :func:`generate` cannot use the fast decoder for this request (None: it can). Chosen automatically only
    for CUDA models; ``explicit`` (``fast=True``) also admits CPU tensors under ``TRITON_INTERPRET=1`` (tests)."""
    if top_p < 1.0 or seed is not None or callback is not None:
        return "top_p, seed and callback need the step-by-step PyTorch loop"
    if not explicit and next(model.parameters()).device.type != "cuda":
        return "the model is not on CUDA"
    from ..kernels.fast_decode import fast_decode_supported

    try:
        ok = fast_decode_supported(model)
    except ImportError:                       # no Triton
        return "Triton is not installed"
    return None if ok else "the model is not on CUDA or has modules the fast decoder does not run"


def _fast_generate(model, input_ids, *, max_new_tokens, temperature, top_k, eos_token_id, vocab_size):
    from ..kernels.fast_decode import FastDecoder

    b = input_ids.shape[0]
    cap = max(64, 1 << (max_new_tokens - 1).bit_length())           # reuse one decoder across nearby lengths
    mods = [model.backbone.embedding, model.lm_head] + [getattr(layer.mixer, n) for layer in model.backbone.layers
                                                         for n in ("in_proj", "out_proj")]
    key = (b, cap, tuple(id(m) for m in mods))
    cache = model.__dict__.setdefault("_fast_decoders", {})
    dec = cache.get(key)
    if dec is None:
        cache.clear()                                                # one decoder (its buffers) per model
        dec = cache[key] = FastDecoder(model, b, cap)
    width = vocab_size or dec.head_w.shape[0]
    out = dec.generate(input_ids, max_new_tokens, temperature=temperature, top_k=top_k, vocab_size=width,
                       use_graph=dec.device.type == "cuda")
    if eos_token_id is None:
        return out
    new = out[:, input_ids.shape[1]:]
    done = (new == eos_token_id).cumsum(1) > 0                       # at or after each sequence's first EOS
    new = torch.where(done, torch.full_like(new, eos_token_id), new)
    all_done = done.all(0)
    if bool(all_done.any()):
        new = new[:, :int(all_done.nonzero()[0]) + 1]
    return torch.cat([input_ids.to(new.device), new], dim=1)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int = 32, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, eos_token_id: int | None = None,
             vocab_size: int | None = None, callback: Callable[[torch.Tensor], None] | None = None,
             fast: bool | None = None) -> torch.Tensor:
    """input_ids (b, l) -> (b, l + new) ids. ``callback(next_ids (b,))`` is called per token (streaming).

    Stops early once every sequence has produced ``eos_token_id``; finished sequences keep emitting EOS.
    ``fast``: None = the fast decoder where it applies (see the module docstring), True = require it, False = never.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be (batch, seqlen) with seqlen >= 1")
    if fast is not False and max_new_tokens > 0:
        blocker = _fast_path_blocker(model, top_p=top_p, seed=seed, callback=callback, explicit=bool(fast))
        if blocker is None:
            return _fast_generate(model, input_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, eos_token_id=eos_token_id, vocab_size=vocab_size)
        if fast:
            raise ValueError(f"fast=True, but {blocker}")
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
