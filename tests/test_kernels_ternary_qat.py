"""The fused ternary fake-quant kernels against ``quant.ternary``'s reference: forward bit for bit (ties at
|w / s| = 1/2 and 3/2 included), identical weight gradient, LSQ scale gradient up to summation order."""

import pytest
import torch
from kernels_util import DEVICE, rel_err

from ssmquant.quant.ternary import (
    _TernaryFakeQuant,
    absmean_scale,
    lsq_grad_scale,
    round_scale,
)


def _weight(r, c, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(r, c, generator=g) * 0.02
    s = round_scale(absmean_scale(w, G), torch.float16)
    # Exact ties: halves and three-halves of the (storage-rounded) scale, where rounding is half-to-even.
    w.view(r, c // G, G)[:, :, :4] = s[:, :, None] * torch.tensor([0.5, -0.5, 1.5, -1.5])
    return w.to(DEVICE), s.to(DEVICE)


@pytest.mark.parametrize("G,out_dtype", [(32, torch.float32), (128, torch.bfloat16), (64, torch.float16)])
@pytest.mark.parametrize("learnable", [False, True])
def test_fused_fake_quant_matches_reference(G, out_dtype, learnable):
    from ssmquant.kernels.triton.ternary_qat import ternary_fake_quant_fused

    w0, s0 = _weight(24, 4 * G, G)
    gs = lsq_grad_scale(G)
    upstream = torch.randn(w0.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE).to(out_dtype)
    outs, grads = [], []
    for fused in (False, True):
        w = w0.clone().requires_grad_(True)
        s = s0.clone().requires_grad_(learnable)
        if fused:
            out = ternary_fake_quant_fused(w, s, G, out_dtype, grad_scale=gs)
        else:
            out = _TernaryFakeQuant.apply(w, s, G, torch.float16, gs).to(out_dtype)
        (out.float() * upstream.float()).sum().backward()
        outs.append(out.detach())
        grads.append((w.grad, s.grad))
    assert outs[1].dtype == out_dtype
    if out_dtype == torch.bfloat16 and DEVICE == "cpu":
        # The interpreter (triton 3.9) truncates fp32 -> bf16 instead of rounding to nearest even as the GPU
        # does: within one bf16 step here, bit for bit on the GPU.
        assert rel_err(outs[1], outs[0]) < 2**-7
    else:
        assert torch.equal(outs[1], outs[0]), "forward differs from the reference"
    assert torch.equal(grads[1][0], grads[0][0]), "weight gradient (STE) differs"
    if learnable:
        assert rel_err(grads[1][1], grads[0][1]) < 1e-6, f"scale gradient rel err {rel_err(grads[1][1], grads[0][1])}"
    else:
        assert grads[1][1] is None


@pytest.mark.gpu
def test_ternary_linear_under_autocast_uses_fused_path_with_same_output():
    """On CUDA under bf16 autocast TernaryLinear asks for a bf16 weight: the fused kernel writes it, equal to the
    fp32 reference weight cast by autocast, and the layer's output and gradients equal the reference layer's."""
    from ssmquant.quant.layers import TernaryLinear

    lin = torch.nn.Linear(512, 96, bias=False)
    ref = TernaryLinear.from_linear(lin, group_size=128, scale_mode="learnable").cuda()
    x = torch.randn(4, 512, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = ref(x)
        w_ref = ref.fake_quant_weight().to(torch.bfloat16)                # the pre-fusion path
        y_ref = torch.nn.functional.linear(x, w_ref)
    assert torch.equal(ref.fake_quant_weight(torch.bfloat16), w_ref)
    assert torch.equal(y, y_ref)
