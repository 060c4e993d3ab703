"""Zero-ratio monitor: watch ternary layers for collapse to all-zero codes, and guard against it.

How this works
--------------
A ternary weight is zero where ``|w| < s / 2``. If a scale drifts up relative to its group's mean |w| (a learnable
scale pushed by LSQ, weight decay shrinking the latents under a slow EMA, ...), the fraction of zero codes rises
and the layer's output fades; past a point the student cannot recover. For Gaussian-like weights the absmean
scale gives about 31% zeros, so a layer far above that is suspect.

The trainer calls three methods:

    metrics = monitor.step(model, step)      # every step; measures every ``every_n_steps``, returns {} otherwise
    loss = loss + (monitor.penalty(model) or 0)   # before backward; None unless "regularize" is on
    monitor.apply_policy(model, step)        # after optimizer.step()

``step`` measures, per ternary layer, the zero fraction of the codes the forward uses and the mean over groups of
``scale / mean|w|``; keeps a short history; and records a :class:`CollapseEvent` when a layer's zero fraction is
above ``max_zero_frac`` or its least-squares trend over the last ``window`` measurements rises faster than
``max_rise_per_kstep`` (zero fraction per 1000 steps). Policies (any combination):

* ``warn``: log each event.
* ``clamp``: every call, clamp learnable/EMA scales into ``[a, b] * mean|w|`` of their group.
* ``reinit``: on an event, reset the layer's drifted groups (zero fraction above what the absmean scale would give,
  plus ``reinit_margin``) to absmean. The optimizer's moments for those scales are kept.
* ``regularize``: ``penalty`` returns ``weight * mean_layers(relu(soft_zero_frac - target)**2)`` where the soft zero
  fraction replaces the step ``|v| < 1/2`` (``v = w/s``) by ``sigmoid((1/2 - |v|) / temperature)``, differentiable in
  the latent weights and learnable scales. Rows are subsampled (``penalty_max_rows`` per layer) to bound memory.
* ``freeze``: learnable scales get ``requires_grad=False`` before ``freeze_steps`` and ``True`` from then on, so
  early, noisy LSQ gradients cannot push them (the optimizer must hold the scales from the start:
  ``api.quant_param_groups`` includes them whatever their ``requires_grad``).

Fixed-mode scales are the absmean by definition, so clamp/reinit/freeze leave them alone; the monitor still
measures them (their zero fraction moves only with the weight distribution).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import _TernaryWeight
from .ternary import _grouped, ternary_codes_and_scales

log = logging.getLogger(__name__)

POLICIES = ("warn", "clamp", "reinit", "regularize", "freeze")


@dataclass
class MonitorConfig:
    """Collapse detection thresholds and guard policies (see the module docstring)."""

    every_n_steps: int = 100
    max_zero_frac: float = 0.6
    max_rise_per_kstep: float = 0.1
    window: int = 5
    policies: tuple[str, ...] = ("warn",)
    clamp_range: tuple[float, float] = (0.5, 2.0)
    reinit_margin: float = 0.05
    freeze_steps: int = 0
    penalty_weight: float = 1.0
    penalty_target: float = 0.5
    penalty_temperature: float = 0.05
    penalty_max_rows: int | None = 256
    per_layer_metrics: bool = True

    def __post_init__(self):
        self.policies, self.clamp_range = tuple(self.policies), tuple(self.clamp_range)
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ConfigError(f"MonitorConfig.policies: unknown {unknown}; choose from {list(POLICIES)}")
        if self.every_n_steps < 1 or self.window < 2:
            raise ConfigError("MonitorConfig: every_n_steps must be >= 1 and window >= 2 (a trend needs two points)")
        if not 0.0 < self.max_zero_frac <= 1.0 or not 0.0 <= self.penalty_target < 1.0:
            raise ConfigError("MonitorConfig: max_zero_frac must lie in (0, 1] and penalty_target in [0, 1)")
        a, b = self.clamp_range
        if not 0.0 < a <= 1.0 <= b:
            raise ConfigError(f"MonitorConfig.clamp_range={self.clamp_range}: need 0 < a <= 1 <= b")
        if "freeze" in self.policies and self.freeze_steps <= 0:
            raise ConfigError("MonitorConfig: policy 'freeze' needs freeze_steps > 0")
        if self.penalty_temperature <= 0.0:
            raise ConfigError("MonitorConfig.penalty_temperature must be positive")


@dataclass
class CollapseEvent:
    step: int
    layer: str
    reason: str  # "zero_frac" (above max_zero_frac) or "rising" (trend above max_rise_per_kstep)
    zero_frac: float
    rise_per_kstep: float


def _ternary_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _TernaryWeight)]


@torch.no_grad()
def group_zero_fraction(module: _TernaryWeight, scale: Tensor | None = None) -> Tensor:
    """``(r, n)`` fraction of zero codes per group, with the module's own scale or ``scale`` (None: its own)."""
    s = module.effective_scale() if scale is None else scale
    codes, _ = ternary_codes_and_scales(module.weight, module.group_size, s, scale_dtype=module.scale_dtype,
                                        floor=module.scale_floor)
    return (_grouped(codes, module.group_size) == 0).float().mean(dim=-1)


def _slope_per_kstep(points) -> float:
    """Least-squares slope of (step, zero_frac) points, per 1000 steps; 0 with fewer than two points."""
    if len(points) < 2:
        return 0.0
    steps = torch.tensor([p[0] for p in points], dtype=torch.float64)
    zf = torch.tensor([p[1] for p in points], dtype=torch.float64)
    ds = steps - steps.mean()
    var = (ds * ds).sum()
    return 0.0 if var == 0 else float((ds * (zf - zf.mean())).sum() / var) * 1000.0


class ZeroRatioMonitor:
    """Measures zero fractions and scale ratios, detects collapse, applies the configured guards."""

    def __init__(self, config: MonitorConfig | None = None):
        self.config = config or MonitorConfig()
        self.history: dict[str, deque] = {}
        self.events: list[CollapseEvent] = []
        self._events_step: int | None = None
        self._step_events: list[CollapseEvent] = []

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, tuple[float, float, int]]:
        """Per layer ``(zero_frac, mean scale/absmean, numel)``, from exactly the codes the forward uses."""
        out = {}
        for name, m in _ternary_modules(model):
            zf = group_zero_fraction(m).mean().item()
            ratio = (m.effective_scale() / m.absmean()).mean().item()
            out[name] = (zf, ratio, m.weight.numel())
        return out

    def step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Measure and detect on every ``every_n_steps``-th step; returns metrics for metrics.jsonl ({} otherwise)."""
        cfg = self.config
        if step % cfg.every_n_steps:
            return {}
        stats = self.measure(model)
        metrics: dict[str, float] = {}
        self._events_step, self._step_events = step, []
        rises = []
        for name, (zf, ratio, _) in stats.items():
            hist = self.history.setdefault(name, deque(maxlen=cfg.window))
            hist.append((step, zf))
            rise = _slope_per_kstep(hist)
            rises.append(rise)
            if zf > cfg.max_zero_frac or rise > cfg.max_rise_per_kstep:
                reason = "zero_frac" if zf > cfg.max_zero_frac else "rising"
                self._step_events.append(CollapseEvent(step, name, reason, zf, rise))
            if cfg.per_layer_metrics:
                metrics[f"quant/zero_frac/{name}"] = zf
                metrics[f"quant/scale_ratio/{name}"] = ratio
        if stats:
            numel = sum(n for _, _, n in stats.values())
            metrics["quant/zero_frac"] = sum(zf * n for zf, _, n in stats.values()) / numel
            metrics["quant/zero_frac_max"] = max(zf for zf, _, _ in stats.values())
            metrics["quant/scale_ratio_mean"] = sum(r for _, r, _ in stats.values()) / len(stats)
            metrics["quant/zero_frac_rise_per_kstep_max"] = max(rises)
        metrics["quant/collapse_events"] = float(len(self._step_events))
        self.events.extend(self._step_events)
        if "warn" in cfg.policies:
            # Once per layer: later events of the same layer are counted in the metrics, not repeated on screen.
            warned = {e.layer for e in self.events[: len(self.events) - len(self._step_events)]}
            for ev in self._step_events:
                if ev.layer in warned:
                    continue
                warned.add(ev.layer)
                log.warning("step %d: ternary layer %s may be collapsing (%s): zero fraction %.3f, rising %.3f per "
                            "1k steps (further events of this layer: see quant/collapse_events in metrics.jsonl)",
                            ev.step, ev.layer, ev.reason, ev.zero_frac, ev.rise_per_kstep)
        return metrics

    def penalty(self, model: nn.Module) -> Tensor | None:
        """Differentiable excess-zeros penalty (policy ``regularize``), or None when that policy is off."""
        cfg = self.config
        if "regularize" not in cfg.policies:
            return None
        terms = []
        for _, m in _ternary_modules(model):
            w, s = m.weight.float(), m.effective_scale()  # (r, c), (r, n)
            if cfg.penalty_max_rows is not None and w.shape[0] > cfg.penalty_max_rows:
                rows = torch.randperm(w.shape[0], device=w.device)[: cfg.penalty_max_rows]
                w, s = w[rows], s[rows]
            v = _grouped(w, m.group_size) / s.unsqueeze(-1)  # (r', n, G)
            soft_zero_frac = torch.sigmoid((0.5 - v.abs()) / cfg.penalty_temperature).mean()
            terms.append(torch.relu(soft_zero_frac - cfg.penalty_target) ** 2)
        if not terms:
            return None
        return cfg.penalty_weight * torch.stack(terms).mean()

    @torch.no_grad()
    def apply_policy(self, model: nn.Module, step: int) -> None:
        """Apply freeze / clamp every call and reinit for the events detected at this ``step``."""
        cfg = self.config
        events = {ev.layer for ev in self._step_events} if self._events_step == step else set()
        for name, m in _ternary_modules(model):
            if m.scale is None:  # fixed mode: the scale is the absmean by definition
                continue
            if "freeze" in cfg.policies and isinstance(m.scale, nn.Parameter):
                m.scale.requires_grad_(step >= cfg.freeze_steps)
            if "reinit" in cfg.policies and name in events:
                absmean = m.absmean()
                drifted = group_zero_fraction(m) > group_zero_fraction(m, absmean) + cfg.reinit_margin
                m.scale[drifted] = absmean[drifted]
                log.warning("step %d: reinitialised %d/%d scale groups of %s to absmean", step,
                            int(drifted.sum()), drifted.numel(), name)
            if "clamp" in cfg.policies:
                absmean = m.absmean()
                a, b = cfg.clamp_range
                m.scale.copy_(torch.clamp(m.scale, absmean * a, absmean * b))
