"""What fraction of HBM bandwidth issue 7's GEMV protocol allows at all: a kernel that only *reads* the bytes of a
ternary weight (no arithmetic, no activations, no output) timed exactly like ``ssmquant bench gemv`` (a CUDA graph
of back-to-back launches over 50 rotating weight copies, per-call median, against the same 1 GiB copy rate).

Each launch loads its slab with 16-byte loads, all issued at once, then XORs them (a result that is never stored
but keeps the loads alive). Swept: threads per CTA, loads per thread (hence CTAs per launch), and the programmatic
dependent launch discipline: none, "after wait" (``launch_dependents`` after ``griddepcontrol.wait``: the rule our
decode kernels follow, see kernels/triton/gemv.py) and "early" (released before the wait, so launches two or more
ahead may already be loading).

    PYTHONPATH=src python benchmarks/gemv_ceiling.py --out benchmarks/results/gemv_ceiling_h100.json
"""

from __future__ import annotations

import argparse
import ctypes
import json

import torch

SRC = r"""
extern "C" __global__ void __launch_bounds__(NT) readsum(const uint4* __restrict__ w, unsigned* out, int per_cta) {
    const uint4* p = w + (long)blockIdx.x * per_cta + threadIdx.x;
    uint4 v[CPT];
#pragma unroll
    for (int i = 0; i < CPT; i++)
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(v[i].x), "=r"(v[i].y), "=r"(v[i].z), "=r"(v[i].w) : "l"(p + i * NT));
#if __CUDA_ARCH__ >= 900
#if EARLY
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    asm volatile("griddepcontrol.wait;" ::: "memory");
#if !EARLY
    asm volatile("griddepcontrol.launch_dependents;");
#endif
#endif
    unsigned a = 0;
#pragma unroll
    for (int i = 0; i < CPT; i++) a ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
    if (a == 0x12345678u) out[blockIdx.x] = a;
}
"""


def main() -> None:
    from ssmquant.bench.gpu import _graph_time_per_call, copy_bandwidth, environment
    from ssmquant.kernels.cuda.nvrtc import get_kernel
    from ssmquant.model.config import preset_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b", help="shapes of in_proj / out_proj (default 1.3b)")
    ap.add_argument("--copies", type=int, default=50, help="rotating weight copies (default 50)")
    ap.add_argument("--out", help="JSON file")
    a = ap.parse_args()
    mc = preset_config(a.preset)
    peak = copy_bandwidth()
    sink = torch.zeros(1 << 16, dtype=torch.int32, device="cuda")
    result = {"benchmark": "gemv_ceiling", "env": environment(), "copy_bandwidth_GBps": peak / 1e9, "shapes": {}}
    for name, (N, K) in {"in_proj": (mc.d_in_proj, mc.d_model), "out_proj": (mc.d_model, mc.d_inner)}.items():
        nbytes = N * K // 4 + N * (K // 128) * 2              # 2-bit codes + one fp16 scale per 128 inputs
        n16 = -(-nbytes // (16 * 4096)) * 4096                # whole 16-byte loads, a multiple of every CTA size
        ws = [torch.randint(0, 1 << 30, (n16 * 4,), dtype=torch.int32, device="cuda") for _ in range(a.copies)]
        rows = []
        for nt in (128, 256, 512):
            for cpt in (1, 2, 4, 8):
                per = nt * cpt
                for mode in ("none", "after_wait", "early"):
                    k = get_kernel(SRC, "readsum", [f"-DNT={nt}", f"-DCPT={cpt}", f"-DEARLY={int(mode == 'early')}"])

                    def call(w, k=k, mode=mode, per=per, nt=nt, n16=n16):
                        k.launch((n16 // per, 1, 1), (nt, 1, 1), [ctypes.c_void_p(w.data_ptr()),
                                 ctypes.c_void_p(sink.data_ptr()), ctypes.c_int(per)], pdl=mode != "none")

                    us = _graph_time_per_call([lambda w=w: call(w) for w in ws], 20)
                    rows.append({"threads": nt, "loads_per_thread": cpt, "ctas": n16 // per, "pdl": mode,
                                 "us": us, "frac_of_copy_bw": n16 * 16 / (us * 1e-6) / peak})
                    print(f"{name} {n16 * 16 / 1e6:.2f} MB  threads {nt:3d} x {cpt} loads  {n16 // per:5d} CTAs  "
                          f"pdl {mode:10s} {us:6.2f} us  {rows[-1]['frac_of_copy_bw']:.0%}", flush=True)
        best = {m: max((r for r in rows if r["pdl"] == m), key=lambda r: r["frac_of_copy_bw"])
                for m in ("none", "after_wait", "early")}
        result["shapes"][name] = {"N": N, "K": K, "bytes": n16 * 16, "rows": rows, "best": best}
        print(name, {m: f"{b['us']:.2f} us {b['frac_of_copy_bw']:.0%}" for m, b in best.items()})
        del ws
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
