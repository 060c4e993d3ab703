"""Activation checkpointing: same loss and gradients as the plain forward, in the model and through the trainer."""

import json

import pytest
import torch

from ssmquant.model.config import Mamba2Config
from ssmquant.quant import QuantConfig, quantize_
from ssmquant.train.config import TrainConfig
from ssmquant.train.tasks import PretrainTask
from ssmquant.train.trainer import train

from conftest import tiny_model, write_word_corpus


def _loss_and_grads(model, ids):
    model.zero_grad()
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ternary", [False, True])
def test_recompute_gives_the_same_loss_and_gradients(ternary):
    m = tiny_model(n_layer=3).train()
    if ternary:  # the QAT student: fake quantization is recomputed in the backward pass too
        quantize_(m, QuantConfig(group_size=32))
    ids = torch.randint(0, m.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    loss0, g0 = _loss_and_grads(m, ids)
    m.backbone.activation_checkpointing = True
    loss1, g1 = _loss_and_grads(m, ids)
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    # Inference (no grad, or a decode cache) takes the plain path.
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(ids), m(ids))


def test_trainer_flag_gives_the_same_losses(tmp_path, tiny_tokenizer):
    corpus = write_word_corpus(tmp_path / "train.jsonl", docs=120, max_words=60, seed=0,
                               words="alpha beta gamma delta state space scan")
    tok = tiny_tokenizer
    model = dict(d_model=32, n_layer=2, d_state=8, headdim=8, chunk_size=8)
    runs = {}
    for flag in (False, True):
        cfg = TrainConfig(out=str(tmp_path / f"run{flag}"), data=[str(corpus)], tokens=4 * 4 * 32, seq_len=32,
                          micro_batch=4, lr=3e-3, cache_dir=str(tmp_path / "cache"), progress=False, plot=False,
                          eval_sequences=2, log_every=1, valid_fraction=0.05, activation_checkpointing=flag)
        train(PretrainTask(Mamba2Config(vocab_size=tok.vocab_size, **model), tok, init_seed=0), cfg)
        recs = [json.loads(x) for x in (tmp_path / f"run{flag}" / "metrics.jsonl").read_text().splitlines()]
        runs[flag] = [r["loss"] for r in recs if "loss" in r]
    assert len(runs[True]) == 4
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
