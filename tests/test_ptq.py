"""Post-hoc baselines on cases with known answers, and ``ssmquant ptq`` end to end on a tiny saved model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from ssmquant.ptq.gptq import gptq_ternary
from ssmquant.ptq.hggsq import hessian_loss, hggsq_ternary
from ssmquant.ptq.lrec import LowRankCorrectedLinear, lrec_factors
from ssmquant.ptq.rounding import (
    grid_search_ternary,
    group_errors,
    js_shrink_ternary,
    js_shrinkage_factor,
    rtn_ternary,
)
from ssmquant.quant.binary_lowrank import svd_factors
from ssmquant.quant.ternary import dequantize_ternary


def _w(r=48, c=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Heavy-ish tails and per-row scale differences, like trained projections.
    return torch.randn(r, c, generator=g) * (0.5 + torch.rand(r, 1, generator=g)) * 0.05


def test_ptq_help_has_example():
    import argparse

    from ssmquant.cli import ptq as ptq_cli

    parser = argparse.ArgumentParser()
    ptq_cli.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["ptq"]
    assert "example" in sub.format_help()


def _diff(a, b):
    d = (a.float() - b.float()).abs()
    return f"max diff {d.max():.3e}, mean {d.mean():.3e}"


def test_rtn_is_post_hoc_ternary():
    from ssmquant.quant import QuantConfig
    from ssmquant.train.distill import post_hoc_ternary

    m = tiny_model()
    base = post_hoc_ternary(m, QuantConfig(group_size=32))
    mod = base.backbone.layers[0].mixer.in_proj
    codes, scale = rtn_ternary(m.backbone.layers[0].mixer.in_proj.weight, 32)
    assert torch.equal(codes, mod.codes) and torch.equal(scale, mod.scale)


def test_grid_search_never_worse_than_absmean_per_group():
    w = _w()
    rc, rs = rtn_ternary(w, 32)
    gc, gs = grid_search_ternary(w, 32)
    e_rtn, e_grid = group_errors(w, rc, rs, 32), group_errors(w, gc, gs, 32)
    assert bool((e_grid <= e_rtn).all()), f"worse in {(e_grid > e_rtn).sum()} groups"
    assert float(e_grid.sum()) < float(e_rtn.sum())  # and it helps somewhere
    # The exact optimum over a grid containing only 1.0 is absmean itself.
    c1, s1 = grid_search_ternary(w, 32, grid=[1.0])
    assert torch.equal(c1, rc) and torch.equal(s1, rs)


def test_js_shrink_factor_zero_is_identity_and_one_is_layer_mean():
    w = _w()
    rc, rs = rtn_ternary(w, 32)
    c0, s0 = js_shrink_ternary(w, 32, factor=0.0)
    assert torch.equal(c0, rc) and torch.equal(s0, rs)
    _, s1 = js_shrink_ternary(w, 32, factor=1.0)
    assert torch.unique(s1).numel() == 1
    _, s1r = js_shrink_ternary(w, 32, factor=1.0, target="row")
    assert all(torch.unique(row).numel() == 1 for row in s1r)


def test_js_factor_is_data_driven():
    g = torch.Generator().manual_seed(1)
    # Same distribution in every group: the spread of group absmeans is pure noise -> shrink fully.
    iid = torch.randn(64, 256, generator=g)
    assert float(js_shrinkage_factor(iid, 32)) > 0.5
    # Groups with very different true scales: little shrinkage.
    spread = iid * torch.logspace(-2, 0, 8).repeat_interleave(32)[None, :]
    assert float(js_shrinkage_factor(spread, 32)) < 0.05


@pytest.mark.parametrize("factor_dtype", ["fp16", "int8"])
def test_lrec_exact_low_rank_error_recovered(factor_dtype):
    w = _w(40, 64)
    w_q = dequantize_ternary(*rtn_ternary(w, 32), 32)
    # Full rank recovers W: exactly (fp32 rounding) before storage, to the storage precision after it.
    u, v = svd_factors(w - w_q, 40)
    assert torch.allclose(w_q + u @ v, w, atol=1e-6), _diff(w_q + u @ v, w)
    u, v = lrec_factors(w, w_q, rank=40, factor_dtype=factor_dtype)
    tol = 2e-4 if factor_dtype == "fp16" else 3e-3  # fp16 factors vs int8 per-row factors
    assert torch.allclose(w_q + u @ v, w, atol=tol), _diff(w_q + u @ v, w)
    # A rank-3 error is corrected exactly by rank 3 (and not by rank 2).
    g = torch.Generator().manual_seed(3)
    e = torch.randn(40, 3, generator=g) @ torch.randn(3, 64, generator=g) * 0.01
    u, v = lrec_factors(w_q + e, w_q, rank=3, factor_dtype=factor_dtype)
    rel = float((u @ v - e).norm() / e.norm())
    assert rel < (1e-3 if factor_dtype == "fp16" else 2e-2), rel
    u2, v2 = lrec_factors(w_q + e, w_q, rank=2, factor_dtype="fp16")
    assert float((u2 @ v2 - e).norm() / e.norm()) > 0.05
    # The module computes Q(W) x + U (V x) = the folded weight's output.
    mod = LowRankCorrectedLinear(w_q, u, v)
    x = torch.randn(5, 64, generator=g)
    assert torch.allclose(mod(x), x @ mod.folded_weight().T, atol=1e-5), _diff(mod(x), x @ mod.folded_weight().T)


def test_gptq_identity_hessian_is_rtn():
    w = _w(32, 256)
    for H in (torch.eye(256), 7.0 * torch.eye(256, dtype=torch.float64)):
        codes, scale = gptq_ternary(w, H, 64, block_size=128)
        rc, rs = rtn_ternary(w, 64)
        assert torch.equal(scale, rs) and torch.equal(codes, rc), f"{(codes != rc).sum()} codes differ"


def test_gptq_beats_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(4)
    c = 128
    mix = torch.randn(c, c, generator=g) * 0.3 + torch.eye(c)
    x = torch.randn(2048, 16, generator=g) @ torch.randn(16, c, generator=g) + 0.1 * torch.randn(2048, c, generator=g) @ mix
    w = _w(32, c, seed=5)
    H = (x.T @ x).double()
    codes, scale = gptq_ternary(w, H, 32)
    rc, rs = rtn_ternary(w, 32)
    out = lambda wq: float((x @ w.T - x @ wq.T).norm())
    e_gptq, e_rtn = out(dequantize_ternary(codes, scale, 32)), out(dequantize_ternary(rc, rs, 32))
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_hggsq_identity_hessian_is_rtn_and_correlated_is_better():
    w = _w(16, 64)
    rc, rs = rtn_ternary(w, 32)
    # H = I: round-to-nearest is the exact optimum; learning can only tie or lose (barely), the guard keeps RTN.
    codes, scale, info = hggsq_ternary(w, torch.eye(64), 32, steps=100, guard=False)
    assert info["rtn_loss"] <= info["learned_loss"] < 1.01 * info["rtn_loss"], info
    assert (codes != rc).float().mean() < 0.05
    codes, scale, info = hggsq_ternary(w, torch.eye(64), 32, steps=100, guard=True)
    assert torch.equal(scale, rs) and torch.equal(codes, rc), f"{(codes != rc).sum()} codes differ"
    g = torch.Generator().manual_seed(6)
    x = torch.randn(512, 8, generator=g) @ torch.randn(8, 64, generator=g) + 0.05 * torch.randn(512, 64, generator=g)
    H = (x.T @ x).double()
    codes, scale, info = hggsq_ternary(w, H, 32, steps=200, guard=False)
    assert info["learned_loss"] < info["rtn_loss"], info
    assert abs(float(hessian_loss(w, dequantize_ternary(codes, scale, 32), H)) - info["learned_loss"]) < 1e-9


@pytest.mark.parametrize("method", ["rtn", "rtn-search", "js-shrink", "lrec", "gptq", "hg-gsq"])
def test_ptq_cli_end_to_end(tmp_path, tiny_tokenizer, method):
    import argparse

    import ssmquant
    from ssmquant.cli import ptq as ptq_cli
    from ssmquant.io.checkpoints import save_model

    src = tmp_path / "tiny"
    model = tiny_model(vocab_size=300)
    save_model(model, src, tokenizer=tiny_tokenizer)
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. State space models scan sequences. " * 40)
    out = tmp_path / method
    args = ["ptq", str(src), "--method", method, "--out", str(out), "--group-size", "32", "--rank", "4",
            "--calib-data", str(calib), "--calib-seqs", "8", "--calib-len", "32", "--gsq-steps", "20"]
    parser = argparse.ArgumentParser()
    ptq_cli.register(parser.add_subparsers())
    parsed = parser.parse_args(args)
    parsed.func(parsed)
    loaded = ssmquant.load_model(out)
    ids = torch.tensor([tiny_tokenizer.encode("The quick brown fox scans sequences.")])
    with torch.no_grad():
        logits, ref = loaded(ids), model(ids)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, ref)  # it is quantized
    rep = json.loads((out / "ptq_report.json").read_text())
    assert rep["method"] == method and len(rep["modules"]) == 4
    cfg = json.loads((out / "config.json").read_text())
    assert (out / "ssmquant_ptq.json").exists() == (method == "lrec")
    assert ("quantization_config" in cfg) == (method != "lrec")


def test_qep_target_recovers_the_full_precision_output():
    from ssmquant.ptq.gptq import qep_target

    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 32, generator=g, dtype=torch.float64)
    x_hat = x @ (torch.eye(32, dtype=torch.float64) + 0.1 * torch.randn(32, 32, generator=g, dtype=torch.float64))
    w = _w(8, 32)
    H, C = x_hat.T @ x_hat, (x - x_hat).T @ x_hat
    assert torch.equal(qep_target(w, H, C, alpha=0.0), w)
    w_star = qep_target(w, H, C, alpha=1.0, damp=0.0).double()
    err = float((x @ w.double().T - x_hat @ w_star.T).norm() / (x @ w.double().T).norm())
    assert err < 1e-5, err
