// The batch-1 LM head's rows with greedy argmax folded in, shared by head_argmax.cu (a launch of its own) and
// persistent_decode.cu (HEAD: after the last layer, in the step's launch). The loaders (head_argmax.py,
// persistent_decode.py) put this text before the kernel's. Licence: Apache-2.0 (ssmquant).
//
// A warp streams groups of NR rows; warp gw of tw takes groups gw, gw + tw, ..., so that the grid sweeps the matrix
// front to back (a window of open DRAM pages; a contiguous run of rows a warp streamed 2.6-2.7 TB/s, run 62). A
// lane reads 16-byte segments lane, lane + 32, ... of a row, so a warp's loads of a row are contiguous; its inputs
// for those segments stay in registers for the whole sweep, pre-scaled for the decode below.
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
// counter) writes the token, resets the key and the counter, and with ``append`` writes ids[pos + 1] and advances
// pos.
//
// Template constants (named apart from the kernels' -D macros): KD (inputs a row), Q8 (int8 rows with one scale a
// row; else rows in x's dtype), XB (x, and dense rows, are bf16; else fp16), SCT (int8 rows' scales: 0 fp16, 1 bf16,
// 2 fp32), NR (rows a warp loads at once).

namespace hd {

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;
typedef unsigned long long u64;

template <int KD, bool Q8>
struct Shape {
    static constexpr int EPS = Q8 ? 16 : 8;            // elements per 16-byte segment of a row
    static constexpr int SEGS = KD / EPS;                  // segments per row
    static constexpr int CNT = (SEGS + 31) / 32;          // segments per lane (the last where lane + 32 c < SEGS)
    static __device__ __forceinline__ bool ok(int c, int lane) { return CNT * 32 == SEGS || lane + 32 * c < SEGS; }
};

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ float f16(u32 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((u16)h));
    return f;
}

// One element of x (or of a dense row), the low 16 bits of ``h``, as fp32: fp16 by cvt, bf16 by its bits.
template <bool XB>
__device__ __forceinline__ float act(u32 h) {
    return XB ? __uint_as_float(h << 16) : f16(h);
}

// Rows r .. r + NR - 1 of w (N rows; past the end: row N - 1, not used) into (wr, sc), int8 rows' scales with them.
template <int KD, bool Q8, int SCT, int NR>
__device__ __forceinline__ void load_rows(const uint4* __restrict__ w, const void* __restrict__ scale, int N, int r,
                                          int lane, uint4 (&wr)[NR][Shape<KD, Q8>::CNT], float (&sc)[NR]) {
    using S = Shape<KD, Q8>;
#pragma unroll
    for (int i = 0; i < NR; ++i) {
        const int row = r + i < N ? r + i : N - 1;
#pragma unroll
        for (int c = 0; c < S::CNT; ++c)
            if (S::ok(c, lane)) wr[i][c] = ld_stream(w + (i64)row * S::SEGS + lane + 32 * c);
        if (Q8) {
            if (SCT == 2) sc[i] = static_cast<const float*>(scale)[row];
            else if (SCT == 1) sc[i] = __uint_as_float((u32) static_cast<const u16*>(scale)[row] << 16);
            else sc[i] = f16(static_cast<const u16*>(scale)[row]);
        } else {
            sc[i] = 1.f;
        }
    }
}

// The lane's inputs from x (KD model-dtype values, global or shared memory, 16-byte aligned). Q8: element 4q + j of
// a segment (word q, byte j) pre-scaled by 2**(85 - 8 min(j, 2)); returns the accumulators' start value
// (-128 sum(x) 2**-64 for int8 rows, else 0).
template <int KD, bool Q8, bool XB>
__device__ __forceinline__ float inputs(const u16* x, int lane, float (&xv)[Shape<KD, Q8>::CNT][Shape<KD, Q8>::EPS]) {
    using S = Shape<KD, Q8>;
    float corr = 0.f;
#pragma unroll
    for (int c = 0; c < S::CNT; ++c) {
#pragma unroll
        for (int e = 0; e < S::EPS; ++e) xv[c][e] = 0.f;
        if (!S::ok(c, lane)) continue;
#pragma unroll
        for (int h = 0; h < S::EPS / 8; ++h) {
            const uint4 v = *reinterpret_cast<const uint4*>(x + (lane + 32 * c) * S::EPS + 8 * h);
            const u32 pw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int p = 0; p < 4; ++p) {
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    const int e = 8 * h + 2 * p + s;
                    const float f = act<XB>(s ? pw[p] >> 16 : pw[p] & 0xffffu);
                    if (Q8) {
                        const int j = e % 4 < 2 ? e % 4 : 2;
                        xv[c][e] = f * __uint_as_float((u32)(127 + 85 - 8 * j) << 23);
                        corr -= f;
                    } else {
                        xv[c][e] = f;
                    }
                }
            }
        }
    }
    return Q8 ? corr * (128.f * 5.421010862427522e-20f) : 0.f;     // -128 sum(x) 2**-64
}

// Rows r .. r + NR - 1 from (wr, sc): products, the warp's sums, the logits (lane 0) and the running best key.
template <int KD, bool Q8, bool XB, int NR>
__device__ __forceinline__ void rows(const uint4 (&wr)[NR][Shape<KD, Q8>::CNT], const float (&sc)[NR], int r,
                                     const float (&xv)[Shape<KD, Q8>::CNT][Shape<KD, Q8>::EPS], float corr,
                                     int lane, float* logits, int N, int V, i64& best) {
    using S = Shape<KD, Q8>;
#pragma unroll
    for (int i = 0; i < NR; ++i) {
        float acc = corr;
#pragma unroll
        for (int c = 0; c < S::CNT; ++c) {
            if (!S::ok(c, lane)) continue;
            const u32 ws[4] = {wr[i][c].x, wr[i][c].y, wr[i][c].z, wr[i][c].w};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                if (Q8) {
                    const u32 t = ws[q] ^ 0x80808080u;
                    acc = fmaf(__uint_as_float(t & 0xffu), xv[c][4 * q], acc);
                    acc = fmaf(__uint_as_float(t & 0xff00u), xv[c][4 * q + 1], acc);
                    acc = fmaf(__uint_as_float(t & 0xff0000u), xv[c][4 * q + 2], acc);
                    acc = fmaf(__uint_as_float((t >> 8) & 0xff0000u), xv[c][4 * q + 3], acc);
                } else {
                    acc = fmaf(act<XB>(ws[q] & 0xffffu), xv[c][2 * q], acc);
                    acc = fmaf(act<XB>(ws[q] >> 16), xv[c][2 * q + 1], acc);
                }
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        const int row = r + i;
        if (lane == 0 && row < N) {
            const float v = Q8 ? acc * 1.8446744073709552e19f * sc[i] : acc;    // 2**64, the row's scale
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
}

// The sweep of warp gw of tw over the rows, two buffers of NR rows (the next group streams in while one is
// multiplied); the first group (rows gw NR ..) is already loaded into (wa, sa). Returns the warp's best key
// (INT64_MIN where it has no row of the first V).
template <int KD, bool Q8, bool XB, int SCT, int NR>
__device__ __forceinline__ i64 sweep(const uint4* __restrict__ w, const void* __restrict__ scale, int N, int V,
                                     int gw, int tw, int lane, uint4 (&wa)[NR][Shape<KD, Q8>::CNT], float (&sa)[NR],
                                     const float (&xv)[Shape<KD, Q8>::CNT][Shape<KD, Q8>::EPS], float corr,
                                     float* logits) {
    uint4 wb[NR][Shape<KD, Q8>::CNT];
    float sb[NR];
    i64 best = (i64)0x8000000000000000ull;
    const i64 step = (i64)tw * NR;
    for (i64 r = (i64)gw * NR; r < N; r += 2 * step) {
        if (r + step < N) load_rows<KD, Q8, SCT, NR>(w, scale, N, (int)(r + step), lane, wb, sb);
        rows<KD, Q8, XB, NR>(wa, sa, (int)r, xv, corr, lane, logits, N, V, best);
        if (r + step >= N) break;
        if (r + 2 * step < N) load_rows<KD, Q8, SCT, NR>(w, scale, N, (int)(r + 2 * step), lane, wa, sa);
        rows<KD, Q8, XB, NR>(wb, sb, (int)(r + step), xv, corr, lane, logits, N, V, best);
    }
    return best;
}

// The CTA's best (each warp's from lane 0, through best_w[NWARPS] in shared memory) into ``key`` by one atomic
// max; the last of ``nctas`` CTAs to arrive (``count``) writes the token, resets key and count, and with
// ``append`` writes ids[pos + 1] and advances pos. Returns, in every thread, whether this CTA was the last (its
// threads may then do more for the grid: every other CTA has passed its atomic max).
template <int NWARPS>
__device__ __forceinline__ bool finish(i64 best, i64* best_w, i64* key, u32* count, i64* tok, i64* ids, int* pos,
                                       int append, u32 nctas) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __shared__ int last;
    if (lane == 0) best_w[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 0; i < NWARPS; ++i) best = best_w[i] > best ? best_w[i] : best;
        atomicMax(reinterpret_cast<long long*>(key), (long long)best);
        __threadfence();                                             // release: this CTA's max before its arrival
        const u32 done = atomicAdd(count, 1u);
        last = done == nctas - 1;
        if (last) {
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
    __syncthreads();
    return last;
}

}  // namespace hd
