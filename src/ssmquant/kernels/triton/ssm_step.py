"""One decode step of a Mamba-2 mixer between its two projections, in one kernel.

From the in_proj output ``zxbcdt`` (b, 2e + 2gn + h) = [z, x, B, C, dt] of one token:

    xBC = silu(conv1d over the last d_conv inputs, ring buffer)       (conv state update included)
    dt  = softplus(dt + dt_bias);  S = exp(dt * A) * S + dt * x ⊗ B   (SSM state update in place, fp32)
    y   = S · C + D * x
    h   = y * silu(z)                                                 (the gate; its RMSNorm is fused into out_proj)

Grid: (nheads, headdim / BP, batch). A program owns BP channels of one head: their conv taps and state rows
(BP, d_state). B and C belong to the head's group and are recomputed by every program of the group (2n conv
channels, a few hundred FMAs); only the group's first program writes their conv state.

Programmatic dependent launch (``PDL``): everything that predates this step (the state tile, the ring's older taps
and their part of the conv, the parameters) is loaded before ``gdc_wait``, so only the in_proj output is read
after the in_proj GEMV has finished. Reading the state early is safe only because this kernel releases its
dependents after its wait, whatever the GEMVs do (``kernels/pdl.py`` has the rules and why they suffice).

Conv state as a ring buffer. mamba-ssm rolls its (b, conv_dim, d_conv) window left each step; here programs read
the B/C window that another program writes, so a roll would race. Instead the step with token counter ``T`` (a
device scalar, so the kernel can live in a CUDA graph) writes the new input to slot ``T % d_conv`` and reads the
older inputs from slots ``(T + 1 .. T + d_conv - 1) % d_conv``: disjoint slots, no race. With ``T = 0`` the ring
equals the model cache's oldest-first window, so a prefilled ``InferenceCache`` is used as it is.

Mirrors ``Mamba2Mixer._step`` (itself ``mamba_ssm.modules.mamba2.Mamba2.step``); reference: :func:`ssm_step_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..pdl import resolve as resolve_pdl


@triton.jit
def _silu(v):
    return v / (1.0 + tl.exp(-v))


@triton.jit
def _conv_history(ring_row, convw_ptr, convb_ptr, ch, T, DCONV: tl.constexpr, mask):
    """bias + the d_conv - 1 older taps of channels ``ch`` (xBC-relative), fp32: all of it predates this step."""
    acc = tl.load(convb_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    for i in tl.static_range(DCONV - 1):
        slot = (T + 1 + i) % DCONV
        old = tl.load(ring_row + ch * DCONV + slot, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(convw_ptr + ch * DCONV + i, mask=mask, other=0.0).to(tl.float32) * old
    return acc


@triton.jit
def _conv_finish(zx_row, ring_row, hist, wlast, ch, T, E: tl.constexpr, DCONV: tl.constexpr, write, mask):
    """silu(conv) with this step's input; stores the input in ring slot T % d_conv if ``write`` (0/1)."""
    xin = tl.load(zx_row + E + ch, mask=mask, other=0.0)
    tl.store(ring_row + ch * DCONV + T % DCONV, xin.to(ring_row.dtype.element_ty), mask=mask & ((ch * 0 + write) != 0))
    return _silu(hist + wlast * xin.to(tl.float32))


@triton.jit
def _ssm_step_kernel(zx_ptr, stride_zm, convw_ptr, convb_ptr, ring_ptr, stride_rm, dtb_ptr, A_ptr, D_ptr,
                     state_ptr, stride_sm, h_ptr, stride_hm, pos_ptr,
                     E: tl.constexpr, NH: tl.constexpr, P: tl.constexpr, NS: tl.constexpr, NG: tl.constexpr,
                     DCONV: tl.constexpr, BP: tl.constexpr, PDL: tl.constexpr):
    hd = tl.program_id(0)
    pb = tl.program_id(1)
    m = tl.program_id(2)
    pp = pb * BP + tl.arange(0, BP)                      # channels of this head handled here
    nn = tl.arange(0, NS)
    # Everything up to the wait predates this step (state, ring, parameters): with programmatic dependent launch
    # it overlaps the in_proj GEMV that produces zxbcdt. The state tile is the bulk of the bytes: issued first.
    sp = state_ptr + m * stride_sm + hd * P * NS + pp[:, None] * NS + nn[None, :]
    S = tl.load(sp).to(tl.float32)
    T = tl.load(pos_ptr)
    zx_row = zx_ptr + m * stride_zm
    ring_row = ring_ptr + m * stride_rm
    grp = hd // (NH // NG)
    first_of_group = tl.where(((hd % (NH // NG)) + pb) == 0, 1, 0)
    true_p = pp < P
    true_n = nn < NS
    chx = hd * P + pp
    chb = E + grp * NS + nn
    chc = E + NG * NS + grp * NS + nn
    hx = _conv_history(ring_row, convw_ptr, convb_ptr, chx, T, DCONV, true_p)
    hb = _conv_history(ring_row, convw_ptr, convb_ptr, chb, T, DCONV, true_n)
    hc = _conv_history(ring_row, convw_ptr, convb_ptr, chc, T, DCONV, true_n)
    wx = tl.load(convw_ptr + chx * DCONV + DCONV - 1).to(tl.float32)
    wb = tl.load(convw_ptr + chb * DCONV + DCONV - 1).to(tl.float32)
    wc = tl.load(convw_ptr + chc * DCONV + DCONV - 1).to(tl.float32)
    dtb = tl.load(dtb_ptr + hd)
    A = tl.load(A_ptr + hd)
    Dh = tl.load(D_ptr + hd)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()

    x = _conv_finish(zx_row, ring_row, hx, wx, chx, T, E, DCONV, 1, true_p)
    Bv = _conv_finish(zx_row, ring_row, hb, wb, chb, T, E, DCONV, first_of_group, true_n)
    Cv = _conv_finish(zx_row, ring_row, hc, wc, chc, T, E, DCONV, first_of_group, true_n)
    # The reference rounds conv outputs to the model dtype before the scan; so do we.
    x = x.to(zx_ptr.dtype.element_ty).to(tl.float32)
    Bv = Bv.to(zx_ptr.dtype.element_ty).to(tl.float32)
    Cv = Cv.to(zx_ptr.dtype.element_ty).to(tl.float32)

    dt = tl.load(zx_row + 2 * E + 2 * NG * NS + hd).to(tl.float32) + dtb
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))          # softplus, torch's threshold
    dA = tl.exp(dt * A)
    S = S * dA + (dt * x)[:, None] * Bv[None, :]
    # The state is kept in its buffer's dtype (fp32, or fp16 / bf16 to halve its traffic); y uses the fp32 value.
    tl.store(sp, S.to(state_ptr.dtype.element_ty))
    y = tl.sum(S * Cv[None, :], 1)
    y = y.to(zx_ptr.dtype.element_ty).to(tl.float32) + x * Dh
    z = tl.load(zx_row + hd * P + pp).to(tl.float32)
    tl.store(h_ptr + m * stride_hm + hd * P + pp, y * _silu(z))


def ssm_step(zxbcdt: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, ring: torch.Tensor,
             dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor, state: torch.Tensor, pos: torch.Tensor, *,
             ngroups: int, h_out: torch.Tensor | None = None, BP: int = 16, num_warps: int = 4,
             pdl: bool | str | None = None) -> torch.Tensor:
    """One mixer step between the projections. Returns h = y * silu(z): (b, e) fp32; updates ``ring``, ``state``.

    zxbcdt (b, 2e + 2gn + h) in the model dtype; conv_weight (conv_dim, d_conv) fp32; conv_bias (conv_dim,) fp32;
    ring (b, conv_dim, d_conv) model dtype; dt_bias, A (= -exp(A_log)), D: (h,) fp32; state (b, h, p, n) fp32
    (or fp16 / bf16: updated in fp32, stored rounded), contiguous; pos: int32 device scalar (the token counter
    ``T``, see the module docstring). ``pdl``: launch with programmatic dependent launch (default: where
    supported, ``kernels/pdl.py``; any mode releases after the wait).
    """
    b, h, p, n = state.shape
    conv_dim, dconv = conv_weight.shape
    e = h * p
    if zxbcdt.shape != (b, 2 * e + 2 * ngroups * n + h) or conv_dim != e + 2 * ngroups * n:
        raise ValueError(f"inconsistent shapes: zxbcdt {tuple(zxbcdt.shape)}, state {tuple(state.shape)}, "
                         f"conv {tuple(conv_weight.shape)}, ngroups {ngroups}")
    if not (state.is_contiguous() and ring.is_contiguous() and conv_weight.is_contiguous()):
        raise ValueError("state, ring and conv_weight must be contiguous")
    if n & (n - 1):
        raise ValueError(f"d_state={n} must be a power of two")
    BP = min(BP, triton.next_power_of_2(p))
    if p % BP:
        raise ValueError(f"headdim={p} must be a multiple of BP={BP}")
    if h_out is None:
        h_out = torch.empty(b, e, device=zxbcdt.device, dtype=torch.float32)
    # Whatever the GEMVs' mode, this kernel releases its dependents only after its wait (kernels/pdl.py, rule 3).
    pdl = bool(resolve_pdl(pdl, "ssm"))
    _ssm_step_kernel[(h, p // BP, b)](
        zxbcdt, zxbcdt.stride(0), conv_weight, conv_bias, ring, ring.stride(0), dt_bias, A, D, state,
        state.stride(0), h_out, h_out.stride(0), pos, E=e, NH=h, P=p, NS=n, NG=ngroups, DCONV=dconv, BP=BP,
        PDL=pdl, num_warps=num_warps, **({"launch_pdl": True} if pdl else {}))
    return h_out


def ssm_step_ref(zxbcdt, conv_weight, conv_bias, conv_state, dt_bias, A, D, state, *, ngroups: int):
    """The same step on a mamba-ssm style window (oldest first, rolled left), as ``Mamba2Mixer._step`` does it.

    Updates ``conv_state`` (b, conv_dim, d_conv) and ``state`` in place; returns h (b, e) fp32.
    """
    b, h, p, n = state.shape
    e = h * p
    dtype = zxbcdt.dtype
    z, xBC, dt = torch.split(zxbcdt, [e, e + 2 * ngroups * n, h], dim=-1)
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = xBC.to(conv_state.dtype)
    xBC = F.silu((conv_state.float() * conv_weight.float()).sum(-1) + conv_bias.float()).to(dtype)
    x, B, C = torch.split(xBC, [e, ngroups * n, ngroups * n], dim=-1)
    dt = F.softplus(dt.float() + dt_bias.float())
    x = x.reshape(b, h, p).float()
    Bh = B.float().reshape(b, ngroups, n).repeat_interleave(h // ngroups, dim=1)
    Ch = C.float().reshape(b, ngroups, n).repeat_interleave(h // ngroups, dim=1)
    S = state.float() * torch.exp(dt * A.float())[:, :, None, None] + (dt[:, :, None] * x)[..., None] * Bh[:, :, None]
    state.copy_(S)                                       # rounded to the state's dtype; y uses the fp32 value
    y = torch.einsum("bhpn,bhn->bhp", S, Ch).to(dtype).float() + x * D.float()[:, None]
    return y.reshape(b, e) * F.silu(z.float())
