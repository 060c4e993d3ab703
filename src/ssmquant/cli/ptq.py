"""``ssmquant ptq``: post-hoc quantization baselines (no training)."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  ssmquant ptq ./teacher --method rtn --out runs/ptq-rtn
  ssmquant ptq ./teacher --method lrec --rank 32 --factor-dtype int8 --out runs/ptq-lrec32
  ssmquant ptq ./teacher --method gptq --calib-seqs 128 --calib-len 256 --qep-alpha 0.5 --out runs/ptq-qep
  ssmquant ptq ./teacher --method hg-gsq --eval --out runs/ptq-hggsq     (prints held-out perplexity)

methods: rtn (absmean round-to-nearest), rtn-search (per-group scale grid search), js-shrink (James-Stein
shrinkage of group scales), lrec (rtn + rank-r SVD correction, saved dense), gptq (error feedback with the
layer Hessian from calibration text; --qep-alpha > 0 adds QEP's correction), hg-gsq (Hessian-guided
Gumbel-Softmax rounding). Definitions and results on the bundled teacher: docs/ptq_dfssm.md.
"""


def register(sub) -> None:
    p = sub.add_parser("ptq", help="post-hoc ternary quantization baselines (no training)",
                       description="Quantize a dense Mamba-2 checkpoint without training and write a model directory "
                                   "that load, eval, drift and export accept.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="dense checkpoint directory or Hub id (use the bundled teacher's path for a demo)")
    p.add_argument("--method", required=True, choices=["rtn", "rtn-search", "lrec", "gptq", "js-shrink", "hg-gsq"],
                   help="post-hoc method (see below)")
    p.add_argument("--out", required=True, help="directory to write the quantized model to")
    g = p.add_argument_group("quantization")
    g.add_argument("--group-size", type=int, default=256, help="weights per scale along the input dim (default 256)")
    g.add_argument("--include", nargs="+", default=[r"\.in_proj$", r"\.out_proj$"], metavar="REGEX",
                   help=r"module names to quantize (default \.in_proj$ \.out_proj$)")
    g.add_argument("--packing", default="2bit", choices=["2bit", "1.6bit"], help="code packing of the saved model")
    g.add_argument("--grid", nargs=3, type=float, default=[0.5, 2.0, 31], metavar=("LO", "HI", "STEPS"),
                   help="rtn-search: multipliers of absmean to try (default 0.5 2.0 31; 1.0 is always tried)")
    g.add_argument("--shrink", type=float, default=None,
                   help="js-shrink: fixed shrinkage factor in [0, 1] (default: the data-driven James-Stein factor)")
    g.add_argument("--shrink-target", default="layer", choices=["layer", "row"],
                   help="js-shrink: shrink toward the layer mean or each row's mean (default layer)")
    g.add_argument("--rank", type=int, default=32, help="lrec: rank of the correction (default 32)")
    g.add_argument("--factor-dtype", default="fp16", choices=["fp16", "int8"],
                   help="lrec: storage of the factors, int8 = per-row fp16 scales (default fp16)")
    g = p.add_argument_group("calibration (gptq, hg-gsq)")
    g.add_argument("--calib-data", default=None, help="calibration text file (default: the bundled training sample)")
    g.add_argument("--calib-seqs", type=int, default=128, help="calibration sequences (default 128)")
    g.add_argument("--calib-len", type=int, default=256, help="tokens per calibration sequence (default 256)")
    g.add_argument("--calib-batch", type=int, default=16, help="sequences per forward (default 16)")
    g.add_argument("--damp", type=float, default=0.01, help="Hessian damping, fraction of its mean diagonal")
    g.add_argument("--qep-alpha", type=float, default=0.0,
                   help="gptq: QEP correction strength in [0, 1] (default 0 = plain sequential GPTQ)")
    g.add_argument("--gsq-steps", type=int, default=300, help="hg-gsq: optimisation steps per module (default 300)")
    g.add_argument("--gsq-lr", type=float, default=0.05, help="hg-gsq: Adam learning rate of the logits")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed (hg-gsq noise)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--eval", action="store_true",
                   help="afterwards, held-out perplexity of the written model (bundled held-out text, 512/512)")
    g.add_argument("--eval-text", default=None, help="text file for --eval (default: the bundled held-out sample)")
    g.add_argument("--eval-tokens", type=int, default=0, help="tokens of --eval text to score (0 = all)")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)


def _run(args) -> None:
    from ..io.bundled import SAMPLE_HELDOUT
    from ..ptq import PTQConfig, format_ptq_summary, ptq

    eval_text = (args.eval_text or str(SAMPLE_HELDOUT)) if args.eval or args.eval_text else None
    cfg = PTQConfig(model=args.model, method=args.method, out=args.out, group_size=args.group_size,
                    include=tuple(args.include), packing=args.packing,
                    grid=(args.grid[0], args.grid[1], int(args.grid[2])), shrink=args.shrink,
                    shrink_target=args.shrink_target, rank=args.rank, factor_dtype=args.factor_dtype,
                    calib_data=args.calib_data, calib_seqs=args.calib_seqs, calib_len=args.calib_len,
                    calib_batch=args.calib_batch, damp=args.damp, qep_alpha=args.qep_alpha,
                    gsq_steps=args.gsq_steps, gsq_lr=args.gsq_lr, seed=args.seed, device=args.device,
                    eval_text=eval_text, eval_tokens=args.eval_tokens)
    rep = ptq(cfg)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_ptq_summary(rep))
