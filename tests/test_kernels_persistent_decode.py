"""The persistent decode step (every layer of a batch-1 step in one kernel, kernels/cuda/persistent_decode.py)
against the per-layer decode and the PyTorch model; on CPU its planning and refusals."""

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model
from kernels_util import DEVICE, rel_err

from ssmquant.bench.models import to_ternary_
from ssmquant.kernels.cuda.persistent_decode import (
    WMAX,
    _chunk_words,
    _chunks,
    auto_split,
    model_ssm_item,
    persistent_error,
    split_codes_ref,
    split_error,
    split_layout,
    ssm_item,
    warps_per_cta,
)
from ssmquant.kernels.layout import pack_gemv, unpack_codes_ref


@pytest.mark.parametrize("d_model,d_inner", [(768, 1536), (1024, 2048), (1536, 3072), (2048, 4096), (2560, 5120),
                                             (128, 256)])
def test_warps_per_cta_is_a_multiple_of_both_chunk_counts(d_model, d_inner):
    nw = warps_per_cta(d_model, d_inner)
    for k in (d_model, d_inner):
        assert nw % _chunks(k) == 0
    assert 1 <= nw <= 16


@pytest.mark.parametrize("K", [768, 1024, 1536, 2048, 2560, 3072, 4096, 5120, 128, 3200])
def test_lanes_read_every_word_of_a_row_once(K):
    """The .cu's chunks and parts (Proj::CW, Q4, S1 and part_word), mirrored: a row's K / 16 words are read once
    each by the 32 lanes of its NCH warps, a lane reads at most WMAX words, uint4 parts are 16-byte aligned and a
    pack block of 128 inputs never splits one."""
    kwt, nch, cw = K // 16, _chunks(K), _chunk_words(K)
    wpl = cw // 32
    q4, s1 = wpl // 4, wpl % 4
    assert cw % 32 == 0 and wpl <= WMAX and nch * cw >= kwt > (nch - 1) * cw
    seen = []
    for c in range(nch):
        for lane in range(32):
            for p in range(q4 + s1):
                w = c * cw + (128 * p + 4 * lane if p < q4 else 128 * q4 + 32 * (p - q4) + lane)
                n = 4 if p < q4 else 1
                assert n == 1 or (w % 4 == 0 and w // 8 == (w + 3) // 8)
                seen += [x for x in range(w, w + n) if x < kwt]
    assert sorted(seen) == list(range(kwt))
    # A lane of 1.3B reads one uint4 a row (the layout before the single words), 2.7B adds one word to it.
    assert {2048: (1, 0), 4096: (1, 0), 2560: (1, 1), 5120: (1, 1), 1024: (0, 2)}.get(K, (q4, s1)) == (q4, s1)


@pytest.mark.parametrize("nheads,headdim,d_state,threads", [(64, 64, 128, 256), (80, 64, 128, 192),
                                                             (24, 64, 128, 256), (8, 32, 16, 256)])
def test_ssm_item_takes_fewest_rounds(nheads, headdim, d_state, threads):
    """The chosen item shape is valid (divides the head, fits the CTA, whole 16-byte state loads) and no valid
    shape needs fewer rounds of items over a 132-CTA grid."""
    grid = 132
    ch, tpc = ssm_item(nheads, headdim, d_state, threads, grid)
    spt = d_state // tpc
    assert headdim % ch == 0 and ch * tpc <= threads and d_state % tpc == 0 and spt % 8 == 0 and 32 % tpc == 0
    rounds = -(-nheads * headdim // ch // grid)
    for t in (2, 4, 8, 16):
        for c in (1, 2, 4, 8, 16, 32, 64):
            if headdim % c == 0 and c * t <= threads and d_state % t == 0 and (d_state // t) % 8 == 0 \
                    and d_state // t <= 32:
                assert -(-nheads * headdim // c // grid) >= rounds


def _layers(n=2, K=128, N=256, group=64, **over):
    g = torch.Generator().manual_seed(0)

    def w(n_, k_, gs=group):
        codes = torch.randint(-1, 2, (n_, k_), generator=g, dtype=torch.int8)
        return pack_gemv(codes, torch.rand(n_, k_ // gs, generator=g), gs)
    return [SimpleNamespace(in_w=over.get("in_w", w(N, K)), out_w=over.get("out_w", w(K, N // 2))) for _ in range(n)]


CFG = SimpleNamespace(d_model=128, d_inner=128, nheads=4, headdim=32, d_state=32, ngroups=1)


def test_persistent_error_names_each_refusal():
    ok = _layers()
    half = torch.float16
    assert "batch 2" in persistent_error(CFG, ok, 2, half, torch.device("cpu"))
    assert "activations" in persistent_error(CFG, ok, 1, torch.float32, torch.device("cpu"))
    dense = [SimpleNamespace(in_w=torch.zeros(256, 128), out_w=L.out_w) for L in ok]
    assert "2-bit ternary" in persistent_error(CFG, dense, 1, half, torch.device("cpu"))
    small = _layers(group=32)
    assert "pack block of 32" in persistent_error(CFG, small, 1, half, torch.device("cpu"))
    mixed = [ok[0], _layers(N=512)[0]]
    assert "differs between layers" in persistent_error(CFG, mixed, 1, half, torch.device("cpu"))
    odd = SimpleNamespace(**{**vars(CFG), "d_state": 12})
    assert "SSM item" in persistent_error(odd, ok, 1, half, torch.device("cpu"))
    assert "CUDA" in persistent_error(CFG, ok, 1, half, torch.device("cpu"))


def test_auto_declines_where_row_sums_spill():
    """"auto" keeps the per-layer kernels where a warp would sum more than AUTO_MAX_ROWS in_proj rows (2.7B on 40
    SMs), and takes the persistent step for every published shape on 132 SMs (2.7B: 11 rows a warp)."""
    from ssmquant.kernels.cuda.persistent_decode import auto_declines
    from ssmquant.model.config import preset_config

    for preset in ("130m", "370m", "780m", "1.3b", "2.7b"):
        cfg = preset_config(preset)
        assert auto_declines(cfg, cfg.d_in_proj, 132) is None, preset
    cfg = preset_config("2.7b")
    assert "34 in_proj rows per warp" in auto_declines(cfg, cfg.d_in_proj, 40)


@pytest.mark.parametrize("N,K,ch,group", [(64, 128, 32, 64), (48, 256, 64, 64), (32, 128, 16, 128), (16, 256, 64, 32)])
def test_split_layout_round_trip(N, K, ch, group):
    """The split layout holds every code of its item's columns (word v field j = column 16 v + j, items in
    order), and the transposed scales are the GEMV layout's."""
    g = torch.Generator().manual_seed(N + K)
    codes = torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8)
    w = pack_gemv(codes, torch.rand(N, K // group, generator=g), group)
    words, scale_t = split_layout(w, ch)
    assert words.dtype == torch.int32 and words.numel() == N * K // 16
    assert torch.equal(split_codes_ref(words, N, K, ch), codes)
    assert torch.equal(split_codes_ref(words, N, K, ch), unpack_codes_ref(w))
    assert torch.equal(scale_t, w.scale.t())
    # Item 1, row 2, word 0 holds column ch + j in bits 2j, 2j + 1.
    word = int(words[(1 * N + 2) * (ch // 16)]) & 0xFFFFFFFF
    assert [((word >> (2 * j)) & 3) - 1 for j in range(16)] == codes[2, ch:ch + 16].tolist()


def test_embed_mode_of_each_embedding_kind():
    """Which embeddings the step reads itself (FastDecoder keeps its embedding kernel for the others)."""
    from ssmquant.kernels.cuda.persistent_decode import embed_mode

    rows16, q = torch.zeros(4, 8, dtype=torch.float16), torch.zeros(4, 8, dtype=torch.int8)
    assert embed_mode(rows16, None, torch.float16) == 1
    assert embed_mode(rows16, None, torch.bfloat16) == 0                  # rows not in the model dtype
    assert embed_mode(q, torch.ones(4, dtype=torch.float16), torch.bfloat16) == 2
    assert embed_mode(q, torch.ones(4, dtype=torch.float32), torch.float16) == 0   # only fp16 scales
    assert embed_mode(q, None, torch.float16) == 0


def test_split_error_names_each_refusal():
    cfg = SimpleNamespace(d_model=2048, d_inner=4096, nheads=64, headdim=64, d_state=128, ngroups=1)
    out64 = SimpleNamespace(group_size=64)
    assert split_error(cfg, out64, 132) is None                             # items of 32 channels
    assert "multiple of 16" in split_error(SimpleNamespace(**{**vars(cfg), "headdim": 8, "nheads": 512}), out64, 132)
    assert "d_model=2044" in split_error(SimpleNamespace(**{**vars(cfg), "d_model": 2044}), out64, 132)
    assert "divide" in split_error(cfg, SimpleNamespace(group_size=48), 132)


def test_auto_split_on_the_published_shapes():
    """Pairs on sm_90 where every CTA has one item of at most 32 channels, by item before sm_90 or for items of 64
    channels (2.7B: 128 columns a pair, measured slower), by rows where items outnumber CTAs or cannot be split."""
    def cfg(d_model, nheads):
        return SimpleNamespace(d_model=d_model, d_inner=2 * d_model, nheads=nheads, headdim=64, d_state=128,
                               ngroups=1)
    out = SimpleNamespace(group_size=128)
    for d_model, nheads in ((768, 24), (1024, 32), (2048, 64)):        # 130m, 370m, 1.3B
        assert auto_split(cfg(d_model, nheads), out, 132, (9, 0)) == "pair"
        assert auto_split(cfg(d_model, nheads), out, 132, (8, 0)) is True
    assert model_ssm_item(cfg(2560, 80), 132)[0] == 64
    assert auto_split(cfg(2560, 80), out, 132, (9, 0)) is True
    assert auto_split(cfg(2560, 80), out, 64, (9, 0)) is False       # 80 items on 64 CTAs
    assert auto_split(cfg(2048, 64), SimpleNamespace(group_size=48), 132, (9, 0)) is False


def test_fast_decoder_persistent_option_on_cpu():
    """Where the kernel cannot run, "auto" falls back to the per-layer step and True says why; other values fail."""
    from ssmquant.kernels.fast_decode import FastDecoder

    if DEVICE == "cuda":
        pytest.skip("CPU behaviour")
    m = to_ternary_(tiny_model(seed=1, d_model=64, n_layer=1, d_state=32, headdim=32), 64)
    assert FastDecoder(m, 1, 4, gemv_configs={"persistent": "auto"}).persistent is None
    with pytest.raises(ValueError, match="persistent decode step: .*activations"):
        FastDecoder(m, 1, 4, gemv_configs={"persistent": True})
    with pytest.raises(ValueError, match="persistent"):
        FastDecoder(m, 1, 4, gemv_configs={"persistent": "yes"})
    with pytest.raises(ValueError, match="out_split"):
        FastDecoder(m, 1, 4, gemv_configs={"out_split": "yes"})
    with pytest.raises(ValueError, match="sums_parts"):
        FastDecoder(m, 1, 4, gemv_configs={"sums_parts": 8})
    with pytest.raises(ValueError, match="persistent_grid"):
        FastDecoder(m, 1, 4, gemv_configs={"persistent_grid": 0})


def test_auto_falls_back_with_a_warning_when_the_step_cannot_be_built(monkeypatch):
    """A kernel that does not compile, or whose CTA does not fit on an SM, leaves "auto" on the per-layer kernels
    with a warning; True lets the error through."""
    import ssmquant.kernels.fast_decode as fd

    if DEVICE == "cuda":
        pytest.skip("CPU behaviour")

    def refuse(*a, **k):
        raise RuntimeError("a CTA does not fit on an SM")
    monkeypatch.setattr(fd, "persistent_error", lambda *a, **k: None)
    monkeypatch.setattr(fd, "_sm_count", lambda dev: 132)
    monkeypatch.setattr(fd, "PersistentDecodeStep", refuse)
    m = to_ternary_(tiny_model(seed=1, d_model=64, n_layer=1, d_state=32, headdim=32), 64)
    with pytest.warns(UserWarning, match="per-layer kernels: a CTA does not fit"):
        dec = fd.FastDecoder(m, 1, 4, gemv_configs={"persistent": "auto"})
    assert dec.persistent is None
    with pytest.raises(RuntimeError, match="does not fit"):
        fd.FastDecoder(m, 1, 4, gemv_configs={"persistent": True})


def test_mma_switch_is_the_tensor_core_gemv_own(monkeypatch):
    """SSMQUANT_MMA=0 switches off the tensor-core GEMV only: the persistent step asks nvrtc_supported."""
    import ssmquant.kernels.cuda.nvrtc as nv
    from ssmquant.kernels.cuda.ternary_mma import mma_supported

    monkeypatch.setattr(nv, "nvrtc_supported", lambda: True)
    monkeypatch.setenv("SSMQUANT_MMA", "0")
    assert not mma_supported()
    monkeypatch.setenv("SSMQUANT_MMA", "1")
    assert mma_supported()


# ---------------------------------------------------------------- GPU
def _need_kernel():
    from ssmquant.kernels.cuda.nvrtc import nvrtc_supported

    if DEVICE != "cuda" or not nvrtc_supported():
        pytest.skip("needs CUDA with NVRTC, sm_80+")


@pytest.mark.gpu
def test_persistent_step_runs_with_the_mma_switch_off_gpu(monkeypatch):
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.fast_decode import FastDecoder

    _need_kernel()
    monkeypatch.setenv("SSMQUANT_MMA", "0")
    m = random_model("370m", weights="ternary", n_layer=1)
    assert FastDecoder(m, 1, 4).persistent is not None


def _models():
    """name -> (model, persistent_grid)."""
    from ssmquant.bench.models import random_model

    def tiny():
        m = tiny_model(seed=4, d_model=128, n_layer=2, d_state=32, headdim=32, ngroups=2)
        return to_ternary_(m, 64).half().cuda()
    return {
        "tiny_ngroups2": lambda: (tiny(), None),
        # 4 CTAs: two SSM items of 32 channels each (the split's later items read from global memory).
        "tiny_ngroups2_grid4": lambda: (tiny(), 4),
        # 130m: in_proj rows of 48 words (a partial chunk: 24 of 32 lanes read words), out_proj 96 (3 per lane).
        "130m_2layers": lambda: (random_model("130m", weights="ternary", n_layer=2), None),
        "1.3b_3layers": lambda: (random_model("1.3b", weights="ternary", n_layer=3), None),
        # 2.7B: rows of 160 / 320 words (a uint4 and a single word per lane), items of 64 channels.
        "2.7b_2layers": lambda: (random_model("2.7b", weights="ternary", n_layer=2), None),
    }


@torch.no_grad()
def _model_logits(m, prompt, forced):
    """The PyTorch model's teacher-forced logits: prefill ``prompt``, then ``forced`` one token at a time."""
    cache = m.allocate_cache(1)
    m(prompt, cache)
    return torch.stack([m(forced[:, i:i + 1], cache)[:, -1].float() for i in range(forced.shape[1])], 1)


def _check_against_per_layer(pers, per_layer, prompt, forced):
    """Teacher-forced logits, SSM states and conv rings of the persistent step within 2e-3 of the per-layer step's
    (the rings hold raw in_proj outputs, whose normed input is rounded differently). Returns the logits."""
    a = pers.teacher_forced_logits(prompt, forced)
    b = per_layer.teacher_forced_logits(prompt, forced)
    assert rel_err(a, b) < 2e-3, rel_err(a, b)
    for s1, s2 in zip(pers.states, per_layer.states):
        assert rel_err(s1, s2) < 2e-3
    for r1, r2 in zip(pers.rings, per_layer.rings):
        assert rel_err(r1, r2) < 2e-3
    return a


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tiny_ngroups2", "tiny_ngroups2_grid4", "130m_2layers", "1.3b_3layers",
                                  "2.7b_2layers"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [False, True, "pair"])
def test_persistent_step_matches_per_layer_step_gpu(name, state_dtype, split):
    """Teacher-forced logits of the persistent step (out_proj by rows, or ``split`` by SSM item) against the
    per-layer decode (same arithmetic up to the rounding of the normed inputs and the order of the sums) and the
    PyTorch model; states and rings end equal; greedy tokens under the CUDA graph equal those without it."""
    from ssmquant.kernels.fast_decode import FastDecoder

    _need_kernel()
    m, grid = _models()[name]()
    V = m.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(V, 50000), (1, 5), generator=g).cuda()
    forced = torch.randint(0, min(V, 50000), (1, 6), generator=g).cuda()
    grid_or_sms = grid or torch.cuda.get_device_properties(0).multi_processor_count
    err = split and split_error(m.config, FastDecoder(m, 1, 2, gemv_configs={"persistent": False}).layers[0].out_w,
                                grid_or_sms, split == "pair", torch.cuda.get_device_capability())
    cfgs = {"persistent": True, "persistent_grid": grid}
    if err:      # tiny: SSM items of 2 channels (16 needed); on 4 CTAs, pairs: more items than CTAs
        assert name == "tiny_ngroups2" or (name == "tiny_ngroups2_grid4" and split == "pair"), err
        with pytest.raises(ValueError, match="split out_proj"):
            FastDecoder(m, 1, 16, gemv_configs={**cfgs, "out_split": split})
        auto = FastDecoder(m, 1, 16, gemv_configs={**cfgs, "out_split": "auto"}).persistent
        assert not auto.pair and not auto.split_out    # tiny: cannot; 4 CTAs: by item has 2 items a CTA
        return
    pers = FastDecoder(m, 1, 16, state_dtype=state_dtype, gemv_configs={**cfgs, "out_split": split})
    per_layer = FastDecoder(m, 1, 16, state_dtype=state_dtype, gemv_configs={"persistent": False})
    assert pers.persistent is not None and per_layer.persistent is None
    assert pers.persistent.split_out == bool(split) and pers.persistent.pair == (split == "pair")
    assert pers.persistent.grid == grid_or_sms
    step = pers.persistent
    assert step.kernel.blocks_per_sm(step.threads, step.smem) >= 1   # the whole grid is resident
    a = _check_against_per_layer(pers, per_layer, prompt, forced)
    assert rel_err(a, _model_logits(m, prompt, forced)) < 5e-3
    eager = pers.generate(prompt, 12, use_graph=False)
    graphed = pers.generate(prompt, 12, use_graph=True)
    assert torch.equal(eager, graphed)


@pytest.mark.gpu
@pytest.mark.parametrize("sums_parts", [1, 2, 4])
def test_persistent_step_sums_parts_gpu(sums_parts):
    """1.3B-wide, out_proj by pairs, its partial sums in 1 / 2 / 4 parts (each CTA adds into part cta % parts, the
    readers add the parts up), against the per-layer step and the model."""
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.fast_decode import FastDecoder

    _need_kernel()
    m = random_model("1.3b", weights="ternary", n_layer=2)
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 50000, (1, 5), generator=g).cuda()
    forced = torch.randint(0, 50000, (1, 6), generator=g).cuda()
    pers = FastDecoder(m, 1, 16, gemv_configs={"persistent": True, "out_split": "pair", "sums_parts": sums_parts})
    per_layer = FastDecoder(m, 1, 16, gemv_configs={"persistent": False})
    assert pers.persistent.sums_parts == sums_parts
    _check_against_per_layer(pers, per_layer, prompt, forced)
    assert torch.equal(pers.generate(prompt, 12, use_graph=False), pers.generate(prompt, 12, use_graph=True))


@pytest.mark.gpu
@pytest.mark.parametrize("split", [True, "pair"])
def test_split_step_leaves_its_counter_and_sums_ready_gpu(split):
    """With out_proj split the step runs without a memset between launches: after each launch its partial sums
    are all zero again and its barrier counter has counted n_layer arrivals a CTA a launch (it wraps around past
    2**32 as a u32); eager launches and graph replays give the same tokens."""
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.fast_decode import FastDecoder

    _need_kernel()
    m = random_model("1.3b", weights="ternary", n_layer=3)
    dec = FastDecoder(m, 1, 20, gemv_configs={"persistent": True, "out_split": split})
    st = dec.persistent
    assert st.self_reset
    prompt = torch.randint(0, 50000, (1, 5), generator=torch.Generator().manual_seed(4)).cuda()
    dec.start(prompt)
    for k in range(1, 4):
        st()
        torch.cuda.synchronize()
        assert int(st.gen) == k and int(st.bar) == k * m.config.n_layer * st.grid
        assert not bool(st.sums.any())
    eager = dec.generate(prompt, 19, use_graph=False)
    assert torch.equal(eager, dec.generate(prompt, 19, use_graph=True))
    # A launch whose barrier targets wrap past 2**32: the same head input as an ordinary launch from the same state.
    per_launch = m.config.n_layer * st.grid
    k0 = 2**32 // per_launch                          # base = k0 * per_launch, a few arrivals below 2**32
    dec.start(prompt)
    st()
    want = dec.xn.clone()
    dec.start(prompt)
    st.gen.fill_(k0)                                  # (its LL epochs differ from every word's so far)
    st.bar.fill_((k0 * per_launch) % 2**32 - 2**32)  # as int32
    st()
    torch.cuda.synchronize()
    assert int(st.gen) == k0 + 1 and int(st.bar) == ((k0 + 1) * per_launch) % 2**32
    assert not bool(st.sums.any())
    assert rel_err(dec.xn, want) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_persistent_step_int8_embedding_and_head_gpu(scale_dtype):
    """Tied int8 embedding and head: with fp16 row scales the split step reads the token's int8 embedding row
    itself (EMB=2) and writes the head's normed input; with fp32 scales the embedding kernel and the head's own norm
    run instead. Both against the per-layer step and the model, and graphed against eager tokens."""
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.cuda.persistent_decode import PersistentDecodeStep
    from ssmquant.kernels.fast_decode import FastDecoder
    from ssmquant.quant.int8 import quantize_int8_

    _need_kernel()
    m = random_model("1.3b", weights="ternary", n_layer=2)
    quantize_int8_(m, embedding=True, head=True, scale_dtype=scale_dtype)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 50000, (1, 5), generator=g).cuda()
    forced = torch.randint(0, 50000, (1, 6), generator=g).cuda()
    pers = FastDecoder(m, 1, 16, gemv_configs={"persistent": True, "out_split": "pair"})
    per_layer = FastDecoder(m, 1, 16, gemv_configs={"persistent": False})
    assert pers._fused_ends == (scale_dtype == torch.float16)
    a = _check_against_per_layer(pers, per_layer, prompt, forced)
    assert rel_err(a, _model_logits(m, prompt, forced)) < 5e-3
    assert torch.equal(pers.generate(prompt, 12, use_graph=False), pers.generate(prompt, 12, use_graph=True))
    if scale_dtype == torch.float32:     # the step refuses such an embedding (one line, before compiling)
        st = pers.persistent
        with pytest.raises(ValueError, match="embedding torch.int8 with scale torch.float32"):
            PersistentDecodeStep(m.config, pers.layers, pers.rings, pers.states, residual=pers.residual,
                                 zx=pers.zx, h=pers.h, pos=pers.pos, eps=m.config.norm_eps, split_out=True,
                                 pair=True, grid=st.grid, embed=(pers.ids, pers.emb, pers.emb_scale))
        with pytest.raises(ValueError, match="need split_out"):
            PersistentDecodeStep(m.config, pers.layers, pers.rings, pers.states, residual=pers.residual,
                                 zx=pers.zx, h=pers.h, pos=pers.pos, eps=m.config.norm_eps, split_out=False,
                                 grid=st.grid, final_norm=(pers.norm_f, pers.residual))


@pytest.mark.gpu
def test_persistent_step_bf16_gpu():
    """A bf16 model with bf16 SSM states (the kernel's other rounding paths) against the per-layer step."""
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.fast_decode import FastDecoder

    _need_kernel()
    m = random_model("370m", weights="ternary", n_layer=2).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 50000, (1, 5), generator=g).cuda()
    forced = torch.randint(0, 50000, (1, 6), generator=g).cuda()
    pers = FastDecoder(m, 1, 16, state_dtype=torch.bfloat16, gemv_configs={"persistent": True})
    per_layer = FastDecoder(m, 1, 16, state_dtype=torch.bfloat16, gemv_configs={"persistent": False})
    assert pers.dtype == torch.bfloat16 and pers.persistent is not None
    a = pers.teacher_forced_logits(prompt, forced)
    b = per_layer.teacher_forced_logits(prompt, forced)
    assert rel_err(a, b) < 1e-2, rel_err(a, b)
    for s1, s2 in zip(pers.states, per_layer.states):
        assert rel_err(s1, s2) < 1e-2
