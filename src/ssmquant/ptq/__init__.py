"""Post-hoc (no training) quantization baselines: RTN, grid-searched scales, James–Stein shrinkage, low-rank error
correction, GPTQ (+ QEP) and Hessian-guided Gumbel-Softmax rounding. ``api.ptq`` is what ``ssmquant ptq`` runs."""

from .api import METHODS, PTQConfig, format_ptq_summary, ptq, quantize_model

__all__ = ["METHODS", "PTQConfig", "format_ptq_summary", "ptq", "quantize_model"]
