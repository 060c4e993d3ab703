"""Where the persistent decode step's time goes: the kernel alone, with phases switched off or loads moved.

    PYTHONPATH=src python benchmarks/persistent_phases.py --preset 1.3b [--variant NAME=-DOPT,...]
        [--state-dtype fp16] --out p.json

Builds the persistent step (``kernels/cuda/persistent_decode.py``) of a random ternary model of the preset's shape
and times the kernel alone in a CUDA graph (``--launches`` launches per replay, median of ``--reps`` replays),
compiled with the debugging constants of ``persistent_decode.cu``: ``PHASES`` (bit 0 in_proj, 1 SSM step,
2 out_proj; 0 = barriers and the copies to shared memory only), ``LATE_LOADS=0`` (scales and norm weights
loaded next to the words' copies and before each wait), ``NO_SCALE_LOADS=1`` (scales not loaded at all);
``-DSPLIT_OUT=1`` in a variant builds the step with out_proj split by SSM item (``split_out=True``; ``-DSPLIT_PAIR=1``
by pairs, ``-DSUMS_PARTS=N`` its sums in N parts (default 2), ``-DLL_ZX=0`` with a barrier before the SSM step),
combinable with the others (``--variant NAME=-DSPLIT_OUT=1,-DPHASES=1``; PHASES does not switch the split step's phases).
The variants with phases off compute garbage; only
their time means something. Also times the per-layer step's kernels (``FastDecoder`` without it) the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

VARIANTS = {
    "full": (),
    "barriers_and_loads": ("-DPHASES=0",),
    "in_proj_only": ("-DPHASES=1",),
    "ssm_only": ("-DPHASES=2",),
    "out_proj_only": ("-DPHASES=4",),
    "no_scale_loads": ("-DNO_SCALE_LOADS=1",),
    "early_loads": ("-DLATE_LOADS=0",),
    "out_split": ("-DSPLIT_OUT=1",),        # out_proj split by SSM item (built with split_out=True)
    "out_split_pair": ("-DSPLIT_OUT=1", "-DSPLIT_PAIR=1"),   # ... by pairs of items (pair=True)
}
SPLIT, PAIR = "-DSPLIT_OUT=1", "-DSPLIT_PAIR=1"


def _time(fn, launches: int, reps: int) -> float:
    """Median us per ``fn`` call, ``launches`` calls captured in one graph."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(launches):
            fn()
    g.replay()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1000 / launches)
    return statistics.median(out)


# (name, from, to): time stamps of persistent_decode.cu's ``stamp`` calls, per layer; -1 = the next layer's 0.
SEGMENTS = [("wait_A", 0, 1), ("stage_A", 1, 2), ("in_proj_and_arrive", 2, 3), ("wait_B", 3, 5),
            ("ssm_and_arrive", 5, 6), ("store_state_wait_C", 6, 7), ("stage_C", 7, 8),
            ("out_proj_and_arrive", 8, 9), ("to_next_layer", 9, -1)]
# With out_proj split by SSM item (no barrier before it): stamps 6 after the SSM step, 4 after issuing the next
# in_proj's copies, 7 after out_proj's words' wait, 8 after the products and atomics, 9 after the arrival.
SEGMENTS_SPLIT = [("wait_A", 0, 1), ("stage_A", 1, 2), ("in_proj_and_arrive", 2, 3), ("wait_B", 3, 5),
                  ("ssm", 5, 6), ("issue_next", 6, 4), ("wait_words", 4, 7), ("out_split", 7, 8), ("arrive", 8, 9),
                  ("to_next_layer", 9, -1)]


# -DFINE_TRACE=1 (with out_proj split): in_proj's stamps 12 after the copies' issue hook, 13 after the lane's inputs,
# 14 after its words' wait, 15 after the products, 16 after the stores; the SSM step's 17 after its words' spin,
# 18 after the conv and its barrier, 19 at its end.
SEGMENTS_FINE = [("in_proj_issue", 2, 12), ("in_proj_lane_x", 12, 13), ("in_proj_words_wait", 13, 14),
                 ("in_proj_products", 14, 15), ("in_proj_sum_store", 15, 16), ("in_proj_to_3", 16, 3),
                 ("ssm_spin", 5, 17), ("ssm_conv", 17, 18), ("ssm_update", 18, 19), ("ssm_to_6", 19, 6)]


def trace_segments(step, n_layer: int, fine: bool = False) -> dict:
    """One traced launch: per segment, the median over CTAs and layers (us) and the slowest CTA's median."""
    slots = 48 if fine else 24
    trace = torch.zeros(step.grid, n_layer, slots, dtype=torch.int64, device="cuda")
    step(trace)
    torch.cuda.synchronize()
    t = trace.cpu().double()
    # ns per cycle, per CTA: (globaltimer, clock) pairs at the start (layer 0, slots 10 / 11) and end (layer 1).
    ns_per_cycle = (t[:, 1, 11] - t[:, 0, 11]) / (t[:, 1, 10] - t[:, 0, 10])
    out = {}
    for name, a, b in (SEGMENTS_SPLIT + (SEGMENTS_FINE if fine else [])) if step.split_out else SEGMENTS:
        if b == -1:
            d = t[:, 1:, 0] - t[:, :-1, 9]
        elif a == 0:
            d = t[:, 1:, b] - t[:, 1:, a]            # layer 0 has no wait before its in_proj
        else:
            d = t[:, :, b] - t[:, :, a]
        us = d * ns_per_cycle[:, None] / 1000
        # CTAs without an SSM item skip some stamps.
        stamped = [c for c in range(t.shape[0]) if bool((t[c, :, a] != 0).all() and (t[c, :, max(b, 0)] != 0).all())]
        us = us[stamped]
        out[name] = {"median": us.median().item(), "max_cta": us.median(1).values.max().item()}
    # The launch's fixed costs, per CTA (clock): from its start to layer 0's first stamp, layer 0 whole (its
    # in_proj's words were not copied ahead), and from the last layer's arrival to its end (the final norm).
    cyc = ns_per_cycle / 1000
    for name, d in (("start_to_layer0", t[:, 0, 0] - t[:, 0, 10]), ("layer0", t[:, 0, 9] - t[:, 0, 0]),
                    ("later_layers", (t[:, -1, 9] - t[:, 0, 9]) / max(1, n_layer - 1)),
                    ("last_arrival_to_end", t[:, 1, 10] - t[:, -1, 9])):
        us = d * cyc
        out[name] = {"median": us.median().item(), "max_cta": us.max().item()}
    # Barriers across CTAs (global timer): arrival skew (last minus first arrival) and latency (median release
    # minus last arrival), medians over layers. Arrive = slot 3 / 6 / 9, release = 5 / 7 / next layer's 1.
    g = t[:, :, slots // 2:] / 1000                                     # us
    barriers = [("barrier_A", g[:, :, 3], g[:, :, 5]), ("barrier_B", g[:, :, 6], g[:, :, 7]),
                ("barrier_C", g[:, :-1, 9], g[:, 1:, 1])]
    for name, arr, rel in barriers[::2] if step.split_out else barriers:
        skew = (arr.max(0).values - arr.min(0).values).median().item()
        lat = (rel.median(0).values - arr.max(0).values).median().item()
        out[name] = {"median": lat, "max_cta": skew}
    # Who holds the layer's barrier: the last arrival against the median one, and the CTAs that arrive last most
    # often (with how often and their median lateness against the median arrival).
    arr = g[:, :, 9]
    late = arr - arr.median(0).values                                   # (CTAs, layers) us
    out["last_minus_median_arrival"] = {"median": late.max(0).values.median().item(),
                                        "max_cta": late.max(0).values.max().item()}
    last = arr.argmax(0)
    counts = torch.bincount(last, minlength=arr.shape[0])
    out["last_arrivers"] = [{"cta": int(c), "layers": int(counts[c]), "late_us": late[c].median().item()}
                            for c in counts.argsort(descending=True)[:6] if counts[c] > 0]
    return out


@torch.no_grad()
def main() -> None:
    from ssmquant.bench.gpu import STATE_DTYPES, environment
    from ssmquant.bench.models import random_model
    from ssmquant.kernels.cuda.persistent_decode import PersistentDecodeStep
    from ssmquant.kernels.fast_decode import FastDecoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=-DOPT[,-DOPT...]: an extra variant (default: the built-in list)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants")
    ap.add_argument("--ends", action="store_true",
                    help="split variants also read the token's embedding and write the head's normed input, as in "
                         "FastDecoder's default step")
    ap.add_argument("--launches", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--trace", action="store_true", help="also time the phases inside one launch (clock64)")
    ap.add_argument("--trace-variant", default="full", help="the variant traced (default full)")
    ap.add_argument("--state-dtype", choices=tuple(STATE_DTYPES), default="fp32",
                    help="SSM state storage (FastDecoder's state_dtype; default fp32)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    variants = dict(VARIANTS)
    for v in a.variant:
        name, opts = v.split("=", 1)
        variants[name] = tuple(o for o in opts.split(",") if o)
    if a.only is not None:
        variants = {k: v for k, v in variants.items() if k in a.only}
    model = random_model(a.preset, weights="ternary")
    cfg = model.config
    prompt = torch.randint(0, 50000, (1, 16), device="cuda")
    dec = FastDecoder(model, 1, 8, gemv_configs={"persistent": False}, state_dtype=STATE_DTYPES[a.state_dtype])
    dec.start(prompt)
    result = {"preset": a.preset, "env": environment(), "n_layer": cfg.n_layer, "launches": a.launches, "rows": {}}

    us = _time(dec._layers, a.launches, a.reps)
    result["rows"]["per_layer_kernels"] = {"us": us, "us_per_layer": us / cfg.n_layer}
    print(f"{'per_layer_kernels':24s} {us:9.1f} us  {us / cfg.n_layer:6.2f} us/layer", flush=True)
    xn = torch.zeros(1, cfg.d_model, dtype=dec.zx.dtype, device="cuda")

    def build(opts):
        parts = [int(o.split("=")[1]) for o in opts if o.startswith("-DSUMS_PARTS=")]
        ends = a.ends and SPLIT in opts
        return PersistentDecodeStep(cfg, dec.layers, dec.rings, dec.states, residual=dec.residual, zx=dec.zx,
                                    embed=(dec.ids, dec.emb, dec.emb_scale) if ends else None,
                                    final_norm=(dec.norm_f, xn) if ends else None,
                                    h=dec.h, pos=dec.pos, eps=cfg.norm_eps, split_out=SPLIT in opts,
                                    pair=PAIR in opts, sums_parts=parts[-1] if parts else 2,
                                    extra_options=tuple(o for o in opts if o not in (SPLIT, PAIR)
                                                        and not o.startswith("-DSUMS_PARTS=")))

    for name, opts in variants.items():
        step = build(opts)
        us = _time(step, a.launches, a.reps)
        result["rows"][name] = {"options": list(opts), "us": us, "us_per_layer": us / cfg.n_layer,
                                "registers": step.kernel.num_regs}
        print(f"{name:24s} {us:9.1f} us  {us / cfg.n_layer:6.2f} us/layer  regs {step.kernel.num_regs}", flush=True)
    if a.trace:
        step = build(variants.get(a.trace_variant, VARIANTS.get(a.trace_variant, ())))
        result["trace_variant"] = a.trace_variant
        fine = "-DFINE_TRACE=1" in variants.get(a.trace_variant, VARIANTS.get(a.trace_variant, ()))
        result["trace_us"] = trace_segments(step, cfg.n_layer, fine)
        for k, v in result["trace_us"].items():
            if k == "last_arrivers":
                print(f"  {k:22s} {v}", flush=True)
                continue
            what = ("latency", "arrival skew") if k.startswith("barrier") else ("median", "slowest CTA")
            print(f"  {k:22s} {what[0]} {v['median']:6.2f} us   {what[1]} {v['max_cta']:6.2f} us", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
