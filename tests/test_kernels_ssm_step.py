"""The fused conv + SSM + gate decode kernel against its reference, over several steps (ring buffer wrap-around)."""

import pytest
import torch
from kernels_util import DEVICE, rel_err


@pytest.mark.parametrize("ngroups,headdim,BP,state_dtype", [(1, 16, 16, torch.float32), (2, 16, 8, torch.float32),
                                                             (1, 16, 16, torch.float16), (2, 16, 8, torch.bfloat16)])
def test_ssm_step_matches_reference_over_steps(ngroups, headdim, BP, state_dtype):
    """Also with a half-precision state (FastDecoder's ``state_dtype``): updated in fp32, stored rounded, exactly
    as the reference does it."""
    from ssmquant.kernels.triton.ssm_step import ssm_step, ssm_step_ref

    g = torch.Generator().manual_seed(0)
    b, h, n, k = 2, 4, 8, 4
    e = h * headdim
    cd = e + 2 * ngroups * n
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    cw, cb, dtb, A, D = r(cd, k) * 0.5, r(cd) * 0.1, r(h) * 0.5, -torch.rand(h, generator=g) * 2, r(h)
    conv_ref = r(b, cd, k).half()
    S_ref = r(b, h, headdim, n).to(state_dtype)
    dev = lambda t: t.to(DEVICE).contiguous()  # noqa: E731
    cw_d, cb_d, dtb_d, A_d, D_d = map(dev, (cw, cb, dtb, A, D))
    ring, S = dev(conv_ref.clone()), dev(S_ref.clone())
    pos = torch.zeros((), dtype=torch.int32, device=DEVICE)
    for step in range(k + 1):                                    # wraps the ring once
        zx = r(b, 2 * e + 2 * ngroups * n + h).half()
        h_ref = ssm_step_ref(zx, cw, cb, conv_ref, dtb, A, D, S_ref, ngroups=ngroups)
        h_k = ssm_step(dev(zx), cw_d, cb_d, ring, dtb_d, A_d, D_d, S, pos, ngroups=ngroups, BP=BP)
        pos += 1
        # A half-precision state may round an element the other way (the fp32 arithmetic differs in the last bit;
        # the Triton interpreter truncates fp32 -> bf16), and the difference is carried to later steps: a few ulps.
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[state_dtype]
        assert rel_err(h_k.cpu(), h_ref) < tol, f"step {step}: h max diff {(h_k.cpu() - h_ref).abs().max():.2e}"
        assert S.dtype == state_dtype and rel_err(S.cpu(), S_ref) < tol, f"step {step}: state differs"
        window = torch.roll(ring.cpu(), -int(pos), -1)           # ring slot (T + i) % k holds window[i]
        assert torch.equal(window, conv_ref), f"step {step}: conv ring differs from the rolled window"


def test_ssm_step_rejects_bad_shapes():
    from ssmquant.kernels.triton.ssm_step import ssm_step

    S = torch.zeros(1, 2, 16, 8, device=DEVICE)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        ssm_step(torch.zeros(1, 10, device=DEVICE), torch.zeros(48, 4, device=DEVICE), torch.zeros(48), None,
                 None, None, None, S, None, ngroups=1)
