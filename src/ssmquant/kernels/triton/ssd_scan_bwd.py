"""Backward of the Triton chunked SSD scan (``ssd_scan.py``): kernels and the launcher ``ssd_scan_bwd``.

Notation of ``ssd_scan.py``; per (b, h) and chunk c, S_c is the state entering the chunk, s_c the chunk's own end
state, a the within-chunk cumsum of dt * A (a_k = sum_{m <= k} dt_m A), a_last its last entry, dS_next the gradient
w.r.t. S_{c+1}, and for j <= i

    P_ij = (C_i · B_j) exp(a_i - a_j) (dy_i · x_j),     M_ij = P_ij dt_j   (the intra-chunk term's gradient mass).

1. ``_chunk_state_kernel`` (forward file, FROM_END=False): the state gradient each chunk's outputs send back,
   ds_c = sum_i exp(a_i) dy_i ⊗ C_i.
2. ``_state_passing_bwd_kernel``, chunks in reverse: dS_next_c = G_{c+1}, G_c = ds_c + exp(a_last,c) G_{c+1},
   G_c_total = dfinal; G_0 is the initial state's gradient. Also <dS_next_c, exp(a_last) S_c> (the carried state's
   dependence on every decay of the chunk).
3. ``_chunk_scan_bwd_dx_dB_kernel``, per input column j:
       dx_j = dt_j [ sum_{i >= j} (C_i · B_j) exp(a_i - a_j) dy_i + exp(a_last - a_j) dS_next · B_j ]
       dB_j = dt_j [ sum_{i >= j} (dy_i · x_j) exp(a_i - a_j) C_i + exp(a_last - a_j) x_j · dS_next ]
       and the state term's share of ddt_j: T_j = x_j · (exp(a_last - a_j) dS_next B_j).
4. ``_chunk_scan_bwd_dC_kernel``, per output row i:
       dC_i = exp(a_i) dy_i · S_c + sum_{j <= i} (dy_i · x_j) exp(a_i - a_j) dt_j B_j
       the carried state's share of the decay gradient off_i = dy_i · exp(a_i) S_c C_i = C_i · dC_off_i, and from
       the fp32 P and M tiles the column sums sum_{i >= k} P_ik and the cross sums sum_{i >= k} sum_{j < k} M_ij.
5. With L_k = d loss / d(dt_k A) (a_i - a_j = sum_{j < k <= i} dt_k A, a_last - a_j = sum_{k > j} dt_k A):

       L_k = sum_{i >= k} sum_{j < k} M_ij + sum_{i >= k} off_i + sum_{j < k} dt_j T_j + <dS_next, exp(a_last) S_c>
       ddt_k = sum_{i >= k} P_ik + T_k + A L_k,        dA = sum_k dt_k L_k.

   Every term is a sum of fp32 products of the inputs: mamba-ssm's first backward took L from the difference of
   two large sums (dy·y and x·dx) and lost it to cancellation in 16-bit; this form does not. The sums over row
   blocks and the cumsums over k run on (b, h, c, Q) tensors in PyTorch.

The per-head dB and dC are summed over the heads of a group: a program handles ``HS`` heads of one group in turn
and stores one partial sum, and the remaining (h / g) / HS partials are added in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_scan import (
    TUNING,
    _blocks,
    _chunk_states,
    _interpreting,
    _mma,
    _prec,
    _state_block,
)


@triton.jit
def _state_passing_bwd_kernel(ds_ptr, st_ptr, dfinal_ptr, a_ptr, dinit_ptr, part_ptr, H, NCHUNK, PN, NBLK,
                              Q: tl.constexpr, BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr):
    """ds (b, c, h, p*n): per-chunk ds_c in, dS_next_c out (in place). Grid (b, h, cdiv(p*n, BLOCK)).

    part (b, h, c, NBLK): this block's share of <dS_next_c, exp(a_last) S_c>; dinit (b, h, p*n): G_0.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.program_id(2)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_DFINAL:
        G = tl.load(dfinal_ptr + (b * H + h) * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        G = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(NCHUNK):
        c = NCHUNK - 1 - k
        off = ((b * NCHUNK + c) * H + h) * PN + offs
        ds = tl.load(ds_ptr + off, mask=m, other=0.0)
        tl.store(ds_ptr + off, G, mask=m)
        decay = tl.exp(tl.load(a_ptr + ((b * H + h) * NCHUNK + c) * Q + Q - 1))
        S_c = tl.load(st_ptr + off, mask=m, other=0.0)
        tl.store(part_ptr + ((b * H + h) * NCHUNK + c) * NBLK + blk, tl.sum(G * S_c, axis=0) * decay)
        G = ds + decay * G
    tl.store(dinit_ptr + (b * H + h) * PN + offs, G, mask=m)


@triton.jit
def _chunk_scan_bwd_dx_dB_kernel(x_ptr, B_ptr, C_ptr, dy_ptr, dt_ptr, a_ptr, dsn_ptr,
                                 dx_ptr, dB_ptr, tst_ptr, L, H, NCHUNK, P, N, HPG, HS,
                                 s_xb, s_xl, s_xh, s_xp, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
                                 s_yb, s_yl, s_yh, s_yp, s_ob, s_ol, s_oh, s_op,
                                 Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                                 PREC: tl.constexpr):
    """Columns j of chunk c for heads hs*HS .. hs*HS + HS - 1: grid (b * c * (h / HS), Q / BT).

    Writes dx (b, l, h, p) in x's dtype, the group-partial dB (b, l, h / HS, n) fp32, and per head the state
    term's x_j · (exp(a_last - a_j) dS_next B_j) into tst (b, h, c, Q) fp32 (its share of ddt_j, without dt_j).
    """
    pid = tl.program_id(0)
    NHS = H // HS
    hs = pid % NHS
    c = (pid // NHS) % NCHUNK
    b = pid // (NHS * NCHUNK)
    g = (hs * HS) // HPG
    pid_k = tl.program_id(1)
    j = pid_k * BT + tl.arange(0, BT)
    pp = tl.arange(0, BP)
    nn = tl.arange(0, BN)
    pos_j = c * Q + j
    mj = pos_j < L
    mp = pp < P
    mn = nn < N
    Bj = tl.load(B_ptr + b * s_bb + pos_j[:, None] * s_bl + g * s_bg + nn[None, :] * s_bn,
                 mask=mj[:, None] & mn[None, :], other=0.0)                     # (BT, BN)
    dB_acc = tl.zeros((BT, BN), dtype=tl.float32)
    hi = tl.minimum(Q, L - c * Q)
    for hh in range(HS):
        h = hs * HS + hh
        row = ((b * H + h) * NCHUNK + c) * Q
        a_j = tl.load(a_ptr + row + j)
        dt_j = tl.load(dt_ptr + row + j)
        a_last = tl.load(a_ptr + row + Q - 1)
        xj = tl.load(x_ptr + b * s_xb + pos_j[:, None] * s_xl + h * s_xh + pp[None, :] * s_xp,
                     mask=mj[:, None] & mp[None, :], other=0.0)                 # (BT, BP)
        dsn = tl.load(dsn_ptr + ((b * NCHUNK + c) * H + h) * P * N + pp[:, None] * N + nn[None, :],
                      mask=mp[:, None] & mn[None, :], other=0.0).to(xj.dtype)  # (BP, BN)
        to_end = tl.exp(a_last - a_j)[:, None]
        dx_acc = _mma(Bj, tl.trans(dsn), PREC) * to_end                 # (BT, BP)
        dB_h = _mma(xj, dsn, PREC) * to_end                           # (BT, BN)
        tl.store(tst_ptr + row + j, tl.sum(xj.to(tl.float32) * dx_acc, axis=1))
        for i0 in range(pid_k * BT, hi, BT):
            i = i0 + tl.arange(0, BT)
            pos_i = c * Q + i
            mi = pos_i < L
            Ci = tl.load(C_ptr + b * s_cb + pos_i[:, None] * s_cl + g * s_cg + nn[None, :] * s_cn,
                         mask=mi[:, None] & mn[None, :], other=0.0)             # (BT, BN)
            dyi = tl.load(dy_ptr + b * s_yb + pos_i[:, None] * s_yl + h * s_yh + pp[None, :] * s_yp,
                          mask=mi[:, None] & mp[None, :], other=0.0)            # (BT, BP)
            a_i = tl.load(a_ptr + row + i)
            decay = tl.where(i[None, :] >= j[:, None], tl.exp(tl.minimum(a_i[None, :] - a_j[:, None], 0.0)), 0.0)
            cbT = _mma(Bj, tl.trans(Ci), PREC)                           # (BT_j, BT_i)
            dx_acc += _mma((cbT * decay).to(dyi.dtype), dyi, PREC)
            xdy = _mma(xj, tl.trans(dyi), PREC)                          # (BT_j, BT_i)
            dB_h += _mma((xdy * decay).to(Ci.dtype), Ci, PREC)
        tl.store(dx_ptr + b * s_ob + pos_j[:, None] * s_ol + h * s_oh + pp[None, :] * s_op,
                 (dx_acc * dt_j[:, None]).to(dx_ptr.dtype.element_ty), mask=mj[:, None] & mp[None, :])
        dB_acc += dB_h * dt_j[:, None]
    tl.store(dB_ptr + ((b * L + pos_j[:, None]) * NHS + hs) * N + nn[None, :], dB_acc,
             mask=mj[:, None] & mn[None, :])


@triton.jit
def _chunk_scan_bwd_dC_kernel(x_ptr, B_ptr, C_ptr, dy_ptr, dt_ptr, a_ptr, st_ptr, dC_ptr, off_ptr, ppart_ptr,
                              mpart_ptr, L, H, NCHUNK, P, N, HPG, HS,
                              s_xb, s_xl, s_xh, s_xp, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
                              s_yb, s_yl, s_yh, s_yp,
                              Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                              PREC: tl.constexpr):
    """Rows i of chunk c for heads hs*HS .. hs*HS + HS - 1: grid (b * c * (h / HS), Q / BT).

    Writes the group-partial dC (b, l, h / HS, n) fp32 and, per head, into (b, h, c, ...) fp32:
    off_i = C_i · dC_off_i (= dy_i · y_off_i), and per column k this row block's share of
    sum_{i >= k} P_ik (ppart; P = M / dt_j) and sum_{i >= k} sum_{j < k} M_ij (mpart), both (Q / BT, Q).
    """
    pid = tl.program_id(0)
    NHS = H // HS
    hs = pid % NHS
    c = (pid // NHS) % NCHUNK
    b = pid // (NHS * NCHUNK)
    g = (hs * HS) // HPG
    pid_m = tl.program_id(1)
    i = pid_m * BT + tl.arange(0, BT)
    pp = tl.arange(0, BP)
    nn = tl.arange(0, BN)
    pos_i = c * Q + i
    mi = pos_i < L
    mp = pp < P
    mn = nn < N
    Ci = tl.load(C_ptr + b * s_cb + pos_i[:, None] * s_cl + g * s_cg + nn[None, :] * s_cn,
                 mask=mi[:, None] & mn[None, :], other=0.0)                     # (BT, BN)
    dC_acc = tl.zeros((BT, BN), dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BT, L - c * Q)
    for hh in range(HS):
        h = hs * HS + hh
        row = ((b * H + h) * NCHUNK + c) * Q
        part = (((b * H + h) * NCHUNK + c) * (Q // BT) + pid_m) * Q
        a_i = tl.load(a_ptr + row + i)
        dyi = tl.load(dy_ptr + b * s_yb + pos_i[:, None] * s_yl + h * s_yh + pp[None, :] * s_yp,
                      mask=mi[:, None] & mp[None, :], other=0.0)                # (BT, BP)
        S = tl.load(st_ptr + ((b * NCHUNK + c) * H + h) * P * N + pp[:, None] * N + nn[None, :],
                    mask=mp[:, None] & mn[None, :], other=0.0)                  # (BP, BN)
        dC_h = _mma(dyi, S.to(dyi.dtype), PREC) * tl.exp(a_i)[:, None]
        tl.store(off_ptr + row + i, tl.sum(Ci.to(tl.float32) * dC_h, axis=1))
        carry = tl.zeros((BT,), dtype=tl.float32)                              # sum_{j < j0} M_ij per row
        for j0 in range(0, hi, BT):
            j = j0 + tl.arange(0, BT)
            pos_j = c * Q + j
            mj = pos_j < L
            xj = tl.load(x_ptr + b * s_xb + pos_j[:, None] * s_xl + h * s_xh + pp[None, :] * s_xp,
                         mask=mj[:, None] & mp[None, :], other=0.0)             # (BT, BP)
            Bj = tl.load(B_ptr + b * s_bb + pos_j[:, None] * s_bl + g * s_bg + nn[None, :] * s_bn,
                         mask=mj[:, None] & mn[None, :], other=0.0)             # (BT, BN)
            a_j = tl.load(a_ptr + row + j)
            dt_j = tl.load(dt_ptr + row + j)
            causal = i[:, None] >= j[None, :]
            decay = tl.where(causal, tl.exp(tl.minimum(a_i[:, None] - a_j[None, :], 0.0)), 0.0)
            dyx = _mma(dyi, tl.trans(xj), PREC) * decay                          # (BT_i, BT_j)
            dC_h += _mma((dyx * dt_j[None, :]).to(Bj.dtype), Bj, PREC)
            # The decay gradient straight from fp32 terms (no difference of large sums): P, then M = P dt_j.
            Pm = dyx * _mma(Ci, tl.trans(Bj), PREC)
            tl.store(ppart_ptr + part + j, tl.sum(Pm, axis=0))
            M = Pm * dt_j[None, :]
            before = tl.cumsum(M, axis=1) - M + carry[:, None]                 # sum_{j' < j} M_ij'
            tl.store(mpart_ptr + part + j, tl.sum(tl.where(causal, before, 0.0), axis=0))
            carry += tl.sum(M, axis=1)
        dC_acc += dC_h
    tl.store(dC_ptr + ((b * L + pos_i[:, None]) * NHS + hs) * N + nn[None, :], dC_acc,
             mask=mi[:, None] & mn[None, :])


def _heads_per_program(hpg: int, programs_per_head: int) -> int:
    """Heads one dB / dC program sums (a divisor of the heads per group): fewer partials to add afterwards, while
    keeping at least ~256 programs to fill the GPU."""
    if _interpreting():
        return 2 if hpg % 2 == 0 else 1     # exercise the in-kernel head loop in tests, cheaply
    hs = 1
    while hs < 8 and hpg % (2 * hs) == 0 and programs_per_head * hpg // (2 * hs) >= 256:
        hs *= 2
    return hs


def ssd_scan_bwd(dy, dfinal, x, dt, A, B, C, dt_c, a_c, states, chunk_size: int):
    """Gradients (dx, ddt, dA, dB, dC, dinit) of ``ssd_chunk_scan``; see the module docstring.

    dy (b, l, h, p) or None; dfinal (b, h, p, n) or None; the rest as saved by ``ssd_scan_fwd``. dinit is fp32.
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Q = chunk_size
    nchunk = dt_c.shape[2]
    hpg = h // g
    prec = _prec(x.dtype)
    Bx, Cx = B.to(x.dtype), C.to(x.dtype)
    dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype)
    bl = _blocks(Q, p, n)
    BT, BP, BN = bl["T"], bl["P"], bl["N"]

    # 1-2. State gradients, chunks in reverse.
    dsn = _chunk_states(dy, Cx, dt_c, a_c, Q, from_end=False, prec=prec)      # (b, c, h, p, n)
    BLOCK = _state_block(p * n)
    nblk = triton.cdiv(p * n, BLOCK)
    carried = torch.empty(b, h, nchunk, nblk, device=x.device, dtype=torch.float32)
    dinit = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    dfin = dfinal.float().contiguous() if dfinal is not None else dinit
    _state_passing_bwd_kernel[(b, h, nblk)](dsn, states, dfin, a_c, dinit, carried, h, nchunk, p * n, nblk,
                                            Q=Q, BLOCK=BLOCK, HAS_DFINAL=dfinal is not None)

    # 3-4. Per-chunk gradients.
    hs = _heads_per_program(hpg, b * nchunk * (Q // BT))
    nhs = h // hs
    dx = torch.empty(b, l, h, p, device=x.device, dtype=x.dtype)
    dB_part = torch.empty(b, l, nhs, n, device=x.device, dtype=torch.float32)
    dC_part = torch.empty_like(dB_part)
    t_state = torch.empty_like(dt_c)
    off = torch.empty_like(dt_c)
    ppart = torch.zeros(b, h, nchunk, Q // BT, Q, device=x.device, dtype=torch.float32)
    mpart = torch.zeros_like(ppart)
    grid = (b * nchunk * nhs, Q // BT)
    common = (l, h, nchunk, p, n, hpg, hs, *x.stride(), *Bx.stride(), *Cx.stride(), *dy.stride())
    _chunk_scan_bwd_dx_dB_kernel[grid](x, Bx, Cx, dy, dt_c, a_c, dsn, dx, dB_part, t_state, *common,
                                       *dx.stride(), Q=Q, BT=BT, BP=BP, BN=BN, PREC=prec,
                                       num_warps=TUNING["bwd_warps"], num_stages=TUNING["stages"])
    _chunk_scan_bwd_dC_kernel[grid](x, Bx, Cx, dy, dt_c, a_c, states, dC_part, off, ppart, mpart, *common,
                                    Q=Q, BT=BT, BP=BP, BN=BN, PREC=prec, num_warps=TUNING["bwd_warps"],
                                    num_stages=TUNING["stages"])
    dB = dB_part.view(b, l, g, nhs // g, n).sum(3).to(B.dtype)
    dC = dC_part.view(b, l, g, nhs // g, n).sum(3).to(C.dtype)

    # 5. Gradient of each step's log-decay dt_k A (the module docstring), then ddt and dA.
    t = dt_c * t_state
    dlog = (mpart.sum(3) + off.flip(-1).cumsum(-1).flip(-1) + (t.cumsum(-1) - t)
            + carried.sum(-1, keepdim=True))                                   # (b, h, c, Q)
    ddt_c = ppart.sum(3) + t_state + A.float()[None, :, None, None] * dlog
    ddt = ddt_c.view(b, h, nchunk * Q)[:, :, :l].transpose(1, 2).to(dt.dtype)
    dA = (dt_c * dlog).sum((0, 2, 3)).to(A.dtype)
    return dx, ddt, dA, dB, dC, dinit
