"""Ternary (W1.58A16) quantization-aware training: configured module swap, packing, zero-ratio monitor.

    from ssmquant.quant import QuantConfig, quantize_, convert
    quantize_(model, QuantConfig(group_size=256, scale_mode="learnable"))   # prepare
    ...                                                                      # train (distill)
    convert(model)                                                           # int8 codes + fp16 scales

Files: ``ternary.py`` (the math: codes, scales, STE/LSQ fake quant and its reference), ``layers.py`` (QAT and packed
modules), ``api.py`` (config, ``quantize_``, ``convert``, optimizer groups, bypass check), ``monitor.py``
(collapse detection and guards).
"""

from .api import (
    GROUP_SIZES,
    QuantConfig,
    config_dict,
    convert,
    find_bypassed_modules,
    quant_param_groups,
    quantize_,
    scale_parameters,
    ternary_modules,
)
from .layers import PackedTernaryEmbedding, PackedTernaryLinear, TernaryEmbedding, TernaryLinear
from .monitor import CollapseEvent, MonitorConfig, ZeroRatioMonitor
from .ternary import (
    SCALE_FLOOR,
    absmean_scale,
    dequantize_ternary,
    ternary_codes_and_scales,
    ternary_fake_quant,
    ternary_fake_quant_ref,
)

__all__ = [
    "GROUP_SIZES", "SCALE_FLOOR", "QuantConfig", "quantize_", "convert", "config_dict", "find_bypassed_modules",
    "quant_param_groups", "scale_parameters", "ternary_modules", "TernaryLinear", "TernaryEmbedding",
    "PackedTernaryLinear", "PackedTernaryEmbedding", "MonitorConfig", "ZeroRatioMonitor", "CollapseEvent",
    "absmean_scale", "dequantize_ternary", "ternary_codes_and_scales", "ternary_fake_quant",
    "ternary_fake_quant_ref",
]
