"""Train the small byte-level BPE tokenizer of the bundled models on the offline corpus.

GPT-2-style byte-level BPE (the ``tokenizers`` library): every byte is a base symbol, so any text encodes with
no unknown token and decodes back exactly. One special token, ``<|endoftext|>`` with id 0, is the EOS the data
pipeline puts between documents; it is never produced from plain text by merges. Trained on
``CORPUS/train.jsonl`` only, then measured on ``CORPUS/valid.jsonl`` (tokens per UTF-8 byte: lower is better).

Writes OUT/tokenizer.json (with ``ssmquant.io.tokenizer.Tokenizer.save``'s two small JSON companions, so
``AutoTokenizer.from_pretrained(OUT)`` also works) and OUT/tokenizer_stats.json.

Example:
    python scripts/train_tokenizer.py --corpus build/corpus --vocab-size 8192 --out build/tokenizer-8k
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

EOS = "<|endoftext|>"


@dataclass
class TokenizerConfig:
    corpus: Path
    out: Path
    vocab_size: int = 8192
    min_frequency: int = 2

    def __post_init__(self):
        self.corpus, self.out = Path(self.corpus), Path(self.out)
        # 256 byte symbols + EOS must fit, and ids must fit uint16 for the carried token files (docs/corpus.md).
        assert 257 < self.vocab_size <= 65536, f"--vocab-size {self.vocab_size}: choose 258..65536"


def iter_texts(path: Path, batch: int = 1000) -> Iterator[list[str]]:
    """Batches of document texts from a corpus JSONL file."""
    buf: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            buf.append(json.loads(line)["text"])
            if len(buf) == batch:
                yield buf
                buf = []
    if buf:
        yield buf


def train_tokenizer(cfg: TokenizerConfig) -> dict:
    """Train on train.jsonl, save into cfg.out, return {"vocab_size", "valid_tokens_per_byte", ...}."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ssmquant.io.tokenizer import Tokenizer as SsmTokenizer

    train_path, valid_path = cfg.corpus / "train.jsonl", cfg.corpus / "valid.jsonl"
    for p in (train_path, valid_path):
        if not p.is_file():
            raise SystemExit(f"{p}: missing; build it with scripts/build_corpus.py --out {cfg.corpus}")

    tk = Tokenizer(models.BPE())
    # add_prefix_space=False: a document's first word is encoded as written, and decode(encode(x)) == x.
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS],  # first special token -> id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t0 = time.time()
    tk.train_from_iterator(iter_texts(train_path), trainer=trainer)
    train_s = time.time() - t0
    assert tk.token_to_id(EOS) == 0, "EOS must be id 0"

    n_bytes = n_tokens = n_docs = 0
    for texts in iter_texts(valid_path):
        for text, enc in zip(texts, tk.encode_batch(texts, add_special_tokens=False)):
            n_bytes += len(text.encode("utf-8"))
            n_tokens += len(enc.ids)
            n_docs += 1
    wrapped = SsmTokenizer(tk, source=str(cfg.out / "tokenizer.json"), eos_token=EOS)
    wrapped.save(cfg.out)
    stats = {
        "vocab_size": tk.get_vocab_size(with_added_tokens=True),
        "eos_token": EOS,
        "eos_token_id": 0,
        "valid_docs": n_docs,
        "valid_bytes": n_bytes,
        "valid_tokens": n_tokens,
        "valid_tokens_per_byte": n_tokens / max(n_bytes, 1),
        "train_seconds": round(train_s, 1),
        "fingerprint": wrapped.fingerprint,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
    }
    (cfg.out / "tokenizer_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="directory with train.jsonl and valid.jsonl")
    p.add_argument("--out", type=Path, required=True, help="directory to write tokenizer.json into")
    p.add_argument("--vocab-size", type=int, default=8192, help="total vocabulary incl. <|endoftext|> (<=65536)")
    p.add_argument("--min-frequency", type=int, default=2, help="ignore pairs seen fewer times than this")
    a = p.parse_args(argv)
    stats = train_tokenizer(TokenizerConfig(a.corpus, a.out, a.vocab_size, a.min_frequency))
    print(f"vocab {stats['vocab_size']}  valid: {stats['valid_tokens']:,} tokens / {stats['valid_bytes']:,} bytes"
          f" = {stats['valid_tokens_per_byte']:.4f} tokens/byte  (trained in {stats['train_seconds']} s)"
          f"  -> {a.out / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
