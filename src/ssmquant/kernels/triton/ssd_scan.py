"""The chunked SSD scan of Mamba-2 in Triton, forward and backward, for training and prefill.

Same contract as the PyTorch reference ``ssmquant.model.ssd.ssd_chunked`` (and the oracle ``ssd_sequential_ref``):

    y, final_state = ssd_chunk_scan(x, dt, A, B, C, chunk_size, initial_state=None)

    x (b, l, h, p); dt (b, l, h) softplus'ed, > 0; A (h,) < 0; B, C (b, l, g, n), h % g == 0, head i reads group
    i // (h // g); initial_state / final_state (b, h, p, n) fp32; y (b, l, h, p) in x.dtype.

Gradients flow to x, dt, A, B, C and initial_state (and from y and final_state). Inputs may be fp32, bf16 or fp16 and
any strides (the model passes views of its conv output); accumulation is fp32; any length (the tail chunk is masked,
which is the reference's dt = 0 padding). The structure follows the Mamba-2 paper's block decomposition (Dao & Gu
2024, section 6) the way mamba-ssm's ``mamba_chunk_scan_combined`` splits it into kernels; the code is our own.

Letters: b batch, l length, h heads, p headdim, g groups, n d_state, Q chunk size, c = ceil(l / Q) chunks,
i / j positions inside a chunk (i the output row, j the input column), a = within-chunk cumsum of dt * A.

Forward, four launches (``ssd_scan_bwd.py`` has the backward's derivation and kernels):

1. ``_chunk_cumsum_kernel``: dt and a = cumsum_j(dt_j * A) per chunk, stored (b, h, c, Q) fp32, zero-padded.
2. ``_chunk_state_kernel``: each chunk's own end state s_c = sum_j exp(a_last - a_j) dt_j x_j ⊗ B_j, (p, n) per
   (b, c, h) -- one (p, Q) @ (Q, n) product.
3. ``_state_passing_fwd_kernel``: S_{c+1} = exp(a_last,c) S_c + s_c, sequential over chunks, overwriting s_c with
   the state entering chunk c (S_0 = initial_state) and writing the final state.
4. ``_chunk_scan_fwd_kernel``: y_i = exp(a_i) C_i · S_c + sum_{j <= i} (C_i · B_j) exp(a_i - a_j) dt_j x_j
   (+ D_h x_i, Mamba-2's skip, when ``D`` is given: one pass over y fewer than the mixer adding it after).
   C_i · B_j is recomputed per head rather than stored per group: it costs less than a round trip through memory
   at these sizes and keeps one code path for any ngroups. (Measured on an H100 at the 1.3B prefill shape, 8 x 2048,
   64 heads in one group: reading a precomputed fp32 (b, c, g, Q, Q) block instead took this kernel from 528 to
   486 us a layer, but the batched product and padding that made it cost 40 us, and at batch 1 its extra host-side
   launches cost more than the kernel saved; the kernel is not bound by its tensor-core work.)

Where this departs from the reference: products of two inputs run on the tensor cores in the input dtype with fp32
accumulation, and the second factor of a product chain (the decay-weighted C·B block, the carried state) is rounded
to the input dtype before its product; for fp32 inputs every product is full fp32 (``input_precision="ieee"``).
"""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _mma(a, b, PREC: tl.constexpr):
    """a @ b with fp32 accumulation. PREC "ieee" / "tf32": tl.dot's input precision (fp32 operands only).
    "upcast": the interpreter's bf16 dot is broken (triton 3.9 multiplies the raw uint16 bits), so operands already
    rounded to bf16 are widened to fp32 first: the same products and sums as the tensor cores'."""
    if PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _chunk_cumsum_kernel(dt_ptr, A_ptr, dt_out_ptr, a_out_ptr, L, H, NCHUNK, s_db, s_dl, s_dh,
                         Q: tl.constexpr, BH: tl.constexpr):
    """Grid (b, c, cdiv(h, BH)). dt (b, l, h) any strides -> dt_out, a_out (b, h, c, Q) fp32, zero past ``L``."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    hh = tl.program_id(2) * BH + tl.arange(0, BH)
    t = tl.arange(0, Q)
    pos = c * Q + t
    mh = hh < H
    m = (pos < L)[:, None] & mh[None, :]
    dt = tl.load(dt_ptr + b * s_db + pos[:, None] * s_dl + hh[None, :] * s_dh, mask=m, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + hh, mask=mh, other=0.0).to(tl.float32)
    a = tl.cumsum(dt * A[None, :], axis=0)                              # (Q, BH)
    off = ((b * H + hh[None, :]) * NCHUNK + c) * Q + t[:, None]
    tl.store(dt_out_ptr + off, dt, mask=mh[None, :])
    tl.store(a_out_ptr + off, a, mask=mh[None, :])


@triton.jit
def _chunk_state_kernel(u_ptr, v_ptr, dt_ptr, a_ptr, out_ptr, L, H, NCHUNK, P, N, HPG,
                        s_ub, s_ul, s_uh, s_up, s_vb, s_vl, s_vg, s_vn,
                        Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                        FROM_END: tl.constexpr, PREC: tl.constexpr):
    """out[b, c, h] (p, n) fp32 = sum_t u_t ⊗ v_t * w_t over chunk c; grid (b * c * h, cdiv(p, BP)).

    FROM_END (forward, chunk states): u = x, v = B, w_t = exp(a_last - a_t) dt_t.
    otherwise (backward, state gradient from y): u = dy, v = C, w_t = exp(a_t).
    """
    pid = tl.program_id(0)
    h = pid % H
    c = (pid // H) % NCHUNK
    b = pid // (H * NCHUNK)
    g = h // HPG
    pp = tl.program_id(1) * BP + tl.arange(0, BP)
    nn = tl.arange(0, BN)
    mp = pp < P
    mn = nn < N
    row = ((b * H + h) * NCHUNK + c) * Q
    a_last = tl.load(a_ptr + row + Q - 1)
    acc = tl.zeros((BP, BN), dtype=tl.float32)
    hi = tl.minimum(Q, L - c * Q)
    for t0 in range(0, hi, BT):
        t = t0 + tl.arange(0, BT)
        pos = c * Q + t
        mt = pos < L
        u = tl.load(u_ptr + b * s_ub + pos[None, :] * s_ul + h * s_uh + pp[:, None] * s_up,
                    mask=mp[:, None] & mt[None, :], other=0.0)                  # (BP, BT)
        v = tl.load(v_ptr + b * s_vb + pos[:, None] * s_vl + g * s_vg + nn[None, :] * s_vn,
                    mask=mt[:, None] & mn[None, :], other=0.0)                  # (BT, BN)
        a = tl.load(a_ptr + row + t)
        if FROM_END:
            w = tl.exp(a_last - a) * tl.load(dt_ptr + row + t)
        else:
            w = tl.exp(a)
        acc += _mma((u * w[None, :]).to(v.dtype), v, PREC)
    out = out_ptr + ((b * NCHUNK + c) * H + h) * P * N + pp[:, None] * N + nn[None, :]
    tl.store(out, acc, mask=mp[:, None] & mn[None, :])


@triton.jit
def _state_passing_fwd_kernel(st_ptr, a_ptr, init_ptr, final_ptr, H, NCHUNK, PN,
                              Q: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr):
    """In place over st (b, c, h, p*n): chunk states in, entering states out. Grid (b, h, cdiv(p*n, BLOCK))."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_INIT:
        S = tl.load(init_ptr + (b * H + h) * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(NCHUNK):
        ptr = st_ptr + ((b * NCHUNK + c) * H + h) * PN + offs
        s = tl.load(ptr, mask=m, other=0.0)
        tl.store(ptr, S, mask=m)
        decay = tl.exp(tl.load(a_ptr + ((b * H + h) * NCHUNK + c) * Q + Q - 1))
        S = decay * S + s
    tl.store(final_ptr + (b * H + h) * PN + offs, S, mask=m)


@triton.jit
def _chunk_scan_fwd_kernel(x_ptr, B_ptr, C_ptr, dt_ptr, a_ptr, st_ptr, y_ptr, D_ptr, L, H, NCHUNK, P, N, HPG,
                           s_xb, s_xl, s_xh, s_xp, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
                           s_yb, s_yl, s_yh, s_yp,
                           Q: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
                           BN: tl.constexpr, PREC: tl.constexpr, HAS_D: tl.constexpr):
    """y rows i of chunk c, head h: grid (b * c * h, Q / BM, cdiv(p, BP)). HAS_D: adds the skip D_h x_i (Mamba-2's
    D, one per head) to the output."""
    pid = tl.program_id(0)
    h = pid % H
    c = (pid // H) % NCHUNK
    b = pid // (H * NCHUNK)
    g = h // HPG
    pid_m = tl.program_id(1)
    i = pid_m * BM + tl.arange(0, BM)
    pp = tl.program_id(2) * BP + tl.arange(0, BP)
    nn = tl.arange(0, BN)
    pos_i = c * Q + i
    mi = pos_i < L
    mp = pp < P
    mn = nn < N
    row = ((b * H + h) * NCHUNK + c) * Q
    a_i = tl.load(a_ptr + row + i)
    Ci = tl.load(C_ptr + b * s_cb + pos_i[:, None] * s_cl + g * s_cg + nn[None, :] * s_cn,
                 mask=mi[:, None] & mn[None, :], other=0.0)                     # (BM, BN)
    # The state entering the chunk, read as (n, p) so that C_i @ S^T is a plain product.
    S = tl.load(st_ptr + ((b * NCHUNK + c) * H + h) * P * N + pp[None, :] * N + nn[:, None],
                mask=mn[:, None] & mp[None, :], other=0.0)                      # (BN, BP)
    acc = _mma(Ci, S.to(Ci.dtype), PREC) * tl.exp(a_i)[:, None]
    hi = tl.minimum((pid_m + 1) * BM, L - c * Q)
    for j0 in range(0, hi, BK):
        j = j0 + tl.arange(0, BK)
        pos_j = c * Q + j
        mj = pos_j < L
        Bj = tl.load(B_ptr + b * s_bb + pos_j[None, :] * s_bl + g * s_bg + nn[:, None] * s_bn,
                     mask=mn[:, None] & mj[None, :], other=0.0)                 # (BN, BK)
        cb = _mma(Ci, Bj, PREC)                                                 # (BM, BK)
        a_j = tl.load(a_ptr + row + j)
        dt_j = tl.load(dt_ptr + row + j)
        # Clamp before exp: above the diagonal a_i - a_j > 0 can overflow, and is masked anyway.
        decay = tl.exp(tl.minimum(a_i[:, None] - a_j[None, :], 0.0))
        w = tl.where(i[:, None] >= j[None, :], cb * decay * dt_j[None, :], 0.0)
        xj = tl.load(x_ptr + b * s_xb + pos_j[:, None] * s_xl + h * s_xh + pp[None, :] * s_xp,
                     mask=mj[:, None] & mp[None, :], other=0.0)                 # (BK, BP)
        acc += _mma(w.to(xj.dtype), xj, PREC)
    if HAS_D:
        xi = tl.load(x_ptr + b * s_xb + pos_i[:, None] * s_xl + h * s_xh + pp[None, :] * s_xp,
                     mask=mi[:, None] & mp[None, :], other=0.0)                 # (BM, BP)
        acc += xi.to(tl.float32) * tl.load(D_ptr + h).to(tl.float32)
    tl.store(y_ptr + b * s_yb + pos_i[:, None] * s_yl + h * s_yh + pp[None, :] * s_yp,
             acc.to(y_ptr.dtype.element_ty), mask=mi[:, None] & mp[None, :])


# ---------------------------------------------------------------- launchers

def _check(x, dt, A, B, C, chunk_size, initial_state):
    b, l, h, p = x.shape
    if dt.shape != (b, l, h) or A.shape != (h,) or B.dim() != 4 or B.shape[:2] != (b, l) or C.shape != B.shape:
        raise ValueError(f"inconsistent shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}; expected x (b, l, h, p), dt (b, l, h), A (h,), "
                         "B and C (b, l, g, n)")
    g = B.shape[2]
    if h % g:
        raise ValueError(f"ngroups={g} must divide nheads={h}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size={chunk_size}: the Triton scan needs a power of two >= 16 (use the torch "
                         "backend for others)")
    if initial_state is not None and initial_state.shape != (b, h, p, B.shape[3]):
        raise ValueError(f"initial_state {tuple(initial_state.shape)} != (b, h, p, n) = {(b, h, p, B.shape[3])}")


# Launch settings: T the tile of chunk positions, warps and software-pipelining stages per kernel family. Chosen by
# the 1.3B QAT + KD step on an H100 (bench train, CUDA-graphed, same run): 139.0 ms/step with these, 142.1 with 8
# backward warps and 3 stages; T = 32 was slower (175 ms, another run). benchmarks/ssd_scan.py --sweep times the
# scan alone, but at b = 1 its eager fwd + bwd is bound by launch overhead and ranks settings differently.
TUNING = {"T": 64, "state_warps": 4, "fwd_warps": 4, "bwd_warps": 4, "stages": 2}
# An override for tuning runs, e.g. SSMQUANT_SCAN_TUNING='{"T": 32, "bwd_warps": 4}'.
TUNING.update(json.loads(os.environ.get("SSMQUANT_SCAN_TUNING", "{}")))


def _blocks(Q: int, p: int, n: int) -> dict:
    """Tile sizes: T for positions (rows and columns of a chunk), P for headdim, N for d_state (whole)."""
    return {"T": min(TUNING["T"], Q), "P": max(16, triton.next_power_of_2(p)),
            "N": max(16, triton.next_power_of_2(n))}


def _prec(dtype: torch.dtype) -> str:
    """``_mma``'s PREC for inputs of ``dtype``."""
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if dtype == torch.bfloat16 and _interpreting() else "tf32"


def _cumsum(dt, A, Q: int, nchunk: int):
    b, l, h = dt.shape
    dt_c = torch.empty(b, h, nchunk, Q, device=dt.device, dtype=torch.float32)
    a_c = torch.empty_like(dt_c)
    BH = min(8, triton.next_power_of_2(h))
    _chunk_cumsum_kernel[(b, nchunk, triton.cdiv(h, BH))](dt, A, dt_c, a_c, l, h, nchunk, *dt.stride(), Q=Q, BH=BH)
    return dt_c, a_c


def _chunk_states(u, v, dt_c, a_c, Q: int, *, from_end: bool, prec: str):
    """(b, c, h, p, n) fp32: see ``_chunk_state_kernel``."""
    b, l, h, p = u.shape
    g, n = v.shape[2], v.shape[3]
    nchunk = dt_c.shape[2]
    bl = _blocks(Q, p, n)
    BP = min(64, bl["P"])
    out = torch.empty(b, nchunk, h, p, n, device=u.device, dtype=torch.float32)
    _chunk_state_kernel[(b * nchunk * h, triton.cdiv(p, BP))](
        u, v, dt_c, a_c, out, l, h, nchunk, p, n, h // g, *u.stride(), *v.stride(),
        Q=Q, BT=bl["T"], BP=BP, BN=bl["N"], FROM_END=from_end, PREC=prec, num_warps=TUNING["state_warps"],
        num_stages=TUNING["stages"])
    return out


def _state_block(pn: int) -> int:
    return min(1024, triton.next_power_of_2(pn))


def ssd_scan_fwd(x, dt, A, B, C, chunk_size: int, initial_state=None, D=None):
    """Forward launches. Returns (y, final_state, dt_c, a_c, states) where dt_c, a_c: (b, h, c, Q) fp32 and
    states: (b, c, h, p, n) fp32, the state entering each chunk (what the backward needs). With ``D`` (h,), y
    includes the skip ``D_h x``."""
    _check(x, dt, A, B, C, chunk_size, initial_state)
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Q = chunk_size
    nchunk = max(1, triton.cdiv(l, Q))
    prec = _prec(x.dtype)
    B, C = B.to(x.dtype), C.to(x.dtype)
    A = A.float().contiguous()
    dt_c, a_c = _cumsum(dt, A, Q, nchunk)
    states = _chunk_states(x, B, dt_c, a_c, Q, from_end=True, prec=prec)
    final = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    init = initial_state.float().contiguous() if initial_state is not None else final
    BLOCK = _state_block(p * n)
    _state_passing_fwd_kernel[(b, h, triton.cdiv(p * n, BLOCK))](
        states, a_c, init, final, h, nchunk, p * n, Q=Q, BLOCK=BLOCK, HAS_INIT=initial_state is not None)
    y = torch.empty(b, l, h, p, device=x.device, dtype=x.dtype)
    bl = _blocks(Q, p, n)
    BP = min(64, bl["P"])
    _chunk_scan_fwd_kernel[(b * nchunk * h, Q // bl["T"], triton.cdiv(p, BP))](
        x, B, C, dt_c, a_c, states, y, D if D is not None else A, l, h, nchunk, p, n, h // g, *x.stride(),
        *B.stride(), *C.stride(), *y.stride(), Q=Q, BM=bl["T"], BK=bl["T"], BP=BP, BN=bl["N"], PREC=prec,
        HAS_D=D is not None, num_warps=TUNING["fwd_warps"], num_stages=TUNING["stages"])
    return y, final, dt_c, a_c, states


class _SSDChunkScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, initial_state, D):
        y, final, dt_c, a_c, states = ssd_scan_fwd(x, dt, A, B, C, chunk_size, initial_state, D)
        ctx.save_for_backward(x, dt, A, B, C, dt_c, a_c, states, D)
        ctx.chunk_size = chunk_size
        ctx.has_init = initial_state is not None
        ctx.init_dtype = initial_state.dtype if initial_state is not None else None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        from .ssd_scan_bwd import ssd_scan_bwd

        x, dt, A, B, C, dt_c, a_c, states, D = ctx.saved_tensors
        dx, ddt, dA, dB, dC, dinit = ssd_scan_bwd(dy, dfinal, x, dt, A, B, C, dt_c, a_c, states, ctx.chunk_size)
        dinit = dinit.to(ctx.init_dtype) if ctx.has_init and ctx.needs_input_grad[6] else None
        dD = None
        if D is not None and dy is not None:
            # y += D_h x: dx += D_h dy, dD_h = sum over (b, l, p) of dy x; in fp32.
            dyf = dy.float()
            dx = (dx.float() + dyf * D.float()[:, None]).to(dx.dtype) if dx is not None else dx
            dD = (dyf * x.float()).sum((0, 1, 3)).to(D.dtype) if ctx.needs_input_grad[7] else None
        return dx, ddt, dA, dB, dC, None, dinit, dD


def ssd_chunk_scan(x, dt, A, B, C, chunk_size: int, initial_state=None, D=None):
    """Chunked SSD scan on Triton kernels with a backward; the contract of ``ssmquant.model.ssd.ssd_chunked``.

    Returns (y: (b, l, h, p) in x.dtype, final_state: (b, h, p, n) fp32). Needs CUDA tensors (or
    ``TRITON_INTERPRET=1`` with CPU tensors, for tests) and a power-of-two ``chunk_size`` >= 16. ``D`` (h,), if
    given, adds Mamba-2's skip ``D_h x`` to y inside the last kernel (the mixer's ``y + x * D``, in fp32 before
    y's rounding), with its gradients.
    """
    return _SSDChunkScan.apply(x, dt, A, B, C, chunk_size, initial_state, D)
