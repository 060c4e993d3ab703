"""Mamba-2 model configuration, read from both config dialects and checked field by field.

Two dialects exist in the wild:

* mamba-ssm (``state-spaces/mamba2-*``): ``d_model, n_layer, vocab_size, ssm_cfg{layer, d_state, ...},
  pad_vocab_size_multiple, tie_embeddings, ...`` (mirrors ``mamba_ssm/models/config_mamba.py``).
* Hugging Face transformers ``Mamba2Config``: ``hidden_size, num_hidden_layers, state_size, head_dim, num_heads,
  n_groups, expand, conv_kernel, chunk_size, tie_word_embeddings, ...``.

Every field we know is either implemented or refused by name, so an unsupported checkpoint (a hybrid with attention
layers, Mamba-1, biases in the projections, ...) fails loudly instead of loading as a silently different model.
Fields that only choose an initialisation or a kernel (``dt_min``, ``fused_add_norm``, ``use_mem_eff_path``) are
accepted and kept so a round trip preserves them.

Glossary of the dimension letters used across ``ssmquant.model``:
    b batch, l sequence length, d d_model, e d_inner = expand*d_model, h nheads = d_inner/headdim, p headdim,
    g ngroups, n d_state, k d_conv, c chunk index, v padded vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# mamba-ssm Mamba2 ssm_cfg keys that only pick an initialisation or a kernel: accepted, stored, no effect on forward.
_SSM_CFG_INIT_ONLY = {
    "A_init_range", "dt_min", "dt_max", "dt_init_floor", "conv_init", "use_mem_eff_path", "layer_idx",
    "process_group", "sequence_parallel", "device", "dtype",
}
# mamba-ssm top-level keys with no effect on the math of a plain Mamba-2 LM.
_MAMBA_SSM_TOP_NO_EFFECT = {"fused_add_norm", "initializer_cfg", "attn_cfg"}
# HF Mamba2Config keys with no effect on the forward pass (initialisation, generation, bookkeeping).
_HF_NO_EFFECT = {
    "initializer_range", "rescale_prenorm_residual", "use_cache", "time_step_min", "time_step_max",
    "time_step_floor", "pad_token_id", "bos_token_id", "eos_token_id", "model_type", "architectures",
    "torch_dtype", "dtype", "transformers_version", "_name_or_path", "output_hidden_states", "return_dict",
    "output_attentions", "is_encoder_decoder", "tie_encoder_decoder", "chunk_size_feed_forward", "id2label",
    "label2id", "problem_type", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "finetuning_task", "cross_attention_hidden_size", "add_cross_attention",
    "is_decoder", "pruned_heads", "torchscript", "tf_legacy_loss", "use_bfloat16", "quantization_config",
    "pad_vocab_size_multiple", "ssmquant",
}


@dataclass
class Mamba2Config:
    """A plain (attention-free) Mamba-2 language model.

    Derived sizes (``d_inner``, ``nheads``, ``padded_vocab_size``, ...) are properties, so a config cannot hold a
    stale copy of them.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 16
    # Initialisation only (mamba-ssm defaults); kept so from-scratch pretraining follows mamba-ssm.
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_range: tuple[float, float] = (1.0, 16.0)
    # Unknown-but-harmless keys from the source config, written back on save.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"config field {name}={v!r} must be a positive integer")
        if self.d_inner % self.headdim:
            raise ConfigError(
                f"config: d_inner = expand*d_model = {self.d_inner} is not a multiple of headdim={self.headdim}; "
                "change headdim or d_model")
        if self.nheads % self.ngroups:
            raise ConfigError(f"config: nheads={self.nheads} is not a multiple of ngroups={self.ngroups}")
        if not (self.norm_eps > 0):
            raise ConfigError(f"config field norm_eps={self.norm_eps!r} must be > 0")
        self.A_init_range = tuple(self.A_init_range)  # type: ignore[assignment]

    # ----- derived sizes -----
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: x, B and C together."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """in_proj output width: [z, x, B, C, dt]."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return int(math.ceil(self.vocab_size / m) * m)

    # ----- dialects -----
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "Mamba2Config":
        """Read either dialect; ``source`` names the file in error messages."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if "ssmquant_config" in d:  # our own dialect (used inside training checkpoints)
            return cls._from_own(d["ssmquant_config"], source)
        if "d_model" in d and "n_layer" in d:
            return cls._from_mamba_ssm(d, source)
        if "hidden_size" in d and "num_hidden_layers" in d:
            return cls._from_hf(d, source)
        mt = d.get("model_type") or d.get("architectures")
        raise ConfigError(
            f"{source}: not a Mamba-2 config (model_type/architectures={mt!r}); expected mamba-ssm fields "
            "(d_model, n_layer, ssm_cfg) or transformers Mamba2Config fields (hidden_size, num_hidden_layers)")

    @classmethod
    def _from_own(cls, d: dict[str, Any], source: str) -> "Mamba2Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def _from_mamba_ssm(cls, d: dict[str, Any], source: str) -> "Mamba2Config":
        d = dict(d)
        ssm = dict(d.pop("ssm_cfg", None) or {})
        layer = ssm.pop("layer", "Mamba1")
        if layer != "Mamba2":
            raise ConfigError(
                f"{source}: ssm_cfg.layer={layer!r} is not supported (ssmquant handles Mamba-2 only; "
                "mamba-ssm's default when 'layer' is absent is Mamba-1)")
        attn = d.pop("attn_layer_idx", None) or []
        if attn:
            raise ConfigError(f"{source}: attn_layer_idx={attn} (hybrid attention layers) is not supported")
        d_int = d.pop("d_intermediate", 0) or 0
        if d_int:
            raise ConfigError(f"{source}: d_intermediate={d_int} (MLP blocks) is not supported; only 0")
        if not d.pop("rms_norm", True):
            raise ConfigError(f"{source}: rms_norm=false (LayerNorm blocks) is not supported")
        _refuse_unless(ssm, "bias", False, source, "ssm_cfg.bias")
        _refuse_unless(ssm, "conv_bias", True, source, "ssm_cfg.conv_bias")
        _refuse_unless(ssm, "rmsnorm", True, source, "ssm_cfg.rmsnorm")
        _refuse_unless(ssm, "norm_before_gate", False, source, "ssm_cfg.norm_before_gate")
        _refuse_unless(ssm, "D_has_hdim", False, source, "ssm_cfg.D_has_hdim")
        dt_limit = ssm.pop("dt_limit", None)
        if dt_limit is not None and not _is_no_limit(dt_limit):
            raise ConfigError(f"{source}: ssm_cfg.dt_limit={dt_limit} is not supported; only (0.0, inf)")
        kw: dict[str, Any] = {}
        for k in ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "dt_min", "dt_max",
                  "dt_init_floor", "A_init_range"):
            if k in ssm:
                kw[k] = ssm.pop(k)
        d_ssm = ssm.pop("d_ssm", None)
        for k in list(ssm):
            if k in _SSM_CFG_INIT_ONLY:
                ssm.pop(k)
        if ssm:
            raise ConfigError(f"{source}: unsupported ssm_cfg field(s) {sorted(ssm)}")
        try:
            cfg = cls(
                d_model=d.pop("d_model"), n_layer=d.pop("n_layer"), vocab_size=d.pop("vocab_size", 50277),
                residual_in_fp32=bool(d.pop("residual_in_fp32", True)),
                tie_embeddings=bool(d.pop("tie_embeddings", True)),
                pad_vocab_size_multiple=d.pop("pad_vocab_size_multiple", 8), **kw)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None
        if d_ssm is not None and d_ssm != cfg.d_inner:
            raise ConfigError(f"{source}: ssm_cfg.d_ssm={d_ssm} differs from d_inner={cfg.d_inner}; not supported")
        for k in list(d):
            if k in _MAMBA_SSM_TOP_NO_EFFECT or k in _HF_NO_EFFECT:
                cfg.extra[k] = d.pop(k)
        if d:
            raise ConfigError(f"{source}: unsupported field(s) {sorted(d)}")
        return cfg

    @classmethod
    def _from_hf(cls, d: dict[str, Any], source: str) -> "Mamba2Config":
        d = dict(d)
        mt = d.pop("model_type", "mamba2")
        if mt != "mamba2":
            raise ConfigError(f"{source}: model_type={mt!r} is not supported; expected 'mamba2'")
        arch = d.pop("architectures", None) or []
        bad = [a for a in arch if "Mamba2" not in a]
        if bad:
            raise ConfigError(f"{source}: architectures={arch} is not a Mamba-2 architecture")
        _refuse_unless(d, "use_bias", False, source, "use_bias")
        _refuse_unless(d, "use_conv_bias", True, source, "use_conv_bias")
        _refuse_unless(d, "hidden_act", "silu", source, "hidden_act")
        _refuse_unless(d, "rms_norm", True, source, "rms_norm")
        _refuse_unless(d, "norm_before_gate", False, source, "norm_before_gate")
        lim = d.pop("time_step_limit", None)
        if lim is not None and not _is_no_limit(lim):
            raise ConfigError(f"{source}: time_step_limit={lim} is not supported; only (0.0, inf)")
        try:
            hidden = d.pop("hidden_size")
            expand = d.pop("expand", 2)
            head_dim = d.pop("head_dim", 64)
            num_heads = d.pop("num_heads", None)
            tsr = d.pop("time_step_rank", "auto")
            cfg = cls(
                d_model=hidden, n_layer=d.pop("num_hidden_layers"), vocab_size=d.pop("vocab_size"),
                d_state=d.pop("state_size", 128), d_conv=d.pop("conv_kernel", 4), expand=expand, headdim=head_dim,
                ngroups=d.pop("n_groups", 8), chunk_size=d.pop("chunk_size", 256),
                norm_eps=d.pop("layer_norm_epsilon", 1e-5), residual_in_fp32=bool(d.pop("residual_in_fp32", True)),
                tie_embeddings=bool(d.pop("tie_word_embeddings", False)),
                # HF stores the embedding's true row count as vocab_size: no further padding.
                pad_vocab_size_multiple=1)
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None
        if num_heads is not None and num_heads != cfg.nheads:
            raise ConfigError(
                f"{source}: num_heads={num_heads} disagrees with expand*hidden_size/head_dim={cfg.nheads}")
        # time_step_rank is a Mamba-1 leftover: transformers ignores it for Mamba-2.
        del tsr
        for k in list(d):
            if k in _HF_NO_EFFECT:
                cfg.extra[k] = d.pop(k)
        if d:
            raise ConfigError(f"{source}: unsupported field(s) {sorted(d)}")
        return cfg

    def to_mamba_ssm_dict(self) -> dict[str, Any]:
        """The config.json of a mamba-ssm checkpoint directory."""
        return {
            "d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer, "vocab_size": self.vocab_size,
            "ssm_cfg": {"layer": "Mamba2", "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                        "headdim": self.headdim, "ngroups": self.ngroups, "chunk_size": self.chunk_size},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True, "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers ``Mamba2Config`` dict with every field explicit (its defaults describe a 7B model).

        ``vocab_size`` is the padded row count of the embedding, as transformers expects.
        """
        d = {
            "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
            "hidden_size": self.d_model, "num_hidden_layers": self.n_layer, "vocab_size": self.padded_vocab_size,
            "state_size": self.d_state, "conv_kernel": self.d_conv, "expand": self.expand, "head_dim": self.headdim,
            "num_heads": self.nheads, "n_groups": self.ngroups, "chunk_size": self.chunk_size,
            "layer_norm_epsilon": self.norm_eps, "residual_in_fp32": self.residual_in_fp32,
            "tie_word_embeddings": self.tie_embeddings, "use_bias": False, "use_conv_bias": True,
            "hidden_act": "silu", "rms_norm": True, "norm_before_gate": False,
            "time_step_limit": [0.0, float("inf")], "time_step_min": self.dt_min, "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor, "time_step_rank": math.ceil(self.d_model / 16),
        }
        for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if k in self.extra:
                d[k] = self.extra[k]
        return d

    def to_own_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["A_init_range"] = list(self.A_init_range)
        return d


def _json_float(v: Any) -> float:
    """A float as JSON dialects write it: a number, "Infinity", or transformers 5's {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def _is_no_limit(lim: Any) -> bool:
    """True for a dt limit of (0, inf), the only one we implement (mamba-ssm's default: no clamping)."""
    try:
        lo, hi = (_json_float(v) for v in lim)
    except (TypeError, ValueError):
        return False
    return lo == 0.0 and math.isinf(hi)


def _refuse_unless(d: dict[str, Any], key: str, allowed: Any, source: str, name: str) -> None:
    if key in d:
        v = d.pop(key)
        if v != allowed:
            raise ConfigError(f"{source}: {name}={v!r} is not supported; only {allowed!r}")


def read_config_file(path: str | Path) -> Mamba2Config:
    """Parse ``config.json`` of either dialect, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        d = json.loads(text.replace("Infinity", "1e999"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return Mamba2Config.from_dict(d, source=str(path))


# Shapes of the published state-spaces checkpoints (GPT-NeoX vocab), for benchmarks and size reports.
PRESETS: dict[str, dict[str, int]] = {
    "130m": dict(d_model=768, n_layer=24),
    "370m": dict(d_model=1024, n_layer=48),
    "780m": dict(d_model=1536, n_layer=48),
    "1.3b": dict(d_model=2048, n_layer=48),
    "2.7b": dict(d_model=2560, n_layer=64),
}


def preset_config(name: str) -> Mamba2Config:
    """Config with the shapes of ``state-spaces/mamba2-<name>`` (random weights only)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Mamba2Config(vocab_size=50277, pad_vocab_size_multiple=16, **PRESETS[name])
