"""``ssmquant`` command line. It only parses: each subcommand calls an importable function.

One module per subcommand family (``cli/info.py``, ``cli/train.py``, ...), each exposing ``register(sub)``; this
module builds the parser and turns user errors (``SSMQuantError``) into one line on stderr and exit code 2
(``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from ..errors import SSMQuantError

EXAMPLES = """\
examples:
  ssmquant info state-spaces/mamba2-130m
  ssmquant generate ./my-mamba2 --prompt "The meaning of life is" --max-new-tokens 64 --temperature 0.8
  ssmquant distill                       # the main job on the bundled teacher and sample text (CPU, minutes)
"""

# Subcommand modules, in --help order. Each has ``register(subparsers)``.
SUBCOMMAND_MODULES = ["info", "generate", "train", "eval", "export", "bench", "ptq"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmquant",
        description="Compress pretrained Mamba-2 language models to ternary and 1-bit weights, distill, evaluate, "
                    "export and run them.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks on errors")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"ssmquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
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
