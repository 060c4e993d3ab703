"""Data pipeline: sources -> tokens -> cache -> batches. All on CPU with a tiny BPE trained here."""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import threading
import types

import numpy as np
import pytest
import torch

from ssmquant.data import (TokenBatcher, build_token_dataset, default_cache_dir, open_token_dataset, parse_source,
                           validation_sequences)
from ssmquant.data import pack, sources
from ssmquant.errors import DataError
from ssmquant.io.tokenizer import Tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "State space models scan a sequence with a recurrent state.",
    "Ternary weights take values minus one, zero and plus one.",
    "Distillation trains a small student to match a teacher.",
    "Mamba uses selective state spaces with input dependent steps.",
]


def _train_bpe(vocab_size: int, texts: list[str]):
    from tokenizers import Tokenizer as Tk, decoders, models, pre_tokenizers, trainers

    tk = Tk(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return tk


class CountingTokenizer(Tokenizer):
    """Counts tokenizer calls, to tell a cache hit from a rebuild."""

    def __init__(self, tk):
        super().__init__(tk, source="test")
        self.calls = 0

    def encode_batch(self, texts):
        self.calls += 1
        return super().encode_batch(texts)


@pytest.fixture(scope="module")
def tk_raw():
    return _train_bpe(400, SENTENCES * 4)


@pytest.fixture
def tok(tk_raw):
    return CountingTokenizer(tk_raw)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _docs(n: int) -> list[str]:
    return [f"Document number {i}: " + SENTENCES[i % len(SENTENCES)] + f" It ends with token {i}." for i in range(n)]


def _split_docs(tokens: np.ndarray, eos: int) -> list[list[int]]:
    """Split an EOS-terminated token stream into documents (checks it ends with EOS)."""
    toks = tokens.tolist()
    assert toks and toks[-1] == eos, "stream must end with EOS"
    out, cur = [], []
    for t in toks:
        if t == eos:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out


def _write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))


# ---- tokenize -> pack -> cache ----------------------------------------------------------------------------


def test_round_trip_files_eos_between_documents(tmp_path, tok, cache):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    docs = _docs(4)
    (d / "b.txt").write_text(docs[1])
    (d / "a.md").write_text(docs[0])
    (d / "sub" / "c.rst").write_text(docs[2])
    with gzip.open(d / "sub" / "d.txt.gz", "wt") as f:
        f.write(docs[3])
    (d / ".hidden.txt").write_text("never read")
    (d / "notes.csv").write_text("ignored,type")

    ds = build_token_dataset([str(d)], tok, valid_fraction=0.0, cache_dir=cache, progress=False)
    assert ds.built and ds.train_tokens.dtype == np.uint16 and isinstance(ds.train_tokens, np.memmap)
    # Sorted relative paths: a.md, b.txt, sub/c.rst, sub/d.txt.gz; each document followed by EOS.
    expected = [t for doc in docs for t in tok.encode(doc) + [tok.eos_token_id]]
    assert ds.train_tokens.tolist() == expected
    assert ds.num_train_tokens == len(expected) and ds.num_valid_tokens == 0
    assert _split_docs(ds.train_tokens, tok.eos_token_id) == [tok.encode(x) for x in docs]
    assert ds.meta["num_train_docs"] == 4

    again = open_token_dataset(ds.path)
    assert np.array_equal(again.train_tokens, ds.train_tokens)
    assert not list(cache.glob("*.tmp-*")), "a temporary build directory was left behind"


def test_jsonl_parquet_and_text_field(tmp_path, tok, cache):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = _docs(6)
    _write_jsonl(tmp_path / "a.jsonl", docs[:2], field="body")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"body": x}) for x in docs[2:4]) + "\n\n")
    pq.write_table(pa.table({"body": docs[4:], "n": [4, 5]}), tmp_path / "c.parquet")

    specs = [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl.gz", "c.parquet")]
    ds = build_token_dataset(specs, tok, valid_fraction=0.0, cache_dir=cache, text_field="body", progress=False)
    assert _split_docs(ds.train_tokens, tok.eos_token_id) == [tok.encode(x) for x in docs]


def test_large_text_file_streams_in_segments_with_same_tokens(tmp_path, tok, cache, monkeypatch):
    text = "\n".join(SENTENCES * 20) + "\n\n  indented line\n" + "last line"
    (tmp_path / "big.txt").write_text(text)
    monkeypatch.setattr(sources, "TEXT_CHUNK_CHARS", 100)
    monkeypatch.setattr(pack, "BATCH_SEGMENTS", 3)  # also exercise many flushes within one document
    segs = list(parse_source(str(tmp_path / "big.txt")).segments())
    assert len(segs) > 5 and [s.last for s in segs] == [False] * (len(segs) - 1) + [True]
    assert "".join(s.text for s in segs) == text
    ds = build_token_dataset([str(tmp_path / "big.txt")], tok, valid_fraction=0.0, cache_dir=cache, progress=False)
    assert ds.train_tokens.tolist() == tok.encode(text) + [tok.eos_token_id]


def test_cache_reuse_and_invalidation(tmp_path, tk_raw, cache):
    src = tmp_path / "a.txt"
    src.write_text(SENTENCES[0])
    (tmp_path / "b.txt").write_text(SENTENCES[1])
    tok = CountingTokenizer(tk_raw)
    ds1 = build_token_dataset([str(tmp_path)], tok, cache_dir=cache, progress=False)
    calls = tok.calls
    assert ds1.built and calls > 0

    ds2 = build_token_dataset([str(tmp_path)], tok, cache_dir=cache, progress=False)
    assert not ds2.built and tok.calls == calls and ds2.path == ds1.path
    assert np.array_equal(ds2.train_tokens, ds1.train_tokens)

    st = src.stat()  # touch: same content, newer mtime
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    ds3 = build_token_dataset([str(tmp_path)], tok, cache_dir=cache, progress=False)
    assert ds3.built and ds3.path != ds1.path and tok.calls > calls

    src.write_text(SENTENCES[0] + " Edited.")
    ds4 = build_token_dataset([str(tmp_path)], tok, cache_dir=cache, progress=False)
    assert ds4.built and ds4.path not in (ds1.path, ds3.path)

    other = CountingTokenizer(_train_bpe(300, SENTENCES))
    assert other.fingerprint != tok.fingerprint
    ds5 = build_token_dataset([str(tmp_path)], other, cache_dir=cache, progress=False)
    assert ds5.built and ds5.path != ds4.path

    ds6 = build_token_dataset([str(tmp_path)], tok, cache_dir=cache, seed=1, progress=False)
    assert ds6.path != ds4.path  # the seed decides the split, so it is part of the key

    (ds4.path / "valid.bin").unlink()  # a damaged entry is rebuilt, not trusted
    ds7 = build_token_dataset([str(tmp_path)], tok, cache_dir=cache, progress=False)
    assert ds7.built and ds7.path == ds4.path and np.array_equal(ds7.train_tokens, ds4.train_tokens)


def test_max_tokens_stops_at_a_document_end(tmp_path, tok, cache, monkeypatch):
    monkeypatch.setattr(pack, "BATCH_SEGMENTS", 1)
    docs = _docs(20)
    _write_jsonl(tmp_path / "a.jsonl", docs)
    ds = build_token_dataset([str(tmp_path / "a.jsonl")], tok, valid_fraction=0.0, max_tokens=50, cache_dir=cache,
                             progress=False)
    got = _split_docs(ds.train_tokens, tok.eos_token_id)
    assert got == [tok.encode(d) for d in docs[:len(got)]] and len(got) < 20
    assert ds.num_train_tokens >= 50 and ds.num_train_tokens - len(got[-1]) - 1 < 50


def test_concurrent_builds_tokenize_once(tmp_path, tk_raw, cache):
    _write_jsonl(tmp_path / "a.jsonl", _docs(50))
    tok = CountingTokenizer(tk_raw)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        build_token_dataset([str(tmp_path / "a.jsonl")], tok, cache_dir=cache, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and sum(r.built for r in results) == 1
    assert len({r.path for r in results}) == 1


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SSMQUANT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "tokens"
    monkeypatch.delenv("SSMQUANT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert str(default_cache_dir()).endswith(os.path.join(".cache", "ssmquant", "tokens"))


# ---- validation split -------------------------------------------------------------------------------------


def test_validation_split_is_by_document_disjoint_and_seeded(tmp_path, tok, cache):
    docs = _docs(60)
    _write_jsonl(tmp_path / "a.jsonl", docs)
    encoded = {tuple(tok.encode(x)): i for i, x in enumerate(docs)}

    def split(seed):
        ds = build_token_dataset([str(tmp_path / "a.jsonl")], tok, valid_fraction=0.25, seed=seed, cache_dir=cache,
                                 progress=False)
        train = [encoded[tuple(d)] for d in _split_docs(ds.train_tokens, tok.eos_token_id)]
        valid = [encoded[tuple(d)] for d in _split_docs(ds.valid_tokens, tok.eos_token_id)]
        assert (ds.meta["num_train_docs"], ds.meta["num_valid_docs"]) == (len(train), len(valid))
        return train, valid

    train, valid = split(0)
    assert sorted(train + valid) == list(range(60)), "every document lands whole in exactly one split"
    assert set(train).isdisjoint(valid) and 5 <= len(valid) <= 30
    assert train == sorted(train) and valid == sorted(valid)  # stream order kept within each split
    assert split(0) == (train, valid)
    assert split(1)[1] != valid


def test_small_corpus_still_gets_one_validation_document(tmp_path, tok, cache):
    for i, d in enumerate(_docs(3)):
        (tmp_path / f"{i}.txt").write_text(d)
    ds = build_token_dataset([str(tmp_path)], tok, valid_fraction=0.001, cache_dir=cache, progress=False)
    assert ds.meta["num_train_docs"] == 2 and ds.meta["num_valid_docs"] == 1
    assert _split_docs(ds.valid_tokens, tok.eos_token_id) == [tok.encode(_docs(3)[2])]
    assert open_token_dataset(ds.path).num_train_tokens == ds.num_train_tokens


def test_validation_sequences(tmp_path, tok, cache):
    _write_jsonl(tmp_path / "a.jsonl", _docs(80))
    ds = build_token_dataset([str(tmp_path / "a.jsonl")], tok, valid_fraction=0.3, cache_dir=cache, progress=False)
    x, y = validation_sequences(ds.valid_tokens, 16)
    n = (ds.num_valid_tokens - 1) // 16
    assert x.shape == y.shape == (n, 16) and x.dtype == torch.long
    flat = torch.from_numpy(ds.valid_tokens.astype(np.int64))
    assert torch.equal(x.reshape(-1), flat[: n * 16]) and torch.equal(y.reshape(-1), flat[1: n * 16 + 1])
    x4, y4 = validation_sequences(ds.valid_tokens, 16, max_sequences=4)
    assert x4.shape == (4, 16) and torch.equal(x4[0], x[0]) and torch.equal(x4[-1], x[-1])
    with pytest.raises(DataError, match="validation split"):
        validation_sequences(ds.valid_tokens[:10], 16)


# ---- batches ----------------------------------------------------------------------------------------------


def _tokens(n=1001):
    return np.arange(n, dtype=np.uint16)


def _take(batcher, k):
    return [next(batcher) for _ in range(k)]


def test_batches_layout_and_epoch_coverage():
    toks = _tokens(16 * 8 + 1)  # N = 16 windows of L = 8
    b = TokenBatcher(toks, seq_len=8, batch_size=4, seed=0)
    assert b.num_sequences == 16
    starts = []
    for x, y in _take(b, 4):  # exactly one epoch
        assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
        assert torch.all(x[:, 0] % 8 == 0)  # windows start on multiples of L
        starts += (x[:, 0] // 8).tolist()
    assert sorted(starts) == list(range(16)), "each window once per epoch"
    assert b.epoch == 1 and b.step == 4
    second = [int(i) for x, _ in _take(b, 4) for i in x[:, 0] // 8]
    assert sorted(second) == list(range(16)) and second != starts  # reshuffled each epoch


def test_batches_deterministic_by_seed():
    a = _take(TokenBatcher(_tokens(), 10, 4, seed=3), 5)
    b = _take(TokenBatcher(_tokens(), 10, 4, seed=3), 5)
    c = _take(TokenBatcher(_tokens(), 10, 4, seed=4), 5)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_resume_gives_the_uninterrupted_sequence():
    # 100 windows, batches of 6: the run crosses epoch boundaries, with a batch straddling one.
    full = _take(TokenBatcher(_tokens(), 10, 6, seed=7), 40)
    first = TokenBatcher(_tokens(), 10, 6, seed=7)
    _take(first, 17)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as plain data
    resumed = TokenBatcher(_tokens(), 10, 6, seed=7)
    resumed.load_state_dict(state)
    for i, (x, y) in enumerate(_take(resumed, 23)):
        assert torch.equal(x, full[17 + i][0]) and torch.equal(y, full[17 + i][1]), f"batch {17 + i} differs"

    with pytest.raises(DataError, match="seed"):
        TokenBatcher(_tokens(), 10, 6, seed=8).load_state_dict(state)
    with pytest.raises(DataError, match="num_sequences"):
        TokenBatcher(_tokens(2001), 10, 6, seed=7).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_split_the_global_batch(world_size):
    single = _take(TokenBatcher(_tokens(), 10, 8, seed=1), 30)
    ranks = [TokenBatcher(_tokens(), 10, 8 // world_size, seed=1, rank=r, world_size=world_size)
             for r in range(world_size)]
    for step in range(30):
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), single[step][0]), f"step {step}"
        assert torch.equal(torch.cat([p[1] for p in parts]), single[step][1]), f"step {step}"
    # A run resumed on another world size continues the same global sequence.
    moved = TokenBatcher(_tokens(), 10, 8, seed=1)
    moved.load_state_dict(ranks[0].state_dict())
    assert moved.step == 30


def test_too_little_data_for_a_batch():
    with pytest.raises(DataError, match="fewer than one global batch"):
        TokenBatcher(_tokens(50), 10, 4, world_size=2)


# ---- Hugging Face source (datasets faked: no network in tests) --------------------------------------------


def test_hf_spec_and_records(monkeypatch, tok, cache):
    calls = {}

    def load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return [{"text": d} for d in _docs(5)] + [{"text": ""}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    src = parse_source("hf:org/name:cfg:train")
    assert (src.name, src.config, src.split) == ("org/name", "cfg", "train")
    assert parse_source("hf:wikitext:test").config is None
    ds = build_token_dataset(["hf:org/name:cfg:train"], tok, valid_fraction=0.0, cache_dir=cache, progress=False)
    assert calls == {"name": "org/name", "config": "cfg", "split": "train", "streaming": True}
    assert _split_docs(ds.train_tokens, tok.eos_token_id) == [tok.encode(d) for d in _docs(5)]

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    list(parse_source("hf:org/name:train").segments())
    assert calls["streaming"] is False

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda *a, **k: [{"content": "x"}]))
    with pytest.raises(DataError, match=r"hf:org/name:train record 0: record has no field 'text'"):
        build_token_dataset(["hf:org/name:train"], tok, cache_dir=cache, progress=False)
    with pytest.raises(DataError, match="expected hf:NAME:SPLIT"):
        parse_source("hf:only")


# ---- user errors: one line, naming the file ---------------------------------------------------------------


def _raises(message_start, specs, tok, cache, **kw):
    with pytest.raises(DataError, match=re.escape(message_start)) as e:
        build_token_dataset(specs, tok, cache_dir=cache, progress=False, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_errors(tmp_path, tok, cache):
    missing = tmp_path / "nope.txt"
    _raises(f"{missing}: no such file or directory", [str(missing)], tok, cache)

    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    _raises(f"{empty}: no text", [str(empty)], tok, cache)

    (tmp_path / "emptydir").mkdir()
    _raises("emptydir: directory holds no", [str(tmp_path / "emptydir")], tok, cache)

    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    _raises(f"{bad_utf8}: cannot read: not UTF-8", [str(bad_utf8)], tok, cache)

    bad_gz = tmp_path / "broken.jsonl.gz"
    bad_gz.write_bytes(b"this is not gzip")
    _raises(f"{bad_gz}: cannot read", [str(bad_gz)], tok, cache)

    csv = tmp_path / "table.csv"
    csv.write_text("a,b")
    _raises(f"{csv}: unsupported file type", [str(csv)], tok, cache)

    jl = tmp_path / "recs.jsonl"
    jl.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    _raises(f"{jl}:2: record has no field 'text'", [str(jl)], tok, cache)
    jl.write_text(json.dumps({"text": "fine"}) + "\n{broken\n")
    _raises(f"{jl}:2: invalid JSON", [str(jl)], tok, cache)
    jl.write_text(json.dumps({"text": None}) + "\n")
    _raises(f"{jl}:1: field 'text' is NoneType", [str(jl)], tok, cache)

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pqf = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a"]}), pqf)
    _raises(f"{pqf}: no column 'text'", [str(pqf)], tok, cache)
    pq.write_table(pa.table({"text": ["a", None]}), pqf)
    _raises(f"{pqf}: row 1: field 'text' is null", [str(pqf)], tok, cache)
    notpq = tmp_path / "fake.parquet"
    notpq.write_text("plain text")
    _raises(f"{notpq}: cannot read", [str(notpq)], tok, cache)

    assert not list(cache.glob("*.tmp-*")), "failed builds must clean up"
    assert not [p for p in cache.iterdir() if p.is_dir()], "failed builds must leave no entry"


def test_text_file_documents_split_on_separator_lines(tmp_path, monkeypatch):
    """A line holding only <|endoftext|> separates documents inside a .txt file (the bundled samples' format)."""
    from ssmquant.data import sources

    docs = ["first doc\nwith two lines", "second", "third one " * 50]
    f = tmp_path / "s.txt"
    f.write_text("\n<|endoftext|>\n".join(docs) + "\n<|endoftext|>\n\n")
    for chunk in (4_000_000, 64):  # whole file, and chunks that cut between separators
        monkeypatch.setattr(sources, "TEXT_CHUNK_CHARS", chunk)
        got, cur = [], ""
        for seg in sources.iter_segments([sources.parse_source(str(f))]):
            cur += seg.text
            if seg.last:
                got.append(cur)
                cur = ""
        assert got == docs, (chunk, got)
