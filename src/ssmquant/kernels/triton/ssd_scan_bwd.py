"""Backward of the Triton chunked SSD scan (``ssd_scan.py``): kernels and the launcher ``ssd_scan_bwd``.

Notation of ``ssd_scan.py``; per (b, h) and chunk c, S_c is the state entering the chunk, s_c the chunk's own end
state, a the within-chunk cumsum of dt * A, a_last its last entry, dS_next the gradient w.r.t. S_{c+1}, and

    M_ij = (C_i · B_j) exp(a_i - a_j) dt_j (dy_i · x_j)        for j <= i (the intra-chunk term's gradient mass).

1. ``_chunk_state_kernel`` (forward file, FROM_END=False): the state gradient each chunk's outputs send back,
   ds_c = sum_i exp(a_i) dy_i ⊗ C_i.
2. ``_state_passing_bwd_kernel``, chunks in reverse: dS_next_c = G_{c+1}, G_c = ds_c + exp(a_last,c) G_{c+1},
   G_c_total = dfinal; G_0 is the initial state's gradient. It also writes <dS_next_c, S_{c+1}>, the gradient of
   a_last through the carried state (both its decay of S_c and its share in s_c).
3. ``_chunk_scan_bwd_dx_dB_kernel``, per input column j:
       dx_j = dt_j [ sum_{i >= j} (C_i · B_j) exp(a_i - a_j) dy_i + exp(a_last - a_j) dS_next · B_j ]
       dB_j = dt_j [ sum_{i >= j} (dy_i · x_j) exp(a_i - a_j) C_i + exp(a_last - a_j) x_j · dS_next ]
       ddt_j (direct) = x_j · dx_j / dt_j
4. ``_chunk_scan_bwd_dC_kernel``, per output row i:
       dC_i = exp(a_i) dy_i · S_c + sum_{j <= i} (dy_i · x_j) exp(a_i - a_j) dt_j B_j
5. The decay gradient. With da_k = dL/da_k, the identities (per head)

       C_i · dC_i = sum_{j <= i} M_ij + exp(a_i) dy_i · (S_c C_i)          (= dy_i · y_i)
       B_j · dB_j = sum_{i >= j} M_ij + (the state term's share of j)

   give da_k = C_k · dC_k - B_k · dB_k  (+ <dS_next, S_{c+1}> at k = last): every term is computed in fp32 from the
   kernels' accumulators, no extra products. Then d(dt_k A) = sum_{m >= k} da_m (a is a cumsum), so
   ddt_k += A * that and dA = sum_k dt_k * that. These last steps run on (b, h, c, Q) tensors in PyTorch.

The per-head dB and dC are summed over the heads of a group: a program handles ``HS`` heads of one group in turn
and stores one partial sum, and the remaining (h / g) / HS partials are added in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_scan import _blocks, _chunk_states, _interpreting, _mma, _prec, _state_block


@triton.jit
def _state_passing_bwd_kernel(ds_ptr, st_ptr, final_ptr, dfinal_ptr, a_ptr, dinit_ptr, part_ptr, H, NCHUNK, PN,
                              NBLK, Q: tl.constexpr, BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr):
    """ds (b, c, h, p*n): per-chunk ds_c in, dS_next_c out (in place). Grid (b, h, cdiv(p*n, BLOCK)).

    part (b, h, c, NBLK): this block's share of <dS_next_c, S_{c+1}>; dinit (b, h, p*n): G_0.
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
    S_next = tl.load(final_ptr + (b * H + h) * PN + offs, mask=m, other=0.0)
    for k in range(NCHUNK):
        c = NCHUNK - 1 - k
        off = ((b * NCHUNK + c) * H + h) * PN + offs
        ds = tl.load(ds_ptr + off, mask=m, other=0.0)
        tl.store(ds_ptr + off, G, mask=m)
        tl.store(part_ptr + ((b * H + h) * NCHUNK + c) * NBLK + blk, tl.sum(G * S_next, axis=0))
        S_next = tl.load(st_ptr + off, mask=m, other=0.0)
        G = ds + tl.exp(tl.load(a_ptr + ((b * H + h) * NCHUNK + c) * Q + Q - 1)) * G
    tl.store(dinit_ptr + (b * H + h) * PN + offs, G, mask=m)


@triton.jit
def _chunk_scan_bwd_dx_dB_kernel(x_ptr, B_ptr, C_ptr, dy_ptr, dt_ptr, a_ptr, dsn_ptr,
                                 dx_ptr, dB_ptr, ddt_ptr, daneg_ptr, L, H, NCHUNK, P, N, HPG, HS,
                                 s_xb, s_xl, s_xh, s_xp, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
                                 s_yb, s_yl, s_yh, s_yp, s_ob, s_ol, s_oh, s_op,
                                 Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                                 PREC: tl.constexpr):
    """Columns j of chunk c for heads hs*HS .. hs*HS + HS - 1: grid (b * c * (h / HS), Q / BT).

    Writes dx (b, l, h, p) in x's dtype, the group-partial dB (b, l, h / HS, n) fp32, and per head the direct
    ddt_j and B_j · dB_j into (b, h, c, Q) fp32.
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
        tl.store(ddt_ptr + row + j, tl.sum(xj.to(tl.float32) * dx_acc, axis=1))
        dB_h = dB_h * dt_j[:, None]
        tl.store(daneg_ptr + row + j, tl.sum(Bj.to(tl.float32) * dB_h, axis=1))
        dB_acc += dB_h
    tl.store(dB_ptr + ((b * L + pos_j[:, None]) * NHS + hs) * N + nn[None, :], dB_acc,
             mask=mj[:, None] & mn[None, :])


@triton.jit
def _chunk_scan_bwd_dC_kernel(x_ptr, B_ptr, C_ptr, dy_ptr, dt_ptr, a_ptr, st_ptr, dC_ptr, dapos_ptr,
                              L, H, NCHUNK, P, N, HPG, HS,
                              s_xb, s_xl, s_xh, s_xp, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
                              s_yb, s_yl, s_yh, s_yp,
                              Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                              PREC: tl.constexpr):
    """Rows i of chunk c for heads hs*HS .. hs*HS + HS - 1: grid (b * c * (h / HS), Q / BT).

    Writes the group-partial dC (b, l, h / HS, n) fp32 and per head C_i · dC_i into (b, h, c, Q) fp32.
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
        a_i = tl.load(a_ptr + row + i)
        dyi = tl.load(dy_ptr + b * s_yb + pos_i[:, None] * s_yl + h * s_yh + pp[None, :] * s_yp,
                      mask=mi[:, None] & mp[None, :], other=0.0)                # (BT, BP)
        S = tl.load(st_ptr + ((b * NCHUNK + c) * H + h) * P * N + pp[:, None] * N + nn[None, :],
                    mask=mp[:, None] & mn[None, :], other=0.0)                  # (BP, BN)
        dC_h = _mma(dyi, S.to(dyi.dtype), PREC) * tl.exp(a_i)[:, None]
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
            w = tl.where(i[:, None] >= j[None, :],
                         tl.exp(tl.minimum(a_i[:, None] - a_j[None, :], 0.0)) * dt_j[None, :], 0.0)
            dyx = _mma(dyi, tl.trans(xj), PREC)                          # (BT_i, BT_j)
            dC_h += _mma((dyx * w).to(Bj.dtype), Bj, PREC)
        tl.store(dapos_ptr + row + i, tl.sum(Ci.to(tl.float32) * dC_h, axis=1))
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


def ssd_scan_bwd(dy, dfinal, x, dt, A, B, C, dt_c, a_c, states, final, chunk_size: int):
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
    part = torch.empty(b, h, nchunk, nblk, device=x.device, dtype=torch.float32)
    dinit = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    dfin = dfinal.float().contiguous() if dfinal is not None else dinit
    _state_passing_bwd_kernel[(b, h, nblk)](dsn, states, final, dfin, a_c, dinit, part, h, nchunk, p * n, nblk,
                                            Q=Q, BLOCK=BLOCK, HAS_DFINAL=dfinal is not None)

    # 3-4. Per-chunk gradients.
    hs = _heads_per_program(hpg, b * nchunk * (Q // BT))
    nhs = h // hs
    dx = torch.empty(b, l, h, p, device=x.device, dtype=x.dtype)
    dB_part = torch.empty(b, l, nhs, n, device=x.device, dtype=torch.float32)
    dC_part = torch.empty_like(dB_part)
    ddt_dir = torch.empty_like(dt_c)
    da_neg = torch.empty_like(dt_c)
    da_pos = torch.empty_like(dt_c)
    grid = (b * nchunk * nhs, Q // BT)
    common = (l, h, nchunk, p, n, hpg, hs, *x.stride(), *Bx.stride(), *Cx.stride(), *dy.stride())
    _chunk_scan_bwd_dx_dB_kernel[grid](x, Bx, Cx, dy, dt_c, a_c, dsn, dx, dB_part, ddt_dir, da_neg, *common,
                                       *dx.stride(), Q=Q, BT=BT, BP=BP, BN=BN, PREC=prec, num_warps=4)
    _chunk_scan_bwd_dC_kernel[grid](x, Bx, Cx, dy, dt_c, a_c, states, dC_part, da_pos, *common,
                                    Q=Q, BT=BT, BP=BP, BN=BN, PREC=prec, num_warps=4)
    dB = dB_part.view(b, l, g, nhs // g, n).sum(3).to(B.dtype)
    dC = dC_part.view(b, l, g, nhs // g, n).sum(3).to(C.dtype)

    # 5. Decay gradient: da -> reverse cumsum -> ddt and dA.
    da = da_pos - da_neg                                                        # (b, h, c, Q)
    da[..., -1] += part.sum(-1)
    r = da.flip(-1).cumsum(-1).flip(-1)
    A32 = A.float()
    ddt = (ddt_dir + A32[None, :, None, None] * r).view(b, h, nchunk * Q)[:, :, :l].transpose(1, 2).to(dt.dtype)
    dA = (dt_c * r).sum((0, 2, 3)).to(A.dtype)
    return dx, ddt, dA, dB, dC, dinit
