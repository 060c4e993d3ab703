"""The fused (gated, grouped) RMSNorm kernels against ``model.ops.rms_norm_ref``: values and all gradients."""

import pytest
import torch
from kernels_util import DEVICE, rel_err

from ssmquant.model.ops import rms_norm_ref


def _check(shape, group_size, gated, in_dtype, out_dtype, tol):
    from ssmquant.kernels.triton.rmsnorm import rms_norm_fused

    g = torch.Generator().manual_seed(0)
    d = shape[-1]
    x = torch.randn(*shape, generator=g).to(in_dtype).to(DEVICE).requires_grad_(True)
    z = torch.randn(*shape, generator=g).to(in_dtype).to(DEVICE).requires_grad_(True) if gated else None
    w = (1 + 0.3 * torch.randn(d, generator=g)).to(DEVICE).requires_grad_(True)
    dout = torch.randn(*shape, generator=g).to(DEVICE)
    res = []
    for fn in (rms_norm_ref, rms_norm_fused):
        out = fn(x, w, 1e-5, z=z, group_size=group_size, out_dtype=out_dtype)
        (out.float() * dout).sum().backward()
        res.append([out.detach()] + [t.grad.clone() for t in (x, w, z) if t is not None])
        for t in (x, w, z):
            if t is not None:
                t.grad = None
    for name, a, r in zip(("out", "dx", "dweight", "dz"), res[1], res[0]):
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert rel_err(a, r) < tol, f"{name}: rel err {rel_err(a, r):.2e}"


@pytest.mark.parametrize("shape,group_size,gated,in_dtype,out_dtype", [
    ((3, 7, 64), None, False, torch.float32, None),              # block norm, fp32 residual
    ((3, 7, 64), None, False, torch.float32, torch.float16),     # ... written in the compute dtype
    ((2, 5, 128), 32, True, torch.float32, None),                # gated, 4 groups
    ((2, 5, 64), None, True, torch.float16, None),               # gated, one group, 16-bit activations
])
def test_fused_rms_norm_matches_reference(shape, group_size, gated, in_dtype, out_dtype):
    tol = 1e-5 if (out_dtype or in_dtype) == torch.float32 else 2e-3
    _check(shape, group_size, gated, in_dtype, out_dtype, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("d,group_size,gated,in_dtype,out_dtype", [
    (2048, None, False, torch.float32, torch.bfloat16),          # 1.3B block norm under autocast
    (4096, None, True, torch.bfloat16, None),                    # 1.3B gated norm (one group)
    (4096, 512, True, torch.bfloat16, None),                     # 8 groups
])
def test_gpu_fused_rms_norm_1p3b_shapes(d, group_size, gated, in_dtype, out_dtype):
    _check((2, 1024, d), group_size, gated, in_dtype, out_dtype, 1e-2)
