"""Ternary QAT with knowledge distillation (the Ternary Mamba method), as a task of the shared trainer.

How this works: the student starts as a copy of the frozen teacher; ``quantize_`` swaps its in_proj / out_proj
(by default) for ternary fake-quant modules (codes in {−1, 0, +1} × a per-group scale, straight-through
gradients, activations 16-bit). Each step both models see the same batch; the loss is the temperature-scaled
KL(teacher ‖ student) over the full vocabulary (``losses.kd_loss``, chunked), optionally mixed with cross-entropy
on the data and a per-layer hidden-state match. A zero-ratio monitor (``quant.monitor``) measures the fraction of
zero codes per layer, detects collapse and applies the configured guard. At the end the student is converted to
codes + scales (bit-exact with what training saw) and saved packed; the summary compares teacher, student and
plain post-hoc ternary perplexity on held-out text.

The paper (arXiv 2606.18114) gives no hyper-parameters; ours are in ``DistillConfig`` and docs/recipes.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..io.checkpoints import load_model
from ..quant import (MonitorConfig, QuantConfig, ZeroRatioMonitor, config_dict, convert, quant_param_groups,
                     quantize_, ternary_modules)
from ..quant.monitor import CollapseEvent
from .losses import hidden_mse, kd_loss
from .tasks import LMTask, default_param_groups, lm_cross_entropy
from .teacher import TeacherForward


@dataclass
class DistillConfig:
    """What is distilled into what (the trainer's own settings are in ``TrainConfig``)."""

    teacher: str
    method: str = "ternary"                # or "dfssm": 1-bit scaffold + int8 low-rank correction
    rank: int = 32                         # dfssm: rank of the correction U·V
    group_size: int | str = 128
    scale_mode: str = "learnable"
    scale_lr: float | None = None          # None: the weights' learning rate
    include: tuple[str, ...] = (r"\.in_proj$", r"\.out_proj$")
    exclude: tuple[str, ...] = ()
    temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    kd_max_logits: int = 2**25
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    packing: str = "2bit"
    report_tokens: int = 0                 # held-out tokens for the final comparison; 0 = the whole sample
    report_text: str | None = None         # held-out text for the final comparison (default: bundled sample)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (got {self.temperature})")
        if self.kd_weight < 0 or self.ce_weight < 0 or self.hidden_weight < 0:
            raise ConfigError("--kd-weight, --ce-weight and --hidden-weight must be >= 0")
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ConfigError("--kd-weight and --ce-weight are both 0: nothing to train on")
        if self.packing not in ("2bit", "1.6bit"):
            raise ConfigError(f"--packing must be 2bit or 1.6bit (got {self.packing!r})")
        if self.method not in ("ternary", "dfssm"):
            raise ConfigError(f"--method must be ternary or dfssm (got {self.method!r})")
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        self.quant_config()  # validate early

    def quant_config(self):
        """``QuantConfig`` (ternary) or ``DFSSMConfig`` (dfssm)."""
        if self.method == "dfssm":
            from ..quant.binary_lowrank import DFSSMConfig

            if self.scale_mode == "ema":
                raise ConfigError("--method dfssm supports --scale-mode fixed or learnable, not ema")
            return DFSSMConfig(group_size=self.group_size, rank=self.rank, scale_mode=self.scale_mode,
                               include=self.include, exclude=self.exclude)
        return QuantConfig(group_size=self.group_size, scale_mode=self.scale_mode, include=self.include,
                           exclude=self.exclude)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["monitor"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["monitor"].items()}
        return d


def check_tokenizer_matches(tokenizer, teacher_dir: str, padded_vocab: int) -> None:
    """The data must be tokenized the way the teacher was trained; refuse a mismatch by name."""
    from ..io.tokenizer import load_tokenizer

    if tokenizer.vocab_size > padded_vocab:
        raise DataError(f"tokenizer has {tokenizer.vocab_size} tokens but the teacher's embedding only "
                        f"{padded_vocab} rows: this tokenizer does not belong to the teacher")
    own = Path(teacher_dir) / "tokenizer.json"
    if own.is_file():
        t_own = load_tokenizer(own, fallback=None)
        if t_own.fingerprint != tokenizer.fingerprint:
            raise DataError(f"--tokenizer {tokenizer.source} differs from the teacher's own {own}; "
                            "teacher and student must share one tokenizer")


def post_hoc_ternary(teacher, qcfg: QuantConfig):
    """Round-to-nearest ternary copy of ``teacher`` (absmean scales, no training): the baseline QAT must beat."""
    base = copy.deepcopy(teacher).float()
    quantize_(base, dataclasses.replace(qcfg, scale_mode="fixed"))
    return convert(base).eval()


def post_hoc(teacher, qcfg):
    """The untrained student of either method: RTN ternary, or DF-SSM with SVD-initialised factors."""
    base = copy.deepcopy(teacher).float()
    _prepare(base, dataclasses.replace(qcfg, scale_mode="fixed"))
    return _convert(base, qcfg).eval()


def _prepare(model, qcfg) -> None:
    if isinstance(qcfg, QuantConfig):
        quantize_(model, qcfg)
    else:
        from ..quant.binary_lowrank import dfssm_quantize_

        dfssm_quantize_(model, qcfg)


def _convert(model, qcfg):
    if isinstance(qcfg, QuantConfig):
        return convert(model)
    from ..quant.binary_lowrank import dfssm_convert

    return dfssm_convert(model)


def _quant_info(qcfg) -> dict:
    if isinstance(qcfg, QuantConfig):
        return config_dict(qcfg)
    from ..quant.binary_lowrank import dfssm_config_dict

    return dfssm_config_dict(qcfg)


class DistillTask(LMTask):
    name = "distill"

    def __init__(self, cfg: DistillConfig, tokenizer, *, teacher_dir: str | None = None):
        super().__init__(tokenizer)
        self.cfg = cfg
        self.teacher_dir = teacher_dir or cfg.teacher
        self.qcfg = cfg.quant_config()
        self.monitor = ZeroRatioMonitor(cfg.monitor)
        self.teacher = None
        self._teacher_fwd: TeacherForward | None = None
        self._pending_metrics: dict = {}
        self._teacher_val: dict | None = None

    def describe(self) -> dict:
        return {**super().describe(), "teacher": str(self.cfg.teacher), "distill": self.cfg.to_dict(),
                "quant": _quant_info(self.qcfg)}

    # ---- models ----
    def build_model(self, device):
        # The student starts from the checkpoint's own values in fp32 (latent weights and scales stay fp32;
        # autocast does the 16-bit compute). The frozen teacher runs in bf16 on GPU (half the memory and time);
        # load_model keeps its A_log, D and dt_bias in fp32 either way.
        student = load_model(self.teacher_dir, device=device, dtype=torch.float32).train().requires_grad_(True)
        teacher = load_model(self.teacher_dir, device=device,
                             dtype=torch.bfloat16 if device.type == "cuda" else None)
        check_tokenizer_matches(self.tokenizer, self.teacher_dir, teacher.config.padded_vocab_size)
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        _prepare(student, self.qcfg)
        # Replay the blocks from CUDA graphs (model/graphs.py) on a single GPU; sharded parameters move, so not
        # under torch.distributed.
        student.backbone.cuda_graphs = device.type == "cuda" and not torch.distributed.is_initialized()
        if not any(True for _ in ternary_modules(student)) and self.cfg.method == "ternary":
            raise ConfigError(f"no module matches --include {list(self.cfg.include)}: nothing would be quantized")
        return student.train()

    def param_groups(self, model, cfg) -> list[dict]:
        if self.cfg.method == "dfssm":
            from ..quant.binary_lowrank import dfssm_param_groups

            return dfssm_param_groups(model, cfg.lr, cfg.weight_decay, scale_lr=self.cfg.scale_lr)
        groups = quant_param_groups(model, cfg.lr, cfg.weight_decay, self.cfg.scale_lr)
        # Split the weights group as for pretraining: no decay on vectors and SSM parameters.
        scales = [g for g in groups if g["name"] == "ternary_scales"]
        skip = {id(p) for g in scales for p in g["params"]}
        return default_param_groups(model, cfg.weight_decay, skip=skip) + scales

    # ---- loss ----
    def loss(self, model, x, y):
        cfg = self.cfg
        s_states: list | None = [] if cfg.hidden_weight else None
        t_states: list | None = [] if cfg.hidden_weight else None
        if t_states is None:
            # The teacher's forward replays a CUDA graph on GPU (train/teacher.py): eager launches cost more CPU
            # time than the GPU spends on a 1.3B teacher.
            if self._teacher_fwd is None or self._teacher_fwd.teacher is not self.teacher:
                self._teacher_fwd = TeacherForward(self.teacher)
            ht = self._teacher_fwd(x)
        else:
            with torch.no_grad():
                ht = self.teacher(x, return_hidden=True, hidden_states_out=t_states)

        def head_loss(hs, head):
            return kd_loss(hs, head, ht, self.teacher.lm_head, y, temperature=cfg.temperature,
                           kd_weight=cfg.kd_weight, ce_weight=cfg.ce_weight, max_logits=cfg.kd_max_logits)

        # The loss is computed inside the student's forward (head_fn): DDP sees it as the output, FSDP has the
        # head unsharded there.
        loss, parts = model(x, hidden_states_out=s_states, head_fn=head_loss)
        if cfg.hidden_weight:
            h = hidden_mse(s_states, t_states)
            loss = loss + cfg.hidden_weight * h
            parts["hidden_mse"] = float(h)
        core = getattr(model, "module", model)   # DDP / compile wrappers
        core = getattr(core, "_orig_mod", core)
        pen = self.monitor.penalty(core)
        if pen is not None:
            loss = loss + pen
            parts["zero_penalty"] = float(pen)
        return loss, parts

    def after_step(self, model, step: int) -> None:
        m = self.monitor.step(model, step)
        if m:
            self._pending_metrics = m
        self.monitor.apply_policy(model, step)

    def step_metrics(self, model, step: int) -> dict:
        out, self._pending_metrics = self._pending_metrics, {}
        return out

    def state_dict(self) -> dict:
        return {"history": {k: [list(map(float, e)) for e in v] for k, v in self.monitor.history.items()},
                "events": [dataclasses.astuple(e) for e in self.monitor.events]}

    def load_state_dict(self, state: dict) -> None:
        from collections import deque

        w = self.monitor.config.window
        self.monitor.history = {k: deque([(int(s), z) for s, z in v], maxlen=w)
                                for k, v in state.get("history", {}).items()}
        self.monitor.events = [CollapseEvent(*e) for e in state.get("events", [])]

    # ---- evaluation ----
    def evaluate(self, model, x, y, batch_size: int = 8) -> dict:
        res = super().evaluate(model, x, y, batch_size)
        kl_sum, n = 0.0, 0
        t_loss = 0.0
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            ht = self.teacher(xb, return_hidden=True)
            _, parts = model(xb, head_fn=lambda hs, head: kd_loss(hs, head, ht, self.teacher.lm_head, yb))
            kl_sum += parts["kl"] * yb.numel()
            if self._teacher_val is None:
                t_loss += float(lm_cross_entropy(self.teacher(xb), yb)) * yb.numel()
            n += yb.numel()
        if self._teacher_val is None:
            self._teacher_val = {"teacher_val_loss": t_loss / n, "teacher_val_ppl": math.exp(t_loss / n)}
        return {**res, "val_kl": kl_sum / n, **self._teacher_val}

    # ---- output ----
    def save_final(self, model, directory: Path) -> None:
        packed = _convert(copy.deepcopy(model).eval(), self.qcfg)
        if self.cfg.method == "dfssm":
            from ..quant.dfssm_io import save_dfssm_model

            save_dfssm_model(packed, directory, tokenizer=self.tokenizer, quant_info=_quant_info(self.qcfg))
            return
        save_student(packed, directory, tokenizer=self.tokenizer, quant_info=config_dict(self.qcfg),
                     packing=self.cfg.packing)

    def final_report(self, model, out: Path) -> dict:
        """Held-out perplexity of teacher, student and plain post-hoc ternary; zero ratio; size."""
        from ..eval.perplexity import perplexity
        from ..io.bundled import SAMPLE_HELDOUT

        text = self.cfg.report_text or str(SAMPLE_HELDOUT)
        device = next(model.parameters()).device
        # Non-overlapping 512-token windows (lm-eval's rolling style): each token is computed once per model.
        kw = dict(context=512, stride=512, batch_size=8, device=device,
                  max_tokens=self.cfg.report_tokens or None)
        student = _convert(copy.deepcopy(model).eval(), self.qcfg)
        # The comparison runs in fp32 for all three models, from the checkpoint's own values.
        teacher = load_model(self.teacher_dir, device=device, dtype=torch.float32)
        baseline = post_hoc(teacher, self.qcfg).to(device)
        with torch.no_grad():
            rep = {"report_text": text,
                   "teacher_ppl": perplexity(teacher, self.tokenizer, text, **kw)["ppl"],
                   "student_ppl": perplexity(student, self.tokenizer, text, **kw)["ppl"],
                   "post_hoc_ppl": perplexity(baseline, self.tokenizer, text, **kw)["ppl"]}
        stats = self.monitor.measure(model)
        numel = sum(n for _, _, n in stats.values())
        rep["zero_frac"] = sum(z * n for z, _, n in stats.values()) / max(1, numel)
        rep["post_hoc_zero_frac"] = packed_zero_fraction(baseline)
        rep["collapse_events"] = len(self.monitor.events)
        if self.cfg.method == "dfssm":
            from ..quant.binary_lowrank import dfssm_size_report

            rep["dfssm_size"] = dfssm_size_report(student, rank=self.cfg.rank, group_size=self.qcfg.group_size,
                                                  include=self.qcfg.include)
        else:
            from ..quant.size import size_report

            rep["size"] = size_report(student)
        return rep

    def plot_groups(self) -> dict[str, list[str]]:
        g = super().plot_groups()
        g["loss"] = ["loss", "val_loss", "teacher_val_loss"]
        g["kl"] = ["kl", "val_kl"]
        g["zero_frac"] = ["quant/zero_frac"] + [f"quant/zero_frac/{n}" for n in self.monitor.history]
        g["scale_ratio"] = ["quant/scale_ratio_mean"]
        return g


def packed_zero_fraction(model) -> float:
    """Fraction of zero codes over all packed ternary modules of a converted model (0 if there are none)."""
    zeros, total = 0, 0
    for m in model.modules():
        codes = getattr(m, "codes", None)
        if isinstance(codes, torch.Tensor):
            zeros += int((codes == 0).sum())
            total += codes.numel()
    return zeros / max(1, total)


def save_student(packed_model, directory: Path, *, tokenizer, quant_info: dict, packing: str) -> None:
    """Save a converted student packed (2-bit / 1.6-bit codes + fp16 scales)."""
    from ..quant.packed_io import save_packed_model

    save_packed_model(packed_model, directory, tokenizer=tokenizer, packing=packing, quant_info=quant_info)


def distill(dcfg: DistillConfig, tcfg, *, tokenizer: str | None = None) -> dict:
    """Run ternary QAT + KD: ``dcfg`` says what, ``tcfg`` (``TrainConfig``) how long and how fast."""
    from ..io.checkpoints import resolve_checkpoint
    from ..io.tokenizer import load_tokenizer
    from .trainer import train

    teacher_dir = str(resolve_checkpoint(dcfg.teacher).directory)
    tok = load_tokenizer(tokenizer or teacher_dir)
    return train(DistillTask(dcfg, tok, teacher_dir=teacher_dir), tcfg)


def format_distill_summary(s: dict) -> str:
    """The lines ``ssmquant distill`` prints at the end."""
    if "student_ppl" not in s:
        return ""
    lines = [f"held-out perplexity ({s.get('report_text')}):",
             f"  teacher            {s['teacher_ppl']:10.2f}",
             f"  QAT + KD student   {s['student_ppl']:10.2f}   ({s['student_ppl'] / s['teacher_ppl']:.3f} x teacher)",
             f"  post-hoc (no KD)   {s['post_hoc_ppl']:10.2f}   ({s['post_hoc_ppl'] / s['teacher_ppl']:.3f} x teacher)",
             f"zero fraction of codes: student {s['zero_frac']:.3f}, post-hoc {s['post_hoc_zero_frac']:.3f}; "
             f"collapse events: {s['collapse_events']}"]
    if "size" in s:
        from ..quant.size import format_size_report

        lines.append(format_size_report(s["size"]))
    if "dfssm_size" in s:
        lines.append("DF-SSM size: " + ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in s["dfssm_size"].items() if not isinstance(v, dict)))
    return "\n".join(lines)
