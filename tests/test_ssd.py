"""The chunked SSD scan and the recurrent step against the sequential definition."""

import pytest
import torch

from ssmquant.model.ssd import ssd_chunked, ssd_sequential_ref, ssd_step


def _inputs(b=2, l=37, h=4, p=3, g=2, n=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen).to(dtype)
    dt = (torch.rand(b, l, h, generator=gen) * 0.5 + 0.01)
    A = -torch.rand(h, generator=gen) * 3
    B = torch.randn(b, l, g, n, generator=gen).to(dtype)
    C = torch.randn(b, l, g, n, generator=gen).to(dtype)
    s0 = torch.randn(b, h, p, n, generator=gen)
    return x, dt, A, B, C, s0


@pytest.mark.parametrize("chunk", [1, 4, 8, 16, 64])
@pytest.mark.parametrize("l", [1, 7, 16, 37])
@pytest.mark.parametrize("with_init", [False, True])
def test_chunked_equals_sequential(chunk, l, with_init):
    x, dt, A, B, C, s0 = _inputs(l=l)
    init = s0 if with_init else None
    y_ref, s_ref = ssd_sequential_ref(x, dt, A, B, C, init)
    y, s = ssd_chunked(x, dt, A, B, C, chunk, initial_state=init)
    assert y.shape == y_ref.shape and s.shape == s_ref.shape
    err_y, err_s = (y - y_ref).abs().max().item(), (s - s_ref).abs().max().item()
    assert err_y < 1e-4 and err_s < 1e-4, f"max |dy|={err_y:.3e} |dS|={err_s:.3e}"


def test_groups_map_heads_like_mamba_ssm():
    """Head i reads group i // (h // g): with g = h each head has its own B, C; permuting groups permutes heads."""
    x, dt, A, B, C, _ = _inputs(h=4, g=4)
    y, _ = ssd_sequential_ref(x, dt, A, B, C)
    perm = torch.tensor([1, 0, 3, 2])
    y2, _ = ssd_sequential_ref(x[:, :, perm], dt[:, :, perm], A[perm], B[:, :, perm], C[:, :, perm])
    assert torch.allclose(y2, y[:, :, perm], atol=1e-6)


def test_step_equals_sequential():
    x, dt, A, B, C, s0 = _inputs()
    y_ref, s_ref = ssd_sequential_ref(x, dt, A, B, C, s0)
    state = s0.clone()
    ys = [ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state) for t in range(x.shape[1])]
    assert torch.allclose(torch.stack(ys, 1), y_ref, atol=1e-5)
    assert torch.allclose(state, s_ref, atol=1e-5)


def test_chunked_gradients_match_sequential():
    x, dt, A, B, C, s0 = _inputs(l=13)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, s0)]
    y_ref, s_ref = ssd_sequential_ref(*leaves[:5], leaves[5])
    (y_ref.square().sum() + s_ref.sum()).backward()
    g_ref = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    y, s = ssd_chunked(*leaves[:5], 4, initial_state=leaves[5])
    (y.square().sum() + s.sum()).backward()
    for name, t, g in zip("x dt A B C s0".split(), leaves, g_ref):
        assert torch.allclose(t.grad, g, atol=1e-3, rtol=1e-4), f"grad {name}: max diff {(t.grad - g).abs().max()}"


def test_half_inputs_computed_in_fp32():
    x, dt, A, B, C, _ = _inputs(dtype=torch.bfloat16)
    y, s = ssd_chunked(x, dt, A, B, C, 8)
    y_ref, s_ref = ssd_sequential_ref(x.float(), dt, A, B.float(), C.float())
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert torch.allclose(s, s_ref, atol=1e-4)
    assert torch.allclose(y.float(), y_ref, atol=0.05, rtol=0.02)
