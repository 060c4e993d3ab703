"""Speed of the Triton chunked SSD scan against the PyTorch ``ssd_chunked`` at Mamba-2 shapes, one JSON out.

Times forward and forward + backward of both implementations on the same random bf16 inputs (median of
``triton.testing.do_bench``, CUDA events, after warm-up), checks the outputs and gradients against each other in
the same run, and reports the work floor (FLOPs of the kernel's products, fewest bytes) beside the times.
``--profile-train`` adds a torch.profiler table of one QAT + KD step of ``ssmquant bench train`` (top kernels by GPU
time), to see what the step spends its time on once the scan is fast.

    PYTHONPATH=src python benchmarks/ssd_scan.py --out scan.json
    PYTHONPATH=src python benchmarks/ssd_scan.py --batch 1 --seqlen 2048 --profile-train
"""

from __future__ import annotations

import argparse
import json

import torch


def _inputs(b, l, h, p, g, n, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
    x = r(b, l, h, p).bfloat16()
    dt = torch.rand(b, l, h, generator=gen, device="cuda") * 0.1 + 1e-3
    A = -torch.rand(h, generator=gen, device="cuda") * 15 - 1
    return x, dt, A, r(b, l, g, n).bfloat16(), r(b, l, g, n).bfloat16()


def _work(b, l, h, p, g, n, Q):
    """FLOPs of the forward's products (C·Bᵀ recomputed per head, causal half) and fewest bytes moved."""
    c = -(-l // Q)
    per_chunk_head = 2 * (Q * Q / 2 * (n + p) + 2 * Q * p * n)
    fwd_flops = b * c * h * per_chunk_head
    fwd_bytes = b * l * (h * p * 2 + 2 * g * n) * 2 + b * c * h * p * n * 4 * 2
    return {"fwd_gflop": fwd_flops / 1e9, "bwd_gflop_approx": 2.5 * fwd_flops / 1e9, "fwd_min_mb": fwd_bytes / 1e6}


def bench_scan(b, l, h, p, g, n, Q, reps_ms=200) -> dict:
    from triton.testing import do_bench

    from ssmquant.kernels.triton.ssd_scan import ssd_chunk_scan
    from ssmquant.model.ssd import ssd_chunked

    x, dt, A, B, C = _inputs(b, l, h, p, g, n)
    dy = torch.randn_like(x)
    out = {"shape": {"b": b, "l": l, "h": h, "p": p, "g": g, "n": n, "chunk": Q}, **_work(b, l, h, p, g, n, Q)}
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    res = {}
    for name, fn in (("torch", ssd_chunked), ("triton", ssd_chunk_scan)):
        with torch.no_grad():
            fwd = do_bench(lambda fn=fn: fn(x, dt, A, B, C, Q), warmup=50, rep=reps_ms, return_mode="median")

        def fwd_bwd(fn=fn):
            y, _ = fn(*leaves, Q)
            y.backward(dy)

        fb = do_bench(fwd_bwd, warmup=50, rep=reps_ms, return_mode="median", grad_to_none=leaves)
        for t in leaves:
            t.grad = None
        y, s = fn(*leaves, Q)
        y.backward(dy)
        res[name] = (y.detach().float(), s, [t.grad.float().clone() for t in leaves])
        for t in leaves:
            t.grad = None
        out[name] = {"fwd_ms": fwd, "fwd_bwd_ms": fb, "bwd_ms": fb - fwd}
        torch.cuda.empty_cache()
    out["speedup_fwd"] = out["torch"]["fwd_ms"] / out["triton"]["fwd_ms"]
    out["speedup_fwd_bwd"] = out["torch"]["fwd_bwd_ms"] / out["triton"]["fwd_bwd_ms"]
    out["triton"]["fwd_tflops"] = out["fwd_gflop"] / out["triton"]["fwd_ms"] / 1e3

    def rel(a, r):
        return float((a - r).norm() / r.norm().clamp_min(1e-30))

    yt, st, gt = res["torch"]
    yk, sk, gk = res["triton"]
    out["rel_err_vs_torch"] = {"y": rel(yk, yt), "final_state": rel(sk, st),
                               **{f"d{k}": rel(a, r) for k, a, r in zip(("x", "dt", "A", "B", "C"), gk, gt)}}
    return out


SWEEP = [{"T": 64, "fwd_warps": 4, "bwd_warps": 8, "stages": 3}, {"T": 64, "fwd_warps": 4, "bwd_warps": 8, "stages": 2},
         {"T": 64, "fwd_warps": 4, "bwd_warps": 4, "stages": 3}, {"T": 32, "fwd_warps": 4, "bwd_warps": 4, "stages": 3},
         {"T": 32, "fwd_warps": 4, "bwd_warps": 8, "stages": 2}, {"T": 32, "fwd_warps": 2, "bwd_warps": 4, "stages": 2}]


def sweep(b, l, h, p, g, n, Q) -> list[dict]:
    """Triton fwd and fwd + bwd times for each launch setting in ``SWEEP`` (bf16, same inputs)."""
    from triton.testing import do_bench

    from ssmquant.kernels.triton import ssd_scan

    x, dt, A, B, C = _inputs(b, l, h, p, g, n)
    dy = torch.randn_like(x)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    saved = dict(ssd_scan.TUNING)
    rows = []
    for setting in SWEEP:
        ssd_scan.TUNING.update(setting)
        with torch.no_grad():
            fwd = do_bench(lambda: ssd_scan.ssd_chunk_scan(x, dt, A, B, C, Q), warmup=25, rep=100,
                           return_mode="median")

        def fwd_bwd():
            ssd_scan.ssd_chunk_scan(*leaves, Q)[0].backward(dy)

        rows.append({**setting, "fwd_ms": fwd, "fwd_bwd_ms": do_bench(fwd_bwd, warmup=25, rep=100,
                                                                      return_mode="median", grad_to_none=leaves)})
    ssd_scan.TUNING.clear()
    ssd_scan.TUNING.update(saved)
    return rows


def profile_train(preset: str, seq_len: int, micro_batch: int, top: int) -> str:
    """torch.profiler table of one QAT + KD step built exactly as ``bench train`` builds it."""
    import copy

    from ssmquant.bench.train import TrainBenchConfig, _step_fns
    from ssmquant.model.config import preset_config
    from ssmquant.model.mamba2 import Mamba2LMHeadModel
    from ssmquant.quant import QuantConfig, quantize_

    cfg = TrainBenchConfig(preset=preset, seq_len=seq_len, micro_batch=micro_batch)
    torch.manual_seed(0)
    base = Mamba2LMHeadModel(preset_config(preset))
    base.init_weights(0)
    teacher = copy.deepcopy(base).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    student = copy.deepcopy(base).to("cuda")
    del base
    quantize_(student, QuantConfig(group_size=cfg.group_size, scale_mode="learnable"))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, student.config.vocab_size, (micro_batch, seq_len), device="cuda")
    tf, sf, bw, op = _step_fns(student, teacher, opt, x, quantized=True)

    def step():
        bw(sf(tf()))
        op()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=70)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=64, help="1.3B: 64 heads of 64")
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--ngroups", type=int, default=1)
    ap.add_argument("--d-state", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--sweep", action="store_true", help="also time launch settings (kernels.triton.ssd_scan.TUNING)")
    ap.add_argument("--profile-train", action="store_true", help="also profile one 1.3B QAT + KD step")
    ap.add_argument("--top", type=int, default=40, help="rows of the profile table")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args()
    from ssmquant.bench.gpu import environment

    result = {"benchmark": "ssd_scan", "env": environment(), "runs": []}
    for b in a.batch:
        result["runs"].append(bench_scan(b, a.seqlen, a.heads, a.headdim, a.ngroups, a.d_state, a.chunk))
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    for r in result["runs"]:
        print(f"b={r['shape']['b']}: torch fwd {r['torch']['fwd_ms']:.2f} ms, fwd+bwd {r['torch']['fwd_bwd_ms']:.2f}; "
              f"triton fwd {r['triton']['fwd_ms']:.3f} ms, fwd+bwd {r['triton']['fwd_bwd_ms']:.3f} "
              f"(x{r['speedup_fwd']:.0f} / x{r['speedup_fwd_bwd']:.0f}); max rel err "
              f"{max(r['rel_err_vs_torch'].values()):.1e}")
    if a.sweep:
        result["sweep"] = sweep(a.batch[0], a.seqlen, a.heads, a.headdim, a.ngroups, a.d_state, a.chunk)
        for row in result["sweep"]:
            print(row)
        best = min(result["sweep"], key=lambda r: r["fwd_bwd_ms"])
        result["best"] = {k: best[k] for k in SWEEP[0]}
        print("best:", json.dumps(result["best"]))
        if a.out:
            with open(a.out, "w") as f:
                f.write(json.dumps(result, indent=2) + "\n")
    if a.profile_train:
        print(profile_train("1.3b", a.seqlen, 1, a.top))


if __name__ == "__main__":
    main()
