"""The shared trainer: loss goes down, exact resume, refusals, NaN stop, checkpoint fallback, run layout."""

import json

import pytest
import torch

import ssmquant
from ssmquant.errors import TrainingError
from ssmquant.model.config import Mamba2Config
from ssmquant.train.checkpointing import list_checkpoints
from ssmquant.train.config import TrainConfig
from ssmquant.train.tasks import PretrainTask
from ssmquant.train.trainer import train

from conftest import write_word_corpus

MODEL = dict(d_model=32, n_layer=2, d_state=8, headdim=8, chunk_size=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_word_corpus(tmp_path_factory.mktemp("corpus") / "train.jsonl", docs=300, max_words=80, seed=0,
                             words="the quick brown fox jumps over lazy dog state space model scans long sequences")


def _cfg(tmp_path, corpus, name="run", **kw):
    base = dict(out=str(tmp_path / name), data=[str(corpus)], tokens=6 * 2 * 32 * 4, seq_len=32, micro_batch=4,
                grad_accum=2, lr=3e-3, save_every=0, cache_dir=str(tmp_path / "cache"), progress=False,
                plot=False, eval_sequences=4, log_every=1, valid_fraction=0.05)
    base.update(kw)
    return TrainConfig(**base)


def _task(tok):
    return PretrainTask(Mamba2Config(vocab_size=tok.vocab_size, **MODEL), tok, init_seed=0)


def test_pretrain_lowers_loss_and_writes_layout(tmp_path, corpus, tiny_tokenizer):
    summary = train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, tokens=20 * 256, lr=1e-2))
    run = tmp_path / "run"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5, f"held-out loss did not fall: {vals}"
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["train"]["seed"] == 0 and cfg["environment"]["torch"] and "git_commit" in cfg["environment"]
    m = ssmquant.load_model(run / "model")
    assert m.config.d_model == 32 and (run / "model" / "tokenizer.json").exists()
    assert summary["val_loss"] == pytest.approx(vals[-1])
    assert list_checkpoints(run / "checkpoints")


def test_resume_after_kill_is_bit_exact(tmp_path, corpus, tiny_tokenizer):
    full = _cfg(tmp_path, corpus, name="full")
    train(_task(tiny_tokenizer), full)
    ref = ssmquant.load_model(tmp_path / "full" / "model").state_dict()

    # "Kill" after 2 steps (a clean stop writes the checkpoint a SIGTERM would), then resume twice.
    part = _cfg(tmp_path, corpus, name="part", stop_after_steps=2)
    s1 = train(_task(tiny_tokenizer), part)
    assert s1["stopped"] and s1["step"] == 2
    s2 = train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, name="part", stop_after_steps=3, resume=True))
    assert s2["step"] == 5
    train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, name="part", resume=True))
    got = ssmquant.load_model(tmp_path / "part" / "model").state_dict()
    for k in ref:
        assert torch.equal(ref[k], got[k]), f"{k} differs after resume: max {(ref[k] - got[k]).abs().max()}"
    # The metrics log of the resumed run has one record per step, no duplicates.
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, corpus, tiny_tokenizer, capsys):
    train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, save_every=1, stop_after_steps=3, keep_last=5))
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_1", "step_2", "step_3"]
    with open(ckpts[-1] / "state.pt", "r+b") as f:
        f.seek(100)
        f.write(b"garbage!")
    s = train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, save_every=1, stop_after_steps=1, resume=True,
                                          keep_last=5))
    assert s["step"] == 3  # resumed from step 2, ran one step
    assert "corrupt" in capsys.readouterr().err


def test_refusals(tmp_path, corpus, tiny_tokenizer):
    train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, stop_after_steps=1))
    with pytest.raises(TrainingError, match="not empty.*--resume.*--overwrite"):
        train(_task(tiny_tokenizer), _cfg(tmp_path, corpus))
    with pytest.raises(TrainingError, match=r"config changed.*lr: 0.003 -> 0.001"):
        train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, resume=True, lr=1e-3))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(TrainingError, match="does not look like a run directory"):
        train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, name="other", overwrite=True))
    assert (tmp_path / "other" / "precious.txt").exists()
    s = train(_task(tiny_tokenizer), _cfg(tmp_path, corpus, overwrite=True, stop_after_steps=1))
    assert s["step"] == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus, tiny_tokenizer):
    class Exploding(PretrainTask):
        def loss(self, model, x, y):
            loss, parts = super().loss(model, x, y)
            self.calls = getattr(self, "calls", 0) + 1
            return (loss * float("nan") if self.calls > 4 else loss), parts

    task = Exploding(Mamba2Config(vocab_size=tiny_tokenizer.vocab_size, **MODEL), tiny_tokenizer)
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        train(task, _cfg(tmp_path, corpus, save_every=1))
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_1", "step_2"]


def test_cli_pretrain_end_to_end(tmp_path, corpus, tiny_tokenizer):
    from ssmquant.cli import main

    tiny_tokenizer.save(tmp_path / "tok")
    code = main(["pretrain", "--model-config", json.dumps(MODEL), "--tokenizer", str(tmp_path / "tok"),
                 "--data", str(corpus), "--tokens", "2K", "--seq-len", "32", "--micro-batch", "4",
                 "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    assert (tmp_path / "cli" / "plots" / "loss.png").exists()
    assert ssmquant.load_model(tmp_path / "cli" / "model").config.padded_vocab_size >= tiny_tokenizer.vocab_size


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path, corpus, tiny_tokenizer):
    import signal
    import subprocess
    import sys
    import time

    tiny_tokenizer.save(tmp_path / "tok")
    cmd = [sys.executable, "-m", "ssmquant", "pretrain", "--model-config", json.dumps(MODEL), "--tokenizer",
           str(tmp_path / "tok"), "--data", str(corpus), "--tokens", "400K", "--seq-len", "32", "--micro-batch", "4",
           "--out", str(tmp_path / "sig"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--no-plot",
           "--log-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sig" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-1000:]
    assert "signal SIGTERM" in err and "--resume" in err
    ckpts = list_checkpoints(tmp_path / "sig" / "checkpoints")
    assert len(ckpts) == 1
    stopped_at = int(ckpts[0].name.split("_")[1])
    assert 0 < stopped_at < 400_000 // 128
    # Resume only for two more steps (stop-after-steps), proving it continues from the signal's checkpoint.
    r = subprocess.run(cmd + ["--resume", "--stop-after-steps", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]
    assert "resumed from" in r.stderr and f"step {stopped_at}" in r.stderr
