"""Text sources: local files, directories and Hugging Face datasets, read as one stream of documents.

A *source spec* is a string, one of:

- a file: ``.txt``, ``.md``, ``.rst`` (one document, or several separated by lines holding only ``<|endoftext|>``), ``.jsonl`` (one document per line, its
  text in the field ``text_field``), ``.parquet`` (one document per row, its text in the column ``text_field``).
  ``.txt.gz``, ``.md.gz``, ``.rst.gz`` and ``.jsonl.gz`` are read through gzip.
- a directory: every supported file below it, recursively, in sorted path order; hidden files and folders
  (names starting with ``.``) are skipped.
- ``hf:NAME[:CONFIG]:SPLIT``: a Hugging Face dataset (``datasets`` is imported only here), streamed when online
  and read from the local ``datasets`` cache when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set.
  Example: ``hf:wikitext:wikitext-103-raw-v1:train``, ``hf:roneneldan/TinyStories:train``.

Documents come out as *segments* ``Segment(where, text, last)``: a document is one or more segments, the last one
flagged ``last=True``. Only text files are cut into several segments (at most ``TEXT_CHUNK_CHARS`` characters
each), so a multi-gigabyte file never sits in memory whole. A cut falls just after a newline that is followed
by a non-space character; byte-level BPE tokenizers (GPT-NeoX, GPT-2) pre-split there anyway, so the tokens
are the same as tokenizing the file whole.

Every problem a user can cause raises a one-line ``DataError`` that names the file (and line or row and field):
a path that does not exist, an unsupported file type, a source with no text, a file that cannot be read or
decoded, a record without the text field.
"""

from __future__ import annotations

import re

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
GZIP_OK = TEXT_SUFFIXES + JSONL_SUFFIXES
SUPPORTED = ".txt, .md, .rst, .jsonl, .parquet (and .gz of txt/md/rst/jsonl)"

# Characters per text segment: large enough that the tokenizer's per-call overhead is negligible, small enough
# that a huge file streams.
TEXT_CHUNK_CHARS = 4_000_000


class Segment(NamedTuple):
    """A piece of a document: ``where`` names its origin for messages (``file``, ``file:line``, ``spec#row``)."""

    where: str
    text: str
    last: bool


def _kind(path: Path) -> tuple[str, bool]:
    """(kind, gzipped) of a file from its name; kind is 'text', 'jsonl', 'parquet' or '' if unsupported."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    suffix = os.path.splitext(name)[1]
    if gz and suffix not in GZIP_OK:
        return "", gz
    if suffix in TEXT_SUFFIXES:
        return "text", gz
    if suffix in JSONL_SUFFIXES:
        return "jsonl", gz
    if suffix in PARQUET_SUFFIXES:
        return "parquet", gz
    return "", gz


@dataclass(frozen=True)
class FileSource:
    """One local file, or every supported file below a directory (``files`` sorted, resolved at creation)."""

    spec: str
    files: tuple[Path, ...]
    text_field: str = "text"

    def identity(self) -> dict:
        """What the token cache keys on: each file's absolute path, size and modification time."""
        out = []
        for f in self.files:
            st = f.stat()
            out.append([str(f), st.st_size, st.st_mtime_ns])
        return {"spec": self.spec, "files": out}

    def segments(self) -> Iterator[Segment]:
        for f in self.files:
            kind, gz = _kind(f)
            if kind == "text":
                yield from _text_segments(f, gz)
            elif kind == "jsonl":
                yield from _jsonl_segments(f, gz, self.text_field)
            else:
                yield from _parquet_segments(f, self.text_field)


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face dataset split; one record = one document, its text in ``text_field``."""

    spec: str
    name: str
    config: str | None
    split: str
    text_field: str = "text"

    def identity(self) -> dict:
        # A Hub dataset has no local size or mtime to key on: a re-uploaded dataset keeps its old cache entry.
        return {"spec": self.spec, "hf": [self.name, self.config, self.split]}

    def segments(self) -> Iterator[Segment]:
        try:
            import datasets
        except ImportError:
            raise DataError(f"{self.spec}: reading Hugging Face datasets needs `pip install datasets`") from None
        offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        try:
            ds = datasets.load_dataset(self.name, self.config, split=self.split, streaming=not offline)
        except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError ...)
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(f"{self.spec}: cannot load dataset ({msg})") from None
        for i, record in enumerate(ds):
            text = _field(record, self.text_field, f"{self.spec} record {i}")
            if text.strip():
                yield Segment(f"{self.spec}#{i}", text, True)


Source = FileSource | HFSource


def parse_source(spec: str, *, text_field: str = "text") -> Source:
    """Resolve one source spec (see the module docstring) into a ``FileSource`` or ``HFSource``."""
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if len(parts) == 2 and all(parts):
            return HFSource(spec, parts[0], None, parts[1], text_field)
        if len(parts) == 3 and all(parts):
            return HFSource(spec, parts[0], parts[1], parts[2], text_field)
        raise DataError(f"{spec}: expected hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, "
                        "e.g. hf:wikitext:wikitext-2-raw-v1:train")
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{spec}: no such file or directory")
    path = path.resolve()
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*")
             if p.is_file() and _kind(p)[0] and not any(part.startswith(".") for part in p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise DataError(f"{spec}: directory holds no {SUPPORTED} files")
        return FileSource(spec, tuple(files), text_field)
    if not _kind(path)[0]:
        raise DataError(f"{spec}: unsupported file type; supported: {SUPPORTED}")
    return FileSource(spec, (path,), text_field)


def iter_segments(sources: list[Source]) -> Iterator[Segment]:
    """All segments of all sources in order; raises ``DataError`` for a source that yields no text."""
    for src in sources:
        has_text = False
        for seg in src.segments():
            has_text = has_text or bool(seg.text.strip())
            yield seg
        if not has_text:
            raise DataError(f"{src.spec}: no text (every file or record in it is empty)")


# ---- readers -----------------------------------------------------------------------------------------------


def _open_text(path: Path, gz: bool):
    if gz:
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _unreadable(path: Path, e: BaseException) -> DataError:
    if isinstance(e, UnicodeDecodeError):
        return DataError(f"{path}: cannot read: not UTF-8 text ({e.reason})")
    if isinstance(e, EOFError):
        return DataError(f"{path}: cannot read: file is truncated")
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return DataError(f"{path}: cannot read: {reason}")


def _safe_cut(buf: str) -> int:
    """Index just after the last newline in ``buf`` that is followed by a non-space character; 0 if none."""
    i = buf.rfind("\n", 0, len(buf) - 1)
    while i >= 0 and buf[i + 1].isspace():
        i = buf.rfind("\n", 0, i)
    return i + 1


def _text_chunks(f) -> Iterator[str]:
    carry = ""
    while True:
        block = f.read(TEXT_CHUNK_CHARS)
        if not block:
            break
        buf = carry + block
        cut = _safe_cut(buf)
        if cut == 0:  # no safe cut yet (one very long line): keep reading
            carry = buf
            continue
        yield buf[:cut]
        carry = buf[cut:]
    if carry:
        yield carry


# A line holding only this separates documents inside one text file (the bundled samples use it); a file without
# it is one document.
DOC_SEPARATOR_RE = re.compile(r"^<\|endoftext\|>$", flags=re.MULTILINE)


def _pieces(chunks: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """(text, closes_document) pieces: each separator line closes a document; the end of the file closes one too.

    Chunks are cut only after a newline, so a separator line is never split between two chunks.
    """
    for chunk in chunks:
        parts = DOC_SEPARATOR_RE.split(chunk)
        for part in parts[:-1]:
            yield part, True
        yield parts[-1], False
    yield "", True


def _text_segments(path: Path, gz: bool) -> Iterator[Segment]:
    where = str(path)
    try:
        with _open_text(path, gz) as f:
            has_text = False    # the current document has text (yielded or pending)
            pending = ""        # one piece of lookahead, so the closing piece can carry last=True
            for text, closes in _pieces(_text_chunks(f)):
                if not has_text:
                    text = text.lstrip("\n")
                if closes:
                    # A whitespace-only document is no document; its trailing newlines are not part of it.
                    if has_text or text.strip():
                        yield Segment(where, (pending + text).rstrip("\n"), True)
                    has_text, pending = False, ""
                elif text and (has_text or text.strip()):
                    if pending:
                        yield Segment(where, pending, False)
                    pending, has_text = text, True
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise _unreadable(path, e) from None


def _field(record, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is a {type(record).__name__}, expected a JSON object with field {field!r}")
    if field not in record:
        names = ", ".join(list(record)[:8])
        raise DataError(f"{where}: record has no field {field!r} (fields: {names}); set text_field to the right one")
    text = record[field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field {field!r} is {type(text).__name__}, expected a string")
    return text


def _jsonl_segments(path: Path, gz: bool, field: str) -> Iterator[Segment]:
    try:
        with _open_text(path, gz) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                text = _field(record, field, f"{path}:{lineno}")
                if text.strip():
                    yield Segment(f"{path}:{lineno}", text, True)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise _unreadable(path, e) from None


def _parquet_segments(path: Path, field: str) -> Iterator[Segment]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs `pip install pyarrow`") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise DataError(f"{path}: cannot read: not a parquet file ({str(e).splitlines()[0][:120]})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(names[:8])}); "
                        "set text_field to the right one")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                what = "null" if text is None else type(text).__name__
                raise DataError(f"{path}: row {row}: field {field!r} is {what}, expected a string")
            if text.strip():
                yield Segment(f"{path}#{row}", text, True)
            row += 1
