"""Tiles of the ternary tensor-core product (``kernels/triton/gemm.py``) for batched decode (16-64 rows).

    PYTHONPATH=src python benchmarks/gemm_tiles.py --preset 1.3b --rows 16 32 64 --out gemm_tiles.json

1. Every candidate (BM, BN, warps, stages) at each row count and projection shape, timed like ``ssmquant bench
   gemv`` (a CUDA graph over ``--copies`` rotating weight copies, per-call median), against cuBLAS on the fp16
   weight in the same graph protocol.
2. ``bench_decode`` (ternary, no baselines) at each of ``--decode-rows`` with the default tiles, with the best
   tiles of step 1 (``gemv_configs`` "in_proj_gemm" / "out_proj_gemm"), and with the default tiles again, one
   after the other in this process. (Run 11, which set ``gemm.default_tiles``, compared against the tiles that
   were the default then: BM 16 / 32 / 64 by rows, BN 64, 4 warps, 2 stages.)
"""

from __future__ import annotations

import argparse
import json


def candidates(M: int) -> list[dict]:
    return [dict(BM=bm, BN=bn, num_warps=nw, num_stages=st) for bm in (16, 32, 64) if bm <= max(16, M)
            for bn in (16, 32, 64, 128) for nw in (2, 4, 8) for st in (2, 3, 4)]


def main() -> None:
    import torch

    from ssmquant.bench.gpu import DecodeBenchConfig, _graph_time_per_call, bench_decode, environment
    from ssmquant.kernels.layout import pack_gemv
    from ssmquant.kernels.triton.gemm import default_tiles, ternary_matmul
    from ssmquant.model.config import preset_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b", help="model shape (default 1.3b)")
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64], help="activation rows swept")
    ap.add_argument("--decode-rows", type=int, nargs="*", default=[16, 64], help="batch sizes decoded end to end")
    ap.add_argument("--copies", type=int, default=50, help="rotating weight copies (default 50)")
    ap.add_argument("--reps", type=int, default=10, help="graph replays timed per config (median)")
    ap.add_argument("--out", default="gemm_tiles.json", help="JSON output file")
    a = ap.parse_args()
    mc = preset_config(a.preset)
    res = {"env": environment(), "preset": a.preset, "sweep": {}, "decode": {}}
    best = {}
    shapes = {"in_proj": (mc.d_in_proj, mc.d_model), "out_proj": (mc.d_model, mc.d_inner)}
    for name, (N, K) in shapes.items():
        ws = [pack_gemv(torch.randint(-1, 2, (N, K), device="cuda", dtype=torch.int8),
                        (torch.rand(N, K // 128, device="cuda") + 0.5).half(), 128) for _ in range(a.copies)]
        dense = [torch.randn(N, K, device="cuda", dtype=torch.float16) for _ in range(min(a.copies, 8))]
        for M in a.rows:
            x = torch.randn(M, K, device="cuda", dtype=torch.float16)
            y = torch.empty(M, N, device="cuda", dtype=torch.float16)
            row = {"default": _graph_time_per_call([lambda w=w: ternary_matmul(x, w, out=y) for w in ws], a.reps),
                   "default_tiles": default_tiles(M, K),
                   # 8 dense copies x 2 = 70+ MB at 1.3B: more than L2 as well.
                   "cublas_fp16": _graph_time_per_call([lambda d=d: torch.matmul(x, d.t(), out=y) for d in dense],
                                                       a.reps)}
            for c in candidates(M):
                try:
                    row[json.dumps(c)] = _graph_time_per_call(
                        [lambda w=w, c=c: ternary_matmul(x, w, out=y, **c) for w in ws], a.reps)
                except Exception as e:          # a config that does not compile (shared memory) is recorded
                    row[json.dumps(c)] = f"{type(e).__name__}"[:80]
            timed = {k: v for k, v in row.items() if k.startswith("{") and isinstance(v, float)}
            kb = min(timed, key=timed.get)
            best.setdefault(M, {})[name] = json.loads(kb)
            row["best"], row["best_us"] = json.loads(kb), timed[kb]
            res["sweep"][f"{name}_M{M}"] = row
            print(name, M, "default", round(row["default"], 2), "best", kb, round(timed[kb], 2), "cublas",
                  round(row["cublas_fp16"], 2), flush=True)
        del ws, dense
    for M in a.decode_rows:
        cfg = DecodeBenchConfig(a.preset, "ternary", M, baseline=False, check_tokens=4)
        r0 = bench_decode(cfg)["decode_ms_per_token"]
        over = {"in_proj_gemm": best[M]["in_proj"], "out_proj_gemm": best[M]["out_proj"]} if M in best else None
        r1 = bench_decode(cfg, gemv_configs=over)["decode_ms_per_token"] if over else None
        r2 = bench_decode(cfg)["decode_ms_per_token"]
        res["decode"][M] = {"default_ms": [r0, r2], "best_tiles_ms": r1, "best_tiles": over}
        print("decode", M, "default", r0, r2, "best tiles", r1, flush=True)
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
