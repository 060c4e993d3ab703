"""Prefill of a packed ternary model (``kernels/prefill.py``): the weight decode kernel against ``dequant_ref``, each
of FastLinear's three paths against ``ternary_linear_ref``, and the prefilled model's logits and cache states
against the model's own PyTorch forward with a cache."""

import pytest
import torch
from kernels_util import DEVICE, rel_err

from ssmquant.kernels.layout import dequant_ref, pack_gemv, ternary_linear_ref


def _ternary(N, K, G, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (N, K), generator=g).to(torch.int8)
    scale = (torch.rand(N, K // G, generator=g) * 0.1 + 0.01).half()
    return pack_gemv(codes.to(device), scale.to(device), G)


@pytest.mark.parametrize("N,K,G", [(40, 64, 32), (33, 256, 128), (8, 512, 256)])
def test_dequant_is_exact(N, K, G):
    """Row tails, pack blocks of 32 / 128 / 256 inputs; code * fp16 scale is exact in fp16, so equality."""
    from ssmquant.kernels.triton.dequant import dequant_ternary

    w = _ternary(N, K, G, seed=N)
    out = dequant_ternary(w)
    assert out.dtype == torch.float16 and out.shape == (N, K)
    assert torch.equal(out.float(), dequant_ref(w)), f"max diff {(out.float() - dequant_ref(w)).abs().max():.3e}"
    # Into a larger scratch buffer poisoned with NaN: every element written, the rest untouched.
    buf = torch.full((N * K + 7,), float("nan"), dtype=torch.float16, device=DEVICE)
    out2 = dequant_ternary(w, buf)
    assert torch.equal(out2.float(), dequant_ref(w)) and torch.isnan(buf[N * K:]).all()


@pytest.mark.parametrize("rows", [3, 20, 40])
def test_fast_linear_paths_match_reference(rows, monkeypatch):
    """3 rows: GEMV; 20: Triton ternary product; 40 (>= DEQUANT_MIN_ROWS here): decoded weight + F.linear."""
    from ssmquant.kernels import prefill

    monkeypatch.setattr(prefill, "DEQUANT_MIN_ROWS", 32)
    w = _ternary(48, 128, 64, seed=rows)
    lin = prefill.FastLinear(w)
    x = torch.randn(1, rows, 128, device=DEVICE).half()
    out = lin(x)
    ref = ternary_linear_ref(x, w)
    assert out.shape == (1, rows, 48) and out.dtype == torch.float16
    assert rel_err(out, ref) < 2e-3, f"rel err {rel_err(out, ref):.2e}"


def _compare_prefill(model, batch, seqlen, split, tol, device):
    """prefill_model(model) against model itself, both with a cache: logits of a prompt and of its continuation,
    and every layer's conv and SSM state after each."""
    from ssmquant.kernels.prefill import prefill_model

    fast = prefill_model(model)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(0)).to(device)
    caches = [m.allocate_cache(batch) for m in (model, fast)]
    with torch.no_grad():
        for seg in (ids[:, :split], ids[:, split:]):
            ref, out = (m(seg, c) for m, c in zip((model, fast), caches))
            assert rel_err(out, ref) < tol, f"logits ({seg.shape[1]} tokens): rel err {rel_err(out, ref):.2e}"
            for name in ("conv_states", "ssm_states"):
                for i, (a, r) in enumerate(zip(getattr(caches[1], name), getattr(caches[0], name))):
                    assert rel_err(a, r) < tol, f"{name}[{i}]: rel err {rel_err(a, r):.2e}"
    assert caches[1].seqlen_offset == seqlen


@pytest.mark.parametrize("split", [20, 6])
def test_prefill_model_equals_model_forward(split, monkeypatch):
    """A tiny packed model: the prompt of 2 x split rows and its continuation take different paths (GEMV, Triton
    product, decoded weight + F.linear with the threshold lowered to 32 rows)."""
    from conftest import tiny_model

    from ssmquant.bench.models import to_ternary_
    from ssmquant.kernels import prefill

    monkeypatch.setattr(prefill, "DEQUANT_MIN_ROWS", 32)
    model = to_ternary_(tiny_model(seed=3), group_size=32).to(DEVICE)
    _compare_prefill(model, 2, 26, split, 3e-3, DEVICE)


@pytest.mark.gpu
def test_prefill_130m_fp16_gpu():
    """130m shapes in fp16 on the GPU, 2 x 600 tokens (the decoded-weight path) then 2 x 24 (Triton product):
    the Triton prefill against the model's forward on the PyTorch references (scan, conv, norms)."""
    from ssmquant.bench.models import random_model
    from ssmquant.model import dispatch

    model = random_model("130m", weights="ternary")
    ref_model = random_model("130m", weights="ternary")
    ref_model.load_state_dict(model.state_dict())
    from ssmquant.kernels.prefill import prefill_model

    fast = prefill_model(model)
    ids = torch.randint(0, 50277, (2, 624), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    caches = [ref_model.allocate_cache(2), fast.allocate_cache(2)]
    with torch.no_grad():
        for seg in (ids[:, :600], ids[:, 600:]):
            dispatch.set_backend("torch")
            try:
                ref = ref_model(seg, caches[0]).float()
            finally:
                dispatch.set_backend("auto")
            out = fast(seg, caches[1]).float()
            assert rel_err(out, ref) < 1e-2, f"logits: rel err {rel_err(out, ref):.2e}"
            for name in ("conv_states", "ssm_states"):
                for i, (a, r) in enumerate(zip(getattr(caches[1], name), getattr(caches[0], name))):
                    assert rel_err(a, r) < 1e-2, f"{name}[{i}]: rel err {rel_err(a, r):.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", [(8512, 2048), (2048, 4096)])
def test_dequant_real_shapes_gpu(N, K):
    from ssmquant.kernels.triton.dequant import dequant_ternary

    w = _ternary(N, K, 128, seed=7, device="cuda")
    assert torch.equal(dequant_ternary(w).float(), dequant_ref(w))


@pytest.mark.gpu
def test_graphed_prefill_equals_eager_gpu():
    """GraphedPrefill replays the eager prefill: same logits and cache states, for new ids on every call."""
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.prefill import GraphedPrefill, prefill_model

    fast = prefill_model(random_model("130m", weights="ternary"))
    gp = GraphedPrefill(fast, 2, 300)
    cache = fast.allocate_cache(2)
    for seed in (0, 1):
        ids = torch.randint(0, 50277, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        cache.seqlen_offset = 0
        with torch.no_grad():
            ref = fast(ids, cache, logits_to_keep=1)
        out = gp(ids)
        assert rel_err(out, ref) < 1e-3 and gp.cache.seqlen_offset == 300
        for a, r in zip(gp.cache.ssm_states + gp.cache.conv_states, cache.ssm_states + cache.conv_states):
            assert rel_err(a, r) < 1e-3
