"""The GPU inference table of issues 7 and 9 in one command: packed GEMVs, fused SSM step, decode, prefill.

    PYTHONPATH=src python benchmarks/gpu_inference.py --out results.json [--stage tune|full] [--sweep]

``--stage tune``: GEMV and SSM-step timings plus the 1.3B batch-1 decode rows (ternary, int8 head, DF-SSM r=12);
``--stage full``: the whole table (sizes, batches, DF-SSM ranks; ``--prefill`` adds prefill); ``--stage final``:
the 1.3B batch-1 rows only (ternary with its baselines, int8 head, DF-SSM).

Each job is one ``ssmquant.bench.gpu`` call (the same functions ``ssmquant bench ...`` runs); a job that fails is
recorded with its error and the rest go on. Prints a short table last; the JSON holds every number.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import torch


def bench_ssm_step(preset: str = "1.3b", batch: int = 1, reps: int = 20, sweep: bool = True) -> dict:
    """The fused conv + SSM + gate kernel over all layers' states (one graph, states rotate through HBM), with and
    without programmatic dependent launch."""
    from ssmquant.bench.gpu import _graph_time_per_call
    from ssmquant.kernels.triton.ssm_step import ssm_step
    from ssmquant.model.config import preset_config

    c = preset_config(preset)
    dev = "cuda"
    zx = torch.randn(batch, c.d_in_proj, device=dev, dtype=torch.float16)
    cw = torch.randn(c.conv_dim, c.d_conv, device=dev)
    cb = torch.randn(c.conv_dim, device=dev)
    hvec = lambda: torch.randn(c.nheads, device=dev)  # noqa: E731
    dtb, A, D = hvec(), -hvec().abs(), hvec()
    pos = torch.zeros((), dtype=torch.int32, device=dev)
    states = [torch.randn(batch, c.nheads, c.headdim, c.d_state, device=dev) for _ in range(c.n_layer)]
    rings = [torch.randn(batch, c.conv_dim, c.d_conv, device=dev, dtype=torch.float16) for _ in range(c.n_layer)]
    h = torch.empty(batch, c.d_inner, device=dev)
    out = {"preset": preset, "batch": batch, "state_bytes_rw": 2 * states[0].numel() * 4}
    grid = [(bp, nw, pdl) for bp in (8, 16, 32) for nw in (2, 4) for pdl in (True, False)] if sweep else \
        [(16, 4, True), (16, 4, False)]
    for bp, nw, pdl in grid:
        us = _graph_time_per_call([lambda s=s, r=r: ssm_step(zx, cw, cb, r, dtb, A, D, s, pos, ngroups=c.ngroups,
                                                              h_out=h, BP=bp, num_warps=nw, pdl=pdl)
                                   for s, r in zip(states, rings)], reps)
        out[f"BP{bp}_w{nw}_{'pdl' if pdl else 'nopdl'}_us"] = us
    best = min((v, k) for k, v in out.items() if k.endswith("_us"))
    out["best"] = {"config": best[1], "us": best[0], "GBps": out["state_bytes_rw"] / (best[0] * 1e-6) / 1e9}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_inference.json", help="JSON output file")
    ap.add_argument("--stage", default="full", choices=["tune", "full", "final"], help="job list")
    ap.add_argument("--sweep", action="store_true", help="sweep GEMV tile configs")
    ap.add_argument("--prefill", action="store_true", help="also time prefill (1 x 2048)")
    ap.add_argument("--budget-s", type=float, default=540, help="skip remaining jobs after this many seconds")
    args = ap.parse_args()

    from ssmquant.bench.gpu import (DecodeBenchConfig, GemvBenchConfig, PrefillBenchConfig, bench_decode,
                                    bench_gemv, bench_prefill, environment)

    D = DecodeBenchConfig
    b1_13 = [("decode 1.3b ternary b1", lambda: bench_decode(D("1.3b", "ternary", 1))),
             ("decode 1.3b ternary b1 int8 head", lambda: bench_decode(D("1.3b", "ternary", 1, head="int8",
                                                                         baseline=False)))]
    dfssm = [(f"decode 1.3b dfssm r{r} b1{' int8 head' if h == 'int8' else ''}{' 1-bit' if bits == 1 else ''}",
              lambda r=r, h=h, bits=bits: bench_decode(D("1.3b", "dfssm", 1, rank=r, head=h, scaffold_bits=bits,
                                                         baseline=False)))
             for r, h, bits in ((12, "fp16", 2), (32, "fp16", 2), (12, "int8", 2), (12, "fp16", 1))]
    kernels = [("gemv 1.3b b1", lambda: bench_gemv(GemvBenchConfig("1.3b", sweep=args.sweep))),
               ("ssm_step 1.3b b1", lambda: bench_ssm_step("1.3b", sweep=args.sweep))]
    sizes = [(f"decode {p} ternary b1", lambda p=p: bench_decode(D(p, "ternary", 1))) for p in ("130m", "370m", "2.7b")]
    batches = [(f"decode 1.3b ternary b{b}", lambda b=b: bench_decode(D("1.3b", "ternary", b, ref_tokens=0,
                                                                        check_tokens=8))) for b in (4, 16, 64)]
    prefill = [("prefill 1.3b 1x2048", lambda: bench_prefill(PrefillBenchConfig("1.3b", 1, 2048)))]
    jobs = {"tune": kernels + b1_13 + dfssm[:1],
            "full": kernels + b1_13 + dfssm + sizes + batches + (prefill if args.prefill else []),
            # the 1.3B batch-1 rows alone (with their baselines), e.g. after a default changed
            "final": b1_13 + dfssm}[args.stage]
    results = {"env": environment(), "jobs": {}}
    t0 = time.time()
    for name, fn in jobs:
        if time.time() - t0 > args.budget_s:
            results["jobs"][name] = {"skipped": "time budget"}
            continue
        t = time.time()
        try:
            results["jobs"][name] = fn()
        except Exception as e:
            results["jobs"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        results["jobs"][name]["wall_s"] = round(time.time() - t, 1)
        print(f"[{time.time() - t0:6.1f}s] {name}: done", flush=True)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    print(summary(results))


def summary(results: dict) -> str:
    lines = []
    for name, r in results["jobs"].items():
        if "error" in r or "skipped" in r:
            lines.append(f"{name}: {r.get('error') or r.get('skipped')}")
            continue
        if r.get("benchmark") == "decode":
            rows = r["rows"]
            parts = [f"{k}={v['decode_ms_per_token']:.4f}ms" for k, v in rows.items()]
            chk = {k: v["check"] for k, v in rows.items() if "check" in v}
            parts += [f"{k}: rel={c['logits_rel_err']:.1e} top1={c['teacher_forced_top1_agreement']:.2f} "
                      f"greedy_same={c['greedy_tokens_identical']}" for k, c in chk.items()]
            parts += [f"{k}: gen={v['generate_ms_per_token']:.3f} prefill={v['prefill_ms']:.1f}ms"
                      for k, v in rows.items() if "generate_ms_per_token" in v]
            lines.append(f"{name}: " + "; ".join(parts))
        elif r.get("benchmark") == "gemv":
            for s, v in r["shapes"].items():
                parts = [f"{k[:-3]}={v[k]:.2f}us({v.get(k[:-3] + '_frac_of_copy_bw', 0):.0%})"
                         for k in v if k.endswith("_us") and not k.endswith("default_us")
                         and isinstance(v[k], (int, float))]   # not the ``*_sweep_us`` dicts
                lines.append(f"{name} {s}: " + " ".join(parts) + f" cfg={v.get('ternary_config')} "
                             f"errs={[(k, f'{e:.1e}') for k, e in v.items() if k.endswith('rel_err')]}"
                             f" {('ERRORS ' + str(v['errors'])[:600]) if 'errors' in v else ''}")
        elif r.get("benchmark") == "prefill":
            lines.append(f"{name}: ternary {r['ternary_tok_per_s']:.0f} tok/s, fp16 torch "
                         f"{r['fp16_pytorch_tok_per_s']:.0f} tok/s")
        else:
            lines.append(f"{name}: {json.dumps({k: v for k, v in r.items() if not isinstance(v, dict)})} "
                         f"best={r.get('best')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
