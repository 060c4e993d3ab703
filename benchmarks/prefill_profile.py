"""Where prefill time goes (issue 7, target 3): projection variants at prefill row counts, whole-model prefill
(fresh vs continued sequence), and a torch.profiler table of one prefill, fp16 model and ternary fast model.

    PYTHONPATH=src python benchmarks/prefill_profile.py --out DIR [--batch 8] [--skip-gemm] [--skip-profile]

Prints short tables; writes DIR/prefill_profile.json and DIR/profile_<model>_b<batch>.txt (kernel table by CUDA time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F


def _ms(fn, reps=20, warmup=3):
    from ssmquant.bench.gpu import _events_ms

    return statistics.median(_events_ms(fn, reps, warmup))


def gemm_variants(res):
    """Per shape and row count: cuBLAS fp16, decode alone, decode + cuBLAS, Triton ternary product configs."""
    from ssmquant.kernels.layout import pack_gemv, ternary_linear_ref
    from ssmquant.kernels.triton.dequant import dequant_ternary
    from ssmquant.kernels.triton.gemm import ternary_matmul

    configs = {"64x64w4s2": {"BM": 64, "BN": 64, "num_warps": 4, "num_stages": 2},
               "128x64w4s3": {"BM": 128, "BN": 64, "num_warps": 4, "num_stages": 3}}
    rows = {}
    for N, K in [(8512, 2048), (2048, 4096)]:
        codes = torch.randint(-1, 2, (N, K), device="cuda", dtype=torch.int8)
        scale = (torch.rand(N, K // 128, device="cuda") * 0.1 + 0.01).half()
        w = pack_gemv(codes, scale, 128)
        dense = (codes.float().view(N, K // 128, 128) * scale.float()[..., None]).view(N, K).half()
        scratch = torch.empty(N * K, device="cuda", dtype=torch.float16)
        for M in [16, 64, 128, 256, 512, 2048, 16384]:
            x = torch.randn(M, K, device="cuda").half()
            r = {"cublas_fp16": _ms(lambda: F.linear(x, dense)),
                 "dequant": _ms(lambda: dequant_ternary(w, scratch)),
                 "dequant_cublas": _ms(lambda: F.linear(x, dequant_ternary(w, scratch)))}
            ref = ternary_linear_ref(x, w)
            r["dequant_cublas_relerr"] = ((F.linear(x, dequant_ternary(w, scratch)).float() - ref).norm()
                                          / ref.norm()).item()
            for name, c in configs.items():
                try:
                    out = ternary_matmul(x, w, **c)
                    r["tmm_" + name + "_relerr"] = ((out.float() - ref).norm() / ref.norm()).item()
                    r["tmm_" + name] = _ms(lambda c=c: ternary_matmul(x, w, **c))
                except Exception as e:  # out of shared memory for a config: record and go on
                    r["tmm_" + name] = f"error: {type(e).__name__}"
            flops = 2 * M * N * K
            r["cublas_tflops"] = flops / (r["cublas_fp16"] * 1e-3) / 1e12
            rows[f"{N}x{K}_M{M}"] = r
            tm = {k: v for k, v in r.items() if k.startswith("tmm_") and not k.endswith("relerr")
                  and isinstance(v, float)}
            best = min(tm, key=tm.get)
            print(f"{N}x{K} M={M:6d}: cublas {r['cublas_fp16']*1e3:8.1f} us  dequant {r['dequant']*1e3:6.1f}  "
                  f"dq+cublas {r['dequant_cublas']*1e3:8.1f}  best tmm {best} {tm[best]*1e3:8.1f}  "
                  f"tmm default {r['tmm_64x64w4s2']*1e3 if isinstance(r['tmm_64x64w4s2'], float) else -1:8.1f}",
                  flush=True)
    res["gemm"] = rows


def scan_sweep(res):
    """The forward scan alone at the 1.3B shape (fp16, chunk 256), b = 8 and 1, under launch-setting variants."""
    from ssmquant.kernels.triton import ssd_scan

    base = dict(ssd_scan.TUNING)
    variants = {"base": {}, "fwd_w8": {"fwd_warps": 8}, "s3": {"stages": 3}, "T128_w8": {"T": 128, "fwd_warps": 8},
                "T32": {"T": 32}}
    out = {}
    for b in (8, 1):
        l, h, p, n = 2048, 64, 64, 128
        xbc = torch.randn(b, l, h * p + 2 * n, device="cuda").half()
        x = xbc[..., :h * p].view(b, l, h, p)
        B = xbc[..., h * p:h * p + n].view(b, l, 1, n)
        C = xbc[..., h * p + n:].view(b, l, 1, n)
        dt = torch.rand(b, l, h, device="cuda") * 0.1
        A = -torch.rand(h, device="cuda") - 0.5
        D = torch.randn(h, device="cuda").half()
        ref = None
        for name, v in variants.items():
            ssd_scan.TUNING.clear()
            ssd_scan.TUNING.update(base, **v)
            y = ssd_scan.ssd_scan_fwd(x, dt, A, B, C, 256, None, D)[0]
            ref = y if ref is None else ref
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            out[f"b{b}_{name}"] = {"us": _ms(lambda: ssd_scan.ssd_scan_fwd(x, dt, A, B, C, 256, None, D), 10, 2)
                                   * 1e3, "rel_err_vs_first": err}
            print(f"scan b{b} {name:16s} {out[f'b{b}_{name}']['us']:8.1f} us  err {err:.1e}", flush=True)
        ssd_scan.TUNING.clear()
        ssd_scan.TUNING.update(base)
    res["scan"] = out


def model_times(res, batch, seqlen, out_dir, profile):
    from ssmquant.bench.models import random_model, to_ternary_
    from ssmquant.kernels.prefill import prefill_model

    ids = torch.randint(0, 50277, (batch, seqlen), device="cuda")
    model = random_model("1.3b", weights="fp16")
    toks = batch * seqlen
    r = {}

    def fresh(m, cache):
        def f():
            cache.seqlen_offset = 0
            return m(ids, cache, logits_to_keep=1)
        return f

    def cont(m, cache):
        def f():
            cache.seqlen_offset = 2048
            return m(ids, cache, logits_to_keep=1)
        return f

    with torch.no_grad():
        cache = model.allocate_cache(batch)
        r["fp16_fresh_tok_s"] = toks / (_ms(fresh(model, cache), 5, 1) * 1e-3)
        r["fp16_continued_tok_s"] = toks / (_ms(cont(model, cache), 5, 1) * 1e-3)
        if profile:
            _profile(fresh(model, cache), os.path.join(out_dir, f"profile_fp16_b{batch}.txt"))
        to_ternary_(model, 128)
        fast = prefill_model(model)
        cache = fast.allocate_cache(batch)
        r["ternary_fresh_tok_s"] = toks / (_ms(fresh(fast, cache), 5, 1) * 1e-3)
        r["ternary_continued_tok_s"] = toks / (_ms(cont(fast, cache), 5, 1) * 1e-3)
        if profile:
            _profile(fresh(fast, cache), os.path.join(out_dir, f"profile_ternary_b{batch}.txt"))
    print(f"batch {batch} x {seqlen}: " + "  ".join(f"{k} {v:,.0f}" for k, v in r.items()), flush=True)
    res[f"model_b{batch}"] = r
    del model, fast
    torch.cuda.empty_cache()


def _profile(fn, path):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    with open(path, "w") as f:
        f.write(table)
    print(path)
    print("\n".join(table.splitlines()[:22]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--skip-gemm", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-scan", action="store_true")
    a = ap.parse_args()
    res = {}
    if not a.skip_gemm:
        gemm_variants(res)
    if not a.skip_scan:
        scan_sweep(res)
    for b in a.batch:
        model_times(res, b, a.seqlen, a.out, not a.skip_profile)
    with open(os.path.join(a.out, "prefill_profile.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
