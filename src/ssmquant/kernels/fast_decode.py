"""Fast generation on a GPU: fused Triton decode step, whole step in one CUDA graph, sampling on the GPU.

How this works
--------------
``FastDecoder(model, batch_size, max_new_tokens)`` reads a ``Mamba2LMHeadModel`` whose projections are dense
(``nn.Linear``, run in fp16) or ternary (``quant.layers.PackedTernaryLinear``, repacked once into the GEMV layout of
``kernels/layout.py``), and owns static buffers: token ids, a device token counter ``pos``, the fp32 residual stream,
per-layer conv rings and fp32 SSM states, the logits. One decode step is

    embed ids[:, pos]                                   1 kernel
    per layer:  in_proj GEMV with fused residual RMSNorm  1 kernel   (gemv.py, norm="rms")
                conv + SSM state update + gate          1 kernel   (ssm_step.py)
                out_proj GEMV with fused gated RMSNorm   1 kernel   (gemv.py, norm="gated", residual add)
    head GEMV with fused final RMSNorm -> fp32 logits   1 kernel
    sample (greedy argmax, or temperature / top-k with exponential-race sampling) and append at ids[:, pos + 1],
    pos += 1                                            a few kernels

so 3 kernels per layer against about 10 in mamba-ssm's step. The step reads every index from device memory, so it
is captured once into a CUDA graph and replayed per token with no host synchronisation; the prompt is prefilled by
the model's own forward with its projections swapped for Triton ones (``prefill_model``), and its cache is copied
into the static buffers (the conv ring at counter 0 equals the cache's window, see ``ssm_step.py``).

At batch >= ``GEMM_MIN_BATCH`` the projections switch to tensor-core products (``gemm.py`` / cuBLAS) with the norms
in PyTorch: the fused GEMVs re-decode the weights once per sequence and would be compute-bound there.

The model itself is the reference: ``FastDecoder.teacher_forced_logits`` feeds given tokens so that tests and
benchmarks compare logits step by step against ``model(ids, cache)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from .layout import GemvTernaryWeight, pack_gemv
from .triton.gemm import ternary_matmul
from .triton.gemv import gemv
from .triton.ssm_step import ssm_step

GEMM_MIN_BATCH = 16


@triton.jit
def _embed_kernel(ids_ptr, stride_im, pos_ptr, emb_ptr, stride_e, out_ptr, stride_om, D, BD: tl.constexpr):
    m = tl.program_id(0)
    tok = tl.load(ids_ptr + m * stride_im + tl.load(pos_ptr))
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        v = tl.load(emb_ptr + tok * stride_e + dd, mask=dd < D, other=0.0)
        tl.store(out_ptr + m * stride_om + dd, v.to(tl.float32), mask=dd < D)


@triton.jit
def _append_kernel(tok_ptr, ids_ptr, stride_im, pos_ptr, M, BM: tl.constexpr):
    pos = tl.load(pos_ptr)
    mm = tl.arange(0, BM)
    tok = tl.load(tok_ptr + mm, mask=mm < M)
    tl.store(ids_ptr + mm * stride_im + pos + 1, tok, mask=mm < M)
    tl.store(pos_ptr, pos + 1)


def _fast_weight(mod: nn.Module, dtype: torch.dtype):
    """A projection's weight as the kernels want it: GemvTernaryWeight, or a contiguous dense tensor."""
    from ..quant.layers import PackedTernaryLinear

    if isinstance(mod, FastLinear):
        return mod.weight
    if isinstance(mod, PackedTernaryLinear):
        if mod.bias is not None:
            raise ValueError("projections with a bias are not supported (Mamba-2 has none)")
        return pack_gemv(mod.codes, mod.scale, mod.group_size)
    if isinstance(mod, nn.Linear):
        return mod.weight.detach().to(dtype).contiguous()
    raise TypeError(f"cannot run a {type(mod).__name__} projection in the fast decoder")


class FastLinear(nn.Module):
    """A projection on the Triton kernels: GEMV below ``GEMM_MIN_BATCH`` rows, tensor-core product above."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if not isinstance(self.weight, GemvTernaryWeight):
            return F.linear(x, self.weight.to(x.dtype))
        if x2.shape[0] >= GEMM_MIN_BATCH:
            out = ternary_matmul(x2, self.weight, out_dtype=x.dtype)
        else:
            out = gemv(x2.contiguous(), self.weight, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def prefill_model(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` sharing its tensors, with ternary projections swapped for :class:`FastLinear`."""
    from ..quant.layers import PackedTernaryLinear

    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    clone = copy.deepcopy(model, memo)
    for layer in clone.backbone.layers:
        mix = layer.mixer
        for name in ("in_proj", "out_proj"):
            mod = getattr(mix, name)
            if isinstance(mod, PackedTernaryLinear):
                setattr(mix, name, FastLinear(_fast_weight(mod, torch.float16)))
    return clone


@dataclass
class _Layer:
    norm_w: torch.Tensor        # (d,) fp32
    in_w: object                # GemvTernaryWeight | (d_in_proj, d) fp16
    conv_w: torch.Tensor        # (conv_dim, d_conv) fp32
    conv_b: torch.Tensor        # (conv_dim,) fp32
    dt_bias: torch.Tensor       # (h,) fp32
    A: torch.Tensor             # (h,) fp32, -exp(A_log)
    D: torch.Tensor             # (h,) fp32
    gnorm_w: torch.Tensor       # (e,) fp32
    out_w: object               # GemvTernaryWeight | (d, e) fp16


class FastDecoder:
    """CUDA-graphed decoding of a Mamba-2 LM (see the module docstring). One instance per batch size."""

    def __init__(self, model: nn.Module, batch_size: int, max_new_tokens: int, *, dtype=None,
                 gemv_configs: dict | None = None):
        cfg = model.config
        dev = model.backbone.embedding.weight.device
        if dev.type != "cuda" and not _interpreting():
            raise ValueError("FastDecoder needs a CUDA model (or TRITON_INTERPRET=1 for tests)")
        dtype = dtype or model.backbone.embedding.weight.dtype      # activations and dense weights
        self.model, self.cfg, self.dtype, self.device = model, cfg, dtype, dev
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.gemv_configs = gemv_configs or {}
        f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
        self.layers = []
        for layer in model.backbone.layers:
            mix = layer.mixer
            self.layers.append(_Layer(
                norm_w=f32(layer.norm.weight), in_w=_fast_weight(mix.in_proj, dtype),
                conv_w=f32(mix.conv1d.weight[:, 0, :]), conv_b=f32(mix.conv1d.bias), dt_bias=f32(mix.dt_bias),
                A=-torch.exp(mix.A_log.detach().float()).contiguous(), D=f32(mix.D), gnorm_w=f32(mix.norm.weight),
                out_w=_fast_weight(mix.out_proj, dtype)))
        self.emb = model.backbone.embedding.weight.detach().to(dtype).contiguous()
        self.norm_f = f32(model.backbone.norm_f.weight)
        head = model.lm_head
        self.head_w = (self.emb if head.weight is model.backbone.embedding.weight
                       else _fast_weight(head, dtype))
        if isinstance(self.head_w, GemvTernaryWeight):
            raise ValueError("a ternary LM head is not supported by the fast decoder")
        self.prefill = prefill_model(model)
        M = batch_size
        kw = dict(device=dev)
        self.ids = torch.zeros(M, max_new_tokens + 1, dtype=torch.long, **kw)
        self.pos = torch.zeros((), dtype=torch.int32, **kw)
        self.tok = torch.zeros(M, dtype=torch.long, **kw)
        self.residual = torch.zeros(M, cfg.d_model, dtype=torch.float32, **kw)
        self.zx = torch.zeros(M, cfg.d_in_proj, dtype=dtype, **kw)
        self.h = torch.zeros(M, cfg.d_inner, dtype=torch.float32, **kw)
        self.logits = torch.zeros(M, self.head_w.shape[0], dtype=torch.float32, **kw)
        self.rings = [torch.zeros(M, cfg.conv_dim, cfg.d_conv, dtype=dtype, **kw) for _ in self.layers]
        self.states = [torch.zeros(M, cfg.nheads, cfg.headdim, cfg.d_state, dtype=torch.float32, **kw)
                       for _ in self.layers]
        self.temperature, self.top_k = 0.0, 0
        self.graph: torch.cuda.CUDAGraph | None = None

    # ----- the step -----
    def _proj(self, x, w, *, norm, norm_w, out, residual=None, key: str):
        """out = proj(norm(x)) (+ residual): fused GEMV at small batch, norm + tensor-core product above."""
        cfg = self.cfg
        group = cfg.d_inner // cfg.ngroups if norm == "gated" else None
        if x.shape[0] < GEMM_MIN_BATCH:
            return gemv(x, w, norm=norm, norm_weight=norm_w, norm_group=group, eps=cfg.norm_eps,
                        residual=residual, out=out, config=self.gemv_configs.get(key))
        xf = x.float()
        if norm == "rms":
            xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * norm_w
        else:
            hg = xf.unflatten(-1, (-1, group))
            xn = (hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)).flatten(-2) * norm_w
        xn = xn.to(self.dtype)
        y = ternary_matmul(xn, w) if isinstance(w, GemvTernaryWeight) else F.linear(xn, w)
        if residual is not None:
            out.copy_(residual + y.float())
        else:
            out.copy_(y)
        return out

    def _forward(self) -> None:
        cfg, M = self.cfg, self.batch_size
        _embed_kernel[(M,)](self.ids, self.ids.stride(0), self.pos, self.emb, self.emb.stride(0), self.residual,
                            self.residual.stride(0), cfg.d_model, BD=1024, num_warps=4)
        for i, L in enumerate(self.layers):
            self._proj(self.residual, L.in_w, norm="rms", norm_w=L.norm_w, out=self.zx, key="in_proj")
            ssm_step(self.zx, L.conv_w, L.conv_b, self.rings[i], L.dt_bias, L.A, L.D, self.states[i], self.pos,
                     ngroups=cfg.ngroups, h_out=self.h, **self.gemv_configs.get("ssm", {}))
            self._proj(self.h, L.out_w, norm="gated", norm_w=L.gnorm_w, out=self.residual, residual=self.residual,
                       key="out_proj")
        self._proj(self.residual, self.head_w, norm="rms", norm_w=self.norm_f, out=self.logits, key="head")

    def _sample(self) -> None:
        logits = self.logits[:, :self.cfg.vocab_size]
        if self.temperature <= 0:
            self.tok.copy_(logits.argmax(-1))
            return
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) samples i with probability p_i (no host sync).
        probs = torch.softmax(logits, dim=-1)
        self.tok.copy_((probs / torch.empty_like(probs).exponential_()).argmax(-1))

    def _append(self) -> None:
        _append_kernel[(1,)](self.tok, self.ids, self.ids.stride(0), self.pos, self.batch_size,
                             BM=triton.next_power_of_2(self.batch_size), num_warps=1)

    def step(self) -> None:
        """One token for every sequence: ids[:, pos] -> logits -> ids[:, pos + 1]; pos += 1. Eager."""
        self._forward()
        self._sample()
        self._append()

    # ----- prompt and cache -----
    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, *, temperature: float = 0.0, top_k: int = 0) -> torch.Tensor:
        """Prefill ``input_ids`` (b, l), sample the first new token into ids[:, 0], reset pos. Returns its logits."""
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(f"decoder built for batch {self.batch_size}, got {input_ids.shape[0]}")
        if temperature != self.temperature or top_k != self.top_k:
            self.graph = None                       # the sampler (and its constants) is part of the graph
        self.temperature, self.top_k = temperature, top_k
        cache = self.model.allocate_cache(self.batch_size, dtype=self.dtype)
        logits = self.prefill(input_ids.to(self.device), cache, logits_to_keep=1)[:, -1].float()
        self.load_cache(cache)
        self.logits[:, :logits.shape[-1]].copy_(logits)
        self._sample()
        self.ids[:, 0].copy_(self.tok)
        return logits

    def load_cache(self, cache) -> None:
        for ring, state, c, s in zip(self.rings, self.states, cache.conv_states, cache.ssm_states):
            ring.copy_(c)
            state.copy_(s)
        self.pos.zero_()

    # ----- graphs and generation -----
    def capture(self) -> None:
        """Capture one step into a CUDA graph (the buffers' contents are saved and restored around warm-up)."""
        saved = [t.clone() for t in [self.ids, self.pos, *self.rings, *self.states]]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.step()
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()
        for t, v in zip([self.ids, self.pos, *self.rings, *self.states], saved):
            t.copy_(v)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int | None = None, *, temperature: float = 0.0,
                 top_k: int = 0, use_graph: bool = True) -> torch.Tensor:
        """input_ids (b, l) -> (b, l + n) ids; n <= the ``max_new_tokens`` the decoder was built for."""
        n = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 1 <= n <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in [1, {self.max_new_tokens}]")
        self.start(input_ids, temperature=temperature, top_k=top_k)
        self.decode(n - 1, use_graph=use_graph)
        return torch.cat([input_ids.to(self.device), self.ids[:, :n]], dim=1)

    def decode(self, steps: int, *, use_graph: bool = True) -> None:
        """Run ``steps`` decode steps from the current state (after :meth:`start`)."""
        if use_graph and self.graph is None:
            self.capture()
        for _ in range(steps):
            if use_graph:
                self.graph.replay()
            else:
                self.step()

    @torch.no_grad()
    def teacher_forced_logits(self, input_ids: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """Prefill ``input_ids``, then feed ``forced`` (b, n) one token at a time; returns logits (b, n, V) fp32."""
        self.start(input_ids)
        out = []
        for t in range(forced.shape[1]):
            self.ids[:, t].copy_(forced[:, t])
            self._forward()
            out.append(self.logits.clone())
            self.pos.add_(1)
        return torch.stack(out, 1)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"
