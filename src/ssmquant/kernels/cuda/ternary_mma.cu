// Ternary (2-bit) matrix-vector product for decode on tensor cores: out = W xn (+ res) for M <= 8 activation rows.
// Licence: Apache-2.0 (ssmquant). Compiled at run time by NVRTC (ternary_mma.py sets the -D constants below);
// kernels/layout_mma.py has the weight layout and kernels/cuda/ternary_mma.py the design notes.
//
// One CTA owns RT tiles of 16 output rows; its NWARPS warps split the input dimension, CPW chunks of 128 inputs
// each. Per chunk a lane holds one uint4 (4 words, 64 codes) that is exactly its share of the A fragments of
// eight m16n8k16 MMAs. Each code decodes to an fp16 (code - 1) in two instructions per PAIR of codes:
//   (word & mask_p) | 0x6400_6400   -> f16x2 of 1024 + s * 4**p   (s = code + 1 in {0, 1, 2}, bits 2p..2p+1 of
//                                      each half-word, p <= 4: the field lies in the fp16 mantissa)
//   fma.rn.f16x2(that, 4**-p, -(2**(10-2p) + 1)) = s - 1, exact (one rounding of an exact small integer)
// Fields 5..7 of a half-word come from word >> 10 (one shift per word). Activations (after the fused norm, fp16
// like the PyTorch model's) sit in shared memory in B-fragment order; batch row g feeds MMA column g.
//
// Constants (set by the host): NWARPS, CPW, RT, MROWS (activation rows, 1..8), XHALF (x is fp16, else fp32), OHALF
// (out fp16, else fp32), NORM (fused RMSNorm over the whole row), RES (add fp32 residual), GCH (scale groups of
// >= 128 inputs: group of chunk c is c * 128 / G; GCH = G / 128) or G64 (G = 64: two groups per chunk),
// MSK0..MSK4 / MUL0..MUL4 / ADD0..ADD4 (decode constants of field p, from ternary_mma.decode_constants()).

typedef unsigned int u32;
typedef unsigned short u16;

#define ROWW (CPW * 64 + 8)    // u32 words per activation row in shared memory (+8: rows start 8 banks apart)

__device__ __forceinline__ u32 dec(u32 w, u32 msk, u32 mul, u32 add) {
    u32 v = (w & msk) | 0x64006400u, d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(v), "r"(mul), "r"(add));
    return d;
}

__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u16 ld_u16(const u16* p) {
    u16 v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// 4 consecutive activations of row m at input k, as fp32.
__device__ __forceinline__ float4 load_x4(const void* x, long stride_x, int m, int k) {
#if XHALF
    const u16* p = (const u16*)x + (long)m * stride_x + k;
    uint2 r = *(const uint2*)p;
    return make_float4(h2f(r.x & 0xffff), h2f(r.x >> 16), h2f(r.y & 0xffff), h2f(r.y >> 16));
#else
    return *(const float4*)((const float*)x + (long)m * stride_x + k);
#endif
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
ternary_mma_gemv(const uint4* __restrict__ words,     // (N16 / 16, K / 128, 32, 4) int32 codes
                 const u16* __restrict__ scale,        // (N16, K / G) fp16
                 const void* x, long stride_x,         // (M, K) fp32 or fp16
                 const float* __restrict__ nw,         // (K,) fp32 norm weight (NORM)
                 const float* res, long stride_r,      // (M, N) fp32 residual (RES; may alias out)
                 void* out, long stride_o,             // (M, N) fp32 or fp16
                 int N, int K, int ngroups, float eps) {
    // The activations, NWARPS x (MROWS * ROWW) words, in dynamic shared memory: at 8 rows of K = 4096 they need
    // 66 KB, over the 48 KB of static shared memory (the host sizes the launch, ternary_mma._smem).
    extern __shared__ __align__(16) u32 xs[];
    __shared__ float red[NWARPS][16 * RT][9];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tile = blockIdx.x, KC = K >> 7, NT = (N + 15) >> 4, c0 = warp * CPW;

    // ---- constant data first: weights and scales do not depend on the previous kernel (PDL) ----
    uint4 wv[RT][CPW];
    // Scales stay raw fp16 bits until used: converting them here would stall on their load before the wait.
#if G64
    u16 sc[RT][CPW][2][2];
#else
    u16 sc[RT][CPW][2];
#endif
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
        const int tl = tile * RT + rt;
        const bool tok = tl < NT;
        const uint4* wp = words + ((long)(tok ? tl : 0) * KC + c0) * 32 + lane;
#pragma unroll
        for (int c = 0; c < CPW; c++)
            wv[rt][c] = (tok && c0 + c < KC) ? ld_stream(wp + c * 32)
                                             : make_uint4(0x55555555u, 0x55555555u, 0x55555555u, 0x55555555u);
        const u16* s0 = scale + (long)((tok ? tl : 0) * 16 + g) * ngroups;
        const u16* s1 = s0 + 8L * ngroups;
#pragma unroll
        for (int c = 0; c < CPW; c++) {
            const int cc = (c0 + c < KC) ? c0 + c : 0;
#if G64
            sc[rt][c][0][0] = ld_u16(s0 + 2 * cc); sc[rt][c][0][1] = ld_u16(s0 + 2 * cc + 1);
            sc[rt][c][1][0] = ld_u16(s1 + 2 * cc); sc[rt][c][1][1] = ld_u16(s1 + 2 * cc + 1);
#else
            sc[rt][c][0] = ld_u16(s0 + cc / GCH);
            sc[rt][c][1] = ld_u16(s1 + cc / GCH);
#endif
        }
    }
#if __CUDA_ARCH__ >= 900
    // Programmatic dependent launch (kernels/pdl.py): wait for the kernel before (it wrote x / res); the next
    // kernel may start its own constant loads now (PDL_EARLY) or once x is ready. Nothing is read from x or res,
    // nor written, before the wait. (Without the launch attribute both instructions are no-ops.)
#if PDL_EARLY
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    asm volatile("griddepcontrol.wait;" ::: "memory");
#if !PDL_EARLY
    asm volatile("griddepcontrol.launch_dependents;");
#endif
#endif

    // ---- activations: fused RMSNorm (statistics of the whole row across the CTA), fp16, B-fragment order ----
    float r[MROWS];
#pragma unroll
    for (int m = 0; m < MROWS; m++) r[m] = 1.0f;
#if NORM
    {
        __shared__ float ssum[NWARPS][MROWS];
        float ss[MROWS];
#pragma unroll
        for (int m = 0; m < MROWS; m++) ss[m] = 0.0f;
#pragma unroll
        for (int c = 0; c < CPW; c++) {
            if (c0 + c < KC) {
#pragma unroll
                for (int m = 0; m < MROWS; m++) {
                    float4 v = load_x4(x, stride_x, m, (c0 + c) * 128 + 4 * lane);
                    ss[m] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
            }
        }
#pragma unroll
        for (int m = 0; m < MROWS; m++) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
            if (lane == 0) ssum[warp][m] = ss[m];
        }
        __syncthreads();
#pragma unroll
        for (int m = 0; m < MROWS; m++) {
            float s = 0.0f;
            for (int w = 0; w < NWARPS; w++) s += ssum[w][m];
            r[m] = rsqrtf(s / K + eps);
        }
    }
#endif
    u32* xw = xs + warp * (MROWS * ROWW);
    {
        // x is loaded again rather than kept from the statistics pass (an L1 hit; registers stay free for M rows).
        // Lane holds inputs 4a..4a+3 of k-step s (a = lane % 4, s = lane / 4 within the chunk): pairs 2a and
        // 2a+1, pair p going to B register p / 4 of quad lane p % 4.
        const int a = lane & 3, s = lane >> 2;
        const int p0 = 2 * a, p1 = 2 * a + 1;
        const int o0 = s * 8 + (p0 & 3) * 2 + (p0 >> 2), o1 = s * 8 + (p1 & 3) * 2 + (p1 >> 2);
#pragma unroll
        for (int c = 0; c < CPW; c++) {
            if (c0 + c < KC) {
                const int k = (c0 + c) * 128 + 4 * lane;
#if NORM
                const float4 wn = *(const float4*)(nw + k);
#endif
#pragma unroll
                for (int m = 0; m < MROWS; m++) {
                    float4 v = load_x4(x, stride_x, m, k);
#if NORM
                    v.x *= r[m] * wn.x; v.y *= r[m] * wn.y; v.z *= r[m] * wn.z; v.w *= r[m] * wn.w;
#endif
                    xw[m * ROWW + c * 64 + o0] = pack2(v.x, v.y);
                    xw[m * ROWW + c * 64 + o1] = pack2(v.z, v.w);
                }
            }
        }
    }
    __syncwarp();

    // ---- products: 8 MMAs per chunk and row tile, the scale applied once per group ----
    // Two accumulators per tile (even / odd k-steps) halve the chain of dependent MMAs.
    const u32* xb = xw + (g < MROWS ? g : 0) * ROWW + 2 * t;
    float acc[RT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++) acc[rt][0] = acc[rt][1] = acc[rt][2] = acc[rt][3] = 0.0f;
#pragma unroll
    for (int c = 0; c < CPW; c++) {
        if (c0 + c < KC) {
            uint2 bf[8];
#pragma unroll
            for (int s = 0; s < 8; s++) {
                bf[s] = *(const uint2*)(xb + c * 64 + s * 8);
                if (g >= MROWS) bf[s] = make_uint2(0u, 0u);
            }
#pragma unroll
            for (int rt = 0; rt < RT; rt++) {
                float ce[4] = {0.0f, 0.0f, 0.0f, 0.0f}, co[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                const u32 wd[4] = {wv[rt][c].x, wv[rt][c].y, wv[rt][c].z, wv[rt][c].w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const u32 w = wd[j], w2 = w >> 10;
                    mma16816(ce, dec(w, MSK0, MUL0, ADD0), dec(w, MSK1, MUL1, ADD1), dec(w, MSK2, MUL2, ADD2),
                             dec(w, MSK3, MUL3, ADD3), bf[2 * j].x, bf[2 * j].y);
                    mma16816(co, dec(w, MSK4, MUL4, ADD4), dec(w2, MSK0, MUL0, ADD0), dec(w2, MSK1, MUL1, ADD1),
                             dec(w2, MSK2, MUL2, ADD2), bf[2 * j + 1].x, bf[2 * j + 1].y);
#if G64
                    if (j == 1) {
                        const float a = h2f(sc[rt][c][0][0]), b = h2f(sc[rt][c][1][0]);
                        acc[rt][0] += (ce[0] + co[0]) * a; acc[rt][1] += (ce[1] + co[1]) * a;
                        acc[rt][2] += (ce[2] + co[2]) * b; acc[rt][3] += (ce[3] + co[3]) * b;
                        ce[0] = ce[1] = ce[2] = ce[3] = co[0] = co[1] = co[2] = co[3] = 0.0f;
                    }
#endif
                }
#if G64
                const float a = h2f(sc[rt][c][0][1]), b = h2f(sc[rt][c][1][1]);
#else
                const float a = h2f(sc[rt][c][0]), b = h2f(sc[rt][c][1]);
#endif
                acc[rt][0] += (ce[0] + co[0]) * a; acc[rt][1] += (ce[1] + co[1]) * a;
                acc[rt][2] += (ce[2] + co[2]) * b; acc[rt][3] += (ce[3] + co[3]) * b;
            }
        }
    }

    // ---- epilogue: sum the warps' partial products, add the residual, store ----
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
        red[warp][rt * 16 + g][2 * t] = acc[rt][0];
        red[warp][rt * 16 + g][2 * t + 1] = acc[rt][1];
        red[warp][rt * 16 + g + 8][2 * t] = acc[rt][2];
        red[warp][rt * 16 + g + 8][2 * t + 1] = acc[rt][3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 16 * RT * MROWS; i += NWARPS * 32) {
        const int row = i % (16 * RT), m = i / (16 * RT), n = tile * 16 * RT + row;
        float v = 0.0f;
        for (int w = 0; w < NWARPS; w++) v += red[w][row][m];
        if (n < N) {
#if RES
            v += res[(long)m * stride_r + n];
#endif
#if OHALF
            u16 h;
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
            ((u16*)out)[(long)m * stride_o + n] = h;
#else
            ((float*)out)[(long)m * stride_o + n] = v;
#endif
        }
    }
}
