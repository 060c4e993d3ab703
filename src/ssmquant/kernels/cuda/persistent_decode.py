"""The whole decode step of a ternary Mamba-2 at batch 1 in one persistent kernel (CUDA C++, NVRTC).

Why. The per-layer decode (``fast_decode.py``) launches three kernels a layer. Each is short (1.3B on an H100: in_proj
4.3 us, SSM step 3.3, out_proj 2.9) and each boundary costs about a microsecond even with programmatic dependent
launch, during which HBM idles; a GEMV's weights can be loaded early only while the kernel right before it runs.
Here one kernel runs every layer: a CTA per SM (cooperative launch, so all are resident), the phases of a layer
separated by grid-wide barriers instead of launches,

    A  zx = in_proj(rmsnorm(residual))          rows split over the CTAs: a warp per row (chunk of <= 2560 inputs)
    B  conv, SSM state update, gate -> h        an item = CH channels of one head per CTA (ssm_step.py's arithmetic)
    C  residual += out_proj(gated_rmsnorm(h))   as A

and, since weights, scales, SSM states and the conv ring's older taps do not depend on the step, each phase's
bytes are copied to shared memory (TMA bulk copies on sm_90, completing on an mbarrier; cp.async before) while an
earlier phase computes: out_proj's words and the state tile during in_proj, the next in_proj's words (and the state
write-back, a TMA store) during out_proj. They are issued after that phase has read its activations, not just
before a barrier: a barrier completes only once the memory requests queued ahead of its counter update and polls
have drained (measured: a barrier after a prefetch burst took 4 us instead of 0.5; benchmarks/RESULTS.md). The
head after stays a separate kernel (``FastDecoder``); with the split out_proj below the step reads the token's
embedding row itself (``embed``) and writes the head's normed input (``final_norm``), so that the head's GEMV needs
no norm of its own (which made each of its programs read the fp32 residual twice).

Arithmetic. The projections decode the GEMV layout (``kernels/layout.py``) as ``triton/gemv.py`` does (a field
masked in place is an fp32 denormal; one FFMA per weight against pre-scaled activations); each lane keeps its
inputs of a chunk (16 per word it reads: a uint4 per 128 words of the chunk, then single words; up to WMAX words)
in registers for all its rows. The norms are computed by every CTA from the whole activation
vector it stages in shared memory, and the normed input is rounded to the model dtype (as the PyTorch model rounds
its norm's output before the linear). Phase B is ``ssm_step.py`` (same roundings; softplus threshold 20).

Split out_proj (``split_out``, ``FastDecoder``'s default where :func:`auto_split` allows). C runs in the CTA that
has just computed an SSM item's h, over the item's columns of out_proj (:func:`split_layout`) for every output row,
adding the partial sums into a global (3, parts, ngroups, d_model) fp32 buffer by atomics; the gated norm's 1 / rms (a
scalar per group, from sums of squares added the same way) is applied by every CTA when it stages the next in_proj,
and every CTA keeps the whole residual in registers. That removes the barrier before C: two a layer. With ``pair``
(sm_90, one item per CTA) the CTAs of items 2k and 2k + 1 run as a cluster of two, send each other their h through
distributed shared memory (``st.async`` completing on the receiver's mbarrier) and each computes half the rows of
the pair's columns: half the atomics (1.3B on an H100: 9.35 against 9.38 us a layer by item, 10.93 by rows). The
atomics' order varies, so the logits are not bitwise reproducible, and the gated norm's output is not rounded to the
model dtype before the product (the sums are scaled after it).

With the split, A and B are not separated by a barrier either (``LL_ZX`` in the .cu): A stores its outputs as
32-bit words {value, epoch} (``zxl``; the 16-bit epoch counts layers over the launches, ``gen``), and B spins on
each word it needs until it carries the layer's epoch (NCCL's LL protocol): an item waits only for the CTAs that
computed its rows, and no release waits for the stores. One grid barrier a layer (1.3B: 9.53 -> 8.95 us a layer
by pairs). The partial sums of out_proj are kept in ``sums_parts`` parts (default 2), CTA c adding into part
c % parts and the readers adding the parts up: 1.3B by pairs 9.08 -> 8.06 us a layer, 130m 5.77 -> 5.48, 370m
unchanged (H100, run 31). The atomics per line of the buffer are the same (the two CTAs of a pair add different
rows); why the two halves in different 8 KB regions are faster was not established.

Memory ordering. Outputs of a phase are read by other SMs after a barrier: writes, ``bar.sync``, then thread 0's
release increment of a global counter (cumulative over what ``bar.sync`` made it observe); readers spin with
acquire loads, then ``bar.sync``; data written during the kernel is read at L2 (``ld.global.cg``), never through
L1 or the read-only path. The state write-back by TMA store is not ordered by the release, and needs not be:
nothing reads it before the next launch. The counter
(one int32) and the split's buffer are zeroed by one memset before each launch, so the kernel is captured in a CUDA
graph like the rest; the split's buffer of layer l is zeroed again inside the kernel once every CTA has read it
(after the barrier that ends layer l + 1), for layer l + 3. The LL words need no ordering beyond their own
atomicity (relaxed 32-bit stores and loads); a word is rewritten every layer, so a stale one holds the previous
epoch, and nothing overwrites it before its readers have it (they arrive at the layer's last barrier after their
SSM step). The launch counter is incremented by CTA 0 after the last barrier, when every CTA has read it.

Limits (:func:`persistent_error` says which one a model hits): batch 1; every in_proj / out_proj a 2-bit ternary
``GemvTernaryWeight`` with pack blocks of >= 64 inputs; fp16 or bf16 activations; a CUDA device of compute
capability >= 8.0 with NVRTC and the shared memory the CTA's rows need. ``FastDecoder``'s "auto" also declines
shapes where it measured slower (:func:`auto_declines`). Reference: the per-layer decode, itself checked against
the model (``tests/test_kernels_persistent_decode.py``).
"""

from __future__ import annotations

import ctypes
import functools
import math
from importlib import resources

import torch

from ..layout import GemvTernaryWeight, unpack_codes_ref

XS = 64                # the denormal decode's power-of-two offset (triton/gemv.py)
TARGET_WARPS = 8       # warps per CTA, rounded to a multiple of both projections' chunk counts
MAX_WARPS = 16


@functools.cache
def _source() -> str:
    return resources.files(__package__).joinpath("persistent_decode.cu").read_text()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


WMAX = 5               # most words of a row's chunk one lane reads (``WMAX`` in the .cu)


def _chunks(K: int) -> int:
    """Chunks a row of K ternary inputs (K / 16 words) is read in, a warp each: at most 32 WMAX words a chunk."""
    return _cdiv(K // 16, 32 * WMAX)


def _chunk_words(K: int) -> int:
    """Words of a chunk (``Proj::CW``): a multiple of 32, the last chunk of a row may be partial."""
    return 32 * _cdiv(_cdiv(K // 16, _chunks(K)), 32)


def rows_per_warp(N: int, K: int, warps: int, grid: int) -> int:
    """Most rows of an (N, K) projection one warp reads (``Proj::MAXR`` in the .cu)."""
    return _cdiv(_cdiv(N, grid), warps // _chunks(K))


def proj_words(N: int, K: int, warps: int, grid: int) -> int:
    """Words of a CTA's shared-memory buffer for an (N, K) projection (``Proj::WORDS``): every row its warps may
    read, K / 16 words each, and a partial last chunk's reach past the last one."""
    kwt, nch = K // 16, _chunks(K)
    return 4 * _cdiv(rows_per_warp(N, K, warps, grid) * (warps // nch) * kwt + nch * _chunk_words(K) - kwt, 4)


def dynamic_smem(cfg, d_in_proj: int, grid: int, state_bytes: int, split_out: bool = False,
                 out_group: int = 64, pair: bool = False) -> int:
    """Bytes of dynamic shared memory (``wbuf`` in the .cu): both projections' words of a CTA (with ``split_out``,
    in_proj's and one SSM item's out_proj columns with their scales, groups of ``out_group`` inputs; with ``pair``
    the columns of two items for half the rows) and one SSM item's state tile (``state_bytes`` per element)."""
    nw = warps_per_cta(cfg.d_model, cfg.d_inner)
    ch, _ = model_ssm_item(cfg, grid)
    in_b = 4 * proj_words(d_in_proj, cfg.d_model, nw, grid)
    if split_out:
        cols, rows = ch * (1 + pair), cfg.d_model // (1 + pair)
        out_b = rows * (cols // 16) * 4 + max(1, cols // out_group) * rows * 2
    else:
        out_b = 4 * proj_words(cfg.d_model, cfg.d_inner, nw, grid)
    return in_b + out_b + ch * cfg.d_state * state_bytes


def split_error(cfg, out_w: GemvTernaryWeight, grid: int, pair: bool = False,
                capability: tuple[int, int] = (9, 0)) -> str | None:
    """Why out_proj cannot be split by SSM item (``split_out``; with ``pair``, by pairs of items in clusters of two
    CTAs, which needs ``capability`` >= 9.0), or None."""
    ch, _ = model_ssm_item(cfg, grid)
    g = out_w.group_size
    if ch % 16:
        return f"SSM items of {ch} channels (a multiple of 16 needed)"
    cols = ch * (1 + pair)
    if cfg.d_model % (8 * (1 + pair)):
        return f"d_model={cfg.d_model} (a multiple of {8 * (1 + pair)} needed)"
    if cols % g and g % cols:
        return f"out_proj blocks of {cols} columns and groups of {g} inputs (one must divide the other)"
    if pair:
        items = cfg.nheads * (cfg.headdim // ch)
        if capability < (9, 0):
            return "clusters of CTAs need compute capability >= 9.0"
        if items > grid or grid % 2 or (cfg.d_inner // cfg.ngroups) % cols:
            return f"{items} SSM items on {grid} CTAs (pairs need an item per CTA, an even grid, whole norm groups)"
    return None


PAIR_MAX_COLS = 64   # "auto" pairs SSM items only while a pair's block has at most this many columns


def auto_split(cfg, out_w: GemvTernaryWeight, grid: int, capability: tuple[int, int]) -> bool | str:
    """``FastDecoder``'s "auto" choice of out_proj split: "pair" where it can run and a pair's columns are at most
    :data:`PAIR_MAX_COLS` (a thread keeps the block's inputs in registers), else True (by item) where every CTA has
    at most one item, else False (by rows). Measured on an H100, the kernel alone in us a layer
    (``benchmarks/persistent_phases.py``): 1.3B (items of 32 channels) pair 9.35, by item 9.38, by rows 10.93 (run
    20); 2.7B (items of 64 channels: 128 columns a pair, a 104-byte stack per thread) pair 14.23, by item 12.54, by
    rows 14.44 (run 22)."""
    ch, _ = model_ssm_item(cfg, grid)
    if 2 * ch <= PAIR_MAX_COLS and split_error(cfg, out_w, grid, True, capability) is None:
        return "pair"
    return split_error(cfg, out_w, grid) is None and cfg.nheads * (cfg.headdim // ch) <= grid


def split_layout(w: GemvTernaryWeight, ch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """out_proj (N, K) for the split step: ``(words, scale_t)``.

    words: (K / ch * N * ch / 16,) int32, item i's columns [i ch, (i + 1) ch) as an (N, ch / 16) row-major block of
    words whose field j of word v holds column 16 v + j (stored code + 1, bits 2j and 2j + 1), the items one after
    another; scale_t: (K / G, N) fp16, the scales transposed (an item's scales are whole rows)."""
    N, K = w.shape
    codes = unpack_codes_ref(w).to(torch.int64) + 1                            # (N, K) in {0, 1, 2}
    c = codes.view(N, K // ch, ch // 16, 16).permute(1, 0, 2, 3)               # (items, N, words, j)
    shifts = 2 * torch.arange(16, device=codes.device)
    words = (c << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.reshape(-1).contiguous(), w.scale.t().contiguous()


def split_codes_ref(words: torch.Tensor, N: int, K: int, ch: int) -> torch.Tensor:
    """Inverse of :func:`split_layout`'s words: (N, K) int8 codes."""
    w = words.to(torch.int64).view(K // ch, N, ch // 16, 1) & 0xFFFFFFFF
    f = (w >> (2 * torch.arange(16, device=words.device))) & 3                  # (items, N, words, j)
    return (f - 1).permute(1, 0, 2, 3).reshape(N, K).to(torch.int8)


SUMS_PARTS_MAX = 4     # most parts split_out's sums may be kept in (``SUMS_PARTS`` in the .cu)
STATIC_SMEM_MAX = 48 * 1024    # the kernel's static shared memory (activations, reductions) stays below this


def warps_per_cta(d_model: int, d_inner: int) -> int:
    """A multiple of both projections' chunk counts (a chunk's warps share rows), near :data:`TARGET_WARPS`."""
    lcm = math.lcm(_chunks(d_model), _chunks(d_inner))
    return lcm * max(1, TARGET_WARPS // lcm)


def ssm_item(nheads: int, headdim: int, d_state: int, threads: int, grid: int) -> tuple[int, int]:
    """(CH, TPC): channels per SSM item and threads per channel. Fewest rounds of items over the grid, then the
    most CTAs busy, then the most threads; TPC divides a warp and leaves each thread a multiple of 8 states
    (16-byte state loads in half precision) and at most 32."""
    best = None
    for tpc in (8, 4, 16, 2):
        spt = d_state // tpc
        if d_state % tpc or spt % 8 or spt > 32:
            continue
        for ch in (64, 32, 16, 8, 4, 2, 1):
            if headdim % ch or ch * tpc > threads:
                continue
            items = nheads * (headdim // ch)
            rounds = _cdiv(items, grid)
            key = (rounds, -min(items, grid), -ch * tpc)
            if best is None or key < best[0]:
                best = (key, (ch, tpc))
    if best is None:
        raise ValueError(f"no SSM item shape for d_state={d_state}, headdim={headdim} in {threads} threads")
    return best[1]


def model_ssm_item(cfg, grid: int) -> tuple[int, int]:
    """:func:`ssm_item` for a model config: (CH, TPC) with the model's warps per CTA."""
    return ssm_item(cfg.nheads, cfg.headdim, cfg.d_state, 32 * warps_per_cta(cfg.d_model, cfg.d_inner), grid)


AUTO_MAX_ROWS = 16   # "auto" declines where a warp sums more in_proj rows than this (see auto_declines)


def auto_declines(cfg, d_in_proj: int, grid: int) -> str | None:
    """Why ``FastDecoder``'s "auto" keeps the per-layer kernels although the persistent step could run, or None.

    Above :data:`AUTO_MAX_ROWS` in_proj rows per warp the per-row sums no longer fit the registers. 2.7B on 132
    SMs had 27 while its 160-word rows took two warps each (NVRTC reported a 1.2 KB stack per thread, and the step
    was slower than the per-layer kernels: H100, run 17, 1.926 against 1.903 ms/token); a lane now reads a row's
    160 words in one warp, and 2.7B has 11 (1.3B: 9)."""
    rows = rows_per_warp(d_in_proj, cfg.d_model, warps_per_cta(cfg.d_model, cfg.d_inner), grid)
    if rows > AUTO_MAX_ROWS:
        return f"{rows} in_proj rows per warp (more than {AUTO_MAX_ROWS}: slower than the per-layer kernels)"
    return None


def persistent_error(cfg, layers, batch: int, dtype: torch.dtype, device: torch.device,
                     grid: int | None = None) -> str | None:
    """Why the persistent step cannot run this decoder (``FastDecoder``'s per-layer weights) on ``grid`` CTAs
    (default: one per SM), or None."""
    from .nvrtc import nvrtc_supported

    if batch != 1:
        return f"batch {batch} (the persistent step runs batch 1)"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"activations in {dtype} (fp16 or bf16)"
    for name in ("in_w", "out_w"):
        ws = [getattr(L, name) for L in layers]
        if not all(isinstance(w, GemvTernaryWeight) and w.bits == 2 for w in ws):
            return "every in_proj / out_proj must be 2-bit ternary in the GEMV layout (no DF-SSM, dense or mma)"
        if len({(w.group_size, w.block, w.shape) for w in ws}) != 1:
            return f"{name[:-2]}_proj differs between layers (group size, pack block or shape)"
        if ws[0].block % 64:
            return f"pack block of {ws[0].block} inputs (>= 64 needed: group size {ws[0].group_size})"
    if warps_per_cta(cfg.d_model, cfg.d_inner) > MAX_WARPS:
        return f"d_model={cfg.d_model} / d_inner={cfg.d_inner} need too many warps per CTA"
    if cfg.nheads % cfg.ngroups or cfg.d_inner % cfg.ngroups:
        return f"ngroups={cfg.ngroups} does not divide the heads"
    try:
        model_ssm_item(cfg, 1)
    except ValueError as e:
        return str(e)
    if device.type != "cuda" or not nvrtc_supported():
        return "needs a CUDA device of compute capability >= 8.0 with NVRTC"
    props = torch.cuda.get_device_properties(device)
    if grid is not None and grid > props.multi_processor_count:
        return f"{grid} CTAs on {props.multi_processor_count} SMs (one CTA per SM at most)"
    need = dynamic_smem(cfg, layers[0].in_w.shape[0], grid or props.multi_processor_count, 4) + STATIC_SMEM_MAX
    if need > props.shared_memory_per_block_optin:
        return f"needs about {need // 1024} KB of shared memory per CTA, the GPU allows " \
               f"{props.shared_memory_per_block_optin // 1024} KB"
    return None


def embed_mode(emb: torch.Tensor, emb_scale: torch.Tensor | None, dtype: torch.dtype) -> int:
    """How the step reads an embedding table (``EMB`` in the .cu): 1 rows in the model dtype ``dtype``, 2 int8 rows
    with fp16 scales, 0 it cannot (``FastDecoder`` then keeps its embedding kernel)."""
    if emb_scale is None and emb.dtype == dtype:
        return 1
    if emb.dtype == torch.int8 and emb_scale is not None and emb_scale.dtype == torch.float16:
        return 2
    return 0


class PersistentDecodeStep:
    """Launches the persistent kernel over ``FastDecoder``'s buffers: residual (1, d_model) fp32 in (unless
    ``embed``) and out, zx (1, d_in_proj) and h (1, d_inner) fp32 as scratch, per-layer rings and states updated in
    place, ``pos`` the token counter; ``grid`` CTAs (default one per SM). With ``split_out``, ``embed = (ids, emb,
    emb_scale)`` has the step read the embedding of ids[0, pos] itself and ``final_norm = (norm_f, xn)`` write the
    head's normed input. Build with :func:`persistent_error` returning None.

    With out_proj split (and its LL words), a launch leaves its barrier counter and partial-sum buffers ready for
    the next one (``self_reset``: the counter counts on over launches, the last sums are zeroed at the end), so no
    memset runs between steps (1.3B: 0.4 to 5.5 us a token faster depending on the machine,
    ``benchmarks/step_reset_ab.py``, benchmarks/RESULTS.md runs 69-74)."""

    FIELDS = ("in_words", "in_scale", "norm_w", "conv_w", "conv_b", "dt_bias", "A", "D", "gnorm_w", "out_words",
              "out_scale", "ring", "state", "out_split_words", "out_split_scale")

    def __init__(self, cfg, layers, rings, states, *, residual, zx, h, pos, eps: float, split_out: bool = False,
                 pair: bool = False, sums_parts: int = 2, grid: int | None = None,
                 extra_options: tuple[str, ...] = (), embed: tuple | None = None,
                 final_norm: tuple | None = None):
        from .nvrtc import get_kernel

        dev = residual.device
        self.grid = grid or torch.cuda.get_device_properties(dev).multi_processor_count
        nw = warps_per_cta(cfg.d_model, cfg.d_inner)
        ch, tpc = model_ssm_item(cfg, self.grid)
        win, wout = layers[0].in_w, layers[0].out_w
        self.split_out, self.pair = split_out, split_out and pair
        self.self_reset = split_out and not {"-DLL_ZX=0", "-DSELF_RESET=0"} & set(extra_options)
        cap = torch.cuda.get_device_capability(dev)
        if split_out and (err := split_error(cfg, wout, self.grid, self.pair, cap)) is not None:
            raise ValueError(f"persistent step, split out_proj: {err}")
        if not 1 <= sums_parts <= SUMS_PARTS_MAX:
            raise ValueError(f"persistent step: sums_parts={sums_parts} (1 to {SUMS_PARTS_MAX})")
        self.sums_parts = sums_parts
        # embed = (ids, emb, emb_scale): the step starts from the embedding of ids[0, pos] itself (EMB in the .cu);
        # final_norm = (norm_f, xn): it also writes rmsnorm(residual) * norm_f to xn (1, d_model) in the model dtype
        # for the head (FINAL_NORM). Both need split_out.
        self.embed, self.final_norm = embed, final_norm
        emb_mode = 0
        if (embed is not None or final_norm is not None) and not split_out:
            raise ValueError("persistent step: embed / final_norm need split_out")
        if embed is not None:
            ids, emb, emb_scale = embed
            if ids.dtype != torch.int64 or ids.shape[0] != 1 or not ids.is_contiguous():
                raise ValueError("persistent step: ids must be a contiguous (1, n) int64 tensor")
            emb_mode = embed_mode(emb, emb_scale, zx.dtype)
            if not emb_mode:
                raise ValueError(f"persistent step: embedding {emb.dtype} with scale "
                                 f"{None if emb_scale is None else emb_scale.dtype} (model-dtype rows, or int8 "
                                 "rows with fp16 scales)")
            if emb.shape[1] != cfg.d_model or not emb.is_contiguous():
                raise ValueError(f"persistent step: embedding rows of {emb.shape[1]}, d_model {cfg.d_model}")
        if final_norm is not None:
            norm_f, xn = final_norm
            if norm_f.dtype != torch.float32 or xn.dtype != zx.dtype or xn.numel() != cfg.d_model:
                raise ValueError("persistent step: final_norm = (fp32 (d_model,) weight, (1, d_model) model-dtype "
                                 "output)")
        # split_out: out_proj again in the split layout (the per-layer kernels keep the GEMV layout).
        self.split = [split_layout(L.out_w, ch * (1 + self.pair)) if split_out else (L.out_w.words, L.out_w.scale)
                      for L in layers]
        state_t = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[states[0].dtype]
        self.options = [
            f"-DNL={len(layers)}", f"-DDM={cfg.d_model}", f"-DE={cfg.d_inner}", f"-DNH={cfg.nheads}",
            f"-DP={cfg.headdim}", f"-DNS={cfg.d_state}", f"-DNG={cfg.ngroups}", f"-DDCONV={cfg.d_conv}",
            f"-DDIP={win.shape[0]}", f"-DGIN={win.group_size}", f"-DKBIN={win.block}", f"-DGOUT={wout.group_size}",
            f"-DKBOUT={wout.block}", f"-DNW={nw}", f"-DGRID={self.grid}", f"-DCH={ch}", f"-DTPC={tpc}",
            f"-DSTATE_T={state_t}", f"-DACT_BF16={int(zx.dtype == torch.bfloat16)}", f"-DXS={XS}",
            f"-DSPLIT_OUT={int(split_out)}", f"-DSPLIT_PAIR={int(self.pair)}", f"-DWMAX={WMAX}",
            f"-DSUMS_PARTS={sums_parts}", f"-DEMB={emb_mode}", f"-DFINAL_NORM={int(final_norm is not None)}",
            f"-DSELF_RESET={int(self.self_reset)}", *extra_options]
        self.threads = 32 * nw
        rows = []
        for L, ring, state, (sw, ss) in zip(layers, rings, states, self.split):
            ts = (L.in_w.words, L.in_w.scale, L.norm_w, L.conv_w, L.conv_b, L.dt_bias, L.A, L.D, L.gnorm_w,
                  L.out_w.words, L.out_w.scale, ring, state, sw, ss)
            for name, t in zip(self.FIELDS, ts):
                if not t.is_contiguous() or t.device != dev:
                    raise ValueError(f"persistent step: {name} must be contiguous on {dev}")
            rows.append([t.data_ptr() for t in ts])
        # The kernel reads the tensors through this table of pointers: the decoder keeps the tensors alive.
        self.table = torch.tensor(rows, dtype=torch.int64, device=dev)
        # Zeroed by one memset per launch: the barrier counter, then (at 128 bytes) split_out's sums, (3, parts,
        # ngroups, d_model) fp32 partial sums of out_proj and (3, ngroups) sums of squares of h (the .cu uses 2 or 3
        # buffers, NBUF, of SUMS_PARTS parts).
        ng = cfg.ngroups
        self.sync = torch.zeros(32 + 3 * sums_parts * ng * cfg.d_model + 3 * ng, dtype=torch.int32, device=dev)
        # split_out (LL_ZX in the .cu): in_proj's outputs as {value, epoch} words, and the launches so far (never
        # reset: the epochs go on across launches).
        self.zxl = torch.zeros(win.shape[0], dtype=torch.int32, device=dev)
        self.gen = torch.zeros(1, dtype=torch.int32, device=dev)
        self.bar, self.sums = self.sync[:1], self.sync[32:].view(torch.float32)
        self.residual, self.zx, self.h, self.pos, self.eps = residual, zx, h, pos, eps
        self.kernel = get_kernel(_source(), "persistent_decode", self.options)
        self.smem = dynamic_smem(cfg, win.shape[0], self.grid, states[0].element_size(), split_out,
                                 wout.group_size, self.pair)
        if self.kernel.static_smem > STATIC_SMEM_MAX:
            raise ValueError(f"persistent step: {self.kernel.static_smem} bytes of static shared memory")
        # One CTA per SM must fit (registers, shared memory), or the grid barriers could never complete; the
        # cooperative launch would refuse it too, but only when the step runs.
        if self.kernel.blocks_per_sm(self.threads, self.smem) < 1:
            raise RuntimeError(f"persistent step: a CTA of {self.threads} threads and {self.smem} bytes of shared "
                               "memory does not fit on an SM")
        if self.pair and (n := self.kernel.max_active_clusters(self.grid, self.threads, self.smem)) < self.grid // 2:
            raise RuntimeError(f"persistent step: only {n} clusters of two CTAs fit at once, {self.grid // 2} needed")

    def __call__(self, trace: torch.Tensor | None = None) -> None:
        """One step. ``trace``: an int64 (grid, n_layer, 24) buffer for the kernel's time stamps (48 slots a layer
        with -DFINE_TRACE=1; benchmarks/persistent_phases.py --trace), or None."""
        if not self.self_reset:
            self.sync.zero_()
        p = lambda t: ctypes.c_void_p(0 if t is None else t.data_ptr())  # noqa: E731  (None: a null pointer)
        ids, emb, emb_scale = self.embed if self.embed is not None else (None, None, None)
        norm_f, xn = self.final_norm if self.final_norm is not None else (None, None)
        args = [p(self.table), p(self.residual), p(self.zx), p(self.h), p(self.pos), p(self.bar), p(self.sums),
                ctypes.c_float(self.eps), p(trace), p(self.zxl), p(self.gen), p(ids), p(emb), p(emb_scale), p(norm_f),
                p(xn)]
        self.kernel.launch((self.grid, 1, 1), (self.threads, 1, 1), args, cooperative=True, smem=self.smem)


__all__ = ["AUTO_MAX_ROWS", "PAIR_MAX_COLS", "PersistentDecodeStep", "auto_declines", "auto_split", "embed_mode",
           "persistent_error", "split_error", "split_layout", "ssm_item", "warps_per_cta"]
