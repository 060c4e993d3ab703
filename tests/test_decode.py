"""Recurrent decoding (one token at a time, and prefill in segments) equals the parallel forward."""

import pytest
import torch

from conftest import tiny_model


@pytest.mark.parametrize("cfg_kw", [dict(), dict(ngroups=2, chunk_size=4), dict(d_conv=2)])
def test_step_by_step_equals_parallel(cfg_kw):
    m = tiny_model(seed=1, **cfg_kw)
    ids = torch.randint(0, 100, (3, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(ids)
        cache = m.allocate_cache(3)
        outs = [m(ids[:, :5], cache)]                 # prefill (shorter than chunk and than d_conv paths too)
        outs += [m(ids[:, t:t + 1], cache) for t in range(5, 23)]
    err = (torch.cat(outs, 1) - full).abs().max().item()
    assert err < 1e-4, f"max |step - parallel| = {err:.3e}"
    assert cache.seqlen_offset == 23


@pytest.mark.parametrize("split", [1, 2, 9, 15])
def test_prefill_in_segments_equals_one_prefill(split):
    m = tiny_model(seed=2)
    ids = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(ids)
        cache = m.allocate_cache(2)
        a = m(ids[:, :split], cache)
        b = m(ids[:, split:], cache)
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-4


def test_generate_greedy_equals_argmax_of_parallel_forward():
    m = tiny_model(seed=4)
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(2))
    out = m.generate(prompt, max_new_tokens=10, temperature=0)
    with torch.no_grad():
        logits = m(out[:, :-1])
    assert torch.equal(out[:, 4:], logits[:, 3:].argmax(-1))


def test_generate_sampling_is_seeded_and_respects_vocab_and_eos():
    m = tiny_model(seed=4)
    prompt = torch.tensor([[1, 2, 3]])
    a = m.generate(prompt, max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, seed=7, vocab_size=100)
    b = m.generate(prompt, max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, seed=7, vocab_size=100)
    assert torch.equal(a, b)
    assert int(a.max()) < 100  # padded rows 100..111 are never sampled
    eos = int(a[0, 3])
    c = m.generate(prompt, max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, seed=7, vocab_size=100,
                   eos_token_id=eos)
    assert c.shape[1] == 4 and int(c[0, -1]) == eos


def test_top_k_1_is_greedy():
    from ssmquant.model.generate import sample_next

    logits = torch.randn(4, 30)
    assert torch.equal(sample_next(logits, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_next(logits, top_p=1e-6), logits.argmax(-1))


def test_generate_fast_path_equals_pytorch_loop():
    """``generate(fast=True)`` (the fused decoder; Triton interpreted on CPU) gives the PyTorch loop's greedy tokens,
    EOS handling included; on CPU the automatic choice stays on the PyTorch loop."""
    # kernels_util sets TRITON_INTERPRET=1 when there is no GPU, before Triton is first imported, then skips the
    # test if Triton is missing.
    from kernels_util import DEVICE

    m = tiny_model(seed=6, n_layer=1).to(DEVICE)
    if DEVICE == "cuda":
        m = m.half()
    prompt = torch.randint(0, 100, (2, 4), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    slow = m.generate(prompt, max_new_tokens=4, temperature=0, vocab_size=100, fast=False)
    fast = m.generate(prompt, max_new_tokens=4, temperature=0, vocab_size=100, fast=True)
    assert torch.equal(fast, slow)
    eos = int(slow[0, 5])
    assert torch.equal(m.generate(prompt, max_new_tokens=4, temperature=0, vocab_size=100, eos_token_id=eos,
                                  fast=True),
                       m.generate(prompt, max_new_tokens=4, temperature=0, vocab_size=100, eos_token_id=eos,
                                  fast=False))
    sampled = m.generate(prompt, max_new_tokens=3, temperature=1.0, top_k=5, vocab_size=100, fast=True)
    assert sampled.shape == (2, 7) and int(sampled.max()) < 100
    with pytest.raises(ValueError, match="top_p"):
        m.generate(prompt, max_new_tokens=2, top_p=0.9, fast=True)
    if DEVICE == "cpu":
        from ssmquant.model.generate import _fast_path_blocker
        assert "CUDA" in _fast_path_blocker(m, top_p=1.0, seed=None, callback=None, explicit=False)
