"""Load and save Mamba-2 checkpoints: mamba-ssm directories, Hugging Face directories, Hub repo ids.

Loading never trusts the checkpoint:
* safetensors are memory-mapped and the model is built on the meta device, then the mapped tensors are *assigned*
  into it, so a 2.7B model never sits in RAM twice; pickled ``.bin`` files are read only with
  ``torch.load(weights_only=True)`` (no code runs), and nothing uses ``trust_remote_code``;
* shard index files may not point outside their directory;
* every config field is checked against the tensor shapes (upstream trap: transformers' ``Mamba2Config`` defaults to
  ``n_groups=8``, state-spaces checkpoints use 1), every tensor for NaN/Inf, every key for presence; errors name the
  file and the field or tensor.

Saving writes the Hugging Face layout (``config.json`` with ``architectures: ["Mamba2ForCausalLM"]``,
``model.safetensors``, tokenizer files) that transformers' ``AutoModelForCausalLM`` and llama.cpp's converter read,
or the mamba-ssm layout (``config.json`` + ``pytorch_model.bin``). Files are written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import CheckpointError, ConfigError
from ..model.config import Mamba2Config
from ..model.mamba2 import Mamba2LMHeadModel
from . import names

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass
class ResolvedCheckpoint:
    """Where a checkpoint's files are on local disk."""

    directory: Path
    config_path: Path
    weight_files: list[Path]
    source: str            # what the user passed (a path or a Hub id)


# ----------------------------------------------------------------------------------------------------------------
# Finding the files
# ----------------------------------------------------------------------------------------------------------------

def resolve_checkpoint(path_or_id: str | os.PathLike) -> ResolvedCheckpoint:
    """Local directory, or Hub repo id downloaded (or found in the cache) with huggingface_hub."""
    s = str(path_or_id)
    p = Path(s).expanduser()
    if p.is_dir():
        return _resolve_dir(p, s)
    if p.exists():
        raise CheckpointError(f"{p}: is a file; pass the checkpoint directory (with config.json)")
    if _looks_like_hub_id(s):
        return _resolve_dir(_download_from_hub(s), s)
    raise CheckpointError(f"{s}: no such directory, and not a Hub repo id (owner/name)")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) and " " not in s


def _resolve_dir(d: Path, source: str) -> ResolvedCheckpoint:
    cfg = d / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{d}: no config.json (not a model directory)")
    return ResolvedCheckpoint(d, cfg, _weight_files(d), source)


def _weight_files(d: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        f = d / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return [f]
        try:
            index = json.loads(f.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise CheckpointError(f"{f}: not a valid shard index (needs a 'weight_map' object)") from None
        root = d.resolve()
        out = []
        for shard in shards:
            sp = (d / shard).resolve()
            if root not in sp.parents:
                raise CheckpointError(f"{f}: shard {shard!r} points outside the checkpoint directory; refused")
            if not sp.is_file():
                raise CheckpointError(f"{f}: shard {shard} is missing")
            out.append(sp)
        return out
    raise CheckpointError(f"{d}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def _download_from_hub(repo: str) -> Path:
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError:  # pragma: no cover - core dependency
        raise CheckpointError("huggingface_hub is not installed") from None
    try:
        files = set(list_repo_files(repo))
        online = True
    except Exception as e:
        online = False
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        if type(e).__name__ in ("RepositoryNotFoundError",):
            raise CheckpointError(f"Hub repo {repo} not found (or private); check the id or log in") from None
    if online:
        weights = next((w for w in WEIGHT_FILES if w in files), None)
        if weights is None or "config.json" not in files:
            raise CheckpointError(f"Hub repo {repo} has no config.json and Mamba-2 weights; is it a Mamba-2 model?")
        patterns = ["config.json", weights, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
        if weights.endswith(".index.json"):
            patterns.append("*.safetensors" if "safetensors" in weights else "*.bin")
        try:
            return Path(snapshot_download(repo, allow_patterns=patterns))
        except Exception as e:
            raise CheckpointError(f"download of {repo} failed: {str(e).splitlines()[0][:160]}") from None
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        raise CheckpointError(
            f"cannot reach the Hub for {repo} ({why}) and it is not in the local cache; "
            "pass a local checkpoint directory instead") from None


# ----------------------------------------------------------------------------------------------------------------
# Reading tensors
# ----------------------------------------------------------------------------------------------------------------

def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (name, tensor, file) from safetensors (memory-mapped) or torch ``.bin`` (weights only) files."""
    for f in files:
        if f.suffix == ".safetensors":
            yield from _iter_safetensors(f)
        else:
            yield from _iter_bin(f)


def _iter_safetensors(f: Path):
    from safetensors import safe_open

    try:
        handle = safe_open(str(f), framework="pt")
    except Exception as e:
        raise CheckpointError(f"{f}: corrupt or truncated safetensors file ({_first_line(e)})") from None
    with handle:
        for k in handle.keys():
            try:
                yield k, handle.get_tensor(k), f
            except Exception as e:
                raise CheckpointError(f"{f}: tensor {k} cannot be read, file corrupt or truncated "
                                      f"({_first_line(e)})") from None


def _iter_bin(f: Path):
    try:
        sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        msg = _first_line(e)
        if "Weights only load failed" in msg or "Unsupported" in msg:
            raise CheckpointError(f"{f}: holds pickled objects other than tensors; refused (weights_only)") from None
        raise CheckpointError(f"{f}: corrupt or truncated PyTorch file ({msg[:160]})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{f}: expected a state dict, found {type(sd).__name__}")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{f}: entry {k} is not a tensor")
        yield k, v, f


def _first_line(e: Exception) -> str:
    s = str(e)
    return s.splitlines()[0][:200] if s else type(e).__name__


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------

def load_model(path_or_id: str | os.PathLike, *, device=None, dtype: torch.dtype | str | None = None,
               check_finite: bool = True) -> Mamba2LMHeadModel:
    """Load a Mamba-2 LM from a directory (mamba-ssm or HF layout, plain or packed) or a Hub repo id.

    ``dtype`` None keeps the checkpoint's float dtype; the model is returned in eval mode.
    """
    ckpt = resolve_checkpoint(path_or_id)
    cfg_dict = _read_json(ckpt.config_path)
    if "quantization_config" in cfg_dict:
        from ..quant.packed_io import load_packed_model  # packed ternary / binary directories

        return load_packed_model(ckpt, cfg_dict, device=device, dtype=dtype)
    cfg = model_config_from_dict(cfg_dict, source=str(ckpt.config_path))
    dtype = _parse_dtype(dtype)
    model = load_state_into_model(cfg, iter_tensors(ckpt.weight_files), dtype=dtype, check_finite=check_finite,
                                  source=str(ckpt.directory))
    if device is not None:
        model = model.to(device)
    return model.eval()


def model_config_from_dict(cfg_dict: dict, *, source: str):
    """``Mamba2Config`` (either dialect), or the study's Transformer control config when ``model_type`` names it."""
    from ..model.transformer_control import TransformerControlConfig, is_transformer_control

    if is_transformer_control(cfg_dict):
        return TransformerControlConfig.from_dict(cfg_dict, source=source)
    return Mamba2Config.from_dict(cfg_dict, source=source)


def model_class_for(cfg) -> type:
    from ..model.transformer_control import TransformerControlConfig, TransformerControlLM

    return TransformerControlLM if isinstance(cfg, TransformerControlConfig) else Mamba2LMHeadModel


def load_state_into_model(cfg: Mamba2Config, tensors, *, dtype=None, check_finite=True,
                          source: str = "checkpoint") -> Mamba2LMHeadModel:
    """Build the model on the meta device and assign validated tensors into it (no second copy in RAM)."""
    with torch.device("meta"):
        model = model_class_for(cfg)(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    got: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    head = None
    for raw_name, t, f in tensors:
        name = names.from_hf_name(names.strip_known_prefixes(raw_name))
        if name == "lm_head.weight" and cfg.tie_embeddings:
            head = (t, f)
            continue
        if name not in expected:
            raise CheckpointError(f"{f}: unexpected tensor {raw_name} for a Mamba-2 model (is it Mamba-2?)")
        got[name], where[name] = t, f
    # in_proj first: its shape tells which config field is off (ngroups, d_state, ...) better than any other.
    for name in sorted(got, key=lambda k: not k.endswith("in_proj.weight")):
        t, f = got[name], where[name]
        if tuple(t.shape) != expected[name]:
            raise CheckpointError(f"{f}: {_shape_message(cfg, name, tuple(t.shape), expected[name])}")
        if not t.is_floating_point():
            raise CheckpointError(f"{f}: tensor {name} has dtype {t.dtype}; expected floating point")
        if check_finite and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{f}: tensor {name} holds NaN or Inf values")
    missing = sorted(set(expected) - set(got))
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing[:3])}{more}")
    if head is not None:
        t, f = head
        emb = got["backbone.embedding.weight"]
        if t.shape != emb.shape or not torch.equal(t, emb):
            raise CheckpointError(f"{f}: lm_head.weight differs from the embedding but the config says "
                                  "tie_embeddings/tie_word_embeddings=true")
    float_dtype = dtype or got["backbone.embedding.weight"].dtype
    sd = {}
    for k, t in got.items():
        # A_log, D, dt_bias are kept in fp32 whatever the model dtype (precision-sensitive, tiny).
        want = torch.float32 if k.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias") else float_dtype
        sd[k] = t if t.dtype == want else t.to(want)
    model.load_state_dict(sd, strict=not cfg.tie_embeddings, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    return model


def _shape_message(cfg: Mamba2Config, name: str, got: tuple, want: tuple) -> str:
    """Explain a shape mismatch in terms of the config field that is most likely wrong."""
    base = f"tensor {name} has shape {list(got)} but the config implies {list(want)}"
    leaf = name.split(".")
    if name.endswith("embedding.weight"):
        return (f"{base}: check vocab_size={cfg.vocab_size} / pad_vocab_size_multiple={cfg.pad_vocab_size_multiple}"
                f" (rows) and d_model/hidden_size={cfg.d_model}")
    if name.endswith("mixer.in_proj.weight") and got[1:] == want[1:]:
        e, h, n = cfg.d_inner, cfg.nheads, cfg.d_state
        rest = got[0] - 2 * e - h
        if rest > 0 and rest % (2 * n) == 0:
            return (f"{base}: the tensors imply ngroups/n_groups={rest // (2 * n)} but the config says "
                    f"{cfg.ngroups} (transformers defaults n_groups to 8; state-spaces checkpoints use 1)")
        return f"{base}: check expand, headdim/head_dim, d_state/state_size and ngroups/n_groups"
    if name.endswith("conv1d.weight") and got[0] == want[0]:
        return f"{base}: check d_conv/conv_kernel={cfg.d_conv}"
    if leaf[-1] in ("A_log", "D", "dt_bias"):
        return f"{base}: check headdim/head_dim={cfg.headdim} (nheads = expand*d_model/headdim)"
    return f"{base}: check d_model, expand, d_state, ngroups and headdim in config.json"


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text().replace("Infinity", "1e999"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return d


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of fp32, fp16, bf16")
    return table[dtype]


# ----------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def save_model(model: Mamba2LMHeadModel, directory: str | os.PathLike, *, tokenizer=None, layout: str = "hf",
               extra_config: dict | None = None) -> Path:
    """Write ``model`` to ``directory``.

    layout="hf": config.json (transformers Mamba2Config, all fields explicit) + model.safetensors with HF names.
    layout="mamba_ssm": config.json (mamba-ssm dialect) + pytorch_model.bin with mamba-ssm names.
    ``tokenizer`` (an ``ssmquant`` Tokenizer) is saved beside it if given.
    """
    from safetensors.torch import save as st_save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if layout == "hf":
        conf = cfg.to_hf_dict()
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            conf.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
        conf["torch_dtype"] = str(sd["backbone.embedding.weight"].dtype).replace("torch.", "")
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
        conf.update(extra_config or {})
        out = {names.to_hf_name(k): v for k, v in sd.items()}
        atomic_write_bytes(d / "model.safetensors", st_save(out, metadata={"format": "pt"}))
        atomic_write_json(d / "config.json", conf)
    elif layout == "mamba_ssm":
        import io

        buf = io.BytesIO()
        torch.save(sd, buf)
        atomic_write_bytes(d / "pytorch_model.bin", buf.getvalue())
        atomic_write_json(d / "config.json", {**cfg.to_mamba_ssm_dict(), **(extra_config or {})})
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'hf' or 'mamba_ssm'")
    if tokenizer is not None:
        tokenizer.save(d)
    return d
