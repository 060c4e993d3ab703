"""The tensor-core ternary layout and GEMV (kernels/layout_mma.py, kernels/cuda/ternary_mma.py): layout and decode
arithmetic on CPU, the CUDA kernel against its PyTorch reference on a GPU."""

import numpy as np
import pytest
import torch

from ssmquant.kernels.cuda.ternary_mma import decode_pairs_ref, mma_gemv_error, mma_gemv_ref
from ssmquant.kernels.layout import pack_gemv
from ssmquant.kernels.layout_mma import (mma_dequant_ref, mma_from_gemv, mma_layout_error, pack_mma,
                                         unpack_mma_codes_ref)
from ssmquant.quant.ternary import dequantize_ternary

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _ternary(N, K, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (N, K), generator=g).to(torch.int8)
    scale = (torch.rand(N, K // G, generator=g) + 0.5).half()
    return codes, scale


@pytest.mark.parametrize("N,K,G", [(16, 128, 128), (40, 256, 64), (3, 384, 384), (33, 512, 256)])
def test_pack_roundtrip_and_dequant(N, K, G):
    codes, scale = _ternary(N, K, G)
    w = pack_mma(codes, scale, G)
    N16 = -(-N // 16) * 16
    assert w.words.shape == (N16 // 16, K // 128, 32, 4) and w.words.dtype == torch.int32
    assert w.shape == (N, K) and w.nbytes() == N16 * K // 4 + N16 * (K // G) * 2
    assert torch.equal(unpack_mma_codes_ref(w), codes)
    assert torch.equal(mma_dequant_ref(w), dequantize_ternary(codes, scale, G))
    assert torch.equal(mma_from_gemv(pack_gemv(codes, scale, G)).words, w.words)


def test_fragment_placement():
    """Code of (row 8 + g, k = 16 + 2t + 9) is element 1 (high half) of register a3 of k-step 1 of word 0 of lane
    4 g + t: field q = 7, bits 16 + 14."""
    codes = torch.zeros(16, 128, dtype=torch.int8)
    g, t = 5, 2
    codes[8 + g, 16 + 2 * t + 9] = 1
    w = pack_mma(codes, torch.ones(16, 1).half(), 128)
    words = w.words.long() & 0xFFFFFFFF
    expect = torch.full_like(words, 0x55555555)
    expect[0, 0, 4 * g + t, 0] += 1 << 30
    assert torch.equal(words, expect)


def test_decode_arithmetic_emulated():
    """The kernel's lop3 + fma.f16x2 decode (emulated exactly in NumPy) gives code for every field of every word,
    and the (q, h) order maps back to the layout's (row, k)."""
    N, K, G = 32, 256, 128
    codes, scale = _ternary(N, K, G, seed=3)
    w = pack_mma(codes, scale, G)
    vals = decode_pairs_ref(w.words.numpy().view(np.uint32))                   # (NT, KC, 32, 4, 16) fp16
    assert set(np.unique(vals).tolist()) <= {-1.0, 0.0, 1.0}
    from ssmquant.kernels.layout_mma import _index

    row, k, _ = _index(N, K, "cpu")
    full = torch.from_numpy(vals.astype(np.float32))
    dec = torch.empty(N, K)
    dec[row.expand(full.shape).reshape(-1), k.expand(full.shape).reshape(-1)] = full.reshape(-1)
    assert torch.equal(dec, codes.float())


def test_shape_errors():
    assert mma_layout_error(16, 200, 100) and mma_layout_error(16, 256, 32)
    assert mma_layout_error(16, 256, 64) is None and mma_layout_error(16, 768, 768) is None
    assert "batch" in mma_gemv_error(9, 16, 256, 128)
    assert "shared memory" in mma_gemv_error(8, 16, 8192, 128)
    # 8 rows of 1.3B's / 2.7B's out_proj need more than 48 KB: dynamic shared memory takes them.
    assert mma_gemv_error(8, 2048, 4096, 128) is None and mma_gemv_error(8, 2560, 5120, 128) is None
    with pytest.raises(ValueError, match="group size"):
        pack_mma(*_ternary(16, 256, 32), 32)


@gpu
@pytest.mark.parametrize("M", [1, 3, 4, 8])
@pytest.mark.parametrize("norm", [None, "rms", "gated"])
@pytest.mark.parametrize("N,K,G,cpw", [(8512, 2048, 128, None), (2048, 4096, 128, None), (3352, 768, 64, 2), (2560, 5120, 128, None),
                                       (40, 384, 384, 1), (24, 640, 128, 4)])
def test_mma_gemv_matches_reference(M, norm, N, K, G, cpw):
    from ssmquant.kernels.cuda.ternary_mma import mma_gemv

    if mma_gemv_error(M, N, K, G, cpw):
        pytest.skip(mma_gemv_error(M, N, K, G, cpw))
    codes, scale = _ternary(N, K, G, seed=M)
    w = pack_mma(codes.cuda(), scale.cuda(), G)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(M, K, generator=g) * 3).cuda()
    nw = (torch.rand(K, generator=g) + 0.5).cuda()
    res = torch.randn(M, N, generator=g).cuda()
    ref = mma_gemv_ref(x, w, norm=norm, norm_weight=nw, residual=res)
    out = res.clone()
    mma_gemv(x, w, norm=norm, norm_weight=nw, residual=out, out=out, cpw=cpw)   # in place
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 2e-4, err
    # fp16 in, fp16 out, no residual, without PDL
    xh = x.half() if norm is None else x
    ref = mma_gemv_ref(xh, w, norm=norm, norm_weight=nw)
    out = mma_gemv(xh, w, norm=norm, norm_weight=nw, out_dtype=torch.float16, cpw=cpw, pdl=False)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-3


@gpu
@pytest.mark.parametrize("pdl", ["after", "early"])
def test_mma_gemv_in_cuda_graph_with_pdl(pdl):
    """A chain of GEMVs, each reading the previous one's output, replayed from a CUDA graph with programmatic
    dependent launch in both release modes (kernels/pdl.py)."""
    from ssmquant.kernels.cuda.ternary_mma import mma_gemv

    N, K = 2048, 2048
    ws = [pack_mma(*(t.cuda() for t in _ternary(N, K, 128, seed=s)), 128) for s in range(3)]
    x = torch.randn(1, K, device="cuda")
    nw = torch.ones(K, device="cuda")
    outs = [torch.empty(1, N, device="cuda") for _ in ws]
    chain = lambda: [mma_gemv(x if i == 0 else outs[i - 1], w, out=outs[i], norm="rms", norm_weight=nw,  # noqa: E731
                              pdl=pdl) for i, w in enumerate(ws)]
    chain()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    x.normal_()
    graph.replay()
    ref = x
    for w in ws:
        ref = mma_gemv_ref(ref, w, norm="rms", norm_weight=nw)
    torch.cuda.synchronize()
    assert ((outs[-1] - ref).norm() / ref.norm()).item() < 1e-3
