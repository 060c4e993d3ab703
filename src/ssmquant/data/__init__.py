"""Training data: text sources -> tokens (EOS between documents) -> on-disk cache -> shuffled, sharded batches.

    >>> ds = build_token_dataset(["corpus/", "hf:wikitext:wikitext-103-raw-v1:train"], tokenizer)
    >>> batches = TokenBatcher(ds.train_tokens, seq_len=2048, batch_size=8, seed=0, rank=r, world_size=w)
    >>> input_ids, labels = next(batches)                     # each (8, 2048) int64; labels = next tokens
    >>> state = batches.state_dict()                          # store in the checkpoint; load_state_dict resumes
    >>> val_x, val_y = validation_sequences(ds.valid_tokens, 2048, max_sequences=64)

Files: ``sources.py`` (reading files, directories, HF datasets), ``pack.py`` (tokenize + train/valid split by
document), ``cache.py`` (keyed, locked, atomic on-disk cache; ``build_token_dataset``), ``batches.py``
(``TokenBatcher``, ``validation_sequences``).
"""

from __future__ import annotations

from .batches import TokenBatcher, validation_sequences
from .cache import TokenDataset, build_token_dataset, default_cache_dir, open_token_dataset
from .sources import parse_source

__all__ = [
    "TokenBatcher",
    "TokenDataset",
    "build_token_dataset",
    "default_cache_dir",
    "open_token_dataset",
    "parse_source",
    "validation_sequences",
]
