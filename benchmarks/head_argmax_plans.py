"""The batch-1 head with greedy sampling: the fused kernel (kernels/cuda/head_argmax.py) at several plans (rows a
warp loads at once R, CTAs an SM) against the head GEMV (kernels/triton/gemv.py) followed by the argmax launch
(kernels/triton/argmax.py), inside CUDA graphs, on a random head of the preset's shape.

    PYTHONPATH=src python benchmarks/head_argmax_plans.py --preset 1.3b [--out h.json]

Each graph holds ``--launches`` calls; median us per call over ``--reps`` replays. The head (103 MB int8, 206 MB
fp16 at 1.3B) is larger than L2, so consecutive calls read it from HBM; GB/s counts the weight bytes only.
"""

from __future__ import annotations

import argparse
import json

import torch
from persistent_phases import _time  # (this folder: the same graph timing)


@torch.no_grad()
def main() -> None:
    from ssmquant.bench.gpu import environment
    from ssmquant.kernels.cuda.head_argmax import HeadArgmax, _plan, head_argmax_ref
    from ssmquant.kernels.triton.argmax import ArgmaxRows
    from ssmquant.kernels.triton.gemv import gemv
    from ssmquant.model.config import preset_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--launches", type=int, default=20)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cfg = preset_config(a.preset)
    K, V, N = cfg.d_model, cfg.vocab_size, cfg.padded_vocab_size
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(K, device="cuda", generator=g).half()
    tok = torch.zeros(1, dtype=torch.int64, device="cuda")
    logits = torch.zeros(1, N, device="cuda")
    result = {"preset": a.preset, "N": N, "K": K, "env": environment(), "rows": {}}
    for head in ("int8", "fp16"):
        if head == "int8":
            w = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8, generator=g)
            s = (torch.rand(N, device="cuda", generator=g) * 0.01 + 1e-3).half()
        else:
            w, s = (torch.randn(N, K, device="cuda", generator=g) * 0.02).half(), None
        nbytes = w.numel() * w.element_size()
        am = ArgmaxRows(1, "cuda")
        rows = {"gemv_then_argmax": lambda am=am, w=w, s=s: am(gemv(x[None], w, row_scale=s, out=logits)[:, :V], tok)}
        want = head_argmax_ref(x, w, s, V)[1]
        default = _plan(K, head == "int8")
        # (R, MINB) that fit the registers at 1.3B: int8 up to 4 rows at one CTA an SM, fp16 up to 2.
        for plan in sorted({default, (1, 1), (2, 1), (1, 2), *([(3, 1), (4, 1)] if head == "int8" else [])}):
            ha = HeadArgmax("cuda", plan=plan)
            ha(x, w, s, logits[0], tok, vocab=V)
            assert int(tok) == want, (plan, int(tok), want)
            rows[f"fused_R{plan[0]}_minb{plan[1]}{'_default' if plan == default else ''}"] = \
                lambda ha=ha, w=w, s=s: ha(x, w, s, logits[0], tok, vocab=V)
        for name, fn in rows.items():
            us = _time(fn, a.launches, a.reps)
            result["rows"][f"{head}_{name}"] = {"us": us, "weight_GBps": nbytes / us / 1e3}
            print(f"{head} {name:28s} {us:7.1f} us  {nbytes / us / 1e3:7.0f} GB/s", flush=True)
        del w, rows
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
