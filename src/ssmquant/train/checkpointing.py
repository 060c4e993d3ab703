"""Training checkpoints: atomic, checksummed, last-k kept, corrupt newest falls back to the previous one.

Layout: ``RUN/checkpoints/step_N/state.pt`` (model, optimizer, scheduler, RNG states, data position, task state)
plus ``meta.json`` holding the step and the sha256 of ``state.pt``. A checkpoint is written into a temporary
directory beside its final place and renamed into place, so a kill mid-write leaves either the old set of
checkpoints or the new one, never a half-written ``step_N``. ``state.pt`` is read back with
``torch.load(weights_only=True)``: it holds only tensors and plain Python containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import TrainingError

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, *, keep_last: int = 3) -> Path:
    """Write ``state`` as ``ckpt_dir/step_{step}`` atomically; delete all but the newest ``keep_last``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".step_{step}.tmp-"))
    try:
        torch.save(state, tmp / STATE_FILE)
        with open(tmp / STATE_FILE, "rb") as f:
            os.fsync(f.fileno())
        meta = {"step": step, "sha256": _sha256(tmp / STATE_FILE), "format": 1}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Completed checkpoint directories, oldest first (temporary ones are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
            out.append(p)
    return sorted(out, key=lambda p: int(p.name[5:]))


def verify_checkpoint(path: Path) -> str | None:
    """None if ``path`` is intact, else why not."""
    meta_p, state_p = path / META_FILE, path / STATE_FILE
    if not meta_p.is_file() or not state_p.is_file():
        return "missing files"
    try:
        meta = json.loads(meta_p.read_text())
    except (json.JSONDecodeError, OSError):
        return "unreadable meta.json"
    if _sha256(state_p) != meta.get("sha256"):
        return "checksum mismatch"
    return None


def load_latest_checkpoint(ckpt_dir: Path, *, map_location="cpu", warn=print) -> tuple[Path, dict] | None:
    """Newest intact checkpoint (skipping corrupt ones with a warning), or None if there is none."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        why = verify_checkpoint(path)
        if why is not None:
            warn(f"checkpoint {path} is corrupt ({why}); falling back to the previous one")
            continue
        try:
            state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
        except Exception as e:  # checksum matched but unpickling failed: treat as corrupt too
            warn(f"checkpoint {path} cannot be read ({str(e).splitlines()[0][:120]}); falling back")
            continue
        return path, state
    if list_checkpoints(ckpt_dir):
        raise TrainingError(f"{ckpt_dir}: every checkpoint is corrupt; cannot resume")
    return None
