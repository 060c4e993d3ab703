"""The bundled teacher: loads in ssmquant and transformers, and is a real language model on held-out text."""

import math

import pytest
import torch

import ssmquant
from ssmquant.io.bundled import SAMPLE_HELDOUT, SAMPLE_TRAIN, TEACHER_DIR


def test_files_and_sizes():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (TEACHER_DIR / name).is_file(), name
    for f in TEACHER_DIR.rglob("*"):
        assert f.stat().st_size <= 16 * 2**20, f"{f} exceeds 16 MiB"
    assert sum(f.stat().st_size for f in TEACHER_DIR.rglob("*")) <= 25e6


def test_loads_and_predicts_heldout_text():
    from ssmquant.eval.perplexity import perplexity

    model = ssmquant.load_model(TEACHER_DIR)
    tok = ssmquant.load_tokenizer(TEACHER_DIR)
    cfg = model.config
    assert cfg.d_model % 256 == 0 and cfg.d_state >= 64 and tok.vocab_size == 8192
    with torch.no_grad():
        res = perplexity(model, tok, SAMPLE_HELDOUT, context=512, stride=256, max_tokens=4096, batch_size=8)
    # The model card says 51.6 on the whole sample; a unigram model scores ~1,460. On the first 4k tokens the
    # teacher must still be far from unigram quality (and a broken load gives thousands).
    assert res["ppl"] < 150, res
    assert math.isfinite(res["nll"])


def test_transformers_reads_the_folder():
    transformers = pytest.importorskip("transformers")
    model = ssmquant.load_model(TEACHER_DIR)
    hf = transformers.AutoModelForCausalLM.from_pretrained(TEACHER_DIR).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(TEACHER_DIR)
    ids = torch.tensor([hf_tok("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        err = (hf(ids).logits - model(ids)).abs().max().item()
    assert err < 1e-3, err


def test_samples_are_documents():
    from ssmquant.data.corpus import split_documents

    assert len(split_documents(SAMPLE_HELDOUT.read_text())) > 50
    assert len(split_documents(SAMPLE_TRAIN.read_text())) > 500
