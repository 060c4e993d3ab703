"""``ssmquant info``."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and bytes",
                       description="Load a Mamba-2 checkpoint and print its config, parameter count and bytes by "
                                   "dtype and by part.",
                       epilog="example: ssmquant info state-spaces/mamba2-130m --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory (mamba-ssm or HF layout, plain or packed) or Hub repo id")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(func=_run_info)


def _run_info(args) -> None:
    from ..io.checkpoints import load_model
    from ..model.summary import tensor_summary

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
    print(f"in memory   {summary['bytes']:,} bytes ({summary['bytes'] / 1e6:.2f} MB; ternary codes one byte each)")
    for dt, v in summary["by_dtype"].items():
        print(f"  {dt:<10} {v['numel']:>14,} elements {v['bytes'] / 1e6:>10.2f} MB")
    for part, v in summary["by_part"].items():
        print(f"  {part:<12} {v['numel']:>12,} elements {v['bytes'] / 1e6:>10.2f} MB")
    if "size" in out:
        from ..quant.size import format_size_report

        print(format_size_report(out["size"]))


