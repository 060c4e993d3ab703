"""The on-disk token cache and the public entry point ``build_token_dataset``.

One cache entry is a directory ``<cache_dir>/<key>/`` holding::

    train.bin    raw token ids, dtype uint16 (vocab <= 65536) or uint32, documents EOS-separated (see pack.py)
    valid.bin    the held-out documents, same layout
    meta.json    dtype, token and document counts, and the inputs the key was made from (readable)

No pickle anywhere: the arrays are opened with ``np.memmap`` and so are never loaded whole.

**Key.** sha256 of a canonical JSON of: the format version, the tokenizer fingerprint, every source (each file's
absolute path, size and mtime in ns; a Hub dataset's name, config and split), ``text_field``,
``valid_fraction``, ``seed`` (it decides the split), ``max_tokens`` and the dtype. Touching or editing a file, or
switching tokenizers, gives a new key; the old entry stays until deleted by hand.

**Building.** Under an exclusive lock file ``<key>.lock`` (``fcntl.flock``, released by the OS if the process
dies), tokens are written into ``<key>.tmp-<pid>/`` and that directory is renamed to ``<key>/`` only when
complete, with ``meta.json`` written last. A reader never sees half an entry, a crashed build leaves only a
``.tmp`` directory, and data-parallel ranks that start together wait on the lock while one of them builds.

**Where.** ``cache_dir`` if given, else ``$SSMQUANT_CACHE/tokens``, else ``$XDG_CACHE_HOME/ssmquant/tokens``,
else ``~/.cache/ssmquant/tokens``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .pack import token_dtype, tokenize_to_files
from .sources import iter_segments, parse_source

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$SSMQUANT_CACHE/tokens``, else ``$XDG_CACHE_HOME/ssmquant/tokens``, else ``~/.cache/ssmquant/tokens``."""
    root = os.environ.get("SSMQUANT_CACHE")
    if root:
        return Path(root).expanduser() / "tokens"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ssmquant" / "tokens"


@dataclass
class TokenDataset:
    """A tokenized corpus in the cache.

    Attributes:
        path: the cache entry directory.
        train_tokens: (num_train_tokens,) uint16/uint32, memory-mapped, documents EOS-separated.
        valid_tokens: (num_valid_tokens,) same layout; the held-out documents (empty array if none).
        meta: contents of ``meta.json`` (counts, dtype, eos_token_id, the key's inputs).
        built: True if this call tokenized, False if it reused an existing entry.
    """

    path: Path
    train_tokens: np.ndarray
    valid_tokens: np.ndarray
    meta: dict
    built: bool = False

    @property
    def num_train_tokens(self) -> int:
        return int(self.train_tokens.shape[0])

    @property
    def num_valid_tokens(self) -> int:
        return int(self.valid_tokens.shape[0])

    @property
    def eos_token_id(self) -> int:
        return int(self.meta["eos_token_id"])

    def __repr__(self) -> str:
        return (f"TokenDataset(train={self.num_train_tokens:,} tokens/{self.meta['num_train_docs']} docs, "
                f"valid={self.num_valid_tokens:,} tokens/{self.meta['num_valid_docs']} docs, path={str(self.path)!r})")


def build_token_dataset(
    sources: list[str] | str,
    tokenizer,
    *,
    valid_fraction: float = 0.01,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    text_field: str = "text",
    max_tokens: int | None = None,
    progress: bool = True,
) -> TokenDataset:
    """Tokenize ``sources`` with ``tokenizer`` into the cache, or open the entry a previous call made.

    Args:
        sources: source specs (see ``sources.py``): files, directories, ``hf:NAME[:CONFIG]:SPLIT``.
        tokenizer: an ``ssmquant.io.tokenizer.Tokenizer`` (needs ``encode_batch``, ``eos_token_id``,
            ``vocab_size``, ``fingerprint``).
        valid_fraction: expected fraction of documents held out for validation, drawn per document by ``seed``.
        seed: decides the validation split (and is part of the cache key).
        cache_dir: where entries live; default see ``default_cache_dir``.
        text_field: JSON field / parquet column / dataset column holding a document's text.
        max_tokens: stop after the first document end past this many tokens (for huge or streamed sources).
        progress: show a tqdm bar while tokenizing.
    """
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    if not sources:
        raise DataError("no data sources given")
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction={valid_fraction}: must be in [0, 1)")
    if max_tokens is not None and max_tokens <= 0:
        raise ConfigError(f"max_tokens={max_tokens}: must be positive (or None for all)")
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-text token (e.g. <|endoftext|>) to separate documents")

    resolved = [parse_source(str(s), text_field=text_field) for s in sources]
    dtype = token_dtype(tokenizer.vocab_size)
    inputs = {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer.fingerprint,
        "sources": [s.identity() for s in resolved],
        "text_field": text_field,
        "valid_fraction": float(valid_fraction),
        "seed": int(seed),
        "max_tokens": max_tokens,
        "dtype": dtype.name,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / key

    ds = _try_open(final)
    if ds is not None:
        return ds
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f"{key}.lock"):
        ds = _try_open(final)  # another process may have built it while we waited
        if ds is not None:
            return ds
        if final.exists():  # damaged (e.g. a file deleted by hand): rebuild
            shutil.rmtree(final)
        tmp = root / f"{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            t0 = time.time()
            stats = tokenize_to_files(
                iter_segments(resolved), tokenizer, tmp / "train.bin", tmp / "valid.bin",
                valid_fraction=valid_fraction, seed=seed, dtype=dtype, max_tokens=max_tokens, progress=progress)
            meta = {
                "dtype": dtype.name,
                "eos_token_id": int(tokenizer.eos_token_id),
                "vocab_size": int(tokenizer.vocab_size),
                "num_train_tokens": stats.num_train_tokens,
                "num_valid_tokens": stats.num_valid_tokens,
                "num_train_docs": stats.num_train_docs,
                "num_valid_docs": stats.num_valid_docs,
                "build_seconds": round(time.time() - t0, 3),
                "key": key,
                "inputs": inputs,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    ds = open_token_dataset(final)
    ds.built = True
    return ds


def open_token_dataset(path: str | Path) -> TokenDataset:
    """Open a cache entry directory (``TokenDataset.path``) without the sources or tokenizer."""
    path = Path(path)
    ds = _try_open(path)
    if ds is None:
        raise DataError(f"{path}: not a complete token cache entry (missing or damaged meta.json/train.bin/valid.bin)")
    return ds


def _try_open(path: Path) -> TokenDataset | None:
    """The entry at ``path``, or None if it is absent or its files disagree with meta.json."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        arrays = []
        for name, n in (("train.bin", meta["num_train_tokens"]), ("valid.bin", meta["num_valid_tokens"])):
            f = path / name
            if f.stat().st_size != n * dtype.itemsize:
                return None
            # np.memmap cannot map an empty file; an empty split is a plain empty array.
            arrays.append(np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TokenDataset(path, arrays[0], arrays[1], meta)


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the atomic rename alone keeps entries whole
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
