"""State drift: how far a compressed model's SSM states and block outputs sit from its teacher's, versus position.

The recurrence argument for ternary SSMs is about length: a weight error perturbs every step's state update
``S_t = exp(dt_t A) S_{t-1} + dt_t x_t ⊗ B_t``, and if the perturbations add up through the recurrence the student's
state walks away from the teacher's as the sequence grows; if the decay ``exp(dt_t A) < 1`` forgets them, the error
settles at a level set by the per-step error. This module measures which happens, on the same token sequences for the
teacher and each compared model:

* **state error** of layer i at position t: ``||S_model - S_teacher||_F / ||S_teacher||_F`` over the whole state
  (heads × headdim × d_state) after reading tokens 1..t;
* **block error** of layer i at position t: the same ratio for the residual stream leaving block i (over d_model).

Errors are pooled as ratios of sums: per position over the batch of sequences, per bucket over the sequences and
the positions in it (``sqrt(sum ||Δ||² / sum ||ref||²)``), so a near-zero reference state cannot blow a mean of
ratios up. Buckets are log-spaced: 1–16, 17–64, 65–256, 257–1024, 1025–2048, ... up to the sequence length.

How the states are read: *segmented prefill through the model's own cache*. The token sequence is fed in segments
whose ends are the positions to read; after each segment ``cache.ssm_states[i]`` holds layer i's exact state at
that position (the model's prefill continues from the cached state, so it equals one-token-at-a-time decoding;
``tests/test_drift.py`` checks it against ``ssd_sequential_ref``-style stepping). Block outputs come from the same
calls (``hidden_states_out``) at every position. Reading every position is the step-by-step decode; by default up
to 64 evenly spaced positions per bucket are read (all of them in the short early buckets), which keeps a
2048-token run on CPU at a few hundred model calls.

Compared models, all against the teacher:

* students given as checkpoints (a QAT student, a saved post-hoc model, ...);
* ``ptq-gG``: a post-hoc ternary copy of the teacher (``quantize_`` + ``convert``, group size G), no training;
* ``wnoise=s``: the teacher with Gaussian noise added to each quantizable weight (in_proj, out_proj), per tensor of
  RMS ``s ×`` the RMS of that tensor's ternary quantization error (``s = 1``: quantization-sized but unstructured);
* ``snoise=ε``: the teacher itself with Gaussian noise of std ``ε × RMS(S)`` (per sequence and layer) added to every
  layer's state every ``state_noise_every`` tokens (the states are read before that injection).
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .perplexity import HF_TEXT_DATASETS, read_text

# --------------------------------------------------------------------------------------------------------------
# Positions and text
# --------------------------------------------------------------------------------------------------------------

def position_buckets(max_len: int, first: int = 16, factor: int = 4) -> list[tuple[int, int]]:
    """Log-spaced 1-based inclusive position ranges covering 1..max_len: (1, 16), (17, 64), (65, 256), ..."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out, lo, hi = [], 1, first
    while lo <= max_len:
        out.append((lo, min(hi, max_len)))
        lo, hi = hi + 1, hi * factor
    return out


def read_positions(buckets: list[tuple[int, int]], per_bucket: int) -> list[int]:
    """Positions (1-based) at which states are read: every position of a bucket with at most ``per_bucket`` of them,
    else ``per_bucket`` evenly spaced ones ending at the bucket's last position. ``per_bucket = 0``: every position."""
    pos: set[int] = set()
    for lo, hi in buckets:
        n = hi - lo + 1
        if per_bucket <= 0 or n <= per_bucket:
            pos.update(range(lo, hi + 1))
        else:
            pos.update(hi - round(k * n / per_bucket) for k in range(per_bucket))
    return sorted(pos)


def token_sequences(tokenizer, text: str, max_len: int, n_seqs: int) -> torch.Tensor:
    """Token windows (n, L) of the documents of ``text`` joined by EOS (as the training data is packed).

    ``text`` may hold several documents separated by lines ``<|endoftext|>``. Takes up to ``n_seqs`` consecutive
    windows of ``max_len`` tokens; a text shorter than one window gives one window of its whole length.
    """
    from ..data.corpus import split_documents

    docs = split_documents(text)
    if not docs:
        raise DataError("the drift text is empty")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for d in docs:
        stream += tokenizer.encode(d) + ([eos] if eos is not None else [])
    need = max_len * n_seqs
    stream = stream[:need]
    if len(stream) < 2:
        raise DataError("the drift text encodes to fewer than 2 tokens")
    n = len(stream) // max_len
    if n == 0:
        return torch.tensor([stream])
    return torch.tensor(stream[: n * max_len]).view(n, max_len)


# --------------------------------------------------------------------------------------------------------------
# Compared models built from the teacher
# --------------------------------------------------------------------------------------------------------------

def _quantizable(model: nn.Module, include: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(re.search(p, n) for p in include)]


@torch.no_grad()
def ternary_error_rms(weight: torch.Tensor, group_size: int | str = 256) -> float:
    """RMS of ``W - ternary(W)`` for grouped absmean ternary quantization (``ssmquant.quant``'s definition)."""
    from ..quant.ternary import dequantize_ternary, ternary_codes_and_scales

    g = weight.shape[1] if group_size == "row" else int(group_size)
    codes, scale = ternary_codes_and_scales(weight, g)
    return float((weight.float() - dequantize_ternary(codes, scale, g)).pow(2).mean().sqrt())


@torch.no_grad()
def add_weight_noise_(model: nn.Module, scale: float, *, group_size: int | str = 256,
                      include: tuple[str, ...] | None = None, seed: int = 0) -> dict[str, float]:
    """Add N(0, (scale · rms_q)²) to each quantizable weight in place, rms_q = RMS of its ternary quantization error.

    ``include``: module-name regexes (default: ``QuantConfig``'s, in_proj and out_proj). Returns {module: noise std}.
    """
    from ..quant import QuantConfig

    include = tuple(include) if include is not None else QuantConfig().include
    gen = torch.Generator().manual_seed(seed)
    stds = {}
    for name, m in _quantizable(model, include):
        std = scale * ternary_error_rms(m.weight, group_size)
        noise = torch.randn(m.weight.shape, generator=gen) * std
        m.weight.add_(noise.to(m.weight.device, m.weight.dtype))
        stds[name] = std
    if not stds:
        raise ConfigError(f"no nn.Linear module matches {list(include)}: nothing to add noise to")
    return stds


def posthoc_ternary(model: nn.Module, group_size: int | str = 256) -> nn.Module:
    """A post-hoc ternary copy (no training): ``quantize_(copy, QuantConfig(group_size))`` then ``convert``."""
    from ..quant import QuantConfig, convert, quantize_

    m = copy.deepcopy(model)
    quantize_(m, QuantConfig(group_size=group_size))
    return convert(m).eval()


# --------------------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def state_drift(
    teacher: nn.Module,
    models: dict[str, nn.Module],
    ids: torch.Tensor,
    *,
    positions: list[int] | None = None,
    state_noise: dict[str, float] | None = None,
    state_noise_every: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Squared state and block-output errors of each model against ``teacher`` on ``ids`` (n, L).

    positions: 1-based positions at which to read the SSM states (default: all). state_noise: {model name: ε} adds
    N(0, (ε·RMS(S))²) to that model's states every ``state_noise_every`` tokens, after reading them. progress:
    a line on stderr at each power-of-two position.
    Returns {"positions": [...], "models": {name: {"state_err2", "state_ref2": (n_layer, P), "block_err2",
    "block_ref2": (n_layer, L)}}}, each summed over the n sequences (fp64 tensors).
    """
    n, L = ids.shape
    positions = sorted(set(positions or range(1, L + 1)))
    if positions[0] < 1 or positions[-1] > L:
        raise ValueError(f"positions must lie in 1..{L}")
    state_noise = state_noise or {}
    inject = set(range(state_noise_every, L + 1, state_noise_every)) if state_noise else set()
    ends = sorted(set(positions) | inject | {L})
    slot = {p: k for k, p in enumerate(positions)}
    n_layer = teacher.config.n_layer
    device = next(teacher.parameters()).device
    ids = ids.to(device)
    gens = {name: torch.Generator(device=device).manual_seed(seed + k) for k, name in enumerate(models)}

    def zeros(width):
        return torch.zeros(n_layer, width, dtype=torch.float64, device=device)

    acc = {name: {"state_err2": zeros(len(positions)), "state_ref2": zeros(len(positions)),
                  "block_err2": zeros(L), "block_ref2": zeros(L)} for name in models}
    caches = {name: m.allocate_cache(n) for name, m in models.items()}
    t_cache = teacher.allocate_cache(n)
    start = 0
    for end in ends:
        seg = ids[:, start:end]
        t_hs: list[torch.Tensor] = []
        teacher.backbone(seg, t_cache, t_hs)
        for name, m in models.items():
            hs: list[torch.Tensor] = []
            m.backbone(seg, caches[name], hs)
            a = acc[name]
            for i in range(n_layer):
                ref = t_hs[i + 1].double()                       # (n, l, d): residual leaving block i
                a["block_err2"][i, start:end] += (hs[i + 1].double() - ref).pow(2).sum(-1).sum(0)
                a["block_ref2"][i, start:end] += ref.pow(2).sum(-1).sum(0)
                if end in slot:
                    s_ref = t_cache.ssm_states[i].double()       # (n, h, p, dstate)
                    a["state_err2"][i, slot[end]] += (caches[name].ssm_states[i].double() - s_ref).pow(2).sum()
                    a["state_ref2"][i, slot[end]] += s_ref.pow(2).sum()
            eps = state_noise.get(name, 0.0)
            if eps and end in inject:
                for s in caches[name].ssm_states:
                    rms = s.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()  # per sequence
                    s.add_(torch.randn(s.shape, generator=gens[name], device=device) * (eps * rms))
        if progress and (end & (end - 1) == 0 or end == L):
            print(f"[drift] position {end}/{L}", file=sys.stderr, flush=True)
        start = end
    return {"positions": positions, "models": {k: {kk: vv.cpu() for kk, vv in v.items()} for k, v in acc.items()}}


def _ratio(err2: torch.Tensor, ref2: torch.Tensor) -> list[float]:
    return (err2 / ref2.clamp_min(1e-300)).sqrt().tolist()


def summarize_drift(raw: dict, buckets: list[tuple[int, int]]) -> dict:
    """Relative errors per layer: per bucket (pooled), per read position (states) and per position (blocks)."""
    pos = torch.tensor(raw["positions"])
    out = {}
    for name, a in raw["models"].items():
        n_layer = a["block_err2"].shape[0]
        r: dict = {"state": {"per_bucket": [], "per_position": []}, "block": {"per_bucket": [], "per_position": []}}
        for i in range(n_layer):
            sb, bb = [], []
            for lo, hi in buckets:
                m = (pos >= lo) & (pos <= hi)
                sb.append(_ratio(a["state_err2"][i, m].sum(), a["state_ref2"][i, m].sum()) if m.any() else None)
                bb.append(_ratio(a["block_err2"][i, lo - 1:hi].sum(), a["block_ref2"][i, lo - 1:hi].sum()))
            r["state"]["per_bucket"].append(sb)
            r["block"]["per_bucket"].append(bb)
            r["state"]["per_position"].append(_ratio(a["state_err2"][i], a["state_ref2"][i]))
            r["block"]["per_position"].append(_ratio(a["block_err2"][i], a["block_ref2"][i]))
        for kind in ("state", "block"):
            # Growth = last bucket / first bucket: > 1 means the error accumulates with length.
            r[kind]["growth"] = [(b[-1] / b[0]) if b[0] else None for b in r[kind]["per_bucket"]]
        out[name] = r
    return out


# --------------------------------------------------------------------------------------------------------------
# Command entry, report
# --------------------------------------------------------------------------------------------------------------

@dataclass
class DriftConfig:
    """``ssmquant drift``: teacher, compared models, text, lengths and where results go."""

    teacher: str | None = None  # checkpoint dir / Hub id; None = the bundled teacher
    students: list[str] = field(default_factory=list)  # checkpoints compared with the teacher
    posthoc_group_size: int | str | None = 256  # add a post-hoc ternary copy of the teacher; None = don't
    noise_scales: list[float] = field(default_factory=lambda: [1.0])  # weight noise, × ternary error RMS
    noise_group_size: int | str = 256  # group size of the ternary error that sizes the weight noise
    state_noise: list[float] = field(default_factory=list)  # relative state noise ε
    state_noise_every: int = 16
    text: str | None = None  # text file; None = the bundled held-out sample
    tokenizer: str | None = None  # default: the teacher's
    max_len: int = 2048
    n_seqs: int = 8
    positions_per_bucket: int = 64  # 0 = read the state at every position
    seed: int = 0
    device: str | None = None
    out_dir: str | None = None
    plot: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.max_len < 1 or self.n_seqs < 1:
            raise ConfigError("--max-len and --n-seqs must be >= 1")
        if self.state_noise_every < 1:
            raise ConfigError("--state-noise-every must be >= 1")
        if any(s < 0 for s in list(self.noise_scales) + list(self.state_noise)):
            raise ConfigError("noise scales must be >= 0")
        for g in (self.posthoc_group_size, self.noise_group_size):
            if g is not None and g not in (32, 64, 128, 256, "row"):
                raise ConfigError(f"group size {g!r}: use one of 32, 64, 128, 256 or row")
        if self.text is not None and not (Path(self.text).is_file() or self.text in HF_TEXT_DATASETS
                                          or self.text.startswith("hf:")):
            raise DataError(f"--text {self.text}: no such file")


def run_drift(cfg: DriftConfig) -> dict:
    """Load the models named in ``cfg``, measure drift, write drift.json / drift.png / drift_config.json, print."""
    import ssmquant

    from ..io.bundled import SAMPLE_HELDOUT, TEACHER_DIR

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher_src = cfg.teacher or str(TEACHER_DIR)
    teacher = ssmquant.load_model(teacher_src, dtype="fp32").to(device).eval()
    tok = ssmquant.load_tokenizer(cfg.tokenizer or teacher_src)
    text = read_text(cfg.text) if cfg.text else SAMPLE_HELDOUT.read_text(encoding="utf-8")
    ids = token_sequences(tok, text, cfg.max_len, cfg.n_seqs)
    if int(ids.max()) >= teacher.config.padded_vocab_size:
        raise ConfigError(f"token ids reach {int(ids.max())} but the teacher has {teacher.config.padded_vocab_size} "
                          "embedding rows: pass the teacher's --tokenizer")

    models: dict[str, nn.Module] = {}
    for s in cfg.students:
        m = ssmquant.load_model(s, dtype="fp32").to(device).eval()
        if m.config.n_layer != teacher.config.n_layer or m.config.d_model != teacher.config.d_model:
            raise ConfigError(f"{s}: {m.config.n_layer} layers × d_model {m.config.d_model} does not match the "
                              f"teacher's {teacher.config.n_layer} × {teacher.config.d_model}")
        models[Path(s).name or s] = m
    if cfg.posthoc_group_size is not None:
        models[f"ptq-g{cfg.posthoc_group_size}"] = posthoc_ternary(teacher, cfg.posthoc_group_size)
    for k, s in enumerate(cfg.noise_scales):
        m = copy.deepcopy(teacher)
        add_weight_noise_(m, s, group_size=cfg.noise_group_size, seed=cfg.seed + 1000 + k)
        models[f"wnoise={s:g}"] = m
    state_noise = {}
    for e in cfg.state_noise:
        models[f"snoise={e:g}"] = teacher  # same weights; its own cache receives the noise
        state_noise[f"snoise={e:g}"] = e
    if not models:
        raise ConfigError("nothing to compare: give --student, or keep the post-hoc copy or a noise experiment")

    L = ids.shape[1]
    buckets = position_buckets(L)
    positions = read_positions(buckets, cfg.positions_per_bucket)
    raw = state_drift(teacher, models, ids, positions=positions, state_noise=state_noise,
                      state_noise_every=cfg.state_noise_every, seed=cfg.seed, progress=cfg.progress)
    results = {"config": asdict(cfg), "teacher": teacher_src, "n_seqs": int(ids.shape[0]), "seq_len": L,
               "buckets": buckets, "positions": positions, "models": summarize_drift(raw, buckets)}
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "drift.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "drift_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        if cfg.plot:
            plot_drift(results, out / "drift.png")
    print(format_drift_table(results))
    return results


def format_drift_table(results: dict) -> str:
    """Per model and layer: the relative state and block errors in each position bucket, and last/first growth."""
    buckets = results["buckets"]
    heads = [f"{lo}-{hi}" for lo, hi in buckets]
    lines = [(f"relative error vs teacher ({results['n_seqs']} sequences × {results['seq_len']} tokens; "
              "columns: position buckets)"),
             f"{'model':<16} {'layer':>5} {'what':<6} " + " ".join(f"{h:>10}" for h in heads) + f" {'growth':>7}"]
    for name, r in results["models"].items():
        for kind in ("state", "block"):
            for i, row in enumerate(r[kind]["per_bucket"]):
                cells = " ".join(f"{v:>10.4g}" if v is not None else f"{'-':>10}" for v in row)
                g = r[kind]["growth"][i]
                lines.append(f"{name:<16} {i:>5} {kind:<6} {cells} {g:>7.3g}" if g is not None else
                             f"{name:<16} {i:>5} {kind:<6} {cells} {'-':>7}")
    return "\n".join(lines)


def plot_drift(results: dict, path: str | Path) -> Path:
    """One column per model, rows: state error and block-output error vs position (log-log), one curve per layer;
    thin lines per read position, markers per bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    buckets = results["buckets"]
    mids = [math.sqrt(lo * hi) for lo, hi in buckets]
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7), squeeze=False, sharex=True)
    for c, name in enumerate(names):
        r = results["models"][name]
        for row, kind in enumerate(("state", "block")):
            ax = axes[row][c]
            xs = results["positions"] if kind == "state" else list(range(1, results["seq_len"] + 1))
            for i, (per_pos, per_b) in enumerate(zip(r[kind]["per_position"], r[kind]["per_bucket"])):
                line, = ax.plot(xs, per_pos, lw=0.6, alpha=0.45)
                pts = [(x, v) for x, v in zip(mids, per_b) if v]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=line.get_color(), ms=4,
                        label=f"layer {i}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.25)
            ax.set_title(f"{name}: {'SSM state' if kind == 'state' else 'block output'}", fontsize=9)
            if c == 0:
                ax.set_ylabel("‖Δ‖ / ‖teacher‖")
            if row == 1:
                ax.set_xlabel("position (tokens read)")
        axes[0][c].legend(fontsize=7)
    fig.suptitle(f"drift vs teacher ({results['n_seqs']} × {results['seq_len']} tokens)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
