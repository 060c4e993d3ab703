"""Matrix-vector products for decode: packed ternary (2-bit), binary (1-bit DF-SSM scaffold, + its int8 low-rank
correction), dense fp16 or int8-per-row weights, with fused norms.

    out[m, n] = sum_k W[n, k] * xn[m, k]  (+ u_scale[n] * sum_r U[n, r] t[m, r])  (+ res[m, n])

where ``xn`` is the activation row after an optional fused prologue:

* ``norm="rms"``:   xn = x * rsqrt(mean(x**2) + eps) * nw     (the block's pre-norm; x is the fp32 residual stream)
* ``norm="gated"``: xn = h * rsqrt(mean_group(h**2) + eps) * nw  (Mamba-2's gated RMSNorm; h = y * silu(z) is
  produced by the SSM step kernel, the mean runs over groups of ``norm_group`` channels)

and an optional fused epilogue ``+ res`` (the residual add; ``out`` may be ``res`` itself, updated in place).
Fusing the norms here saves a kernel each: a kernel boundary costs about 1.1 us even inside a CUDA graph, about
what a whole ternary GEMV costs at Mamba-2 1.3B shapes. Every program computes the norm statistics of its row
itself (see "Norm statistics" below).

Grid: (cdiv(N, BN), M). Each program owns BN output rows of one activation row and reads its whole slice of the
weight in tiles of (BN, BKW) words; accumulation is fp32. Batch rows are separate programs, so at M > 1 the weights
are re-read from L2, not from HBM; for M >= 16 the tensor-core GEMM (``gemm.py``) is faster.

2-bit decode, two instructions per weight (``kernels/layout.py`` has the word layout). Field j of a word, masked
in place (one AND), read as fp32 is the *denormal* ``s * 2**(2j - 149)`` (s = code + 1 in {0, 1, 2}); one FFMA
with the activation pre-scaled by ``2**(149 - XS - 2j)`` adds ``s * x * 2**-XS`` exactly (a power of two times
x, no int->float conversion, no offset to subtract per weight). Fields 11..15 come from ``word >> 20``. The ``+ 1``
of the stored codes is removed once per word (minus the sum of its 16 inputs), the group scale once per 4 words,
and ``2**XS`` (XS = 64 keeps |x| < 2**42 finite and products above fp32's normal range down to |x| ~ 2**-62) in
the epilogue. fp32 FMA on NVIDIA GPUs keeps denormal operands (Triton emits ``fma.rn.f32``, not ``.ftz``).
The previous decode (magic number 2**23 in the exponent, then a subtraction) took three instructions per weight
and, with its bookkeeping, 7-8 SASS instructions per weight against 3.6 here (sm_90, in_proj of 1.3B).

Norm statistics: with a single norm group (``rms``, or ``gated`` with ngroups = 1) each program sums x**2 over
the activations it loads anyway for its products and applies the inverse rms in the epilogue (the norm is a scalar
per row, so it commutes with the product); there is no separate pass over the row. With several groups the
statistics are computed first, in a prologue (as the 1-bit and dense paths do).

Tiles: one warp per 128 words of a row (``BKW = 128 * num_warps``) gives the (1, BKW) activation rows the weight
tile's own register layout (4 words per thread), so no layout conversions; each thread holds BN rows.

1-bit fields keep the magic-number decode (``_field1``): ``2**23 + b * 2**p`` minus ``2**23 + 2**(p - 1)`` is
``(b - 1/2) * 2**p``, so the sign ``2b - 1`` costs three instructions per weight. DF-SSM's correction is
``U (V xn)``: ``t = (V xn) * v_scale`` is this kernel on the dense int8 ``V`` with row scales (a launch of r rows),
and the scaffold launch adds ``u_scale * (U t)`` in its epilogue (U's rows load with the weights).

Programmatic dependent launch (``PDL``, Hopper; the rules and their proof are in ``kernels/pdl.py``): the first
weight tile (and U's rows) is loaded *before* ``gdc_wait``, so this kernel's weight traffic overlaps the kernels
before it; nothing the previous kernel writes is read before the wait and nothing is written before it. In mode
"after" (the default) dependents are released after the wait; in mode "early" right after the weight loads are
issued, so the next GEMVs can load their weights too.

Reference: :func:`gemv_ref`. Mirrors nothing in mamba-ssm (it decodes with cuBLAS GEMV and separate norm kernels).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..layout import GemvLowRankWeight, GemvTernaryWeight, dequant_ref, lowrank_linear_ref
from ..pdl import MODES
from ..pdl import resolve as resolve_pdl

_NORMS = {None: 0, "rms": 1, "gated": 2}


@triton.jit
def _lt(i, n, EVEN: tl.constexpr):
    """``i < n``; all-true when EVEN (no partial tiles): a constant mask lets the loads vectorize (16 B)."""
    if EVEN:
        return tl.full(i.shape, 1, tl.int1)
    return i < n


@triton.jit
def _xload(xrow, nw_ptr, k, mask, r, NORM: tl.constexpr):
    """Activations at inputs ``k`` after the fused norm (``r``: the row's or the columns' inverse rms)."""
    v = tl.load(xrow + k, mask=mask, other=0.0).to(tl.float32)
    if NORM != 0:
        v = v * tl.load(nw_ptr + k, mask=mask, other=0.0) * r
    return v


@triton.jit
def _field1(src, xj, POS: tl.constexpr):
    """sign_J * x_J for a 1-bit field at bit POS (1 <= POS <= 22) of ``src``: ``2**23 + b * 2**POS`` minus
    ``2**23 + 2**(POS - 1)`` is ``(b - 1/2) * 2**POS`` exactly, and x is pre-scaled by ``2**(1 - POS)``."""
    f = ((src & (1 << POS)) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + (1 << (POS - 1)))
    return f * (xj * (2.0 / (1 << POS)))[None, :]


@triton.jit
def _gemv_kernel(x_ptr, stride_xm, nw_ptr, w_ptr, stride_wn, s_ptr, stride_sn, res_ptr, stride_rm,
                 out_ptr, stride_om, u_ptr, us_ptr, t_ptr, stride_tm, R, N, K, eps,
                 G: tl.constexpr, KW: tl.constexpr, TERNARY: tl.constexpr,
                 NORM: tl.constexpr, NORM_GS: tl.constexpr, NORM_NG: tl.constexpr, NG_P2: tl.constexpr,
                 ADD_RES: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr, BK_NORM: tl.constexpr,
                 ROW_SCALE: tl.constexpr, PDL: tl.constexpr, BITS: tl.constexpr, LOWRANK: tl.constexpr,
                 RP: tl.constexpr, STATS: tl.constexpr, EVEN: tl.constexpr = False, SUBW: tl.constexpr = 1,
                 XS: tl.constexpr = 64):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = _lt(offs_n, N, EVEN)
    xrow = x_ptr + m * stride_xm
    F: tl.constexpr = 32 // BITS
    KB: tl.constexpr = KW * F
    KWT = K // F
    if LOWRANK:
        # DF-SSM's correction U t (t = V xn, made by a GEMV launched just before): U rows load with the weights.
        rr = tl.arange(0, RP)
        ut = tl.load(u_ptr + offs_n[:, None] * R + rr[None, :], mask=nmask[:, None] & (rr < R)[None, :],
                     other=0).to(tl.float32)
        us = tl.load(us_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    if TERNARY:
        # Issue the first weight tile before the norm prologue, so HBM latency overlaps the statistics.
        cols = tl.arange(0, BKW)
        words = tl.load(w_ptr + offs_n[:, None] * stride_wn + cols[None, :],
                        mask=nmask[:, None] & _lt(cols, KWT, EVEN)[None, :], other=0)
    if ROW_SCALE:
        rs = tl.load(s_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    # Programmatic dependent launch (kernels/pdl.py): the weights above overlap the kernels before this one.
    # PDL = 2 ("early"): the next kernel may start loading its own weights now; 1 ("after"): once x is ready.
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
    if PDL != 0:
        tl.extra.cuda.gdc_wait()
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()

    # ---- prologue: norm statistics of this activation row ----
    r = 1.0
    if NORM == 1 and not STATS:
        ss = tl.zeros([BK_NORM], tl.float32)
        for k0 in range(0, K, BK_NORM):
            kk = k0 + tl.arange(0, BK_NORM)
            v = tl.load(xrow + kk, mask=kk < K, other=0.0).to(tl.float32)
            ss += v * v
        r = tl.rsqrt(tl.sum(ss, 0) / K + eps)
    if NORM == 2 and not STATS:
        gg = tl.arange(0, NG_P2)
        ss2 = tl.zeros([NG_P2, BK_NORM], tl.float32)
        for k0 in range(0, NORM_GS, BK_NORM):
            kk = k0 + tl.arange(0, BK_NORM)
            msk = (gg[:, None] < NORM_NG) & (kk[None, :] < NORM_GS)
            v = tl.load(xrow + gg[:, None] * NORM_GS + kk[None, :], mask=msk, other=0.0).to(tl.float32)
            ss2 += v * v
        rg = tl.rsqrt(tl.sum(ss2, 1) / NORM_GS + eps)                       # (NG_P2,)

    acc = tl.zeros([BN, BKW], tl.float32)
    if TERNARY and BITS == 1:
        for c0 in range(0, KWT, BKW):
            cols = c0 + tl.arange(0, BKW)
            cmask = cols < KWT
            kstart = (cols // KW) * KB
            kbase = kstart + cols % KW
            sc = tl.load(s_ptr + offs_n[:, None] * stride_sn + (kstart // G)[None, :],
                         mask=nmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            if NORM == 2:
                rv = tl.sum(tl.where(gg[:, None] == (kstart // NORM_GS)[None, :], rg[:, None], 0.0), 0)
            else:
                rv = r
            # 32 one-bit fields: field 0 from words << 1 (its offset 2**23 + 1/2 is no fp32), 1..22 in place,
            # 23..31 from words >> 22.
            wlo = words << 1
            whi = words >> 22
            t = _field1(wlo, _xload(xrow, nw_ptr, kbase, cmask, rv, NORM), 1)
            for j in tl.static_range(1, 23):
                t += _field1(words, _xload(xrow, nw_ptr, kbase + j * KW, cmask, rv, NORM), j)
            for j in tl.static_range(23, 32):
                t += _field1(whi, _xload(xrow, nw_ptr, kbase + j * KW, cmask, rv, NORM), j - 22)
            acc += t * sc
            nxt = cols + BKW
            words = tl.load(w_ptr + offs_n[:, None] * stride_wn + nxt[None, :],
                            mask=nmask[:, None] & (nxt < KWT)[None, :], other=0)
    elif TERNARY:
        # Denormal decode (module docstring): 2 instructions per weight, AND + FFMA. ``t`` sums
        # (code + 1) * x * 2**-XS over a word's 16 inputs; ``xsum`` the same inputs' x * 2**-XS, subtracted per word.
        # Activations are handled as (1, BKW) rows of the weight tile's layout (no layout conversions when BKW is
        # 128 * num_warps: one row of words per warp-wide 16-byte load). A thread's SUBW adjacent words lie in one
        # pack block, so they are summed before the scale is applied: one scale load per SUBW words.
        acc4 = tl.zeros([BN, BKW // SUBW], tl.float32)
        if STATS:
            ss = tl.zeros([1, BKW], tl.float32)
        for c0 in range(0, KWT, BKW):
            cc = c0 + tl.arange(0, BKW)[None, :]                            # (1, BKW)
            cmask = _lt(cc, KWT, EVEN)
            kbase = (cc // KW) * KB + cc % KW                               # input of field 0
            if NORM == 2 and not STATS:
                rv = tl.sum(tl.where(gg[:, None] == (cc // KW) * KB // NORM_GS, rg[:, None], 0.0), 0)[None, :]
            else:
                rv = 1.0
            whi = (words.to(tl.uint32, bitcast=True) >> 20).to(tl.int32, bitcast=True)    # fields 11..15 at 1..5
            xsum = tl.zeros([1, BKW], tl.float32)
            t = tl.zeros([BN, BKW], tl.float32)
            for j in tl.static_range(16):
                v = tl.load(xrow + kbase + j * KW, mask=cmask, other=0.0).to(tl.float32)
                if STATS:
                    ss += v * v
                    v = v * tl.load(nw_ptr + kbase + j * KW, mask=cmask, other=0.0)
                elif NORM != 0:
                    v = v * tl.load(nw_ptr + kbase + j * KW, mask=cmask, other=0.0) * rv
                xsum += v
                if j < 11:
                    f = (words & (3 << (2 * j))).to(tl.float32, bitcast=True)
                    t += f * (v * (2.0 ** (149 - XS - 2 * j)))
                else:
                    f = (whi & (3 << (2 * (j - 10)))).to(tl.float32, bitcast=True)
                    t += f * (v * (2.0 ** (149 - XS - 2 * (j - 10))))
            t4 = tl.sum(tl.reshape(t, [BN, BKW // SUBW, SUBW]), 2)            # (BN, BKW / SUBW)
            x4 = tl.sum(tl.reshape(xsum, [1, BKW // SUBW, SUBW]), 2)          # (1, BKW / SUBW)
            c4 = c0 + tl.arange(0, BKW // SUBW)[None, :] * SUBW              # first word of each group
            sc = tl.load(s_ptr + offs_n[:, None] * stride_sn + (c4 // KW) * KB // G,
                         mask=nmask[:, None] & _lt(c4, KWT, EVEN), other=0.0).to(tl.float32)
            acc4 += (t4 - x4 * (2.0 ** -XS)) * sc
            # Prefetch the next weight tile (fully masked after the last).
            nxt = cc + BKW
            words = tl.load(w_ptr + offs_n[:, None] * stride_wn + nxt,
                            mask=nmask[:, None] & _lt(nxt, KWT, EVEN) & (cc * 0 + c0 + BKW < KWT), other=0)
        if STATS:
            r = tl.rsqrt(tl.sum(tl.sum(ss, 1), 0) / K + eps)
        r = r * (2.0 ** XS)
    else:
        for k0 in range(0, K, BKW):
            kk = k0 + tl.arange(0, BKW)
            kmask = kk < K
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + kk[None, :], mask=nmask[:, None] & kmask[None, :],
                        other=0.0).to(tl.float32)
            if NORM == 2:
                rv = tl.sum(tl.where(gg[:, None] == (kk // NORM_GS)[None, :], rg[:, None], 0.0), 0)
            else:
                rv = r
            acc += w * _xload(xrow, nw_ptr, kk, kmask, rv, NORM)[None, :]

    if TERNARY and BITS == 2:
        out = tl.sum(acc4, 1) * r
    else:
        out = tl.sum(acc, 1)
    if ROW_SCALE:
        out = out * rs
    if LOWRANK:
        tv = tl.load(t_ptr + m * stride_tm + rr, mask=rr < R, other=0.0)
        out += us * tl.sum(ut * tv[None, :], 1)
    if ADD_RES:
        out += tl.load(res_ptr + m * stride_rm + offs_n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)


def default_config(N: int, K: int, ternary: bool, bits: int = 2, int8: bool = False) -> dict:
    """Tile sizes: every program loads its whole weight slice in one or two tiles, so many loads are in flight.
    ``int8``: dense int8 rows without a fused norm."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        # The CPU interpreter's cost grows with the number of programs, not with tile size.
        return dict(BN=min(256, triton.next_power_of_2(N)), BKW=min(64, triton.next_power_of_2(K * bits // 32)),
                    num_warps=4)
    if ternary and bits == 1:
        # Each activation slice serves 32 fields of a word but only the rows of its thread: more rows per program
        # than for 2-bit (SASS for sm_90: 6.8 instructions per weight at 32 x 64 words, 9.2 at 16 x 64).
        return dict(BN=32, BKW=min(triton.next_power_of_2(K // 32), 64), num_warps=4)
    if ternary:
        # 8 rows x 4 words per thread, one warp per 128 words of a row (the activation rows then share the weight
        # tile's register layout): the whole slice is loaded at once. SASS for sm_90 (in_proj 2048 -> 8512): 3.6
        # instructions per weight in 160 registers. The cap matters: without one ptxas spills, with 255 it takes
        # 242 registers, 8 warps per SM, and in_proj's 1064 warps need a second wave (5.96 us on H100).
        # Rows of 128 / 256 words (1.3B) take one or two whole tiles; other rows take 64-word tiles, the last one
        # masked. Measured end to end on H100 (benchmarks/decode_tiles.py, benchmarks/RESULTS.md): 2.7B (160 / 320
        # words) 1.90 ms/token at 64 / 64 against 2.23-2.63 with other tiles (unmasked 32 / 64: 2.63); 130m's
        # out_proj (96 words) 0.290 at 64 against 0.321 at 128 and 0.508 at 32.
        kwt = K // 16
        if kwt % 256 == 0:
            bkw = 256
        elif kwt % 128 == 0:
            bkw = 128
        else:
            bkw = min(64, triton.next_power_of_2(kwt))
        return dict(BN=8, BKW=bkw, num_warps=max(1, bkw // 128), maxnreg=168)
    # Measured on H100 (benchmarks/gpu_inference.py --sweep): 4 rows per program for the projections, 8 for the head;
    # the int8 head at 4 rows and 2 warps: 37.8-38.2 against 39.9-40.0 us at 8 rows and 4 warps at 1.3B
    # (benchmarks/head_tiles.py, run 49).
    if int8 and N >= 16384 and K >= 512:
        return {"BN": 4, "BKW": 512, "num_warps": 2}
    return dict(BN=4 if N < 16384 else 8, BKW=512 if K >= 512 else triton.next_power_of_2(K), num_warps=4)


def gemv(x: torch.Tensor, weight, *, norm: str | None = None, norm_weight: torch.Tensor | None = None,
         norm_group: int | None = None, eps: float = 1e-5, residual: torch.Tensor | None = None,
         out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32, config: dict | None = None,
         row_scale: torch.Tensor | None = None, lowrank_config: dict | None = None) -> torch.Tensor:
    """x (M, K) -> (M, N). ``weight``: :class:`GemvTernaryWeight` (2-bit ternary or 1-bit binary),
    :class:`GemvLowRankWeight` (DF-SSM) or a dense (N, K) tensor. See the module docstring.

    ``residual`` (M, N) fp32 is added; ``out`` may be ``residual`` (in-place residual update). ``row_scale`` (N,)
    multiplies each output row (a dense int8 weight with one scale per row: the int8 LM head). A DF-SSM weight
    takes two launches: ``t = (V xn) * v_scale`` (this same kernel on the int8 ``V`` with its row scales, config
    ``lowrank_config``), then the scaffold GEMV whose epilogue adds ``u_scale * (U t)``.
    """
    lowrank = isinstance(weight, GemvLowRankWeight)
    t = None
    if lowrank:
        if weight.rank:
            t = gemv(x, weight.v_q, norm=norm, norm_weight=norm_weight, norm_group=norm_group, eps=eps,
                     row_scale=weight.v_scale, config=lowrank_config)          # (M, r) fp32
        weight_lr, weight = weight, weight.scaffold
    ternary = isinstance(weight, GemvTernaryWeight)
    if row_scale is not None and (ternary or row_scale.shape != (weight.shape[0],)):
        raise ValueError("row_scale applies to a dense (N, K) weight and must be (N,)")
    N, K = weight.shape
    M = x.shape[0]
    if x.dim() != 2 or x.shape[1] != K or x.stride(1) != 1:
        raise ValueError(f"x must be (M, {K}) with unit last stride, got {tuple(x.shape)}")
    if norm not in _NORMS:
        raise ValueError(f"norm={norm!r}, expected one of {list(_NORMS)}")
    if norm is not None and (norm_weight is None or norm_weight.shape != (K,)):
        raise ValueError("a fused norm needs norm_weight of shape (K,)")
    ng = 1
    gs = K
    if norm == "gated":
        gs = norm_group or K
        ng = K // gs
        if K % gs or (ternary and gs % weight.block):
            raise ValueError(f"gated norm group {gs} must divide K={K} and be a multiple of the pack block")
    if out is None:
        out = torch.empty(M, N, device=x.device, dtype=out_dtype)
    if residual is not None and residual.shape != (M, N):
        raise ValueError(f"residual must be ({M}, {N})")
    # (int8 rows without a fused norm, as the decoder's head after the persistent step: their own tile; with the norm
    # every program reads the activations twice, and more programs cost more: 451.5 against 445.8 us a step, run 34.)
    int8_plain = not ternary and weight.dtype == torch.int8 and norm is None
    cfg = dict(default_config(N, K, ternary, weight.bits if ternary else 2, int8_plain), **(config or {}))
    pdl = resolve_pdl(cfg.pop("pdl", None))
    if ternary:
        w_ptr, stride_wn, s_ptr, stride_sn = weight.words, weight.words.stride(0), weight.scale, weight.scale.stride(0)
        G, KW, bits = weight.group_size, weight.words_per_block, weight.bits
    else:
        if weight.stride(1) != 1:
            raise ValueError("dense weight must have unit last stride")
        w_ptr, stride_wn, G, KW, bits = weight, weight.stride(0), 1, 1, 2
        s_ptr, stride_sn = (row_scale, 0) if row_scale is not None else (weight, 0)
    if t is not None:
        u, us, R = weight_lr.u_q, weight_lr.u_scale, weight_lr.rank
    else:
        u, us, R, t = w_ptr, w_ptr, 0, out
    nw = norm_weight if norm_weight is not None else x
    res = residual if residual is not None else out
    grid = (triton.cdiv(N, cfg["BN"]), M)
    _gemv_kernel[grid](
        x, x.stride(0), nw, w_ptr, stride_wn, s_ptr, stride_sn, res, res.stride(0), out, out.stride(0),
        u, us, t, t.stride(0), R, N, K, eps,
        G=G, KW=KW, TERNARY=ternary, NORM=_NORMS[norm], NORM_GS=gs, NORM_NG=ng,
        NG_P2=triton.next_power_of_2(ng), ADD_RES=residual is not None, BN=cfg["BN"], BKW=cfg["BKW"],
        BK_NORM=min(1024, triton.next_power_of_2(gs)), ROW_SCALE=row_scale is not None, PDL=MODES.index(pdl),
        BITS=bits,
        LOWRANK=R > 0, RP=triton.next_power_of_2(max(R, 1)), **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}),
        STATS=ternary and bits == 2 and norm is not None and ng == 1,
        EVEN=ternary and bits == 2 and N % cfg["BN"] == 0 and (K // 16) % cfg["BKW"] == 0,
        SUBW=min(4, KW, cfg["BKW"]), num_warps=cfg["num_warps"],
        **({"launch_pdl": True} if pdl else {}))
    return out


def norm_ref(x: torch.Tensor, norm: str | None = None, norm_weight: torch.Tensor | None = None,
             norm_group: int | None = None, eps: float = 1e-5) -> torch.Tensor:
    """The fused prologue alone, in fp32: x (M, K) -> xn (M, K)."""
    xf = x.float()
    K = xf.shape[1]
    if norm == "rms":
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    elif norm == "gated":
        hg = xf.unflatten(-1, (-1, norm_group or K))
        xf = (hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * norm_weight.float()
    return xf


def gemv_ref(x: torch.Tensor, weight, *, norm: str | None = None, norm_weight: torch.Tensor | None = None,
             norm_group: int | None = None, eps: float = 1e-5, residual: torch.Tensor | None = None,
             row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch :func:`gemv` in fp32: x (M, K) -> (M, N)."""
    xf = norm_ref(x, norm, norm_weight, norm_group, eps)
    if isinstance(weight, GemvLowRankWeight):
        return lowrank_linear_ref(xf, weight) + (0 if residual is None else residual.float())
    W = dequant_ref(weight) if isinstance(weight, GemvTernaryWeight) else weight.float()
    if row_scale is not None:
        W = W * row_scale.float()[:, None]
    out = xf @ W.t()
    return out if residual is None else out + residual.float()
