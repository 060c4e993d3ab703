"""Sliding-window perplexity of a language model on a text (a file, a string, or a Hugging Face dataset).

The standard strided method (Hugging Face's "Perplexity of fixed-length models" guide; lm-eval's
``get_rolling_token_windows`` is the special case ``stride == context``): the token stream is cut into windows of at
most ``context`` input tokens whose ends advance by ``stride``; each window scores only the tokens that no earlier
window scored, so every token is scored exactly once and all but the first window's tokens see at least
``context - stride`` tokens of history.

    tokens  s0 s1 s2 s3 s4 s5 s6 s7 s8        context = 4, stride = 2
    window  s0 s1 s2 s3 -> scores s1..s4
    window        s2 s3 s4 s5 -> scores s5 s6  (inputs s3..s6 predict s4..s7; only the new ones count)

By default the text is preceded by the EOS token (documents are separated by EOS in Mamba's training data, and
lm-eval's rolling loglikelihood does the same), so its first token is scored too and ``n_tokens`` equals the number
of text tokens. ``nll`` is the mean negative log-likelihood per scored token (nats), ``ppl = exp(nll)``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import DataError
from .scoring import TokenPair, score_pairs

#: Hugging Face datasets known by a short name: (path, config, split, text field).
HF_TEXT_DATASETS = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text"),
    "wikitext103": ("Salesforce/wikitext", "wikitext-103-raw-v1", "test", "text"),
    "ptb": ("ptb-text-only/ptb_text_only", None, "test", "sentence"),
}


def strided_windows(tokens: list[int], context: int, stride: int) -> list[TokenPair]:
    """Cut ``tokens`` into (context, continuation) pairs that score tokens[1:] exactly once.

    Each pair's ``ctx + cont`` minus its last token is at most ``context`` tokens long.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"need 1 <= stride <= context, got stride={stride}, context={context}")
    n = len(tokens)
    pairs: list[TokenPair] = []
    if n < 2:
        return pairs
    begin_scored, end = 1, min(context + 1, n)
    while True:
        start = max(0, end - 1 - context)
        pairs.append((tokens[start:begin_scored], tokens[begin_scored:end]))
        if end == n:
            return pairs
        begin_scored, end = end, min(end + stride, n)


def read_text(source: str | Path) -> str:
    """A text from a file path, a known dataset name (``wikitext2``, ...), ``hf:path[:config[:split[:field]]]``,
    or the string itself when it is neither."""
    s = str(source)
    if s in HF_TEXT_DATASETS or s.startswith("hf:"):
        return _hf_text(s)
    if isinstance(source, Path) or _is_file(s):
        return Path(s).read_text(encoding="utf-8")
    return s


def _is_file(s: str) -> bool:
    try:
        return "\n" not in s and Path(s).is_file()
    except OSError:  # a long text is not a valid path
        return False


def _hf_text(spec: str) -> str:
    if spec in HF_TEXT_DATASETS:
        path, config, split, field = HF_TEXT_DATASETS[spec]
    else:
        parts = spec[3:].split(":")
        path = parts[0]
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 else "test"
        field = parts[3] if len(parts) > 3 else "text"
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: reading a Hugging Face dataset needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(path, config or None, split=split)
    except Exception as e:  # offline, missing repo, wrong split: datasets raises many types
        raise DataError(f"{spec}: could not load {path} ({config}, {split}): {str(e).splitlines()[0][:160]}; "
                        "offline, pass a local text file instead") from None
    # The usual convention (Hugging Face's perplexity guide): records joined by a blank line.
    return "\n\n".join(ds[field])


def perplexity(
    model,
    tokenizer,
    text_or_path: str | Path,
    *,
    context: int = 2048,
    stride: int = 512,
    batch_size: int = 4,
    device=None,
    prefix_eos: bool = True,
    max_tokens: int | None = None,
) -> dict:
    """Sliding-window perplexity of ``model`` on a text.

    Args:
        text_or_path: a file path, a dataset name (see ``read_text``), or the text itself.
        context: model input length per window (tokens).
        stride: how far each window's end advances; every token is scored once.
        prefix_eos: precede the text with EOS so its first token is scored.
        max_tokens: score only the first ``max_tokens`` tokens (quick checks).
    Returns ``{"nll", "ppl", "n_tokens", "context", "stride"}``.
    """
    text = read_text(text_or_path)
    tokens = tokenizer.encode(text)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if prefix_eos and tokenizer.eos_token_id is not None:
        tokens = [tokenizer.eos_token_id] + tokens
    if len(tokens) < 2:
        raise DataError(f"{str(text_or_path)[:80]!r}: too little text to score (fewer than 2 tokens)")
    pairs = strided_windows(tokens, context, stride)
    scores = score_pairs(model, pairs, batch_size=batch_size, max_length=context, device=device)
    n = sum(len(c) for _, c in pairs)
    nll = -sum(ll for ll, _ in scores) / n
    return {"nll": nll, "ppl": math.exp(nll), "n_tokens": n, "context": context, "stride": stride}
