"""Where a batch-1 decode step's time goes, kernel group by kernel group, inside CUDA graphs.

    PYTHONPATH=src python benchmarks/decode_breakdown.py --preset 1.3b [--head int8] [--head-argmax auto|on|off]
        [--out b.json]

Builds ``FastDecoder`` for a random ternary model of the preset's shape (the persistent step where "auto" takes it)
and times graphs of growing prefixes of one step: the embedding (empty where the persistent step reads it
itself); + the layers; + the head (final norm and logits); + sampling (greedy argmax); + appending the token (the
whole step; empty where the argmax appends it). With the fused head + argmax (``cuda/head_argmax.py``, taken by
"auto" where it can run) "head" is that kernel, which also samples and appends: "sample" and "append" are empty.
Each graph holds ``--launches`` copies of its prefix; median us per copy over ``--reps`` replays. The difference
between consecutive prefixes is what that group adds to a step (launch gaps included).
"""

from __future__ import annotations

import argparse
import inspect
import json

import torch
from persistent_phases import _time  # (this folder: the same graph timing)


@torch.no_grad()
def main() -> None:
    from ssmquant.bench.gpu import AUTO_ON_OFF, environment
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.fast_decode import FastDecoder
    from ssmquant.quant.int8 import quantize_int8_

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--head", choices=["fp16", "int8"], default="fp16")
    ap.add_argument("--head-argmax", choices=["auto", "on", "off"], default="auto",
                    help="the head GEMV and the greedy argmax in one kernel (FastDecoder's gemv_configs)")
    ap.add_argument("--launches", type=int, default=20)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = random_model(a.preset, weights="ternary")
    if a.head == "int8":
        quantize_int8_(model, embedding=True, head=True)
    # ids room for every appended token of the timing graphs (pos is reset before each; the append writes ids[pos + 1])
    ha = AUTO_ON_OFF[a.head_argmax]
    dec = FastDecoder(model, 1, 4096, gemv_configs={"head_argmax": ha} if a.head_argmax != "auto" else None)
    dec.start(torch.randint(0, 50000, (1, 16), device="cuda"))
    layers = dec.persistent if dec.persistent is not None else dec._layers
    # Where the persistent step reads the embedding itself (FastDecoder._fused_ends), "embed" is empty and "layers"
    # holds it; where the argmax appends the token (``_sample(append=True)``), "append" is empty and "sample" holds
    # it. (Older trees have neither.)
    fused = getattr(dec, "_fused_ends", False)
    fused_append = "append" in inspect.signature(dec._sample).parameters
    fused_head = getattr(dec, "head_argmax", None) is not None
    nothing = lambda: None
    parts = [("embed", nothing if fused else dec._embed), ("layers", layers),
             ("head", (lambda: dec._head(append=(dec.ids, dec.pos))) if fused_head else dec._head),
             ("sample", nothing if fused_head else (lambda: dec._sample(append=True)) if fused_append else dec._sample),
             ("append", nothing if fused_append or fused_head else dec._append)]
    result = {"preset": a.preset, "head": a.head, "env": environment(), "fused_ends": fused,
              "fused_append": fused_append, "fused_head_argmax": fused_head,
              "layers_kernel": "persistent" if dec.persistent is not None else "per_layer", "rows": {}}
    prev = 0.0
    for i in range(len(parts)):
        fns = [f for _, f in parts[:i + 1]]
        dec.pos.zero_()
        us = _time(lambda fns=fns: [f() for f in fns], a.launches, a.reps)
        name = parts[i][0]
        result["rows"][name] = {"prefix_us": us, "adds_us": us - prev}
        print(f"+ {name:8s} prefix {us:8.1f} us   adds {us - prev:7.1f} us", flush=True)
        prev = us
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
