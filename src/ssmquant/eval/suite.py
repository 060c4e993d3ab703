"""``evaluate``: a model (and optionally its teacher) on a zero-shot suite and/or perplexity, with uncertainty.

The steps: load each task's items once (so student and teacher see identical items), score them with each model,
aggregate per-task metrics with standard errors, bootstrap the suite average of the headline metrics (and the paired
student - teacher difference), then write results.json / items.json / results.txt / results.png when ``out_dir`` is
given. ``EvalConfig`` + ``run_eval`` are the command-line entry: paths in, the same results out.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .perplexity import perplexity
from .report import format_table, write_report
from .stats import bootstrap_suite
from .tasks import load_items, resolve_tasks
from .zeroshot import run_task


def evaluate(
    model,
    tokenizer,
    *,
    tasks: str | list[str] = "mamba7",
    limit: int | None = None,
    teacher=None,
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    max_length: int = 2048,
    splits: dict[str, str] | None = None,
    data_dir: str | Path | None = None,
    ppl_source: str | Path = "wikitext2",
    ppl_context: int = 2048,
    ppl_stride: int = 512,
    n_boot: int = 1000,
    seed: int = 0,
    device=None,
    plot: bool = True,
) -> dict:
    """Evaluate ``model`` (and ``teacher``, same tokenizer) on zero-shot tasks and/or perplexity.

    Args:
        tasks: "mamba7", "bimamba7", "ppl", task names, or a list/comma-separated mix of these.
        limit: first N documents of each task, in lm-eval's order (lm-eval's ``--limit``).
        teacher: a reference model; adds its numbers and paired differences (student - teacher).
        out_dir: where to write results.json, items.json, results.txt and results.png.
        splits: per-task split overrides, e.g. ``{"arc_easy": "validation"}``.
        data_dir: directory of ``<task>.jsonl`` files that take precedence over packaged/Hub data.
        ppl_source: text file, text, or dataset name (``wikitext2``) for the "ppl" task.
    Returns the results dict (see docs/evaluation.md); ``format_table(results)`` renders it.
    """
    names = resolve_tasks(tasks)
    zs = [t for t in names if t != "ppl"]
    splits = splits or {}
    t0 = time.time()
    models = {"student": model, **({"teacher": teacher} if teacher is not None else {})}
    results: dict = {
        "tasks": zs,
        "config": {"tasks": tasks if isinstance(tasks, str) else list(tasks), "limit": limit,
                   "batch_size": batch_size, "max_length": max_length, "splits": splits,
                   "data_dir": str(data_dir) if data_dir else None, "n_boot": n_boot, "seed": seed},
        "student": {"tasks": {}, "perplexity": None},
        "teacher": {"tasks": {}, "perplexity": None} if teacher is not None else None,
    }
    for t in zs:
        items, source = load_items(t, split=splits.get(t), data_dir=data_dir, limit=limit)
        for who, m in models.items():
            r = run_task(m, tokenizer, t, items=items, split=splits.get(t), batch_size=batch_size,
                         max_length=max_length, device=device, progress=progress)
            r["source"] = source
            results[who]["tasks"][t] = r
            if progress:
                print(f"[eval] {who:<7} {t:<15} n={r['n']:<6} " + "  ".join(
                    f"{k}={v['value']:.4f}±{v['stderr']:.4f}" for k, v in r["metrics"].items()), flush=True)
    if "ppl" in names:
        for who, m in models.items():
            p = perplexity(m, tokenizer, ppl_source, context=ppl_context, stride=ppl_stride,
                           batch_size=max(1, batch_size // 4), device=device)
            p["source"] = str(ppl_source)[:200]
            results[who]["perplexity"] = p
    if zs:
        head = {w: {t: results[w]["tasks"][t]["items"][results[w]["tasks"][t]["headline"]] for t in zs}
                for w in models}
        suite = bootstrap_suite(head["student"], head.get("teacher"), n_boot=n_boot, seed=seed)
        suite["chance"] = float(np.mean([results["student"]["tasks"][t]["chance"] for t in zs]))
        suite["metric"] = {t: results["student"]["tasks"][t]["headline"] for t in zs}
        results["suite"] = suite
        if teacher is not None:
            results["diff"] = {"tasks": {t: _task_diffs(results, t, n_boot, seed) for t in zs}}
    results["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        results["files"] = {k: str(v) for k, v in write_report(results, out_dir, plot=plot).items()}
    return results


def _task_diffs(results: dict, task: str, n_boot: int, seed: int) -> dict:
    """Paired-bootstrap interval of student - teacher for each 0/1 metric of one task."""
    s, t = results["student"]["tasks"][task]["items"], results["teacher"]["tasks"][task]["items"]
    out = {}
    for m in results["student"]["tasks"][task]["metrics"]:
        if m == "perplexity":
            continue
        out[m] = bootstrap_suite({task: s[m]}, {task: t[m]}, n_boot=n_boot, seed=seed)["diff"]
    return out


@dataclass
class EvalConfig:
    """``ssmquant eval``: what to evaluate, on what, and where results go."""

    model: str  # model directory or Hub id (ssmquant.load_model)
    tasks: str = "mamba7"  # mamba7 | bimamba7 | ppl | comma-separated task names
    teacher: str | None = None  # reference model for differences
    tokenizer: str | None = None  # tokenizer file/dir; default: the model's
    limit: int | None = None
    out_dir: str | None = None
    batch_size: int = 16
    max_length: int = 2048
    data_dir: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    ppl_source: str = "wikitext2"
    ppl_context: int = 2048
    ppl_stride: int = 512
    n_boot: int = 1000
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        assert self.batch_size >= 1, "batch_size must be >= 1"
        assert 1 <= self.ppl_stride <= self.ppl_context, "need 1 <= ppl_stride <= ppl_context"
        assert self.limit is None or self.limit >= 1, "limit must be >= 1 (or None for all items)"


def run_eval(cfg: EvalConfig) -> dict:
    """Load the model(s) named in ``cfg``, evaluate, write ``eval_config.json`` beside the results, print the table."""
    import torch

    import ssmquant

    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = ssmquant.load_model(cfg.model).to(device).eval()
    tok = ssmquant.load_tokenizer(cfg.tokenizer or cfg.model)
    teacher = ssmquant.load_model(cfg.teacher).to(device).eval() if cfg.teacher else None
    results = evaluate(model, tok, tasks=cfg.tasks, limit=cfg.limit, teacher=teacher, out_dir=cfg.out_dir,
                       batch_size=cfg.batch_size, progress=cfg.progress, max_length=cfg.max_length,
                       splits=cfg.splits, data_dir=cfg.data_dir, ppl_source=cfg.ppl_source,
                       ppl_context=cfg.ppl_context, ppl_stride=cfg.ppl_stride, n_boot=cfg.n_boot, seed=cfg.seed,
                       device=device)
    if cfg.out_dir:
        (Path(cfg.out_dir) / "eval_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    print(format_table(results))
    return results
