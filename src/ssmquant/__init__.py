"""ssmquant: ternary and 1-bit compression of pretrained Mamba-2 language models.

Public entry points are imported lazily so ``import ssmquant`` stays light (no transformers, triton, ...).

    >>> import ssmquant
    >>> model = ssmquant.load_model("state-spaces/mamba2-130m")     # or a local directory
    >>> tok = ssmquant.load_tokenizer("state-spaces/mamba2-130m")
    >>> logits = model(torch.tensor([tok.encode("Hello")]))         # (batch, seqlen, padded_vocab)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_model", "load_tokenizer", "save_model", "Mamba2Config", "Mamba2LMHeadModel", "SSMQuantError"]


def __getattr__(name: str):
    if name in ("load_model", "save_model"):
        from .io import checkpoints

        return getattr(checkpoints, name)
    if name == "load_tokenizer":
        from .io.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "Mamba2Config":
        from .model.config import Mamba2Config

        return Mamba2Config
    if name == "Mamba2LMHeadModel":
        from .model.mamba2 import Mamba2LMHeadModel

        return Mamba2LMHeadModel
    if name == "SSMQuantError":
        from .errors import SSMQuantError

        return SSMQuantError
    raise AttributeError(f"module 'ssmquant' has no attribute {name!r}")
