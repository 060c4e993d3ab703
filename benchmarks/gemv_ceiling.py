"""What fraction of HBM bandwidth issue 7's GEMV protocol allows at all: a kernel that only *reads* the bytes of a
ternary weight (no arithmetic, no activations, no output) timed exactly like ``ssmquant bench gemv`` (a CUDA graph
of back-to-back launches over 50 rotating weight copies, per-call median, against the same 1 GiB copy rate).

Each launch loads its slab with 16-byte loads, all issued at once, then XORs them (a result that is never stored
but keeps the loads alive). Swept: threads per CTA, loads per thread (hence CTAs per launch), and the programmatic
dependent launch discipline: none, "after wait" (``launch_dependents`` after ``griddepcontrol.wait``: the rule our
decode kernels follow, see kernels/triton/gemv.py) and "early" (released before the wait, so launches two or more
ahead may already be loading); the "_xy" modes add the least that a GEMV does after its wait: one 16-byte load of
the activations a thread and one store a CTA.

A second kind of row adds what every GEMV must do after its wait, on the real 2-bit layout (``kernels/layout.py``,
weights from ``pack_gemv``): ``stream_floor`` loads each lane's words and scales into registers *before* the wait,
then reads the activations, folds them into one value per row (no products), reduces it across the warp and writes
the CTA's rows of the output; ``stream_gemv`` is the same kernel with the products (field j masked in place, read
as a denormal, one FFMA with the input pre-scaled: the decode of kernels/triton/gemv.py), its output checked
against ``gemv_ref``. A lane holds 4 words of a row (64 inputs, kept in registers for all its rows); a warp a
128-word slice of its rows; a row of 256 words is two warps' slices, summed in shared memory. Swept: threads per
CTA, rows per CTA, release "after" or "early". With the release "early" the next launches load their weights
while this one computes, so what remains per call is the launch-to-launch dependency (the wait) plus the work after
it; the "early_xy" rows, with the least such work, bound what any GEMV of this protocol can reach.

    PYTHONPATH=src python benchmarks/gemv_ceiling.py --out benchmarks/results/gemv_ceiling_h100.json
"""

from __future__ import annotations

import argparse
import ctypes
import json

import torch

SRC = r"""
extern "C" __global__ void __launch_bounds__(NT) readsum(const uint4* __restrict__ w, unsigned* out, int per_cta,
                                                      const uint4* x) {
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
#if XY
    // The least a GEMV does after its wait: one load of the activations (16 bytes a thread) and one store a CTA.
    const uint4 xv = x[threadIdx.x % XN];
    a ^= xv.x ^ xv.y ^ xv.z ^ xv.w;
    a = __reduce_xor_sync(0xffffffffu, a);
    if (threadIdx.x == 0) out[blockIdx.x] = a;
#else
    if (a == 0x12345678u) out[blockIdx.x] = a;
#endif
}
"""

# The stream rows' kernel (see the docstring). Constants: NT threads a CTA, RPC rows a CTA, KWR words a row, KS
# 128-word slices a row (KWR / 128), KB inputs a pack block, G inputs a scale, NSC scales a row, EARLY, PRODUCTS.
STREAM_SRC = r"""
typedef unsigned int u32;
typedef unsigned short u16;
#define NWARP (NT / 32)
#define RG (NWARP / KS)
#define RL ((RPC + RG - 1) / RG)
#define KW (KB / 16)

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

extern "C" __global__ void __launch_bounds__(NT) stream_gemv(const uint4* __restrict__ w, const u16* __restrict__ s,
        const u16* __restrict__ x, float* __restrict__ y, int N) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sl = warp % KS, rg = warp / KS;
    const int r0 = blockIdx.x * RPC;
    const int chunk = sl * 32 + lane;
    const int blk = 4 * chunk / KW, w0 = 4 * chunk % KW;
    uint4 wr[RL];
    u16 sc[RL];
#pragma unroll
    for (int i = 0; i < RL; ++i) {
        const int li = rg + i * RG;
        const int row = li < RPC && r0 + li < N ? r0 + li : 0;
        wr[i] = ld_stream(w + (long long)row * (KWR / 4) + chunk);
        sc[i] = __ldg(s + (long long)row * NSC + blk * KB / G);
    }
#if EARLY
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    asm volatile("griddepcontrol.wait;" ::: "memory");
#if !EARLY
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    __shared__ float part[KS][RPC];
    // The lane's inputs: field j of word w0 + t is input blk * KB + j * KW + w0 + t.
    float xv[16][4];
    float cs = 0.f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const uint2 v = *reinterpret_cast<const uint2*>(x + blk * KB + j * KW + w0);
        const u32 hv[4] = {v.x & 0xffffu, v.x >> 16, v.y & 0xffffu, v.y >> 16};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const float f = h2f((u16)hv[t]);
            cs += f;
            xv[j][t] = f * __uint_as_float((u32)(127 + (j <= 10 ? 85 - 2 * j : 105 - 2 * j)) << 23);
        }
    }
    cs *= 5.421010862427522e-20f;                     // 2**-64
#pragma unroll
    for (int i = 0; i < RL; ++i) {
        const int li = rg + i * RG;
#if PRODUCTS
        float acc = -cs;
        const u32 ws[4] = {wr[i].x, wr[i].y, wr[i].z, wr[i].w};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const u32 u = ws[t], h = u >> 20;
#pragma unroll
            for (int j = 0; j <= 10; ++j) acc = fmaf(__uint_as_float(u & (3u << (2 * j))), xv[j][t], acc);
#pragma unroll
            for (int j = 11; j < 16; ++j) acc = fmaf(__uint_as_float(h & (3u << (2 * j - 20))), xv[j][t], acc);
        }
        float v = acc * 1.8446744073709552e19f * h2f(sc[i]);
#else
        // The floor: no products, but a value that depends on the row's words, its scale and every input.
        float v = __uint_as_float((wr[i].x ^ wr[i].y ^ wr[i].z ^ wr[i].w ^ sc[i]) & 0x3fffffffu) + cs;
#endif
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && li < RPC) {
            if (KS == 1) {
                if (r0 + li < N) y[r0 + li] = v;
            } else {
                part[sl][li] = v;
            }
        }
    }
    if (KS > 1) {
        __syncthreads();
        for (int li = threadIdx.x; li < RPC && r0 + li < N; li += NT) {
            float v = 0.f;
#pragma unroll
            for (int k = 0; k < KS; ++k) v += part[k][li];
            y[r0 + li] = v;
        }
    }
}
"""


def stream_rows(name: str, N: int, K: int, copies: int, peak: float, group_size: int = 128) -> list[dict]:
    """The ``stream_floor`` / ``stream_gemv`` rows of one shape: every (threads, rows a CTA, release) of the
    sweep, timed like the read-only rows; ``rel_err`` of the products against ``gemv_ref``."""
    from ssmquant.bench.gpu import _graph_time_per_call
    from ssmquant.kernels.cuda.nvrtc import get_kernel
    from ssmquant.kernels.layout import pack_gemv
    from ssmquant.kernels.triton.gemv import gemv_ref

    ws = [pack_gemv(torch.randint(-1, 2, (N, K), device="cuda", dtype=torch.int8),
                    (torch.rand(N, K // group_size, device="cuda") + 0.5).half(), group_size) for _ in range(copies)]
    if ws[0].block != 128 or K % 2048:
        raise SystemExit(f"{name}: the stream rows need 128-input pack blocks and K a multiple of 2048")
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)
    y = torch.empty(N, device="cuda", dtype=torch.float32)
    nbytes = ws[0].nbytes() + K * 2 + N * 4
    kwr, ks = K // 16, K // 2048
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for nt in (128, 256, 512):
        if nt // 32 < ks:
            continue
        for ctas_per_sm in (0.5, 1, 2):
            rpc = -(-N // int(sms * ctas_per_sm))
            if -(-rpc // (nt // 32 // ks)) > 16:     # more than 16 rows a warp: the words would spill registers
                continue
            for products in (0, 1):
                for mode in ("after_wait", "early"):
                    opts = [f"-DNT={nt}", f"-DRPC={rpc}", f"-DKWR={kwr}", f"-DKS={ks}", "-DKB=128",
                            f"-DG={group_size}", f"-DNSC={K // group_size}", f"-DEARLY={int(mode == 'early')}",
                            f"-DPRODUCTS={products}"]
                    k = get_kernel(STREAM_SRC, "stream_gemv", opts)
                    grid = -(-N // rpc)

                    def call(w, k=k, grid=grid, nt=nt):
                        k.launch((grid, 1, 1), (nt, 1, 1), [ctypes.c_void_p(w.words.data_ptr()),
                                 ctypes.c_void_p(w.scale.data_ptr()), ctypes.c_void_p(x.data_ptr()),
                                 ctypes.c_void_p(y.data_ptr()), ctypes.c_int(N)], pdl=True)

                    row = {"kind": "stream_gemv" if products else "stream_floor", "threads": nt, "rows_per_cta": rpc,
                           "ctas": grid, "pdl": mode, "registers": k.num_regs}
                    if products:
                        call(ws[-1])
                        ref = gemv_ref(x, ws[-1])[0]
                        row["rel_err"] = ((y - ref).norm() / ref.norm()).item()
                        if not row["rel_err"] < 1e-4:        # (a wrong product's time would mean nothing)
                            raise SystemExit(f"{name} stream_gemv {opts}: rel err {row['rel_err']:.2e} "
                                             "against gemv_ref")
                    us = _graph_time_per_call([lambda w=w: call(w) for w in ws], 20)
                    row.update(us=us, frac_of_copy_bw=nbytes / (us * 1e-6) / peak)
                    rows.append(row)
                    print(f"{name} {row['kind']:12s} threads {nt:3d}  {rpc:3d} rows x {grid:3d} CTAs  "
                          f"{k.num_regs:3d} regs  pdl {mode:10s} {us:6.2f} us  {row['frac_of_copy_bw']:.0%}"
                          + (f"  rel err {row['rel_err']:.1e}" if products else ""), flush=True)
    del ws
    return rows


def main() -> None:
    from ssmquant.bench.gpu import _graph_time_per_call, copy_bandwidth, environment
    from ssmquant.kernels.cuda.nvrtc import get_kernel
    from ssmquant.model.config import preset_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.3b", help="shapes of in_proj / out_proj (default 1.3b)")
    ap.add_argument("--copies", type=int, default=50, help="rotating weight copies (default 50)")
    ap.add_argument("--out", help="JSON file")
    ap.add_argument("--no-stream", action="store_true", help="only the read-only rows")
    a = ap.parse_args()
    mc = preset_config(a.preset)
    peak = copy_bandwidth()
    sink = torch.zeros(1 << 16, dtype=torch.int32, device="cuda")
    xin = torch.randn(8192, dtype=torch.float16, device="cuda")   # the activations the "_xy" rows read
    result = {"benchmark": "gemv_ceiling", "env": environment(), "copy_bandwidth_GBps": peak / 1e9, "shapes": {}}
    for name, (N, K) in {"in_proj": (mc.d_in_proj, mc.d_model), "out_proj": (mc.d_model, mc.d_inner)}.items():
        nbytes = N * K // 4 + N * (K // 128) * 2              # 2-bit codes + one fp16 scale per 128 inputs
        n16 = -(-nbytes // (16 * 4096)) * 4096                # whole 16-byte loads, a multiple of every CTA size
        ws = [torch.randint(0, 1 << 30, (n16 * 4,), dtype=torch.int32, device="cuda") for _ in range(a.copies)]
        rows = []
        for nt in (128, 256, 512):
            for cpt in (1, 2, 4, 8):
                per = nt * cpt
                for mode in ("none", "after_wait", "early", "after_wait_xy", "early_xy"):
                    k = get_kernel(SRC, "readsum", [f"-DNT={nt}", f"-DCPT={cpt}", f"-DEARLY={int('early' in mode)}",
                                                    f"-DXY={int(mode.endswith('_xy'))}", f"-DXN={K // 8}"])

                    def call(w, k=k, mode=mode, per=per, nt=nt, n16=n16):
                        k.launch((n16 // per, 1, 1), (nt, 1, 1), [ctypes.c_void_p(w.data_ptr()),
                                 ctypes.c_void_p(sink.data_ptr()), ctypes.c_int(per),
                                 ctypes.c_void_p(xin.data_ptr())], pdl=mode != "none")

                    us = _graph_time_per_call([lambda w=w: call(w) for w in ws], 20)
                    rows.append({"threads": nt, "loads_per_thread": cpt, "ctas": n16 // per, "pdl": mode,
                                 "us": us, "frac_of_copy_bw": n16 * 16 / (us * 1e-6) / peak})
                    print(f"{name} {n16 * 16 / 1e6:.2f} MB  threads {nt:3d} x {cpt} loads  {n16 // per:5d} CTAs  "
                          f"pdl {mode:13s} {us:6.2f} us  {rows[-1]['frac_of_copy_bw']:.0%}", flush=True)
        best = {m: max((r for r in rows if r["pdl"] == m), key=lambda r: r["frac_of_copy_bw"])
                for m in ("none", "after_wait", "early", "after_wait_xy", "early_xy")}
        del ws
        srows = [] if a.no_stream else stream_rows(name, N, K, a.copies, peak)
        for kind in ("stream_floor", "stream_gemv") if srows else ():
            for m in ("after_wait", "early"):
                best[f"{kind}_{m}"] = max((r for r in srows if r["kind"] == kind and r["pdl"] == m),
                                          key=lambda r: r["frac_of_copy_bw"])
        result["shapes"][name] = {"N": N, "K": K, "bytes": n16 * 16, "rows": rows, "stream_rows": srows,
                                  "best": best}
        print(name, {m: f"{b['us']:.2f} us {b['frac_of_copy_bw']:.0%}" for m, b in best.items()})
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
