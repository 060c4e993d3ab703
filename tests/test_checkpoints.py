"""Save/load round trips in every layout, the Hub path (offline, via a local cache), and each bad input's error."""

import json
import os
import shutil

import pytest
import torch

import ssmquant
from ssmquant.errors import CheckpointError, ConfigError
from ssmquant.io.checkpoints import save_model
from ssmquant.model.config import Mamba2Config

from conftest import tiny_model

IDS = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(0))


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(a(IDS), b(IDS))


@pytest.mark.parametrize("layout", ["hf", "mamba_ssm"])
@pytest.mark.parametrize("cfg_kw", [dict(), dict(ngroups=2, tie_embeddings=False)])
def test_save_load_exact(tmp_path, layout, cfg_kw, tiny_tokenizer):
    m = tiny_model(**cfg_kw)
    save_model(m, tmp_path, layout=layout, tokenizer=tiny_tokenizer)
    m2 = ssmquant.load_model(tmp_path)
    _same_model(m, m2)
    assert m2.lm_head.weight is m2.backbone.embedding.weight or not m.config.tie_embeddings
    tok = ssmquant.load_tokenizer(tmp_path)
    assert tok.encode("The quick fox") == tiny_tokenizer.encode("The quick fox")


def test_mamba_ssm_layout_as_published(tmp_path):
    """A state-spaces style checkpoint: mamba-ssm config dialect, pytorch_model.bin with lm_head saved tied."""
    m = tiny_model()
    sd = m.state_dict()  # includes lm_head.weight sharing the embedding storage, as torch.save writes it
    torch.save(sd, tmp_path / "pytorch_model.bin")
    cfg = {"d_model": 64, "d_intermediate": 0, "n_layer": 2, "vocab_size": 100,
           "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 8},
           "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
           "pad_vocab_size_multiple": 16, "tie_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _same_model(m, ssmquant.load_model(tmp_path))


def test_hf_dir_loads_in_transformers(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    m = tiny_model(ngroups=2)
    save_model(m, tmp_path, tokenizer=tiny_tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (hf(IDS).logits - m(IDS)).abs().max() < 2e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok("The quick fox")["input_ids"] == tiny_tokenizer.encode("The quick fox")


def test_transformers_saved_dir_loads(tmp_path):
    """A directory written by transformers' own save_pretrained loads and agrees."""
    transformers = pytest.importorskip("transformers")
    m = tiny_model(ngroups=2)
    save_model(m, tmp_path / "a")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    hf.save_pretrained(tmp_path / "b")
    _same_model(m, ssmquant.load_model(tmp_path / "b"))


def test_sharded_safetensors_with_index(tmp_path):
    from safetensors.torch import load_file, save_file

    m = tiny_model()
    save_model(m, tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, tmp_path / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _same_model(m, ssmquant.load_model(tmp_path))


def test_load_dtype_and_fp32_ssm_params(tmp_path):
    save_model(tiny_model(), tmp_path)
    m = ssmquant.load_model(tmp_path, dtype="bf16")
    assert m.backbone.embedding.weight.dtype == torch.bfloat16
    assert m.backbone.layers[0].mixer.A_log.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(m(IDS).float()).all()


def test_hub_id_from_local_cache(tmp_path, monkeypatch):
    """The Hub path, offline: a repo present in the huggingface_hub cache loads by its id."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--state-spaces--mamba2-tiny"
    snap = repo / "snapshots" / rev
    m = tiny_model()
    save_model(m, snap, layout="mamba_ssm")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    _same_model(m, ssmquant.load_model("state-spaces/mamba2-tiny"))
    with pytest.raises(CheckpointError, match="not in the local cache"):
        ssmquant.load_model("state-spaces/not-there")


# ----- bad input -----------------------------------------------------------------------------------------------

@pytest.fixture
def good_dir(tmp_path):
    d = tmp_path / "m"
    save_model(tiny_model(ngroups=1), d)
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_wrong_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        ssmquant.load_model(tmp_path / "nope")


def test_missing_config(good_dir):
    (good_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        ssmquant.load_model(good_dir)


def test_unparsable_config(good_dir):
    (good_dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        ssmquant.load_model(good_dir)


def test_wrong_ngroups_named(good_dir):
    _edit_config(good_dir, n_groups=8)  # transformers' default, the classic trap
    with pytest.raises(CheckpointError, match=r"in_proj.*imply ngroups/n_groups=1 but the config says 8"):
        ssmquant.load_model(good_dir)
    _edit_config(good_dir, n_groups=1, num_heads=4)
    with pytest.raises(ConfigError, match="num_heads=4 disagrees"):
        ssmquant.load_model(good_dir)


def test_shape_mismatch_names_field(good_dir):
    _edit_config(good_dir, vocab_size=128)
    with pytest.raises(CheckpointError, match="backbone.embedding.weight.*vocab_size"):
        ssmquant.load_model(good_dir)


def test_missing_tensor(good_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(good_dir / "model.safetensors")
    del sd["backbone.layers.1.mixer.D"]
    save_file(sd, good_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor.*layers.1.mixer.D"):
        ssmquant.load_model(good_dir)


def test_truncated_file(good_dir):
    f = good_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*(corrupt|truncated)"):
        ssmquant.load_model(good_dir)


def test_truncated_bin(tmp_path):
    save_model(tiny_model(), tmp_path, layout="mamba_ssm")
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="pytorch_model.bin: corrupt or truncated"):
        ssmquant.load_model(tmp_path)


def test_nan_tensor(good_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(good_dir / "model.safetensors")
    sd["backbone.layers.0.mixer.out_proj.weight"][3, 4] = float("nan")
    save_file(sd, good_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="layers.0.mixer.out_proj.weight holds NaN"):
        ssmquant.load_model(good_dir)


def test_pickle_with_code_refused(tmp_path):
    save_model(tiny_model(), tmp_path, layout="mamba_ssm")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused"):
        ssmquant.load_model(tmp_path)


def test_index_pointing_outside_refused(tmp_path, good_dir):
    shutil.move(good_dir / "model.safetensors", tmp_path / "outside.safetensors")
    (good_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"backbone.norm_f.weight": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        ssmquant.load_model(good_dir)


@pytest.mark.parametrize("change,match", [
    (dict(model_type="llama", architectures=["LlamaForCausalLM"]), "model_type='llama'"),
    (dict(use_bias=True), "use_bias=True is not supported"),
    (dict(norm_before_gate=True), "norm_before_gate"),
    (dict(time_step_limit=[0.0, 0.1]), "time_step_limit"),
])
def test_unsupported_hf_fields(good_dir, change, match):
    _edit_config(good_dir, **change)
    with pytest.raises(ConfigError, match=match):
        ssmquant.load_model(good_dir)


@pytest.mark.parametrize("change,match", [
    ({"ssm_cfg": {}}, "Mamba-1"),
    ({"ssm_cfg": {"layer": "Mamba1"}}, "ssm_cfg.layer='Mamba1'"),
    ({"attn_layer_idx": [1]}, "hybrid attention"),
    ({"d_intermediate": 128}, "d_intermediate=128"),
    ({"ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True}}, "D_has_hdim"),
    ({"ssm_cfg": {"layer": "Mamba2", "bias": True}}, "ssm_cfg.bias"),
    ({"ssm_cfg": {"layer": "Mamba2", "conv_bias": False}}, "conv_bias"),
    ({"ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, 0.5]}}, "dt_limit"),
    ({"ssm_cfg": {"layer": "Mamba2", "made_up": 1}}, "made_up"),
    ({"made_up_top": 1}, "made_up_top"),
])
def test_unsupported_mamba_ssm_fields(change, match):
    base = {"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2"}}
    base.update(change)
    with pytest.raises(ConfigError, match=match):
        Mamba2Config.from_dict(base)


def test_config_constraints():
    with pytest.raises(ConfigError, match="headdim"):
        Mamba2Config(d_model=60, n_layer=1, vocab_size=10, headdim=16)
    with pytest.raises(ConfigError, match="d_model"):
        Mamba2Config(d_model=0, n_layer=1, vocab_size=10)


def test_both_dialects_round_trip():
    cfg = tiny_model(ngroups=2).config
    for d in (cfg.to_hf_dict(), cfg.to_mamba_ssm_dict()):
        c2 = Mamba2Config.from_dict(json.loads(json.dumps(d)))
        for f in ("d_model", "n_layer", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size",
                  "tie_embeddings", "residual_in_fp32"):
            assert getattr(c2, f) == getattr(cfg, f), f
        assert c2.padded_vocab_size == cfg.padded_vocab_size


def test_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a valid tokenizer.json"):
        (tmp_path / "tokenizer.json").write_text("{}")
        ssmquant.load_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        ssmquant.load_tokenizer(str(tmp_path / "missing" / "x"))
