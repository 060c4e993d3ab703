"""The trainer's configuration (shared by pretrain, distill and DF-SSM), and token-count parsing."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from ..errors import ConfigError

# Fields that may differ between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = {"out", "resume", "overwrite", "save_every", "keep_last", "log_every", "device", "time_limit",
                     "progress", "eval_every", "stop_after_steps", "plot", "fsdp",
                     "activation_checkpointing"}


def parse_count(s: str | int) -> int:
    """'102M' -> 102_000_000; accepts K, M, B/G suffixes and plain integers ('1e6' too)."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(s))
    if not m:
        raise ConfigError(f"cannot read {s!r} as a count (examples: 2000000, 2M, 102M, 1.5B)")
    mult = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


@dataclass
class TrainConfig:
    """One training run. Derived numbers (steps, tokens per step) are properties, computed for a world size."""

    out: str
    data: list[str] = field(default_factory=list)
    tokens: int = 2_000_000
    seq_len: int = 512
    micro_batch: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: str = "auto"          # auto = bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    save_every: int = 0              # steps; 0 = only at the end (and on SIGTERM/SIGINT or --time-limit)
    keep_last: int = 3
    eval_every: int = 0              # steps; 0 = about 10 evaluations per run
    eval_sequences: int = 16
    log_every: int = 10
    valid_fraction: float = 0.01
    text_field: str = "text"
    cache_dir: str | None = None
    device: str | None = None
    compile: bool = False
    fsdp: bool = False               # under torchrun: FSDP2 (fully_shard per block) instead of DDP
    activation_checkpointing: bool = False  # recompute each block in backward (less memory, ~1/3 more compute)
    time_limit: float = 0.0          # seconds; stop cleanly (checkpoint, exit 0) once exceeded, 0 = none
    stop_after_steps: int = 0        # stop cleanly after this many steps in this process (resumable), 0 = none
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        self.tokens = parse_count(self.tokens)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        for name in ("tokens", "seq_len", "micro_batch", "grad_accum", "eval_sequences", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if not (self.lr > 0):
            raise ConfigError(f"--lr must be > 0 (got {self.lr})")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"--warmup-frac must be in [0, 1) (got {self.warmup_frac})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16, fp16 or fp32 (got {self.precision!r})")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")

    # The global batch is micro_batch x grad_accum sequences whatever the number of processes: with w processes each
    # accumulates grad_accum / w micro-batches. So a run resumes on a different process count with the same
    # optimisation, and one process reproduces a multi-process run.
    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch * self.grad_accum

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_step))

    def accum_per_rank(self, world_size: int) -> int:
        if self.grad_accum % world_size:
            raise ConfigError(f"--grad-accum {self.grad_accum} must be a multiple of the number of processes "
                              f"({world_size}) so the global batch stays micro_batch x grad_accum")
        return self.grad_accum // world_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def config_differences(saved: dict, current: dict, ignore: set[str] = RESUMABLE_CHANGES) -> list[str]:
    """Names of fields whose values differ (for refusing a resume with a changed config)."""
    diffs = []
    for k in sorted(set(saved) | set(current)):
        if k in ignore:
            continue
        a, b = saved.get(k), current.get(k)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            diffs.append(f"{k}: {a!r} -> {b!r}")
    return diffs
