"""The fused causal conv1d + SiLU kernels against ``model.ops.causal_conv1d_silu_ref``: values and gradients, on a
strided slice of a wider tensor as the mixer passes it."""

import pytest
import torch
from kernels_util import DEVICE, rel_err

from ssmquant.model.ops import causal_conv1d_silu_ref


def _check(b, l, c, k, dtype, tol):
    from ssmquant.kernels.triton.conv1d import causal_conv1d_silu

    g = torch.Generator().manual_seed(0)
    wide = torch.randn(b, l, c + 40, generator=g).to(dtype).to(DEVICE)
    x = wide[:, :, 8:8 + c].detach().requires_grad_(True)         # row stride c + 40, like xBC in zxbcdt
    w = (torch.randn(c, 1, k, generator=g) * 0.5).to(DEVICE).requires_grad_(True)
    bias = (torch.randn(c, generator=g) * 0.1).to(DEVICE).requires_grad_(True)
    dout = torch.randn(b, l, c, generator=g).to(DEVICE)
    res = []
    for fn in (causal_conv1d_silu_ref, causal_conv1d_silu):
        # The reference in fp32 from the same 16-bit inputs: the kernel accumulates in fp32 with fp32 weights.
        out = fn(x.float() if fn is causal_conv1d_silu_ref else x, w, bias)
        (out.float() * dout).sum().backward()
        res.append([out.detach().to(dtype)] + [t.grad.clone() for t in (x, w, bias)])
        for t in (x, w, bias):
            t.grad = None
    for name, a, r in zip(("out", "dx", "dweight", "dbias"), res[1], res[0]):
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert rel_err(a, r) < tol, f"{name}: rel err {rel_err(a, r):.2e}"


@pytest.mark.parametrize("b,l,c,k,dtype", [(2, 37, 24, 4, torch.float32), (1, 70, 80, 4, torch.float32),
                                           (2, 3, 16, 4, torch.float32), (2, 20, 40, 3, torch.float16)])
def test_fused_conv_matches_reference(b, l, c, k, dtype):
    """Tails in l and c, a sequence shorter than the kernel, another kernel width, 16-bit activations."""
    _check(b, l, c, k, dtype, 1e-5 if dtype == torch.float32 else 2e-3)


@pytest.mark.gpu
def test_gpu_fused_conv_1p3b_shape():
    _check(2, 2048, 4096 + 2 * 128, 4, torch.bfloat16, 1e-2)


@pytest.mark.parametrize("l", [37, 2])
def test_fused_conv_with_initial_window(l):
    """A continued sequence: the k - 1 inputs before x come from a strided window (the cache's conv_states[..., 1:])
    instead of zeros; equals the reference over [window, x] cut to x's positions. Also l < k - 1."""
    from ssmquant.kernels.triton.conv1d import causal_conv1d_silu

    b, c, k = 2, 24, 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, l, c + 8, generator=g).to(DEVICE)[:, :, :c]
    states = torch.randn(b, c, k, generator=g).to(DEVICE)
    w, bias = torch.randn(c, 1, k, generator=g).to(DEVICE) * 0.5, torch.randn(c, generator=g).to(DEVICE) * 0.1
    out = causal_conv1d_silu(x, w, bias, states[:, :, 1:])
    ref = causal_conv1d_silu_ref(torch.cat([states[:, :, 1:].transpose(1, 2), x], 1), w, bias)[:, k - 1:]
    assert rel_err(out, ref) < 1e-5, f"rel err {rel_err(out, ref):.2e}"
    assert rel_err(out, causal_conv1d_silu(x, w, bias)) > 1e-3     # the window matters
