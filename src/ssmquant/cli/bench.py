"""``ssmquant bench decode|gemv|prefill``: GPU speed benchmarks that print one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import SSMQuantError


def register(sub) -> None:
    p = sub.add_parser("bench", help="GPU speed benchmarks (decode, ternary GEMV, prefill), JSON out",
                       description="Time the fast Triton/CUDA-graph paths on random-weight models of the published "
                                   "Mamba-2 shapes, with a baseline measured in the same run.",
                       epilog="examples:\n"
                              "  ssmquant bench decode --preset 1.3b --weights ternary --batch 1 --prompt-len 16 "
                              "--new-tokens 256\n"
                              "  ssmquant bench gemv --preset 1.3b --copies 50\n"
                              "  ssmquant bench prefill --preset 1.3b --batch 1 --seqlen 2048",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT")

    d = bsub.add_parser("decode", help="ms/token of CUDA-graphed decoding",
                        epilog="examples:\n  ssmquant bench decode --preset 1.3b --weights ternary --batch 1 "
                               "--prompt-len 16 --new-tokens 256\n"
                               "  ssmquant bench decode --preset 1.3b --weights dfssm --rank 12 --head int8",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(d)
    d.add_argument("--weights", choices=["ternary", "dfssm", "fp16"], default="ternary",
                   help="projection weights: 2-bit ternary, DF-SSM (1-bit scaffold + int8 U V), or fp16")
    d.add_argument("--rank", type=int, default=12, help="DF-SSM rank of U V (default 12: the 278 MiB configuration)")
    d.add_argument("--scaffold-bits", type=int, choices=[1, 2], default=2,
                   help="DF-SSM scaffold on the GPU: 2-bit words (default, faster) or 1 bit per weight")
    d.add_argument("--head", choices=["fp16", "int8"], default="fp16",
                   help="embedding / LM head of the measured model (int8: one scale per row)")
    d.add_argument("--mma", choices=["auto", "on", "off"], default="auto",
                   help="ternary projections on the tensor-core GEMV (kernels/cuda/ternary_mma.py): auto (default: "
                        "at batch 4-8), on (wherever the shapes allow) or off (Triton GEMV)")
    d.add_argument("--pdl", choices=["default", "early", "after", "off"], default="default",
                   help="programmatic dependent launch of the decode kernels (kernels/pdl.py): after (every "
                        "kernel releases the next one after its wait), early (GEMVs release it before) or off; "
                        "default: on Hopper, early for the tensor-core GEMV, after for the others (SSMQUANT_PDL="
                        "early|after|0 changes it). The run also times the other choice")
    d.add_argument("--state-dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="SSM state storage of the fast decoders (default fp32; fp16 / bf16 halve its traffic, "
                        "which dominates from batch 16; the run then also times fp32)")
    d.add_argument("--persistent", choices=["auto", "on", "off"], default="auto",
                   help="batch 1: every layer of the step in one persistent kernel (kernels/cuda/"
                        "persistent_decode.py): auto (default: where it can run and measured faster), "
                        "on (error where it cannot run) or off (three kernels a layer). With it the run also "
                        "times the per-layer kernels")
    d.add_argument("--out-split", choices=["auto", "on", "pair", "off"], default="auto",
                   help="the persistent kernel's out_proj split by SSM item (fp32 atomics; with it no grid barrier "
                        "before out_proj nor before the SSM step, which spins on in_proj's outputs: one a layer; "
                        "logits not bitwise reproducible): auto (default: pair where it can run, else on where "
                        "every CTA has one SSM item, else off), on, pair (by pairs of items in clusters of two CTAs, "
                        "sm_90) or off (by rows, three barriers a layer). With the persistent kernel the run also "
                        "times it by rows (or auto, when off)")
    d.add_argument("--head-argmax", choices=["auto", "on", "off"], default="auto",
                   help="batch 1 after the persistent kernel with out_proj split: the head GEMV and greedy "
                        "sampling's argmax in one kernel (kernels/cuda/head_argmax.py): auto (default: where it can "
                        "run), on (error where it cannot) or off (head GEMV, then the argmax's own launch). With it "
                        "the run also times it off")
    d.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    d.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (default 16)")
    d.add_argument("--new-tokens", type=int, default=256, help="generated tokens (default 256)")
    d.add_argument("--no-baseline", action="store_true", help="skip the fp16 and eager PyTorch baselines")
    d.set_defaults(func=_run_decode)

    g = bsub.add_parser("gemv", help="ternary GEMV vs cuBLAS fp16 in a CUDA graph over rotating weight copies",
                        epilog="example: ssmquant bench gemv --preset 1.3b --copies 50",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(g)
    g.add_argument("--batch", type=int, default=1, help="activation rows (default 1)")
    g.add_argument("--copies", type=int, default=50, help="rotating weight copies, >= 50 defeats L2 (default 50)")
    g.add_argument("--sweep", action="store_true", help="also try a grid of tile configs")
    g.set_defaults(func=_run_gemv)

    f = bsub.add_parser("prefill", help="tokens/s of prompt processing, ternary (Triton GEMM) vs fp16",
                        epilog="example: ssmquant bench prefill --preset 1.3b --batch 1 --seqlen 2048",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(f)
    f.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    f.add_argument("--seqlen", type=int, default=2048, help="tokens per sequence (default 2048)")
    f.set_defaults(func=_run_prefill)
    t = bsub.add_parser("train", help="tokens/s of a ternary QAT + KD step (teacher included) vs a plain step",
                        epilog="example: ssmquant bench train --preset 1.3b --seq-len 2048 --micro-batch 1",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(t)
    t.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    t.add_argument("--micro-batch", type=int, default=1, help="sequences per step (default 1)")
    t.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 peak for MFU (default 989, H100 SXM)")
    t.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block in backward, as distill --activation-checkpointing (no block graphs)")
    t.add_argument("--no-cuda-graphs", action="store_true",
                   help="run the student's blocks eagerly instead of replaying CUDA graphs of them")
    t.set_defaults(func=_run_train)
    p.set_defaults(func=lambda a: p.print_help())


def _common(p) -> None:
    p.add_argument("--preset", default="1.3b", help="model shape: 130m, 370m, 780m, 1.3b, 2.7b (default 1.3b)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (median reported)")
    p.add_argument("--group-size", type=int, default=128, help="inputs per ternary scale (default 128)")
    p.add_argument("--output", default=None, help="also write the JSON to this file")


def _need_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SSMQuantError("bench needs a CUDA GPU")


def _emit(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")


def _run_decode(a) -> None:
    _need_cuda()
    from ..bench.gpu import DecodeBenchConfig, bench_decode

    cfg = DecodeBenchConfig(preset=a.preset, weights=a.weights, batch=a.batch, prompt_len=a.prompt_len,
                            new_tokens=a.new_tokens, group_size=a.group_size, baseline=not a.no_baseline,
                            rank=a.rank, head=a.head, scaffold_bits=a.scaffold_bits, mma=a.mma, pdl=a.pdl,
                            state_dtype=a.state_dtype, persistent=a.persistent, out_split=a.out_split,
                            head_argmax=a.head_argmax,
                            **({"reps": a.reps} if a.reps else {}))
    _emit(bench_decode(cfg), a.output)


def _run_gemv(a) -> None:
    _need_cuda()
    from ..bench.gpu import GemvBenchConfig, bench_gemv

    cfg = GemvBenchConfig(preset=a.preset, batch=a.batch, copies=a.copies, group_size=a.group_size, sweep=a.sweep,
                          **({"reps": a.reps} if a.reps else {}))
    _emit(bench_gemv(cfg), a.output)


def _run_prefill(a) -> None:
    _need_cuda()
    from ..bench.gpu import PrefillBenchConfig, bench_prefill

    cfg = PrefillBenchConfig(preset=a.preset, batch=a.batch, seqlen=a.seqlen, group_size=a.group_size,
                             **({"reps": a.reps} if a.reps else {}))
    _emit(bench_prefill(cfg), a.output)


def _run_train(a) -> None:
    _need_cuda()
    from ..bench.train import TrainBenchConfig, bench_train

    cfg = TrainBenchConfig(preset=a.preset, seq_len=a.seq_len, micro_batch=a.micro_batch,
                           group_size=a.group_size, reps=a.reps or 5, peak_tflops=a.peak_tflops,
                           activation_checkpointing=a.activation_checkpointing, cuda_graphs=not a.no_cuda_graphs)
    _emit(bench_train(cfg), a.output)
