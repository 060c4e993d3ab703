"""Standard errors and bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssmquant.eval.stats import bootstrap_suite, mean_stderr, perplexity_stderr


def test_mean_stderr_is_lm_eval_formula_for_accuracy():
    scores = [1.0] * 30 + [0.0] * 70
    p, n = 0.3, 100
    assert abs(mean_stderr(scores) - math.sqrt(p * (1 - p) / (n - 1))) < 1e-12
    assert math.isnan(mean_stderr([1.0]))


def test_perplexity_stderr_delta_method():
    ll = np.log([0.5, 0.25, 0.125, 0.5])
    ppl = math.exp(-ll.mean())
    assert abs(perplexity_stderr(ll) - ppl * ll.std(ddof=1) / 2) < 1e-12


def test_bootstrap_interval_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 2000):
        a = (rng.random(n) < 0.6).astype(float)
        b = (rng.random(n) < 0.3).astype(float)
        res = bootstrap_suite({"a": a, "b": b}, n_boot=500, seed=0)
        lo, hi = res["ci"]
        assert res["mean"] == pytest.approx((a.mean() + b.mean()) / 2)
        assert lo < res["mean"] < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(10) in theory


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    t = (rng.random(500) < 0.5).astype(float)
    same = bootstrap_suite({"x": t}, {"x": t}, n_boot=200)
    assert same["diff"]["mean"] == 0 and same["diff"]["ci"] == (0.0, 0.0)  # identical models: no uncertainty
    s = t.copy()
    s[:40] = 1.0 - s[:40]  # student flips 40 answers of the teacher's
    res = bootstrap_suite({"x": s}, {"x": t}, n_boot=1000)
    lo, hi = res["diff"]["ci"]
    assert lo <= res["diff"]["mean"] <= hi
    # Paired: the interval reflects only the 40 disagreements, so it is much narrower than the unpaired one.
    unpaired = np.sqrt(s.var() / 500 + t.var() / 500) * 3.92
    assert hi - lo < unpaired / 2
    with pytest.raises(ValueError):
        bootstrap_suite({"x": s}, {"x": t[:10]})
