"""Loglikelihood scoring and sliding-window perplexity."""

from __future__ import annotations


import pytest
import torch

from ssmquant.eval.perplexity import perplexity, strided_windows
from ssmquant.eval.scoring import encode_pair, score_pairs, score_pairs_ref
from test_eval_toys import BigramLM, CausalMixLM, CharTokenizer


class UniformLM(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


def test_uniform_model_perplexity_is_vocab_size():
    tok = CharTokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 20
    res = perplexity(UniformLM(tok.vocab_size), tok, text, context=64, stride=16, batch_size=3)
    assert res["n_tokens"] == len(text)  # EOS prefix: every text token scored once
    assert abs(res["ppl"] - tok.vocab_size) < 1e-3, res
    # Padded vocabulary: perplexity is the number of logits, as for any uniform distribution over them.
    res = perplexity(UniformLM(128), tok, text, context=32, stride=32)
    assert abs(res["ppl"] - 128) < 1e-3


@pytest.mark.parametrize("n,context,stride", [(1, 4, 2), (2, 4, 2), (10, 4, 4), (37, 8, 3), (100, 16, 1), (5, 16, 8)])
def test_strided_windows_score_each_token_once(n, context, stride):
    tokens = list(range(n))
    pairs = strided_windows(tokens, context, stride)
    scored = [t for _, cont in pairs for t in cont]
    assert scored == tokens[1:]
    for k, (ctx, cont) in enumerate(pairs):
        assert len(ctx) >= 1 and len(ctx) + len(cont) - 1 <= context
        assert ctx + cont == tokens[tokens.index(ctx[0]):tokens.index(cont[-1]) + 1]  # contiguous
        if k > 0:
            assert len(ctx) + len(cont) - 1 == min(context, cont[-1])  # full context after the first window


def test_perplexity_matches_direct_sum_for_bigram():
    tok = CharTokenizer()
    m = BigramLM(tok.vocab_size)
    torch.manual_seed(0)
    m.table.data.normal_()
    text = "abc def ghi jkl mno"
    ids = [0] + tok.encode(text)
    direct = -sum(m.logprob(a, b) for a, b in zip(ids, ids[1:])) / (len(ids) - 1)
    res = perplexity(m, tok, text, context=5, stride=2)
    assert abs(res["nll"] - direct) < 1e-5


def test_perplexity_reads_file(tmp_path):
    tok = CharTokenizer()
    p = tmp_path / "t.txt"
    p.write_text("hello world")
    assert perplexity(UniformLM(tok.vocab_size), tok, p, context=8, stride=4)["n_tokens"] == 11


def test_encode_pair_moves_trailing_space_to_continuation():
    class WordTok:  # a tokenizer where " word" is one token, as in byte-level BPE
        eos_token_id = 0

        def encode(self, s):
            import re

            return [hash(w) % 1000 + 1 for w in re.findall(r" ?[^ ]+| +", s)]

    tok = WordTok()
    ctx, cont = encode_pair(tok, "Question: why?\nAnswer: ", "because")
    assert cont == tok.encode(" because")  # the space joined the word, not the context
    assert ctx + cont == tok.encode("Question: why?\nAnswer: because")
    assert encode_pair(tok, "", " hi") == ([0], tok.encode(" hi"))  # empty context -> EOS prefix


def _pairs(n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lc, lx = int(torch.randint(1, 20, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        ctx = torch.randint(1, 60, (lc,), generator=g).tolist()
        out.append((ctx, torch.randint(1, 60, (lx,), generator=g).tolist()))
    return out


def test_batched_right_padded_equals_one_at_a_time_causal_mix():
    m = CausalMixLM(64)
    pairs = _pairs()
    ref = score_pairs_ref(m, pairs)
    for bs in (1, 3, 16):
        got = score_pairs(m, pairs, batch_size=bs)
        diff = max(abs(a[0] - b[0]) for a, b in zip(got, ref))
        assert diff < 1e-4, f"batch_size={bs}: max |Δll| = {diff}"
        assert [g for _, g in got] == [g for _, g in ref]


def test_batched_right_padded_equals_one_at_a_time_mamba2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Mamba2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, head_dim=8, num_heads=8,
        n_groups=1, conv_kernel=4, chunk_size=8, use_conv_bias=True, use_bias=False, residual_in_fp32=True,
        rms_norm=True, tie_word_embeddings=True, time_step_rank=4, time_step_min=0.001, time_step_max=0.1,
        time_step_floor=1e-4, norm_before_gate=False, layer_norm_epsilon=1e-5, initializer_range=0.5,
        pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    pairs = _pairs(9, seed=1)
    ref = score_pairs_ref(hf, pairs)  # transformers output objects are accepted (.logits)
    got = score_pairs(hf, pairs, batch_size=4)
    diff = max(abs(a[0] - b[0]) for a, b in zip(got, ref))
    assert diff < 1e-4, f"max |Δll| = {diff}"
    # Left padding would feed pad tokens through the state first and change the scores: the reason for right.
    ctx, cont = pairs[0]
    padded = torch.tensor([[0] * 5 + ctx + cont[:-1]])
    left = torch.log_softmax(hf(padded).logits[0, -len(cont):], -1).gather(-1, torch.tensor(cont)[:, None]).sum()
    assert abs(left.item() - ref[0][0]) > 1e-4


def test_truncation_keeps_the_continuation():
    m = CausalMixLM(64)
    pair = (list(range(1, 40)), [5, 6, 7])
    ref = score_pairs_ref(m, [(pair[0][-8:], pair[1])], max_length=10)  # 10 inputs = 8 context + 2 continuation
    got = score_pairs(m, [pair], max_length=10)
    assert abs(got[0][0] - ref[0][0]) < 1e-5
    with pytest.raises(ValueError):
        score_pairs(m, [([1], [2] * 11)], max_length=10)
