"""DF-SSM checkpoints: the packed directory format (``quant/packed_io.py``) with ``method: "dfssm"``.

Same directory layout, same ``quantization_config`` envelope (format ``ssmquant-packed``, version 1), one more
method. For a DF-SSM projection P (e.g. ``backbone.layers.0.mixer.in_proj``, weight ``(r, c)``, rank ``k``)::

    P.weight_signs   uint8 (r, c/8)     1 bit per weight, LSB first, bit set = +1 (``binary_lowrank.pack_signs``)
    P.weight_scale   fp16  (r, c/G)     mean|w| per group (Q1_0's d when G = 128)
    P.lr_U_int8      int8  (r, k)       low-rank factor U, codes in [-127, 127]
    P.lr_U_scale     fp16  (r,)         its per-row scales
    P.lr_V_int8      int8  (k, c)       low-rank factor V
    P.lr_V_scale     fp16  (k,)
    P.bias           as trained (if any)

    "quantization_config": {"quant_method": "ssmquant", "format": "ssmquant-packed", "format_version": 1,
        "method": "dfssm", "bits": 1, "packing": "1bit", "values": [-1, 1], "factor_dtype": "int8",
        "group_size": 128, "rank": 32, "scale_dtype": "float16",
        "modules": {"backbone.layers.0.mixer.in_proj": {"group_size": 128, "rank": 32}, ...},
        "quant_config": {...}}

Everything else (embedding, head, conv1d, norms, SSM parameters) is stored dense under HF names, as in the ternary
format. ``ssmquant.load_model`` reaches :func:`load_dfssm_model` through ``packed_io.load_packed_model``, which
hands ``method == "dfssm"`` over here. Loading checks every shape and dtype against the config and names the tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io import names
from ..errors import CheckpointError, ConfigError
from ..model.config import Mamba2Config
from .binary_lowrank import PackedBinaryLowRankLinear, pack_signs, unpack_signs
from .packed_io import (
    FORMAT,
    FORMAT_VERSION,
    PackedMamba2LMHeadModel,
    read_named_tensors,
    _set_submodule,
    write_packed_dir,
)

METHOD = "dfssm"
_FP32_ALWAYS = ("A_log", "D", "dt_bias")


def save_dfssm_model(model: nn.Module, directory: str | os.PathLike, *, tokenizer=None,
                     quant_info: dict | None = None) -> Path:
    """Write a converted DF-SSM model (``PackedBinaryLowRankLinear`` modules, see ``dfssm_convert``) to a directory
    that ``ssmquant.load_model`` reads. ``quant_info``: how it was made (e.g. ``dfssm_config_dict(cfg)``)."""
    cfg: Mamba2Config = model.config
    mods = {n: m for n, m in model.named_modules() if isinstance(m, PackedBinaryLowRankLinear)}
    if not mods:
        raise ConfigError("save_dfssm_model: no PackedBinaryLowRankLinear modules; run dfssm_quantize_ (train) and "
                          "dfssm_convert(model) first")
    if "lm_head" in mods and cfg.tie_embeddings:
        raise ConfigError("save_dfssm_model: a DF-SSM head cannot be tied; set tie_embeddings=False")
    out: dict[str, Tensor] = {}
    modules: dict[str, dict] = {}
    for n, m in mods.items():
        out[f"{n}.weight_signs"] = pack_signs(m.signs.cpu())
        out[f"{n}.weight_scale"] = m.scale.detach().cpu().contiguous()
        out[f"{n}.lr_U_int8"] = m.u_q.detach().cpu().contiguous()
        out[f"{n}.lr_U_scale"] = m.u_scale.detach().cpu().contiguous()
        out[f"{n}.lr_V_int8"] = m.v_q.detach().cpu().contiguous()
        out[f"{n}.lr_V_scale"] = m.v_scale.detach().cpu().contiguous()
        if m.bias is not None:
            out[f"{n}.bias"] = m.bias.detach().cpu().contiguous()
        modules[n] = {"group_size": m.group_size, "rank": m.rank}
    for k, v in model.state_dict().items():
        if k.rsplit(".", 1)[0] in mods or (cfg.tie_embeddings and k == "lm_head.weight"):
            continue
        out[k] = v.detach().cpu().contiguous()
    out = {names.to_hf_name(k): v for k, v in out.items()}
    gs = sorted({m.group_size for m in mods.values()})
    ranks = sorted({m.rank for m in mods.values()})
    qc = {"quant_method": "ssmquant", "format": FORMAT, "format_version": FORMAT_VERSION, "method": METHOD,
          "bits": 1, "packing": "1bit", "values": [-1, 1], "factor_dtype": "int8",
          "group_size": gs[0] if len(gs) == 1 else gs, "rank": ranks[0] if len(ranks) == 1 else ranks,
          "scale_dtype": str(next(iter(mods.values())).scale.dtype).replace("torch.", ""),
          "modules": modules, "quant_config": quant_info or {}}
    return write_packed_dir(directory, cfg, out, qc, tokenizer=tokenizer, dtype=model.backbone.norm_f.weight.dtype)


def load_dfssm_model(ckpt, cfg_dict: dict, *, device=None, dtype=None,
                     check_finite: bool = True) -> PackedMamba2LMHeadModel:
    """Load a DF-SSM directory (``ckpt``: ``io.checkpoints.ResolvedCheckpoint``; ``cfg_dict``: its config.json)."""
    from ..io.checkpoints import _parse_dtype

    source = str(ckpt.config_path)
    qc = cfg_dict["quantization_config"]
    if qc.get("format") != FORMAT or qc.get("format_version") != FORMAT_VERSION or qc.get("method") != METHOD:
        raise ConfigError(f"{source}: not an ssmquant DF-SSM checkpoint (format {qc.get('format')!r}, version "
                          f"{qc.get('format_version')!r}, method {qc.get('method')!r})")
    if not isinstance(qc.get("modules"), dict) or not qc["modules"]:
        raise ConfigError(f"{source}: quantization_config.modules must name the DF-SSM modules")
    cfg = Mamba2Config.from_dict(cfg_dict, source=source)
    dtype = _parse_dtype(dtype)
    with torch.device("meta"):
        model = PackedMamba2LMHeadModel(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got, where = read_named_tensors(ckpt)

    def take(name: str, shape: tuple, dtypes: tuple) -> Tensor:
        if name not in got:
            raise CheckpointError(f"{ckpt.directory}: missing tensor {names.to_hf_name(name)}")
        t = got.pop(name)
        if tuple(t.shape) != tuple(shape) or (t.dtype not in dtypes if dtypes else not t.is_floating_point()):
            want = "/".join(str(d).replace("torch.", "") for d in dtypes) if dtypes else "float"
            raise CheckpointError(f"{where[name]}: tensor {name} is {t.dtype} {list(t.shape)}; the config implies "
                                  f"{want} {list(shape)}")
        return t

    for n, spec in qc["modules"].items():
        if f"{n}.weight" not in expected:
            raise CheckpointError(f"{source}: quantization_config.modules names {n!r}, not a Linear of this config")
        rows, cols = expected.pop(f"{n}.weight")
        g, k = (spec.get("group_size"), spec.get("rank")) if isinstance(spec, dict) else (None, None)
        if not isinstance(g, int) or g <= 0 or cols % g or cols % 8 or not isinstance(k, int) or k < 0:
            raise CheckpointError(f"{source}: quantization_config.modules[{n!r}] = {spec!r}: needs an int group_size "
                                  f"dividing {cols} and an int rank >= 0")
        signs = unpack_signs(take(f"{n}.weight_signs", (rows, cols // 8), (torch.uint8,)), cols)
        scale = take(f"{n}.weight_scale", (rows, cols // g), ())
        u_q = take(f"{n}.lr_U_int8", (rows, k), (torch.int8,))
        u_s = take(f"{n}.lr_U_scale", (rows,), ())
        v_q = take(f"{n}.lr_V_int8", (k, cols), (torch.int8,))
        v_s = take(f"{n}.lr_V_scale", (k,), ())
        for label, s in (("weight_scale", scale), ("lr_U_scale", u_s), ("lr_V_scale", v_s)):
            if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
                raise CheckpointError(f"{source}: tensor {n}.{label} holds non-finite or non-positive scales")
        for label, q in (("lr_U_int8", u_q), ("lr_V_int8", v_q)):
            if bool((q == -128).any()):
                raise CheckpointError(f"{source}: tensor {n}.{label} holds -128 (codes lie in [-127, 127])")
        bias = got.pop(f"{n}.bias", None)
        _set_submodule(model, n, PackedBinaryLowRankLinear(signs, scale, u_q, u_s, v_q, v_s, g, bias))

    tied = cfg.tie_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    sd: dict[str, Tensor] = {}
    for k, shape in expected.items():
        t = take(k, shape, ())
        if check_finite and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where.get(k, ckpt.directory)}: tensor {names.to_hf_name(k)} holds NaN or Inf")
        want = torch.float32 if k.rsplit(".", 1)[-1] in _FP32_ALWAYS else (dtype or t.dtype)
        sd[k] = t if t.dtype == want else t.to(want)
    if got:
        raise CheckpointError(f"{ckpt.directory}: unexpected tensor(s) {sorted(got)[:3]} for this DF-SSM config")
    model.load_state_dict(sd, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.backbone.embedding.weight
    model.quantization_config = qc
    if device is not None:
        model = model.to(device)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# GGUF Q1_0 (llama.cpp) for the scaffold
# ---------------------------------------------------------------------------------------------------------------

def write_q1_0_gguf(path: str | os.PathLike, tensors: dict[str, tuple[Tensor, Tensor]], *,
                    arch: str = "mamba2") -> Path:
    """Write scaffolds as GGUF ``Q1_0`` tensors (type 41: 128 weights per 18-byte block) and read them back.

    ``tensors``: GGUF name -> ``(signs (r, c) int8, scale (r, c/128) fp16)``. Only the tensors are written (no
    model metadata): ``export/gguf.py`` owns full model files and can call ``binary_lowrank.q1_0_blocks`` per
    projection. The file is verified with :func:`read_q1_0_gguf` before returning.
    """
    import gguf

    from .binary_lowrank import q1_0_blocks

    p = Path(path)
    w = gguf.GGUFWriter(str(p), arch)
    for name, (signs, scale) in tensors.items():
        blocks = q1_0_blocks(signs, scale).numpy()
        w.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q1_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = read_q1_0_gguf(p)
    for name, (signs, scale) in tensors.items():
        if not (torch.equal(back[name][0], signs.to(torch.int8)) and torch.equal(back[name][1], scale.half())):
            raise CheckpointError(f"{p}: tensor {name} does not read back exactly")
    return p


def read_q1_0_gguf(path: str | os.PathLike) -> dict[str, tuple[Tensor, Tensor]]:
    """``Q1_0`` tensors of a GGUF file -> ``{name: (signs (r, c) int8, scale (r, c/128) fp16)}``."""
    import gguf
    import numpy as np

    from .binary_lowrank import Q1_0_GROUP, q1_0_unblocks

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.Q1_0:
            continue
        cols, rows = int(t.shape[0]), int(np.prod(t.shape[1:]))       # GGUF shapes are (ne0 = cols, ne1 = rows)
        blocks = torch.from_numpy(np.array(t.data, dtype=np.uint8).reshape(rows, cols // Q1_0_GROUP * 18))
        out[t.name] = q1_0_unblocks(blocks, cols)
    return out
