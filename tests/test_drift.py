"""State drift (ssmquant.eval.drift): zero against itself, exact per-position states, noise injection."""

import copy

import pytest
import torch
from conftest import tiny_model

from ssmquant.eval.drift import (
    add_weight_noise_,
    position_buckets,
    posthoc_ternary,
    read_positions,
    state_drift,
    summarize_drift,
    ternary_error_rms,
)


def _ids(n=2, L=24, vocab=100, seed=0):
    return torch.randint(0, vocab, (n, L), generator=torch.Generator().manual_seed(seed))


def _perturbed(m, seed=1):
    p = copy.deepcopy(m)
    add_weight_noise_(p, 1.0, group_size=64, seed=seed)
    return p


@torch.no_grad()
def _stepped_state_errors(ref, model, ids):
    """Direct computation: decode one token at a time (the ssd_step recurrence), read every state after every token.

    Returns err2, ref2: (n_layer, L) summed over the batch."""
    n, L = ids.shape
    caches = [m.allocate_cache(n) for m in (ref, model)]
    err2 = torch.zeros(ref.config.n_layer, L, dtype=torch.float64)
    ref2 = torch.zeros_like(err2)
    for t in range(L):
        for m, c in zip((ref, model), caches):
            m.backbone(ids[:, t:t + 1], c)
        for i in range(ref.config.n_layer):
            s_ref = caches[0].ssm_states[i].double()
            err2[i, t] = (caches[1].ssm_states[i].double() - s_ref).pow(2).sum()
            ref2[i, t] = s_ref.pow(2).sum()
    return err2, ref2


def test_buckets_and_positions():
    assert position_buckets(2048) == [(1, 16), (17, 64), (65, 256), (257, 1024), (1025, 2048)]
    assert position_buckets(40) == [(1, 16), (17, 40)]
    pos = read_positions(position_buckets(2048), 64)
    assert pos[:16] == list(range(1, 17)) and 2048 in pos and 1024 in pos and len(pos) == 16 + 48 + 3 * 64
    assert read_positions([(1, 16), (17, 40)], 0) == list(range(1, 41))


def test_drift_against_itself_is_exactly_zero():
    m = tiny_model()
    raw = state_drift(m, {"self": m, "copy": copy.deepcopy(m)}, _ids(), positions=[1, 5, 17, 24])
    for a in raw["models"].values():
        assert a["state_err2"].abs().max() == 0 and a["block_err2"].abs().max() == 0
        assert (a["state_ref2"] > 0).all() and (a["block_ref2"] > 0).all()


@pytest.fixture(scope="module")
def stepped():
    m = tiny_model()
    p = _perturbed(m)
    ids = _ids()
    return m, p, ids, _stepped_state_errors(m, p, ids)


@pytest.mark.parametrize("positions", [None, [1, 2, 3, 7, 16, 17, 21, 24]])
def test_state_errors_equal_step_by_step_decoding(positions, stepped):
    """Segmented prefill through the cache (chunked scan) reads the same states as token-by-token decoding."""
    m, p, ids, (err2, ref2) = stepped
    raw = state_drift(m, {"q": p}, ids, positions=positions)["models"]["q"]
    idx = torch.tensor(positions or list(range(1, 25))) - 1
    got = (raw["state_err2"] / raw["state_ref2"]).sqrt()
    want = (err2[:, idx] / ref2[:, idx]).sqrt()
    assert (got > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7,
                               msg=lambda s: f"per-position state error, prefill vs stepping: {s}")
    torch.testing.assert_close(raw["state_ref2"], ref2[:, idx], rtol=1e-5, atol=0)


def test_block_errors_match_full_forward():
    m = tiny_model()
    p = _perturbed(m)
    ids = _ids()
    raw = state_drift(m, {"q": p}, ids, positions=[3, 20, 24])["models"]["q"]
    hs_m, hs_p = [], []
    with torch.no_grad():
        m.backbone(ids, None, hs_m)
        p.backbone(ids, None, hs_p)
    for i in range(m.config.n_layer):
        want = (hs_p[i + 1] - hs_m[i + 1]).double().pow(2).sum(-1).sum(0)
        torch.testing.assert_close(raw["block_err2"][i], want, rtol=1e-4, atol=1e-9)


def test_noise_scale_zero_gives_zero():
    m = tiny_model()
    q = copy.deepcopy(m)
    stds = add_weight_noise_(q, 0.0, group_size=64)
    assert set(stds) == {f"backbone.layers.{i}.mixer.{w}" for i in range(2) for w in ("in_proj", "out_proj")}
    raw = state_drift(m, {"w0": q, "s0": m}, _ids(), positions=[1, 10, 24], state_noise={"s0": 0.0},
                      state_noise_every=4)
    for a in raw["models"].values():
        assert a["state_err2"].abs().max() == 0 and a["block_err2"].abs().max() == 0


def test_noise_is_quantization_sized_and_drifts():
    m = tiny_model()
    w = m.backbone.layers[0].mixer.in_proj.weight.detach().clone()
    rms = ternary_error_rms(w, 64)
    assert 0.1 * w.pow(2).mean().sqrt() < rms < w.pow(2).mean().sqrt()
    q = copy.deepcopy(m)
    stds = add_weight_noise_(q, 2.0, group_size=64, seed=3)
    added = q.backbone.layers[0].mixer.in_proj.weight.detach() - w
    assert stds["backbone.layers.0.mixer.in_proj"] == pytest.approx(2 * rms)
    assert added.pow(2).mean().sqrt() == pytest.approx(2 * rms, rel=0.05)
    raw = state_drift(m, {"w": q, "s": m, "ptq": posthoc_ternary(m, 64)}, _ids(), state_noise={"s": 0.05},
                      state_noise_every=4)
    res = summarize_drift(raw, position_buckets(24))
    for name in ("w", "ptq"):
        assert all(v > 0 for row in res[name]["state"]["per_bucket"] for v in row)
    s = res["s"]["state"]["per_position"]
    # State noise enters after position 4 is read: nothing before, something after.
    assert all(row[k] == 0 for row in s for k in range(4)) and all(row[5] > 0 for row in s)
