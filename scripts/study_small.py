"""The small-scale replication study (issue 10, docs/RESULTS.md): one command per table, on CPU, bundled teacher.

Every run uses the embedded default's setting (bundled 3.8M Mamba-2 teacher, bundled training sample, sequence 256,
batch 8, AdamW lr 2e-3, cosine with 5% warm-up, weight decay 0.1, learnable scales with the clamp guard) and
``--tokens`` (default 100K, half the embedded default's 200K, to fit the CPU budget). Held-out perplexity is the
distill summary's: the first 16,384 tokens of the bundled held-out sample, windows of 512, stride 512, fp32, for
teacher, packed student and plain post-hoc round-to-nearest ternary (the same tokens in every run, so runs compare
paired).

    python scripts/study_small.py seeds   --out runs/study   # embedded default, seeds 0 1 2
    python scripts/study_small.py scratch --out runs/study   # ternary / fp32 from scratch with the same budget
    python scripts/study_small.py groups  --out runs/study   # ternary group 64 / 128 / row (256 = seeds' seed 0)
    python scripts/study_small.py dfssm   --out runs/study   # DF-SSM at the ternary group-256 size
    python scripts/study_small.py drift   --out runs/study   # state drift: seeds' s0 student vs post-hoc (CLI)
    python scripts/study_small.py zeros   --out runs/study   # zero-ratio curves: scale modes and guards, both starts
    python scripts/study_small.py table   --out runs/study   # markdown tables from OUT/results.jsonl
    python scripts/study_small.py plot    --out runs/study   # docs/img/study_bits.svg (+ zero_ratio_scratch.png)

Each run appends one JSON line to ``OUT/results.jsonl`` (experiment, name, command, seed, wall time, device and the
summary's numbers). A run whose ``summary.json`` exists is not run again; its line is re-read instead.

Distillation runs go through the ``ssmquant distill`` CLI (so the commands in RESULTS.md are what ran). The
from-scratch baseline has no CLI: ``ScratchTernaryTask`` below is ``PretrainTask`` (cross-entropy, mamba-ssm init)
whose ``build_model`` swaps in_proj / out_proj for ternary QAT modules (``quantize_``, group 256, learnable scales,
the same ``QuantConfig`` as distillation) right after ``init_weights``; its final report measures the packed model
like the distill summary does. ``ScratchFloatTask`` is the same without quantization (how far 100K tokens of
pretraining get at all).

The ``zeros`` experiment (issue 10, experiment 3) gives ``ScratchTernaryTask`` the zero-ratio monitor of
distillation (``quant.monitor.ZeroRatioMonitor``, configured as ``ssmquant distill`` configures it: about 50
measurements per run, an event when a layer's zero fraction rises faster than 0.2 over the run or passes 0.6) and
runs the same grid from scratch and from the pretrained teacher (through ``ssmquant distill``): learnable scales with
no guard and with each guard (clamp, reinit, regularize, freeze), and fixed and EMA scales (default guard, clamp).
``--log-every 1`` writes the monitor's per-layer zero fractions to ``metrics.jsonl`` at every step.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

SEEDS = (0, 1, 2)
REPORT_TOKENS = 16384           # the embedded default's --report-tokens
EMBEDDED = {"seq_len": 256, "micro_batch": 8, "lr": 2e-3, "warmup_frac": 0.05, "eval_sequences": 8, "log_every": 5}


def device_note() -> str:
    """Where the trainer runs: its default device is CUDA when there is one (the GPU runs of study_gpu.py)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def _record(out: Path, row: dict) -> dict:
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    return row


def _summary_row(experiment: str, name: str, seed: int, cmd: str, run: Path, wall: float | None) -> dict:
    s = json.loads((run / "summary.json").read_text())
    row = {"experiment": experiment, "name": name, "seed": seed, "command": cmd, "run": str(run),
           "wall_s": wall, "train_wall_s": s.get("wall_s_this_run"), "device": device_note(),
           "tokens": s.get("tokens"),
           "teacher_ppl": s.get("teacher_ppl"), "student_ppl": s.get("student_ppl"),
           "post_hoc_ppl": s.get("post_hoc_ppl"), "zero_frac": s.get("zero_frac"),
           "val_ppl": s.get("val_ppl"), "val_kl": s.get("val_kl"), "val_loss": s.get("val_loss"),
           "collapse_events": s.get("collapse_events")}
    if s.get("student_ppl") and s.get("teacher_ppl"):
        row["ratio"] = s["student_ppl"] / s["teacher_ppl"]
        row["post_hoc_ratio"] = s["post_hoc_ppl"] / s["teacher_ppl"] if s.get("post_hoc_ppl") else None
    if "size" in s:
        row["bits_per_weight"] = s["size"]["bits_per_quantized_weight"]
        row["total_mb"] = s["size"]["total_mb"]
    if "dfssm_size" in s:
        row["bits_per_weight"] = s["dfssm_size"]["bits_per_projection_weight"]
        row["total_mb"] = s["dfssm_size"]["total_mb"]
    return row


def distill_run(out: Path, experiment: str, name: str, seed: int, tokens: str, extra: list[str]) -> dict:
    run = out / experiment / name
    cmd = ["ssmquant", "distill", "--tokens", tokens, "--seed", str(seed), "--no-progress", "--no-plot",
           "--out", str(run), *extra]
    wall = None
    if not (run / "summary.json").is_file():
        t0 = time.time()
        subprocess.run(cmd + ["--overwrite"], check=True)
        wall = time.time() - t0
    return _record(out, {**_summary_row(experiment, name, seed, shlex.join(cmd), run, wall), **_monitor_fields(run)})


def read_metrics(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


def _monitor_fields(run: Path) -> dict:
    """The monitor's last per-layer maximum of the zero fraction, from metrics.jsonl ({} without a monitor)."""
    last = [r for r in read_metrics(run) if "quant/zero_frac_max" in r]
    return {"zero_frac_max": last[-1]["quant/zero_frac_max"]} if last else {}


# ---- from scratch --------------------------------------------------------------------------------------------------

def _scratch_tasks():
    """Defined lazily so ``--help`` does not import torch."""
    import torch

    from ssmquant.eval.perplexity import perplexity
    from ssmquant.io.bundled import SAMPLE_HELDOUT
    from ssmquant.quant import QuantConfig, convert, quant_param_groups, quantize_
    from ssmquant.quant.monitor import MonitorConfig, ZeroRatioMonitor
    from ssmquant.quant.size import size_report
    from ssmquant.train.distill import packed_zero_fraction, save_student
    from ssmquant.train.tasks import PretrainTask, default_param_groups

    def report(packed, tokenizer) -> dict:
        kw = {"context": 512, "stride": 512, "batch_size": 8, "max_tokens": REPORT_TOKENS}
        with torch.no_grad():
            return {"student_ppl": perplexity(packed, tokenizer, str(SAMPLE_HELDOUT), **kw)["ppl"]}

    class ScratchFloatTask(PretrainTask):
        name = "pretrain-fp32"

        def final_report(self, model, out):
            return report(copy.deepcopy(model).eval(), self.tokenizer)

    class ScratchTernaryTask(PretrainTask):
        """Ternary QAT with cross-entropy from a random init: the paper's "train ternary from scratch" baseline."""

        name = "pretrain-ternary"

        def __init__(self, model_config, tokenizer, *, init_seed: int, qcfg: QuantConfig,
                     monitor: MonitorConfig | None = None):
            super().__init__(model_config, tokenizer, init_seed=init_seed)
            self.qcfg = qcfg
            # The monitor and its guards are hooked in where DistillTask hooks them (loss, after_step, step_metrics).
            self.monitor = ZeroRatioMonitor(monitor) if monitor is not None else None
            self._pending_metrics: dict = {}

        def describe(self):
            d = {**super().describe(), "quant": {"group_size": self.qcfg.group_size,
                                                 "scale_mode": self.qcfg.scale_mode}}
            if self.monitor is not None:
                d["monitor"] = {k: list(v) if isinstance(v, tuple) else v
                                for k, v in dataclasses.asdict(self.monitor.config).items()}
            return d

        def loss(self, model, x, y):
            loss, parts = super().loss(model, x, y)
            pen = self.monitor.penalty(model) if self.monitor is not None else None
            if pen is not None:
                loss, parts = loss + pen, {**parts, "zero_penalty": float(pen)}
            return loss, parts

        def after_step(self, model, step):
            if self.monitor is None:
                return
            m = self.monitor.step(model, step)
            if m:
                self._pending_metrics = m
            self.monitor.apply_policy(model, step)

        def step_metrics(self, model, step):
            out, self._pending_metrics = self._pending_metrics, {}
            return out

        def build_model(self, device):
            model = super().build_model(device)   # init_weights(init_seed), then the swap, as distillation does
            return quantize_(model, self.qcfg).train()

        def param_groups(self, model, cfg):
            # As DistillTask: scales get their own group without decay, weights are split as for pretraining.
            scales = [g for g in quant_param_groups(model, cfg.lr, cfg.weight_decay) if g["name"] == "ternary_scales"]
            skip = {id(p) for g in scales for p in g["params"]}
            return default_param_groups(model, cfg.weight_decay, skip=skip) + scales

        def save_final(self, model, directory):
            save_student(convert(copy.deepcopy(model).eval()), directory, tokenizer=self.tokenizer,
                         quant_info={"group_size": self.qcfg.group_size, "scale_mode": self.qcfg.scale_mode},
                         packing="2bit")

        def final_report(self, model, out):
            packed = convert(copy.deepcopy(model).eval())
            rep = {**report(packed, self.tokenizer), "zero_frac": packed_zero_fraction(packed),
                   "size": size_report(packed)}
            if self.monitor is not None:
                rep["collapse_events"] = len(self.monitor.events)
            return rep

    return ScratchFloatTask, ScratchTernaryTask, QuantConfig


def total_steps(tokens: str) -> int:
    from ssmquant.train.config import TrainConfig

    return TrainConfig(out="-", data=["-"], tokens=tokens, **EMBEDDED).total_steps


def monitor_config(steps: int, policies: tuple[str, ...]):
    """The ``MonitorConfig`` that ``ssmquant distill`` builds from its defaults (cli/train.py) for ``steps`` steps;
    freeze holds the scales for the first 20% of steps, as docs/recipes.md's sweep did."""
    from ssmquant.quant import MonitorConfig

    return MonitorConfig(every_n_steps=max(1, steps // 50), max_zero_frac=0.6, max_rise_per_kstep=0.2 * 1000 / steps,
                         policies=policies, freeze_steps=steps // 5 if "freeze" in policies else 0)


def scratch_run(out: Path, name: str, seed: int, tokens: str, *, ternary: bool, teacher_ppl: float | None,
                experiment: str = "scratch", scale_mode: str = "learnable", policies: tuple[str, ...] | None = None,
                log_every: int = EMBEDDED["log_every"], cmd: str | None = None, arch: str | None = None) -> dict:
    """One from-scratch run; ``policies`` (a tuple, e.g. ``("warn", "clamp")``) adds distillation's monitor.

    ``arch``: a model directory whose architecture (not its weights) is trained; default the bundled teacher's."""
    from ssmquant.io.bundled import SAMPLE_TRAIN, TEACHER_DIR
    from ssmquant.io.checkpoints import load_model
    from ssmquant.io.tokenizer import load_tokenizer
    from ssmquant.train.config import TrainConfig
    from ssmquant.train.trainer import train

    run = out / experiment / name
    cmd = cmd or (f"python scripts/study_small.py scratch --tokens {tokens} --seeds {seed}" + ("" if ternary else " --fp32"))
    wall = None
    if not (run / "summary.json").is_file():
        FloatTask, TernaryTask, QuantConfig = _scratch_tasks()
        tok = load_tokenizer(str(arch or TEACHER_DIR))
        mcfg = load_model(str(arch or TEACHER_DIR)).config      # the teacher's architecture, its weights unused
        tcfg = TrainConfig(out=str(run), data=[str(SAMPLE_TRAIN)], tokens=tokens, seed=seed, progress=False,
                           plot=False, overwrite=True, **{**EMBEDDED, "log_every": log_every})
        monitor = monitor_config(tcfg.total_steps, policies) if policies is not None else None
        task = (TernaryTask(mcfg, tok, init_seed=seed, qcfg=QuantConfig(group_size=256, scale_mode=scale_mode),
                            monitor=monitor)
                if ternary else FloatTask(mcfg, tok, init_seed=seed))
        t0 = time.time()
        train(task, tcfg)
        wall = time.time() - t0
    row = _summary_row(experiment, name, seed, cmd, run, wall)
    row.update(_monitor_fields(run))
    if teacher_ppl and row.get("student_ppl"):
        row["teacher_ppl"], row["ratio"] = teacher_ppl, row["student_ppl"] / teacher_ppl
    return _record(out, row)


# ---- zero-ratio curves: scale modes and guards, from scratch and from the pretrained teacher -------------------------

# (name, scale mode, collapse policies). "none" is the monitor alone; fixed and EMA keep distill's default guard.
ZERO_GRID = (
    ("learnable-none", "learnable", ("warn",)),
    ("learnable-clamp", "learnable", ("warn", "clamp")),
    ("learnable-reinit", "learnable", ("warn", "reinit")),
    ("learnable-regularize", "learnable", ("warn", "regularize")),
    ("learnable-freeze", "learnable", ("warn", "freeze")),
    ("fixed", "fixed", ("warn", "clamp")),
    ("ema", "ema", ("warn", "clamp")),
)


def zeros_runs(out: Path, seed: int, tokens: str, starts: list[str], only: list[str] | None,
               teacher_ppl: float | None) -> None:
    steps = total_steps(tokens)
    for start in starts:
        for name, mode, policies in ZERO_GRID:
            if only and name not in only:
                continue
            run_name = f"{start}-{name}-s{seed}"
            if start == "scratch":
                cmd = (f"python scripts/study_small.py zeros --start scratch --only {name} --tokens {tokens} "
                       f"--seeds {seed}")
                scratch_run(out, run_name, seed, tokens, ternary=True, teacher_ppl=teacher_ppl, experiment="zeros",
                            scale_mode=mode, policies=policies, log_every=1, cmd=cmd)
            else:
                extra = ["--group-size", "256", "--scale-mode", mode, "--collapse-policy", *policies, "--log-every", "1"]
                if "freeze" in policies:
                    extra += ["--freeze-steps", str(monitor_config(steps, policies).freeze_steps)]
                distill_run(out, "zeros", run_name, seed, tokens, extra)


ZERO_LABELS = {"learnable-none": "learnable, no guard", "learnable-clamp": "learnable + clamp [0.5, 2] (default)",
               "learnable-reinit": "learnable + reinit", "learnable-regularize": "learnable + regularize (target 0.5)",
               "learnable-freeze": "learnable + freeze (first 20%)", "fixed": "fixed (absmean)", "ema": "EMA"}


def plot_zeros(out: Path, path: Path) -> None:
    """Mean zero fraction over tokens per scale mode / guard for both starts, and each layer's for the unguarded
    learnable run (matplotlib, imported here: it is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(out)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True, sharey="row")  # one scale per row: starts compare
    colors = dict(zip(ZERO_LABELS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for col, start in enumerate(("scratch", "pretrained")):
        for (e, name), r in sorted(rows.items()):
            if e != "zeros" or not name.startswith(start + "-"):
                continue
            key = name[len(start) + 1:].rsplit("-s", 1)[0]
            ms = [m for m in read_metrics(Path(r["run"])) if "quant/zero_frac" in m]
            axes[0, col].plot([m["tokens"] for m in ms], [m["quant/zero_frac"] for m in ms], color=colors.get(key),
                              label=f"{ZERO_LABELS.get(key, key)}: ppl {r['student_ppl']:.1f}",
                              ls="--" if key == "learnable-clamp" else "-")
            if key == "learnable-none":
                layers = sorted(k for k in ms[-1] if k.startswith("quant/zero_frac/"))
                for k in layers:
                    short = k.split("/")[-1].replace("backbone.layers.", "L").replace(".mixer.", " ")
                    axes[1, col].plot([m["tokens"] for m in ms], [m[k] for m in ms], label=short,
                                      ls="-" if "in_proj" in k else "--")
        axes[0, col].set_title(f"from {'scratch (random init)' if start == 'scratch' else 'the pretrained teacher'}: "
                               "mean zero fraction")
        axes[1, col].set_title(f"from {start}: per layer, learnable scales, no guard")
        axes[1, col].set_xlabel("training tokens")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=7)
        axes[1, col].legend(fontsize=7, ncol=2)
    axes[0, 0].set_ylabel("zero fraction of ternary codes")
    axes[1, 0].set_ylabel("zero fraction of ternary codes")
    fig.suptitle("Zero-ratio monitor, bundled 3.8M Mamba-2 architecture, group 256, 100K tokens, seed 0 "
                 "(scripts/study_small.py zeros). Curves that coincide hide each other.", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- tables --------------------------------------------------------------------------------------------------------

def load_rows(out: Path) -> dict[tuple[str, str], dict]:
    rows: dict[tuple[str, str], dict] = {}
    p = out / "results.jsonl"
    for line in p.read_text().splitlines() if p.is_file() else []:
        r = json.loads(line)
        old = rows.get((r["experiment"], r["name"]))
        if old and r.get("wall_s") is None:       # a re-read keeps the first wall time
            r["wall_s"] = old.get("wall_s")
        rows[(r["experiment"], r["name"])] = r
    return rows


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan"))


def table(out: Path) -> str:
    rows = load_rows(out)
    lines = []
    seeds = [r for (e, _), r in sorted(rows.items()) if e == "seeds"]
    if seeds:
        lines += ["| seed | teacher ppl | student ppl | × teacher | val KL | post-hoc ppl | zero frac | wall |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in seeds:
            lines.append(f"| {r['seed']} | {r['teacher_ppl']:.2f} | {r['student_ppl']:.2f} | {r['ratio']:.3f} | "
                         f"{r['val_kl']:.3f} | {r['post_hoc_ppl']:.2f} | {r['zero_frac']:.3f} | {_wall(r)} |")
        for key in ("student_ppl", "ratio", "val_kl", "zero_frac"):
            m, sd = mean_sd([r[key] for r in seeds])
            lines.append(f"<!-- {key}: mean {m:.4f}, sd {sd:.4f}, min {min(r[key] for r in seeds):.4f}, "
                         f"max {max(r[key] for r in seeds):.4f} -->")
        lines.append("")
    zs = [r for (e, _), r in sorted(rows.items()) if e == "zeros"]
    if zs:
        lines += ["| zeros: run | zero frac | max layer | events | held-out ppl | × teacher | val loss | wall |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in zs:
            ratio = f"{r['ratio']:.3f}" if r.get("ratio") else "–"
            zmax = f"{r['zero_frac_max']:.3f}" if r.get("zero_frac_max") is not None else "–"
            lines.append(f"| {r['name']} | {r['zero_frac']:.3f} | {zmax} | {r.get('collapse_events')} | "
                         f"{r['student_ppl']:.2f} | {ratio} | {r.get('val_loss') or float('nan'):.3f} | {_wall(r)} |")
        lines.append("")
    for exp in [*sorted({e for e, _ in rows if e.startswith("scratch")}), "groups", "dfssm"]:
        rs = [r for (e, _), r in sorted(rows.items()) if e == exp]
        if not rs:
            continue
        lines += [(f"| {exp}: run | seed | student ppl | × teacher | val KL | bits / proj. weight | total MB | zero frac "
                  "| wall |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            bits = f"{r['bits_per_weight']:.3f}" if r.get("bits_per_weight") else "32"
            mb = f"{r['total_mb']:.2f}" if r.get("total_mb") else "–"
            zf = f"{r['zero_frac']:.3f}" if r.get("zero_frac") is not None else "–"
            ratio = f"{r['ratio']:.3f}" if r.get("ratio") else "–"
            kl = f"{r['val_kl']:.3f}" if r.get("val_kl") is not None else "–"
            lines.append(f"| {r['name']} | {r['seed']} | {r['student_ppl']:.2f} | {ratio} | {kl} | {bits} | {mb} | "
                         f"{zf} | {_wall(r)} |")
        lines.append("")
    return "\n".join(lines)


def plot_svg(out: Path, path: Path) -> None:
    """Student perplexity vs bits per projection weight (groups, DF-SSM, post-hoc RTN) as a plain SVG.

    Hand-written SVG: it was written before matplotlib (an optional dependency) was installed here."""
    rows = load_rows(out)
    runs: dict[tuple, list] = {}                      # g64, g64-s1, ... -> one point per setting, seed mean
    for (e, name), r in rows.items():
        if e in ("groups", "dfssm"):
            runs.setdefault((e, name.split("-s")[0]), []).append(r)
    label = {("groups", "grow"): "row"}
    pts = [((f"DF-SSM {n}" if e == "dfssm" else label.get((e, n), n)) + (f" ({len(rs)} seeds)" if len(rs) > 1 else ""),
            rs[0]["bits_per_weight"], mean_sd([r["student_ppl"] for r in rs])[0]) for (e, n), rs in runs.items()]
    seeds = [r for (e, _), r in rows.items() if e == "seeds"]
    if seeds:
        pts.append(("g256 (3 seeds)", seeds[0]["bits_per_weight"], mean_sd([r["student_ppl"] for r in seeds])[0]))
    teacher = seeds[0]["teacher_ppl"] if seeds else None
    W, H, L, B = 560, 340, 70, 50                      # canvas, left and bottom margins
    xs, ys = [p[1] for p in pts], [p[2] for p in pts] + ([teacher] if teacher else [])
    x0, x1, y0, y1 = min(xs) - 0.03, max(xs) + 0.05, min(ys) * 0.95, max(ys) * 1.05

    def X(v):
        return L + (v - x0) / (x1 - x0) * (W - L - 20)

    def Y(v):
        return H - B - (v - y0) / (y1 - y0) * (H - B - 20)

    el = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11"><rect width="{W}" height="{H}" fill="white"/>'),
          f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
          f'<line x1="{L}" y1="20" x2="{L}" y2="{H - B}" stroke="black"/>',
          f'<text x="{(W + L) / 2}" y="{H - 12}" text-anchor="middle">bits per projection weight</text>',
          (f'<text x="16" y="{H / 2}" transform="rotate(-90 16 {H / 2})" text-anchor="middle">held-out ppl '
           '(16,384 tokens)</text>')]
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        el.append(f'<text x="{X(xv):.0f}" y="{H - B + 15}" text-anchor="middle">{xv:.2f}</text>')
        el.append(f'<text x="{L - 5}" y="{Y(yv) + 4:.0f}" text-anchor="end">{yv:.0f}</text>')
    if teacher:
        el.append(f'<line x1="{L}" y1="{Y(teacher):.1f}" x2="{W - 20}" y2="{Y(teacher):.1f}" stroke="gray" '
                  f'stroke-dasharray="4 3"/><text x="{W - 22}" y="{Y(teacher) - 4:.1f}" text-anchor="end" '
                  f'fill="gray">teacher (fp32) {teacher:.1f}</text>')
    for i, (name, b, ppl) in enumerate(sorted(pts, key=lambda p: p[1])):
        color = "crimson" if name.startswith("DF") else "steelblue"
        dy = -6 if i % 2 else 14                       # alternate above/below: neighbours sit close together
        el.append(f'<circle cx="{X(b):.1f}" cy="{Y(ppl):.1f}" r="4" fill="{color}"/>'
                  f'<text x="{X(b) + 6:.1f}" y="{Y(ppl) + dy:.1f}">{name}: {ppl:.1f}</text>')
    el.append(f'<text x="{L + 5}" y="14">QAT + KD, 100K tokens, mean of the seeds noted (scripts/study_small.py)</text>'
              "</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(el) + "\n")


def _wall(r: dict) -> str:
    return f"{r['wall_s']:.0f} s" if r.get("wall_s") else "–"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python scripts/study_small.py seeds --out runs/study")
    p.add_argument("experiment", choices=["seeds", "scratch", "groups", "dfssm", "drift", "zeros", "table", "plot"])
    p.add_argument("--out", default="runs/study", help="study directory (default runs/study)")
    p.add_argument("--tokens", default="100K", help="training tokens per run (default 100K)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds (default 0 1 2)")
    p.add_argument("--fp32", action="store_true", help="scratch: also the unquantized model (seed: the first)")
    p.add_argument("--arch", default=None, help="scratch: train this model directory's architecture (its weights "
                   "unused; default the bundled teacher's), e.g. the 17.4M teacher on the GPU")
    p.add_argument("--tag", default="", help="scratch: results go to experiment scratch-TAG (default: scratch)")
    p.add_argument("--teacher-ppl", type=float, default=None,
                   help="scratch: the teacher's perplexity for the ratio (default: the seeds runs' teacher)")
    p.add_argument("--rank", type=int, default=21, help="dfssm: rank of the int8 correction (default 21: 2.04 "
                   "bits per projection weight, ternary group 256 is 2.06)")
    p.add_argument("--start", choices=["scratch", "pretrained", "both"], default="both",
                   help="zeros: from a random init, from the pretrained teacher, or both (default both)")
    p.add_argument("--only", nargs="+", default=None, choices=[n for n, _, _ in ZERO_GRID],
                   help="zeros: run only these settings (default: all)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.experiment == "seeds":
        for s in a.seeds:
            distill_run(out, "seeds", f"s{s}", s, a.tokens, ["--group-size", "256"])
    elif a.experiment == "scratch":
        tppl = a.teacher_ppl or next((r["teacher_ppl"] for (e, _), r in load_rows(out).items() if e == "seeds"), None)
        exp = "scratch" + (f"-{a.tag}" if a.tag else "")
        flags = f" --tokens {a.tokens}" + (f" --arch {a.arch} --tag {a.tag} --teacher-ppl {tppl}" if a.arch else "")
        for s in a.seeds:
            scratch_run(out, f"ternary-g256-s{s}", s, a.tokens, ternary=True, teacher_ppl=tppl, experiment=exp,
                        arch=a.arch, cmd=f"python scripts/study_small.py scratch{flags} --seeds {s}")
        if a.fp32:
            scratch_run(out, f"fp32-s{a.seeds[0]}", a.seeds[0], a.tokens, ternary=False, teacher_ppl=tppl,
                        experiment=exp, arch=a.arch,
                        cmd=f"python scripts/study_small.py scratch{flags} --seeds {a.seeds[0]} --fp32")
    elif a.experiment == "groups":
        # Seed 0 keeps its first names (g64, g128, grow) so the earlier runs are found again; other seeds get a suffix.
        for s in a.seeds:
            for g in ("64", "128", "row"):
                distill_run(out, "groups", f"g{g}" + (f"-s{s}" if s else ""), s, a.tokens, ["--group-size", g])
    elif a.experiment == "dfssm":
        # Seed 0 keeps its first name (r21) so the earlier runs are found again; other seeds get a suffix.
        for s in a.seeds:
            distill_run(out, "dfssm", f"r{a.rank}" + (f"-s{s}" if s else ""), s, a.tokens,
                        ["--method", "dfssm", "--rank", str(a.rank), "--group-size", "128"])
    elif a.experiment == "drift":
        # docs/evaluation.md's command, with the QAT student added and the weight-noise models left out.
        cmd = ["ssmquant", "drift", "--student", str(out / "seeds" / f"s{a.seeds[0]}" / "model"), "--no-weight-noise",
               "--max-len", "2048", "--n-seqs", "8", "--no-progress", "--no-plot", "--out", str(out / "drift")]
        t0 = time.time()
        subprocess.run(cmd, check=True)
        print(f"{shlex.join(cmd)}: {time.time() - t0:.0f} s")
    elif a.experiment == "zeros":
        tppl = next((r["teacher_ppl"] for (e, _), r in load_rows(out).items() if e == "seeds"), None)
        starts = ["scratch", "pretrained"] if a.start == "both" else [a.start]
        for s in a.seeds:
            zeros_runs(out, s, a.tokens, starts, a.only, tppl)
    elif a.experiment == "plot":
        plot_svg(out, Path("docs/img/study_bits.svg"))
        if any(e == "zeros" for e, _ in load_rows(out)):
            plot_zeros(out, Path("docs/img/zero_ratio_scratch.png"))
    print(table(out))


if __name__ == "__main__":
    sys.exit(main())
