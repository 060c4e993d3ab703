"""The fused batch-1 head + greedy argmax (kernels/cuda/head_argmax.py): its int8 decode emulated on CPU, its input
checks, and on a GPU the logits against PyTorch, the token against torch.argmax of those logits (ties, NaN, -0,
padding rows), the append, graph replay."""

import numpy as np
import pytest
import torch

from ssmquant.kernels.cuda.head_argmax import (
    HeadArgmax,
    head_argmax_error,
    head_argmax_ref,
    int8_decode_ref,
)


def test_int8_decode_is_exact_for_every_code_in_every_byte():
    """Each byte's bit pattern, read as fp32 and multiplied by the input's pre-scale and 2**64, is the code plus
    128, exactly: 256 codes in each of the 4 bytes of a word (the other bytes random)."""
    rng = np.random.default_rng(0)
    codes = np.arange(-128, 128, dtype=np.int64)
    for j in range(4):
        other = rng.integers(-128, 128, size=(256, 4))
        other[:, j] = codes
        words = (other.astype(np.int8).view(np.uint8).astype(np.uint32)
                 << (8 * np.arange(4, dtype=np.uint32))).sum(-1).astype(np.uint32)
        got = int8_decode_ref(words)
        np.testing.assert_array_equal(got, other + 128.0)


def test_head_argmax_rejects_bad_input():
    x = torch.zeros(2048, dtype=torch.float16)
    w8 = torch.zeros(100, 2048, dtype=torch.int8)
    s = torch.ones(100, dtype=torch.float16)
    assert head_argmax_error(x, w8, s) is None
    assert head_argmax_error(x, torch.zeros(100, 2048, dtype=torch.float16), None) is None
    assert "fp16 or bf16" in head_argmax_error(x.float(), w8, s)
    assert "K=2048" in head_argmax_error(x[:1024], w8, s)
    assert "scale" in head_argmax_error(x, w8, None)
    assert "scale" in head_argmax_error(x, w8, s[:50])
    assert "divisible by 16" in head_argmax_error(x[:2040], w8[:, :2040].contiguous(), s)
    assert "int8 rows only" in head_argmax_error(x, torch.zeros(100, 2048, dtype=torch.float16), s)
    assert "x's dtype" in head_argmax_error(x, torch.zeros(100, 2048, dtype=torch.bfloat16), None)
    assert "contiguous" in head_argmax_error(x, w8.t(), s)


def test_head_argmax_ref_is_the_argmax_of_the_scaled_product():
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-127, 128, (40, 64), generator=g, dtype=torch.int8)
    s = torch.rand(40, generator=g).half()
    x = torch.randn(64, generator=g).half()
    logits, tok = head_argmax_ref(x, w, s, vocab=30)
    assert torch.allclose(logits, (w.float() * s.float()[:, None]) @ x.float(), rtol=1e-5, atol=1e-5)
    assert tok == int(logits[:30].argmax())


# ---------------------------------------------------------------- GPU

def _run(x, w, s, *, vocab=None, grid=None, append=None, pdl=True, ha=None):
    ha = ha or HeadArgmax(x.device)
    logits = torch.full((w.shape[0],), float("nan"), device=x.device)
    tok = torch.full((1,), -1, dtype=torch.int64, device=x.device)
    ha(x, w, s, logits, tok, vocab=vocab, append=append, pdl=pdl, grid=grid)
    torch.cuda.synchronize()
    assert int(ha.count) == 0 and int(ha.key) == -(2**63)       # the scratch resets itself
    return logits, int(tok)


def _int8_head(N, K, seed, scale_dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    s = (torch.rand(N, generator=g) * 0.02 + 1e-3).to(scale_dtype)
    return w.cuda(), s.cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", [(50288, 2048), (50288, 2560), (50280, 768), (1000, 1024), (37, 1536), (3, 16)])
@pytest.mark.parametrize("xdtype", [torch.float16, torch.bfloat16])
def test_int8_head_matches_pytorch(N, K, xdtype):
    w, s = _int8_head(N, K, N + K)
    x = (torch.randn(K, generator=torch.Generator().manual_seed(K)) * 3).to(xdtype).cuda()
    logits, tok = _run(x, w, s, vocab=N - 8 if N > 8 else N)
    ref, _ = head_argmax_ref(x, w, s)
    assert torch.allclose(logits, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    V = N - 8 if N > 8 else N
    assert tok == int(logits[:V].argmax())                      # the argmax of the logits it wrote


@pytest.mark.gpu
@pytest.mark.parametrize("N,K", [(50288, 2048), (1000, 2560), (50, 768)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_head_matches_pytorch(N, K, dtype):
    g = torch.Generator().manual_seed(N)
    w = (torch.randn(N, K, generator=g) * 0.05).to(dtype).cuda()
    x = torch.randn(K, generator=g).to(dtype).cuda()
    logits, tok = _run(x, w, None)
    ref, _ = head_argmax_ref(x, w, None)
    assert torch.allclose(logits, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert tok == int(logits.argmax())


@pytest.mark.gpu
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float32])
def test_int8_head_other_scale_dtypes(scale_dtype):
    w, s = _int8_head(5000, 2048, 3, scale_dtype)
    x = torch.randn(2048, generator=torch.Generator().manual_seed(3)).half().cuda()
    logits, tok = _run(x, w, s)
    ref, _ = head_argmax_ref(x, w, s)
    assert torch.allclose(logits, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert tok == int(logits.argmax())


@pytest.mark.gpu
@pytest.mark.parametrize("grid", [1, 3, None])
def test_argmax_ties_nan_zero_and_padding_rows(grid):
    """Equal best rows: the lowest index; a NaN row wins; -0 equals +0; a larger logit in a padding row (>= vocab)
    is never chosen; all across CTAs (grid 3) and within one (grid 1)."""
    N, K = 4000, 2048
    x = torch.ones(K, dtype=torch.float16, device="cuda")
    s = torch.ones(N, dtype=torch.float16, device="cuda")
    w = torch.zeros(N, K, dtype=torch.int8, device="cuda")
    w[:, 0] = -1                                               # every logit -1
    w[[3100, 1200, 3999], 0] = 5                               # a tie at 5: the lowest index
    w[3990, 0] = 9                                             # larger, but a padding row
    _, tok = _run(x, w, s, vocab=3990, grid=grid)
    assert tok == 1200
    w[:, 0] = -1
    w[[2000, 700], 0] = 0
    s2 = s.clone()
    s2[700] = -1                                               # 0 * -1 = -0, equal to row 2000's +0: the first
    logits, tok = _run(x, w, s2, grid=grid)
    assert tok == 700 and torch.signbit(logits[700]) and not torch.signbit(logits[2000])
    wd = torch.full((N, K), 0.0, dtype=torch.float16, device="cuda")
    wd[:, 0] = -1.0
    wd[100, 0] = 60000.0
    wd[2500, 0] = float("nan")                                 # a NaN logit wins, as in torch.argmax
    logits, tok = _run(x, wd, None, grid=grid)
    assert tok == 2500 == int(torch.argmax(logits))


@pytest.mark.gpu
def test_append_and_graph_replay():
    """``append``: the token goes to ids[0, pos + 1] and pos advances by one per call, also replayed from a CUDA
    graph, with the PDL attribute on and off."""
    N, K = 50288, 2048
    w, s = _int8_head(N, K, 7)
    ha = HeadArgmax("cuda")
    ids = torch.zeros(1, 8, dtype=torch.int64, device="cuda")
    pos = torch.zeros((), dtype=torch.int32, device="cuda")
    x = torch.empty(K, dtype=torch.float16, device="cuda")
    logits = torch.empty(N, device="cuda")
    tok = torch.empty(1, dtype=torch.int64, device="cuda")
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(K, generator=g).half().cuda() for _ in range(6)]
    want = [head_argmax_ref(xi, w, s)[1] for xi in xs]
    for i in range(2):                                          # eager, PDL on and off
        x.copy_(xs[i])
        ha(x, w, s, logits, tok, append=(ids, pos), pdl=bool(i))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        ha(x, w, s, logits, tok, append=(ids, pos))
    torch.cuda.current_stream().wait_stream(stream)
    for i in range(2, 6):
        x.copy_(xs[i])
        graph.replay()
    torch.cuda.synchronize()
    assert int(pos) == 6
    assert ids[0, 1:7].tolist() == want
    assert int(tok) == want[-1]


@pytest.mark.gpu
def test_bad_calls_raise():
    w, s = _int8_head(100, 64, 0)
    ha = HeadArgmax("cuda")
    x = torch.zeros(64, dtype=torch.float16, device="cuda")
    logits = torch.zeros(100, device="cuda")
    tok = torch.zeros(1, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match="vocab"):
        ha(x, w, s, logits, tok, vocab=101)
    with pytest.raises(ValueError, match="logits"):
        ha(x, w, s, logits[:50], tok)
    with pytest.raises(ValueError, match="append"):
        ha(x, w, s, logits, tok, append=(torch.zeros(1, 4, dtype=torch.int32, device="cuda"), tok))


# ---------------------------------------------------------------- in FastDecoder

def test_fast_decoder_head_argmax_option_on_cpu():
    """Where the fused head cannot run (no persistent step here), "auto" keeps the GEMV + argmax and True says
    why; other values fail."""
    from conftest import tiny_model
    from kernels_util import DEVICE

    from ssmquant.bench.models import to_ternary_
    from ssmquant.kernels.fast_decode import FastDecoder

    if DEVICE == "cuda":
        pytest.skip("CPU behaviour")
    m = to_ternary_(tiny_model(seed=1, d_model=64, n_layer=1, d_state=32, headdim=32), 64)
    assert FastDecoder(m, 1, 4).head_argmax is None
    with pytest.raises(ValueError, match="fused head \\+ argmax: .*persistent step"):
        FastDecoder(m, 1, 4, gemv_configs={"head_argmax": True})
    with pytest.raises(ValueError, match="fused head \\+ argmax: batch 1 only"):
        FastDecoder(m, 2, 4, gemv_configs={"head_argmax": True})
    with pytest.raises(ValueError, match="head_argmax"):
        FastDecoder(m, 1, 4, gemv_configs={"head_argmax": "yes"})


@pytest.mark.gpu
@pytest.mark.parametrize("head", ["fp16", "int8"])
def test_fast_decoder_with_the_fused_head_gpu(head):
    """1.3B-wide, 2 layers, persistent step with out_proj by pairs: the fused head + argmax against the head GEMV +
    argmax launches: teacher-forced logits as close as two runs of the split step, the same greedy tokens, eager
    and graphed; sampled decoding (the head's logits, then the sampler) still gives tokens of the vocabulary."""
    from kernels_util import rel_err

    from ssmquant.bench.models import random_model
    from ssmquant.kernels.cuda.nvrtc import nvrtc_supported
    from ssmquant.kernels.fast_decode import FastDecoder
    from ssmquant.quant.int8 import quantize_int8_

    if not nvrtc_supported():
        pytest.skip("needs NVRTC")
    m = random_model("1.3b", weights="ternary", n_layer=2)
    if head == "int8":
        quantize_int8_(m, embedding=True, head=True)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 50000, (1, 5), generator=g).cuda()
    forced = torch.randint(0, 50000, (1, 6), generator=g).cuda()
    fused = FastDecoder(m, 1, 24, gemv_configs={"persistent": True, "out_split": "pair", "head_argmax": True})
    plain = FastDecoder(m, 1, 24, gemv_configs={"persistent": True, "out_split": "pair", "head_argmax": False})
    assert fused.head_argmax is not None and plain.head_argmax is None
    a = fused.teacher_forced_logits(prompt, forced)
    b = plain.teacher_forced_logits(prompt, forced)
    assert rel_err(a, b) < 2e-3, rel_err(a, b)     # (the split step's atomics add in a varying order)
    toks = plain.generate(prompt, 20)
    assert torch.equal(fused.generate(prompt, 20, use_graph=False), toks)
    assert torch.equal(fused.generate(prompt, 20, use_graph=True), toks)
    sampled = fused.generate(prompt, 20, temperature=0.8, top_k=50)[:, prompt.shape[1]:]
    assert bool(((sampled >= 0) & (sampled < m.config.vocab_size)).all())


def test_bench_decode_head_argmax_option():
    """``ssmquant bench decode --head-argmax``'s values; others fail when the config is made, not on the GPU."""
    from ssmquant.bench.gpu import DecodeBenchConfig

    for v in ("auto", "on", "off"):
        assert DecodeBenchConfig(head_argmax=v).head_argmax == v
    with pytest.raises(ValueError, match="head_argmax"):
        DecodeBenchConfig(head_argmax="yes")
