"""The SSD scan of Mamba-2 in plain PyTorch: a chunked parallel form and a slow sequential reference.

The recurrence (per batch b, head h; state S is (headdim p, d_state n)):

    S_t = exp(dt_t * A_h) * S_{t-1} + (dt_t * x_t) ⊗ B_t
    y_t = S_t · C_t                    (D-skip and gating happen in the mixer, not here)

``ssd_chunked`` follows the block decomposition of the Mamba-2 paper (Dao & Gu 2024, "Transformers are SSMs",
section 6; the official ``ssd_minimal_discrete`` and mamba-ssm's ``mamba_chunk_scan_combined``): split the sequence
into chunks of Q steps, compute within-chunk outputs as a masked (Q, Q) "attention" with decays, carry one state per
chunk across chunks, and add each chunk's contribution from the carried state. Work is O(l·Q) and memory O(l·Q) per
head, linear in length. Departures from the official code: the cross-chunk recurrence is a loop over chunks (it
carries an (h, p, n) state, not a (c, c) decay matrix), so memory stays linear for any length; the tail chunk is
padded with dt = 0, which leaves both the outputs and the final state exact for lengths that are not a multiple of Q.

Everything is computed in fp32 (decays are exponentials of sums: fp16 loses them) and cast back to ``x.dtype``.

Shapes: x (b, l, h, p); dt (b, l, h) already softplus'ed and positive; A (h,) negative; B, C (b, l, g, n) with
h % g == 0, head i reading group i // (h // g); initial_state and final state (b, h, p, n), fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n), head i reading group i // (h // g) (mamba-ssm's convention)."""
    g = t.shape[2]
    return t if g == nheads else t.repeat_interleave(nheads // g, dim=2)


def ssd_sequential_ref(x, dt, A, B, C, initial_state=None):
    """Step-by-step reference: the definition of the scan, slow and obviously right.

    Returns (y: (b, l, h, p) in x.dtype, final_state: (b, h, p, n) fp32).
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    xf, dtf, Af = x.float(), dt.float(), A.float()
    Bh, Ch = _expand_groups(B.float(), h), _expand_groups(C.float(), h)
    S = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float().clone()
    ys = []
    for t in range(l):
        decay = torch.exp(dtf[:, t] * Af)  # (b, h)
        S = S * decay[:, :, None, None] + (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=torch.float32)
    return y.to(x.dtype), S


def ssd_chunked(x, dt, A, B, C, chunk_size: int, initial_state=None):
    """Chunked parallel scan (training and prefill). Same contract as ``ssd_sequential_ref``."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    Q = chunk_size
    pad = (-l) % Q
    xf, dtf = x.float(), dt.float()
    Bf, Cf = B.float(), C.float()
    if pad:
        # dt = 0 in the padding: decay exp(0) = 1 and input dt*x = 0, so the padded steps change nothing.
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        dtf = F.pad(dtf, (0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))
    L = l + pad
    c = L // Q
    g = Bf.shape[2]
    hg = h // g
    # Chunk and split heads into (group, heads-per-group) so B and C broadcast without copies.
    xdt = (xf * dtf[..., None]).view(b, c, Q, g, hg, p)             # (b, c, Q, g, hg, p)
    a = (dtf * A.float()).view(b, c, Q, g, hg)                      # log-decay per step
    a_cum = torch.cumsum(a, dim=2)                                  # (b, c, Q, g, hg)
    Bc = Bf.view(b, c, Q, g, n)
    Cc = Cf.view(b, c, Q, g, n)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i·B_j) exp(a_cum_i - a_cum_j) xdt_j.
    seg = a_cum[:, :, :, None] - a_cum[:, :, None, :]               # (b, c, Qi, Qj, g, hg)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    decay_ij = torch.exp(seg.masked_fill(~causal[None, None, :, :, None, None], float("-inf")))
    CB = torch.einsum("bcign,bcjgn->bcijg", Cc, Bc)                 # (b, c, Qi, Qj, g)
    y = torch.einsum("bcijg,bcijgh,bcjghp->bcighp", CB, decay_ij, xdt)

    # 2. Each chunk's own end state: sum_j exp(a_cum_last - a_cum_j) xdt_j ⊗ B_j.
    decay_to_end = torch.exp(a_cum[:, :, -1:] - a_cum)              # (b, c, Q, g, hg)
    chunk_states = torch.einsum("bcjgn,bcjgh,bcjghp->bcghpn", Bc, decay_to_end, xdt)
    chunk_decay = torch.exp(a_cum[:, :, -1])                        # (b, c, g, hg)

    # 3. Carry the state across chunks; 4. add the carried state's contribution inside each chunk.
    S = (x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None
         else initial_state.float()).view(b, g, hg, p, n)
    decay_from_start = torch.exp(a_cum)                             # (b, c, Q, g, hg)
    y_off = []
    for ci in range(c):
        y_off.append(torch.einsum("bign,bghpn,bigh->bighp", Cc[:, ci], S, decay_from_start[:, ci]))
        S = S * chunk_decay[:, ci, :, :, None, None] + chunk_states[:, ci]
    y = y + torch.stack(y_off, dim=1)
    y = y.reshape(b, L, h, p)[:, :l]
    return y.to(x.dtype), S.reshape(b, h, p, n)


def ssd_step(x, dt, A, B, C, state):
    """One recurrent step, updating ``state`` in place.

    x (b, h, p); dt (b, h) softplus'ed; A (h,); B, C (b, g, n); state (b, h, p, n) fp32. Returns y (b, h, p) in x.dtype.
    """
    h = x.shape[1]
    g = B.shape[1]
    Bh = B.float().repeat_interleave(h // g, dim=1) if g != h else B.float()  # (b, h, n)
    Ch = C.float().repeat_interleave(h // g, dim=1) if g != h else C.float()
    dtf = dt.float()
    decay = torch.exp(dtf * A.float())                              # (b, h)
    state.mul_(decay[:, :, None, None]).add_((dtf[:, :, None] * x.float())[..., None] * Bh[:, :, None, :])
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    return y.to(x.dtype)
