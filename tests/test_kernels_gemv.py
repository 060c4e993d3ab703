"""Ternary GEMV layout and kernels against their PyTorch references (CPU: TRITON_INTERPRET=1; GPU: real shapes)."""

import pytest
import torch
from kernels_util import DEVICE, rel_err

from ssmquant.kernels.layout import dequant_ref, pack_gemv, pack_block_size, ternary_linear_ref, unpack_codes_ref
from ssmquant.quant.ternary import dequantize_ternary


def _ternary(N, K, G, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (N, K), generator=g).to(torch.int8)
    scale = (torch.rand(N, K // G, generator=g) + 0.5).half()
    return codes.to(device), scale.to(device)


@pytest.mark.parametrize("N,K,G", [(8, 256, 256), (5, 96, 32), (3, 768, 768), (7, 64, 64)])
def test_pack_roundtrip_and_dequant(N, K, G):
    codes, scale = _ternary(N, K, G, device="cpu")
    w = pack_gemv(codes, scale, G)
    assert w.words.dtype == torch.int32 and w.words.shape == (N, K // 16)
    assert torch.equal(unpack_codes_ref(w), codes)
    assert torch.equal(dequant_ref(w), dequantize_ternary(codes, scale, G))
    assert w.block == pack_block_size(K, G) and G % w.block == 0


def test_layout_places_code_of_input_j_kw_plus_w_in_field_j():
    kb = 32                                           # KW = 2 words per block
    codes = torch.zeros(1, 64, dtype=torch.int8)
    codes[0, kb + 5 * 2 + 1] = 1                      # block 1, field 5, word 1
    w = pack_gemv(codes, torch.ones(1, 1).half(), 64, block=kb)
    expect = torch.full((4,), 0x55555555, dtype=torch.int64)   # every field holds code 0 + 1
    expect[3] += 1 << 10                              # field 5 of word 1 of block 1 holds 2
    assert torch.equal(w.words[0].long(), expect)


@pytest.mark.parametrize("norm,group", [(None, None), ("rms", None), ("gated", None), ("gated", 64)])
@pytest.mark.parametrize("ternary", [True, False])
def test_gemv_matches_reference(norm, group, ternary):
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    N, K, G = 40, 128, 64
    codes, scale = _ternary(N, K, G, seed=1)
    w = pack_gemv(codes, scale, G) if ternary else (codes.float() * scale.float().repeat_interleave(G, 1)).half()
    g = torch.Generator().manual_seed(2)
    x, nw, res = (torch.randn(*s, generator=g).to(DEVICE) for s in [(3, K), (K,), (3, N)])
    out = torch.full((3, N), float("nan"), device=DEVICE)
    gemv(x, w, norm=norm, norm_weight=nw, norm_group=group, residual=res, out=out,
         config=dict(BN=16, BKW=4 if ternary else 32, num_warps=4))
    ref = gemv_ref(x, w, norm=norm, norm_weight=nw, norm_group=group, residual=res)
    err = rel_err(out, ref)
    assert err < 1e-5, f"rel err {err:.2e}, max abs diff {(out - ref).abs().max():.3e}"


@pytest.mark.parametrize("norm", [None, "rms", "gated"])
@pytest.mark.parametrize("scale", [1e-4, 1.0, 3e4])
def test_ternary_gemv_full_tiles_and_activation_range(norm, scale):
    """Tiles that divide the matrix (unmasked, vectorized loads), two K tiles (the prefetch), four-word scale groups,
    and activations far from 1: the denormal decode scales them by up to 2**85 and must stay exact."""
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    N, K, G = 32, 256, 128                            # 16 words per row, pack blocks of 8 words
    codes, scale_w = _ternary(N, K, G, seed=12)
    w = pack_gemv(codes, scale_w, G)
    g = torch.Generator().manual_seed(13)
    x, nw, res = (torch.randn(*s, generator=g).to(DEVICE) for s in [(2, K), (K,), (2, N)])
    x = x * scale
    for cfg in (dict(BN=16, BKW=8, num_warps=1), dict(BN=8, BKW=16, num_warps=1)):
        out = gemv(x, w, norm=norm, norm_weight=nw, residual=res, out=torch.empty_like(res), config=cfg)
        ref = gemv_ref(x, w, norm=norm, norm_weight=nw, residual=res)
        err = rel_err(out, ref)
        assert err < 1e-5, f"{cfg}: rel err {err:.2e}, max abs diff {(out - ref).abs().max():.3e}"


def test_gemv_in_place_residual_and_fp16_out():
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    codes, scale = _ternary(24, 64, 32, seed=3)
    w = pack_gemv(codes, scale, 32)
    x = torch.randn(2, 64, device=DEVICE)
    res = torch.randn(2, 24, device=DEVICE)
    ref = gemv_ref(x, w, residual=res)
    gemv(x, w, residual=res, out=res)
    assert rel_err(res, ref) < 1e-5
    y = gemv(x.half(), w, out_dtype=torch.float16)
    assert y.dtype == torch.float16 and rel_err(y, ternary_linear_ref(x.half(), w)) < 2e-3


def test_ternary_matmul_matches_reference():
    from ssmquant.kernels.triton.gemm import ternary_matmul

    codes, scale = _ternary(48, 128, 64, seed=4)
    w = pack_gemv(codes, scale, 64)
    x = torch.randn(20, 128, device=DEVICE).half()
    out = ternary_matmul(x, w, BM=16, BN=32)
    assert rel_err(out, ternary_linear_ref(x, w)) < 2e-3
    # Residual epilogue, written in place into the fp32 residual (batched decode's out_proj), default tiles.
    res = torch.randn(20, 48, device=DEVICE)
    want = ternary_linear_ref(x, w).float() + res
    got = ternary_matmul(x, w, out=res, residual=res)
    assert got is res and rel_err(res, want) < 2e-3
    with pytest.raises(ValueError, match="out must be"):
        ternary_matmul(x, w, out=torch.empty(20, 47, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", [(8512, 2048), (2048, 4096)])
def test_gemv_real_shapes_gpu(N, K):
    from ssmquant.kernels.triton.gemm import ternary_matmul
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    codes, scale = _ternary(N, K, 128, seed=5, device="cuda")
    w = pack_gemv(codes, scale, 128)
    x = torch.randn(4, K, device="cuda").half()
    ref = ternary_linear_ref(x, w)
    assert rel_err(gemv(x, w), ref) < 1e-5
    assert rel_err(ternary_matmul(x.repeat(8, 1), w), ref.repeat(8, 1)) < 2e-3
    # The fused norms as FastDecoder runs them (fp32 activations, residual epilogue), with and without PDL.
    xf, nw = torch.randn(4, K, device="cuda") * 30, torch.rand(K, device="cuda") + 0.5
    res = torch.randn(4, N, device="cuda")
    for norm in ("rms", "gated"):
        ref = gemv_ref(xf, w, norm=norm, norm_weight=nw, residual=res)
        for pdl in (False, "after", "early"):
            got = gemv(xf, w, norm=norm, norm_weight=nw, residual=res, config=dict(pdl=pdl))
            err = rel_err(got, ref)
            assert err < 1e-6, f"{norm} pdl={pdl}: rel err {err:.2e}, max abs diff {(got - ref).abs().max():.3e}"


# ------------------------------------------------------------------ 1-bit scaffolds and DF-SSM
def _binary(N, K, G, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    signs = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
    scale = (torch.rand(N, K // G, generator=g) + 0.5).half()
    return signs.to(device), scale.to(device)


def test_pack_1bit_roundtrip():
    signs, scale = _binary(6, 256, 128, device="cpu")
    w = pack_gemv(signs, scale, 128, bits=1)
    assert w.words.shape == (6, 8) and w.block == 128 and w.words_per_block == 4
    assert torch.equal(unpack_codes_ref(w), signs)
    with pytest.raises(ValueError, match="zeros"):
        pack_gemv(torch.zeros(2, 32, dtype=torch.int8), torch.ones(2, 1).half(), 32, bits=1)


@pytest.mark.parametrize("norm,group", [(None, None), ("rms", None), ("gated", 128)])
def test_gemv_1bit_matches_reference(norm, group):
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    N, K, G = 40, 256, 128
    signs, scale = _binary(N, K, G, seed=6)
    w = pack_gemv(signs, scale, G, bits=1)
    g = torch.Generator().manual_seed(7)
    x, nw, res = (torch.randn(*s, generator=g).to(DEVICE) for s in [(3, K), (K,), (3, N)])
    out = torch.full((3, N), float("nan"), device=DEVICE)
    gemv(x, w, norm=norm, norm_weight=nw, norm_group=group, residual=res, out=out,
         config=dict(BN=16, BKW=4, num_warps=4))
    ref = gemv_ref(x, w, norm=norm, norm_weight=nw, norm_group=group, residual=res)
    err = rel_err(out, ref)
    assert err < 1e-5, f"rel err {err:.2e}, max abs diff {(out - ref).abs().max():.3e}"


@pytest.mark.parametrize("rank", [0, 12, 32])
def test_gemv_lowrank_matches_reference(rank):
    from ssmquant.kernels.layout import lowrank_linear_ref, pack_lowrank
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    N, K, G = 48, 256, 128
    signs, scale = _binary(N, K, G, seed=8)
    g = torch.Generator().manual_seed(9)
    uq = torch.randint(-127, 128, (N, rank), generator=g).to(torch.int8)
    vq = torch.randint(-127, 128, (rank, K), generator=g).to(torch.int8)
    us, vs = (torch.rand(N, generator=g) * 0.02).half(), (torch.rand(rank, generator=g) * 0.02).half()
    w = pack_lowrank(signs, scale, *(t.to(DEVICE) for t in (uq, us, vq, vs)), G)
    x, nw = torch.randn(2, K, generator=g).to(DEVICE), torch.randn(K, generator=g).to(DEVICE)
    res = torch.randn(2, N, generator=g).to(DEVICE)
    out = gemv(x, w, norm="rms", norm_weight=nw, residual=res, out=res.clone())
    ref = gemv_ref(x, w, norm="rms", norm_weight=nw, residual=res)
    assert rel_err(out, ref) < 1e-5, f"max abs diff {(out - ref).abs().max():.3e}"
    from ssmquant.kernels.triton.gemv import norm_ref
    assert rel_err(out - res, lowrank_linear_ref(norm_ref(x, "rms", nw), w)) < 1e-5


def test_gemv_int8_rows_matches_reference():
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    g = torch.Generator().manual_seed(10)
    q = torch.randint(-127, 128, (50, 64), generator=g).to(torch.int8).to(DEVICE)
    s = (torch.rand(50, generator=g) * 0.01).half().to(DEVICE)
    x, nw = torch.randn(2, 64, generator=g).to(DEVICE), torch.randn(64, generator=g).to(DEVICE)
    out = gemv(x, q, norm="rms", norm_weight=nw, row_scale=s, config=dict(BN=16, BKW=32, num_warps=4))
    ref = gemv_ref(x, q, norm="rms", norm_weight=nw, row_scale=s)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", [(8512, 2048), (2048, 4096)])
def test_gemv_1bit_and_lowrank_real_shapes_gpu(N, K):
    """Default tile configs at the 1.3B shapes, with and without programmatic dependent launch."""
    from ssmquant.kernels.layout import pack_lowrank
    from ssmquant.kernels.triton.gemv import gemv, gemv_ref

    signs, scale = _binary(N, K, 128, seed=11, device="cuda")
    w1 = pack_gemv(signs, scale, 128, bits=1)
    uq = torch.randint(-127, 128, (N, 12), device="cuda").to(torch.int8)
    vq = torch.randint(-127, 128, (12, K), device="cuda").to(torch.int8)
    fac = (uq, torch.full((N,), 1e-3, device="cuda").half(), vq, torch.full((12,), 1e-3, device="cuda").half())
    lw1 = pack_lowrank(signs, scale, *fac, 128)
    lw2 = pack_lowrank(signs, scale, *fac, 128, bits=2)          # the scaffold in 2-bit words, as FastDecoder runs it
    nw = torch.rand(K, device="cuda") + 0.5
    for M in (1, 4):
        x = torch.randn(M, K, device="cuda")
        for pdl in (False, "after", "early"):
            for w in (w1, lw1, lw2):
                got = gemv(x, w, norm="rms", norm_weight=nw, config=dict(pdl=pdl))
                err = rel_err(got, gemv_ref(x, w, norm="rms", norm_weight=nw))
                assert err < 1e-5, f"M={M} pdl={pdl} {type(w).__name__}: rel err {err:.2e}"
