"""The lm-eval adapter's three request types on hand-made requests (skipped without lm-eval)."""

from __future__ import annotations

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from ssmquant.eval.lmeval import SSMQuantLM  # noqa: E402
from ssmquant.eval.scoring import encode_pair, score_pairs_ref  # noqa: E402
from test_eval_toys import BigramLM, CausalMixLM, CharTokenizer  # noqa: E402


def _req(kind, args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_registered_under_ssmquant():
    from lm_eval.api.registry import get_model

    assert get_model("ssmquant") is SSMQuantLM


def test_loglikelihood_matches_reference():
    tok = CharTokenizer()
    m = CausalMixLM(tok.vocab_size)
    lm = SSMQuantLM(model=m, tokenizer=tok, batch_size=2, device="cpu")
    args = [("Question: why?\nAnswer:", " because"), ("abc ", "def"), ("", " hi")]
    got = lm.loglikelihood([_req("loglikelihood", a) for a in args])
    ref = score_pairs_ref(m, [encode_pair(tok, c, x) for c, x in args])
    for (a, ga), (b, gb) in zip(got, ref):
        assert abs(a - b) < 1e-4 and ga == gb


def test_loglikelihood_rolling_scores_every_token_once():
    tok = CharTokenizer()
    m = BigramLM(tok.vocab_size)
    torch.manual_seed(0)
    m.table.data.normal_()
    lm = SSMQuantLM(model=m, tokenizer=tok, max_length=4, device="cpu")  # forces several windows
    text = "hello rolling windows"
    ids = [tok.eos_token_id] + tok.encode(text)
    direct = sum(m.logprob(a, b) for a, b in zip(ids, ids[1:]))
    (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])
    assert abs(got - direct) < 1e-4


def test_generate_until_is_greedy_and_stops():
    tok = CharTokenizer()
    m = BigramLM(tok.vocab_size, pad_to=tok.vocab_size + 4)
    m.set(tok, "a", "b", 5).set(tok, "b", "c", 5).set(tok, "c", "a", 5).set(tok, "x", "\x00", 5)
    m.table.data[:, tok.vocab_size:] = 100.0  # padded ids must never be generated
    lm = SSMQuantLM(model=m, tokenizer=tok, max_length=64, device="cpu")
    out = lm.generate_until([
        _req("generate_until", ("a", {"until": ["ab"], "max_gen_toks": 20})),  # "bcab" cut at "ab"
        _req("generate_until", ("a", {"until": [], "max_gen_toks": 5})),
        _req("generate_until", ("zax", {"until": "\n\n"})),  # EOS right away
    ])
    assert out == ["bc", "bcabc", ""]
