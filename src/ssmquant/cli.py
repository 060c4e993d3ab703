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


# ----- entry point ----------------------------------------------------------------------------------------------

_SUBCOMMANDS = [_add_info, _add_generate]


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
