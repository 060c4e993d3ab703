"""The Triton chunked SSD scan (forward and every gradient) against ``ssd_chunked`` and ``ssd_sequential_ref``.

On CPU the kernels run under ``TRITON_INTERPRET=1`` on small shapes; on a GPU the same tests run on the device and a
``gpu`` test adds Mamba-2 1.3B's shape (64 heads of 64, d_state 128, chunk 256, length 2048) in bf16.
"""

import pytest
import torch
from kernels_util import DEVICE, rel_err

from ssmquant.model.ssd import ssd_chunked, ssd_sequential_ref

NAMES = ("x", "dt", "A", "B", "C", "initial_state")


def _inputs(b=2, l=45, h=4, p=16, g=2, n=16, seed=0, dtype=torch.float32, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen).to(dtype)
    dt = torch.rand(b, l, h, generator=gen) * 0.5 + 0.01
    A = -torch.rand(h, generator=gen) * 3 - 0.1
    B = torch.randn(b, l, g, n, generator=gen).to(dtype)
    C = torch.randn(b, l, g, n, generator=gen).to(dtype)
    s0 = torch.randn(b, h, p, n, generator=gen)
    return [t.to(device) for t in (x, dt, A, B, C, s0)]


def _run(fn, leaves, chunk, with_init, gy, gs):
    """Forward with ``fn``, then backward of <y, gy> + <final, gs>; returns (y, final, grads) and clears grads."""
    init = leaves[5] if with_init else None
    y, s = fn(*leaves[:5], chunk, initial_state=init)
    loss = (y.float() * gy).sum() if gy is not None else 0
    loss = loss + ((s * gs).sum() if gs is not None else 0)
    loss.backward()
    grads = [t.grad.clone() if t.grad is not None else None for t in leaves]
    for t in leaves:
        t.grad = None
    return y.detach(), s.detach(), grads


def _compare(leaves, chunk, with_init, *, tol_y, tol_g, ref=ssd_chunked, cotangents=("y", "s"), seed=1):
    from ssmquant.kernels.triton.ssd_scan import ssd_chunk_scan

    gen = torch.Generator().manual_seed(seed)
    b, l, h, p = leaves[0].shape
    gy = torch.randn(b, l, h, p, generator=gen).to(DEVICE) if "y" in cotangents else None
    gs = torch.randn(leaves[5].shape, generator=gen).to(DEVICE) if "s" in cotangents else None
    y_r, s_r, g_r = _run(ref, leaves, chunk, with_init, gy, gs)
    y_k, s_k, g_k = _run(ssd_chunk_scan, leaves, chunk, with_init, gy, gs)
    assert y_k.dtype == leaves[0].dtype and s_k.dtype == torch.float32 and y_k.shape == y_r.shape
    assert rel_err(y_k, y_r) < tol_y, f"y: rel err {rel_err(y_k, y_r):.2e}, max diff {(y_k - y_r).abs().max():.2e}"
    assert rel_err(s_k, s_r) < tol_y, f"final state: rel err {rel_err(s_k, s_r):.2e}"
    for name, a, r in zip(NAMES, g_k, g_r):
        if r is None:
            assert a is None or not a.any(), f"grad {name}: expected none"
            continue
        assert a is not None and a.dtype == r.dtype and a.shape == r.shape, f"grad {name}: missing or wrong type"
        assert rel_err(a, r) < tol_g, (f"grad {name}: rel err {rel_err(a, r):.2e}, "
                                       f"max diff {(a.float() - r.float()).abs().max():.2e}")


def _leaves(**kw):
    return [t.clone().requires_grad_(True) for t in _inputs(**kw)]


# fp32 on the interpreter (numpy) or the GPU with ieee products: the same function up to rounding.
FP32_TOL = 1e-5


@pytest.mark.parametrize("ngroups", [1, 2, 4])
@pytest.mark.parametrize("with_init", [False, True])
def test_fp32_values_and_gradients_match_chunked(ngroups, with_init):
    """l = 45 with chunk 16: two full chunks and a tail of 13; ngroups 1, 2 and h (= 4)."""
    _compare(_leaves(g=ngroups), 16, with_init, tol_y=FP32_TOL, tol_g=FP32_TOL)


@pytest.mark.parametrize("l", [1, 32, 40])
def test_fp32_lengths_against_sequential_definition(l):
    """One step, an exact multiple of the chunk and a tail, against the step-by-step oracle; headdim 8 and
    d_state 12 are not powers of two (masked tiles)."""
    def sequential(x, dt, A, B, C, chunk, initial_state):
        return ssd_sequential_ref(x, dt, A, B, C, initial_state)

    _compare(_leaves(l=l, p=8, n=12, b=1, seed=2), 16, True, tol_y=FP32_TOL, tol_g=FP32_TOL, ref=sequential)


def test_gradient_from_final_state_only():
    """Prefill-style use: only the final state feeds the loss (dy is None inside the backward)."""
    _compare(_leaves(l=37, seed=3), 16, True, tol_y=FP32_TOL, tol_g=FP32_TOL, cotangents=("s",))


@pytest.mark.parametrize("ngroups,with_init,dtype", [(1, False, torch.bfloat16), (2, True, torch.bfloat16),
                                                     (4, True, torch.float16)])
def test_half_values_and_gradients(ngroups, with_init, dtype):
    """bf16 / fp16 inputs: products on 16-bit operands with fp32 accumulation vs the reference on the same inputs
    (which computes in fp32)."""
    _compare(_leaves(g=ngroups, dtype=dtype, seed=4), 16, with_init, tol_y=1e-2, tol_g=2e-2)


def test_rejects_bad_chunk_size_and_groups():
    from ssmquant.kernels.triton.ssd_scan import ssd_chunk_scan

    x, dt, A, B, C, _ = _inputs(l=8)
    with pytest.raises(ValueError, match="power of two"):
        ssd_chunk_scan(x, dt, A, B, C, 24)
    with pytest.raises(ValueError, match="must divide nheads"):
        ssd_chunk_scan(x[:, :, :3], dt[:, :, :3], A[:3], B, C, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("with_init", [False, True])
def test_gpu_mamba2_1p3b_shape_bf16(with_init):
    """Mamba-2 1.3B's scan shape (b 1, l 2048, 64 heads of 64, d_state 128, one group, chunk 256), bf16, against
    the PyTorch chunked scan on the same inputs; plus a tail (l 2000)."""
    for l in (2048, 2000):
        leaves = _leaves(b=1, l=l, h=64, p=64, g=1, n=128, dtype=torch.bfloat16, seed=5)
        with torch.no_grad():
            leaves[1].mul_(0.2)           # dt ~ U(0, 0.1) like mamba-ssm's init; long decays across chunks
        _compare(leaves, 256, with_init, tol_y=1e-2, tol_g=2e-2)


@pytest.mark.gpu
def test_gpu_fp32_is_exact_to_rounding():
    _compare(_leaves(b=2, l=300, h=8, p=64, g=2, n=64, seed=6), 64, True, tol_y=1e-5, tol_g=1e-5)


@pytest.fixture
def scan_backend():
    """Set a scan backend for one test and restore the previous one."""
    from ssmquant.model import dispatch

    prev = dispatch.get_backend()
    yield dispatch.set_backend
    dispatch.set_backend(prev)


def test_dispatch_auto_routes_by_device(scan_backend):
    """``auto`` (the default) is the Triton scan on CUDA tensors and the PyTorch reference elsewhere; ``torch`` and
    ``triton`` force one."""
    from ssmquant.kernels.triton.ssd_scan import ssd_chunk_scan
    from ssmquant.model import dispatch

    assert dispatch.get_backend() == "auto" or "SSMQUANT_SCAN" in __import__("os").environ
    x, dt, A, B, C, s0 = _inputs(l=37, seed=7)
    scan_backend("auto")
    y_auto, s_auto = dispatch.ssd_scan(x, dt, A, B, C, chunk_size=16, initial_state=s0)
    expected = ssd_chunk_scan if DEVICE == "cuda" else ssd_chunked
    y_exp, s_exp = expected(x, dt, A, B, C, 16, initial_state=s0)
    assert torch.equal(y_auto, y_exp) and torch.equal(s_auto, s_exp)
    # chunk sizes the kernel cannot take fall back to the reference
    y8, _ = dispatch.ssd_scan(x, dt, A, B, C, chunk_size=8, initial_state=s0)
    assert torch.equal(y8, ssd_chunked(x, dt, A, B, C, 8, initial_state=s0)[0])
    scan_backend("triton")
    y_k, _ = dispatch.ssd_scan(x, dt, A, B, C, chunk_size=16, initial_state=s0)
    assert rel_err(y_k, y_exp) < FP32_TOL
    with pytest.raises(ValueError, match="unknown scan backend"):
        scan_backend("nope")


def test_distill_step_fast_path_matches_reference(scan_backend):
    """The distillation task's loss and the student's gradients with the Triton scan equal the PyTorch path's
    (tiny model, chunk 16, length 40 = two chunks and a tail; bf16 autocast on GPU, fp32 on CPU)."""
    import copy

    from conftest import tiny_model

    from ssmquant.quant import quantize_
    from ssmquant.train.distill import DistillConfig, DistillTask

    teacher = tiny_model(seed=3, chunk_size=16).to(DEVICE).requires_grad_(False)
    task = DistillTask(DistillConfig(teacher="unused", group_size=32, ce_weight=0.5), tokenizer=None)
    task.teacher = teacher
    ids = torch.randint(0, 100, (2, 41), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    x, y = ids[:, :-1], ids[:, 1:]
    losses, grads = {}, {}
    for backend in ("torch", "triton"):
        scan_backend(backend)
        torch.manual_seed(0)
        student = copy.deepcopy(teacher).float().train().requires_grad_(True)
        quantize_(student, task.qcfg)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            loss, _ = task.loss(student, x, y)
        loss.backward()
        losses[backend] = loss.item()
        grads[backend] = {n: p.grad.float().clone() for n, p in student.named_parameters() if p.grad is not None}
    tol = 1e-2 if DEVICE == "cuda" else 1e-5
    assert abs(losses["triton"] - losses["torch"]) <= tol * abs(losses["torch"]), losses
    assert grads["torch"].keys() == grads["triton"].keys()
    worst = max(grads["torch"], key=lambda n: rel_err(grads["triton"][n], grads["torch"][n]))
    err = rel_err(grads["triton"][worst], grads["torch"][worst])
    assert err < (5e-2 if DEVICE == "cuda" else 1e-4), f"grad {worst}: rel err {err:.2e}"


def test_teacher_forward_replay_equals_eager():
    """The distillation teacher's forward (a CUDA graph replayed each step on GPU, eager elsewhere) returns the
    eager forward's hidden states, for two batches in a row (the static input buffer is refilled)."""
    from conftest import tiny_model

    from ssmquant.train.teacher import TeacherForward

    teacher = tiny_model(seed=4, chunk_size=16).to(DEVICE).requires_grad_(False)
    fwd = TeacherForward(teacher)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        ids = torch.randint(0, 100, (2, 40), generator=gen).to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            got = fwd(ids)
            with torch.no_grad():
                ref = teacher(ids, return_hidden=True)
        assert torch.equal(got, ref), f"max diff {(got.float() - ref.float()).abs().max():.2e}"
    assert (len(fwd._graphs) == 1) == (DEVICE == "cuda")


@pytest.mark.gpu
def test_gpu_cuda_graph_blocks_train_like_eager():
    """Three distillation steps (AdamW in between) with the blocks replayed from CUDA graphs give the eager path's
    losses and gradients; the graphs are captured once."""
    import copy

    from conftest import tiny_model

    from ssmquant.train.distill import DistillConfig, DistillTask

    teacher = tiny_model(seed=3, chunk_size=16, n_layer=3).cuda().requires_grad_(False)
    task = DistillTask(DistillConfig(teacher="unused", group_size=32, ce_weight=0.5), tokenizer=None)
    task.teacher = teacher
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 100, (2, 49), generator=gen).cuda() for _ in range(3)]
    base = copy.deepcopy(teacher).float().train().requires_grad_(True)
    from ssmquant.quant import quantize_

    quantize_(base, task.qcfg)
    runs = {}
    for graphs in (False, True):
        student = copy.deepcopy(base)
        student.backbone.cuda_graphs = graphs
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        losses, grads = [], None
        for ids in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = task.loss(student, ids[:, :-1], ids[:, 1:])
            loss.backward()
            grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        runs[graphs] = (losses, grads)
        assert (student.backbone._layer_graphs.fns is not None) == graphs
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5), runs
    worst = max(runs[False][1], key=lambda n: rel_err(runs[True][1][n], runs[False][1][n]))
    assert rel_err(runs[True][1][worst], runs[False][1][worst]) < 1e-4, worst


@pytest.mark.parametrize("ngroups,dtype", [(1, torch.float32), (2, torch.float32), (1, torch.float16)])
def test_skip_D_fused_values_and_gradients(ngroups, dtype):
    """``D`` given: y includes D_h x (the mixer's ``y + x * D``), with gradients for x and D; 16-bit inputs too."""
    from ssmquant.kernels.triton.ssd_scan import ssd_chunk_scan
    from ssmquant.model.dispatch import _reference_scan

    leaves = _leaves(g=ngroups, dtype=dtype, seed=7)
    D = (torch.randn(4, generator=torch.Generator().manual_seed(8)) + 1).to(DEVICE).requires_grad_(True)
    gy = torch.randn(leaves[0].shape, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    res = []
    for fn in (_reference_scan, ssd_chunk_scan):
        y, s = fn(*leaves[:5], 16, initial_state=leaves[5], D=D)
        ((y.float() * gy).sum() + s.sum()).backward()
        res.append([y.detach(), s.detach()] + [t.grad.clone() for t in (*leaves, D)])
        for t in (*leaves, D):
            t.grad = None
    tol = FP32_TOL if dtype == torch.float32 else 2e-2
    for name, a, r in zip(("y", "final") + NAMES + ("D",), res[1], res[0]):
        assert rel_err(a, r) < tol, f"{name}: rel err {rel_err(a, r):.2e}"
    assert rel_err(res[1][0], ssd_chunk_scan(*leaves[:5], 16, initial_state=leaves[5])[0].detach()) > 1e-2
