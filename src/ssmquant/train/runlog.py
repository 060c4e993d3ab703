"""A run directory's logs: ``run_config.json``, ``metrics.jsonl`` and ``plots/*.png``.

Every training command keeps this layout::

    RUN/run_config.json     resolved config, package versions, git commit, seed
    RUN/metrics.jsonl       one JSON object per logged step (and per eval)
    RUN/plots/*.png         curves drawn from metrics.jsonl (matplotlib, optional)
    RUN/checkpoints/step_N/ resumable state
    RUN/model/              final model, Hugging Face layout
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def environment_info() -> dict:
    """Versions and git commit, recorded with every run so results can be traced back."""
    import numpy
    import torch

    from .. import __version__

    info = {"ssmquant": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        info["git_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


class MetricsLog:
    """Append-only JSONL; safe to reopen on resume (records past the resumed step are dropped first)."""

    def __init__(self, path: Path, *, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62  # a torn last line: drop it


def read_metrics(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_metrics(run_dir: Path, *, groups: dict[str, list[str]] | None = None) -> list[Path]:
    """Draw one PNG per group of metric keys (x = tokens). Returns the files written; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed; skipping plots (pip install 'ssmquant[plot]')", file=sys.stderr)
        return []
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return []
    groups = groups or {"loss": ["loss", "val_loss"], "lr": ["lr"], "grad_norm": ["grad_norm"]}
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        x = r.get("tokens", r.get("step", 0))
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                series[k].append((x, v))
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, keys in groups.items():
        present = [k for k in keys if series.get(k)]
        if not present:
            continue
        many = len(present) > 4
        fig, ax = plt.subplots(figsize=(8.5 if many else 6, 3.5))
        for k in present:
            xs, ys = zip(*series[k])
            # Per-layer series ("quant/zero_frac/backbone.layers.0.mixer.in_proj") are labelled by layer only.
            label = k[len(keys[0]) + 1:].replace("backbone.", "") if k.startswith(keys[0] + "/") else k
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3,
                    linewidth=2.5 if k == keys[0] and many else 1.2)
        ax.set_xlabel("tokens")
        ax.set_title(name)
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif len(present) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
