"""Evaluation subcommands: ``ssmquant eval`` (perplexity + zero-shot suites), ``ssmquant lm-eval`` (the harness with
our adapter registered) and ``ssmquant drift`` (state error vs position). Each parses into a config dataclass and
calls ``ssmquant.eval.run_eval`` / ``run_lm_eval_cli`` / ``ssmquant.eval.drift.run_drift``."""

from __future__ import annotations

import argparse
import textwrap

from ..errors import ConfigError

EVAL_EPILOG = textwrap.dedent("""\
    examples:
      ssmquant eval runs/ternary --tasks ppl                         # perplexity of the bundled held-out sample
      ssmquant eval runs/ternary --teacher state-spaces/mamba2-130m --tasks mamba7 --limit 200 --out runs/ternary/eval
      ssmquant eval runs/ternary --tasks hellaswag,piqa --split piqa=validation --data-dir my_jsonl/
      ssmquant eval runs/ternary --tasks ppl --ppl-source wikitext2 --ppl-context 2048 --ppl-stride 512   # online
    """)

LM_EVAL_EPILOG = textwrap.dedent("""\
    example:
      ssmquant lm-eval --model ssmquant --model_args pretrained=runs/ternary --tasks hellaswag --limit 50
      ssmquant lm-eval --model ssmquant --model_args pretrained=runs/ternary,batch_size=32,device=cuda \\
          --tasks arc_easy,piqa --output_path runs/ternary/lm-eval

    --model_args keys of the ssmquant adapter: pretrained (model dir or Hub id), tokenizer_path, batch_size (16),
    max_length (2048), max_gen_toks (256), device. Every argument is passed to lm-eval 0.4.13's own command line
    unchanged; `lm-eval --help` lists its flags. Needs: pip install 'lm-eval==0.4.13'.
    """)

DRIFT_EPILOG = textwrap.dedent("""\
    examples:
      ssmquant drift --out runs/drift        # bundled teacher vs its post-hoc ternary copy and quantization-sized noise
      ssmquant drift --teacher state-spaces/mamba2-130m --student runs/qat --student runs/ptq \\
          --max-len 2048 --n-seqs 8 --noise-scale 0.5 1 2 --state-noise 0.01 --out runs/drift

    Models compared with the teacher: each --student, "ptq-gG" (post-hoc ternary copy of the teacher, unless
    --no-posthoc), "wnoise=s" per --noise-scale, "snoise=e" per --state-noise. Output: a table, drift.json,
    drift.png (error vs position, one curve per layer) and drift_config.json in --out.
    """)


def _group_size(s: str) -> int | str:
    return s if s == "row" else int(s)


def register(sub) -> None:
    _register_eval(sub)
    _register_lm_eval(sub)
    _register_drift(sub)


# ---- ssmquant eval ----

def _register_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and zero-shot suites (mamba7, bimamba7), with a teacher's differences",
                       description="Evaluate a model (and optionally its teacher) on perplexity and the offline "
                                   "7-task zero-shot suites: a table on screen; results.json, items.json, "
                                   "results.txt, results.png and eval_config.json in --out.",
                       epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (plain or packed) or Hub repo id")
    p.add_argument("--teacher", default=None, help="reference model: adds its numbers and paired differences")
    p.add_argument("--tokenizer", default=None, help="tokenizer file/dir/Hub id (default: the model's)")
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--tasks", default="mamba7,ppl",
                   help="comma-separated mix of mamba7, bimamba7, ppl and task names (lambada_openai, hellaswag, "
                        "piqa, arc_easy, arc_challenge, winogrande, openbookqa, boolq); default mamba7,ppl")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="first N documents of each task, in lm-eval's --limit order (default: all)")
    g.add_argument("--split", action="append", default=[], metavar="TASK=SPLIT",
                   help="use another split for a task, e.g. arc_easy=validation (repeatable)")
    g.add_argument("--data-dir", default=None,
                   help="directory of <task>.jsonl / <task>.<split>.jsonl files used before packaged or Hub data")
    g.add_argument("--max-length", type=int, default=2048, help="longest scored input in tokens (default 2048)")
    g = p.add_argument_group("perplexity (the ppl task)")
    g.add_argument("--ppl-source", default=None,
                   help="text file, wikitext2 / wikitext103 / ptb (Hub, online) or hf:PATH:CONFIG:SPLIT:FIELD "
                        "(default: the bundled held-out sample, offline)")
    g.add_argument("--ppl-context", type=int, default=2048, help="sliding-window context in tokens (default 2048)")
    g.add_argument("--ppl-stride", type=int, default=512, help="sliding-window stride in tokens (default 512)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, metavar="DIR", help="write results.{json,txt,png}, items.json here")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default 16)")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for intervals (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no per-task progress lines")
    p.set_defaults(func=_run_eval)


def _parse_splits(items: list[str]) -> dict[str, str]:
    splits = {}
    for s in items:
        task, sep, split = s.partition("=")
        if not sep or not task.strip() or not split.strip():
            raise ConfigError(f"--split {s!r}: expected TASK=SPLIT, e.g. arc_easy=validation")
        splits[task.strip()] = split.strip()
    return splits


def eval_config(args):
    """``argparse.Namespace`` of ``ssmquant eval`` -> ``EvalConfig`` (user errors as ConfigError)."""
    from ..eval.suite import EvalConfig
    from ..io.bundled import SAMPLE_HELDOUT

    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    if args.batch_size < 1 or args.max_length < 2 or args.n_boot < 1:
        raise ConfigError("--batch-size and --n-boot must be >= 1, --max-length >= 2")
    if not 1 <= args.ppl_stride <= args.ppl_context:
        raise ConfigError(f"need 1 <= --ppl-stride <= --ppl-context (got {args.ppl_stride}, {args.ppl_context})")
    return EvalConfig(model=args.model, tasks=args.tasks, teacher=args.teacher, tokenizer=args.tokenizer,
                      limit=args.limit, out_dir=args.out, batch_size=args.batch_size, max_length=args.max_length,
                      data_dir=args.data_dir, splits=_parse_splits(args.split),
                      ppl_source=args.ppl_source or str(SAMPLE_HELDOUT), ppl_context=args.ppl_context,
                      ppl_stride=args.ppl_stride, n_boot=args.n_boot, seed=args.seed, device=args.device,
                      progress=args.progress)


def _run_eval(args) -> None:
    from ..eval.suite import run_eval
    from ..eval.tasks import resolve_tasks

    cfg = eval_config(args)
    resolve_tasks(cfg.tasks)  # unknown task names fail before any model is loaded
    run_eval(cfg)


# ---- ssmquant lm-eval ----

def _register_lm_eval(sub) -> None:
    # lm-eval's flags (--model, --tasks, ...) must reach it untouched. A REMAINDER positional does not take
    # arguments that look like this parser's options, so this parser's option prefix is "+" (which no lm-eval flag
    # uses); -h / --help are recognised by hand in _run_lm_eval.
    p = sub.add_parser("lm-eval", help="run lm-evaluation-harness with the ssmquant model adapter registered",
                       description="Register the ssmquant adapter (--model ssmquant) with lm-evaluation-harness "
                                   "0.4.13 and run its command line with the remaining arguments, so any harness "
                                   "task can evaluate an ssmquant model.",
                       usage="ssmquant lm-eval [-h] LM_EVAL_ARGS ...", epilog=LM_EVAL_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter, prefix_chars="+", add_help=False)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="LM_EVAL_ARGS",
                   help="arguments for lm-eval's command line (see `lm-eval --help`)")
    p.set_defaults(func=_run_lm_eval, _lm_eval_parser=p)


def _run_lm_eval(args) -> None:
    argv = list(args.lm_eval_args)
    if argv in ([], ["-h"], ["--help"]):
        args._lm_eval_parser.print_help()
        raise SystemExit(0)
    from ..eval.lmeval import (
        run_lm_eval_cli,  # needs lm-eval: a one-line SSMQuantError otherwise
    )

    try:
        run_lm_eval_cli(argv)
    except ValueError as e:  # lm-eval reports bad user input (unknown task, bad --model_args) as ValueError
        raise ConfigError(f"lm-eval: {e}") from e


# ---- ssmquant drift ----

def _register_drift(sub) -> None:
    p = sub.add_parser("drift", help="SSM-state and block-output error vs position, against the teacher",
                       description="Run the teacher and each compared model on the same text and report, per layer "
                                   "and log-spaced position bucket, the relative error of the SSM state and of the "
                                   "block outputs: does the error grow with length through the recurrence?",
                       epilog=DRIFT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("models")
    g.add_argument("--teacher", default=None, help="reference model (default: the bundled teacher)")
    g.add_argument("--student", action="append", default=[], metavar="DIR",
                   help="model to compare with the teacher, e.g. a QAT student (repeatable)")
    g.add_argument("--posthoc-group-size", type=_group_size, default=256, metavar="G",
                   help="group size of the post-hoc ternary copy of the teacher, 32/64/128/256/row (default 256)")
    g.add_argument("--no-posthoc", action="store_true", help="do not add the post-hoc ternary copy")
    g.add_argument("--tokenizer", default=None, help="tokenizer file/dir/Hub id (default: the teacher's)")
    g = p.add_argument_group("noise injection into the teacher")
    g.add_argument("--noise-scale", type=float, nargs="+", default=[1.0], metavar="S",
                   help="weight-noise models: Gaussian noise on in_proj/out_proj with S × the RMS of each tensor's "
                        "ternary quantization error (default 1 = quantization-sized)")
    g.add_argument("--noise-group-size", type=_group_size, default=256, metavar="G",
                   help="group size of the ternary error that sizes the weight noise (default 256)")
    g.add_argument("--no-weight-noise", action="store_true", help="skip the weight-noise models")
    g.add_argument("--state-noise", type=float, nargs="+", default=[], metavar="EPS",
                   help="state-noise models: add N(0, (EPS·RMS(state))²) to every layer's SSM state (default: none)")
    g.add_argument("--state-noise-every", type=int, default=16, metavar="K",
                   help="inject the state noise every K tokens (default 16)")
    g = p.add_argument_group("text and positions")
    g.add_argument("--text", default=None, metavar="FILE",
                   help="text file, documents separated by lines <|endoftext|> (default: bundled held-out sample)")
    g.add_argument("--max-len", type=int, default=2048, metavar="L", help="tokens per sequence (default 2048)")
    g.add_argument("--n-seqs", type=int, default=8, help="sequences averaged over (default 8)")
    g.add_argument("--positions-per-bucket", type=int, default=64, metavar="N",
                   help="positions per bucket where the state is read; 0 = every position (default 64)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, metavar="DIR", help="write drift.json, drift.png, drift_config.json here")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw drift.png")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines on stderr")
    g.add_argument("--seed", type=int, default=0, help="seed of the injected noise (default 0)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=_run_drift)


def drift_config(args):
    """``argparse.Namespace`` of ``ssmquant drift`` -> ``DriftConfig``."""
    from ..eval.drift import DriftConfig

    if args.positions_per_bucket < 0:
        raise ConfigError("--positions-per-bucket must be >= 0")
    return DriftConfig(teacher=args.teacher, students=list(args.student),
                       posthoc_group_size=None if args.no_posthoc else args.posthoc_group_size,
                       noise_scales=[] if args.no_weight_noise else list(args.noise_scale),
                       noise_group_size=args.noise_group_size, state_noise=list(args.state_noise),
                       state_noise_every=args.state_noise_every, text=args.text, tokenizer=args.tokenizer,
                       max_len=args.max_len, n_seqs=args.n_seqs, positions_per_bucket=args.positions_per_bucket,
                       seed=args.seed, device=args.device, out_dir=args.out, plot=args.plot,
                       progress=args.progress)


def _run_drift(args) -> None:
    from ..eval.drift import run_drift

    run_drift(drift_config(args))
