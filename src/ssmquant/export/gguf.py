"""GGUF export for llama.cpp: Mamba-2 architecture, ternary projections as TQ2_0 / TQ1_0, written from our codes.

Follows what llama.cpp's ``convert_hf_to_gguf.py`` (class ``Mamba2Model``) produces for a Hugging Face Mamba-2, so
llama.cpp's ``LLM_ARCH_MAMBA2`` loader and graph read it unchanged. Name table and transforms (ours -> GGUF):

    backbone.embedding.weight            token_embd.weight        (v, d)       F16 (int8 embedding: Q8_0)
    backbone.layers.N.norm.weight        blk.N.attn_norm.weight   (d,)         F32
    ...mixer.in_proj.weight              blk.N.ssm_in.weight      (2e+2gn+h, d) TQ2_0 / TQ1_0 / F16
    ...mixer.conv1d.weight  (c, 1, k)    blk.N.ssm_conv1d.weight  (c, k)       F32   squeezed
    ...mixer.conv1d.bias                 blk.N.ssm_conv1d.bias    (c,)         F32
    ...mixer.dt_bias                     blk.N.ssm_dt.bias        (h,)         F32
    ...mixer.A_log                       blk.N.ssm_a              (h, 1)       F32   A = -exp(A_log)
    ...mixer.D                           blk.N.ssm_d              (h, 1)       F32
    ...mixer.norm.weight                 blk.N.ssm_norm.weight    (g, e/g)     F32   grouped RMSNorm
    ...mixer.out_proj.weight             blk.N.ssm_out.weight     (d, e)       TQ2_0 / TQ1_0 / F16
    backbone.norm_f.weight               output_norm.weight       (d,)         F32
    lm_head.weight                       output.weight            (v, d)       omitted when tied (llama.cpp then
                                                                                reuses token_embd)
(shapes in numpy order; GGUF's ``ne`` lists them reversed). Hyperparameters: ``mamba2.ssm.{conv_kernel,
inner_size, state_size, time_step_rank (= n_heads), group_count}``, ``embedding_length``, ``block_count``,
``layer_norm_rms_eps``, and ``feed_forward_length = head_count = 0`` (unused, but llama.cpp reads them).

Ternary blocks. TQ2_0 and TQ1_0 hold 256 weights with one fp16 scale ``d`` each. We never re-quantize from floats
(``gguf.quants`` computes its own absmax scales); each block is written from our exact int8 codes and fp16 scale:

    TQ2_0 (66 B): qs[64], d.  For half j (0, 1), byte m (0..31) holds elements 128j + 32l + m at bit shift 2l
                  (l = 0..3), stored as code + 1.
    TQ1_0 (54 B): qs[48], qh[4], d.  Trits (code + 1) as base-3 fixed-point fractions: a byte holding trits
                  t0..t4 (t0 most significant) stores ceil(sum t_n 3^(4-n) * 256 / 243). qs[0:32] byte m holds
                  elements 32n + m; qs[32:48] byte m holds 160 + 16n + m; qh byte m holds 240 + 4n + m (n = 0..3,
                  fifth trit 0).

This is lossless only when the 256 weights of a block share one scale: group size 256, or a multiple of 256, or a
smaller group whose scales happen to be equal within every block. Otherwise the export refuses and says to train with
``QuantConfig(group_size=256)`` (or to export ``--type f16``, which is exact for ternary weights with fp16 scales).

The file is written to a temporary name, read back with ``gguf.GGUFReader``, every tensor dequantized with
``gguf.quants.dequantize`` and compared with the expected values (exact), then renamed into place.
``gguf`` is an optional dependency (``pip install ssmquant[gguf]``), imported inside the functions.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, SSMQuantError

TYPES = ("auto", "tq2_0", "tq1_0", "q1_0", "f16")
QK = 256  # weights per TQ block


class ExportError(SSMQuantError):
    """The model cannot be exported losslessly to the requested GGUF type."""


@dataclass
class GGUFExportConfig:
    """``ssmquant export DIR --format gguf``.

    model: checkpoint directory (packed ternary or dense). out: the .gguf file to write.
    type: "tq2_0" / "tq1_0" for the ternary projections, "f16" for everything, "auto" = tq2_0 if the model is
        ternary else f16. tokenizer: tokenizer.json file or directory (default: the model directory).
    """

    model: str
    out: str
    type: str = "auto"
    drop_lowrank: bool = False
    tokenizer: str | None = None
    name: str | None = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise ConfigError(f"--type {self.type!r}: use one of {list(TYPES)}")


@dataclass
class _Tensor:
    name: str
    data: np.ndarray             # what is written: float array, or uint8 blocks (rows, bytes)
    qtype: object                # gguf.GGMLQuantizationType
    expected: np.ndarray         # float32 values a reader must get back, numpy shape
    source: str = ""


@dataclass
class ExportReport:
    path: str
    type: str
    bytes: int
    tensors: int
    by_type: dict = field(default_factory=dict)
    verified: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Block writers (from codes + scales; exact)
# ---------------------------------------------------------------------------------------------------------------

def block_scales(codes: torch.Tensor, scale: torch.Tensor, group_size: int, name: str) -> np.ndarray:
    """One fp16 scale per 256-weight block, ``(rows, cols/256)``, or ExportError if a block holds two scales."""
    rows, cols = codes.shape
    if cols % QK:
        raise ExportError(f"{name}: {cols} input columns are not a multiple of 256, so TQ1_0/TQ2_0 cannot hold it; "
                          "export --type f16")
    s = scale.float()
    if group_size >= QK:
        if group_size % QK:
            raise ExportError(f"{name}: group_size={group_size} is not a multiple of 256; train with "
                              "QuantConfig(group_size=256) or export --type f16")
        s = s.repeat_interleave(group_size // QK, dim=1)             # (rows, cols/256)
    else:
        per = QK // group_size
        sb = s.reshape(rows, cols // QK, per)
        differ = (sb != sb[..., :1]).any(-1)
        if bool(differ.any()):
            r, b = (int(i) for i in differ.nonzero()[0])
            raise ExportError(
                f"{name}: group_size={group_size} gives {per} scales per 256-weight TQ block and they differ (row {r},"
                f" block {b}: {sb[r, b].tolist()}); TQ1_0/TQ2_0 hold one fp16 scale per 256 weights, so exporting"
                " would lose precision. Train with QuantConfig(group_size=256), or export --type f16 (exact)")
        s = sb[..., 0]
    s16 = s.to(torch.float16)
    if not torch.equal(s16.float(), s):
        raise ExportError(f"{name}: scales are not representable in fp16 (scale_dtype bf16/fp32?); train with "
                          "QuantConfig(scale_dtype='float16') or export --type f16")
    return s16.numpy()


def tq2_0_blocks(codes: torch.Tensor, d: np.ndarray) -> np.ndarray:
    """``codes: (r, c) int8``, ``d: (r, c/256) fp16`` -> ``(r, c/256 * 66) uint8`` TQ2_0 blocks."""
    r, c = codes.shape
    nb = c // QK
    t = (codes.numpy().astype(np.uint8) + 1).reshape(r, nb, 2, 4, 32)   # [half j, shift l, byte m]
    qs = t[:, :, :, 0] | (t[:, :, :, 1] << 2) | (t[:, :, :, 2] << 4) | (t[:, :, :, 3] << 6)   # (r, nb, 2, 32)
    blocks = np.concatenate([qs.reshape(r, nb, 64), d.reshape(r, nb, 1).view(np.uint8)], axis=-1)
    return np.ascontiguousarray(blocks.reshape(r, nb * 66))


def _trit_bytes(trits: np.ndarray) -> np.ndarray:
    """``(..., n, m)`` trits (digit n most significant first, n <= 5) -> ``(..., m)`` fixed-point bytes."""
    n = trits.shape[-2]
    w = (3 ** np.arange(4, 4 - n, -1)).reshape(n, 1).astype(np.uint16)
    v = (trits.astype(np.uint16) * w).sum(axis=-2)                     # base-3 number, 0..242
    return ((v * 256 + 242) // 243).astype(np.uint8)                  # ceil(v * 256 / 243)


def tq1_0_blocks(codes: torch.Tensor, d: np.ndarray) -> np.ndarray:
    """``codes: (r, c) int8``, ``d: (r, c/256) fp16`` -> ``(r, c/256 * 54) uint8`` TQ1_0 blocks."""
    r, c = codes.shape
    nb = c // QK
    t = (codes.numpy().astype(np.int16) + 1).reshape(r, nb, QK)
    qs0 = _trit_bytes(t[..., :160].reshape(r, nb, 5, 32))             # elements 32n + m
    qs1 = _trit_bytes(t[..., 160:240].reshape(r, nb, 5, 16))          # elements 160 + 16n + m
    qh = _trit_bytes(t[..., 240:].reshape(r, nb, 4, 4))               # elements 240 + 4n + m
    blocks = np.concatenate([qs0, qs1, qh, d.reshape(r, nb, 1).view(np.uint8)], axis=-1)
    return np.ascontiguousarray(blocks.reshape(r, nb * 54))


def q8_0_rowwise(q: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """Int8 per-row weights as Q8_0 blocks (fp16 d + 32 int8), each block repeating its row's scale: exact."""
    r, c = q.shape
    if c % 32:
        raise ExportError(f"int8 tensor with {c} columns cannot be Q8_0 (needs a multiple of 32)")
    nb = c // 32
    d = np.repeat(scale.to(torch.float16).numpy().reshape(r, 1), nb, axis=1).reshape(r, nb, 1)
    blocks = np.concatenate([d.view(np.uint8), q.numpy().reshape(r, nb, 32).view(np.uint8)], axis=-1)
    return np.ascontiguousarray(blocks.reshape(r, nb * 34))


# ---------------------------------------------------------------------------------------------------------------
# Model -> tensors
# ---------------------------------------------------------------------------------------------------------------

def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _matrix(module: nn.Module, name: str, gname: str, qtype: str) -> _Tensor:
    """A projection / embedding / head as the requested type, with the float values a reader must see."""
    import gguf

    from ..quant.int8 import _Int8Weight
    from ..quant.layers import _PackedTernary

    from ..quant.binary_lowrank import PackedBinaryLowRankLinear, q1_0_blocks

    Q = gguf.GGMLQuantizationType
    if isinstance(module, PackedBinaryLowRankLinear):
        # DF-SSM: llama.cpp's Mamba-2 graph has no op for the low-rank branch U·V, so only the 1-bit scaffold can
        # go to GGUF (Q1_0: 128 weights, one fp16 mean-|w| scale). The caller must have asked for that loss.
        if qtype != "q1_0_drop_lowrank":
            raise ExportError(f"{name} is DF-SSM (1-bit scaffold + low-rank U·V): llama.cpp can run the scaffold "
                              "alone, as Q1_0, which drops U·V; pass --type q1_0 --drop-lowrank to accept that")
        if module.group_size != 128 or module.scale.dtype != torch.float16:
            raise ExportError(f"{name}: Q1_0 needs group size 128 and fp16 scales (got {module.group_size}, "
                              f"{module.scale.dtype}); train with --group-size 128")
        blocks = q1_0_blocks(module.signs.cpu(), module.scale.cpu())
        return _Tensor(gname, blocks.numpy(), Q.Q1_0, _f32(module.scaffold_weight()), name)
    if isinstance(module, _PackedTernary):
        w = module.weight_dequantized()
        if qtype in ("tq2_0", "tq1_0"):
            d = block_scales(module.codes, module.scale, module.group_size, name)
            fn = tq2_0_blocks if qtype == "tq2_0" else tq1_0_blocks
            return _Tensor(gname, fn(module.codes.cpu(), d), Q.TQ2_0 if qtype == "tq2_0" else Q.TQ1_0, _f32(w), name)
        w16 = w.to(torch.float16)
        if not torch.equal(w16.float(), w):
            raise ExportError(f"{name}: ternary weights are not exact in fp16 (non-fp16 scales); cannot export f16")
        return _Tensor(gname, w16.numpy(), Q.F16, _f32(w), name)
    if isinstance(module, _Int8Weight):
        return _Tensor(gname, q8_0_rowwise(module.qweight.cpu(), module.scale.cpu()), Q.Q8_0,
                       _f32(module.weight_dequantized()), name)
    if qtype in ("tq2_0", "tq1_0", "q1_0_drop_lowrank") and not name.endswith(("embedding", "lm_head")):
        raise ExportError(f"{name} is a dense (not ternary) weight: --type {qtype} would re-quantize it; export "
                          "--type f16, or quantize and convert the model first")
    w16 = module.weight.detach().to(torch.float16).cpu()
    return _Tensor(gname, w16.numpy(), Q.F16, _f32(w16), name)


def gguf_tensors(model: nn.Module, qtype: str) -> list[_Tensor]:
    """Every tensor of the GGUF file, in llama.cpp's names and layouts (see the module docstring)."""
    import gguf

    F32 = gguf.GGMLQuantizationType.F32
    cfg = model.config
    out = [_matrix(model.backbone.embedding, "backbone.embedding", "token_embd.weight", qtype)]
    for i, layer in enumerate(model.backbone.layers):
        mix, p = layer.mixer, f"blk.{i}."
        pre = f"backbone.layers.{i}."

        def small(t: torch.Tensor, gname: str, src: str, transform=None) -> _Tensor:
            a = _f32(t if transform is None else transform(t.detach().float()))
            return _Tensor(p + gname, a, F32, a, pre + src)

        out += [
            small(layer.norm.weight, "attn_norm.weight", "norm.weight"),
            _matrix(mix.in_proj, pre + "mixer.in_proj", p + "ssm_in.weight", qtype),
            small(mix.conv1d.weight, "ssm_conv1d.weight", "mixer.conv1d.weight", lambda t: t.squeeze(1)),
            small(mix.conv1d.bias, "ssm_conv1d.bias", "mixer.conv1d.bias"),
            small(mix.dt_bias, "ssm_dt.bias", "mixer.dt_bias"),
            # llama.cpp takes A itself, shaped (h, 1) like Mamba-1's A (convert_hf_to_gguf does the same).
            small(mix.A_log, "ssm_a", "mixer.A_log", lambda t: -torch.exp(t).reshape(-1, 1)),
            small(mix.D, "ssm_d", "mixer.D", lambda t: t.reshape(-1, 1)),
            small(mix.norm.weight, "ssm_norm.weight", "mixer.norm.weight",
                  lambda t: t.reshape(cfg.ngroups, cfg.d_inner // cfg.ngroups)),
            _matrix(mix.out_proj, pre + "mixer.out_proj", p + "ssm_out.weight", qtype),
        ]
    out.append(_Tensor("output_norm.weight", _f32(model.backbone.norm_f.weight), F32,
                       _f32(model.backbone.norm_f.weight), "backbone.norm_f.weight"))
    if not cfg.tie_embeddings:
        out.append(_matrix(model.lm_head, "lm_head", "output.weight", qtype))
    return out


def _vocab(tokenizer_json: Path, n_rows: int) -> dict:
    """GPT-2 style BPE metadata from a byte-level BPE ``tokenizer.json``, padded to the embedding's rows."""
    import gguf

    tj = json.loads(tokenizer_json.read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"{tokenizer_json}: tokenizer model {model.get('type')!r}; only byte-level BPE exports")
    pre = json.dumps(tj.get("pre_tokenizer"))
    if "ByteLevel" not in pre:
        raise ExportError(f"{tokenizer_json}: pre-tokenizer is not byte-level; llama.cpp's gpt2 vocab needs it")
    id2tok: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special")}
    for a in tj.get("added_tokens", []):
        id2tok[a["id"]] = a["content"]
    n = max(id2tok) + 1
    if n > n_rows:
        raise ExportError(f"{tokenizer_json}: {n} tokens but the embedding has {n_rows} rows")
    tokens, types = [], []
    T = gguf.TokenType
    for i in range(n_rows):
        if i in id2tok:
            tokens.append(id2tok[i])
            types.append(T.CONTROL if i in special else T.NORMAL)
        else:  # padding rows of the embedding (pad_vocab_size_multiple) get unused placeholder tokens
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _eos_id(tokenizer_json: Path, cfg) -> int | None:
    from ..io.tokenizer import tokenizer_from_file

    tok = tokenizer_from_file(tokenizer_json)
    return tok.eos_token_id if tok.eos_token_id is not None else cfg.extra.get("eos_token_id")


# ---------------------------------------------------------------------------------------------------------------
# Writing and verifying
# ---------------------------------------------------------------------------------------------------------------

def _is_ternary(model: nn.Module) -> bool:
    from ..quant.layers import _PackedTernary

    return any(isinstance(m, _PackedTernary) for m in model.modules())


def write_gguf(model: nn.Module, out: str | os.PathLike, *, qtype: str, tokenizer_json: str | os.PathLike,
               name: str = "ssmquant-mamba2") -> ExportReport:
    """Write ``model`` as GGUF to ``out`` atomically, after reading the temporary file back and checking it."""
    import gguf

    if qtype not in ("tq2_0", "tq1_0", "f16", "q1_0_drop_lowrank"):
        raise ConfigError(f"qtype {qtype!r}: use tq2_0, tq1_0, f16 (or q1_0 with --drop-lowrank for DF-SSM)")
    cfg = model.config
    if cfg.d_inner % cfg.headdim or cfg.nheads % cfg.ngroups:
        raise ExportError("config: heads do not divide d_inner / groups")
    tensors = gguf_tensors(model, qtype)
    vocab = _vocab(Path(tokenizer_json), cfg.padded_vocab_size)
    eos = _eos_id(Path(tokenizer_json), cfg)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MAMBA2]
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name)
        w.add_context_length(2**20)  # a recurrent model has no trained context limit; llama.cpp needs a number
        w.add_embedding_length(cfg.d_model)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_block_count(cfg.n_layer)
        w.add_ssm_conv_kernel(cfg.d_conv)
        w.add_ssm_inner_size(cfg.d_inner)
        w.add_ssm_state_size(cfg.d_state)
        w.add_ssm_time_step_rank(cfg.nheads)
        w.add_ssm_group_count(cfg.ngroups)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        ft = {"tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0, "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0,
              "f16": gguf.LlamaFileType.MOSTLY_F16, "q1_0_drop_lowrank": gguf.LlamaFileType.MOSTLY_Q1_0}[qtype]
        w.add_file_type(int(ft))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")  # byte-level BPE with GPT-2's split regex (our tokenizers, GPT-NeoX)
        w.add_token_list(vocab["tokens"])
        w.add_token_types([int(t) for t in vocab["types"]])
        w.add_token_merges(vocab["merges"])
        if eos is not None:
            w.add_bos_token_id(eos)
            w.add_eos_token_id(eos)
        w.add_add_bos_token(False)
        for t in tensors:
            raw = None if t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else t.qtype
            w.add_tensor(t.name, t.data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        verify_gguf(tmp, tensors, cfg)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a model file is as readable as any other output
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    by_type: dict[str, int] = {}
    for t in tensors:
        by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + 1
    return ExportReport(str(out), qtype, out.stat().st_size, len(tensors), by_type, verified=True)


def verify_gguf(path: str | os.PathLike, tensors: list[_Tensor], cfg) -> None:
    """Read ``path`` back and check names, types, shapes, values (exact) and the Mamba-2 keys."""
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    if arch != "mamba2":
        raise ExportError(f"{path}: read back architecture {arch!r}")
    key = f"{arch}.ssm.group_count"
    if int(r.fields[key].parts[-1][0]) != cfg.ngroups:
        raise ExportError(f"{path}: read back {key} wrong")
    got = {t.name: t for t in r.tensors}
    if set(got) != {t.name for t in tensors}:
        raise ExportError(f"{path}: read back tensor names differ: {sorted(set(got) ^ {t.name for t in tensors})}")
    for t in tensors:
        rt = got[t.name]
        if rt.tensor_type != t.qtype:
            raise ExportError(f"{path}: {t.name} read back as {rt.tensor_type.name}, wrote {t.qtype.name}")
        if rt.tensor_type == gguf.GGMLQuantizationType.Q1_0:  # gguf has no numpy dequantizer for Q1_0
            from ..quant.binary_lowrank import Q1_0_GROUP, dequantize_binary, q1_0_unblocks

            signs, scale = q1_0_unblocks(torch.from_numpy(np.array(rt.data)).reshape(t.expected.shape[0], -1),
                                         t.expected.shape[1])
            vals = dequantize_binary(signs, scale, Q1_0_GROUP).numpy()
        else:
            vals = dequantize(rt.data, rt.tensor_type).astype(np.float32).reshape(t.expected.shape)
        if not np.array_equal(vals, t.expected):
            diff = np.abs(vals - t.expected)
            raise ExportError(f"{path}: {t.name} ({t.source}) reads back different values (max diff "
                              f"{diff.max():.3g}, mean {diff.mean():.3g})")


def export_gguf(config: GGUFExportConfig) -> ExportReport:
    """Load ``config.model`` (packed ternary or dense) and write it as GGUF; see :class:`GGUFExportConfig`."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SSMQuantError("GGUF export needs the gguf package: pip install 'ssmquant[gguf]'") from None
    from ..io.checkpoints import load_model

    model = load_model(config.model, dtype=None)
    qtype = config.type
    if qtype == "auto":
        qtype = "tq2_0" if _is_ternary(model) else "f16"
    if qtype == "q1_0":
        if not config.drop_lowrank:
            raise ExportError("--type q1_0 writes only the 1-bit scaffold of a DF-SSM model (llama.cpp cannot run "
                              "its low-rank U·V): add --drop-lowrank to accept that loss")
        qtype = "q1_0_drop_lowrank"
    tok = Path(config.tokenizer or config.model)
    if tok.is_dir():
        tok = tok / "tokenizer.json"
    if not tok.is_file():
        raise SSMQuantError(f"{tok}: no tokenizer.json; llama.cpp needs the vocabulary, pass --tokenizer FILE")
    name = config.name or Path(config.model).resolve().name
    return write_gguf(model, config.out, qtype=qtype, tokenizer_json=tok, name=name)
