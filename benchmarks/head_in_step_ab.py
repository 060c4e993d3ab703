"""The batch-1 decode with the head and greedy argmax inside the persistent step's launch (``head_in_step``) against
the same kernel in a launch of its own after the step (``cuda/head_argmax.py``), and the in-step head's own
settings: rows a warp loads at once (``HEAD_R``) and whether its first rows are loaded before the last barrier
(``HEAD_EARLY``). Same job, the variants alternating, on a random ternary model of the preset's shape.

    PYTHONPATH=src python benchmarks/head_in_step_ab.py --preset 1.3b [--head int8] [--rounds 2] [--out r.json]

Each decoder is timed as ``ssmquant bench decode`` times it (median of 5 repetitions of 255 CUDA-graphed steps) and
its greedy tokens are compared with the first variant's.
"""

from __future__ import annotations

import argparse
import functools
import json

import torch

# name -> (head in the step, PersistentDecodeStep keywords)
VARIANTS = {
    "apart": (False, {}),
    "in_step_r2": (True, {"head_rows": 2}),
    "in_step_r1": (True, {"head_rows": 1}),
    "in_step_r3": (True, {"head_rows": 3}),
    "in_step_r4": (True, {"head_rows": 4}),
    "in_step_r2_late": (True, {"head_rows": 2, "extra_options": ("-DHEAD_EARLY=0",)}),
}


@torch.no_grad()
def main() -> None:
    from ssmquant.bench.gpu import DecodeBenchConfig, _time_decoder, environment
    from ssmquant.bench.models import random_model
    from ssmquant.kernels import fast_decode as fd
    from ssmquant.kernels.cuda.persistent_decode import PersistentDecodeStep
    from ssmquant.quant.int8 import quantize_int8_

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--head", choices=["fp16", "int8"], default="fp16")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the variants")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="these variants only (default: all)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = random_model(a.preset, weights="ternary")
    if a.head == "int8":
        quantize_int8_(model, embedding=True, head=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, 50000, (1, 16), device="cuda", generator=g)
    cfg = DecodeBenchConfig(preset=a.preset, head=a.head)
    result = {"preset": a.preset, "head": a.head, "env": environment(), "rows": {}}
    first_tokens = None
    try:
        for r in range(a.rounds):
            for name in a.only or VARIANTS:
                in_step, kw = VARIANTS[name]
                fd.PersistentDecodeStep = functools.partial(PersistentDecodeStep, **kw)
                dec = fd.FastDecoder(model, 1, cfg.new_tokens,
                                     gemv_configs={"persistent": True, "head_in_step": in_step})
                assert dec._head_in_step == in_step
                t = _time_decoder(dec, prompt, cfg)
                toks = dec.generate(prompt, 64)
                first_tokens = toks if first_tokens is None else first_tokens
                t["greedy_64_same_as_first_variant"] = bool(torch.equal(toks, first_tokens))
                result["rows"][f"{name}_{r}"] = t
                print(f"{name:16s} round {r}: {t['decode_ms_per_token'] * 1000:7.1f} us/token  greedy tokens "
                      f"{'same' if t['greedy_64_same_as_first_variant'] else 'DIFFER'}", flush=True)
                del dec
    finally:
        fd.PersistentDecodeStep = PersistentDecodeStep
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
