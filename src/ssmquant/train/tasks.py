"""Training tasks: what the shared loop (``trainer.train``) trains and how its loss is computed.

A task provides the model, the data, the loss and the final export; the loop does the rest. ``LMTask`` holds what
every language-model task shares (data pipeline, optimizer groups, held-out evaluation, final save);
``PretrainTask`` is cross-entropy from a random init. Distillation (ternary QAT + KD, DF-SSM) lives in
``ssmquant.train.distill`` and subclasses ``LMTask``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import TokenBatcher, build_token_dataset, open_token_dataset, validation_sequences
from ..errors import DataError
from ..io.checkpoints import model_class_for
from ..model.config import Mamba2Config
from ..model.mamba2 import Mamba2LMHeadModel

# mamba-ssm excludes these from weight decay (``_no_weight_decay``); norms and biases are 1-D anyway.
_NO_DECAY_SUFFIXES = ("A_log", "D", "dt_bias", "bias")


@dataclass
class TaskData:
    batcher: TokenBatcher
    valid: tuple[torch.Tensor, torch.Tensor]   # (n, L) inputs and labels for held-out evaluation
    num_train_tokens: int


def pretokenized_dir(sources: list[str]) -> Path | None:
    """A single ``--data`` that is a token-cache entry (meta.json + train.bin + valid.bin) is used as is.

    That is how tokens travel to a machine without the text (the GPU machine takes 64 MiB a call): tokenize here,
    compress the entry, unpack it there and point ``--data`` at it.
    """
    if len(sources) != 1:
        return None
    p = Path(sources[0])
    if p.is_dir() and (p / "meta.json").is_file() and (p / "train.bin").is_file():
        return p
    return None


def default_param_groups(model: torch.nn.Module, weight_decay: float, *, skip: set[int] | None = None) -> list[dict]:
    """AdamW groups: matrices decay, vectors and SSM parameters do not. ``skip``: ids of params handled elsewhere."""
    skip = skip or set()
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        if p.dim() < 2 or name.endswith(_NO_DECAY_SUFFIXES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32. logits (b, l, v), labels (b, l)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


class LMTask:
    """Shared parts of language-model tasks. Subclasses set ``name`` and implement ``build_model`` and ``loss``."""

    name = "lm"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    # ---- identity (stored in run_config.json; a resume with a different one is refused) ----
    def describe(self) -> dict:
        return {"name": self.name, "tokenizer": self.tokenizer.fingerprint}

    # ---- data ----
    def build_data(self, cfg, *, rank: int, world_size: int) -> TaskData:
        if not cfg.data:
            raise DataError("no training data given (--data FILE_OR_DIR ...)")
        pre = pretokenized_dir(cfg.data)
        if pre is not None:
            ds = open_token_dataset(pre)
            made_with = ds.meta.get("inputs", {}).get("tokenizer")
            if made_with != self.tokenizer.fingerprint:
                raise DataError(f"{pre}: tokenized with a different tokenizer than the model's; re-tokenize "
                                "or pass the text sources")
        else:
            ds = build_token_dataset(cfg.data, self.tokenizer, valid_fraction=cfg.valid_fraction, seed=cfg.seed,
                                     cache_dir=cfg.cache_dir, text_field=cfg.text_field, progress=rank == 0)
        batcher = TokenBatcher(ds.train_tokens, cfg.seq_len, cfg.micro_batch, seed=cfg.seed, rank=rank,
                               world_size=world_size)
        valid = validation_sequences(ds.valid_tokens, cfg.seq_len, max_sequences=cfg.eval_sequences)
        return TaskData(batcher, valid, ds.num_train_tokens)

    # ---- optimisation ----
    def param_groups(self, model, cfg) -> list[dict]:
        return default_param_groups(model, cfg.weight_decay)

    def after_step(self, model, step: int) -> None:
        pass

    def step_metrics(self, model, step: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # ---- evaluation and output ----
    def evaluate(self, model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> dict:
        """Held-out loss and perplexity over fixed sequences."""
        total, n = 0.0, 0
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size])
            total += float(lm_cross_entropy(logits, y[i:i + batch_size])) * y[i:i + batch_size].numel()
            n += y[i:i + batch_size].numel()
        loss = total / max(1, n)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    def save_final(self, model, directory: Path) -> None:
        from ..io.checkpoints import save_model

        save_model(model, directory, tokenizer=self.tokenizer)

    def final_report(self, model, out: Path) -> dict:
        return {}

    def plot_groups(self) -> dict[str, list[str]]:
        return {"loss": ["loss", "val_loss"], "lr": ["lr"], "grad_norm": ["grad_norm"], "throughput": ["tok_per_s"]}


class PretrainTask(LMTask):
    """Cross-entropy training of a Mamba-2 from mamba-ssm's random init (or of the study's Transformer control)."""

    name = "pretrain"

    def __init__(self, model_config: Mamba2Config, tokenizer, *, init_seed: int = 0):
        super().__init__(tokenizer)
        if model_config.padded_vocab_size < tokenizer.vocab_size:
            raise DataError(f"model vocab ({model_config.padded_vocab_size}) is smaller than the tokenizer's "
                            f"({tokenizer.vocab_size}); set vocab_size in the model config")
        self.model_config = model_config
        self.init_seed = init_seed

    def describe(self) -> dict:
        return {**super().describe(), "model_config": self.model_config.to_own_dict(), "init_seed": self.init_seed}

    def build_model(self, device) -> Mamba2LMHeadModel:
        model = model_class_for(self.model_config)(self.model_config)
        model.init_weights(self.init_seed)
        return model.to(device)

    def loss(self, model, x, y):
        return lm_cross_entropy(model(x), y), {}
