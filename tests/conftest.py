"""Shared fixtures: tiny random configs and models, a tiny tokenizer, markers (gpu, slow)."""

from __future__ import annotations

import pytest
import torch

from ssmquant.model.config import Mamba2Config
from ssmquant.model.mamba2 import Mamba2LMHeadModel


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


def tiny_config(**kw) -> Mamba2Config:
    base = dict(d_model=64, n_layer=2, vocab_size=100, d_state=16, headdim=16, ngroups=1, chunk_size=8,
                pad_vocab_size_multiple=16)
    base.update(kw)
    return Mamba2Config(**base)


def tiny_model(seed: int = 0, **kw) -> Mamba2LMHeadModel:
    torch.manual_seed(seed)
    m = Mamba2LMHeadModel(tiny_config(**kw))
    m.init_weights(seed)
    # Random norms, D and conv so that every parameter matters in comparisons (init leaves them at 1 / default).
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in m.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 300-token byte-level BPE trained on a few sentences, with <|endoftext|> as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ssmquant.io.tokenizer import Tokenizer as SQTokenizer

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["The quick brown fox jumps over the lazy dog.", "State space models scan sequences.",
            "Ternary weights are minus one, zero or plus one."] * 20
    tk.train_from_iterator(text, trainer)
    return SQTokenizer(tk, source="tiny")


def write_word_corpus(path, *, docs: int, max_words: int, seed: int, words: str):
    """A JSONL file of ``docs`` documents of 10..max_words random ``words``, deterministic in ``seed``."""
    import json
    import random

    rng = random.Random(seed)
    words = words.split()
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(10, max_words)))})
                    + "\n")
    return path
