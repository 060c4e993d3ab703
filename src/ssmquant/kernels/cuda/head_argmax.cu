// Batch-1 LM head with greedy sampling fused: logits = W x (x a row scale), token = argmax(logits[:V]), appended.
// Licence: Apache-2.0 (ssmquant). Compiled at run time by NVRTC (head_argmax.py sets the -D constants below and
// has the design notes).
//
// Each warp streams groups of R rows, the grid's warps taking consecutive groups in turn; a lane reads 16-byte
// segments lane, lane + 32, ... of a row, so a warp's loads of a row are contiguous. The lane's inputs for those
// segments stay in registers for the whole kernel, pre-scaled for the decode below.
//
// int8 rows decode without int -> float conversions (those run at a quarter of the FFMA rate): for t = w ^ 0x80808080
// (byte j of t is u_j = q_j + 128 in 0..255), t & (0xFF << 8j) read as fp32 is exactly u_j * 2**(8j-149) for
// j = 0, 1, 2 (a pattern below 2**24 with the sign clear reads as pattern * 2**-149: a denormal below 2**23,
// exponent field 1 from there, whose implicit bit is worth 2**23 * 2**-149 too); byte 3 is shifted down first.
// The input is pre-scaled by 2**(149-8j-64) so one FFMA adds u_j x 2**-64 exactly; the lane's accumulator starts
// at -128 sum(x) 2**-64 (removing the +128 once), and 2**64 and the row's scale are applied after the warp's sum.
// Per 4 weights: 5 integer instructions and 4 FFMA.
//
// Greedy sampling as kernels/triton/argmax.py: (value, lowest index) packed in an int64 (ordered value << 32 |
// 2**32 - 1 - index; NaN above +inf, -0 as +0), folded by one atomic max per CTA; the last CTA to arrive (a
// counter) writes the token, resets the key and the counter, and with APPEND writes ids[pos + 1] and advances pos.
//
// Programmatic dependent launch: each warp's first rows are loaded before griddepcontrol.wait (they do not depend
// on the kernel before); x, pos and every write come after it (kernels/pdl.py's rules).
//
// Constants: K (inputs a row), INT8 (int8 rows with one scale a row; else rows in x's dtype), XBF16 (x, and dense
// rows, are bf16; else fp16), SCALE_T (int8 rows' scales: 0 fp16, 1 bf16, 2 fp32), R (rows a warp loads at once),
// NT (threads a CTA), MINB (CTAs an SM, for the register budget).

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;
typedef unsigned long long u64;

#define NW (NT / 32)
#if INT8
#define EPS 16                        // elements per 16-byte segment of a row
#else
#define EPS 8
#endif
#define SEGS (K / EPS)                // segments per row
#define CNT ((SEGS + 31) / 32)        // segments per lane (the last one only where lane + 32 c < SEGS)

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ float h2f(u32 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((u16)h));
    return f;
}

// One element of x (or of a dense row), the low 16 bits of ``h``, as fp32: fp16 by cvt, bf16 by its bits.
__device__ __forceinline__ float act(u32 h) {
#if XBF16
    return __uint_as_float(h << 16);
#else
    return h2f(h);
#endif
}

__device__ __forceinline__ bool seg_ok(int c, int lane) { return CNT * 32 == SEGS || lane + 32 * c < SEGS; }

extern "C" __global__ void __launch_bounds__(NT, MINB)
head_argmax(const uint4* __restrict__ w, const void* __restrict__ scale, const u16* __restrict__ x,
            float* __restrict__ logits, int N, int V, i64* key, u32* count, i64* tok, i64* ids, int* pos,
            int append) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gw = blockIdx.x * NW + warp, tw = gridDim.x * NW;
    // Groups of R rows: warp gw takes groups gw, gw + tw, ..., so that the grid sweeps the matrix front to back
    // (a window of open DRAM pages; a contiguous run of rows per warp streamed 2.6-2.7 TB/s, run 62).
    const i64 step = (i64)tw * R;
    __shared__ i64 best_w[NW];

    // Two buffers of R rows: the next rows stream in while these are multiplied.
    uint4 wa[R][CNT], wb[R][CNT];
    float sa[R], sb[R];
    auto load_rows = [&](uint4 (&wr)[R][CNT], float (&sc)[R], int r) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int row = r + i < N ? r + i : N - 1;          // (past the end: a row of its own, not used)
#pragma unroll
            for (int c = 0; c < CNT; ++c)
                if (seg_ok(c, lane)) wr[i][c] = ld_stream(w + (i64)row * SEGS + lane + 32 * c);
#if INT8
#if SCALE_T == 2
            sc[i] = static_cast<const float*>(scale)[row];
#elif SCALE_T == 1
            sc[i] = __uint_as_float((u32) static_cast<const u16*>(scale)[row] << 16);
#else
            sc[i] = h2f(static_cast<const u16*>(scale)[row]);
#endif
#else
            sc[i] = 1.f;
#endif
        }
    };
    const int r0 = gw * R;
    if (r0 < N) load_rows(wa, sa, r0);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");     // (a no-op without the launch attribute)
#endif

    // The lane's inputs. INT8: element 4q + j of a segment (word q, byte j) is pre-scaled by 2**(85 - 8 min(j, 2)).
    float xv[CNT][EPS];
    float corr = 0.f;
#pragma unroll
    for (int c = 0; c < CNT; ++c) {
#pragma unroll
        for (int e = 0; e < EPS; ++e) xv[c][e] = 0.f;
        if (!seg_ok(c, lane)) continue;
#pragma unroll
        for (int h = 0; h < EPS / 8; ++h) {
            const uint4 v = *reinterpret_cast<const uint4*>(x + (lane + 32 * c) * EPS + 8 * h);
            const u32 pw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int p = 0; p < 4; ++p) {
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    const int e = 8 * h + 2 * p + s;
                    const float f = act(s ? pw[p] >> 16 : pw[p] & 0xffffu);
#if INT8
                    const int j = e % 4 < 2 ? e % 4 : 2;
                    xv[c][e] = f * __uint_as_float((u32)(127 + 85 - 8 * j) << 23);
                    corr -= f;
#else
                    xv[c][e] = f;
#endif
                }
            }
        }
    }
#if INT8
    corr *= 128.f * 5.421010862427522e-20f;           // -128 sum(x) 2**-64
#endif

    i64 best = (i64)0x8000000000000000ull;
    // Rows r .. r + R - 1 from buffer (wr, sc): products, the warp's sums, the logits and the running best.
    auto rows = [&](const uint4 (&wr)[R][CNT], const float (&sc)[R], int r) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
            float acc = corr;
#pragma unroll
            for (int c = 0; c < CNT; ++c) {
                if (!seg_ok(c, lane)) continue;
                const u32 ws[4] = {wr[i][c].x, wr[i][c].y, wr[i][c].z, wr[i][c].w};
#pragma unroll
                for (int q = 0; q < 4; ++q) {
#if INT8
                    const u32 t = ws[q] ^ 0x80808080u;
                    acc = fmaf(__uint_as_float(t & 0xffu), xv[c][4 * q], acc);
                    acc = fmaf(__uint_as_float(t & 0xff00u), xv[c][4 * q + 1], acc);
                    acc = fmaf(__uint_as_float(t & 0xff0000u), xv[c][4 * q + 2], acc);
                    acc = fmaf(__uint_as_float((t >> 8) & 0xff0000u), xv[c][4 * q + 3], acc);
#else
                    acc = fmaf(act(ws[q] & 0xffffu), xv[c][2 * q], acc);
                    acc = fmaf(act(ws[q] >> 16), xv[c][2 * q + 1], acc);
#endif
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            const int row = r + i;
            if (lane == 0 && row < N) {
                const float v = INT8 ? acc * 1.8446744073709552e19f * sc[i] : acc;    // 2**64, the row's scale
                logits[row] = v;
                if (row < V) {
                    const float z = v + 0.f;                                // -0 -> +0
                    const int bits = z != z ? 0x7fffffff : (int)__float_as_uint(z);
                    const int ord = bits >= 0 ? bits : bits ^ 0x7fffffff;
                    const i64 k = (i64)(((u64)(u32)ord << 32) | (u64)(0xffffffffu - (u32)row));
                    best = k > best ? k : best;
                }
            }
        }
    };
    for (i64 r = r0; r < N; r += 2 * step) {
        if (r + step < N) load_rows(wb, sb, (int)(r + step));
        rows(wa, sa, (int)r);
        if (r + step >= N) break;
        if (r + 2 * step < N) load_rows(wa, sa, (int)(r + 2 * step));
        rows(wb, sb, (int)(r + step));
    }

    if (lane == 0) best_w[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < NW; ++i) best = best_w[i] > best ? best_w[i] : best;
        atomicMax(reinterpret_cast<long long*>(key), (long long)best);
        __threadfence();                                             // release: this CTA's max before its arrival
        const u32 done = atomicAdd(count, 1u);
        if (done == gridDim.x - 1) {
            __threadfence();                                         // acquire: every CTA's max
            const i64 fin = (i64)atomicExch(reinterpret_cast<u64*>(key), 0x8000000000000000ull);
            atomicExch(count, 0u);
            const i64 t = (i64)(0xffffffffu - (u32)(fin & 0xffffffff));
            *tok = t;
            if (append) {
                const int p = *reinterpret_cast<volatile int*>(pos);
                ids[p + 1] = t;
                *pos = p + 1;
            }
        }
    }
}
