"""The study's Transformer control: equals transformers' LlamaForCausalLM, causal, round trips, and goes through the
same pretrain / ptq / distill commands as a Mamba-2; plus the logit-lens and error-vs-position analyses."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model, write_word_corpus

import ssmquant
from ssmquant.io.checkpoints import save_model
from ssmquant.model.transformer_control import (
    MODEL_TYPE,
    TransformerControlConfig,
    TransformerControlLM,
)

CFG = {"vocab_size": 300, "d_model": 64, "n_layer": 2, "n_head": 4, "d_ff": 96}


def tiny_control(seed: int = 0, **kw) -> TransformerControlLM:
    m = TransformerControlLM(TransformerControlConfig(**{**CFG, **kw}))
    m.init_weights(seed)
    with torch.no_grad():   # norms away from 1 so a misplaced norm weight shows
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in m.named_parameters():
            if n.endswith(("norm.weight", "norm_f.weight")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return m.eval()


def _diff(a, b) -> str:
    d = (a - b).abs()
    return f"max diff {float(d.max()):.3g}, mean {float(d.mean()):.3g}"


def test_equals_transformers_llama():
    """Our fused projections, mapped to LlamaForCausalLM's names, give its logits (a model we did not write)."""
    transformers = pytest.importorskip("transformers")
    m = tiny_control()
    c = m.config
    hf_cfg = transformers.LlamaConfig(vocab_size=c.padded_vocab_size, hidden_size=c.d_model,
                                      intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
                                      num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
                                      rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=True,
                                      attention_bias=False, mlp_bias=False, max_position_embeddings=256)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    d, f = c.d_model, c.d_ff
    sd = {"model.embed_tokens.weight": m.backbone.embedding.weight, "model.norm.weight": m.backbone.norm_f.weight,
          "lm_head.weight": m.backbone.embedding.weight}
    for i, blk in enumerate(m.backbone.layers):
        p = f"model.layers.{i}."
        qkv, gu = blk.attn.in_proj.weight, blk.mlp.in_proj.weight
        sd.update({p + "input_layernorm.weight": blk.norm.weight, p + "post_attention_layernorm.weight":
                   blk.mlp_norm.weight, p + "self_attn.q_proj.weight": qkv[:d], p + "self_attn.k_proj.weight":
                   qkv[d:2 * d], p + "self_attn.v_proj.weight": qkv[2 * d:], p + "self_attn.o_proj.weight":
                   blk.attn.out_proj.weight, p + "mlp.gate_proj.weight": gu[:f], p + "mlp.up_proj.weight": gu[f:],
                   p + "mlp.down_proj.weight": blk.mlp.out_proj.weight})
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    x = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = m(x), hf(x).logits
    assert torch.allclose(ours, theirs, atol=2e-5, rtol=1e-4), _diff(ours, theirs)


def test_forward_is_causal():
    m = tiny_control()
    x = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 7) % 300
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[:, :20], b[:, :20]), _diff(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_save_load_identical_logits_and_model_type(tmp_path, tiny_tokenizer):
    m = tiny_control(seed=3)
    save_model(m, tmp_path / "m", tokenizer=tiny_tokenizer)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == MODEL_TYPE
    loaded = ssmquant.load_model(tmp_path / "m")
    assert isinstance(loaded, TransformerControlLM) and loaded.config == m.config
    x = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))


def test_hidden_states_out_and_head_fn_like_mamba():
    m = tiny_control()
    x = torch.randint(0, 300, (2, 12))
    hs: list = []
    with torch.no_grad():
        logits = m(x, hidden_states_out=hs)
        assert len(hs) == m.config.n_layer + 1
        final = m.lm_head(m.backbone.norm_f(hs[-1]))
        assert torch.equal(final, logits)
        assert torch.equal(m(x, head_fn=lambda h, head: head(h)), logits)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_word_corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl", docs=200, max_words=60, seed=1,
                             words="the quick brown fox jumps over lazy dog state space models scan ternary weights")


def test_pretrain_selects_the_control_by_model_type_and_lowers_the_loss(tmp_path, tiny_tokenizer, corpus):
    from ssmquant.train.config import TrainConfig
    from ssmquant.train.pretrain import pretrain

    tiny_tokenizer.save(tmp_path / "tok")
    spec = json.dumps({"model_type": MODEL_TYPE, "d_model": 64, "n_layer": 2, "n_head": 4, "d_ff": 64})
    tcfg = TrainConfig(out=str(tmp_path / "run"), data=[str(corpus)], tokens=30 * 4 * 32, seq_len=32, micro_batch=4,
                       lr=3e-3, cache_dir=str(tmp_path / "cache"), progress=False, plot=False, eval_sequences=2,
                       log_every=1, valid_fraction=0.05)
    s = pretrain(spec, str(tmp_path / "tok"), tcfg)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5, vals
    loaded = ssmquant.load_model(tmp_path / "run" / "model")
    assert isinstance(loaded, TransformerControlLM) and loaded.config.vocab_size == tiny_tokenizer.vocab_size
    assert s["val_loss"] == pytest.approx(vals[-1])


@pytest.mark.parametrize("method", ["rtn", "gptq", "lrec"])
def test_ptq_runs_on_the_control_and_reloads_as_it(tmp_path, tiny_tokenizer, method):
    from ssmquant.ptq import PTQConfig, ptq

    src = tmp_path / "src"
    model = tiny_control(d_model=64, d_ff=64)
    save_model(model, src, tokenizer=tiny_tokenizer)
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. State space models scan sequences. " * 40)
    rep = ptq(PTQConfig(model=str(src), method=method, out=str(tmp_path / method), group_size=32, rank=4,
                        calib_data=str(calib), calib_seqs=8, calib_len=32))
    assert len(rep["modules"]) == 4 * model.config.n_layer   # attn and mlp, in_proj and out_proj, every layer
    loaded = ssmquant.load_model(tmp_path / method)
    assert isinstance(loaded, TransformerControlLM)
    x = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        out = loaded(x)
    assert torch.isfinite(out).all() and not torch.equal(out, model(x))


def test_distill_runs_on_the_control_and_saved_student_reloads(tmp_path, tiny_tokenizer, corpus):
    from ssmquant.quant import MonitorConfig
    from ssmquant.train.config import TrainConfig
    from ssmquant.train.distill import DistillConfig, DistillTask
    from ssmquant.train.trainer import train

    teacher = tmp_path / "teacher"
    t = tiny_control(seed=5, d_model=64, d_ff=64)
    with torch.no_grad():   # a peaked teacher (the 0.02 init is nearly uniform, its KL to anything is ~0)
        for p in t.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    save_model(t, teacher, tokenizer=tiny_tokenizer)
    task = DistillTask(DistillConfig(teacher=str(teacher), group_size=32, monitor=MonitorConfig(every_n_steps=2),
                                     report_tokens=256), tiny_tokenizer)
    s = train(task, TrainConfig(out=str(tmp_path / "run"), data=[str(corpus)], tokens=12 * 4 * 32, seq_len=32,
                                micro_batch=4, lr=3e-3, cache_dir=str(tmp_path / "cache"), progress=False, plot=False,
                                eval_sequences=2, log_every=1, valid_fraction=0.05))
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["val_kl"] for r in recs if "val_kl" in r]
    assert kls[-1] < kls[0], kls
    assert {"teacher_ppl", "student_ppl", "post_hoc_ppl", "zero_frac"} <= set(s)
    student = ssmquant.load_model(tmp_path / "run" / "model")
    assert isinstance(student, TransformerControlLM) and student.quantization_config["modules"]


# ---- logit lens and error vs position --------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda s: tiny_control(seed=s),
                                  lambda s: tiny_model(seed=s, vocab_size=300, d_model=64, n_layer=2, d_state=16,
                                                       headdim=16, chunk_size=8)], ids=["transformer", "mamba"])
def test_logit_lens_against_itself_and_by_hand(make):
    import torch.nn.functional as F

    from ssmquant.eval.logit_lens import error_vs_position, logit_lens

    t, s = make(0), make(1)
    x = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(2))
    own = logit_lens(t, t, x, batch_size=2, vocab=300)
    assert len(own["kl"]) == t.config.n_layer + 1
    assert abs(own["kl"][-1]) < 1e-5 and own["top1"][-1] == 1.0, own
    res = logit_lens(s, t, x, batch_size=2, vocab=300)
    with torch.no_grad():   # the last lens point is the student's output: KL by hand
        lt, ls = F.log_softmax(t(x)[..., :300], -1), F.log_softmax(s(x)[..., :300], -1)
        kl = float((lt.exp() * (lt - ls)).sum(-1).mean())
        top = float((ls.argmax(-1) == lt.argmax(-1)).float().mean())
    assert res["kl"][-1] == pytest.approx(kl, rel=1e-4) and res["top1"][-1] == pytest.approx(top)
    pos = error_vs_position(t, t, x, buckets=(8, 16, 64))
    assert pos["buckets"] == [[1, 8], [9, 16]] and all(v == 0 for e in pos["rel_err"] for v in e)
    pos = error_vs_position(s, t, x, buckets=(8, 16, 64), vocab=300)
    assert all(v > 0 for v in pos["rel_err"][-1]) and pos["kl"][0] > 0 and len(pos["rel_err"]) == t.config.n_layer + 1
