"""GGUF export: write -> GGUFReader -> dequantize equals our weights; refusals; llama.cpp runs it (slow, opt-in)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

import ssmquant  # noqa: E402
from ssmquant.export.gguf import (  # noqa: E402
    ExportError, GGUFExportConfig, block_scales, export_gguf, tq1_0_blocks, tq2_0_blocks)
from ssmquant.quant import QuantConfig, convert, quantize_  # noqa: E402
from ssmquant.quant.packed_io import save_packed_model  # noqa: E402

TEACHER = Path(ssmquant.__file__).parent / "assets" / "teacher"
LLAMA_PY = Path(os.environ.get("SSMQUANT_LLAMA_PYTHON", "/tmp/llamavenv/bin/python"))


@pytest.mark.parametrize("qtype,fn", [("TQ2_0", tq2_0_blocks), ("TQ1_0", tq1_0_blocks)])
def test_tq_blocks_dequantize_exactly_with_gguf(qtype, fn):
    from gguf.quants import dequantize

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (5, 512), generator=g, dtype=torch.int8)
    scale = (torch.rand(5, 2, generator=g) * 0.1 + 1e-3).to(torch.float16)
    d = block_scales(codes, scale, 256, "w")
    blocks = fn(codes, d)
    got = dequantize(blocks, getattr(gguf.GGMLQuantizationType, qtype))
    want = (codes.float().reshape(5, 2, 256) * scale.float().unsqueeze(-1)).reshape(5, 512)
    assert np.array_equal(got, want.numpy())


def test_block_scales_rules():
    codes = torch.zeros(2, 512, dtype=torch.int8)
    same = torch.full((2, 4), 0.5, dtype=torch.float16)
    assert block_scales(codes, same, 128, "w").shape == (2, 2)          # equal scales in a block: fine
    assert block_scales(codes, same[:, :1], 512, "w").shape == (2, 2)   # group 512 repeats per block
    differ = same.clone()
    differ[1, 3] = 0.25
    with pytest.raises(ExportError, match=r"w: group_size=128 .*\(row 1, block 1.*group_size=256"):
        block_scales(codes, differ, 128, "w")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Teacher as f16, ternary student (group 256, no training: a format check) as tq2_0 / tq1_0."""
    root = tmp_path_factory.mktemp("gguf")
    teacher = ssmquant.load_model(TEACHER)
    student = ssmquant.load_model(TEACHER)
    quantize_(student, QuantConfig(group_size=256))
    convert(student)
    save_packed_model(student, root / "student", tokenizer=ssmquant.load_tokenizer(TEACHER), packing="1.6bit")
    files = {"f16": export_gguf(GGUFExportConfig(str(TEACHER), str(root / "teacher-f16.gguf"), type="f16"))}
    for t in ("tq2_0", "tq1_0", "f16"):
        key = t if t != "f16" else "student_f16"
        files[key] = export_gguf(GGUFExportConfig(str(root / "student"), str(root / f"student-{t}.gguf"), type=t))
    return root, teacher, student, files


def _read(path):
    from gguf.quants import dequantize

    r = gguf.GGUFReader(path)
    return r, {t.name: (t.tensor_type, dequantize(t.data, t.tensor_type)) for t in r.tensors}


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
def test_ternary_roundtrip_exact(exported, qtype):
    _, _, student, files = exported
    r, t = _read(files[qtype].path)
    assert files[qtype].verified
    for i, layer in enumerate(student.backbone.layers):
        for ours, theirs in (("in_proj", "ssm_in"), ("out_proj", "ssm_out")):
            typ, vals = t[f"blk.{i}.{theirs}.weight"]
            assert typ.name == qtype.upper()
            want = getattr(layer.mixer, ours).weight_dequantized().numpy()
            assert np.array_equal(vals.reshape(want.shape), want), f"blk.{i}.{theirs}"
        a = t[f"blk.{i}.ssm_a"][1]
        assert np.array_equal(a.reshape(-1), (-torch.exp(layer.mixer.A_log.float())).detach().numpy())
        assert t[f"blk.{i}.ssm_norm.weight"][1].shape == (1, 512)      # (n_group, d_inner / n_group)
        assert t[f"blk.{i}.ssm_conv1d.weight"][1].shape == (640, 4)    # squeezed (conv_dim, d_conv)
    assert "output.weight" not in t  # tied head: llama.cpp reuses token_embd
    kv = {f.name: f for f in r.fields.values()}
    assert bytes(kv["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    assert int(kv["mamba2.ssm.time_step_rank"].parts[-1][0]) == 8
    assert int(kv["mamba2.ssm.inner_size"].parts[-1][0]) == 512


def test_f16_teacher_within_fp16_rounding(exported):
    _, teacher, _, files = exported
    _, t = _read(files["f16"].path)
    sd = teacher.state_dict()
    for gname, ours in (("token_embd.weight", "backbone.embedding.weight"),
                        ("blk.2.ssm_in.weight", "backbone.layers.2.mixer.in_proj.weight"),
                        ("blk.3.ssm_out.weight", "backbone.layers.3.mixer.out_proj.weight")):
        typ, vals = t[gname]
        w = sd[ours].float()
        assert typ.name == "F16"
        err = np.abs(vals.reshape(w.shape) - w.numpy())
        tol = np.abs(w.numpy()) * 2.0**-11 + 2.0**-24    # half an fp16 ulp, relative
        assert (err <= tol).all(), f"{gname}: max diff {err.max():.3g}"
    typ, vals = t["blk.1.ssm_d"]
    assert typ.name == "F32" and np.array_equal(vals.reshape(-1), sd["backbone.layers.1.mixer.D"].numpy())
    assert files["f16"].bytes == os.path.getsize(files["f16"].path)


def test_export_refuses_group_128_and_dense_tq(exported, tmp_path):
    from ssmquant.export.gguf import write_gguf

    teacher = exported[1]
    student = ssmquant.load_model(TEACHER)
    quantize_(student, QuantConfig(group_size=128))
    convert(student)
    out = tmp_path / "x.gguf"
    tok = TEACHER / "tokenizer.json"
    with pytest.raises(ExportError, match="Train with QuantConfig\\(group_size=256\\)"):
        write_gguf(student, out, qtype="tq2_0", tokenizer_json=tok)
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))  # nothing half-written left behind
    with pytest.raises(ExportError, match="dense .*--type f16"):
        write_gguf(teacher, out, qtype="tq1_0", tokenizer_json=tok)


def test_cli_export(exported, tmp_path):
    from ssmquant.cli import build_parser

    root = exported[0]
    p = build_parser()
    try:
        args = p.parse_args(["export", str(root / "student"), "--type", "tq1_0", "--out", str(tmp_path / "a.gguf")])
    except SystemExit:
        pytest.skip("export is not registered in cli.SUBCOMMAND_MODULES yet")
    args.func(args)
    assert (tmp_path / "a.gguf").stat().st_size == os.path.getsize(exported[3]["tq1_0"].path)


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp itself (llama-cpp-python in its own venv; builds llama.cpp from source, so opt-in)
# ----------------------------------------------------------------------------------------------------------------

LLAMA_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, ids = sys.argv[1], json.loads(sys.argv[2])
llm = Llama(model_path=path, n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2)
llm.eval(ids)
out = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
toks = llm.tokenize(sys.argv[3].encode(), add_bos=False, special=False)
print(json.dumps({"logits": out.tolist(), "tokens": toks}))
"""

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def llama_logits(path: str, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    res = subprocess.run([str(LLAMA_PY), "-c", LLAMA_SCRIPT, path, json.dumps(ids), PROMPT],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads(res.stdout.strip().splitlines()[-1])
    return np.asarray(d["logits"], dtype=np.float32), d["tokens"]


def compare_with_llama(model, path: str, ids: list[int]) -> dict:
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].float().numpy()
    theirs, toks = llama_logits(path, ids)
    diff = np.abs(theirs - ours[:, : theirs.shape[1]])
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "logit_std": float(ours.std()), "argmax_agree": float((theirs.argmax(-1) == ours.argmax(-1)).mean()),
            "tokens_match": toks == ids}


@pytest.mark.slow
@pytest.mark.skipif(not LLAMA_PY.exists(), reason="llama-cpp-python venv not found (set SSMQUANT_LLAMA_PYTHON)")
@pytest.mark.parametrize("which", ["f16", "student_f16", "tq2_0", "tq1_0"])
def test_llama_cpp_logits_match(exported, which):
    _, teacher, student, files = exported
    ids = ssmquant.load_tokenizer(TEACHER).encode(PROMPT)
    stats = compare_with_llama(teacher if which == "f16" else student, files[which].path, ids)
    print(which, stats)
    assert stats["tokens_match"], "llama.cpp's tokenizer splits the prompt differently"
    assert stats["argmax_agree"] == 1.0, stats
    std = stats["logit_std"]
    if which in ("f16", "student_f16"):
        # F16 weights (teacher: rounded; student: exact), fp32 compute: only summation order and fp16 rounding.
        assert stats["max_abs"] < 0.005 * std, stats
    else:
        # TQ1_0/TQ2_0 dot products quantize the activations to 8 bits (Q8_K) in llama.cpp's CPU kernels; the
        # weights themselves are exact (test_ternary_roundtrip_exact), so this is llama.cpp's activation rounding.
        assert stats["mean_abs"] < 0.02 * std and stats["max_abs"] < 0.15 * std, stats


@pytest.mark.slow
@pytest.mark.skipif(not LLAMA_PY.exists(), reason="llama-cpp-python venv not found (set SSMQUANT_LLAMA_PYTHON)")
def test_llama_cpp_runs_dfssm_q1_0_scaffold(tmp_path):
    """A DF-SSM student exported as its Q1_0 scaffold (--drop-lowrank) runs in llama.cpp and gives the logits of our
    model with the low-rank correction removed (U = 0); the full DF-SSM model is what llama.cpp cannot run."""
    from ssmquant.cli import main
    from ssmquant.quant.binary_lowrank import DFSSMConfig, dfssm_convert, dfssm_modules, dfssm_quantize_
    from ssmquant.quant.dfssm_io import save_dfssm_model

    m = ssmquant.load_model(TEACHER)
    dfssm_quantize_(m, DFSSMConfig(group_size=128, rank=8))
    assert len(list(dfssm_modules(m))) == 2 * m.config.n_layer
    packed = dfssm_convert(m.eval())
    save_dfssm_model(packed, tmp_path / "df", tokenizer=ssmquant.load_tokenizer(TEACHER))
    assert main(["export", str(tmp_path / "df"), "--type", "q1_0", "--drop-lowrank",
                 "--out", str(tmp_path / "df.gguf")]) == 0
    scaffold_only = ssmquant.load_model(tmp_path / "df")
    n = 0
    for mod in scaffold_only.modules():
        if hasattr(mod, "u_q"):
            mod.u_q.zero_()
            n += 1
    assert n == 2 * m.config.n_layer
    ids = ssmquant.load_tokenizer(TEACHER).encode(PROMPT)
    stats = compare_with_llama(scaffold_only, str(tmp_path / "df.gguf"), ids)
    full = compare_with_llama(ssmquant.load_model(tmp_path / "df"), str(tmp_path / "df.gguf"), ids)
    print("q1_0 scaffold", stats, "full dfssm", full)
    assert stats["tokens_match"]
    std = stats["logit_std"]
    # llama.cpp's Q1_0 dot product quantizes the activations to 8 bits (Q8_0), as with TQ; weights read back exact.
    assert stats["mean_abs"] < 0.02 * std and stats["max_abs"] < 0.15 * std, stats
    assert stats["argmax_agree"] == 1.0, stats
    # The dropped correction is visible: the file is further from the full DF-SSM model than from the scaffold.
    assert full["mean_abs"] > 2 * stats["mean_abs"], (stats, full)
