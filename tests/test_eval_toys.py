"""Toy models and a character tokenizer for the evaluation tests (imported by the other test_eval_* files).

``BigramLM`` lets a test rig exactly which continuation a model prefers: its logits at position t depend only
on token t, through a hand-set (V, V) table.
"""

from __future__ import annotations

import math

import torch

ALPHABET = "\x00" + " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:?!'\n_-0123456789"


class CharTokenizer:
    """One token per character; id 0 ("\\x00") is EOS."""

    def __init__(self, alphabet: str = ALPHABET):
        self.itos = list(alphabet)
        self.stoi = {c: i for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet)
        self.eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.itos[i] for i in ids)


class BigramLM(torch.nn.Module):
    """logits[b, t] = table[ids[b, t]]: (b, l) -> (b, l, V). V may exceed the tokenizer's vocabulary (padding)."""

    def __init__(self, vocab: int, pad_to: int | None = None):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, pad_to or vocab), requires_grad=False)

    def set(self, tok: CharTokenizer, prev: str, nxt: str, value: float) -> "BigramLM":
        self.table.data[tok.stoi[prev], tok.stoi[nxt]] = value
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]

    def logprob(self, prev: int, nxt: int) -> float:
        return torch.log_softmax(self.table[prev], -1)[nxt].item()


class CausalMixLM(torch.nn.Module):
    """Embedding + causal running mean + linear head: every logit depends on the whole prefix."""

    def __init__(self, vocab: int, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.head = torch.nn.Parameter(torch.randn(dim, vocab, generator=g))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb[input_ids]  # (b, l, d)
        n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return (x.cumsum(1) / n) @ self.head


def test_char_tokenizer_round_trip():
    tok = CharTokenizer()
    s = "Question: Is it? Answer: yes\n"
    assert tok.decode(tok.encode(s)) == s


def test_bigram_logprob():
    tok = CharTokenizer()
    m = BigramLM(tok.vocab_size).set(tok, "a", "b", 3.0)
    expected = 3.0 - math.log(math.exp(3.0) + tok.vocab_size - 1)
    assert abs(m.logprob(tok.stoi["a"], tok.stoi["b"]) - expected) < 1e-6
