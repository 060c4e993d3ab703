"""DF-SSM weights: a 1-bit scaffold plus an int8 low-rank correction, ``W ≈ sign(W)·s + U·V``.

Follows DF-SSM (arXiv 2606.10932) as we read it; the paper gives no formula for its "density field", so this is our
reading (docs/ptq_dfssm.md): the *scaffold* is llama.cpp's Q1_0 format (one sign bit per weight, one fp16 scale =
mean|w| per group of 128 inputs) and the *density field* is a dense rank-``r`` correction ``U·V`` stored as int8 with
one fp16 scale per row of ``U`` and of ``V``. A projection computes

    y = x @ (sign(W) ⊙ s)ᵀ + (x @ Vᵀ) @ Uᵀ          x: (..., c)  W: (r_out, c)  U: (r_out, k)  V: (k, c)

the correction as two thin matmuls (never folded into ``W``, which would cost the dense weight again).

How this works
--------------
* :func:`binary_codes_and_scales` / :func:`dequantize_binary` are the scaffold's single definition (signs in
  {−1, +1} as int8, ``+1`` for ``w ≥ 0``; scales floored at 2**-14 and rounded to fp16 *before* use), shared by the
  QAT module and the packed module, as ``quant/ternary.py`` does for ternary weights.
* Factors use ``quant.int8.int8_rowwise`` / ``dequantize_int8`` (absmax per row, fp16 scale, codes in [−127, 127]).
* :class:`BinaryLowRankLinear` (QAT) keeps the fp32 latent ``weight`` and fp32 ``U``, ``V``; its forward quantizes
  all three with straight-through gradients (identity STE on ``sign``, as BitNet does, and on the int8 rounding);
  the scale is recomputed (``scale_mode="fixed"``, Q1_0's rule) or a learnable parameter whose gradient is the exact
  ``d(sign(w)·s)/ds = sign(w)`` summed over the group. ``U, V`` start from the SVD of ``W − scaffold(W)`` (the best
  rank-``k`` correction of the scaffold's error, Eckart–Young), split as ``U = U_k·√Σ``, ``V = √Σ·V_kᵀ`` so both
  factors have comparable ranges for int8.
* :class:`PackedBinaryLowRankLinear` holds int8 signs, fp16 scales and int8 factors with their scales and computes
  the same expression from the same dequantized tensors with the same ops: :func:`dfssm_convert` changes no logit.
* On disk (``quant/dfssm_io.py``) signs are packed 8 per byte, LSB first (:func:`pack_signs`), which is also the bit
  order of a Q1_0 block's ``qs``; :func:`q1_0_blocks` builds the 18-byte Q1_0 blocks for GGUF.
* :func:`dfssm_size_report` counts the bytes of a DF-SSM model from shapes (meta device works) and
  :func:`max_rank_within` finds the largest rank under a budget.

Glossary: ``r`` rows (out_features), ``c`` cols (in_features), ``G`` group size, ``k`` rank.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .int8 import dequantize_int8, int8_rowwise
from .ternary import _grouped, absmean_scale, round_scale

Q1_0_GROUP = 128          # llama.cpp Q1_0: 128 weights per block
Q1_0_BLOCK_BYTES = 18     # fp16 d + 16 bytes of sign bits
SCALE_MODES = ("fixed", "learnable")


# ---------------------------------------------------------------------------------------------------------------
# Math: scaffold and factors
# ---------------------------------------------------------------------------------------------------------------

def binary_codes_and_scales(weight: Tensor, group_size: int, scale: Tensor | None = None, *,
                            scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """``weight: (r, c)`` -> ``signs: (r, c) int8`` in {−1, +1} (``+1`` where ``w >= 0``) and ``scale: (r, c/G)``
    in ``scale_dtype`` (mean|w| per group unless ``scale`` is given; floored, rounded to the storage dtype)."""
    with torch.no_grad():
        s = absmean_scale(weight, group_size) if scale is None else scale.detach()
        s = round_scale(s, scale_dtype)
        signs = torch.where(weight.detach() >= 0, 1, -1).to(torch.int8)
    return signs, s.to(scale_dtype)


def dequantize_binary(signs: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """``signs: (r, c)`` times ``scale: (r, c/G)`` -> ``(r, c)`` fp32: the scaffold's value, for training and packed."""
    return (_grouped(signs.float(), group_size) * scale.float().unsqueeze(-1)).reshape(signs.shape)


class _BinaryFakeQuant(torch.autograd.Function):
    """Forward: ``dequantize_binary(binary_codes_and_scales(w, G, s))``. Backward: identity STE for ``w``; for a
    learnable ``s`` the exact derivative ``sign(w)`` summed over each group."""

    @staticmethod
    def forward(ctx, weight: Tensor, scale: Tensor, group_size: int, scale_dtype: torch.dtype):
        signs, stored = binary_codes_and_scales(weight, group_size, scale, scale_dtype=scale_dtype)
        ctx.save_for_backward(signs)
        ctx.group_size = group_size
        ctx.scale_dtype_of_input = scale.dtype
        return dequantize_binary(signs, stored, group_size)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (signs,) = ctx.saved_tensors
        grad_w = grad_out if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            g = ctx.group_size
            grad_s = (_grouped(grad_out.float(), g) * _grouped(signs.float(), g)).sum(-1)
            grad_s = grad_s.to(ctx.scale_dtype_of_input)
        return grad_w, grad_s, None, None


class _Int8FakeQuant(torch.autograd.Function):
    """Forward: per-row int8 round trip (``int8_rowwise`` then ``dequantize_int8``). Backward: identity STE."""

    @staticmethod
    def forward(ctx, t: Tensor):
        return dequantize_int8(*int8_rowwise(t))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return grad_out


def int8_fake_quant(t: Tensor) -> Tensor:
    """``t: (r, c)`` -> its int8-per-row value ``(r, c)`` fp32, gradient straight through."""
    return _Int8FakeQuant.apply(t) if t.numel() else t


def int8_factor(t: Tensor) -> tuple[Tensor, Tensor]:
    """``int8_rowwise`` that also takes an empty factor (rank 0): ``(r, 0)`` codes, scales 1 (valid on disk)."""
    if t.numel() == 0:
        return torch.zeros(t.shape, dtype=torch.int8), torch.ones(t.shape[0], dtype=torch.float16)
    return int8_rowwise(t)


def svd_factors(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``k`` factors of ``err: (r, c)`` (Eckart–Young): ``U: (r, k)``, ``V: (k, c)`` fp32 with
    ``U @ V`` the truncated SVD and both factors scaled by ``√Σ`` (balanced ranges for int8)."""
    r, c = err.shape
    k = min(rank, r, c)
    if k == 0:
        return err.new_zeros(r, 0).float(), err.new_zeros(0, c).float()
    u, s, vh = torch.linalg.svd(err.double(), full_matrices=False)
    root = s[:k].sqrt()
    # contiguous: LAPACK returns column-major U, and a weight's memory layout can change a GEMM's rounding.
    return (u[:, :k] * root).float().contiguous(), (root[:, None] * vh[:k]).float().contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Bit packing (on disk) and Q1_0 blocks (GGUF)
# ---------------------------------------------------------------------------------------------------------------

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.int32)


def pack_signs(signs: Tensor) -> Tensor:
    """``signs: (r, c) int8`` in {−1, +1}, ``c % 8 == 0`` -> ``(r, c/8) uint8``; bit ``j`` of byte ``m`` is column
    ``8m + j`` (LSB first), set for +1: Q1_0's ``qs`` order."""
    r, c = signs.shape
    if c % 8:
        raise ValueError(f"{c} columns are not a multiple of 8")
    if bool(((signs != 1) & (signs != -1)).any()):
        raise ValueError("signs hold values other than -1 and +1")
    bits = (signs > 0).to(torch.int32).reshape(r, c // 8, 8)
    return (bits * _BITS).sum(-1).to(torch.uint8)


def unpack_signs(packed: Tensor, cols: int) -> Tensor:
    """Inverse of :func:`pack_signs`: ``(r, cols/8) uint8`` -> ``(r, cols) int8`` in {−1, +1}."""
    r, m = packed.shape
    if m * 8 != cols:
        raise ValueError(f"packed signs have {m} bytes per row; {cols} columns need {cols // 8 if cols % 8 == 0 else '?'}")
    bits = (packed.to(torch.int32).unsqueeze(-1) & _BITS) != 0  # (r, m, 8)
    return (bits.to(torch.int8) * 2 - 1).reshape(r, cols)


def q1_0_blocks(signs: Tensor, scale: Tensor) -> Tensor:
    """llama.cpp Q1_0 bytes of a scaffold: ``signs: (r, c) int8``, ``scale: (r, c/128)`` fp16 -> ``(r, c/128*18)``
    uint8, each block ``fp16 d`` (little-endian) then ``qs[16]`` (bit set = +d, LSB first); dequantized by
    llama.cpp's ``dequantize_row_q1_0`` as ``y[j] = (2·bit_j − 1)·d``."""
    r, c = signs.shape
    if c % Q1_0_GROUP or tuple(scale.shape) != (r, c // Q1_0_GROUP):
        raise ValueError(f"Q1_0 needs 128-weight groups: signs {tuple(signs.shape)}, scale {tuple(scale.shape)}")
    n = c // Q1_0_GROUP
    qs = pack_signs(signs).reshape(r, n, 16)
    d = scale.to(torch.float16).contiguous().view(torch.uint8).reshape(r, n, 2)  # little-endian on every torch host
    return torch.cat([d, qs], dim=-1).reshape(r, n * Q1_0_BLOCK_BYTES)


def q1_0_unblocks(blocks: Tensor, cols: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`q1_0_blocks`: ``(r, n*18) uint8`` -> ``signs: (r, cols) int8``, ``scale: (r, n) fp16``."""
    r = blocks.shape[0]
    n = cols // Q1_0_GROUP
    b = blocks.reshape(r, n, Q1_0_BLOCK_BYTES)
    scale = b[..., :2].contiguous().view(torch.float16).reshape(r, n)
    signs = unpack_signs(b[..., 2:].reshape(r, n * 16), cols)
    return signs, scale


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------

class BinaryLowRankLinear(nn.Module):
    """QAT replacement of ``nn.Linear``: 1-bit scaffold (STE) + int8 low-rank correction (STE).

    x: (..., c) -> (..., r). Parameters: ``weight (r, c)`` fp32 latent, ``lr_U (r, k)``, ``lr_V (k, c)`` fp32,
    ``scale (r, c/G)`` fp32 when learnable.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, group_size: int = Q1_0_GROUP, rank: int = 32,
                 scale_mode: str = "fixed", scale_dtype: torch.dtype = torch.float16, init: str = "svd"):
        super().__init__()
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode={scale_mode!r}, expected one of {SCALE_MODES}")
        if isinstance(weight, nn.Parameter) and weight.dtype == torch.float32:
            self.weight = weight
        else:
            self.weight = nn.Parameter(weight.detach().float())
        self.out_features, self.in_features = self.weight.shape
        self.bias = bias
        self.group_size, self.rank = group_size, rank
        self.scale_mode, self.scale_dtype = scale_mode, scale_dtype
        init_scale = absmean_scale(self.weight, group_size)
        if scale_mode == "learnable":
            self.scale = nn.Parameter(init_scale)
        else:
            self.register_parameter("scale", None)
        if init == "svd":
            with torch.no_grad():
                err = self.weight.float() - self.scaffold_weight()
            u, v = svd_factors(err, rank)
        elif init == "zeros":
            # U = 0 gives zero correction while V still receives gradient through U's.
            u = torch.zeros(self.out_features, rank)
            v = torch.randn(rank, self.in_features) / self.in_features**0.5
        else:
            raise ValueError(f"init={init!r}, expected 'svd' or 'zeros'")
        self.lr_U = nn.Parameter(u)
        self.lr_V = nn.Parameter(v)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> BinaryLowRankLinear:
        return cls(linear.weight, linear.bias, **kwargs)

    def effective_scale(self) -> Tensor:
        """``(r, c/G)`` fp32, storage-rounded; carries a gradient in learnable mode."""
        s = absmean_scale(self.weight, self.group_size) if self.scale is None else self.scale
        return round_scale(s, self.scale_dtype)

    def scaffold_weight(self) -> Tensor:
        """``(r, c)`` fp32 ``sign(W)·s`` with STE gradients."""
        return _BinaryFakeQuant.apply(self.weight, self.effective_scale(), self.group_size, self.scale_dtype)

    def factors(self) -> tuple[Tensor, Tensor]:
        """Int8-rounded ``U: (r, k)``, ``V: (k, c)`` fp32 with STE gradients."""
        return int8_fake_quant(self.lr_U), int8_fake_quant(self.lr_V)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.factors()
        return _lowrank_forward(x, self.scaffold_weight(), u, v, self.bias)

    @torch.no_grad()
    def quantized_state(self) -> dict[str, Tensor]:
        """What the packed module stores: signs, scale, and int8 factors with their per-row scales."""
        signs, scale = binary_codes_and_scales(self.weight, self.group_size, self.effective_scale(),
                                               scale_dtype=self.scale_dtype)
        uq, us = int8_factor(self.lr_U)
        vq, vs = int8_factor(self.lr_V)
        return {"signs": signs, "scale": scale, "u_q": uq, "u_scale": us, "v_q": vq, "v_scale": vs}

    def extra_repr(self) -> str:
        return (f"shape={tuple(self.weight.shape)}, group_size={self.group_size}, rank={self.rank}, "
                f"scale_mode={self.scale_mode}")


def _lowrank_forward(x: Tensor, w: Tensor, u: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """The one DF-SSM projection expression, shared by the QAT and the packed module (same ops, same order).

    Operands are made contiguous: a GEMM may round differently for a transposed memory layout, and a freshly
    trained factor and one loaded from disk need not share a layout."""
    b = None if bias is None else bias.to(x.dtype)
    y = F.linear(x, w.to(x.dtype).contiguous(), b)
    if u.shape[1]:
        y = y + F.linear(F.linear(x, v.to(x.dtype).contiguous()), u.to(x.dtype).contiguous())
    return y


class PackedBinaryLowRankLinear(nn.Module):
    """Deployed ``BinaryLowRankLinear``: buffers ``signs (r, c) int8``, ``scale (r, c/G) fp16``, ``u_q (r, k) int8``,
    ``u_scale (r,)``, ``v_q (k, c) int8``, ``v_scale (k,)``. Dequantizes on each call (reference module; the CPU
    loader caches the dense scaffold, see ``dfssm_io``)."""

    def __init__(self, signs: Tensor, scale: Tensor, u_q: Tensor, u_scale: Tensor, v_q: Tensor, v_scale: Tensor,
                 group_size: int, bias: Tensor | None = None):
        super().__init__()
        for name, t in (("signs", signs), ("scale", scale), ("u_q", u_q), ("u_scale", u_scale), ("v_q", v_q),
                        ("v_scale", v_scale)):
            self.register_buffer(name, t)
        self.group_size = group_size
        self.out_features, self.in_features = signs.shape
        self.rank = u_q.shape[1]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_qat(cls, m: BinaryLowRankLinear) -> PackedBinaryLowRankLinear:
        return cls(**m.quantized_state(), group_size=m.group_size, bias=m.bias)

    def scaffold_weight(self) -> Tensor:
        return dequantize_binary(self.signs, self.scale, self.group_size)

    def factors(self) -> tuple[Tensor, Tensor]:
        return dequantize_int8(self.u_q, self.u_scale), dequantize_int8(self.v_q, self.v_scale)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.factors()
        return _lowrank_forward(x, self.scaffold_weight(), u, v, self.bias)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.signs.shape)}, group_size={self.group_size}, rank={self.rank}"


# ---------------------------------------------------------------------------------------------------------------
# Configured module swap: prepare -> train -> convert
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DFSSMConfig:
    """DF-SSM configuration (JSON-serialisable: :func:`dfssm_config_dict`).

    group_size: scaffold weights per scale along the input dim (128 = Q1_0, exportable to GGUF as is).
    rank: rank ``k`` of the int8 correction ``U·V`` per projection (0 = scaffold only).
    scale_mode: "fixed" (mean|w| recomputed each forward, Q1_0's rule) or "learnable" (exact gradient ``sign(w)``).
    init: "svd" (factors from the SVD of the scaffold's error) or "zeros" (``U = 0``).
    include / exclude: regexes searched in qualified ``nn.Linear`` names.
    """

    group_size: int = Q1_0_GROUP
    rank: int = 32
    scale_mode: str = "fixed"
    scale_dtype: str = "float16"
    init: str = "svd"
    include: tuple[str, ...] = (r"\.in_proj$", r"\.out_proj$")
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        if not isinstance(self.group_size, int) or self.group_size <= 0 or self.group_size % 8:
            raise ConfigError(f"DFSSMConfig.group_size={self.group_size!r}: use a positive multiple of 8 "
                              "(128 = llama.cpp Q1_0)")
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError(f"DFSSMConfig.rank={self.rank!r}: use an integer >= 0")
        if self.scale_mode not in SCALE_MODES:
            raise ConfigError(f"DFSSMConfig.scale_mode={self.scale_mode!r}: use one of {list(SCALE_MODES)}")
        if self.scale_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"DFSSMConfig.scale_dtype={self.scale_dtype!r}: use float16, bfloat16 or float32")
        if self.init not in ("svd", "zeros"):
            raise ConfigError(f"DFSSMConfig.init={self.init!r}: use 'svd' or 'zeros'")
        for p in self.include + self.exclude:
            try:
                re.compile(p)
            except re.error as err:
                raise ConfigError(f"DFSSMConfig pattern {p!r} is not a valid regex: {err}") from None

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return getattr(torch, self.scale_dtype)


def dfssm_config_dict(cfg: DFSSMConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def dfssm_quantize_(model: nn.Module, cfg: DFSSMConfig,
                    filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Swap the selected ``nn.Linear`` modules for :class:`BinaryLowRankLinear`, in place (prepare). Returns model.

    Every candidate is checked first (ConfigError names the module whose width the group size does not divide).
    """
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and any(re.search(p, n) for p in cfg.include)
               and not any(re.search(p, n) for p in cfg.exclude) and (filter_fn is None or filter_fn(m, n))]
    if not targets:
        raise ConfigError(f"dfssm_quantize_: no nn.Linear matches include={list(cfg.include)} "
                          f"exclude={list(cfg.exclude)}")
    for n, m in targets:
        if m.in_features % cfg.group_size:
            raise ConfigError(f"{n}: in_features={m.in_features} is not divisible by DFSSMConfig.group_size="
                              f"{cfg.group_size}; pick a divisor or exclude the module")
    shared = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False):
            shared.setdefault(id(p), []).append(f"{mod_name}.{p_name}")
    for n, m in targets:
        if len(shared.get(id(m.weight), [])) > 1:
            warnings.warn(f"dfssm_quantize_: untying {n}.weight: the DF-SSM module trains its own copy", stacklevel=2)
            m.weight = nn.Parameter(m.weight.detach().clone())
        _set_submodule(model, n, BinaryLowRankLinear.from_linear(
            m, group_size=cfg.group_size, rank=cfg.rank, scale_mode=cfg.scale_mode,
            scale_dtype=cfg.torch_scale_dtype, init=cfg.init))
    return model


def dfssm_modules(model: nn.Module) -> Iterator[tuple[str, BinaryLowRankLinear]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, BinaryLowRankLinear))


def dfssm_convert(model: nn.Module) -> nn.Module:
    """Replace every :class:`BinaryLowRankLinear` by its :class:`PackedBinaryLowRankLinear`, in place (bit-exact)."""
    for n, m in list(dfssm_modules(model)):
        _set_submodule(model, n, PackedBinaryLowRankLinear.from_qat(m))
    return model


def dfssm_param_groups(model: nn.Module, lr: float, weight_decay: float, *, factor_lr: float | None = None,
                       scale_lr: float | None = None) -> list[dict]:
    """Optimizer groups: other trainable parameters (decayed), the low-rank factors and the learnable scales (no
    decay: decay on ``U, V`` pulls the correction to zero and on a scale toward collapse)."""
    factors, scales = [], []
    for _, m in dfssm_modules(model):
        factors += [m.lr_U, m.lr_V]
        if isinstance(m.scale, nn.Parameter):
            scales.append(m.scale)
    special = {id(p) for p in factors + scales}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [{"name": "weights", "params": others, "lr": lr, "weight_decay": weight_decay},
              {"name": "dfssm_factors", "params": factors, "lr": factor_lr or lr, "weight_decay": 0.0}]
    if scales:
        groups.append({"name": "dfssm_scales", "params": scales, "lr": scale_lr or lr, "weight_decay": 0.0})
    return groups


# ---------------------------------------------------------------------------------------------------------------
# Size arithmetic (from shapes; meta-device models work)
# ---------------------------------------------------------------------------------------------------------------

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
EMBEDDINGS = ("float16", "float32", "int8", "q1_0", "none")


def dfssm_size_report(model: nn.Module, *, rank: int | None = None, group_size: int = Q1_0_GROUP,
                      include: tuple[str, ...] = (r"\.in_proj$", r"\.out_proj$"), embedding: str = "int8",
                      rest_dtype: str = "float16") -> dict:
    """Bytes of ``model`` stored as DF-SSM (MB = 1e6 bytes, MiB = 2**20).

    Each selected projection ``(r, c)`` (plain ``nn.Linear`` matched by ``include``, or an existing DF-SSM module
    with its own rank unless ``rank`` overrides it) costs::

        scaffold  r·c/8           sign bits
        scales    2·r·c/G         fp16 per group
        factors   k·(r + c)       int8 U (r, k) and V (k, c)
                  + 2·(r + k)     fp16 per-row scales of U and of V (none when k = 0)

    The embedding is counted once (a tied head is free): ``float16``/``float32``; ``int8`` = 1 byte per weight + an
    fp16 scale per row; ``q1_0`` = 1.125 bits per weight (as if binarized too); ``none`` = not counted (the
    "non-embedding" size). An untied head is counted like the embedding. ``rest`` (conv1d, norms, dt_bias, A_log,
    D) is counted in ``rest_dtype``.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding={embedding!r}: use one of {EMBEDDINGS}")
    parts = dict.fromkeys(("scaffold", "scales", "factors", "embedding", "head", "rest"), 0)
    counted: set[str] = set()
    n_proj_weights = 0
    for name, m in model.named_modules():
        dfssm = isinstance(m, (BinaryLowRankLinear, PackedBinaryLowRankLinear))
        if not dfssm and not (isinstance(m, nn.Linear) and name != "lm_head"
                              and any(re.search(p, name) for p in include)):
            continue
        r, c = m.out_features, m.in_features
        g = m.group_size if dfssm else group_size
        k = rank if rank is not None else (m.rank if dfssm else 0)
        parts["scaffold"] += r * c // 8
        parts["scales"] += 2 * r * (c // g)
        parts["factors"] += k * (r + c) + (2 * (r + k) if k else 0)
        n_proj_weights += r * c
        counted.add(name)
        if getattr(m, "bias", None) is not None:
            parts["rest"] += m.bias.numel() * _BYTES[rest_dtype]

    def emb_bytes(rows: int, cols: int) -> int:
        if embedding == "none":
            return 0
        if embedding == "int8":
            return rows * cols + 2 * rows
        if embedding == "q1_0":
            return rows * cols // 8 + 2 * rows * (cols // Q1_0_GROUP)
        return rows * cols * _BYTES[embedding]

    emb_w = model.backbone.embedding.weight
    parts["embedding"] = emb_bytes(*emb_w.shape)
    head_w = getattr(model.lm_head, "weight", None)
    tied = head_w is emb_w or bool(getattr(model.config, "tie_embeddings", False))
    if not tied and head_w is not None:
        parts["head"] = emb_bytes(*head_w.shape)
    counted |= {"backbone.embedding", "lm_head"}
    seen: set[int] = set()
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if pname.rsplit(".", 1)[0] in counted or id(t) in seen:
            continue
        seen.add(id(t))
        parts["rest"] += t.numel() * _BYTES[rest_dtype]
    total = sum(parts.values())
    return {"rank": rank, "group_size": group_size, "embedding": embedding, "rest_dtype": rest_dtype,
            "tied_head": tied, "projection_weights": n_proj_weights, "parts_bytes": parts,
            "bits_per_projection_weight": 8 * (parts["scaffold"] + parts["scales"] + parts["factors"])
            / max(1, n_proj_weights),
            "total_bytes": total, "total_mb": total / 1e6, "total_mib": total / 2**20}


def max_rank_within(model: nn.Module, budget_bytes: float, **kwargs) -> int | None:
    """Largest rank ``k`` with ``dfssm_size_report(model, rank=k, **kwargs)["total_bytes"] <= budget_bytes``,
    or None when even ``k = 0`` exceeds the budget. Size grows strictly with ``k``: bisection."""
    def size(k: int) -> int:
        return dfssm_size_report(model, rank=k, **kwargs)["total_bytes"]

    if size(0) > budget_bytes:
        return None
    lo, hi = 0, 1
    while size(hi) <= budget_bytes:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget_bytes else (lo, mid)
    return lo
