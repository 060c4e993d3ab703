"""Our logits against transformers' Mamba2ForCausalLM (the outside oracle) on tiny random configs."""

import pytest
import torch

from ssmquant.io import names
from ssmquant.io.checkpoints import load_state_into_model

from conftest import tiny_model

transformers = pytest.importorskip("transformers")

CONFIGS = [
    dict(),                                                          # ngroups 1, padded vocab
    dict(ngroups=2, d_state=8),                                      # several groups
    dict(ngroups=4, headdim=8, d_model=32, n_layer=3, chunk_size=5),  # chunk not dividing length, g = 4
    dict(pad_vocab_size_multiple=1, vocab_size=97, tie_embeddings=False),  # unpadded vocab, untied head
    dict(d_conv=3, expand=3, d_model=48, headdim=12, residual_in_fp32=False),
]


def _hf_model(cfg):
    hf_cfg = transformers.Mamba2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "model_type")})
    return transformers.Mamba2ForCausalLM(hf_cfg).eval()


@pytest.mark.parametrize("cfg_kw", CONFIGS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default")
@pytest.mark.parametrize("seqlen", [1, 13, 40])
def test_logits_match_transformers(cfg_kw, seqlen):
    ours = tiny_model(seed=3, **cfg_kw)
    hf = _hf_model(ours.config)
    sd = {names.to_hf_name(k): v for k, v in ours.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    ids = torch.randint(0, ours.config.vocab_size, (2, seqlen), generator=torch.Generator().manual_seed(seqlen))
    with torch.no_grad():
        a = ours(ids)
        b = hf(ids).logits
    assert a.shape == b.shape == (2, seqlen, ours.config.padded_vocab_size)
    err = (a - b).abs().max().item()
    assert err < 2e-4, f"max |ours - transformers| = {err:.3e}, mean {(a - b).abs().mean():.3e}"


@pytest.mark.parametrize("cfg_kw", CONFIGS[:2])
def test_state_dict_from_transformers(cfg_kw):
    """The other direction: a transformers model's state dict loads into ours and gives its logits."""
    cfg = tiny_model(**cfg_kw).config
    torch.manual_seed(11)
    hf = _hf_model(cfg)
    ours = load_state_into_model(cfg, ((k, v, "mem") for k, v in hf.state_dict().items()))
    ids = torch.randint(0, cfg.vocab_size, (1, 19))
    with torch.no_grad():
        err = (ours(ids) - hf(ids).logits).abs().max().item()
    assert err < 2e-4, f"max diff {err:.3e}"


def test_cached_decoding_matches_transformers_generate():
    ours = tiny_model(seed=5, ngroups=2)
    hf = _hf_model(ours.config)
    hf.load_state_dict({names.to_hf_name(k): v for k, v in ours.state_dict().items()}, strict=False)
    prompt = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    a = ours.generate(prompt, max_new_tokens=12, temperature=0)
    b = hf.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(a, b), f"ours {a.tolist()} vs transformers {b.tolist()}"
