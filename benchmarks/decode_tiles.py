"""End-to-end choice of the ternary GEMV tiles for one model shape: decode ms/token with each candidate config.

    PYTHONPATH=src python benchmarks/decode_tiles.py --preset 2.7b [--preset 130m ...] [--pdl] --out tiles.json

For each preset: ``bench_decode`` (ternary, batch 1, no fp16 baselines) with the default tiles
(``gemv.default_config``), then with candidate (in_proj, out_proj) configs: the masked power-of-two tiles used
before, tiles that divide the row, 4 / 8 / 16 rows per program; with ``--pdl``, then each projection's release
mode (``kernels/pdl.py``). A GEMV alone in a rotating-copies graph does not
predict the decode step (the kernels overlap through PDL), so the choice is made on the step.
"""

from __future__ import annotations

import argparse
import json

import triton


def candidates(K: int) -> list[dict]:
    """Tile configs for a ternary weight with K inputs (K // 16 words per row)."""
    kwt = K // 16
    even = kwt & -kwt
    out = []
    for bkw in sorted({min(128, triton.next_power_of_2(kwt)), min(256, triton.next_power_of_2(kwt)),
                       min(even, 256), 64, 32}):
        if bkw < 16 or bkw > 256:
            continue
        for bn in (4, 8, 16):
            out.append({"BN": bn, "BKW": bkw, "num_warps": max(1, bkw // 128), "maxnreg": 168})
    return out


def _run(cfg, over) -> dict:
    from ssmquant.bench.gpu import bench_decode

    r = bench_decode(cfg, gemv_configs=over)
    return {"ms": r["decode_ms_per_token"], "logits_rel_err": r["rows"][r["main_row"]]["check"]["logits_rel_err"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", required=True, help="model shape (repeatable)")
    ap.add_argument("--out", default="decode_tiles.json", help="JSON output file")
    ap.add_argument("--max-configs", type=int, default=15, help="candidates per projection (in order)")
    ap.add_argument("--pdl", action="store_true",
                    help="then, with the best tiles, each projection's PDL release mode (kernels/pdl.py): after / "
                         "early for in_proj x out_proj")
    a = ap.parse_args()
    from ssmquant.bench.gpu import DecodeBenchConfig
    from ssmquant.kernels.triton.gemv import default_config
    from ssmquant.model.config import preset_config

    res = {}
    for p in a.preset:
        c = preset_config(p)
        cfg = DecodeBenchConfig(p, "ternary", 1, baseline=False, check_tokens=4)
        r = {"default": {"in_proj": default_config(c.d_in_proj, c.d_model, True),
                         "out_proj": default_config(c.d_model, c.d_inner, True),
                         **_run(cfg, None)}}
        print(p, "default", r["default"], flush=True)
        best_in = r["default"]["in_proj"]
        for name, K in (("in_proj", c.d_model), ("out_proj", c.d_inner)):
            for i, cand in enumerate(candidates(K)[: a.max_configs]):
                over = {name: cand} if name == "in_proj" else {"in_proj": best_in, name: cand}
                try:
                    got = _run(cfg, over)
                except Exception as e:          # a config that does not compile is recorded, not fatal
                    got = {"ms": f"{type(e).__name__}: {e}"[:200]}
                r[f"{name}_{i}"] = {**over, **got}
                print(p, name, cand, got, flush=True)
            if name == "in_proj":
                ok = [v for k, v in r.items() if k.startswith("in_proj_") and isinstance(v["ms"], float)]
                if ok and min(v["ms"] for v in ok) < r["default"]["ms"]:
                    best_in = min(ok, key=lambda v: v["ms"])["in_proj"]
        if a.pdl:
            ok = [v for k, v in r.items() if k.startswith("out_proj_") and isinstance(v["ms"], float)]
            best_out = min(ok, key=lambda v: v["ms"])["out_proj"] if ok else r["default"]["out_proj"]
            for pin in ("after", "early"):
                for pout in ("after", "early"):
                    over = {"in_proj": {**best_in, "pdl": pin}, "out_proj": {**best_out, "pdl": pout}}
                    r[f"pdl_{pin}_{pout}"] = {**over, **_run(cfg, over)}
                    print(p, "pdl", pin, pout, r[f"pdl_{pin}_{pout}"]["ms"], flush=True)
        res[p] = r
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
