"""Training subcommands (``ssmquant pretrain``; ``distill`` lands with the QAT issue) and their shared flags."""

from __future__ import annotations

import argparse
import textwrap


def add_train_args(p: argparse.ArgumentParser, *, tokens_default: str | None = "2M",
                   lr_default: float | None = 1e-3, seq_default: int | None = 512, out_required: bool = True) -> None:
    """Trainer flags. A default of None means the command resolves it (``distill`` picks by recipe)."""
    from ..train.config import TrainConfig

    d = TrainConfig(out="-")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=out_required, default=None,
                   help="run directory (metrics, plots, checkpoints, final model)"
                        + ("" if out_required else "; default runs/distill-<time>"))
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    g.add_argument("--overwrite", action="store_true", help="clear a previous run in --out and start over")
    g.add_argument("--save-every", type=int, default=d.save_every, metavar="STEPS",
                   help="checkpoint every STEPS optimizer steps (0 = only at the end or when stopped)")
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints to keep (default 3)")
    g.add_argument("--time-limit", type=float, default=0.0, metavar="SECONDS",
                   help="stop cleanly after SECONDS (checkpoint written; rerun with --resume to continue)")
    g.add_argument("--stop-after-steps", type=int, default=0, metavar="N",
                   help="stop cleanly after N steps in this invocation (resumable); 0 = run to the end")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for init, data order and sampling")
    g.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw plots/*.png at the end")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=None, metavar="SOURCE",
                   help="text files/directories (.txt .md .rst .jsonl .parquet, .gz) or hf:NAME[:CONFIG]:SPLIT")
    g.add_argument("--text-field", default=d.text_field, help="field holding the text in jsonl/parquet (default text)")
    g.add_argument("--valid-fraction", type=float, default=d.valid_fraction,
                   help="fraction of documents held out for validation (default 0.01)")
    g.add_argument("--cache-dir", default=None, help="token cache directory (default ~/.cache/ssmquant/tokens)")
    g = p.add_argument_group("optimisation")
    by_recipe = "by recipe, see the examples"
    g.add_argument("--tokens", default=tokens_default,
                   help=f"training tokens, e.g. 2M, 102M (default {tokens_default or by_recipe})")
    g.add_argument("--seq-len", type=int, default=seq_default,
                   help=f"sequence length (default {seq_default or by_recipe})")
    g.add_argument("--micro-batch", type=int, default=None if tokens_default is None else d.micro_batch,
                   help="sequences per forward (default 8)")
    g.add_argument("--grad-accum", type=int, default=None if tokens_default is None else d.grad_accum,
                   help="micro-batches per optimizer step, summed over processes (default 1)")
    g.add_argument("--lr", type=float, default=lr_default,
                   help=f"peak learning rate (default {lr_default if lr_default is not None else by_recipe})")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr / peak lr (default 0.1)")
    g.add_argument("--warmup-frac", type=float, default=None if tokens_default is None else d.warmup_frac,
                   help="warm-up fraction of steps (default 0.05)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 0.1)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient norm clip, 0 = off (default 1.0)")
    g.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision; auto = bf16 on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard parameters, gradients and optimizer state (FSDP2) instead of DDP")
    g.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block in the backward pass: activation memory stops growing with depth "
                        "(about 1/3 more compute); for 2.7B-class students or long sequences")
    g.add_argument("--eval-every", type=int, default=0, metavar="STEPS", help="held-out eval every STEPS (0 = ~10 per run)")
    g.add_argument("--eval-sequences", type=int, default=None if tokens_default is None else d.eval_sequences,
                   help="held-out sequences per eval (default 16)")
    g.add_argument("--log-every", type=int, default=None if tokens_default is None else d.log_every,
                   help="steps between metrics.jsonl records (default 10)")


def train_config(args, **overrides):
    from ..train.config import TrainConfig

    fields = ("out", "resume", "overwrite", "save_every", "keep_last", "time_limit", "stop_after_steps", "seed",
              "device", "progress", "plot", "text_field", "valid_fraction", "cache_dir", "tokens", "seq_len",
              "micro_batch", "grad_accum", "lr", "min_lr_ratio", "warmup_frac", "weight_decay", "grad_clip",
              "precision", "compile", "fsdp", "activation_checkpointing", "eval_every", "eval_sequences", "log_every")
    kw = {f: getattr(args, f) for f in fields}
    kw["data"] = list(args.data or [])
    kw.update(overrides)
    return TrainConfig(**kw)


def print_summary(summary: dict) -> None:
    keys = [k for k in ("run", "step", "total_steps", "tokens", "val_loss", "val_ppl", "stopped") if k in summary]
    print("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                    for k in keys))


def register(sub) -> None:
    _add_pretrain(sub)
    _add_distill(sub)


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="train a Mamba-2 from scratch (cross-entropy)",
        description="Train a Mamba-2 language model from mamba-ssm's random init on local text or a HF dataset.",
        epilog=textwrap.dedent("""\
            examples:
              ssmquant pretrain --model-config '{"d_model": 256, "n_layer": 4, "d_state": 64}' \\
                  --tokenizer tok/tokenizer.json --data corpus/train.jsonl --tokens 20M --out runs/teacher
              torchrun --nproc_per_node 2 -m ssmquant pretrain --model-config 130m --tokenizer tok/ \\
                  --data corpus/ --tokens 1B --micro-batch 8 --grad-accum 4 --out runs/130m
            A run longer than one session: add --time-limit 540 and rerun the same command with --resume."""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", required=True,
                   help="config.json (mamba-ssm or HF dialect), inline JSON, or a preset (130m 370m 780m 1.3b 2.7b)")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json, or a directory holding one")
    add_train_args(p)
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> None:
    from ..train.pretrain import pretrain

    print_summary(pretrain(args.model_config, args.tokenizer, train_config(args)))




# ----- distill ----------------------------------------------------------------------------------------------------

# The embedded default: `ssmquant distill` with no --teacher and no --data distils the bundled teacher on the bundled
# sample text, on a 2-core CPU in a few minutes (docs/recipes.md shows how these were chosen).
EMBEDDED_DEFAULT = dict(group_size=256, tokens="200K", seq_len=256, micro_batch=8, grad_accum=1, lr=2e-3,
                        warmup_frac=0.05, report_tokens=16384, eval_sequences=8, log_every=5)
GENERAL_DEFAULT = dict(group_size=128, tokens="10M", seq_len=2048, micro_batch=8, grad_accum=1, lr=1e-3,
                       warmup_frac=0.05, report_tokens=0, eval_sequences=16, log_every=10)

DISTILL_EPILOG = """\
examples:
  ssmquant distill --out runs/demo
      the embedded default: bundled 3.8M Mamba-2 teacher, bundled sample text, group 256; CPU, a few minutes
  ssmquant distill --teacher ./my-mamba2 --data corpus/ --tokens 20M --group-size 128 --out runs/mine

recipes for the published checkpoints (text: any --data; fineweb-edu style sets work when online):
  Mamba-2 130M: --teacher state-spaces/mamba2-130m --tokens 40M  --seq-len 2048 --group-size 128 \\
                --micro-batch 16 --grad-accum 2 --lr 1e-3
  Mamba-2 1.3B: --teacher state-spaces/mamba2-1.3b --tokens 102M --seq-len 2048 --group-size 128 \\
                --micro-batch 8 --grad-accum 4 --lr 5e-4          (the paper's budget: 102M tokens)
  several GPUs: torchrun --nproc_per_node 8 -m ssmquant distill ... --grad-accum 8
  group 256 makes the student exportable to llama.cpp's TQ1_0/TQ2_0 without loss; 128 (the paper's) does not.
"""


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="ternary QAT + knowledge distillation from a pretrained Mamba-2",
                       description="Quantization-aware training of a ternary (W1.58A16) student from a frozen "
                                   "teacher with knowledge distillation, zero-ratio monitoring and a packed result.",
                       epilog=DISTILL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("models")
    g.add_argument("--teacher", default=None,
                   help="teacher checkpoint dir or Hub id (default: the bundled 3.8M Mamba-2)")
    g.add_argument("--tokenizer", default=None, help="tokenizer (default: the teacher's own, else GPT-NeoX-20B)")
    g.add_argument("--method", default="ternary", choices=["ternary", "dfssm"],
                   help="ternary (W1.58A16, Ternary Mamba) or dfssm (1-bit scaffold + int8 low-rank, DF-SSM)")
    g.add_argument("--rank", type=int, default=32, help="dfssm: rank of the int8 correction U.V (default 32)")
    g = p.add_argument_group("quantization")
    g.add_argument("--group-size", default=None,
                   help="weights per scale along the input dim: 32 64 128 256 or row "
                        "(default 128; 256 embedded; dfssm 128 = Q1_0)")
    g.add_argument("--scale-mode", default=None, choices=["fixed", "learnable", "ema"],
                   help="fixed = absmean each step; learnable = LSQ-trained; ema = moving absmean "
                        "(default learnable; dfssm: fixed, Q1_0's mean |w|)")
    g.add_argument("--scale-lr", type=float, default=None, help="learning rate of learnable scales (default: --lr)")
    g.add_argument("--include", nargs="+", default=[r"\.in_proj$", r"\.out_proj$"], metavar="REGEX",
                   help=r"module names to quantize (default \.in_proj$ \.out_proj$; add lm_head$ for the head)")
    g.add_argument("--exclude", nargs="+", default=[], metavar="REGEX", help="module names to keep in full precision")
    g.add_argument("--packing", default="2bit", choices=["2bit", "1.6bit"], help="code packing of the saved model")
    g = p.add_argument_group("distillation")
    g.add_argument("--temperature", type=float, default=1.0, help="KD temperature (default 1)")
    g.add_argument("--kd-weight", type=float, default=1.0, help="weight of KL(teacher||student) (default 1)")
    g.add_argument("--ce-weight", type=float, default=0.0, help="weight of cross-entropy on the data (default 0)")
    g.add_argument("--hidden-weight", type=float, default=0.0, help="weight of per-layer hidden-state MSE (default 0)")
    g.add_argument("--report-tokens", type=int, default=None,
                   help="held-out tokens for the final teacher/student/post-hoc comparison (0 = all)")
    g.add_argument("--report-text", default=None, help="held-out text file for that comparison (default: bundled)")
    g = p.add_argument_group("zero-ratio collapse")
    g.add_argument("--monitor-every", type=int, default=None, metavar="STEPS",
                   help="measure zero fractions every STEPS (default: ~50 times per run)")
    g.add_argument("--max-zero-frac", type=float, default=0.6, help="collapse if a layer's zero fraction exceeds this")
    g.add_argument("--max-zero-rise", type=float, default=None,
                   help="collapse if a layer's zero fraction rises faster than this per 1000 steps "
                        "(default: a rise of 0.2 over the whole run)")
    g.add_argument("--collapse-policy", nargs="+", default=["warn", "clamp"],
                   choices=["warn", "clamp", "reinit", "regularize", "freeze"],
                   help="what to do about collapse (default: warn clamp)")
    g.add_argument("--clamp-range", nargs=2, type=float, default=[0.5, 2.0], metavar=("A", "B"),
                   help="clamp policy: scales within [A, B] x mean|w| of their group (default 0.5 2.0)")
    g.add_argument("--freeze-steps", type=int, default=0, help="freeze policy: scales frozen for the first N steps")
    g.add_argument("--penalty-weight", type=float, default=1.0, help="regularize policy: penalty weight")
    g.add_argument("--penalty-target", type=float, default=0.5, help="regularize policy: tolerated zero fraction")
    add_train_args(p, tokens_default=None, lr_default=None, seq_default=None, out_required=False)
    p.set_defaults(func=_run_distill)


def _run_distill(args) -> None:
    import time

    from ..errors import ConfigError
    from ..io.bundled import SAMPLE_TRAIN, TEACHER_DIR
    from ..quant import MonitorConfig
    from ..train.distill import DistillConfig, distill, format_distill_summary

    embedded = args.teacher is None and args.data is None
    recipe = EMBEDDED_DEFAULT if embedded else GENERAL_DEFAULT
    if args.method == "dfssm":
        # DF-SSM's scaffold is llama.cpp's Q1_0: 128-weight groups with a mean |w| scale.
        args.group_size = args.group_size or 128
        args.scale_mode = args.scale_mode or "fixed"
    args.scale_mode = args.scale_mode or "learnable"
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data is None:
        args.data = [str(SAMPLE_TRAIN)]
    if args.out is None:
        args.out = time.strftime("runs/distill-%Y%m%d-%H%M%S")
    try:
        group = args.group_size if str(args.group_size) == "row" else int(args.group_size)
    except ValueError:
        raise ConfigError(f"--group-size {args.group_size!r}: expected 32, 64, 128, 256 or row") from None
    tcfg = train_config(args)
    every = args.monitor_every or max(1, tcfg.total_steps // 50)
    try:
        monitor = MonitorConfig(every_n_steps=every, max_zero_frac=args.max_zero_frac,
                                max_rise_per_kstep=(args.max_zero_rise if args.max_zero_rise is not None
                                                    else 0.2 * 1000 / tcfg.total_steps), policies=tuple(args.collapse_policy),
                                clamp_range=tuple(args.clamp_range), freeze_steps=args.freeze_steps,
                                penalty_weight=args.penalty_weight, penalty_target=args.penalty_target)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    dcfg = DistillConfig(teacher=args.teacher or str(TEACHER_DIR), method=args.method, rank=args.rank,
                         group_size=group, scale_mode=args.scale_mode,
                         scale_lr=args.scale_lr, include=tuple(args.include), exclude=tuple(args.exclude),
                         temperature=args.temperature, kd_weight=args.kd_weight, ce_weight=args.ce_weight,
                         hidden_weight=args.hidden_weight, monitor=monitor, packing=args.packing,
                         report_tokens=args.report_tokens, report_text=args.report_text)
    summary = distill(dcfg, tcfg, tokenizer=args.tokenizer)
    print_summary(summary)
    print(format_distill_summary(summary))
