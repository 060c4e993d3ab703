"""Packed ternary checkpoints: pack/unpack exactness, save -> load bit-exact logits, refusals naming the tensor."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import ssmquant
from ssmquant.errors import CheckpointError
from ssmquant.quant import QuantConfig, config_dict, convert, quantize_
from ssmquant.quant.int8 import Int8Linear, dequantize_int8, int8_rowwise, quantize_int8_
from ssmquant.quant.packed_io import DenseCachedTernaryLinear, save_packed_model
from ssmquant.quant.packing import pack, pack_ref, packed_cols, unpack, unpack_ref

from conftest import tiny_model

PACKINGS = ["2bit", "1.6bit"]


def _codes(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)


@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("cols", [1, 4, 5, 7, 20, 64, 257])
def test_pack_roundtrip_and_reference(packing, cols):
    codes = _codes(6, cols, seed=cols)
    packed = pack(codes, packing)
    assert packed.dtype == torch.uint8 and packed.shape == (6, packed_cols(cols, packing))
    assert torch.equal(packed, pack_ref(codes, packing))
    assert torch.equal(unpack(packed, cols, packing), codes)
    assert torch.equal(unpack_ref(packed, cols, packing), codes)


def test_pack_all_byte_values_are_covered():
    # Every valid 1.6-bit byte (0..242) and 2-bit byte without a 3 digit decodes and re-encodes to itself.
    b = torch.arange(243, dtype=torch.uint8).reshape(1, -1)
    assert torch.equal(pack(unpack(b, 5 * 243, "1.6bit"), "1.6bit"), b)
    valid2 = torch.tensor([[v for v in range(256) if all((v >> s) & 3 != 3 for s in (0, 2, 4, 6))]], dtype=torch.uint8)
    assert valid2.shape[1] == 81
    assert torch.equal(pack(unpack(valid2, 4 * 81, "2bit"), "2bit"), valid2)


def test_unpack_refuses_invalid_bytes():
    with pytest.raises(ValueError, match="invalid 2-bit code 3.*row 1, byte 2"):
        unpack(torch.tensor([[0x55, 0x55, 0x55], [0x55, 0x55, 0x57]], dtype=torch.uint8), 12, "2bit")
    with pytest.raises(ValueError, match="invalid trit byte 243"):
        unpack(torch.tensor([[121, 243]], dtype=torch.uint8), 10, "1.6bit")
    with pytest.raises(ValueError, match="padding"):
        unpack(torch.tensor([[0]], dtype=torch.uint8), 3, "2bit")  # column 3 holds code -1, must be padding 0
    with pytest.raises(ValueError, match="outside"):
        pack(torch.tensor([[2]], dtype=torch.int8), "2bit")


def test_int8_rowwise_is_exact_and_bounded():
    w = torch.randn(10, 32) * torch.logspace(-3, 1, 10).unsqueeze(1)
    q, s = int8_rowwise(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and int(q.abs().max()) <= 127
    err = (dequantize_int8(q, s) - w).abs().max(dim=1).values
    assert bool((err <= s.float() * 0.5 + 1e-7).all()), f"max err {err.max()} above half a step"


@pytest.fixture(scope="module")
def student():
    """Tiny random model, ternary in/out_proj (group 32), converted; plus a token batch and its logits."""
    m = tiny_model(seed=3)
    quantize_(m, QuantConfig(group_size=32, scale_mode="fixed"))
    convert(m)
    ids = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return m, ids, m(ids)


@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("runtime", ["dense", "packed"])
def test_save_load_bit_exact(student, tmp_path, packing, runtime, tiny_tokenizer):
    m, ids, ref = student
    save_packed_model(m, tmp_path, tokenizer=tiny_tokenizer, packing=packing,
                      quant_info=config_dict(QuantConfig(group_size=32)))
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["format_version"] == 1 and qc["method"] == "ternary" and qc["packing"] == packing
    assert qc["group_size"] == 32 and set(qc["modules"]) == {f"backbone.layers.{i}.mixer.{p}" for i in range(2)
                                                              for p in ("in_proj", "out_proj")}
    assert (tmp_path / "tokenizer.json").is_file()
    from ssmquant.io.checkpoints import resolve_checkpoint
    from ssmquant.quant.packed_io import load_packed_model

    cfg = json.loads((tmp_path / "config.json").read_text().replace("Infinity", "1e999"))
    loaded = load_packed_model(resolve_checkpoint(tmp_path), cfg, runtime=runtime)
    for name, mod in m.named_modules():
        if hasattr(mod, "codes"):
            got = loaded.get_submodule(name)
            assert torch.equal(got.weight_dequantized(), mod.weight_dequantized()), name
    with torch.no_grad():
        out = loaded(ids)
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max()}"
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    if runtime == "dense":
        assert isinstance(loaded.backbone.layers[0].mixer.in_proj, DenseCachedTernaryLinear)
    # the public entry point dispatches here too
    assert torch.equal(ssmquant.load_model(tmp_path)(ids), ref)
    assert loaded.size_report()["packing"] == packing


def test_int8_head_save_load(student, tmp_path):
    m, ids, _ = student
    m2 = copy.deepcopy(m)
    quantize_int8_(m2)
    assert isinstance(m2.lm_head, Int8Linear) and m2.lm_head.qweight is m2.backbone.embedding.qweight
    with torch.no_grad():
        ref = m2(ids)
    save_packed_model(m2, tmp_path, packing="1.6bit")
    loaded = ssmquant.load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids), ref)
    assert loaded.size_report()["parts_bytes"]["head"] == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight_int8" not in f.keys() and "backbone.embeddings.weight_int8" in f.keys()


def _rewrite(path, fn):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path / "model.safetensors"))
    fn(sd)
    save_file(sd, str(path / "model.safetensors"))


@pytest.mark.parametrize("packing,bad_byte,msg", [("2bit", 0xFF, "invalid 2-bit code 3"),
                                                  ("1.6bit", 250, "invalid trit byte 250")])
def test_load_refuses_invalid_codes(student, tmp_path, packing, bad_byte, msg):
    save_packed_model(student[0], tmp_path, packing=packing)
    key = "backbone.layers.1.mixer.out_proj.weight_packed"

    def corrupt(sd):
        sd[key][3, 2] = bad_byte

    _rewrite(tmp_path, corrupt)
    with pytest.raises(CheckpointError, match=f"{key}.*{msg}.*row 3, byte 2"):
        ssmquant.load_model(tmp_path)


def test_load_refuses_bad_scales_and_shapes(student, tmp_path):
    save_packed_model(student[0], tmp_path, packing="2bit")
    key = "backbone.layers.0.mixer.in_proj.weight_scale"
    _rewrite(tmp_path, lambda sd: sd[key].__setitem__((0, 0), float("nan")))
    with pytest.raises(CheckpointError, match=f"{key} holds non-finite"):
        ssmquant.load_model(tmp_path)

    save_packed_model(student[0], tmp_path, packing="2bit")
    key = "backbone.layers.0.mixer.in_proj.weight_packed"
    _rewrite(tmp_path, lambda sd: sd.__setitem__(key, sd[key][:-1].clone()))
    with pytest.raises(CheckpointError, match=f"{key} is torch.uint8 .* implies uint8"):
        ssmquant.load_model(tmp_path)

    save_packed_model(student[0], tmp_path, packing="2bit")
    cfg = json.loads((tmp_path / "config.json").read_text().replace("Infinity", "1e999"))
    cfg["quantization_config"]["modules"]["backbone.layers.0.mixer.in_proj"]["group_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="in_proj.weight_scale .* group_size 64 implies"):
        ssmquant.load_model(tmp_path)


@pytest.mark.parametrize("bad,msg", [("shape", r"has shape \[\d+\] but the config implies"),
                                     ("int", "has dtype torch.int32; expected floating point"),
                                     ("nan", "holds NaN or Inf values")])
def test_load_refuses_bad_dense_tensors(student, tmp_path, bad, msg):
    """The tensors kept as trained (norms, D, ...) are checked too, and the error names the tensor as stored."""
    save_packed_model(student[0], tmp_path, packing="2bit")
    key = "backbone.layers.0.mixer.D"
    fix = {"shape": lambda t: t[:-1].clone(), "int": lambda t: t.to(torch.int32),
           "nan": lambda t: t.clone().fill_(float("nan"))}[bad]
    _rewrite(tmp_path, lambda sd: sd.__setitem__(key, fix(sd[key])))
    with pytest.raises(CheckpointError, match=f"tensor {key} {msg}"):
        ssmquant.load_model(tmp_path)


def test_save_refuses_unconverted(tmp_path):
    from ssmquant.errors import ConfigError

    with pytest.raises(ConfigError, match="no packed ternary modules"):
        save_packed_model(tiny_model(), tmp_path)
