"""Uncertainty of evaluation numbers: standard errors per task and bootstrap intervals for suite averages.

* ``mean_stderr`` is lm-eval's ``mean_stderr``: sample standard deviation (ddof=1) over sqrt(n); for 0/1 scores it
  is sqrt(p(1-p)/(n-1)).
* ``perplexity_stderr`` uses the delta method, ppl * stderr(mean loglikelihood). lm-eval instead bootstraps the
  perplexity aggregate; the two agree to within bootstrap noise on thousands of items.
* ``bootstrap_suite`` resamples items *within* each task (tasks stay fixed, they are the suite's definition) and
  reports the percentile 95% interval of the average over tasks. With a teacher, the same resampled item indices
  are applied to both models (a paired bootstrap), so the interval of student - teacher reflects only how the
  two models disagree on items, not how hard the sampled items are.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def mean_stderr(scores: Sequence[float]) -> float:
    n = len(scores)
    if n < 2:
        return float("nan")
    return float(np.std(np.asarray(scores, dtype=np.float64), ddof=1) / math.sqrt(n))


def perplexity_stderr(loglikelihoods: Sequence[float]) -> float:
    ll = np.asarray(loglikelihoods, dtype=np.float64)
    return float(math.exp(-ll.mean()) * mean_stderr(ll)) if len(ll) > 1 else float("nan")


def _resampled_means(scores: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 200) -> np.ndarray:
    """(n_boot,) means of ``scores`` (n,) or (k, n) resampled with replacement; paired across the k rows."""
    scores = np.atleast_2d(scores)
    n = scores.shape[1]
    out = np.empty((scores.shape[0], n_boot))
    for s in range(0, n_boot, chunk):  # chunks bound memory at chunk * n indices
        m = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(m, n))
        out[:, s:s + m] = scores[:, idx].mean(axis=-1)
    return out


def bootstrap_suite(
    student: Mapping[str, Sequence[float]],
    teacher: Mapping[str, Sequence[float]] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Bootstrap intervals for the average over tasks of per-item scores.

    Args:
        student: task -> per-item scores (e.g. 0/1 of the task's headline metric).
        teacher: same tasks and items for the reference model, or None.
    Returns ``{"mean", "ci"}`` for the student, plus ``"teacher"`` and ``"diff"`` (student - teacher, paired) dicts
    of the same shape when a teacher is given; ``ci`` is a (low, high) pair.
    """
    rng = np.random.default_rng(seed)
    tasks = list(student)
    if teacher is not None and (set(teacher) != set(tasks)
                                or any(len(teacher[t]) != len(student[t]) for t in tasks)):
        raise ValueError("paired bootstrap needs the same tasks and item counts for student and teacher")
    boots = []
    for t in tasks:  # per task: (1 or 2, n_boot) resampled means
        rows = [student[t]] if teacher is None else [student[t], teacher[t]]
        boots.append(_resampled_means(np.asarray(rows, dtype=np.float64), n_boot, rng))
    avg = np.mean(boots, axis=0)  # (1 or 2, n_boot): average over tasks of each resample
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def summary(point: float, samples: np.ndarray) -> dict:
        return {"mean": point, "ci": (float(np.percentile(samples, lo)), float(np.percentile(samples, hi)))}

    s_mean = float(np.mean([np.mean(student[t]) for t in tasks]))
    out = summary(s_mean, avg[0])
    out["n_boot"] = n_boot
    if teacher is not None:
        t_mean = float(np.mean([np.mean(teacher[t]) for t in tasks]))
        out["teacher"] = summary(t_mean, avg[1])
        out["diff"] = summary(s_mean - t_mean, avg[0] - avg[1])
    return out
