"""Random-weight Mamba-2 models of the published shapes, built directly on the GPU, dense fp16 or ternary.

Speed does not depend on the weights' values, so benchmarks use random weights: mamba-ssm's initialisation
(``Mamba2LMHeadModel.init_weights``) reproduced with device-side random numbers, since drawing 1.3B numbers from a
CPU generator takes longer than the benchmark. Ternary models get their codes and scales from absmean quantization
of those weights (``quant.ternary.ternary_codes_and_scales``), i.e. what ``quantize_`` + ``convert`` would store.
"""

from __future__ import annotations


import torch


@torch.no_grad()
def random_model(preset: str, *, weights: str = "fp16", group_size: int = 128, device: str = "cuda", seed: int = 0,
                 n_layer: int | None = None):
    """A ``Mamba2LMHeadModel`` in fp16 with the shapes of ``state-spaces/mamba2-<preset>`` (``n_layer`` layers
    instead of the preset's, if given: the tests' full-width models).

    weights: "fp16" (dense ``nn.Linear`` projections) or "ternary" (``PackedTernaryLinear`` in_proj / out_proj
    with one fp16 scale per ``group_size`` inputs).
    """
    import dataclasses

    from ..model.config import preset_config
    from ..model.mamba2 import Mamba2LMHeadModel, init_ssm_parameters_

    cfg = preset_config(preset)
    if n_layer is not None:
        cfg = dataclasses.replace(cfg, n_layer=n_layer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Mamba2LMHeadModel(cfg)             # nn.Linear / nn.Conv1d default init, on the device
    model.backbone.embedding.weight.normal_(0, 0.02)
    for layer in model.backbone.layers:
        init_ssm_parameters_(layer.mixer, cfg)
    if weights == "ternary":
        to_ternary_(model, group_size)
    elif weights != "fp16":
        raise ValueError(f"weights={weights!r}: use 'fp16' or 'ternary'")
    return model.half().eval()


@torch.no_grad()
def to_ternary_(model, group_size: int = 128):
    """Swap every mixer's in_proj / out_proj for a ``PackedTernaryLinear`` (absmean codes), in place."""
    from ..quant.layers import PackedTernaryLinear
    from ..quant.ternary import ternary_codes_and_scales

    for layer in model.backbone.layers:
        mix = layer.mixer
        for name in ("in_proj", "out_proj"):
            lin = getattr(mix, name)
            codes, scale = ternary_codes_and_scales(lin.weight, group_size)
            setattr(mix, name, PackedTernaryLinear(codes, scale, group_size))
    return model


@torch.no_grad()
def to_dfssm_(model, rank: int = 12, group_size: int = 128, seed: int = 0):
    """Swap every mixer's in_proj / out_proj for a ``PackedBinaryLowRankLinear`` (DF-SSM), in place.

    The scaffold is the real one (signs and mean-|w| scales of the weight, ``binary_codes_and_scales``); the int8
    factors ``U (r_out, rank)``, ``V (rank, c)`` are random codes with scales that make ``U V`` a small correction
    (about 10% of the scaffold's rms): an SVD of each 1.3B weight would take longer than the benchmark, and speed does
    not depend on the factors' values.
    """
    from ..quant.binary_lowrank import PackedBinaryLowRankLinear, binary_codes_and_scales

    g = torch.Generator(device=model.backbone.embedding.weight.device).manual_seed(seed)
    for layer in model.backbone.layers:
        mix = layer.mixer
        for name in ("in_proj", "out_proj"):
            lin = getattr(mix, name)
            r_out, c = lin.weight.shape
            dev = lin.weight.device
            signs, scale = binary_codes_and_scales(lin.weight, group_size)
            u_q = torch.randint(-127, 128, (r_out, rank), device=dev, generator=g).to(torch.int8)
            v_q = torch.randint(-127, 128, (rank, c), device=dev, generator=g).to(torch.int8)
            # rms of (u_q * su) @ (v_q * sv) ~ 73^2 * su * sv * sqrt(rank); aim at 0.1 * mean scale.
            target = 0.1 * scale.float().mean().item()
            s = (target / (73.0 ** 2 * max(rank, 1) ** 0.5)) ** 0.5
            u_s = torch.full((r_out,), s, device=dev).half()
            v_s = torch.full((rank,), s, device=dev).half()
            setattr(mix, name, PackedBinaryLowRankLinear(signs, scale, u_q, u_s, v_q, v_s, group_size))
    return model
