"""The batch-1 decode with and without a memset of the persistent step's barrier counter and partial sums before
each launch (``-DSELF_RESET=0``: the step as it was; default: the launch leaves them ready for the next), same job,
alternating, on a random ternary model of the preset's shape.

    PYTHONPATH=src python benchmarks/step_reset_ab.py --preset 1.3b [--head int8] [--out r.json]

Times each decoder as ``ssmquant bench decode`` does (median of 5 repetitions of 255 CUDA-graphed steps).
"""

from __future__ import annotations

import argparse
import functools
import json

import torch


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
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two decoders")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = random_model(a.preset, weights="ternary")
    if a.head == "int8":
        quantize_int8_(model, embedding=True, head=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, 50000, (1, 16), device="cuda", generator=g)
    cfg = DecodeBenchConfig(preset=a.preset, head=a.head)
    result = {"preset": a.preset, "head": a.head, "env": environment(), "rows": {}}
    try:
        for r in range(a.rounds):
            for name, extra in (("memset", ("-DSELF_RESET=0",)), ("self_reset", ())):
                fd.PersistentDecodeStep = functools.partial(PersistentDecodeStep, extra_options=extra)
                dec = fd.FastDecoder(model, 1, cfg.new_tokens, gemv_configs={"persistent": True})
                assert dec.persistent.self_reset == (name == "self_reset")
                t = _time_decoder(dec, prompt, cfg)
                result["rows"][f"{name}_{r}"] = t
                print(f"{name:12s} round {r}: {t['decode_ms_per_token'] * 1000:7.1f} us/token", flush=True)
                del dec
    finally:
        fd.PersistentDecodeStep = PersistentDecodeStep
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
