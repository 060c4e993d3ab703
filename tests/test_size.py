"""Size accounting: the paper's 744 MB for Mamba-2 1.3B from shapes alone, our targets, and real packed files."""

from __future__ import annotations

import pytest
import torch

from ssmquant.model.config import preset_config
from ssmquant.model.mamba2 import Mamba2LMHeadModel
from ssmquant.quant import QuantConfig, convert, quantize_
from ssmquant.quant.int8 import quantize_int8_
from ssmquant.quant.packed_io import save_packed_model
from ssmquant.quant.size import format_size_report, size_report

from conftest import tiny_model


@pytest.fixture(scope="module")
def meta_1p3b():
    with torch.device("meta"):
        return Mamba2LMHeadModel(preset_config("1.3b"))


def test_paper_744mb_from_architecture(meta_1p3b):
    # Ternary Mamba: 2-bit codes + one fp16 scale per 128 weights, fp16 embedding counted twice, rest fp16.
    rep = size_report(meta_1p3b, packing="2bit", group_size=128, embedding="float16", rest_dtype="float16")
    assert rep["quantized_weights"] == 1_239_416_832
    assert rep["bits_per_quantized_weight"] == pytest.approx(2.125)
    assert round(rep["paper_total_mb"]) == 744, format_size_report(rep)
    assert rep["parts_mb"]["embedding"] == pytest.approx(205.98, abs=0.01)
    assert rep["total_mb"] == pytest.approx(rep["paper_total_mb"] - 205.98, abs=0.01)  # ours: tied head once


def test_our_targets_at_1p3b(meta_1p3b):
    fp16_emb = size_report(meta_1p3b, packing="1.6bit", group_size=256, embedding="float16")  # rest as built (fp32)
    assert fp16_emb["total_mb"] <= 470, format_size_report(fp16_emb)
    int8_emb = size_report(meta_1p3b, packing="1.6bit", group_size=256, embedding="int8")
    assert int8_emb["total_mb"] <= 370, format_size_report(int8_emb)
    assert int8_emb["parts_mb"]["head"] == 0 and int8_emb["tied_head"]


def test_dense_model_without_overrides_counts_what_it_holds():
    m = tiny_model()
    rep = size_report(m)
    assert rep["quantized_weights"] == 0 and rep["bits_per_quantized_weight"] is None
    unique = sum(p.numel() * p.element_size() for p in {id(p): p for p in m.parameters()}.values())
    assert rep["total_bytes"] == unique


@pytest.mark.parametrize("packing", ["2bit", "1.6bit"])
@pytest.mark.parametrize("int8", [False, True])
def test_report_matches_packed_file(tmp_path, packing, int8):
    """A real packed model's report equals the bytes of the tensors in its safetensors file."""
    from safetensors import safe_open

    m = tiny_model(seed=1)
    quantize_(m, QuantConfig(group_size=32))
    convert(m)
    if int8:
        quantize_int8_(m)
    save_packed_model(m, tmp_path, packing=packing)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        file_bytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
        code_bytes = sum(f.get_tensor(k).numel() for k in f.keys() if k.endswith("weight_packed"))
    rep = size_report(m, packing=packing)
    assert rep["total_bytes"] == file_bytes, format_size_report(rep)
    assert rep["parts_bytes"]["codes"] == code_bytes
    import ssmquant

    loaded = ssmquant.load_model(tmp_path)
    assert loaded.size_report()["total_bytes"] == file_bytes  # the dense cache is not counted
    assert "paper way" in format_size_report(loaded.size_report())
