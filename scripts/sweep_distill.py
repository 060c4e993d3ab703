#!/usr/bin/env python3
"""Distillation sweeps on the bundled teacher: token budget, scale modes, learning rate, collapse policies.

Each run is ``ssmquant distill`` on the bundled teacher and sample text (the embedded default's data), through the
Python API so that many small runs share one process; the student is evaluated (teacher / student / post-hoc
held-out perplexity on the whole bundled held-out sample) and not saved. One JSON line per run goes to
``OUT/results.jsonl``; each run's ``metrics.jsonl`` and plots stay in ``OUT/runs/NAME``.

    python scripts/sweep_distill.py --out runs/sweep --grid default      # see GRIDS below
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ssmquant.io.bundled import SAMPLE_TRAIN, TEACHER_DIR  # noqa: E402
from ssmquant.quant import MonitorConfig  # noqa: E402
from ssmquant.train.config import TrainConfig  # noqa: E402
from ssmquant.train.distill import DistillConfig, DistillTask  # noqa: E402
from ssmquant.train.trainer import train  # noqa: E402
from ssmquant.io.tokenizer import load_tokenizer  # noqa: E402

BASE_TRAIN = dict(seq_len=256, micro_batch=8, grad_accum=1, lr=2e-3, warmup_frac=0.05, eval_sequences=8,
                  log_every=5, seed=0)
BASE_DISTILL = dict(group_size=256, scale_mode="learnable", scale_lr=None, policies=("warn", "clamp"))


def _run(name, tokens, **over):
    t = {**BASE_TRAIN, **{k: v for k, v in over.items() if k in BASE_TRAIN}}
    d = {**BASE_DISTILL, **{k: v for k, v in over.items() if k in BASE_DISTILL}}
    return name, tokens, t, d


GRIDS = {
    "smoke": [_run("smoke", 4_096, seq_len=64, micro_batch=2)],
    "default": [
        # 1. token budget (the embedded default's settings)
        *[_run(f"tokens_{t // 1000}k", t) for t in (64_000, 128_000, 256_000, 512_000, 1_024_000)],
        # 2. scale modes and scale learning rates at 256k tokens
        _run("mode_fixed", 256_000, scale_mode="fixed"),
        _run("mode_ema", 256_000, scale_mode="ema"),
        _run("mode_learnable_slr_0.1x", 256_000, scale_lr=2e-4),
        _run("mode_learnable_slr_0.01x", 256_000, scale_lr=2e-5),
        # 3. learning rate at 256k tokens
        *[_run(f"lr_{lr:g}", 256_000, lr=lr) for lr in (5e-4, 1e-3, 5e-3)],
        # 4. collapse guards with learnable scales at the weights' lr (the setting that collapses)
        _run("policy_none", 256_000, policies=("warn",)),
        _run("policy_reinit", 256_000, policies=("warn", "reinit")),
        _run("policy_regularize", 256_000, policies=("warn", "regularize")),
        _run("policy_freeze", 256_000, policies=("warn", "freeze")),
    ],
}


class SweepTask(DistillTask):
    def save_final(self, model, directory):  # sweeps keep metrics and the report, not the weights
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--grid", default="default", choices=sorted(GRIDS))
    p.add_argument("--only", nargs="*", default=None, help="run only these names")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(TEACHER_DIR)
    for name, tokens, t, d in GRIDS[args.grid]:
        if args.only and name not in args.only:
            continue
        tcfg = TrainConfig(out=str(out / "runs" / name), data=[str(SAMPLE_TRAIN)], tokens=tokens, overwrite=True,
                           progress=False, cache_dir=str(out / "cache"), **t)
        steps = tcfg.total_steps
        monitor = MonitorConfig(every_n_steps=max(1, steps // 50), max_rise_per_kstep=0.2 * 1000 / steps,
                                policies=tuple(d["policies"]), freeze_steps=steps // 5)
        dcfg = DistillConfig(teacher=str(TEACHER_DIR), group_size=d["group_size"], scale_mode=d["scale_mode"],
                             scale_lr=d["scale_lr"], monitor=monitor, report_tokens=0)
        t0 = time.time()
        s = train(SweepTask(dcfg, tok), tcfg)
        rec = {"name": name, "tokens": tokens, **t, **{k: (list(v) if isinstance(v, tuple) else v)
                                                       for k, v in d.items()},
               "wall_s": round(time.time() - t0, 1),
               **{k: s.get(k) for k in ("teacher_ppl", "student_ppl", "post_hoc_ppl", "zero_frac",
                                        "post_hoc_zero_frac", "collapse_events", "val_kl", "val_ppl")}}
        print(json.dumps(rec), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
