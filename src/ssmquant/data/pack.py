"""Tokenize a stream of documents into two flat token files, train and validation, split by document.

Layout of each file: the raw little-endian token ids of its documents back to back, each document followed by
the tokenizer's EOS id::

    doc_0 tokens, EOS, doc_1 tokens, EOS, ...          # one 1-D array, dtype uint16 or uint32

No sequence boundaries are stored: packing into fixed-length sequences is a view taken at batch time
(``batches.py``), so one cache serves every sequence length.

The validation split is by document: each document draws one uniform number from ``np.random.default_rng(seed)``
in stream order and goes to validation when it is below ``valid_fraction``. The draw needs no document count,
so sources can stream. If that leaves validation empty while ``valid_fraction > 0`` (few documents), the last
training document is moved there, so small corpora still get a held-out set.

Tokens are written as each batch of documents is tokenized, so a corpus larger than memory streams through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataError
from .sources import Segment

# Flush to the tokenizer every this many characters or segments; ``encode_batch`` tokenizes a batch in parallel.
BATCH_CHARS = 8_000_000
BATCH_SEGMENTS = 2048
_COPY_TOKENS = 1 << 24


@dataclass
class PackStats:
    num_train_tokens: int = 0
    num_valid_tokens: int = 0
    num_train_docs: int = 0
    num_valid_docs: int = 0


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536, e.g. GPT-NeoX's 50277), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokenize_to_files(
    segments: Iterable[Segment],
    tokenizer,
    train_path: Path,
    valid_path: Path,
    *,
    valid_fraction: float,
    seed: int,
    dtype: np.dtype,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PackStats:
    """Tokenize ``segments`` into ``train_path`` and ``valid_path`` (see the module docstring for the layout).

    ``max_tokens`` stops reading at the first document end after that many tokens have been written.
    """
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-text token (e.g. <|endoftext|>) to separate documents")
    limit = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    stats = PackStats()
    pending: list[tuple[str, bool, bool]] = []  # (text, is_valid, last segment of its document)
    pending_chars = 0
    doc_tokens = 0  # tokens of the current document so far
    last_train_doc_start = 0  # token offset in train of the latest training document, for the fallback below

    bar = tqdm(desc="tokenizing", unit="tok", unit_scale=True, disable=not progress)
    with open(train_path, "wb") as ftrain, open(valid_path, "wb") as fvalid:
        files = (ftrain, fvalid)

        def flush() -> None:
            nonlocal pending_chars, doc_tokens, last_train_doc_start
            if not pending:
                return
            encoded = tokenizer.encode_batch([p[0] for p in pending])
            out: tuple[list, list] = ([], [])
            queued = [0, 0]  # tokens queued per split in this flush
            for (_, valid, last), ids in zip(pending, encoded):
                out[valid].append(ids)
                queued[valid] += len(ids)
                doc_tokens += len(ids)
                if last:
                    if doc_tokens:  # an empty document gets no EOS of its own
                        out[valid].append([eos])
                        queued[valid] += 1
                        if valid:
                            stats.num_valid_docs += 1
                        else:
                            stats.num_train_docs += 1
                            last_train_doc_start = stats.num_train_tokens + queued[0] - doc_tokens - 1
                    doc_tokens = 0
            for split, chunks in enumerate(out):
                if not queued[split]:
                    continue
                arr = np.fromiter((i for ids in chunks for i in ids), dtype=np.int64, count=queued[split])
                if arr.max() > limit or arr.min() < 0:
                    raise DataError(f"token id {int(arr.max())} does not fit {dtype.name}: tokenizer/vocab mismatch")
                files[split].write(arr.astype(dtype).tobytes())
                if split:
                    stats.num_valid_tokens += arr.size
                else:
                    stats.num_train_tokens += arr.size
                bar.update(arr.size)
            bar.set_postfix(docs=stats.num_train_docs + stats.num_valid_docs, refresh=False)
            pending.clear()
            pending_chars = 0

        stop_at_doc_end = False
        first = True
        doc_valid = False
        try:
            for seg in segments:
                if first:
                    doc_valid = bool(rng.random() < valid_fraction)
                pending.append((seg.text, doc_valid, seg.last))
                pending_chars += len(seg.text)
                first = seg.last
                if pending_chars >= BATCH_CHARS or len(pending) >= BATCH_SEGMENTS:
                    flush()
                    stop_at_doc_end = max_tokens is not None and (
                        stats.num_train_tokens + stats.num_valid_tokens >= max_tokens)
                if seg.last and stop_at_doc_end:
                    break
            flush()
        finally:
            bar.close()
            close = getattr(segments, "close", None)
            if close is not None:
                close()

    if valid_fraction > 0 and stats.num_valid_docs == 0 and stats.num_train_docs >= 2:
        _move_tail(train_path, valid_path, last_train_doc_start, dtype)
        moved = stats.num_train_tokens - last_train_doc_start
        stats.num_train_tokens -= moved
        stats.num_valid_tokens += moved
        stats.num_train_docs -= 1
        stats.num_valid_docs += 1
    if stats.num_train_tokens == 0:
        raise DataError("no training text: every document went to the validation split; lower valid_fraction")
    return stats


def _move_tail(src: Path, dst: Path, start: int, dtype: np.dtype) -> None:
    """Move tokens ``[start:]`` of file ``src`` to the (empty) file ``dst``, in bounded-memory chunks."""
    offset = start * dtype.itemsize
    with open(src, "r+b") as fs, open(dst, "wb") as fd:
        fs.seek(offset)
        while block := fs.read(_COPY_TOKENS * dtype.itemsize):
            fd.write(block)
        fs.truncate(offset)
