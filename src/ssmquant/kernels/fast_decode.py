"""Fast generation on a GPU: fused Triton decode step, whole step in one CUDA graph, sampling on the GPU.

How this works
--------------
``FastDecoder(model, batch_size, max_new_tokens)`` reads a ``Mamba2LMHeadModel`` whose projections are dense
(``nn.Linear``, run in fp16), ternary (``quant.layers.PackedTernaryLinear``) or DF-SSM
(``quant.binary_lowrank.PackedBinaryLowRankLinear``: 1-bit scaffold + int8 ``U V``), the packed ones repacked once
into the layout of ``kernels/layout.py``; an int8 embedding / head (``quant.int8``) is read as int8. It owns static
buffers: token ids, a device token counter ``pos``, the fp32 residual stream, per-layer conv rings and SSM
states (fp32, or fp16 / bf16 with ``state_dtype``), the logits. One decode step is

    embed ids[:, pos]                                   1 kernel
    per layer:  in_proj GEMV with fused residual RMSNorm  1 kernel   (gemv.py or cuda/ternary_mma.py, norm="rms")
                conv + SSM state update + gate          1 kernel   (ssm_step.py)
                out_proj GEMV with fused gated RMSNorm   1 kernel   (same, norm="gated", residual add)
    head GEMV with fused final RMSNorm -> fp32 logits   1 kernel   (gemv.py; fp16 or int8 rows)
    sample (greedy argmax, or temperature / top-k with exponential-race sampling) and append at ids[:, pos + 1],
    pos += 1                                            a few kernels

so 3 kernels per layer against about 10 in mamba-ssm's step (DF-SSM: 5, each projection adds its ``V x``
GEMV). At batch 1 with 2-bit ternary projections the layers run instead as one persistent kernel
(``cuda/persistent_decode.py``: a CTA per SM, grid barriers between the phases, weights copied ahead), between the
same embedding and head kernels; there, at batch 1 with greedy sampling, the head's GEMV and the argmax are one
kernel (``cuda/head_argmax.py``). On Hopper the layer kernels are launched with programmatic dependent launch, so
each one's weight loads overlap the kernels before it (``pdl.py`` has the rules). Ternary projections run the
Triton GEMV or the tensor-core one (``cuda/ternary_mma.py``), chosen per projection and batch size
(:func:`_mma_or`). At batch >= ``GEMM_MIN_BATCH`` ternary and dense projections switch to a norm kernel
(``rmsnorm.py``, where its power-of-two rows fit; else PyTorch) and a tensor-core product: ``gemm.py``, with
out_proj's residual added in its epilogue, or cuBLAS.
The step reads every index from device memory, so it is captured once into a CUDA graph and replayed per token
with no host synchronisation; the prompt is prefilled by the model's own forward with its ternary projections
swapped for Triton ones (``prefill.prefill_model``), and its cache is copied into the static buffers (the conv ring at
counter 0 equals the cache's window, see ``ssm_step.py``).

The model itself is the reference: ``FastDecoder.teacher_forced_logits`` feeds given tokens so that tests and
benchmarks compare logits step by step against ``model(ids, cache)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from .cuda.head_argmax import HeadArgmax, head_argmax_error
from .cuda.nvrtc import nvrtc_supported
from .cuda.persistent_decode import (
    SUMS_PARTS_MAX,
    PersistentDecodeStep,
    auto_declines,
    auto_split,
    embed_mode,
    persistent_error,
)
from .cuda.ternary_mma import MAX_ROWS, mma_gemv, mma_gemv_error, mma_supported
from .layout import GemvLowRankWeight, GemvTernaryWeight
from .layout_mma import MmaTernaryWeight, mma_from_gemv
from .pdl import resolve as resolve_pdl
from .prefill import GEMM_MIN_BATCH, fast_weight_supported, prefill_model
from .prefill import fast_weight as _fast_weight
from .triton.argmax import ArgmaxRows
from .triton.gemm import ternary_matmul
from .triton.gemv import gemv, norm_ref
from .triton.rmsnorm import rms_norm_fused
from .triton.rmsnorm import supported as rmsnorm_supported
from .triton.ssm_step import ssm_step


@triton.jit
def _embed_kernel(ids_ptr, stride_im, pos_ptr, emb_ptr, stride_e, scale_ptr, dtype_ptr, out_ptr, stride_om, D,
                  BD: tl.constexpr, INT8: tl.constexpr):
    """out[m] = embedding row of ids[m, pos] in fp32; int8 rows times their scale, rounded to the model dtype
    (``dtype_ptr``'s element type) as ``quant.int8.Int8Embedding`` rounds them."""
    m = tl.program_id(0)
    tok = tl.load(ids_ptr + m * stride_im + tl.load(pos_ptr))
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        v = tl.load(emb_ptr + tok * stride_e + dd, mask=dd < D, other=0.0).to(tl.float32)
        if INT8:
            v = (v * tl.load(scale_ptr + tok).to(tl.float32)).to(dtype_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + m * stride_om + dd, v, mask=dd < D)


def fast_decode_supported(model: nn.Module) -> bool:
    """Whether :class:`FastDecoder` can run ``model`` (projection, embedding and head types; CUDA or interpreter)."""
    from ..quant.int8 import Int8Embedding, Int8Linear

    bb = getattr(model, "backbone", None)
    if bb is None or not hasattr(model, "lm_head"):
        return False
    if not isinstance(bb.embedding, (nn.Embedding, Int8Embedding)) or not isinstance(model.lm_head,
                                                                                       (nn.Linear, Int8Linear)):
        return False
    for layer in bb.layers:
        mix = getattr(layer, "mixer", None)
        if mix is None or not all(fast_weight_supported(getattr(mix, n, None)) for n in ("in_proj", "out_proj")):
            return False
    dev = bb.embedding.weight.device if isinstance(bb.embedding, nn.Embedding) else bb.embedding.qweight.device
    return dev.type == "cuda" or _interpreting()


@dataclass
class _Layer:
    norm_w: torch.Tensor        # (d,) fp32
    in_w: object                # GemvTernaryWeight | MmaTernaryWeight | GemvLowRankWeight | (d_in_proj, d) fp16
    conv_w: torch.Tensor        # (conv_dim, d_conv) fp32
    conv_b: torch.Tensor        # (conv_dim,) fp32
    dt_bias: torch.Tensor       # (h,) fp32
    A: torch.Tensor             # (h,) fp32, -exp(A_log)
    D: torch.Tensor             # (h,) fp32
    gnorm_w: torch.Tensor       # (e,) fp32
    out_w: object               # GemvTernaryWeight | MmaTernaryWeight | GemvLowRankWeight | (d, e) fp16


class FastDecoder:
    """CUDA-graphed decoding of a Mamba-2 LM (see the module docstring). One instance per batch size.

    ``gemv_configs``: per-kernel overrides, keys "in_proj", "out_proj", "head" (tile configs of
    ``gemv``; "in_proj_lr" / "out_proj_lr" for DF-SSM's ``V x`` GEMV; "in_proj_mma" / "out_proj_mma": keyword
    arguments of ``mma_gemv``; "in_proj_gemm" / "out_proj_gemm": tiles of ``gemm.ternary_matmul`` from
    ``GEMM_MIN_BATCH`` rows), "mma" (the tensor-core GEMV for ternary projections: "auto", True or False, see
    :func:`_mma_or`), "pdl" (every GEMV's programmatic dependent launch mode: False, "after" or "early";
    default None: each kernel kind's own, ``pdl.DEFAULTS``), "ssm" (``ssm_step`` keyword
    arguments), "scaffold_bits" (DF-SSM scaffold on the GPU: 2 = signs as 2-bit codes, the default and faster
    here; 1 = one bit per weight, half the bytes) and "persistent" (batch 1: every layer of the step in one
    persistent kernel, ``cuda/persistent_decode.py``; "auto" (default) where it can run and is faster
    (``persistent_decode.auto_declines``), True (error where it cannot run) or False), "out_split" (the persistent
    kernel's out_proj split by SSM item, fp32 atomics; with it neither out_proj nor the SSM step waits for a grid
    barrier (the SSM step spins on in_proj's outputs): one a layer instead of three. "auto" (default: by pairs of
    items where they can run, else by item where a CTA has one, else by rows: ``persistent_decode.auto_split``),
    True (by item), "pair" (by pairs of items, clusters of two CTAs: half the atomics; sm_90) or False (by rows).
    Split, the order of the atomics' sums varies from run to run, so logits are not bitwise reproducible (they stay
    within the per-layer kernels' tolerance of the model), and out_proj is kept a second time in the split layout
    (1.3B: 108 MB of GPU memory); False gives bitwise-reproducible decoding), "sums_parts" (the split's partial
    sums of out_proj in 1-4 parts, each CTA adding into one; default 2, measured faster: ``persistent_decode``),
    "persistent_grid" (CTAs of the
    persistent kernel, at most one per SM; default None: one per SM. Fewer give each CTA more rows and SSM items:
    for tests and measurements, never faster), "head_argmax" (batch 1 after a persistent step that writes the
    head's normed input: the head GEMV and greedy sampling's argmax in one kernel, ``cuda/head_argmax.py``; "auto"
    (default) where it can run, True (error where it cannot) or False; it also serves sampled decoding's logits).

    ``state_dtype``: the SSM states' storage, fp32 (default, as the model's own cache) or fp16 / bf16 (updated in
    fp32, stored rounded, as mamba-ssm keeps them in the model dtype): half the bytes of the per-token state
    read and write, which dominate from batch 16 (1.3B: 2 MB per sequence per layer in fp32).
    """

    def __init__(self, model: nn.Module, batch_size: int, max_new_tokens: int, *, dtype=None,
                 gemv_configs: dict | None = None, state_dtype: torch.dtype = torch.float32):
        from ..quant.int8 import Int8Embedding, Int8Linear

        cfg = model.config
        emb = model.backbone.embedding
        int8_emb = isinstance(emb, Int8Embedding)
        emb_w = emb.qweight if int8_emb else emb.weight
        dev = emb_w.device
        if dev.type != "cuda" and not _interpreting():
            raise ValueError("FastDecoder needs a CUDA model (or TRITON_INTERPRET=1 for tests)")
        dtype = dtype or (emb.compute_dtype if int8_emb else emb_w.dtype)      # activations and dense weights
        self.model, self.cfg, self.dtype, self.device = model, cfg, dtype, dev
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.gemv_configs = dict(gemv_configs or {})
        sb = self.gemv_configs.pop("scaffold_bits", 2)
        persistent = self.gemv_configs.pop("persistent", "auto")
        if persistent not in (False, True, "auto"):
            raise ValueError(f"gemv_configs['persistent']={persistent!r}: use False, True or 'auto'")
        out_split = self.gemv_configs.pop("out_split", "auto")
        if out_split not in (False, True, "pair", "auto"):
            raise ValueError(f"gemv_configs['out_split']={out_split!r}: use False, True, 'pair' or 'auto'")
        sums_parts = self.gemv_configs.pop("sums_parts", 2)
        if sums_parts not in range(1, SUMS_PARTS_MAX + 1) or isinstance(sums_parts, bool):
            raise ValueError(f"gemv_configs['sums_parts']={sums_parts!r}: 1 to {SUMS_PARTS_MAX}")
        pgrid = self.gemv_configs.pop("persistent_grid", None)
        if pgrid is not None and (not isinstance(pgrid, int) or isinstance(pgrid, bool) or pgrid < 1):
            raise ValueError(f"gemv_configs['persistent_grid']={pgrid!r}: a positive number of CTAs, or None")
        mma = self.gemv_configs.pop("mma", "auto")
        head_argmax = self.gemv_configs.pop("head_argmax", "auto")
        if head_argmax not in (False, True, "auto"):
            raise ValueError(f"gemv_configs['head_argmax']={head_argmax!r}: use False, True or 'auto'")
        # None: each kernel kind's default (kernels/pdl.py); a mode given is checked here, used on CUDA only.
        pdl = self.gemv_configs.pop("pdl", None)
        if pdl is not None:
            resolve_pdl(pdl)
        self.pdl = pdl if dev.type == "cuda" else False
        if mma is not False and (dev.type != "cuda" or not mma_supported()):
            mma = False
        # The tensor-core GEMV writes fp16 or fp32 (in_proj writes zx in the model dtype; out_proj the fp32
        # residual) and fuses a gated norm of one group only.
        mma_in = mma if dtype == torch.float16 else False
        mma_out = mma if cfg.ngroups == 1 else False
        f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
        self.layers = []
        for layer in model.backbone.layers:
            mix = layer.mixer
            self.layers.append(_Layer(
                norm_w=f32(layer.norm.weight), in_w=_mma_or(_fast_weight(mix.in_proj, dtype, sb), batch_size, mma_in),
                conv_w=f32(mix.conv1d.weight[:, 0, :]), conv_b=f32(mix.conv1d.bias), dt_bias=f32(mix.dt_bias),
                A=-torch.exp(mix.A_log.detach().float()).contiguous(), D=f32(mix.D), gnorm_w=f32(mix.norm.weight),
                out_w=_mma_or(_fast_weight(mix.out_proj, dtype, sb), batch_size, mma_out)))
        if int8_emb:
            self.emb, self.emb_scale = emb.qweight.contiguous(), emb.scale.contiguous()
        else:
            self.emb, self.emb_scale = emb_w.detach().to(dtype).contiguous(), None
        self.norm_f = f32(model.backbone.norm_f.weight)
        head = model.lm_head
        # Head: dense (model dtype) or int8 rows with one scale each (``quant.int8.Int8Linear``, tied or not).
        self.head_scale = None
        if isinstance(head, Int8Linear):
            self.head_w, self.head_scale = head.qweight.contiguous(), head.scale.contiguous()
        elif isinstance(head, nn.Linear) and not int8_emb and head.weight is emb.weight:
            self.head_w = self.emb
        elif isinstance(head, nn.Linear):
            self.head_w = head.weight.detach().to(dtype).contiguous()
        else:
            raise TypeError(f"cannot run a {type(head).__name__} LM head in the fast decoder")
        self.vocab_size = cfg.vocab_size
        self.prefill = prefill_model(model)
        M = batch_size
        kw = dict(device=dev)
        self.ids = torch.zeros(M, max_new_tokens + 1, dtype=torch.long, **kw)
        self.pos = torch.zeros((), dtype=torch.int32, **kw)
        self.tok = torch.zeros(M, dtype=torch.long, **kw)
        self._argmax = ArgmaxRows(M, dev)    # torch.argmax of a 50k row is one CTA: 17.8 us of a 1.3B step
        self.residual = torch.zeros(M, cfg.d_model, dtype=torch.float32, **kw)
        self.zx = torch.zeros(M, cfg.d_in_proj, dtype=dtype, **kw)
        self.h = torch.zeros(M, cfg.d_inner, dtype=torch.float32, **kw)
        self.logits = torch.zeros(M, self.head_w.shape[0], dtype=torch.float32, **kw)
        self.rings = [torch.zeros(M, cfg.conv_dim, cfg.d_conv, dtype=dtype, **kw) for _ in self.layers]
        if state_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"state_dtype={state_dtype}: use torch.float32, float16 or bfloat16")
        self.states = [torch.zeros(M, cfg.nheads, cfg.headdim, cfg.d_state, dtype=state_dtype, **kw)
                       for _ in self.layers]
        # Batch 1: every layer in one persistent kernel (cuda/persistent_decode.py) where it can run.
        self.persistent = None
        self.xn = None
        if persistent is not False:
            err = persistent_error(cfg, self.layers, M, dtype, dev, pgrid)
            if err is None:
                grid = pgrid or _sm_count(dev)
                if persistent == "auto":
                    err = auto_declines(cfg, cfg.d_in_proj, grid)
            if err is None:
                if out_split == "auto":
                    cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else (0, 0)
                    out_split = auto_split(cfg, self.layers[0].out_w, grid, cap)
                split = out_split is not False
                # Split: the step also reads the token's embedding and writes the head's normed input itself (one
                # launch fewer, and the head's GEMV reads 4 KB of activations a program instead of 24 KB).
                fuse = split and embed_mode(self.emb, self.emb_scale, dtype) > 0
                self.xn = torch.zeros(M, cfg.d_model, dtype=dtype, **kw) if fuse else None
                try:
                    self.persistent = PersistentDecodeStep(cfg, self.layers, self.rings, self.states,
                                                           residual=self.residual, zx=self.zx, h=self.h,
                                                           pos=self.pos, eps=cfg.norm_eps, split_out=split,
                                                           pair=out_split == "pair", sums_parts=sums_parts,
                                                           grid=grid,
                                                           embed=(self.ids, self.emb, self.emb_scale) if fuse
                                                           else None,
                                                           final_norm=(self.norm_f, self.xn) if fuse else None)
                except RuntimeError as e:       # compiling, or the CTAs cannot all be resident on this GPU
                    if persistent is True:
                        raise
                    warnings.warn(f"persistent decode step unavailable, using the per-layer kernels: {e}",
                                  stacklevel=2)
            elif persistent is True:
                raise ValueError(f"persistent decode step: {err}")
        # Batch 1 after a step that writes the head's input: head GEMV + argmax (+ append) in one launch.
        self.head_argmax = None
        if head_argmax is not False:
            err = self._head_argmax_error()
            if err is None:
                self.head_argmax = HeadArgmax(dev)
            elif head_argmax is True:
                raise ValueError(f"fused head + argmax: {err}")
        self.temperature, self.top_k = 0.0, 0
        self.graph: torch.cuda.CUDAGraph | None = None

    # ----- the step -----
    def _proj(self, x, w, *, norm, norm_w, out, residual=None, key: str, row_scale=None):
        """out = proj(norm(x)) (+ residual): the fused GEMV below ``GEMM_MIN_BATCH`` rows (and for DF-SSM at
        every batch size), norm + tensor-core product (ternary GEMM / cuBLAS) above."""
        cfg = self.cfg
        group = cfg.d_inner // cfg.ngroups if norm == "gated" else None
        pdl = {"pdl": self.pdl}
        kw = dict(norm=norm, norm_weight=norm_w, norm_group=group, eps=cfg.norm_eps, residual=residual, out=out,
                  config={**pdl, **(self.gemv_configs.get(key) or {})})
        if isinstance(w, GemvLowRankWeight):
            return gemv(x, w, lowrank_config={**pdl, **(self.gemv_configs.get(key + "_lr") or {})}, **kw)
        if isinstance(w, MmaTernaryWeight):
            return mma_gemv(x, w, norm=norm, norm_weight=norm_w, norm_group=group, eps=cfg.norm_eps,
                            residual=residual, out=out, **{**pdl, **(self.gemv_configs.get(key + "_mma") or {})})
        if x.shape[0] < GEMM_MIN_BATCH:
            return gemv(x, w, row_scale=row_scale, **kw)
        # Batched step: one norm kernel, then a tensor-core product that writes ``out`` (ternary: with the residual
        # added in its epilogue), instead of a dozen elementwise PyTorch kernels per projection.
        gs = group if norm == "gated" else x.shape[-1]
        if x.is_cuda and rmsnorm_supported(x, gs):
            xn = rms_norm_fused(x, norm_w, cfg.norm_eps, group_size=gs, out_dtype=self.dtype)
        else:
            xn = norm_ref(x, norm, norm_w, group, cfg.norm_eps).to(self.dtype)
        if isinstance(w, GemvTernaryWeight):
            return ternary_matmul(xn, w, out=out, residual=residual, **(self.gemv_configs.get(key + "_gemm") or {}))
        if row_scale is not None:
            # int8 head at large batch: dequantized per step (no int8 GEMM kernel here).
            y = F.linear(xn, w.to(self.dtype)).float() * row_scale.float()
        else:
            y = F.linear(xn, w)
        if residual is out:
            out.add_(y)
        elif residual is not None:
            out.copy_(residual + y.float())
        else:
            out.copy_(y)
        return out

    def _layers(self) -> None:
        """Every layer on the per-layer kernels, the residual stream updated in place (three launches a layer)."""
        cfg = self.cfg
        for i, L in enumerate(self.layers):
            self._proj(self.residual, L.in_w, norm="rms", norm_w=L.norm_w, out=self.zx, key="in_proj")
            ssm_step(self.zx, L.conv_w, L.conv_b, self.rings[i], L.dt_bias, L.A, L.D, self.states[i], self.pos,
                     ngroups=cfg.ngroups, h_out=self.h, **{"pdl": self.pdl, **self.gemv_configs.get("ssm", {})})
            self._proj(self.h, L.out_w, norm="gated", norm_w=L.gnorm_w, out=self.residual, residual=self.residual,
                       key="out_proj")

    def _embed(self) -> None:
        """residual = the embedding of ids[:, pos]."""
        int8 = self.emb_scale is not None
        _embed_kernel[(self.batch_size,)](self.ids, self.ids.stride(0), self.pos, self.emb, self.emb.stride(0),
                                          self.emb_scale if int8 else self.emb, self.zx, self.residual,
                                          self.residual.stride(0), self.cfg.d_model, BD=1024, INT8=int8, num_warps=4)

    @property
    def _fused_ends(self) -> bool:
        """Whether the persistent step reads the embedding and writes the head's normed input ``xn`` itself."""
        return self.persistent is not None and self.persistent.embed is not None

    def _head_argmax_error(self) -> str | None:
        """Why the fused head + argmax (``cuda/head_argmax.py``) cannot serve this decoder, or None."""
        if self.batch_size != 1:
            return f"batch 1 only (decoder built for {self.batch_size})"
        if self.xn is None:
            return "it needs the persistent step's normed head input (batch 1, 2-bit ternary, out_proj split)"
        if self.device.type != "cuda" or not nvrtc_supported():
            return "it needs NVRTC and a CUDA GPU of compute capability >= 8.0"
        return head_argmax_error(self.xn[0], self.head_w, self.head_scale)

    def _head(self, append: tuple | None = None) -> None:
        """logits = head(rmsnorm(residual)) (from ``xn``, the step's normed residual, when it writes it). With the
        fused head + argmax, also tok = the greedy token, appended at ids[:, pos + 1] (pos += 1) with ``append``."""
        if self.head_argmax is not None:
            self.head_argmax(self.xn[0], self.head_w, self.head_scale, self.logits[0], self.tok,
                             vocab=self.vocab_size, append=append, pdl=bool(resolve_pdl(self.pdl, "gemv")))
        elif self._fused_ends:
            self._proj(self.xn, self.head_w, norm=None, norm_w=None, out=self.logits, key="head",
                       row_scale=self.head_scale)
        else:
            self._proj(self.residual, self.head_w, norm="rms", norm_w=self.norm_f, out=self.logits, key="head",
                       row_scale=self.head_scale)

    def _forward(self, append: tuple | None = None) -> None:
        """ids[:, pos] -> logits (``append``: the fused head's greedy token also appended, see :meth:`_head`)."""
        if not self._fused_ends:
            self._embed()
        if self.persistent is not None:
            self.persistent()
        else:
            self._layers()
        self._head(append)

    def _sample(self, append: bool = False) -> None:
        """tok = the next token of each row (greedy or sampled); ``append``: also ids[:, pos + 1] = tok and pos += 1,
        in the argmax's last program (one launch fewer a step)."""
        app = (self.ids, self.pos) if append else None
        logits = self.logits[:, :self.vocab_size]
        if self.temperature <= 0:
            self._argmax(logits, self.tok, append=app)
            return
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) samples i with probability p_i (no host sync).
        probs = torch.softmax(logits, dim=-1)
        self._argmax(probs / torch.empty_like(probs).exponential_(), self.tok, append=app)

    def step(self) -> None:
        """One token for every sequence: ids[:, pos] -> logits -> ids[:, pos + 1]; pos += 1. Eager."""
        if self.head_argmax is not None and self.temperature <= 0:
            self._forward(append=(self.ids, self.pos))      # greedy: the head's kernel samples and appends
            return
        self._forward()
        self._sample(append=True)

    # ----- prompt and cache -----
    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, *, temperature: float = 0.0, top_k: int = 0,
              vocab_size: int | None = None) -> torch.Tensor:
        """Prefill ``input_ids`` (b, l), sample the first new token into ids[:, 0], reset pos. Returns its logits.

        Tokens are sampled among the first ``vocab_size`` logits (default ``config.vocab_size``: the embedding's
        padding rows are never sampled)."""
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(f"decoder built for batch {self.batch_size}, got {input_ids.shape[0]}")
        vocab_size = vocab_size or self.cfg.vocab_size
        if temperature != self.temperature or top_k != self.top_k or vocab_size != self.vocab_size:
            self.graph = None                       # the sampler (and its constants) is part of the graph
        self.temperature, self.top_k, self.vocab_size = temperature, top_k, vocab_size
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
                 top_k: int = 0, use_graph: bool = True, vocab_size: int | None = None) -> torch.Tensor:
        """input_ids (b, l) -> (b, l + n) ids; n <= the ``max_new_tokens`` the decoder was built for."""
        n = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 1 <= n <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in [1, {self.max_new_tokens}]")
        self.start(input_ids, temperature=temperature, top_k=top_k, vocab_size=vocab_size)
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


MMA_MIN_BATCH = 4     # from this batch size "auto" puts ternary projections on the tensor-core GEMV (_mma_or)


def _mma_or(w, batch: int, mode):
    """The projection's weight for the decode step: repacked for the tensor-core GEMV (``cuda/ternary_mma.py``)
    where that is chosen and possible, else ``w`` unchanged.

    ``mode`` (``gemv_configs["mma"]``): True / False force it on / off where possible; "auto" (default) takes it at
    batch ``MMA_MIN_BATCH``-8, where one launch serves every row and the Triton GEMV runs a program per row (1.3B
    decode on H100: batch 4 1.54 vs 1.85 ms/token, batch 8 2.41 vs 3.22, run 16), not below (batch 2 1.13 vs 1.10; batch
    1 with it on out_proj 0.83 vs 0.78; benchmarks/RESULTS.md). ``FastDecoder`` passes False where the kernel
    cannot run (no NVRTC or CUDA, a bf16 output, a gated norm of several groups); here it also needs a 2-bit
    ternary weight of shapes the layout takes."""
    if mode is False or not isinstance(w, GemvTernaryWeight) or w.bits != 2:
        return w
    if mode == "auto" and not MMA_MIN_BATCH <= batch <= MAX_ROWS:
        return w
    N, K = w.shape
    if mma_gemv_error(batch, N, K, w.group_size):
        return w
    return mma_from_gemv(w)


def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"
