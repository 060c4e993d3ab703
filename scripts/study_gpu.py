#!/usr/bin/env python3
"""GPU runs of the replication study (issue 10, docs/RESULTS.md): the Transformer control and a larger Mamba-2 teacher.

Run on the GPU machine (device tool, ``carry: [".carry"]``; ssmquant is not installed there)::

    PYTHONPATH=$PWD/src python scripts/study_gpu.py teachers --carry .carry --out $OUT --budget-s 540

``teachers`` does, in one 10-minute command, with the bundled teacher's data, tokenizer, sequence length, batch and
schedule (``scripts/train_teacher.py``'s ``TRAIN_FLAGS``; only ``--lr`` differs where said):

1. **lr sweep of the Transformer control**: 6M-token runs at lr 1e-3, 2e-3 and 3e-3 (the teacher's); the lowest
   validation loss picks the lr of step 2. The Mamba teacher's 3e-3 was not swept; this gives the control the same
   chance of a good lr, no more.
2. **The Transformer control** (``scripts/transformer_control_config.json``, 3.93M parameters) on 80M tokens, as the
   bundled teacher (80M tokens, 3.83M parameters). If the measured speed cannot fit 80M tokens into the budget left
   the run takes fewer and the report says how many.
3. **A larger Mamba-2 teacher** (``--large-config``, default d_model 512, 8 layers, the teacher's other fields) on as
   many whole millions of tokens as fit the time left (throughput probed for 20 steps), lr 3e-3.

Each model gets the bundled teacher's ``report.json`` measurement: held-out perplexity of the bundled sample
(context 512, stride 256, the whole 75,706 tokens). Results under ``--out``: ``transformer-control.tar.xz`` (model
dir + run files), ``mamba-large.tar.xz.partNN`` (fp16 model dir + run files, split to 15 MiB), ``gpu_report.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from train_teacher import SAMPLE, TRAIN_FLAGS

TF_CONFIG = REPO / "scripts/transformer_control_config.json"
LARGE = {"d_model": 512, "n_layer": 8, "d_state": 64, "headdim": 64, "ngroups": 1, "expand": 2, "d_conv": 4,
         "chunk_size": 64, "pad_vocab_size_multiple": 16, "tie_embeddings": True, "residual_in_fp32": True}


def flags_with(**over) -> list[str]:
    """TRAIN_FLAGS with some values replaced (``lr="2e-3"`` replaces ``--lr``)."""
    out = list(TRAIN_FLAGS)
    for k, v in over.items():
        i = out.index("--" + k.replace("_", "-"))
        out[i + 1] = str(v)
    return out


def pretrain(model_config: str, out: Path, tokens: str, data: Path, tokenizer: Path, *extra: str, **over) -> dict:
    cmd = [sys.executable, "-m", "ssmquant", "pretrain", "--model-config", model_config, "--tokenizer",
           str(tokenizer), "--data", str(data), "--no-progress", "--no-plot", *flags_with(**over), "--tokens", tokens,
           "--out", str(out), "--overwrite", *extra]
    print("+", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    s = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tok_s = [r["tok_per_s"] for r in recs if "tok_per_s" in r]
    return {"command": " ".join(["python", *cmd[1:]]), "wall_s": wall, "summary": s,
            "tok_per_s_median": sorted(tok_s)[len(tok_s) // 2] if tok_s else None}


def heldout(model_dir: Path) -> dict:
    import torch

    import ssmquant
    from ssmquant.eval.perplexity import perplexity

    model = ssmquant.load_model(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    tok = ssmquant.load_tokenizer(model_dir)
    with torch.no_grad():
        ppl = perplexity(model, tok, SAMPLE, context=512, stride=256, batch_size=16)
    return {"heldout_ppl": ppl["ppl"], "heldout_tokens": ppl["n_tokens"], "parameters": model.num_parameters()}


def pack_run(run: Path, dest: Path, *, fp16: bool = False) -> list[str]:
    """model dir (optionally re-saved fp16) + run files as one .tar.xz, split into 15 MiB parts if larger."""
    import torch

    import ssmquant

    model_dir = run / "model"
    if fp16:
        m = ssmquant.load_model(model_dir, dtype=torch.float16)
        ssmquant.save_model(m, run / "model-fp16", tokenizer=ssmquant.load_tokenizer(model_dir))
        model_dir = run / "model-fp16"
    with tarfile.open(dest, "w:xz", preset=1) as tf:
        tf.add(model_dir, arcname="model")
        for f in ("summary.json", "metrics.jsonl", "run_config.json", "report.json"):
            if (run / f).is_file():
                tf.add(run / f, arcname=f)
    data = dest.read_bytes()
    part = 15 * 2**20
    if len(data) <= part:
        return [dest.name]
    dest.unlink()
    names = []
    for i in range(0, len(data), part):
        p = dest.with_name(f"{dest.name}.part{i // part:02d}")
        p.write_bytes(data[i:i + part])
        names.append(p.name)
    return names


def teachers(a) -> None:
    import torch

    t_start = time.time()
    out, work = Path(a.out), Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    carry = Path(a.carry)
    with tarfile.open(carry / "teacher_tokens.tar.xz") as tf:
        tf.extractall(work, filter="data")
    data, tok = work / "tokens", carry / "tokenizer.json"
    rep: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "train_flags": TRAIN_FLAGS}

    def save_report():
        rep["elapsed_s"] = time.time() - t_start
        (out / "gpu_report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")

    # 1. lr sweep of the control
    sweep = {}
    for lr in a.sweep_lrs:
        r = pretrain(str(TF_CONFIG), work / f"tf-lr{lr}", a.sweep_tokens, data, tok, lr=lr)
        sweep[lr] = {"val_loss": r["summary"].get("val_loss"), "val_ppl": r["summary"].get("val_ppl"),
                     "wall_s": r["wall_s"], "tok_per_s": r["tok_per_s_median"], "command": r["command"]}
        print(json.dumps({lr: sweep[lr]}), flush=True)
    rep["tf_lr_sweep"] = sweep
    best = min(sweep, key=lambda k: sweep[k]["val_loss"])
    rep["tf_lr"] = best
    save_report()

    # 2. the control, 80M tokens (or what fits)
    tok_s = sweep[best]["tok_per_s"]
    left = a.budget_s - (time.time() - t_start)
    tf_budget = min(left * a.tf_share, left - 60)
    tf_tokens = a.tf_tokens or f"{max(1, min(80, int(tok_s * tf_budget / 1e6 * 0.9)))}M"
    rep["tf_tokens"] = tf_tokens
    save_report()
    r = pretrain(str(TF_CONFIG), work / "tf", tf_tokens, data, tok, lr=best)
    (work / "tf" / "report.json").write_text(json.dumps({**heldout(work / "tf" / "model"), **r}, indent=2) + "\n")
    rep["transformer"] = json.loads((work / "tf" / "report.json").read_text())
    rep["transformer_files"] = pack_run(work / "tf", out / "transformer-control.tar.xz")
    save_report()
    print(json.dumps(rep["transformer"]["summary"]), flush=True)

    # 3. the larger Mamba-2 teacher: probe speed, then fill the time left
    cfg = json.dumps({**LARGE, **json.loads(a.large_config)})
    probe = pretrain(cfg, work / "large-probe", "100M", data, tok, "--stop-after-steps", "20", "--log-every", "5")
    l_tok_s = probe["tok_per_s_median"]
    left = a.budget_s - (time.time() - t_start) - a.reserve_s
    tokens = a.large_tokens or f"{max(1, min(a.max_large_tokens_m, int(l_tok_s * left / 1e6 * 0.85)))}M"
    rep["large_probe_tok_per_s"], rep["large_tokens"] = l_tok_s, tokens
    save_report()
    r = pretrain(cfg, work / "large", tokens, data, tok, lr=a.large_lr)
    (work / "large" / "report.json").write_text(json.dumps({**heldout(work / "large" / "model"), **r}, indent=2)
                                                + "\n")
    rep["mamba_large"] = json.loads((work / "large" / "report.json").read_text())
    rep["mamba_large_files"] = pack_run(work / "large", out / "mamba-large.tar.xz", fp16=True)
    save_report()
    print(json.dumps({k: v for k, v in rep.items() if k != "train_flags"}, indent=2, default=str))


LARGE_STEPS = [  # (label, study_control.py arguments), in priority order; {T} = the larger teacher
    ("ptq", ["ptq", "--teacher", "{T}", "--tag", "mamba-large"]),
    ("distill-1M-s0", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "--tokens", "1M"]),
    ("eval-teacher", ["eval", "--teacher", "{T}", "--tag", "mamba-large", "--name", "teacher"]),
    ("eval-qat", ["eval", "--teacher", "{T}", "--tag", "mamba-large", "--name", "qat-kd-1M-s0", "--with-teacher",
                  "--student", "{OUT}/distill/mamba-large/1M-s0/model"]),
    ("eval-rtn", ["eval", "--teacher", "{T}", "--tag", "mamba-large", "--name", "rtn", "--with-teacher",
                  "--student", "{OUT}/ptq/mamba-large/rtn"]),
    ("lens-teacher", ["lens", "--teacher", "{T}", "--tag", "mamba-large", "--name", "teacher"]),
    ("lens-rtn", ["lens", "--teacher", "{T}", "--tag", "mamba-large", "--rtn"]),
    ("lens-qat", ["lens", "--teacher", "{T}", "--tag", "mamba-large", "--name", "qat-kd",
                  "--student", "{OUT}/distill/mamba-large/1M-s0/model"]),
    ("position-rtn", ["position", "--teacher", "{T}", "--tag", "mamba-large", "--rtn", "--seqlen", "2048"]),
    ("position-qat", ["position", "--teacher", "{T}", "--tag", "mamba-large", "--name", "qat-kd", "--seqlen", "2048",
                      "--student", "{OUT}/distill/mamba-large/1M-s0/model"]),
    ("distill-1M-s12", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "1", "2", "--tokens", "1M"]),
    ("distill-100K", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "1", "2", "--tokens",
                      "100K"]),
    ("ablate", ["ablate", "--teacher", "{T}", "--tag", "mamba-large", "--parts", "in_proj", "out_proj"]),
]


def large(a) -> None:
    """The study's experiments on the larger teacher (scripts/study_control.py), as many as fit --budget-s."""
    import shutil

    t0 = time.time()
    out, study = Path(a.out), Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    study.mkdir(parents=True, exist_ok=True)
    done = []
    for label, args in LARGE_STEPS:
        if a.steps and label not in a.steps:
            continue
        if time.time() - t0 > a.budget_s:
            print(f"budget spent: skipping {label}", flush=True)
            continue
        argv = [x.replace("{T}", a.teacher).replace("{OUT}", str(study)) for x in args]
        argv += ["--out", str(study), "--data-dir", a.data_dir, "--limit", str(a.limit)]
        t1 = time.time()
        r = subprocess.run([sys.executable, str(REPO / "scripts/study_control.py"), *argv], check=False)
        done.append({"step": label, "rc": r.returncode, "wall_s": time.time() - t1})
        print(json.dumps(done[-1]), flush=True)
        shutil.copy(study / "control.jsonl", out / "control.jsonl")
        (out / "steps.json").write_text(json.dumps(done, indent=1))
    with tarfile.open(out / "eval.tar.xz", "w:xz") as tf:
        for f in study.glob("eval/*/*/results.*"):
            tf.add(f, arcname=str(f.relative_to(study)))
        for f in study.glob("distill/*/*/summary.json"):
            tf.add(f, arcname=str(f.relative_to(study)))
        for f in study.glob("distill/*/*/metrics.jsonl"):
            tf.add(f, arcname=str(f.relative_to(study)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teachers", help="Transformer control (lr sweep + 80M tokens) and the larger Mamba-2 teacher")
    t.add_argument("--carry", default=".carry")
    t.add_argument("--workdir", default="/tmp/study_gpu")
    t.add_argument("--out", required=True)
    t.add_argument("--budget-s", type=float, default=540.0, help="seconds for everything (default 540)")
    t.add_argument("--reserve-s", type=float, default=45.0, help="seconds kept for the large model's eval and pack")
    t.add_argument("--tf-share", type=float, default=0.45, help="share of the time left that the control may take")
    t.add_argument("--sweep-lrs", nargs="+", default=["1e-3", "2e-3", "3e-3"])
    t.add_argument("--sweep-tokens", default="6M")
    t.add_argument("--large-config", default="{}", help="JSON overriding fields of the larger teacher's config")
    t.add_argument("--large-lr", default="3e-3")
    t.add_argument("--tf-tokens", default=None, help="tokens of the control (default: 80M or what fits)")
    t.add_argument("--large-tokens", default=None, help="tokens of the larger teacher (default: what fits)")
    t.add_argument("--max-large-tokens-m", type=int, default=300)
    t.set_defaults(func=teachers)
    g = sub.add_parser("large", help="the study's experiments on the larger teacher (study_control.py steps)")
    g.add_argument("--teacher", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--workdir", default="/tmp/study_large")
    g.add_argument("--data-dir", default=".carry2/evaldata")
    g.add_argument("--limit", type=int, default=1000)
    g.add_argument("--budget-s", type=float, default=400.0, help="no step starts after this many seconds")
    g.add_argument("--steps", nargs="+", default=None, help="labels of LARGE_STEPS to run (default: all, in order)")
    g.set_defaults(func=large)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
