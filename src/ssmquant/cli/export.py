"""``ssmquant export``: write a model in another format (GGUF for llama.cpp)."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  ssmquant export ./student --format gguf --type tq2_0 --out student-tq2_0.gguf
  ssmquant export ./student --format gguf --type tq1_0 --out student-tq1_0.gguf
  ssmquant export ./teacher --format gguf --type f16 --out teacher-f16.gguf

TQ2_0 / TQ1_0 hold one fp16 scale per 256 weights: a student trained with group_size 256 exports losslessly;
other group sizes are refused (never re-quantized). Run the file with llama.cpp, e.g. llama-cli -m student.gguf.
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to GGUF (llama.cpp)",
                       description="Export a packed ternary or dense Mamba-2 checkpoint to a GGUF file that llama.cpp "
                                   "runs. The file is written atomically and read back before success is reported.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory (packed ternary from distill, or dense)")
    g = p.add_argument_group("output")
    g.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default gguf)")
    g.add_argument("--type", default="auto", choices=["auto", "tq2_0", "tq1_0", "q1_0", "f16"],
                   help="tensor type of the projections: tq2_0 (2.06 bits), tq1_0 (1.69 bits), f16; q1_0 (1.125 "
                        "bits) for a DF-SSM scaffold; auto = tq2_0 for ternary models, f16 otherwise")
    g.add_argument("--drop-lowrank", action="store_true",
                   help="with --type q1_0: accept that a DF-SSM model's low-rank U.V is left out (llama.cpp has no "
                        "op for it)")
    g.add_argument("--out", required=True, help="the .gguf file to write")
    g.add_argument("--tokenizer", default=None, help="tokenizer.json or directory (default: the model's)")
    g.add_argument("--name", default=None, help="general.name in the file (default: the directory name)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=_run_export)


def _run_export(args) -> None:
    from dataclasses import asdict

    from ..export.gguf import GGUFExportConfig, export_gguf

    rep = export_gguf(GGUFExportConfig(model=args.model, out=args.out, type=args.type, tokenizer=args.tokenizer,
                                       name=args.name, drop_lowrank=args.drop_lowrank))
    if args.json:
        print(json.dumps(asdict(rep), indent=2))
        return
    types = ", ".join(f"{k} {v}" for k, v in sorted(rep.by_type.items()))
    print(f"wrote {rep.path} ({rep.bytes / 1e6:.2f} MB, {rep.tensors} tensors: {types}; read back and verified)")
