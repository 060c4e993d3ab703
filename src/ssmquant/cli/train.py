"""Training subcommands (``ssmquant pretrain``; ``distill`` lands with the QAT issue) and their shared flags."""

from __future__ import annotations

import argparse
import textwrap


def add_train_args(p: argparse.ArgumentParser, *, tokens_default: str = "2M", lr_default: float = 1e-3,
                    seq_default: int = 512) -> None:
    from ..train.config import TrainConfig

    d = TrainConfig(out="-")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory (metrics, plots, checkpoints, final model)")
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
    g.add_argument("--tokens", default=tokens_default, help=f"training tokens, e.g. 2M, 102M (default {tokens_default})")
    g.add_argument("--seq-len", type=int, default=seq_default, help=f"sequence length (default {seq_default})")
    g.add_argument("--micro-batch", type=int, default=d.micro_batch, help="sequences per forward (default 8)")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="micro-batches per optimizer step, summed over processes (default 1)")
    g.add_argument("--lr", type=float, default=lr_default, help=f"peak learning rate (default {lr_default:g})")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr / peak lr (default 0.1)")
    g.add_argument("--warmup-frac", type=float, default=d.warmup_frac, help="warm-up fraction of steps (default 0.05)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 0.1)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient norm clip, 0 = off (default 1.0)")
    g.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision; auto = bf16 on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--eval-every", type=int, default=0, metavar="STEPS", help="held-out eval every STEPS (0 = ~10 per run)")
    g.add_argument("--eval-sequences", type=int, default=d.eval_sequences, help="held-out sequences per eval (default 16)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics.jsonl records (default 10)")


def train_config(args, **overrides):
    from ..train.config import TrainConfig

    fields = ("out", "resume", "overwrite", "save_every", "keep_last", "time_limit", "stop_after_steps", "seed",
              "device", "progress", "plot", "text_field", "valid_fraction", "cache_dir", "tokens", "seq_len",
              "micro_batch", "grad_accum", "lr", "min_lr_ratio", "warmup_frac", "weight_decay", "grad_clip",
              "precision", "compile", "eval_every", "eval_sequences", "log_every")
    kw = {f: getattr(args, f) for f in fields}
    kw["data"] = list(args.data or [])
    kw.update(overrides)
    return TrainConfig(**kw)


def print_summary(summary: dict) -> None:
    keys = [k for k in ("run", "step", "total_steps", "tokens", "val_loss", "val_ppl", "stopped") if k in summary]
    print("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                    for k in keys))


def register(sub) -> None:
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


