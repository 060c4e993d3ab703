"""Packed ternary checkpoints: save and load a Hugging Face–style directory with bit-packed codes.

Layout (format version 1; ``docs/formats.md`` is the full spec)::

    config.json         transformers Mamba2Config fields + a "quantization_config" block (below)
    model.safetensors   HF tensor names; for a ternary module P (e.g. backbone.layers.0.mixer.in_proj):
                            P.weight_packed  uint8 (rows, ceil(cols / k))   k = 4 ("2bit") or 5 ("1.6bit")
                            P.weight_scale   fp16  (rows, cols / G)         one scale per group of G inputs
                        for an int8 module (embedding / head):
                            P.weight_int8    int8  (rows, cols)
                            P.weight_scale   fp16  (rows,)
                        everything else as trained (names and dtypes of the dense checkpoint); a tied head is
                        stored once (as the embedding).
    tokenizer.json, tokenizer_config.json, special_tokens_map.json

    "quantization_config": {
        "quant_method": "ssmquant", "format": "ssmquant-packed", "format_version": 1,
        "method": "ternary", "bits": 2 | 1.6, "packing": "2bit" | "1.6bit", "values": [-1, 0, 1],
        "group_size": 256, "scale_dtype": "float16",
        "modules": {"backbone.layers.0.mixer.in_proj": {"group_size": 256}, ...},   # every ternary module
        "int8_modules": ["backbone.embedding", "lm_head"],                           # optional
        "quant_config": {...}                                                        # how it was trained
    }

Loading (:func:`load_packed_model`, reached through ``ssmquant.load_model``) checks every code byte (2-bit value 3
or a trit byte >= 243 is refused), every scale (finite, positive), every shape against the config, and names the
tensor in the error. The dequantized weights equal the trained student's bit for bit.

CPU runtime: "packed on disk, dense in RAM"
-------------------------------------------
Plain torch has no ternary or int8 GEMV on CPU, and dequantizing every projection on every call makes decode slower
than the dense model. So by default (``runtime="dense"``) each ternary module keeps its int8 codes *and* a
dequantized copy of its weight in the compute dtype (fp32 on CPU): forward is an ordinary ``F.linear`` and runs at
dense speed, at the cost of ``codes (1 B) + dense (4 B fp32 / 2 B fp16)`` per weight in RAM — 25% more than the
fp32 dense model, while the file is ~10x smaller. ``runtime="packed"`` keeps only the codes (1 B per weight) and
dequantizes on every call: least RAM, slowest. Both give identical logits. A real low-bit CPU kernel is llama.cpp's
job (TQ1_0 / TQ2_0 via ``ssmquant export --format gguf``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..io import names
from ..model.config import Mamba2Config
from ..model.mamba2 import Mamba2LMHeadModel
from .int8 import Int8Embedding, Int8Linear, _Int8Weight
from .layers import PackedTernaryEmbedding, PackedTernaryLinear, _PackedTernary
from .packing import BITS_PER_CODE, CODES_PER_BYTE, pack, packed_cols, unpack

FORMAT = "ssmquant-packed"
FORMAT_VERSION = 1
RUNTIMES = ("dense", "packed")
_FP32_ALWAYS = ("A_log", "D", "dt_bias")  # precision-sensitive SSM parameters stay fp32 whatever the model dtype


class DenseCachedTernaryLinear(PackedTernaryLinear):
    """``PackedTernaryLinear`` that also holds its dequantized weight in the compute dtype (CPU fast path).

    ``weight_cache`` is a non-persistent buffer: it follows ``.to()`` but is never saved. Forward equals
    ``PackedTernaryLinear.forward`` bit for bit (same dequantized values, same cast, same ``F.linear``).
    """

    def __init__(self, codes: Tensor, scale: Tensor, group_size: int, bias: Tensor | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__(codes, scale, group_size, bias)
        self.register_buffer("weight_cache", self.weight_dequantized().to(dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        w = self.weight_cache
        return F.linear(x, w if w.dtype == x.dtype else w.to(x.dtype), bias)


class PackedMamba2LMHeadModel(Mamba2LMHeadModel):
    """A Mamba-2 LM loaded from a packed directory: same forward, plus its ``quantization_config`` and sizes."""

    quantization_config: dict

    def size_report(self, **overrides) -> dict:
        from .size import size_report

        return size_report(self, **overrides)


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------

def save_packed_model(model: nn.Module, directory: str | os.PathLike, *, tokenizer=None, packing: str = "2bit",
                      quant_info: dict | None = None) -> Path:
    """Write a converted model (``PackedTernaryLinear`` modules, optional int8 embedding/head) to ``directory``.

    ``quant_info``: JSON data describing how the model was quantized (e.g. ``config_dict(QuantConfig)``), stored as
    ``quantization_config.quant_config``. Returns the directory.
    """


    if packing not in CODES_PER_BYTE:
        raise ConfigError(f"packing={packing!r}: use one of {list(CODES_PER_BYTE)}")
    cfg: Mamba2Config = model.config
    ternary = {n: m for n, m in model.named_modules() if isinstance(m, _PackedTernary)}
    if not ternary:
        raise ConfigError("save_packed_model: the model has no packed ternary modules; run quantize_ (train) and "
                          "convert(model) first, or save a dense model with ssmquant.save_model")
    int8 = {n: m for n, m in model.named_modules() if isinstance(m, _Int8Weight)}
    tied = cfg.tie_embeddings
    if tied and ("lm_head" in ternary or "backbone.embedding" in ternary):
        raise ConfigError("save_packed_model: a ternary embedding or head cannot be tied; set tie_embeddings=False")
    if tied and ("lm_head" in int8) != ("backbone.embedding" in int8):
        raise ConfigError("save_packed_model: tied embedding and head must both be int8 or both not")
    if tied and "lm_head" in int8 and not (torch.equal(int8["lm_head"].qweight, int8["backbone.embedding"].qweight)
                                            and torch.equal(int8["lm_head"].scale, int8["backbone.embedding"].scale)):
        raise ConfigError("save_packed_model: int8 head differs from the int8 embedding but tie_embeddings=True")

    out: dict[str, Tensor] = {}
    modules: dict[str, dict] = {}
    for n, m in ternary.items():
        r, c = m.codes.shape
        out[f"{n}.weight_packed"] = pack(m.codes, packing)
        out[f"{n}.weight_scale"] = m.scale.detach().cpu().contiguous()
        if getattr(m, "bias", None) is not None:
            out[f"{n}.bias"] = m.bias.detach().cpu().contiguous()
        modules[n] = {"group_size": m.group_size}
    for n, m in int8.items():
        if tied and n == "lm_head":
            continue
        out[f"{n}.weight_int8"] = m.qweight.detach().cpu().contiguous()
        out[f"{n}.weight_scale"] = m.scale.detach().cpu().contiguous()
    skip = set(ternary) | set(int8)
    for k, v in model.state_dict().items():
        owner = k.rsplit(".", 1)[0]
        if owner in skip or (tied and k == "lm_head.weight"):
            continue
        out[k] = v.detach().cpu().contiguous()
    out = {names.to_hf_name(k): v for k, v in out.items()}

    gs = sorted({m.group_size for m in ternary.values()})
    sdt = sorted({str(m.scale.dtype).replace("torch.", "") for m in ternary.values()})
    qc = {
        "quant_method": "ssmquant", "format": FORMAT, "format_version": FORMAT_VERSION, "method": "ternary",
        "bits": BITS_PER_CODE[packing], "packing": packing, "values": [-1, 0, 1],
        "group_size": gs[0] if len(gs) == 1 else gs, "scale_dtype": sdt[0] if len(sdt) == 1 else sdt,
        "modules": modules, "int8_modules": sorted(int8), "quant_config": quant_info or {},
    }
    dense = [v for k, v in model.state_dict().items() if k.endswith("norm_f.weight")]
    return write_packed_dir(directory, cfg, out, qc, tokenizer=tokenizer,
                            dtype=dense[0].dtype if dense else torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def write_packed_dir(directory, cfg: Mamba2Config, tensors: dict, quantization_config: dict, *, tokenizer=None,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write a quantized model directory: config.json (HF dialect + ``quantization_config``), model.safetensors
    (atomic writes) and the tokenizer. Shared by the ternary (this module) and DF-SSM (``dfssm_io``) formats."""
    from safetensors.torch import save as st_save

    from ..io.checkpoints import atomic_write_bytes, atomic_write_json

    conf = cfg.to_hf_dict()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        conf.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.eos_token_id)
    conf["torch_dtype"] = str(dtype).replace("torch.", "")
    conf["quantization_config"] = quantization_config
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / "model.safetensors",
                       st_save(tensors, metadata={"format": "pt", "ssmquant": quantization_config["format"]}))
    atomic_write_json(d / "config.json", conf)
    if tokenizer is not None:
        tokenizer.save(d)
    return d

def _check_qc(qc: dict, source: str) -> None:
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantization_config must be a JSON object")
    if qc.get("format") != FORMAT:
        raise ConfigError(f"{source}: quantization_config.format={qc.get('format')!r} is not {FORMAT!r} "
                          "(not an ssmquant packed checkpoint)")
    if qc.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{source}: quantization_config.format_version={qc.get('format_version')!r}; this "
                          f"ssmquant reads version {FORMAT_VERSION}")
    if qc.get("method") != "ternary":
        raise ConfigError(f"{source}: quantization_config.method={qc.get('method')!r}; only 'ternary' is supported")
    if qc.get("packing") not in CODES_PER_BYTE:
        raise ConfigError(f"{source}: quantization_config.packing={qc.get('packing')!r}; use one of "
                          f"{list(CODES_PER_BYTE)}")
    if not isinstance(qc.get("modules"), dict) or not qc["modules"]:
        raise ConfigError(f"{source}: quantization_config.modules must name the ternary modules")


def load_packed_model(ckpt, cfg_dict: dict, *, device=None, dtype=None, runtime: str = "dense",
                      check_finite: bool = True) -> PackedMamba2LMHeadModel:
    """Load a packed directory (``ckpt``: ``io.checkpoints.ResolvedCheckpoint``, ``cfg_dict``: its config.json).

    dtype: compute dtype of the dense tensors and of the dequantized-weight cache (default: as stored).
    runtime: "dense" (codes + dequantized weight cached; dense speed) or "packed" (codes only). See module doc.
    """
    from ..io.checkpoints import _parse_dtype, model_class_for, model_config_from_dict

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r}: use one of {list(RUNTIMES)}")
    source = str(ckpt.config_path)
    qc = cfg_dict["quantization_config"]
    if isinstance(qc, dict) and qc.get("method") == "dfssm":  # 1-bit scaffold + int8 low-rank: quant/dfssm_io.py
        from .dfssm_io import load_dfssm_model

        return load_dfssm_model(ckpt, cfg_dict, device=device, dtype=dtype, check_finite=check_finite)
    _check_qc(qc, source)
    cfg = model_config_from_dict(cfg_dict, source=source)
    dtype = _parse_dtype(dtype)
    packing = qc["packing"]
    int8_mods = list(qc.get("int8_modules") or [])
    with torch.device("meta"):
        # The study's Transformer control (``model_type`` in config.json) packs like a Mamba-2; its class has no
        # ``size_report`` method (use ``quant.size.size_report``).
        model = PackedMamba2LMHeadModel(cfg) if isinstance(cfg, Mamba2Config) else model_class_for(cfg)(cfg)
    tied = cfg.tie_embeddings
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for n in qc["modules"]:
        if f"{n}.weight" not in expected:
            raise CheckpointError(f"{source}: quantization_config.modules names {n!r}, which is not a Linear or "
                                  "Embedding of this Mamba-2 config")
    for n in int8_mods:
        if n not in ("backbone.embedding", "lm_head"):
            raise CheckpointError(f"{source}: int8_modules may hold backbone.embedding and lm_head, not {n!r}")

    got, where = read_named_tensors(ckpt)

    def take(name: str) -> tuple[Tensor, Path]:
        if name not in got:
            raise CheckpointError(f"{ckpt.directory}: missing tensor {names.to_hf_name(name)}")
        return got.pop(name), where[name]

    float_dtype = dtype
    for n, spec in qc["modules"].items():
        rows, cols = expected[f"{n}.weight"]
        g = spec.get("group_size") if isinstance(spec, dict) else None
        if not isinstance(g, int) or g <= 0 or cols % g:
            raise CheckpointError(f"{source}: quantization_config.modules[{n!r}].group_size={g!r} does not divide "
                                  f"its {cols} input columns")
        packed, f = take(f"{n}.weight_packed")
        want = (rows, packed_cols(cols, packing))
        if tuple(packed.shape) != want or packed.dtype != torch.uint8:
            raise CheckpointError(f"{f}: tensor {n}.weight_packed is {packed.dtype} {list(packed.shape)}; the config "
                                  f"({packing}, weight {rows}x{cols}) implies uint8 {list(want)}")
        try:
            codes = unpack(packed, cols, packing)
        except ValueError as e:
            raise CheckpointError(f"{f}: tensor {n}.weight_packed: {e}") from None
        scale, f = take(f"{n}.weight_scale")
        if tuple(scale.shape) != (rows, cols // g) or not scale.is_floating_point():
            raise CheckpointError(f"{f}: tensor {n}.weight_scale is {scale.dtype} {list(scale.shape)}; group_size {g}"
                                  f" implies a float tensor of shape {[rows, cols // g]}")
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise CheckpointError(f"{f}: tensor {n}.weight_scale holds non-finite or non-positive scales")
        bias = got.pop(f"{n}.bias", None)
        if n == "backbone.embedding":
            mod: nn.Module = PackedTernaryEmbedding(codes, scale, g)
        elif runtime == "dense":
            mod = DenseCachedTernaryLinear(codes, scale, g, bias, dtype=float_dtype or torch.float32)
        else:
            mod = PackedTernaryLinear(codes, scale, g, bias)
        _set_submodule(model, n, mod)
        expected.pop(f"{n}.weight")

    for n in int8_mods:
        if tied and n == "lm_head":
            continue
        rows, cols = expected.pop(f"{n}.weight")
        q, f = take(f"{n}.weight_int8")
        if tuple(q.shape) != (rows, cols) or q.dtype != torch.int8:
            raise CheckpointError(f"{f}: tensor {n}.weight_int8 is {q.dtype} {list(q.shape)}; the config implies int8"
                                  f" {[rows, cols]}")
        if bool((q == -128).any()):
            raise CheckpointError(f"{f}: tensor {n}.weight_int8 holds -128 (codes lie in [-127, 127])")
        s, f = take(f"{n}.weight_scale")
        if tuple(s.shape) != (rows,) or not s.is_floating_point() or not bool(torch.isfinite(s).all()) \
                or bool((s <= 0).any()):
            raise CheckpointError(f"{f}: tensor {n}.weight_scale must be {rows} finite positive floats, got "
                                  f"{s.dtype} {list(s.shape)}")
        cd = float_dtype or torch.float32
        _set_submodule(model, n, Int8Embedding(q, s, cd) if n == "backbone.embedding" else Int8Linear(q, s, cd))
    if tied and "lm_head" in int8_mods:
        emb = model.backbone.embedding
        model.lm_head = Int8Linear(emb.qweight, emb.scale, emb.compute_dtype)
        expected.pop("lm_head.weight", None)
    if tied:
        expected.pop("lm_head.weight", None)

    for k in list(expected):
        if k.rsplit(".", 1)[0] in qc["modules"]:
            expected.pop(k)  # buffers of the swapped modules (none today), kept for safety
    sd: dict[str, Tensor] = {}
    for k, shape in expected.items():
        t, f = take(k)
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{f}: tensor {names.to_hf_name(k)} has shape {list(t.shape)} but the config "
                                  f"implies {list(shape)}")
        if not t.is_floating_point():
            raise CheckpointError(f"{f}: tensor {names.to_hf_name(k)} has dtype {t.dtype}; expected floating point")
        if check_finite and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{f}: tensor {names.to_hf_name(k)} holds NaN or Inf values")
        want = torch.float32 if k.rsplit(".", 1)[-1] in _FP32_ALWAYS else (float_dtype or t.dtype)
        sd[k] = t if t.dtype == want else t.to(want)
    if got:
        extra = sorted(got)[:3]
        raise CheckpointError(f"{ckpt.directory}: unexpected tensor(s) {extra} for this packed config")
    missing, _ = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == "lm_head.weight") and k.rsplit(".", 1)[0] not in qc["modules"]
               and k.rsplit(".", 1)[0] not in int8_mods]
    if missing:
        raise CheckpointError(f"{ckpt.directory}: missing tensor(s) {missing[:3]}")
    if tied and "lm_head" not in int8_mods:
        model.lm_head.weight = model.backbone.embedding.weight
    model.quantization_config = qc
    if device is not None:
        model = model.to(device)
    return model.eval()


def read_named_tensors(ckpt) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """All tensors of a checkpoint under our names, and the file each came from (for error messages)."""
    from ..io.checkpoints import iter_tensors

    got: dict[str, Tensor] = {}
    where: dict[str, Path] = {}
    for raw, t, f in iter_tensors(ckpt.weight_files):
        name = names.from_hf_name(names.strip_known_prefixes(raw))
        got[name], where[name] = t, f
    return got, where


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
