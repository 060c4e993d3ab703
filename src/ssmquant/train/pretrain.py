"""``ssmquant pretrain``: train a Mamba-2 from scratch (used to make our own teachers; also a baseline)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..io.tokenizer import load_tokenizer
from ..model.config import PRESETS, Mamba2Config, preset_config
from ..model.transformer_control import TransformerControlConfig, is_transformer_control
from .config import TrainConfig
from .tasks import PretrainTask
from .trainer import train


def resolve_model_config(spec: str, *, vocab_size: int):
    """A config.json of either dialect, an inline JSON object, or a preset name; vocab set from the tokenizer.

    The tokenizer decides the vocabulary: a spec's own ``vocab_size`` is replaced by the tokenizer's. A JSON object
    with ``"model_type": "ssmquant-transformer-control"`` gives the study's Transformer control instead of a
    Mamba-2 (``ssmquant.model.transformer_control``; not a supported model family).
    """
    if spec in PRESETS:
        d = preset_config(spec).to_own_dict()
    else:
        p = Path(spec)
        try:
            raw = json.loads(p.read_text()) if p.is_file() else json.loads(spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--model-config {spec!r}: neither a preset ({', '.join(PRESETS)}), a file, nor "
                              f"valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--model-config {spec!r}: expected a JSON object")
        if is_transformer_control(raw):
            return TransformerControlConfig.from_dict({**raw, "vocab_size": vocab_size}, source=str(spec))
        if "d_model" in raw and "ssm_cfg" not in raw and "n_layer" in raw:
            raw = {"ssmquant_config": {"vocab_size": vocab_size, **raw}}
        d = Mamba2Config.from_dict(raw, source=str(spec)).to_own_dict()
    d["vocab_size"] = vocab_size
    return Mamba2Config(**d)


def pretrain(model_config: str, tokenizer: str, cfg: TrainConfig, *, init_seed: int | None = None) -> dict:
    tok = load_tokenizer(tokenizer, fallback=None)
    mcfg = resolve_model_config(model_config, vocab_size=tok.vocab_size)
    task = PretrainTask(mcfg, tok, init_seed=cfg.seed if init_seed is None else init_seed)
    return train(task, cfg)
