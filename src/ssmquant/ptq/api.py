"""``ssmquant ptq``: post-hoc (no training) quantization of a Mamba-2 checkpoint into a model directory.

    from ssmquant.ptq import PTQConfig, ptq
    report = ptq(PTQConfig(model="./teacher", method="gptq", out="runs/gptq", group_size=256))

Methods (each module is one file of this package; docs/ptq_dfssm.md has the definitions and results):

=============  ===========================================================  ======================================
method         what                                                         written as
=============  ===========================================================  ======================================
rtn            absmean round-to-nearest (``train.distill.post_hoc_ternary``)  packed ternary (``save_packed_model``)
rtn-search     per-group scale grid search (``rounding.py``)                packed ternary
js-shrink      James–Stein shrinkage of group scales (``rounding.py``)      packed ternary
gptq           GPTQ with error feedback, sequential inputs, optional QEP    packed ternary
hg-gsq         Hessian-guided Gumbel-Softmax rounding (``hggsq.py``)        packed ternary
lrec           RTN + rank-k SVD correction of the error (``lrec.py``)       dense HF dir + ssmquant_ptq.json
=============  ===========================================================  ======================================

Calibration (gptq, hg-gsq) runs layer by layer in forward order; each module's inputs come from the model whose
earlier modules are already quantized (error propagation), so a layer is fitted to the inputs it will see.
Every output directory loads with ``ssmquant.load_model``; ``ptq_report.json`` beside it holds the resolved config,
per-module errors and timings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.layers import PackedTernaryLinear
from ..quant.ternary import dequantize_ternary
from .calib import calibration_batches, input_stats
from .gptq import gptq_ternary, qep_target
from .hggsq import hessian_loss, hggsq_ternary
from .lrec import FACTOR_DTYPES, LowRankCorrectedLinear, factor_bytes, lrec_factors
from .rounding import default_grid, grid_search_ternary, js_shrink_ternary, rtn_ternary

METHODS = ("rtn", "rtn-search", "lrec", "gptq", "js-shrink", "hg-gsq")
CALIBRATED = ("gptq", "hg-gsq")


@dataclass
class PTQConfig:
    """One post-hoc quantization run. ``model``: checkpoint dir or Hub id; ``out``: directory to write."""

    model: str
    method: str
    out: str
    group_size: int = 256
    include: tuple[str, ...] = (r"\.in_proj$", r"\.out_proj$")
    packing: str = "2bit"
    # rtn-search
    grid: tuple[float, float, int] = (0.5, 2.0, 31)
    # js-shrink
    shrink: float | None = None              # None: the data-driven James–Stein factor
    shrink_target: str = "layer"
    # lrec
    rank: int = 32
    factor_dtype: str = "fp16"
    # gptq / hg-gsq calibration
    calib_data: str | None = None            # None: the bundled training sample
    calib_seqs: int = 128
    calib_len: int = 256
    calib_batch: int = 16
    damp: float = 0.01
    qep_alpha: float = 0.0
    gsq_steps: int = 300
    gsq_lr: float = 0.05
    seed: int = 0
    device: str | None = None
    eval_text: str | None = None             # held-out perplexity of the written model on this text, if given
    eval_tokens: int = 0                     # 0 = the whole text

    def __post_init__(self):
        self.include = tuple(self.include)
        self.grid = tuple(self.grid)
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: use one of {list(METHODS)}")
        if self.group_size not in (32, 64, 128, 256):
            raise ConfigError(f"--group-size {self.group_size}: use 32, 64, 128 or 256")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise ConfigError(f"--factor-dtype {self.factor_dtype!r}: use one of {list(FACTOR_DTYPES)}")
        if self.rank < 0:
            raise ConfigError(f"--rank {self.rank}: must be >= 0")
        if self.shrink is not None and not 0.0 <= self.shrink <= 1.0:
            raise ConfigError(f"--shrink {self.shrink}: must lie in [0, 1] (0 = no shrinkage)")
        if self.shrink_target not in ("layer", "row"):
            raise ConfigError(f"--shrink-target {self.shrink_target!r}: use layer or row")
        if self.calib_seqs < 1 or self.calib_len < 2:
            raise ConfigError("--calib-seqs must be >= 1 and --calib-len >= 2")
        if not 0.0 <= self.qep_alpha <= 1.0:
            raise ConfigError(f"--qep-alpha {self.qep_alpha}: must lie in [0, 1]")
        if self.qep_alpha and self.method != "gptq":
            raise ConfigError("--qep-alpha applies to --method gptq only")
        if self.packing not in ("2bit", "1.6bit"):
            raise ConfigError(f"--packing {self.packing!r}: use 2bit or 1.6bit")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _targets(model: nn.Module, cfg: PTQConfig) -> list[tuple[str, nn.Linear]]:
    """Selected ``nn.Linear`` modules in forward order (layer by layer, in_proj before out_proj)."""
    out = [(n, m) for n, m in model.named_modules()
           if isinstance(m, nn.Linear) and n != "lm_head" and any(re.search(p, n) for p in cfg.include)]
    if not out:
        raise ConfigError(f"no nn.Linear matches --include {list(cfg.include)}")
    for n, m in out:
        if m.in_features % cfg.group_size:
            raise ConfigError(f"{n}: in_features={m.in_features} is not divisible by --group-size {cfg.group_size}")
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


@torch.no_grad()
def quantize_model(teacher: nn.Module, cfg: PTQConfig, tokenizer=None) -> tuple[nn.Module, dict]:
    """A quantized copy of ``teacher`` (fp32, eval) and per-module statistics. ``tokenizer`` is needed by the
    calibrated methods."""
    model = copy.deepcopy(teacher).float().eval()
    targets = _targets(model, cfg)
    g = cfg.group_size
    stats: dict[str, dict] = {}
    batches = reference = None
    if cfg.method in CALIBRATED:
        from ..io.bundled import SAMPLE_TRAIN

        if tokenizer is None:
            raise ConfigError(f"--method {cfg.method} needs a tokenizer for its calibration text")
        batches = calibration_batches(tokenizer, cfg.calib_data or SAMPLE_TRAIN, cfg.calib_seqs, cfg.calib_len)
        if cfg.qep_alpha:
            reference = copy.deepcopy(teacher).float().eval()
    for name, lin in targets:
        w = lin.weight.detach().float()
        st: dict = {}
        if cfg.method == "rtn":
            codes, scale = rtn_ternary(w, g)
        elif cfg.method == "rtn-search":
            lo, hi, steps = cfg.grid
            codes, scale = grid_search_ternary(w, g, default_grid(float(lo), float(hi), int(steps)))
        elif cfg.method == "js-shrink":
            codes, scale = js_shrink_ternary(w, g, cfg.shrink, cfg.shrink_target)
        elif cfg.method == "lrec":
            codes, scale = rtn_ternary(w, g)
        else:
            H, C, _ = input_stats(model, name, batches, reference=reference, batch_size=cfg.calib_batch)
            H = H.to(w.device)
            if cfg.method == "gptq":
                target = qep_target(w, H, C.to(w.device), cfg.qep_alpha, cfg.damp) if C is not None else w
                codes, scale = gptq_ternary(target, H, g, damp=cfg.damp)
            else:
                with torch.enable_grad():
                    codes, scale, info = hggsq_ternary(w, H, g, steps=cfg.gsq_steps, lr=cfg.gsq_lr, seed=cfg.seed)
                st.update(info)
            st["hessian_loss"] = float(hessian_loss(w, dequantize_ternary(codes, scale, g), H))
            st["hessian_loss_rtn"] = float(hessian_loss(w, dequantize_ternary(*rtn_ternary(w, g), g), H))
        w_q = dequantize_ternary(codes, scale, g)
        if cfg.method == "lrec":
            u, v = lrec_factors(w, w_q, cfg.rank, cfg.factor_dtype)
            new: nn.Module = LowRankCorrectedLinear(w_q, u, v, lin.bias)
            w_q = new.folded_weight()
            st["factor_bytes"] = factor_bytes(*w.shape, u.shape[1], cfg.factor_dtype)
        else:
            new = PackedTernaryLinear(codes, scale, g, lin.bias)
            st["zero_frac"] = float((codes == 0).float().mean())
        st["rel_weight_error"] = float((w - w_q).norm() / w.norm().clamp_min(1e-30))
        stats[name] = st
        _set(model, name, new)
    return model, stats


def _fold_lrec(model: nn.Module) -> nn.Module:
    """Replace each ``LowRankCorrectedLinear`` by an ``nn.Linear`` holding ``Q(W) + U V`` (dense save)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LowRankCorrectedLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = m.folded_weight()
            if m.bias is not None:
                lin.bias.data = m.bias.detach().clone()
            _set(model, name, lin)
    return model


def ptq(cfg: PTQConfig) -> dict:
    """Quantize ``cfg.model`` with ``cfg.method`` and write ``cfg.out``; returns the report (also written as
    ``ptq_report.json`` in ``cfg.out``)."""
    from ..io.checkpoints import load_model, resolve_checkpoint, save_model
    from ..io.tokenizer import load_tokenizer
    from ..quant.packed_io import save_packed_model

    t0 = time.time()
    src = str(resolve_checkpoint(cfg.model).directory)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = load_model(src, device=device)
    if getattr(teacher, "quantization_config", None):
        raise ConfigError(f"{cfg.model} is already quantized; ptq needs a dense checkpoint")
    tok = load_tokenizer(src)
    torch.manual_seed(cfg.seed)
    model, stats = quantize_model(teacher, cfg, tok)
    info = {"ptq": cfg.to_dict()}
    out = Path(cfg.out)
    if cfg.method == "lrec":
        n_w = sum(m.base.numel() for m in model.modules() if isinstance(m, LowRankCorrectedLinear))
        n_groups = n_w // cfg.group_size
        packed = n_w // 4 + 2 * n_groups + sum(s["factor_bytes"] for s in stats.values())
        note = {**info["ptq"], "stored_as": "dense: each projection folded to Q(W) + U V in fp32",
                "factored_projection_bytes": packed, "factored_bits_per_weight": 8 * packed / n_w}
        # The note sits beside config.json, not in it: the HF-dialect reader refuses unknown config fields.
        save_model(_fold_lrec(model).cpu(), out, tokenizer=tok)
        (out / "ssmquant_ptq.json").write_text(json.dumps(note, indent=2))
    else:
        save_packed_model(model.cpu(), out, tokenizer=tok, packing=cfg.packing, quant_info=info)
    report = {"method": cfg.method, "out": str(out), "seconds": round(time.time() - t0, 2), "config": cfg.to_dict(),
              "modules": stats}
    if cfg.eval_text:
        from ..eval.perplexity import perplexity

        loaded = load_model(out, device=device).float()
        ppl = perplexity(loaded, tok, cfg.eval_text, context=512, stride=512, batch_size=8, device=device,
                         max_tokens=cfg.eval_tokens or None)
        report["eval"] = {"text": str(cfg.eval_text), "ppl": ppl["ppl"], "n_tokens": ppl.get("n_tokens"),
                          "context": 512, "stride": 512}
    (out / "ptq_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def format_ptq_summary(rep: dict) -> str:
    mods = rep["modules"]
    err = sum(s["rel_weight_error"] for s in mods.values()) / max(1, len(mods))
    lines = [f"{rep['method']}: wrote {rep['out']} in {rep['seconds']:.1f} s; mean relative weight error {err:.4f}"]
    hl = [s["hessian_loss"] for s in mods.values() if "hessian_loss" in s]
    if hl:
        rtn = [s["hessian_loss_rtn"] for s in mods.values()]
        lines.append(f"  mean relative output error on calibration inputs: {sum(hl) / len(hl):.4f} "
                     f"(round-to-nearest {sum(rtn) / len(rtn):.4f})")
    if "eval" in rep:
        lines.append(f"  held-out perplexity {rep['eval']['ppl']:.2f} ({rep['eval']['text']})")
    return "\n".join(lines)
