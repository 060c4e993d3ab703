"""Ternary QAT + KD: losses, the no-bypass guarantee on the real model, exact resume, several processes, CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch

import ssmquant
from ssmquant.errors import ConfigError, DataError
from ssmquant.io.checkpoints import save_model
from ssmquant.quant import MonitorConfig, QuantConfig, find_bypassed_modules, quantize_, ternary_modules
from ssmquant.train.config import TrainConfig
from ssmquant.train.distill import DistillConfig, DistillTask
from ssmquant.train.losses import kd_loss
from ssmquant.train.trainer import train

from conftest import tiny_model, write_word_corpus

MODEL = dict(vocab_size=300, d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=8)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("teacher")
    save_model(tiny_model(seed=7, **MODEL), d, tokenizer=tiny_tokenizer)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_word_corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl", docs=200, max_words=60, seed=1,
                             words="the quick brown fox jumps over lazy dog state space models scan ternary weights")


def _tcfg(tmp_path, corpus, name="run", **kw):
    base = dict(out=str(tmp_path / name), data=[str(corpus)], tokens=8 * 4 * 32, seq_len=32, micro_batch=4,
                grad_accum=1, lr=3e-3, cache_dir=str(tmp_path / "cache"), progress=False, plot=False,
                eval_sequences=2, log_every=1, valid_fraction=0.05)
    base.update(kw)
    return TrainConfig(**base)


def _dcfg(teacher_dir, **kw):
    base = dict(teacher=str(teacher_dir), group_size=32, monitor=MonitorConfig(every_n_steps=2),
                report_tokens=256, report_text=None)
    base.update(kw)
    return DistillConfig(**base)


# ----- losses -----------------------------------------------------------------------------------------------------

def test_kd_loss_zero_for_identical_models_and_positive_otherwise():
    m = tiny_model(**MODEL)
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        h = m(x, return_hidden=True)
    loss, parts = kd_loss(h, m.lm_head, h, m.lm_head, x, temperature=2.0)
    assert abs(float(loss)) < 1e-6 and abs(parts["kl"]) < 1e-6
    loss2, _ = kd_loss(h + 0.1 * torch.randn_like(h), m.lm_head, h, m.lm_head, x)
    assert float(loss2) > 1e-4


def test_kd_loss_chunked_equals_whole_in_value_and_gradient():
    m = tiny_model(**MODEL)
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        ht = m(x, return_hidden=True) * 1.1
    grads = []
    for max_logits in (2**30, 300 * 5):   # one chunk; chunks of 5 tokens with recomputation
        hs = m(x, return_hidden=True).detach().requires_grad_(True)
        loss, parts = kd_loss(hs, m.lm_head, ht, m.lm_head, x, temperature=1.5, ce_weight=0.3, max_logits=max_logits)
        loss.backward()
        grads.append((float(loss), hs.grad.clone(), parts["kl"]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-7)


# ----- the quantized student ------------------------------------------------------------------------------------

def test_no_fast_path_bypasses_the_quantized_weights():
    """Perturbing each quantized module's scale must move the loss (the fused out_proj pitfall)."""
    m = tiny_model(**MODEL)
    quantize_(m, QuantConfig(group_size=32, include=(r"\.in_proj$", r"\.out_proj$", r"lm_head$")))
    names = [n for n, _ in ternary_modules(m)]
    assert len(names) == 2 * MODEL["n_layer"] + 1
    x = torch.randint(0, 300, (2, 10))
    m.eval()
    for run in (lambda: m(x), lambda: torch.cat([m(x[:, :4], cache := m.allocate_cache(2)),
                                                 m(x[:, 4:5], cache)], 1)):
        assert find_bypassed_modules(m, run) == []


def test_tokenizer_mismatch_is_refused(tmp_path, teacher_dir, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from ssmquant.io.tokenizer import Tokenizer as SQ

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel()
    tk.train_from_iterator(["other text entirely"] * 5, trainers.BpeTrainer(vocab_size=280,
                                                                           special_tokens=["<|endoftext|>"]))
    task = DistillTask(_dcfg(teacher_dir), SQ(tk, source="other"))
    with pytest.raises(DataError, match="differs from the teacher's own"):
        train(task, _tcfg(tmp_path, corpus))


def test_group_size_must_divide():
    with pytest.raises(ConfigError, match="group"):
        DistillConfig(teacher="x", group_size=48)


# ----- the whole job ----------------------------------------------------------------------------------------------

def test_distill_lowers_kd_and_saved_student_equals_fake_quant(tmp_path, teacher_dir, corpus, tiny_tokenizer):
    task = DistillTask(_dcfg(teacher_dir, scale_mode="learnable"), tiny_tokenizer)
    s = train(task, _tcfg(tmp_path, corpus, tokens=20 * 4 * 32))
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["val_kl"] for r in recs if "val_kl" in r]
    assert kls[-1] < kls[0], f"held-out KL to the teacher did not fall: {kls}"
    assert any("quant/zero_frac" in r for r in recs)
    for key in ("teacher_ppl", "student_ppl", "post_hoc_ppl", "zero_frac", "size"):
        assert key in s, key
    # The packed model on disk gives exactly the logits of the fake-quant student that training ended with.
    packed = ssmquant.load_model(tmp_path / "run" / "model")
    x = torch.randint(0, 300, (2, 16))
    ckpt = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1] / "state.pt",
                      weights_only=True)
    student = tiny_model(**MODEL)
    quantize_(student, task.qcfg)
    student.load_state_dict(ckpt["model"])
    with torch.no_grad():
        assert torch.equal(student.eval()(x), packed(x))


def test_distill_resume_is_bit_exact(tmp_path, teacher_dir, corpus, tiny_tokenizer):
    def task():
        return DistillTask(_dcfg(teacher_dir, scale_mode="learnable"), tiny_tokenizer)

    train(task(), _tcfg(tmp_path, corpus, name="full"))
    train(task(), _tcfg(tmp_path, corpus, name="part", stop_after_steps=3))
    train(task(), _tcfg(tmp_path, corpus, name="part", resume=True))
    a = torch.load(sorted((tmp_path / "full" / "checkpoints").glob("step_*"))[-1] / "state.pt", weights_only=True)
    b = torch.load(sorted((tmp_path / "part" / "checkpoints").glob("step_*"))[-1] / "state.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["task"] == b["task"]  # the monitor's history resumes too


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_and_resume_on_one(tmp_path, teacher_dir, corpus, tiny_tokenizer, mode):
    """DDP or FSDP2 (gloo, 2 processes) with the same global batch as 1 process: same losses; the 2-process
    checkpoint resumes on 1 process."""
    tiny_tokenizer.save(tmp_path / "tok")
    common = ["distill", "--teacher", str(teacher_dir), "--data", str(corpus), "--tokens", str(6 * 4 * 32),
              "--seq-len", "32", "--micro-batch", "2", "--grad-accum", "2", "--group-size", "32", "--lr", "3e-3",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--no-plot", "--eval-sequences", "2",
              "--log-every", "1", "--report-tokens", "128", "--valid-fraction", "0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "ssmquant", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    extra = ["--fsdp"] if mode == "fsdp" else []
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517" if mode == "ddp" else "29518", "-m", "ssmquant", *common,
                          "--out", str(tmp_path / "two"), "--stop-after-steps", "3", *extra],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "ssmquant", *common, "--out", str(tmp_path / "two"),
                              "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    # And the other way: a 1-process checkpoint resumed on 2 processes.
    first = subprocess.run([sys.executable, "-m", "ssmquant", *common, "--out", str(tmp_path / "back"),
                            "--stop-after-steps", "2"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    on_two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29519" if mode == "ddp" else "29520", "-m", "ssmquant", *common,
                             "--out", str(tmp_path / "back"), "--resume", *extra],
                            capture_output=True, text=True, env=env)
    assert on_two.returncode == 0, on_two.stderr[-2000:]

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text()
                                                  .splitlines()) if "loss" in r}
    a = losses("one")
    for run in ("two", "back"):
        b = losses(run)
        assert a.keys() == b.keys(), run
        for step in a:
            assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5), (run, step, a[step], b[step])


def test_distill_dfssm_end_to_end(tmp_path, teacher_dir, corpus, tiny_tokenizer):
    """--method dfssm through the same trainer: KL falls, the saved model loads and equals the trained student."""
    task = DistillTask(_dcfg(teacher_dir, method="dfssm", rank=4, group_size=32, scale_mode="fixed"), tiny_tokenizer)
    s = train(task, _tcfg(tmp_path, corpus, tokens=12 * 4 * 32))
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["val_kl"] for r in recs if "val_kl" in r]
    assert kls[-1] < kls[0], kls
    assert "dfssm_size" in s and s["student_ppl"] > 0
    from ssmquant.quant.binary_lowrank import dfssm_quantize_

    packed = ssmquant.load_model(tmp_path / "run" / "model")
    ckpt = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1] / "state.pt",
                      weights_only=True)
    student = tiny_model(**MODEL)
    dfssm_quantize_(student, task.qcfg)
    student.load_state_dict(ckpt["model"])
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(student.eval()(x), packed(x))
