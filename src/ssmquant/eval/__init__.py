"""Evaluation: perplexity, the offline 7-task zero-shot suites, an lm-evaluation-harness adapter, reports.

    >>> from ssmquant.eval import evaluate, format_table
    >>> res = evaluate(model, tok, tasks="mamba7", limit=100, teacher=teacher, out_dir="eval/")
    >>> print(format_table(res))

Submodules, in reading order: scoring (loglikelihood of context/continuation pairs, batched), perplexity,
tasks (prompt formats and data), zeroshot (per-task metrics), stats (standard errors, bootstrap), suite
(``evaluate``), report (table, JSON, chart), lmeval (the harness adapter; needs ``lm-eval``, imported on use).
"""

from __future__ import annotations

# Imported eagerly (torch and numpy only): the function ``perplexity`` must shadow the submodule of that name.
from .perplexity import perplexity
from .report import format_table, plot_results, write_report
from .scoring import encode_pair, score_pairs
from .stats import bootstrap_suite, mean_stderr
from .suite import EvalConfig, evaluate, run_eval
from .tasks import SUITES, TASKS, load_items
from .zeroshot import run_task

__all__ = ["evaluate", "EvalConfig", "run_eval", "perplexity", "format_table", "write_report", "plot_results",
           "run_task", "TASKS", "SUITES", "load_items", "bootstrap_suite", "mean_stderr", "score_pairs",
           "encode_pair", "run_lm_eval_cli", "SSMQuantLM"]


def __getattr__(name: str):
    if name in ("run_lm_eval_cli", "SSMQuantLM", "register_lm_eval"):
        from . import lmeval

        return getattr(lmeval, name)
    raise AttributeError(f"module 'ssmquant.eval' has no attribute {name!r}")
