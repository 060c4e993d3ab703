"""Mamba-2 language model in plain PyTorch, with mamba-ssm's semantics and parameter names.

Mirrors ``mamba_ssm.modules.mamba2.Mamba2`` (mixer), ``mamba_ssm.modules.block.Block`` (pre-norm residual block) and
``mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel``. One mixer:

    zxbcdt = in_proj(u)                         # (b, l, 2e + 2gn + h): [z, x, B, C, dt]
    xBC = silu(causal depthwise conv1d(xBC))    # (b, l, e + 2gn)
    dt = softplus(dt + dt_bias); A = -exp(A_log)   (fp32)
    y = SSD(x, dt, A, B, C) + D * x
    y = RMSNorm_grouped(y * silu(z))            # gate first, then norm (norm_before_gate=False)
    out = out_proj(y)

The projections are always *called as modules* (``self.in_proj(u)``), never read as ``.weight``: a quantized module
swapped in by ``ssmquant.quant`` is therefore always honoured (the fused paths of mamba-ssm and transformers read
``out_proj.weight`` raw, which silently bypasses such a swap).

Scan implementations are chosen in one place, ``ssmquant.model.dispatch``.

Letters (see ``config.py``): b batch, l length, d d_model, e d_inner, h nheads, p headdim, g ngroups, n d_state,
k d_conv, v padded vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .cache import InferenceCache
from .config import Mamba2Config
from . import dispatch
from .graphs import LayerGraphs


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, computed in fp32 and returned in ``out_dtype`` (default: x's dtype)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return dispatch.rms_norm(x, self.weight, self.eps, out_dtype=out_dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) normalised per group of ``group_size`` channels (mamba-ssm ``RMSNormGated``)."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z: (..., e) -> (..., e) in y's dtype."""
        return dispatch.rms_norm(y, self.weight, self.eps, z=z, group_size=self.group_size)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        e, h, g, n = cfg.d_inner, cfg.nheads, cfg.ngroups, cfg.d_state
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=False)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=True,
                                padding=cfg.d_conv - 1)
        # Zeros, not empty: a model built without a checkpoint must not hold NaNs (``init_weights`` fills these).
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.zeros(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(e, group_size=e // g, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(e, cfg.d_model, bias=False)
        self._split = [e, e + 2 * g * n, h]     # z | xBC | dt
        self._xbc_split = [e, g * n, g * n]     # x | B | C

    def forward(self, u: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """u: (b, l, d) -> (b, l, d). With ``cache``, continues from its states and leaves the new ones in it."""
        if cache is not None and u.shape[1] == 1 and cache.seqlen_offset > 0:
            return self._step(u, cache)
        cfg = self.cfg
        b, l, _ = u.shape
        z, xBC_in, dt = torch.split(self.in_proj(u), self._split, dim=-1)
        # Continuing a sequence, the conv sees the cached last (k - 1) inputs before this segment; else zeros.
        prev = cache.conv_states[self.layer_idx][:, :, 1:] if cache is not None and cache.seqlen_offset > 0 else None
        xBC = dispatch.causal_conv1d_silu(xBC_in, self.conv1d.weight, self.conv1d.bias, prev)  # (b, l, e + 2gn)
        if cache is not None:
            # The new window: the last k inputs of [prev (or zeros), this segment], (b, conv_dim, k).
            k = cfg.d_conv
            tail = xBC_in[:, -k:].transpose(1, 2)
            if l < k:
                before = prev if prev is not None else tail.new_zeros(b, tail.shape[1], k - 1)
                tail = torch.cat([before.to(tail.dtype), tail], dim=-1)[..., -k:]
            cache.conv_states[self.layer_idx].copy_(tail)
        x, B, C = torch.split(xBC, self._xbc_split, dim=-1)
        h, p, g, n = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        dt = F.softplus(dt.float() + self.dt_bias.float())                 # (b, l, h), fp32
        A = -torch.exp(self.A_log.float())                                  # fp32: exp of a low-precision A_log
        x = x.reshape(b, l, h, p)
        init = cache.ssm_states[self.layer_idx] if cache is not None and cache.seqlen_offset > 0 else None
        y, final = dispatch.ssd_scan(x, dt, A, B.reshape(b, l, g, n), C.reshape(b, l, g, n),
                                     chunk_size=cfg.chunk_size, initial_state=init, D=self.D)  # y + D x
        if cache is not None:
            cache.ssm_states[self.layer_idx].copy_(final)
        y = self.norm(y.reshape(b, l, h * p), z)
        return self.out_proj(y)

    def _step(self, u: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token: u (b, 1, d) -> (b, 1, d); updates conv and ssm states in place."""
        cfg = self.cfg
        b = u.shape[0]
        z, xBC, dt = torch.split(self.in_proj(u[:, 0]), self._split, dim=-1)
        conv_state = cache.conv_states[self.layer_idx]                      # (b, conv_dim, k)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xBC.to(conv_state.dtype)
        w = self.conv1d.weight[:, 0, :]                                     # (conv_dim, k)
        xBC = (conv_state.to(w.dtype) * w).sum(-1) + self.conv1d.bias
        xBC = F.silu(xBC).to(u.dtype)
        x, B, C = torch.split(xBC, self._xbc_split, dim=-1)
        h, p, g, n = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        dt = F.softplus(dt.float() + self.dt_bias.float())                 # (b, h)
        A = -torch.exp(self.A_log.float())
        x = x.reshape(b, h, p)
        y = dispatch.ssd_step(x, dt, A, B.reshape(b, g, n), C.reshape(b, g, n), cache.ssm_states[self.layer_idx])
        y = y + x * self.D.to(x.dtype)[:, None]
        y = self.norm(y.reshape(b, h * p), z)
        return self.out_proj(y)[:, None]


class Mamba2Block(nn.Module):
    """Pre-norm residual block: residual += mixer(norm(residual))."""

    def __init__(self, cfg: Mamba2Config, layer_idx: int):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg, layer_idx)

    def forward(self, residual: torch.Tensor, cache: InferenceCache | None, dtype: torch.dtype) -> torch.Tensor:
        """residual (b, l, d) (fp32 when residual_in_fp32) -> the updated residual stream; mixer input in ``dtype``.

        Called as a module (not by reaching into ``norm`` / ``mixer``) so wrappers such as FSDP2 see each block.
        """
        out = self.mixer(self.norm(residual, out_dtype=dtype), cache)
        if torch.promote_types(out.dtype, residual.dtype) != residual.dtype:
            out = out.to(residual.dtype)
        # An fp16 / bf16 branch added to an fp32 residual converts on the fly: one kernel, no fp32 copy of it.
        return residual + out


class Mamba2Backbone(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Mamba2Block(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # Activation checkpointing (a run-time switch, not part of the config): in training, keep only each block's
        # input and recompute the block in the backward pass. Trades ~1/3 more compute for activation memory that
        # no longer grows with depth; what lets a 2.7B student train at sequence 2048 on one 80 GB GPU.
        self.activation_checkpointing = False
        # CUDA graphs of the blocks in training (a run-time switch; see ``graphs.py``): one replay per block and
        # direction instead of thousands of kernel launches a step. Ignored off the GPU, with checkpointing, in
        # eval / no-grad forwards and under torch.compile.
        self.cuda_graphs = False
        self._layer_graphs = LayerGraphs()

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None,
                hidden_states_out: list | None = None) -> torch.Tensor:
        """input_ids (b, l) -> final normed hidden states (b, l, d) in the embedding's dtype.

        ``hidden_states_out``, if given, receives the residual stream entering each layer and the final one
        (n_layer + 1 tensors, (b, l, d)): used by hidden-state distillation, drift analysis and the logit lens.
        """
        h = self.embedding(input_ids)
        dtype = h.dtype
        residual = h.float() if self.cfg.residual_in_fp32 else h
        training = cache is None and self.training and torch.is_grad_enabled()
        recompute = self.activation_checkpointing and training
        graphed = None
        if (self.cuda_graphs and training and not recompute and residual.is_cuda
                and not torch.compiler.is_compiling()):
            graphed = self._layer_graphs.get(self.layers, residual, dtype)
        for i, layer in enumerate(self.layers):
            if hidden_states_out is not None:
                hidden_states_out.append(residual)
            if graphed is not None:
                residual = graphed[i](residual)
            elif recompute:
                residual = torch.utils.checkpoint.checkpoint(layer, residual, None, dtype, use_reentrant=False)
            else:
                residual = layer(residual, cache, dtype)
        if hidden_states_out is not None:
            hidden_states_out.append(residual)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.norm_f(residual, out_dtype=dtype)


class Mamba2LMHeadModel(nn.Module):
    """Mamba-2 LM. ``model(input_ids)`` returns logits (b, l, v) with v = ``config.padded_vocab_size``."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self.backbone = Mamba2Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None, *,
                logits_to_keep: int = 0, hidden_states_out: list | None = None,
                return_hidden: bool = False, head_fn=None):
        """input_ids (b, l) long -> logits (b, l, v), or (b, logits_to_keep, v) for the last positions only.

        With ``cache`` (from ``allocate_cache``) the call continues the cached sequences and updates the cache:
        a prompt of any length (prefill) or one token at a time (decode). ``return_hidden`` returns the final
        normed hidden states (b, l, d) instead of logits. ``head_fn(hidden, lm_head)`` returns whatever it computes
        from them (a chunked distillation loss): it runs inside this forward, where a sharded (FSDP) head is whole.
        """
        hidden = self.backbone(input_ids, cache, hidden_states_out)
        if head_fn is not None:
            return head_fn(hidden, self.lm_head)
        if return_hidden:
            return hidden
        if logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden)

    def allocate_cache(self, batch_size: int, *, device=None, dtype=None) -> InferenceCache:
        """Empty decode cache: conv states in the model dtype, SSM states in fp32."""
        p = self.backbone.embedding.weight
        return InferenceCache.allocate(self.config, batch_size, device=device or p.device, dtype=dtype or p.dtype)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, **kwargs) -> torch.Tensor:
        """Sample a continuation; see ``ssmquant.model.generate.generate`` for the options."""
        from .generate import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)

    def init_weights(self, seed: int | None = None) -> None:
        """Random init following mamba-ssm (``Mamba2.__init__`` and ``mixer_seq_simple._init_weights``)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        cfg = self.config
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    _kaiming_uniform_(m.weight, gen)
                elif isinstance(m, nn.Conv1d):
                    _kaiming_uniform_(m.weight, gen)
                    fan_in = m.weight.shape[1] * m.weight.shape[2]
                    bound = 1 / math.sqrt(fan_in)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 * bound - bound)
                elif isinstance(m, (RMSNorm, GatedRMSNorm)):
                    m.weight.fill_(1.0)
            self.backbone.embedding.weight.copy_(torch.randn(self.backbone.embedding.weight.shape, generator=gen)
                                                 * 0.02)
            for layer in self.backbone.layers:
                init_ssm_parameters_(layer.mixer, cfg, gen)
            if not cfg.tie_embeddings:
                _kaiming_uniform_(self.lm_head.weight, gen)

    def num_parameters(self) -> int:
        """Unique parameters (a tied head counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


@torch.no_grad()
def init_ssm_parameters_(mix: Mamba2Mixer, cfg: Mamba2Config, gen: torch.Generator | None = None) -> None:
    """mamba-ssm's init of one mixer's dt_bias, A_log and D, plus the 1/sqrt(n_layer) out_proj scaling.

    Random numbers are drawn on the CPU (``gen`` is a CPU generator) and copied to the parameters' device.
    """
    h = cfg.nheads
    # dt ~ log-uniform in [dt_min, dt_max], floored; dt_bias = softplus^-1(dt).
    dt = torch.exp(torch.rand(h, generator=gen) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                   + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
    mix.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    lo, hi = cfg.A_init_range
    mix.A_log.copy_(torch.log(torch.rand(h, generator=gen) * (hi - lo) + lo))
    mix.D.fill_(1.0)
    # GPT-2 style: scale residual-branch outputs by 1/sqrt(n_layer) (one residual add per block).
    mix.out_proj.weight.div_(math.sqrt(cfg.n_layer))


def _kaiming_uniform_(w: torch.Tensor, gen) -> None:
    """nn.Linear's default init (kaiming uniform, a=sqrt(5)), from an explicit generator."""
    fan_in = w.shape[1] * (w.shape[2] if w.dim() > 2 else 1)
    bound = 1 / math.sqrt(fan_in)
    w.copy_(torch.rand(w.shape, generator=gen) * 2 * bound - bound)

