"""Quantization as a configured module swap: ``quantize_`` (prepare for QAT) → train → ``convert`` (pack).

How this works
--------------
Shaped like torchao's ``quantize_(model, config, filter_fn)`` and its QAT ``prepare``/``convert`` pair:

    config = QuantConfig(group_size=256, scale_mode="learnable")
    quantize_(model, config)                 # nn.Linear -> TernaryLinear (in_proj, out_proj by default)
    opt = torch.optim.AdamW(quant_param_groups(model, lr=1e-4, weight_decay=0.1, scale_lr=1e-3))
    ... train ...
    convert(model)                           # TernaryLinear -> PackedTernaryLinear (int8 codes + fp16 scales)

A module is swapped when it is an ``nn.Linear`` or ``nn.Embedding``, its qualified name matches one of
``config.include`` (``re.search``), none of ``config.exclude``, and ``filter_fn(module, name)`` (if given) is true.
Every candidate is checked before anything is swapped, so a bad group size leaves the model untouched.

Tied weights: a swapped module whose weight ``Parameter`` is shared with another module (``lm_head.weight is
backbone.embedding.weight`` in a tied Mamba-2) gets its own fp32 copy and a warning: a quantized head and a
high-precision (or separately quantized) embedding cannot share one latent tensor without one of them silently
seeing the other's quantization. After untying, the checkpoint no longer satisfies ``tie_embeddings``.

Embeddings are supported (``TernaryEmbedding``, groups along ``d_model``); include them with a pattern such as
``r"embedding$"``. Other module types are never swapped, whatever the patterns say.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import (
    SCALE_MODES,
    PackedTernaryEmbedding,
    PackedTernaryLinear,
    TernaryEmbedding,
    TernaryLinear,
    _TernaryWeight,
)
from .ternary import SCALE_FLOOR

GROUP_SIZES = (32, 64, 128, 256)
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class QuantConfig:
    """Ternary W1.58A16 QAT configuration (JSON-serialisable: ``dataclasses.asdict``).

    group_size: weights per scale along the input dimension, one of 32/64/128/256, or "row" (one scale per output
        row, ``G = in_features``). 256 matches llama.cpp TQ1_0/TQ2_0 blocks, so it exports without requantizing.
    scale_mode: "fixed" (absmean recomputed each forward), "learnable" (LSQ), "ema" (moving average of absmean).
    scale_dtype: storage dtype of the scales, which the training forward also rounds to.
    include / exclude: regexes searched in qualified module names.
    ema_decay: EMA factor per training forward (scale_mode="ema").
    lsq_grad_scaling: multiply the scale gradient by ``1/sqrt(G)`` (LSQ's ``1/sqrt(N*Qp)``, Qp = 1).
    scale_floor: lower bound of every scale (all-zero groups); keep it representable in ``scale_dtype``.
    """

    group_size: int | str = 256
    scale_mode: str = "fixed"
    scale_dtype: str = "float16"
    include: tuple[str, ...] = (r"\.in_proj$", r"\.out_proj$")
    exclude: tuple[str, ...] = ()
    ema_decay: float = 0.99
    lsq_grad_scaling: bool = True
    scale_floor: float = SCALE_FLOOR

    def __post_init__(self):
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        if self.group_size != "row" and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"QuantConfig.group_size={self.group_size!r}: use one of {list(GROUP_SIZES)} or 'row'")
        if self.scale_mode not in SCALE_MODES:
            raise ConfigError(f"QuantConfig.scale_mode={self.scale_mode!r}: use one of {list(SCALE_MODES)}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(f"QuantConfig.scale_dtype={self.scale_dtype!r}: use one of {list(SCALE_DTYPES)}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"QuantConfig.ema_decay={self.ema_decay}: must lie strictly between 0 and 1")
        if not self.include:
            raise ConfigError("QuantConfig.include is empty: give at least one module-name regex")
        for pattern in self.include + self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"QuantConfig include/exclude pattern {pattern!r} is not a valid regex: {err}")
        dtype = SCALE_DTYPES[self.scale_dtype]
        if not 0.0 < self.scale_floor or torch.tensor(self.scale_floor).to(dtype).item() != self.scale_floor:
            raise ConfigError(f"QuantConfig.scale_floor={self.scale_floor}: must be positive and exactly "
                              f"representable in {self.scale_dtype} (e.g. 2**-14)")

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    def resolve_group_size(self, name: str, in_features: int) -> int:
        """The group size for one module, or a ConfigError that names the module and the sizes that would work."""
        if self.group_size == "row":
            return in_features
        if in_features % self.group_size:
            valid = [g for g in GROUP_SIZES if in_features % g == 0]
            hint = f"one of {valid} or 'row'" if valid else "'row' (no size in 32/64/128/256 divides it)"
            raise ConfigError(f"{name}: in_features={in_features} is not divisible by QuantConfig.group_size="
                              f"{self.group_size}; use group_size {hint}, or exclude the module")
        return self.group_size


def _selected(name: str, module: nn.Module, config: QuantConfig, filter_fn: FilterFn | None) -> bool:
    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    if not any(re.search(p, name) for p in config.include) or any(re.search(p, name) for p in config.exclude):
        return False
    return filter_fn is None or bool(filter_fn(module, name))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every ``module.param`` name holding it directly (more than one name = tied)."""
    owners: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return owners


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Swap the selected ``nn.Linear`` / ``nn.Embedding`` modules of ``model`` for ternary QAT modules, in place.

    Returns ``model``. Raises ConfigError if no module is selected or a group size does not fit a module.
    """
    targets = [(n, m) for n, m in model.named_modules() if _selected(n, m, config, filter_fn)]
    if not targets:
        already = sum(isinstance(m, _TernaryWeight) for m in model.modules())
        linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))][:6]
        raise ConfigError(f"quantize_: no module matches include={list(config.include)} exclude="
                          f"{list(config.exclude)}" + (f" ({already} modules are already ternary)" if already else
                                                       f"; Linear/Embedding modules look like {linears}"))
    group_sizes = {n: config.resolve_group_size(n, m.weight.shape[1]) for n, m in targets}  # all checked first
    for name, m in targets:
        if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.sparse or m.scale_grad_by_freq):
            raise ConfigError(f"{name}: only plain nn.Embedding can be ternary (no max_norm, sparse, "
                              f"scale_grad_by_freq); exclude it from QuantConfig.include")
    owners = _weight_owners(model)
    kwargs = dict(scale_mode=config.scale_mode, scale_dtype=config.torch_scale_dtype, ema_decay=config.ema_decay,
                  lsq_grad_scaling=config.lsq_grad_scaling, scale_floor=config.scale_floor)
    for name, module in targets:
        sharers = [o for o in owners.get(id(module.weight), []) if o != f"{name}.weight"]
        if sharers:
            warnings.warn(f"quantize_: untying {name}.weight from {sharers}: the ternary module trains its own copy",
                          stacklevel=2)
            module.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=module.weight.requires_grad)
        if isinstance(module, nn.Linear):
            new = TernaryLinear.from_linear(module, group_sizes[name], **kwargs)
        else:
            new = TernaryEmbedding.from_embedding(module, group_sizes[name], **kwargs)
        _set_submodule(model, name, new)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replace every ternary QAT module by its packed counterpart (int8 codes + stored scales), in place.

    The packed weights equal ``fake_quant_weight()`` bit for bit (EMA state is read, not updated). Returns ``model``.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, TernaryLinear):
            _set_submodule(model, name, PackedTernaryLinear.from_ternary(module))
        elif isinstance(module, TernaryEmbedding):
            _set_submodule(model, name, PackedTernaryEmbedding.from_ternary(module))
    return model


def ternary_modules(model: nn.Module) -> Iterator[tuple[str, _TernaryWeight]]:
    """``(name, module)`` of every ternary QAT module (``TernaryLinear`` and ``TernaryEmbedding``)."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, _TernaryWeight))


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Learnable scale parameters, whatever their current ``requires_grad`` (the freeze policy toggles it)."""
    return [m.scale for _, m in ternary_modules(model) if isinstance(m.scale, nn.Parameter)]


def quant_param_groups(
    model: nn.Module, lr: float, weight_decay: float, scale_lr: float | None = None
) -> list[dict]:
    """Optimizer parameter groups: everything trainable, then the learnable scales with their own LR and no decay.

    Scales must not decay: weight decay pulls a step size toward 0, which is exactly the all-zero collapse. Further
    splits (norms and biases without decay) are the trainer's choice; it can split the first group again.
    """
    scales = scale_parameters(model)
    scale_ids = {id(p) for p in scales}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in scale_ids]
    groups = [{"name": "weights", "params": others, "lr": lr, "weight_decay": weight_decay}]
    if scales:
        groups.append({"name": "ternary_scales", "params": scales, "lr": lr if scale_lr is None else scale_lr,
                       "weight_decay": 0.0})
    return groups


@torch.no_grad()
def find_bypassed_modules(model: nn.Module, run: Callable[[], Tensor], factor: float = 1.5) -> list[str]:
    """Names of ternary modules whose scale does not reach ``run()``'s output: the fused-kernel bypass check.

    Each module's ``effective_scale`` is multiplied by ``factor`` in turn (an instance attribute shadows the
    method, deleted afterwards); a module that is skipped, or whose raw ``.weight`` is read instead of its forward,
    leaves the output unchanged. Run it with the model in eval mode so EMA state is not updated.
    """
    reference = run()
    bypassed = []
    for name, module in ternary_modules(model):
        original = module.effective_scale
        module.effective_scale = lambda original=original: original() * factor
        try:
            if torch.equal(run(), reference):
                bypassed.append(name)
        finally:
            del module.effective_scale
    return bypassed


def config_dict(config: QuantConfig) -> dict:
    """The resolved config as JSON-ready data, for writing next to a run's outputs."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
