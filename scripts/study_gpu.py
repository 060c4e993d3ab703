#!/usr/bin/env python3
"""GPU runs of the replication study (issue 10, docs/RESULTS.md): the Transformer control, a larger Mamba-2 teacher,
the experiments on it (``large``) and ternary from scratch on the whole pretraining budget (``scratch-full``).

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

``large`` runs ``LARGE_STEPS`` (study_control.py and study_small.py commands) on the larger teacher, carried in
``.carry2/mamba-large``; ``--done`` skips what earlier commands finished, so the same command can be repeated::

    PYTHONPATH=$PWD/src python scripts/study_gpu.py large --teacher .carry2/mamba-large --out $OUT \
        --budget-s 480 --deadline-s 560 --done study/results/gpu_large_steps*.json

``scratch-full`` trains ternary QAT from scratch with the bundled teacher's whole recipe (80M tokens, ``--carry``
as for ``teachers``), with the zero-ratio monitor, and scores it as the distill summary does::

    PYTHONPATH=$PWD/src python scripts/study_gpu.py scratch-full --carry .carry --out $OUT --budget-s 540

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


LARGE_STEPS = [  # (label, study_control.py arguments), in priority order; {T} = the larger teacher, {OUT} = --workdir
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
    # ternary from scratch with the student's budget: study_small.py's ScratchTernaryTask on the larger architecture
    ("scratch-1M-s0", ["@study_small.py", "scratch", "--arch", "{T}", "--tag", "mamba-large", "--tokens", "1M",
                       "--seeds", "0", "--teacher-ppl", "35.75316255771333"]),
    ("distill-250K", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "--tokens", "250K"]),
    ("distill-500K", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "--tokens", "500K"]),
    ("distill-2M", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "--tokens", "2M"]),
    # DF-SSM at the ternary group-256 size: rank 44 is 2.059 bits per projection weight at these shapes (2.0625)
    ("dfssm-1M", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "--tokens", "1M",
                  "--extra=--method dfssm --rank 44 --group-size 128"]),
    ("scratch-1M-s12", ["@study_small.py", "scratch", "--arch", "{T}", "--tag", "mamba-large", "--tokens", "1M",
                        "--seeds", "1", "2", "--teacher-ppl", "35.75316255771333"]),
    ("distill-100K", ["distill", "--teacher", "{T}", "--tag", "mamba-large", "--seeds", "0", "1", "2", "--tokens",
                      "100K"]),
    ("ablate", ["ablate", "--teacher", "{T}", "--tag", "mamba-large", "--parts", "in_proj", "out_proj"]),
]


def run_step(argv: list[str], timeout: float) -> int | str:
    """One step in its own process group, so that a step cut at ``timeout`` takes its ``ssmquant`` child with it."""
    import os
    import signal

    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        return proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout"


def large(a) -> None:
    """The study's experiments on the larger teacher, as many as fit: a step starts only before --budget-s and is
    cut at --deadline-s; labels finished (rc 0) in the --done files of earlier commands are skipped."""
    import shutil

    t0 = time.time()
    out, study = Path(a.out), Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    study.mkdir(parents=True, exist_ok=True)
    finished = {r["step"] for f in a.done for r in json.loads(Path(f).read_text()) if r["rc"] == 0}
    done = []
    for label, args in LARGE_STEPS:
        if (a.steps and label not in a.steps) or label in finished:
            continue
        if time.time() - t0 > a.budget_s:
            print(f"budget spent: skipping {label}", flush=True)
            continue
        argv = [x.replace("{T}", a.teacher).replace("{OUT}", str(study)) for x in args]
        if argv[0].startswith("@"):          # another study script (its --out is the same study directory)
            script, argv = argv[0][1:], argv[1:] + ["--out", str(study)]
        else:
            script = "study_control.py"
            argv += ["--out", str(study), "--data-dir", a.data_dir, "--limit", str(a.limit)]
        t1 = time.time()
        rc = run_step([sys.executable, str(REPO / "scripts" / script), *argv], a.deadline_s - (t1 - t0))
        done.append({"step": label, "rc": rc, "wall_s": time.time() - t1,
                     "command": " ".join(["python", f"scripts/{script}", *argv])})
        print(json.dumps(done[-1]), flush=True)
        for f in ("control.jsonl", "results.jsonl"):
            if (study / f).is_file():
                shutil.copy(study / f, out / f)
        (out / "steps.json").write_text(json.dumps(done, indent=1))
    with tarfile.open(out / "eval.tar.xz", "w:xz") as tf:
        for pattern in ("eval/*/*/results.*", "distill/*/*/summary.json", "distill/*/*/metrics.jsonl",
                        "scratch-*/*/summary.json", "scratch-*/*/metrics.jsonl"):
            for f in study.glob(pattern):
                tf.add(f, arcname=str(f.relative_to(study)))


def scratch_full(a) -> None:
    """Ternary QAT from scratch on the bundled teacher's whole pretraining recipe (its data, config, TRAIN_FLAGS and
    80M tokens), with distillation's zero-ratio monitor and no guard: the fair form of "what would settle it".

    A 30-step probe measures tokens/s; a run starts only if its tokens fit the time left (the first run takes fewer
    whole millions if 80M do not fit, and says so). Each finished run appends a line to ``scratch_full.jsonl`` and
    leaves ``scratch-full-NAME.tar.xz`` (packed model, metrics.jsonl with the monitor's curves, summary, config)."""
    import argparse as ap
    import statistics

    import torch
    from study_small import REPORT_TOKENS, _scratch_tasks, monitor_config
    from train_teacher import MODEL_CONFIG

    from ssmquant.cli.train import add_train_args, train_config
    from ssmquant.eval.perplexity import perplexity
    from ssmquant.io.bundled import SAMPLE_HELDOUT, TEACHER_DIR
    from ssmquant.io.checkpoints import load_model
    from ssmquant.io.tokenizer import load_tokenizer
    from ssmquant.train.pretrain import resolve_model_config
    from ssmquant.train.trainer import train

    t0 = time.time()
    out, work, carry = Path(a.out), Path(a.workdir), Path(a.carry)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tokens").is_dir():
        with tarfile.open(carry / "teacher_tokens.tar.xz") as tf:
            tf.extractall(work, filter="data")
    data, tok_path = work / "tokens", carry / "tokenizer.json"
    _, TernaryTask, QuantConfig = _scratch_tasks()
    tok = load_tokenizer(str(tok_path), fallback=None)
    mcfg = resolve_model_config(str(MODEL_CONFIG), vocab_size=tok.vocab_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_note = f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}, torch {torch.__version__}"

    def flags(run: Path, tokens: str, seed: int, *extra: str) -> list[str]:
        return [*TRAIN_FLAGS, "--seed", str(seed), "--data", str(data), "--tokens", tokens, "--out", str(run),
                "--overwrite", "--no-progress", "--no-plot", *extra]

    def make(run: Path, tokens: str, seed: int, mode: str, *extra: str):
        p = ap.ArgumentParser()
        add_train_args(p)
        cfg = train_config(p.parse_args(flags(run, tokens, seed, *extra)))
        task = TernaryTask(mcfg, tok, init_seed=seed, qcfg=QuantConfig(group_size=256, scale_mode=mode),
                           monitor=monitor_config(cfg.total_steps, ("warn",)))
        return task, cfg

    report_kw = {"context": 512, "stride": 512, "batch_size": 8, "max_tokens": REPORT_TOKENS}
    with torch.no_grad():
        teacher_ppl = perplexity(load_model(str(TEACHER_DIR), device=device), tok, str(SAMPLE_HELDOUT),
                                 **report_kw)["ppl"]
    train(*make(work / "probe", a.tokens, 0, "learnable", "--stop-after-steps", str(a.probe_steps), "--log-every",
                "1"))
    recs = [json.loads(x) for x in (work / "probe" / "metrics.jsonl").read_text().splitlines()]
    tok_s = statistics.median([r["tok_per_s"] for r in recs if "tok_per_s" in r][1:] or [1.0])
    print(f"probe: {tok_s:,.0f} tokens/s; teacher ppl {teacher_ppl:.2f}", flush=True)
    full = int(float(a.tokens.rstrip("M")) * 1e6) if a.tokens.endswith("M") else int(a.tokens)
    for i, name in enumerate(a.runs):
        mode, seed = name.rsplit("-s", 1)
        left = a.budget_s - (time.time() - t0) - a.reserve_s
        fit = int(tok_s * left * 0.9 / 1e6)
        if fit * 1e6 < full and (i > 0 or fit < 1):
            print(f"{name}: {full / 1e6:.0f}M tokens do not fit the {left:.0f} s left; skipped", flush=True)
            continue
        tokens = a.tokens if fit * 1e6 >= full else f"{fit}M"
        run = work / f"scratch-full-{name}"
        task, cfg = make(run, tokens, int(seed), mode)
        t1 = time.time()
        train(task, cfg)
        wall = time.time() - t1
        s = json.loads((run / "summary.json").read_text())
        with torch.no_grad():
            whole = perplexity(load_model(str(run / "model"), device=device), tok, str(SAMPLE_HELDOUT), context=512,
                               stride=256, batch_size=16)["ppl"]
        row = {"experiment": "scratch-full", "name": name, "seed": int(seed), "scale_mode": mode, "tokens": s.get("tokens"),
               "tokens_asked": tokens, "command": ("PYTHONPATH=$PWD/src python scripts/study_gpu.py scratch-full "
                                                   f"--carry .carry --out $OUT --tokens {a.tokens} --runs {name}"),
               "train_flags": flags(Path("RUN"), tokens, int(seed)),
               "wall_s": wall, "probe_tok_per_s": tok_s, "device": dev_note, "teacher_ppl": teacher_ppl,
               "teacher_heldout_ppl": 51.64, "heldout_ppl_whole": whole,
               **{k: s.get(k) for k in ("student_ppl", "zero_frac", "collapse_events", "val_loss", "val_ppl", "step",
                                        "total_steps", "stopped")}}
        row["ratio"] = row["student_ppl"] / teacher_ppl if row.get("student_ppl") else None
        with (out / "scratch_full.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        with tarfile.open(out / f"scratch-full-{name}.tar.xz", "w:xz", preset=1) as tf:
            for f in ("model", "summary.json", "metrics.jsonl", "run_config.json"):
                if (run / f).exists():
                    tf.add(run / f, arcname=f)


def plot(a) -> None:
    """docs/img/zero_ratio_scratch_80M.png: the zero-ratio monitor over ``scratch-full``'s runs, and
    docs/img/study_budget_large.png: the 17.4M student's perplexity ratio against distillation tokens (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Path(a.results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in sorted((res / "scratch_full").glob("*/metrics.jsonl")):
        ms = [json.loads(x) for x in run.read_text().splitlines()]
        q = [m for m in ms if "quant/zero_frac" in m]
        t = [m["tokens"] / 1e6 for m in q]
        seed = run.parent.name
        axes[0].plot(t, [m["quant/zero_frac"] for m in q], label=f"{seed}: mean")
        axes[0].plot(t, [m["quant/zero_frac_max"] for m in q], ls="--", label=f"{seed}: largest layer")
        if seed.endswith("s0"):
            for k in sorted(k for k in q[-1] if k.startswith("quant/zero_frac/")):
                short = k.split("/")[-1].replace("backbone.layers.", "L").replace(".mixer.", " ")
                ls = "-" if "in_proj" in k else "--"
                axes[1].plot(t, [m[k] for m in q], ls=ls, label=short)
                axes[2].plot(t, [m[k.replace("zero_frac", "scale_ratio")] for m in q], ls=ls, label=short)
    axes[0].axhline(0.249, color="gray", lw=0.8, ls=":")
    axes[0].set_title("mean zero fraction (start 0.249, dotted)")
    axes[1].set_title("per layer, seed 0")
    axes[2].axhline(1.0, color="gray", lw=0.8, ls=":")
    axes[2].set_title("learnable scale / group absmean, per layer, seed 0")
    for ax in axes:
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Ternary QAT from scratch, bundled 3.8M Mamba-2 architecture, the teacher's 80M-token recipe, "
                 "monitor only (no guard); scripts/study_gpu.py scratch-full, H100", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(a.img) / "zero_ratio_scratch_80M.png", dpi=100)

    rows = [json.loads(x) for x in (res / "control.jsonl").read_text().splitlines()]
    kd = [r for r in rows if r["experiment"] == "distill" and r["tag"] == "mamba-large" and "method" not in r["name"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([r["tokens"] / 1e6 for r in kd], [r["student_ppl"] / r["teacher_ppl"] for r in kd], color="tab:blue",
               label="ternary QAT + KD (each seed a point)")
    df = [r for r in rows if r["experiment"] == "distill" and r["tag"] == "mamba-large" and "dfssm" in r["name"]]
    ax.scatter([r["tokens"] / 1e6 for r in df], [r["student_ppl"] / r["teacher_ppl"] for r in df], color="tab:purple",
               marker="s", label="DF-SSM rank 44 (2.06 bits)")
    ax.axhline(1.10, color="gray", ls="--", lw=0.8, label="target 1.10 ×")
    ax.set_xscale("log")
    ax.set_xlabel("distillation tokens (M); the teacher pretrained on 118M")
    ax.set_ylabel("student / teacher held-out perplexity")
    ax.set_title("17.4M Mamba-2 teacher, group 256, H100 (scripts/study_gpu.py large)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(a.img) / "study_budget_large.png", dpi=100)


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
    g.add_argument("--deadline-s", type=float, default=1e9, help="a step still running then is killed (default: none)")
    g.add_argument("--steps", nargs="+", default=None, help="labels of LARGE_STEPS to run (default: all, in order)")
    g.add_argument("--done", nargs="*", default=[], help="steps.json files of earlier commands: their finished "
                   "steps are skipped (e.g. study/results/gpu_large_steps*.json)")
    g.set_defaults(func=large)
    f = sub.add_parser("scratch-full", help="ternary from scratch on the bundled teacher's whole pretraining recipe")
    f.add_argument("--carry", default=".carry")
    f.add_argument("--workdir", default="/tmp/study_scratch_full")
    f.add_argument("--out", required=True)
    f.add_argument("--tokens", default="80M", help="tokens per run (default 80M, the bundled teacher's)")
    f.add_argument("--runs", nargs="+", default=["learnable-s0", "learnable-s1"],
                   help="runs as SCALEMODE-sSEED, in order; a later run starts only if all its tokens fit")
    f.add_argument("--budget-s", type=float, default=540.0, help="seconds for everything (default 540)")
    f.add_argument("--probe-steps", type=int, default=30, help="steps of the speed probe (default 30)")
    f.add_argument("--reserve-s", type=float, default=40.0, help="seconds kept for each run's evaluation and pack")
    f.set_defaults(func=scratch_full)
    q = sub.add_parser("plot", help="figures of the scratch-full and large records (matplotlib)")
    q.add_argument("--results", default=str(REPO / "study/results"))
    q.add_argument("--img", default=str(REPO / "docs/img"))
    q.set_defaults(func=plot)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
