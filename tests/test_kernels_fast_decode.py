"""The fast decoder (fused kernels, CUDA graph on GPU) against the PyTorch model: logits and greedy tokens."""

import pytest
import torch
from conftest import tiny_model
from kernels_util import DEVICE, rel_err

DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32


def _ternary_tiny(seed=3, **kw):
    from ssmquant.quant.layers import PackedTernaryLinear
    from ssmquant.quant.ternary import ternary_codes_and_scales

    m = tiny_model(seed=seed, d_model=32, n_layer=1, d_state=16, headdim=16, **kw)
    for layer in m.backbone.layers:
        for name in ("in_proj", "out_proj"):
            c, s = ternary_codes_and_scales(getattr(layer.mixer, name).weight, 32)
            setattr(layer.mixer, name, PackedTernaryLinear(c, s, 32))
    # fp16 on the GPU; fp32 on CPU, where PyTorch's fp16 conv1d is very slow.
    return m.to(DTYPE).to(DEVICE)


def test_fast_decoder_matches_model():
    from ssmquant.kernels.fast_decode import FastDecoder

    m = _ternary_tiny(ngroups=2)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 100, (2, 3), generator=g).to(DEVICE)
    forced = torch.randint(0, 100, (2, 3), generator=g).to(DEVICE)
    with torch.no_grad():
        cache = m.allocate_cache(2)
        m(prompt, cache)
        ref = torch.stack([m(forced[:, i:i + 1], cache)[:, -1].float() for i in range(3)], 1)
    dec = FastDecoder(m, 2, 4)
    fast = dec.teacher_forced_logits(prompt, forced)
    assert rel_err(fast, ref) < 5e-3, f"max abs diff {(fast - ref).abs().max():.3e}"
    out = dec.generate(prompt, 4, use_graph=DEVICE == "cuda")
    with torch.no_grad():
        expect = m.generate(prompt, 4, temperature=0, vocab_size=m.config.vocab_size, fast=False)
    assert torch.equal(out, expect)


def _dfssm_tiny(rank, seed=11, **kw):
    from ssmquant.quant.binary_lowrank import DFSSMConfig, dfssm_convert, dfssm_quantize_

    m = tiny_model(seed=seed, d_model=32, n_layer=2, d_state=16, headdim=16, **kw)
    dfssm_quantize_(m, DFSSMConfig(group_size=32, rank=rank))
    return dfssm_convert(m).to(DTYPE).to(DEVICE).eval()


def _compare(m, batch=2, steps=3, **dec_kw):
    from ssmquant.kernels.fast_decode import FastDecoder

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 100, (batch, 3), generator=g).to(DEVICE)
    forced = torch.randint(0, 100, (batch, steps), generator=g).to(DEVICE)
    with torch.no_grad():
        cache = m.allocate_cache(batch)
        m(prompt, cache)
        ref = torch.stack([m(forced[:, i:i + 1], cache)[:, -1].float() for i in range(steps)], 1)
    dec = FastDecoder(m, batch, steps + 1, **dec_kw)
    fast = dec.teacher_forced_logits(prompt, forced)
    assert rel_err(fast, ref) < 5e-3, f"max abs diff {(fast - ref).abs().max():.3e}"
    return dec, prompt


@pytest.mark.parametrize("kind", ["ternary", "fp16"])
def test_fast_decoder_batched_step(kind):
    """From GEMM_MIN_BATCH rows the step runs a norm kernel and a tensor-core product (ternary: residual added in
    the GEMM's epilogue): teacher-forced logits match the model, greedy tokens the PyTorch loop."""
    from ssmquant.kernels.prefill import GEMM_MIN_BATCH

    m = _ternary_tiny(seed=5) if kind == "ternary" else tiny_model(seed=5, d_model=32, n_layer=2, d_state=16,
                                                                       headdim=16).to(DTYPE).to(DEVICE)
    dec, prompt = _compare(m, batch=GEMM_MIN_BATCH, steps=2)
    out = dec.generate(prompt, 3, use_graph=DEVICE == "cuda")
    with torch.no_grad():
        expect = m.generate(prompt, 3, temperature=0, vocab_size=m.config.vocab_size, fast=False)
    assert (out == expect).float().mean() > 0.95


@pytest.mark.parametrize("state_dtype", [torch.float16, torch.bfloat16])
def test_fast_decoder_half_state(state_dtype):
    """``state_dtype``: the SSM states are stored in half precision (as mamba-ssm keeps them in the model dtype);
    the logits stay within rounding of the fp32-state model, the buffers have the dtype asked for."""
    from ssmquant.kernels.fast_decode import FastDecoder

    m = _ternary_tiny(seed=9)
    dec, prompt = _compare(m, steps=4, state_dtype=state_dtype)
    assert all(s.dtype == state_dtype for s in dec.states)
    with pytest.raises(ValueError, match="state_dtype"):
        FastDecoder(m, 2, 4, state_dtype=torch.int8)


@pytest.mark.parametrize("rank,scaffold_bits", [(0, 2), (8, 2), (8, 1)])
def test_fast_decoder_runs_dfssm_models(rank, scaffold_bits):
    m = _dfssm_tiny(rank)
    dec, prompt = _compare(m, gemv_configs={"scaffold_bits": scaffold_bits})
    assert dec.layers[0].in_w.scaffold.bits == scaffold_bits
    out = dec.generate(prompt, 4, use_graph=DEVICE == "cuda")
    with torch.no_grad():
        expect = m.generate(prompt, 4, temperature=0, vocab_size=m.config.vocab_size, fast=False)
    assert torch.equal(out, expect)


def test_fast_decoder_int8_embedding_and_head():
    from ssmquant.quant.int8 import quantize_int8_

    m = _ternary_tiny(seed=13)
    quantize_int8_(m, embedding=True, head=True)
    _compare(m, batch=3)


def test_fast_decoder_samples_valid_tokens():
    from ssmquant.kernels.fast_decode import FastDecoder

    m = _ternary_tiny(seed=5)
    dec = FastDecoder(m, 1, 3)
    out = dec.generate(torch.tensor([[1, 2]], device=DEVICE), 3, temperature=1.0, top_k=4,
                       use_graph=DEVICE == "cuda")
    assert out.shape == (1, 5) and int(out.max()) < m.config.vocab_size


@pytest.mark.gpu
def test_fast_decoder_dense_fp16_gpu_graph():
    from ssmquant.kernels.fast_decode import FastDecoder

    m = tiny_model(seed=7).half().cuda()
    prompt = torch.randint(0, 100, (3, 5), device="cuda")
    dec = FastDecoder(m, 3, 12)
    out = dec.generate(prompt, 12)
    with torch.no_grad():
        expect = m.generate(prompt, 12, temperature=0, vocab_size=m.config.vocab_size, fast=False)
    assert (out == expect).float().mean() > 0.9


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ternary", "dfssm"])
def test_pdl_launches_give_identical_logits_gpu(kind):
    """Programmatic dependent launch reorders nothing it must not (kernels/pdl.py): with dependents released early
    or after the wait, logits and tokens equal those of plain launches. DF-SSM runs four GEMVs between two SSM
    steps, the longest chain the rules allow."""
    m = _ternary_tiny(seed=15) if kind == "ternary" else _dfssm_tiny(4, seed=15)
    dec_off, prompt = _compare(m, steps=6, gemv_configs={"pdl": False})
    assert dec_off.pdl is False
    forced = torch.randint(0, 100, (prompt.shape[0], 6), device="cuda")
    want_logits = dec_off.teacher_forced_logits(prompt, forced)
    want = dec_off.generate(prompt, 6)
    for mode in ("after", "early"):
        dec = _compare(m, steps=6, gemv_configs={"pdl": mode})[0]
        assert dec.pdl == mode
        # The kernels of each mode are compiled separately, so only the tokens are compared exactly.
        assert rel_err(dec.teacher_forced_logits(prompt, forced), want_logits) < 1e-5, mode
        assert torch.equal(dec.generate(prompt, 6), want), mode


@pytest.mark.gpu
def test_pdl_early_release_at_scale_gpu():
    """Early release on a decoder whose kernels are long enough to overlap (1.3B-wide layers, 4 of them, batch
    2): every step's logits equal those of launches without PDL (to fp32 rounding: the kernels are compiled
    separately) and the tokens are identical, under the CUDA graph."""
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.fast_decode import FastDecoder
    from ssmquant.kernels.pdl import pdl_mode

    if not pdl_mode():
        pytest.skip("no programmatic dependent launch on this GPU")
    m = random_model("1.3b", weights="ternary", n_layer=4)
    prompt = torch.randint(0, 50000, (2, 8), device="cuda")
    outs = {}
    for mode in (False, "early"):
        dec = FastDecoder(m, 2, 32, gemv_configs={"pdl": mode})
        dec.start(prompt)
        dec.capture()
        logits = []
        for _ in range(24):
            dec.graph.replay()
            logits.append(dec.logits.clone())
        outs[mode] = (torch.stack(logits), dec.ids.clone())
    assert rel_err(outs["early"][0], outs[False][0]) < 1e-5
    assert torch.equal(outs[False][1], outs["early"][1])


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("mma", [True, False, "auto"])
def test_fast_decoder_tensor_core_gemv_gpu(batch, mma):
    """Ternary projections on the tensor-core GEMV (cuda/ternary_mma.py) where chosen: logits match the model, and
    PDL on or off gives identical logits."""
    from ssmquant.kernels.cuda.ternary_mma import mma_supported
    from ssmquant.kernels.layout_mma import MmaTernaryWeight
    from ssmquant.quant.layers import PackedTernaryLinear
    from ssmquant.quant.ternary import ternary_codes_and_scales

    if not mma_supported():
        pytest.skip("no NVRTC / sm_80")
    m = tiny_model(seed=21, d_model=128, n_layer=2, d_state=16, headdim=32)
    for layer in m.backbone.layers:
        for name in ("in_proj", "out_proj"):
            c, s = ternary_codes_and_scales(getattr(layer.mixer, name).weight, 64)
            setattr(layer.mixer, name, PackedTernaryLinear(c, s, 64))
    m = m.half().cuda()
    dec, prompt = _compare(m, batch=batch, steps=4, gemv_configs={"mma": mma})
    kinds = {(k, isinstance(getattr(L, k), MmaTernaryWeight)) for L in dec.layers for k in ("in_w", "out_w")}
    on = mma is True or (mma == "auto" and batch >= 4)
    expect = {("in_w", on), ("out_w", on)}
    assert kinds == expect
    off = _compare(m, batch=batch, steps=4, gemv_configs={"mma": mma, "in_proj_mma": {"pdl": False},
                                                         "out_proj_mma": {"pdl": False}, "in_proj": {"pdl": False},
                                                         "out_proj": {"pdl": False}})[0]
    assert torch.equal(dec.generate(prompt, 5), off.generate(prompt, 5))


def test_fast_decode_supported_checks_projection_types():
    """``model.generate`` asks ``fast_decode_supported`` before building a FastDecoder: dense, ternary and DF-SSM
    projections without a bias pass; a biased or foreign projection does not."""
    import torch.nn as nn

    from ssmquant.kernels.fast_decode import fast_decode_supported

    m = _ternary_tiny(seed=4)
    assert fast_decode_supported(m)              # CUDA, or the Triton interpreter on CPU (kernels_util sets it)
    assert fast_decode_supported(_dfssm_tiny(4))
    mix = m.backbone.layers[0].mixer
    ternary = mix.out_proj
    mix.out_proj = nn.Linear(ternary.in_features, ternary.out_features, bias=True).to(DTYPE).to(DEVICE)
    assert not fast_decode_supported(m)
    mix.out_proj = nn.Identity()
    assert not fast_decode_supported(m)
