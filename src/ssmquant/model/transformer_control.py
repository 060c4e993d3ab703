"""A small Llama-style decoder, used **only** as the Transformer control of the replication study (issue 10).

The papers claim that state-space models react to low-bit quantization differently from Transformers. To test that
at our scale the study needs a Transformer of the same size, trained by the same trainer on the same data, that goes
through the same post-hoc methods, QAT + KD and analyses. This file is that model; it is not a supported model
family of ssmquant (no decode cache, no GGUF export, no Hugging Face name table).

Architecture (Llama, arXiv 2302.13971, with the usual small-model choices; ``LlamaForCausalLM`` in transformers is
the reference it mirrors): pre-norm blocks

    h = h + attn(RMSNorm(h))        attn: causal multi-head SDPA with rotary position embedding (RoPE, theta 1e4)
    h = h + mlp(RMSNorm(h))         mlp: SwiGLU, out_proj(silu(gate) * up)
    logits = lm_head(RMSNorm(h))    lm_head tied to the embedding

Where it departs from Llama, and why:

* **Fused projections named like Mamba-2's.** ``attn.in_proj`` holds [q; k; v] (as ``nn.MultiheadAttention``
  does) and ``mlp.in_proj`` holds [gate; up]; both blocks' outputs are ``out_proj``. Every linear layer of a block
  then matches the default ``--include`` patterns (``\\.in_proj$``, ``\\.out_proj$``) of ``ssmquant ptq`` and
  ``ssmquant distill``, so the control is quantized by exactly the same commands as the Mamba teacher, and all of its
  block weights are quantized, as all of Mamba's are. Groups run along the input dimension, so fusing does not
  change any group.
* **Module tree shaped like ``Mamba2LMHeadModel``** (``backbone.embedding``, ``backbone.layers.N``,
  ``backbone.norm_f``, ``lm_head``) and the same ``forward`` keywords (``hidden_states_out``, ``return_hidden``,
  ``head_fn``, ``logits_to_keep``): the trainer, distillation loss, calibration, size report and checkpoint code
  read those names and need no branch for this model.
* **Sized to the bundled teacher** (``scripts/transformer_control_config.json``): d_model 256, 4 layers (the
  teacher's depth), 4 heads of 64, SwiGLU width 256. An MLP ratio of 1 (Llama uses 8/3) keeps both the depth and the
  parameter count of the teacher (3.93M against 3.80M; 1.84M block weights against 1.71M), and every input dimension
  a multiple of 256 so group-256 ternary applies to every projection.
* Residual stream in fp32 and init as GPT-2/Llama (normal(0, 0.02), residual-branch outputs scaled by
  1/sqrt(2·n_layer)), from an explicit generator so a seed reproduces the model.

Letters: b batch, l length, d d_model, h heads, p head_dim, f d_ff, v padded vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .mamba2 import RMSNorm

MODEL_TYPE = "ssmquant-transformer-control"


@dataclass
class TransformerControlConfig:
    """The control's shape. ``model_type`` in config.json selects this class (``ssmquant.load_model``,
    ``ssmquant pretrain --model-config``)."""

    d_model: int
    n_layer: int
    vocab_size: int
    n_head: int = 4
    d_ff: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("d_model", "n_layer", "vocab_size", "n_head", "d_ff"):
            if int(getattr(self, k)) <= 0:
                raise ConfigError(f"transformer control: {k}={getattr(self, k)} must be positive")
        if self.d_model % self.n_head:
            raise ConfigError(f"transformer control: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise ConfigError(f"transformer control: head_dim={self.head_dim} must be even for RoPE; change n_head")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m if m > 1 else self.vocab_size

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> TransformerControlConfig:
        """Our own config.json (``to_hf_dict``) or a plain dict of the fields; unknown keys are refused by name."""
        d = dict(d)
        if d.pop("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ConfigError(f"{source}: model_type is not {MODEL_TYPE!r}")
        harmless = {"architectures", "torch_dtype", "eos_token_id", "bos_token_id", "pad_token_id", "quantization_config"}
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(d) - known - harmless)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown} for the transformer control "
                              f"(known: {sorted(known)})")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_own_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {"model_type": MODEL_TYPE, **d}

    def to_hf_dict(self) -> dict[str, Any]:
        """What config.json holds (the savers call this name for every model)."""
        return {"architectures": ["SSMQuantTransformerControl"], **self.to_own_dict()}


def is_transformer_control(cfg_dict: dict) -> bool:
    return isinstance(cfg_dict, dict) and cfg_dict.get("model_type") == MODEL_TYPE


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------

def rope_cos_sin(seqlen: int, head_dim: int, theta: float, device, offset: int = 0) -> tuple[torch.Tensor, ...]:
    """cos, sin: (l, p/2) in fp32 for positions offset .. offset+l-1."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.arange(offset, offset + seqlen, device=device, dtype=torch.float32)[:, None] * inv[None]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (b, h, l, p), rotating the pairs (x[..., :p/2], x[..., p/2:]) (the Llama / GPT-NeoX convention)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerControlConfig):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)     # [q; k; v]
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, l, d) -> (b, l, d)."""
        b, l, d = x.shape
        h, p = self.cfg.n_head, self.cfg.head_dim
        q, k, v = self.in_proj(x).view(b, l, 3, h, p).permute(2, 0, 3, 1, 4)   # each (b, h, l, p)
        cos, sin = rope_cos_sin(l, p, self.cfg.rope_theta, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)             # (b, h, l, p)
        return self.out_proj(y.transpose(1, 2).reshape(b, l, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: TransformerControlConfig):
        super().__init__()
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)         # [gate; up]
        self.out_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.in_proj(x).chunk(2, dim=-1)                              # (b, l, f) each
        return self.out_proj(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerControlConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, residual: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """residual (b, l, d) fp32 -> updated residual; the branches compute in ``dtype``."""
        residual = residual + self.attn(self.norm(residual, out_dtype=dtype)).to(residual.dtype)
        return residual + self.mlp(self.mlp_norm(residual, out_dtype=dtype)).to(residual.dtype)


class TransformerBackbone(nn.Module):
    def __init__(self, cfg: TransformerControlConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, input_ids: torch.Tensor, cache=None, hidden_states_out: list | None = None) -> torch.Tensor:
        """input_ids (b, l) -> final normed hidden states (b, l, d); ``hidden_states_out`` as in Mamba2Backbone
        (the residual entering each layer, then the last one: n_layer + 1 tensors)."""
        if cache is not None:
            raise NotImplementedError("the transformer control has no decode cache (study use only)")
        h = self.embedding(input_ids)
        dtype = h.dtype
        residual = h.float()
        for layer in self.layers:
            if hidden_states_out is not None:
                hidden_states_out.append(residual)
            residual = layer(residual, dtype)
        if hidden_states_out is not None:
            hidden_states_out.append(residual)
        return self.norm_f(residual, out_dtype=dtype)


class TransformerControlLM(nn.Module):
    """``model(input_ids)`` -> logits (b, l, v); the keywords are those of ``Mamba2LMHeadModel.forward``."""

    def __init__(self, config: TransformerControlConfig):
        super().__init__()
        self.config = config
        self.backbone = TransformerBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, cache=None, *, logits_to_keep: int = 0,
                hidden_states_out: list | None = None, return_hidden: bool = False, head_fn=None):
        hidden = self.backbone(input_ids, cache, hidden_states_out)
        if head_fn is not None:
            return head_fn(hidden, self.lm_head)
        if return_hidden:
            return hidden
        if logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden)

    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2 / Llama init: normal(0, 0.02) matrices and embedding, residual outputs / sqrt(2 n_layer)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, m in self.named_modules():
                if isinstance(m, nn.Linear) and name != "lm_head":
                    std = 0.02 / (math.sqrt(2 * self.config.n_layer) if name.endswith("out_proj") else 1.0)
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                elif isinstance(m, RMSNorm):
                    m.weight.fill_(1.0)
            emb = self.backbone.embedding.weight
            emb.copy_(torch.randn(emb.shape, generator=gen) * 0.02)
            if not self.config.tie_embeddings:
                self.lm_head.weight.copy_(torch.randn(self.lm_head.weight.shape, generator=gen) * 0.02)

    def num_parameters(self) -> int:
        """Unique parameters (a tied head counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
