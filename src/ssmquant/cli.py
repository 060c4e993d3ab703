"""``ssmquant`` command line. It only parses: each subcommand calls an importable function.

User errors (``SSMQuantError``) print one line and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from .errors import SSMQuantError

EXAMPLES = """\
examples:
  ssmquant info state-spaces/mamba2-130m
  ssmquant generate ./my-mamba2 --prompt "The meaning of life is" --max-new-tokens 64 --temperature 0.8
"""


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="compute dtype (default: the checkpoint's on GPU, fp32 on CPU)")


def _resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# ----- info -----------------------------------------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and bytes",
                       description="Load a Mamba-2 checkpoint and print its config, parameter count and bytes by "
                                   "dtype and by part.",
                       epilog="example: ssmquant info state-spaces/mamba2-130m --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory (mamba-ssm or HF layout, plain or packed) or Hub repo id")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(func=_run_info)


def _run_info(args) -> None:
    from .io.checkpoints import load_model
    from .model.summary import tensor_summary

    model = load_model(args.model)
    summary = tensor_summary(model)
    cfg = model.config
    out = {"model": args.model, "config": cfg.to_own_dict(), **summary}
    size_report = getattr(model, "size_report", None)
    if callable(size_report):
        out["size"] = size_report()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"model       {args.model}")
    print(f"layers      {cfg.n_layer}   d_model {cfg.d_model}   d_inner {cfg.d_inner}   heads {cfg.nheads}x"
          f"{cfg.headdim}   d_state {cfg.d_state}   ngroups {cfg.ngroups}   d_conv {cfg.d_conv}")
    print(f"vocab       {cfg.vocab_size} (padded {cfg.padded_vocab_size})   tied head {cfg.tie_embeddings}")
    print(f"parameters  {summary['parameters']:,}")
    print(f"bytes       {summary['bytes']:,} ({summary['bytes'] / 1e6:.2f} MB)")
    for dt, v in summary["by_dtype"].items():
        print(f"  {dt:<10} {v['numel']:>14,} elements {v['bytes'] / 1e6:>10.2f} MB")
    for part, v in summary["by_part"].items():
        print(f"  {part:<12} {v['numel']:>12,} elements {v['bytes'] / 1e6:>10.2f} MB")
    if "size" in out:
        from .quant.size import format_size_report

        print(format_size_report(out["size"]))


# ----- generate ---------------------------------------------------------------------------------------------------

def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="stream a continuation of a prompt",
                       description="Load a model and its tokenizer and stream sampled text.",
                       epilog='example: ssmquant generate state-spaces/mamba2-130m --prompt "Hello" --top-p 0.9',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory or Hub repo id")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json file or directory/Hub id (default: the model's own, else GPT-NeoX-20B)")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1.0 = off (default)")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    _device_arg(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> None:
    import torch

    from .io.checkpoints import load_model
    from .io.tokenizer import load_tokenizer

    if args.max_new_tokens < 0:
        raise SSMQuantError("--max-new-tokens must be >= 0")
    if not 0 < args.top_p <= 1:
        raise SSMQuantError("--top-p must be in (0, 1]")
    device = _resolve_device(args.device)
    dtype = args.dtype or ("fp32" if device == "cpu" else None)
    model = load_model(args.model, device=device, dtype=dtype)
    tok = load_tokenizer(args.tokenizer or args.model)
    ids = tok.encode(args.prompt)
    if not ids:
        raise SSMQuantError("--prompt encodes to no tokens")
    if max(ids) >= model.config.padded_vocab_size:
        raise SSMQuantError(f"tokenizer ids reach {max(ids)} but the model has {model.config.padded_vocab_size} "
                            "embedding rows: this tokenizer does not belong to this model")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    generated: list[int] = []
    printed = 0

    def stream(next_ids: torch.Tensor) -> None:
        nonlocal printed
        generated.append(int(next_ids[0]))
        text = tok.decode(generated)
        # Hold back a trailing partial UTF-8 character until the next token completes it.
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)

    model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=tok.eos_token_id,
                   vocab_size=tok.vocab_size, callback=stream)
    sys.stdout.write("\n")


# ----- training (shared flags) -------------------------------------------------------------------------------------

def _add_train_args(p: argparse.ArgumentParser, *, tokens_default: str = "2M", lr_default: float = 1e-3,
                    seq_default: int = 512) -> None:
    from .train.config import TrainConfig

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


def _train_config(args, **overrides):
    from .train.config import TrainConfig

    fields = ("out", "resume", "overwrite", "save_every", "keep_last", "time_limit", "stop_after_steps", "seed",
              "device", "progress", "plot", "text_field", "valid_fraction", "cache_dir", "tokens", "seq_len",
              "micro_batch", "grad_accum", "lr", "min_lr_ratio", "warmup_frac", "weight_decay", "grad_clip",
              "precision", "compile", "eval_every", "eval_sequences", "log_every")
    kw = {f: getattr(args, f) for f in fields}
    kw["data"] = list(args.data or [])
    kw.update(overrides)
    return TrainConfig(**kw)


def _print_summary(summary: dict) -> None:
    keys = [k for k in ("run", "step", "total_steps", "tokens", "val_loss", "val_ppl", "stopped") if k in summary]
    print("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                    for k in keys))


# ----- pretrain ---------------------------------------------------------------------------------------------------

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
    _add_train_args(p)
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> None:
    from .train.pretrain import pretrain

    _print_summary(pretrain(args.model_config, args.tokenizer, _train_config(args)))


# ----- entry point ----------------------------------------------------------------------------------------------

_SUBCOMMANDS = [_add_info, _add_generate, _add_pretrain]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmquant",
        description="Compress pretrained Mamba-2 language models to ternary and 1-bit weights, distill, evaluate, "
                    "export and run them.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ssmquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except SSMQuantError as e:
        if args.debug:
            raise
        print(f"ssmquant {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssmquant {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = textwrap.shorten(f"{type(e).__name__}: {e}", 300)
        print(f"ssmquant {args.command}: internal error: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
