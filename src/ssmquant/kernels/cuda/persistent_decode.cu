// One whole decode step of a ternary Mamba-2 (every layer, batch 1) in a single persistent kernel.
// Licence: Apache-2.0 (ssmquant). Compiled at run time by NVRTC; kernels/cuda/persistent_decode.py sets the -D
// constants below and has the design notes (why, the phases, the memory-ordering argument).
//
// GRID CTAs (one per SM, all resident: cooperative launch) run the layers' three phases in order,
//   A: zx = in_proj(rmsnorm(residual))                     rows split over the CTAs, a warp per row and chunk
//   B: conv + SSM state update + gate -> h                 an item = CH channels of one head per CTA
//   C: residual += out_proj(gated_rmsnorm(h))              as A
// separated by grid barriers (a counter in global memory, zeroed before the launch; with SPLIT_OUT, C runs in B's
// CTA by SSM item and LL_ZX replaces the barrier between A and B: one barrier a layer). What a phase needs that
// predates the step (weights, scales, SSM states, the conv ring's older taps) is copied to shared memory (TMA on
// sm_90, cp.async before) or loaded into registers while an earlier phase computes: out_proj's words and the
// state during in_proj, the next in_proj's words during out_proj, each issued after that phase has read its
// activations (a burst issued just before a barrier would delay the barrier by its transfer time).
//
// Constants: NL layers; DM = d_model; E = d_inner; NH heads of P channels; NS = d_state; NG groups; DCONV taps;
// DIP = d_in_proj; GIN / KBIN (GOUT / KBOUT): scale group and pack block of in_proj (out_proj), layout.py;
// NW warps per CTA; GRID CTAs; CH channels per SSM item, TPC threads per channel; STATE_T (0 fp32, 1 fp16,
// 2 bf16); ACT_BF16 (activations bf16, else fp16); XS (the 2-bit decode's power-of-two offset, gemv.py).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define NT (NW * 32)
#ifndef PHASES
#define PHASES 7      // benchmarks/persistent_phases.py: run only some phases (bit 0 A, 1 B, 2 C) to time them
#endif
// sm_90: weights and SSM states reach shared memory by TMA bulk copies (cp.async.bulk, completion on an
// mbarrier): one instruction a row, no load slots held. Else cp.async (one 16-byte copy per lane and row).
// Scales and norm weights are ordinary loads, and a barrier's release waits for loads still in flight: those of
// out_proj and of the next in_proj are issued right after the SSM step's barrier arrival, where they have
// out_proj's staging to land in. LATE_LOADS=0 issues them with the words' copies and before each phase's wait
// instead (benchmarks/persistent_phases.py: 12.4 against 11.5 us per layer at 1.3B on an H100).
#ifndef LATE_LOADS
#define LATE_LOADS 1
#endif
#ifndef NO_SCALE_LOADS
#define NO_SCALE_LOADS 0  // 1: every scale 1.0, not loaded (benchmarks/persistent_phases.py: what the loads cost)
#endif
#ifndef FIELDS
#define FIELDS 16         // < 16: the products use only the first FIELDS fields of a word (wrong results;
#endif                    // benchmarks/persistent_phases.py: what the products' arithmetic costs)
// SPLIT_OUT=1: out_proj split by input columns instead of rows, which removes the grid barrier before it. The CTA
// that computes an SSM item's CH channels of h multiplies them by the item's CH columns of out_proj for every
// output row and adds the (DM,) partial sums into a global buffer by fp32 atomics; the gated norm's 1 / rms, a
// scalar per group, is applied by the readers: every CTA keeps the whole residual in registers and adds
// rms * (sum of partials) to it when it stages the next in_proj, after the barrier that ends the layer. Two
// barriers a layer instead of three. The sums' order varies between runs (atomics): the logits are not bitwise
// reproducible, and the gated norm's output is not rounded to the model dtype before the product.
#ifndef SPLIT_OUT
#define SPLIT_OUT 0
#endif
// EMB (1 model-dtype rows, 2 int8 rows with fp16 scales) and FINAL_NORM, with SPLIT_OUT: the step reads the
// embedding of ids[pos] itself (no embedding kernel before it) and writes the head's normed input ``xn`` (the head's
// GEMV then needs no norm of its own).
#ifndef EMB
#define EMB 0
#endif
#ifndef FINAL_NORM
#define FINAL_NORM 0
#endif
static_assert(!(EMB || FINAL_NORM) || SPLIT_OUT, "EMB / FINAL_NORM: with SPLIT_OUT only");
#ifndef SELF_RESET
#define SELF_RESET 0      // LL_ZX: the launch leaves its counter and sums ready for the next (no memset between)
#endif
#ifndef PREFETCH_FIRST
#define PREFETCH_FIRST 1  // SPLIT_OUT: the first in_proj's copies issued before the embedding is read
#endif
#ifndef SPLIT_STAGGER
#define SPLIT_STAGGER 1   // each CTA starts its atomics at its own row (else all start at row 0 at once)
#endif
#ifndef SPLIT_ISSUE_AT
#define SPLIT_ISSUE_AT 0      // the next in_proj's copies issued: 0 before the SSM step, 1 after it, 2 after the
                              // layer's arrival
#endif
#ifndef SPLIT_STORE_LATE
#define SPLIT_STORE_LATE 0    // the state's write-back issued after out_proj's products (else with those copies)
#endif
// SPLIT_PAIR=1 (with SPLIT_OUT, sm_90, one item per CTA): the CTAs of items 2k and 2k + 1 form a cluster of two,
// exchange their h through distributed shared memory, and each multiplies the pair's 2 CH columns for half the
// rows: half the atomics, the same words (1.3B on an H100: 9.35 against 9.38 us a layer by item; 9.86 against
// 10.78 while the next in_proj's copies were issued after the SSM step and held up the layer's last release).
#ifndef SPLIT_PAIR
#define SPLIT_PAIR 0
#endif
// LL_ZX=1 (with SPLIT_OUT, its default): no grid barrier between in_proj and the SSM step either. in_proj's outputs
// are stored as 32-bit words {value (model dtype), epoch} (``zxl``), the epoch a 16-bit count of the layers run so
// far by this decoder (``gen``: launches, kept in global memory); the SSM step spins on each word it needs until
// its epoch is the layer's, so an item waits for the few CTAs that computed its rows, not for the whole grid, and no
// release waits for the stores' acknowledgements (the flag travels with the data, as NCCL's LL protocol does). A
// word is written once a layer, so a stale one holds the previous epoch. Every CTA passed the layer's first
// barrier before its in_proj, so nothing overwrites a word before its readers have it (they arrive at the barrier
// that ends the layer after their SSM step). The out_proj sums then take three buffers instead of two (zeroed a
// layer later: see the main loop).
#ifndef LL_ZX
#define LL_ZX SPLIT_OUT
#endif
static_assert(!LL_ZX || SPLIT_OUT, "LL_ZX needs SPLIT_OUT (out_proj by rows has its barrier anyway)");
constexpr int NBUF = LL_ZX ? 3 : 2;   // SPLIT_OUT's partial-sum buffers
static_assert(!SELF_RESET || LL_ZX, "SELF_RESET: with LL_ZX only");
// SUMS_PARTS: each buffer in this many parts, CTA c adding into part c % SUMS_PARTS and the readers adding the parts
// up. By item that halves the atomics on each line of the buffer; by pairs it does not (the two CTAs of a pair add
// different rows), yet 2 parts measured faster there too (1.3B on an H100: 8.06 against 9.08 us a layer; see
// persistent_decode.py).
#ifndef SUMS_PARTS
#define SUMS_PARTS 1
#endif
constexpr int SB = SUMS_PARTS * NG * DM;  // floats of a buffer
#if SPLIT_OUT
constexpr int PAIR = SPLIT_PAIR ? 2 : 1;
constexpr int SCOLS = PAIR * CH, SROWS = DM / PAIR;  // a CTA's block of out_proj: columns (the pair's), rows
constexpr int WPR = SCOLS / 16;                      // words per row of a block
constexpr int SG = SCOLS >= GOUT ? SCOLS / GOUT : 1; // scale rows of a block
constexpr int SPLIT_WORDS_B = SROWS * WPR * 4, SPLIT_SCALES_B = SG * SROWS * 2;
static_assert(SCOLS % 16 == 0 && SROWS % 8 == 0 && (SCOLS % GOUT == 0 || GOUT % SCOLS == 0), "SPLIT_OUT shape");
static_assert(!SPLIT_PAIR || (GRID % 2 == 0 && NH * (P / CH) <= GRID), "SPLIT_PAIR: pairs of CTAs, an item each");
#else
constexpr int PAIR = 1, SCOLS = 1, SPLIT_WORDS_B = 0, SPLIT_SCALES_B = 0;
#endif
#if __CUDA_ARCH__ >= 900
#define TMA 1
#else
#define TMA 0
#endif
// Thread 0 polls the barriers and issues the copies; the warp that adds the SSM item's sum of squares under
// SPLIT_OUT and the thread that loads the item's dt and takes its softplus are others, so that the warp of thread 0,
// whose lanes also load and convolve the item's first x / z channels, does less alone (1.3B on an H100: 7.85
// against 8.03 us a layer, benchmarks/persistent_phases.py; moving thread 0's copies or the x / z channels to other
// warps was slower).
#ifndef SS_WARP
#define SS_WARP (NW > 1 ? 1 : 0)
#endif
#ifndef DT_THREAD
#define DT_THREAD ((CH + 31) / 32 * 32 < NT ? (CH + 31) / 32 * 32 : 0)   // the first warp after the x / z channels
#endif
static_assert(SS_WARP < NW && DT_THREAD < NT, "SS_WARP / DT_THREAD inside the CTA");

struct LayerP {                       // one layer's tensors (persistent_decode.py builds the table)
    const uint4* in_w; const u16* in_s; const float* norm_w;
    const float* conv_w; const float* conv_b; const float* dt_bias; const float* A; const float* D;
    const float* gnorm_w; const uint4* out_w; const u16* out_s; u16* ring; void* state;
    const uint4* out_ws; const u16* out_st;  // SPLIT_OUT: out_proj by SSM item (split_layout), its scales (E/GOUT, DM)
};

// ---------------------------------------------------------------- loads, stores, conversions
__device__ __forceinline__ u16 ld_s(const u16* p) {              // scales: read-only
    u16 v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
// Everything this kernel writes (residual, zx, h, states, ring) is read at L2 (.cg): another SM wrote it, and
// this SM's L1 may hold an older copy of the same address from an earlier layer.
__device__ __forceinline__ u16 ld_h(const u16* p) {
    u16 v;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ uint4 ld_u4(const void* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ float ld_f(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
// LL_ZX words: a relaxed (morally strong) 32-bit load / store, so that a spinning reader sees the writer's store.
__device__ __forceinline__ u32 ld_ll(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_ll(u32* p, u32 v) {
    asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ float h2f(u16 h) {                    // an fp16 scale
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float act2f(u16 h) {                  // an activation of the model dtype
#if ACT_BF16
    return __uint_as_float(((u32)h) << 16);
#else
    return h2f(h);
#endif
}
__device__ __forceinline__ u16 f2act(float f) {
    u16 h;
#if ACT_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}
__device__ __forceinline__ float rnd(float f) { return act2f(f2act(f)); }   // rounded to the model dtype

__device__ __forceinline__ float st2f(u32 bits16) {              // a half-precision state element
#if STATE_T == 2
    return __uint_as_float(bits16 << 16);
#else
    return h2f((u16)bits16);
#endif
}
__device__ __forceinline__ u32 f2st(float f) {
    u16 h;
#if STATE_T == 2
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

__device__ __forceinline__ float ffma(float a, float b, float c) {   // fma.rn keeps denormal operands (no .ftz)
    float d;
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(d) : "f"(a), "f"(b), "f"(c));
    return d;
}
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.0f + __expf(-v)); }


// Time stamps for benchmarks/persistent_phases.py --trace: thread 0 of each CTA writes, at points 0-9 of every
// layer (4: SPLIT_OUT only; 4, 6 and 7 only in CTAs with an SSM item there), the SM clock (slot k) and the global
// timer (slot NTRACE / 2 + k), comparable across SMs (``trace`` (GRID, NL, NTRACE) u64, or null: nothing is written).
// Slots 10 / 11: calibration. FINE_TRACE=1 (a debugging constant): also points 12-19 inside in_proj and the SSM step
// (see ``fine_stamp``), 48 slots a layer, the global timer in slot 24 + k.
#ifndef FINE_TRACE
#define FINE_TRACE 0
#endif
#define NTRACE (FINE_TRACE ? 48 : 24)
__device__ __forceinline__ u64 globaltimer() {
    u64 t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ void stamp(u64* trace, int l, int k) {
    if (trace != nullptr && threadIdx.x == 0) {
        trace[((long long)blockIdx.x * NL + l) * NTRACE + k] = clock64();
        trace[((long long)blockIdx.x * NL + l) * NTRACE + NTRACE / 2 + k] = globaltimer();
    }
}
__device__ __forceinline__ void fine_stamp(u64* trace, int l, int k) {
    if (FINE_TRACE) stamp(trace, l, k);
}

// ---------------------------------------------------------------- the grid barrier
// Arrive: bar.sync orders every thread's writes of the phase before thread 0's release increment of the counter
// (a release is cumulative: it publishes what its thread has observed, here through bar.sync); wait: thread 0
// reads the counter with acquire loads until every CTA has arrived, and bar.sync orders the rest of the CTA after
// it. (Measured on H100, benchmarks/RESULTS.md: cooperative groups' extra full fences, or relaxed polls with one
// fence, are slower.)
__device__ __forceinline__ void arrive(u32* bar) {
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(bar) : "memory");
}
__device__ __forceinline__ void wait(u32* bar, u32 target) {
    if (threadIdx.x == 0) {
        u32 v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
        } while ((int)(v - target) < 0);               // (SELF_RESET: the counter wraps around)
    }
    __syncthreads();
}

// ---------------------------------------------------------------- asynchronous copies to shared memory
__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(uint4* dst, const uint4* src, bool ok) {   // zero-filled if !ok
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(smem_u32(dst)), "l"(src), "r"(ok ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

__device__ __forceinline__ void mbar_init(u64* m) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_u32(m)) : "memory");
}
// One arrival that also expects ``bytes`` of TMA copies: the phase completes when they have all landed.
__device__ __forceinline__ void mbar_expect(u64* m, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem_u32(m)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void tma_load(void* dst, const void* src, u32 bytes, u64* m) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(m)) : "memory");
}
// TMA store of a shared-memory tile to global memory (bulk group): its writes are not part of this thread's
// generic-proxy ordering, so a barrier's release does not wait for them; nothing reads them this step.
__device__ __forceinline__ void tma_store(void* dst, const void* src, u32 bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n cp.async.bulk.commit_group;"
                 :: "l"(dst), "r"(smem_u32(src)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void tma_store_read_wait() {       // the tile may be overwritten after this
    asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}
__device__ __forceinline__ void tma_store_wait() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void mbar_wait(u64* m, u32 parity) {
    u32 done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(smem_u32(m)), "r"(parity) : "memory");
    } while (!done);
}

// ---------------------------------------------------------------- clusters of two CTAs (SPLIT_PAIR)
// *p in the other CTA of the cluster (the same shared-memory offset) = v, by an asynchronous store that completes 4
// bytes of a transaction on the other CTA's mbarrier ``m`` (the same offset too): the receiver waits on its own
// mbarrier, and the sender needs no release (a cluster barrier's release waited for the CTA's memory operations in
// flight, the copies just issued among them: 2.5 us a layer at 1.3B).
__device__ __forceinline__ void st_partner(float* p, float v, u64* m) {
#if __CUDA_ARCH__ >= 900
    const u32 other = blockIdx.x % 2 ^ 1;
    u32 remote, rbar;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(p)), "r"(other));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rbar) : "r"(smem_u32(m)), "r"(other));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [%0], %1, [%2];" :: "r"(remote), "f"(v),
                 "r"(rbar) : "memory");
#endif
}
// Every thread of both CTAs: what each wrote before (its own or the other's shared memory) is seen after.
__device__ __forceinline__ void cluster_sync() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// ---------------------------------------------------------------- projections
// A projection (N, K) in the GEMV layout (layout.py): row n is K/16 int32 words, pack blocks of KB inputs
// (KW = KB/16 words), one fp16 scale per G inputs. A warp reads a row in NCH chunks of CW words (CW a multiple of
// 32, at most 32 WMAX: 128 at 1.3B, 160 at 2.7B); a lane reads WPL = CW / 32 words of a chunk in NPART parts: Q4
// uint4 of 4 words (chunk words 128 q + 4 lane .. + 3), then S1 single words (128 Q4 + 32 s + lane). Its inputs
// are the same in every row, so a lane keeps its 16 WPL activations in registers for the whole phase, pre-scaled
// for the denormal decode of gemv.py: field j of a word, masked in place, is the fp32 denormal (code + 1) *
// 2**(2j - 149); one FFMA with x * 2**(149 - XS - 2j) adds (code + 1) * x * 2**-XS. Fields 11..15 are read from
// word >> 20. The "+ 1" is removed once per part and row (minus the part's sum of x), 2**XS and the scale once per
// part and row (a part lies in one pack block, which has one scale). Rows lie in shared memory as in global
// memory, KWT words each. (Single words, not one wider vector per lane, because a row need not be a multiple of
// 128 words: 2.7B's 160-word rows took two warps a row with the second one's lanes three quarters idle.)
#ifndef WMAX
#define WMAX 5
#endif
__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }
template <int N_, int K_, int KB_, int G_>
struct Proj {
    static constexpr int N = N_, K = K_, KB = KB_, G = G_;
    static constexpr int KWT = K / 16;                 // words per row
    static constexpr int KW = KB / 16;                 // words per pack block
    static constexpr int NCH = cdiv(KWT, 32 * WMAX);   // chunks per row
    static constexpr int CW = 32 * cdiv(cdiv(KWT, NCH), 32);   // words per chunk (the last may be partial)
    static constexpr int WPL = CW / 32, Q4 = WPL / 4, S1 = WPL % 4, NPART = Q4 + S1;
    static constexpr int NWG = NW / NCH;               // warp groups: a group's NCH warps share rows
    static constexpr int RPC = (N + GRID - 1) / GRID;  // most rows of a CTA
    static constexpr int MAXR = (RPC + NWG - 1) / NWG; // rows per warp
    // Words of the CTA's buffer: every row a warp may read (MAXR NWG), and a partial last chunk's reach past it.
    static constexpr int WORDS = 4 * cdiv(MAXR * NWG * KWT + NCH * CW - KWT, 4);
    static constexpr int XPAD = KW;                    // floats of padding per pack block in shared memory
    static constexpr int XLEN = K + (K / KB) * XPAD;   // (conflict-free reads of a lane's inputs)
};


// This CTA's rows of a projection: [rb, re), balanced over the grid.
template <class PJ>
__device__ __forceinline__ int row_begin(int cta) { return (int)(((long long)PJ::N * cta) / GRID); }

// Where this thread works in a projection: its warp group (rows wg, wg + NWG, ...) and its chunk c.
struct LaneChunk {
    int wg, c;
    bool ok;                                           // (a warp beyond NWG * NCH has none)
};
template <class PJ>
__device__ __forceinline__ LaneChunk lane_chunk() {
    const int warp = threadIdx.x / 32;
    return {warp / PJ::NCH, warp % PJ::NCH, warp < PJ::NWG * PJ::NCH};
}
// The lane's first word of part ``p`` in a row, and whether the row has it (a partial last chunk may not).
template <class PJ>
__device__ __forceinline__ int part_word(int c, int p, int lane) {
    return c * PJ::CW + (p < PJ::Q4 ? 128 * p + 4 * lane : 128 * PJ::Q4 + 32 * (p - PJ::Q4) + lane);
}
template <class PJ>
__device__ __forceinline__ bool part_ok(const LaneChunk& lc, int p, int lane) {
    return lc.ok && part_word<PJ>(lc.c, p, lane) < PJ::KWT;
}

// The lane's scales of one projection: its parts' blocks' scales in each of its rows (0 past the CTA's rows).
template <class PJ>
__device__ __forceinline__ void load_scales(const u16* __restrict__ s, u16 (&sr)[PJ::MAXR][PJ::NPART]) {
    const LaneChunk lc = lane_chunk<PJ>();
    const int lane = threadIdx.x % 32;
    const int rb = row_begin<PJ>(blockIdx.x), re = row_begin<PJ>(blockIdx.x + 1);
#pragma unroll
    for (int p = 0; p < PJ::NPART; ++p) {
        const bool ok = part_ok<PJ>(lc, p, lane);
        const int sofs = (part_word<PJ>(lc.c, p, lane) / PJ::KW) * PJ::KB / PJ::G;   // its scale in the row
#pragma unroll
        for (int i = 0; i < PJ::MAXR; ++i) {
            const int row = rb + i * PJ::NWG + lc.wg;
            sr[i][p] = !(ok && row < re) ? (u16)0 : NO_SCALE_LOADS ? (u16)0x3c00
                                                                   : ld_s(s + (long long)row * (PJ::K / PJ::G) + sofs);
        }
    }
}

// Copy this CTA's rows of one projection into shared memory (``buf``: PJ::WORDS words, the rows as in global
// memory), and, if ``scales``, load the lane's scales (load_scales). Called before the barrier that gates the
// projection: nothing here depends on this step's activations. sm_90: one TMA copy of the CTA's rows (contiguous
// in global memory: a TMA instruction costs the issuing warp tens of cycles, and one a row held the CTA 1.3 us at
// 1.3B), completing on ``mbar``; else 16-byte cp.async copies spread over the threads (one commit group).
template <class PJ>
__device__ __forceinline__ void prefetch(const uint4* __restrict__ w, const u16* __restrict__ s, uint4* buf,
                                         u16 (&sr)[PJ::MAXR][PJ::NPART], u64* mbar, bool scales = true) {
    const int rb = row_begin<PJ>(blockIdx.x), re = row_begin<PJ>(blockIdx.x + 1);
    const uint4* src = w + (long long)rb * (PJ::KWT / 4);
#if TMA
    // Thread 0 also announces the bytes (the mbarrier's phase cannot complete before that arrival, whichever
    // comes first).
    if (threadIdx.x == 0) {
        const u32 bytes = (u32)(re - rb) * PJ::KWT * 4;
        mbar_expect(mbar, bytes);
        tma_load(buf, src, bytes, mbar);
    }
#else
    for (int i = threadIdx.x; i < (re - rb) * (PJ::KWT / 4); i += NT) cp_async16(buf + i, src + i, true);
    cp_async_commit();
#endif
    if (scales) load_scales<PJ>(s, sr);
}

template <int PENDING>
__device__ __forceinline__ void words_wait(u64* mbar, u32 parity) {
#if TMA
    mbar_wait(mbar, parity);
#else
    cp_async_wait<PENDING>();
#endif
}

// The norm weights of this thread's inputs in ``stage`` (PER float4), loaded before the barrier.
template <class PJ>
struct NormW {
    static constexpr int K4 = PJ::K / 4, PER = (K4 + NT - 1) / NT;
    float4 v[PER];
};
template <class PJ>
__device__ __forceinline__ void prefetch_norm(const float* __restrict__ nw, NormW<PJ>& n) {
#pragma unroll
    for (int i = 0; i < NormW<PJ>::PER; ++i) {
        const int k4 = threadIdx.x + i * NT;
        n.v[i] = k4 < NormW<PJ>::K4 ? __ldg(reinterpret_cast<const float4*>(nw) + k4) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

// The projection's input after its norm, in shared memory (padded per pack block, PJ::XLEN floats):
// xs[k] = round(v[k] * nw[k] * rsqrt(mean over k's group of v**2 + eps)), NGRP groups of K / NGRP inputs; the
// thread holds v[4 k4 .. 4 k4 + 3] for k4 = threadIdx.x + i NT (i < PER).
template <class PJ, int NGRP>
__device__ __forceinline__ void norm_to_shared(const float4 (&v)[NormW<PJ>::PER], const NormW<PJ>& nw, float eps,
                                               float* xs, float* red) {
    constexpr int K4 = PJ::K / 4, PER = NormW<PJ>::PER, GS = PJ::K / NGRP;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float ss[NGRP];
#pragma unroll
    for (int g = 0; g < NGRP; ++g) ss[g] = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int k4 = threadIdx.x + i * NT;
        if (k4 < K4) {
            const float d = v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
            const int grp = (4 * k4) / GS;
#pragma unroll
            for (int g = 0; g < NGRP; ++g) ss[g] += grp == g ? d : 0.f;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int g = 0; g < NGRP; ++g) ss[g] += __shfl_xor_sync(0xffffffffu, ss[g], o);
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < NGRP; ++g) red[warp * NGRP + g] = ss[g];
    }
    __syncthreads();
    float r[NGRP];
#pragma unroll
    for (int g = 0; g < NGRP; ++g) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) t += red[w * NGRP + g];
        r[g] = rsqrtf(t / GS + eps);
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int k4 = threadIdx.x + i * NT;
        if (k4 < K4) {
            const int k = 4 * k4, grp = k / GS;
            float rg = r[0];
#pragma unroll
            for (int g = 1; g < NGRP; ++g) rg = grp == g ? r[g] : rg;
            const float4 n = nw.v[i];
            float4 o;
            o.x = rnd(v[i].x * rg * n.x); o.y = rnd(v[i].y * rg * n.y);
            o.z = rnd(v[i].z * rg * n.z); o.w = rnd(v[i].w * rg * n.w);
            *reinterpret_cast<float4*>(xs + k + (k / PJ::KB) * PJ::XPAD) = o;
        }
    }
    __syncthreads();
}

// The thread's elements of a (K,) fp32 vector written by other CTAs before the barrier (read at L2).
template <class PJ>
__device__ __forceinline__ void load_vec(const float* src, float4 (&v)[NormW<PJ>::PER]) {
#pragma unroll
    for (int i = 0; i < NormW<PJ>::PER; ++i) {
        const int k4 = threadIdx.x + i * NT;
        if (k4 < PJ::K / 4) {
            const uint4 q = ld_u4(src + 4 * k4);
            v[i] = make_float4(__uint_as_float(q.x), __uint_as_float(q.y), __uint_as_float(q.z), __uint_as_float(q.w));
        } else {
            v[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
}

// stage: the normed input of ``src`` (K,) fp32, written by other CTAs before the barrier.
template <class PJ, int NGRP>
__device__ __forceinline__ void stage(const float* src, const NormW<PJ>& nw, float eps, float* xs, float* red) {
    float4 v[NormW<PJ>::PER];
    load_vec<PJ>(src, v);
    norm_to_shared<PJ, NGRP>(v, nw, eps, xs, red);
}

// The denormal decode of one word (16 fields). field_scale(j): the factor of field j's input, 2**(149 - XS - 2 jj)
// with jj the field's place in the word it is read from (fields 11..15 from word >> 20); word_dot: the sum over the
// fields of (code + 1) * input * 2**-XS, inputs x(j) pre-scaled by field_scale; times TWO_XS (and minus the inputs'
// plain sum, for the "+ 1") it is the word's sum of code * input.
__device__ __forceinline__ float field_scale(int j) {
    const int jj = j < 11 ? j : j - 10;
    return __uint_as_float((u32)(127 + 149 - XS - 2 * jj) << 23);
}
template <class X>
__device__ __forceinline__ float word_dot(u32 word, X x) {
    const u32 hi = word >> 20;
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < FIELDS; ++j) {
        const u32 f = j < 11 ? (word & (3u << (2 * j))) : (hi & (3u << (2 * (j - 10))));
        acc = ffma(__uint_as_float(f), x(j), acc);
    }
    return acc;
}
#define TWO_XS __uint_as_float((u32)(127 + XS) << 23)

// The lane's 16 WPL inputs of its chunk (the same in every row), pre-scaled per field for the denormal decode:
// xr[j][4 q + t] for word t of uint4 part q, xr[j][4 Q4 + s] for single word s. sx[p]: part p's plain sum (the
// "+ 1" of the stored codes is removed with it); inputs past the row are 0.
template <class PJ>
__device__ __forceinline__ void lane_x(const float* xs, float (&xr)[16][PJ::WPL], float (&sx)[PJ::NPART]) {
    const LaneChunk lc = lane_chunk<PJ>();
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int p = 0; p < PJ::NPART; ++p) {
        const bool ok = part_ok<PJ>(lc, p, lane);
        const int word = part_word<PJ>(lc.c, p, lane);
        const float* base = xs + (word / PJ::KW) * (PJ::KB + PJ::XPAD) + word % PJ::KW;
        float t = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const float sc = field_scale(j);
            if (p < PJ::Q4) {
                const float4 v = ok ? *reinterpret_cast<const float4*>(base + j * PJ::KW)
                                    : make_float4(0.f, 0.f, 0.f, 0.f);
                t += (v.x + v.y) + (v.z + v.w);
                xr[j][4 * p] = v.x * sc; xr[j][4 * p + 1] = v.y * sc; xr[j][4 * p + 2] = v.z * sc;
                xr[j][4 * p + 3] = v.w * sc;
            } else {
                const float v = ok ? base[j * PJ::KW] : 0.f;
                t += v;
                xr[j][4 * PJ::Q4 + p - PJ::Q4] = v * sc;
            }
        }
        sx[p] = t;
    }
}

// Sum over the lane's 16 WPL weights of one row (``rw``: the row's first word of the lane's chunk, shared memory)
// of code * x, before the row's reduction over lanes. A part past the row reads the next row or the buffer's
// padding (Proj::WORDS): its inputs and its scale are 0, and a masked field is never NaN or infinite.
template <class PJ>
__device__ __forceinline__ float row_dot(const u32* rw, const float (&xr)[16][PJ::WPL], const float (&sx)[PJ::NPART],
                                         const u16 (&scale)[PJ::NPART], int lane) {
    float acc = 0.f;
#pragma unroll
    for (int q = 0; q < PJ::Q4; ++q) {
        const uint4 v = *reinterpret_cast<const uint4*>(rw + 128 * q + 4 * lane);
        const u32 w[4] = {v.x, v.y, v.z, v.w};
        float a[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) a[t] = word_dot(w[t], [&](int j) { return xr[j][4 * q + t]; });
        acc += (((a[0] + a[1]) + (a[2] + a[3])) * TWO_XS - sx[q]) * h2f(scale[q]);
    }
#pragma unroll
    for (int s = 0; s < PJ::S1; ++s) {
        const u32 w = rw[128 * PJ::Q4 + 32 * s + lane];
        const float a = word_dot(w, [&](int j) { return xr[j][4 * PJ::Q4 + s]; });
        acc += (a * TWO_XS - sx[PJ::Q4 + s]) * h2f(scale[PJ::Q4 + s]);
    }
    return acc;
}

// Sums R values (R a power of two <= 32) over the warp's lanes at once (call with N = R, O = 16): each butterfly
// step halves the values a lane holds (it keeps one half and sends the other), so R values cost R - 1 +
// log2(32 / R) shuffles instead of 5 R. Returns, in lane l, the sum of value l / (32 / R).
template <int N, int O, int R>
__device__ __forceinline__ float multi_warp_sum(float (&v)[R], int lane) {
    if constexpr (N > 1) {
        const bool hi = lane & O;
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            const float send = hi ? v[i] : v[i + N / 2], keep = hi ? v[i + N / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        return multi_warp_sum<N / 2, O / 2, R>(v, lane);
    } else {
        float t = v[0];
#pragma unroll
        for (int o = O; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        return t;
    }
}

__host__ __device__ constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

// An in_proj output: zx[row] in the model dtype, or under LL_ZX the word {value, epoch} (``out`` is zxl).
__device__ __forceinline__ void store_act(void* out, int row, float v, u32 epoch) {
#if LL_ZX
    st_ll(static_cast<u32*>(out) + row, (u32)f2act(v) | (epoch << 16));
#else
    static_cast<u16*>(out)[row] = f2act(v);
#endif
}

// out = W xs: rows of this CTA; RES: residual[row] += out (fp32), else zx[row] = out in the model dtype
// (store_act).
// ``stage_in()`` writes the normed input to ``xs`` (stage, or stage_split's residual update first);
// ``after_stage()`` runs once the activations are staged, before the products: where the kernel issues the
// copies for later phases (see the main loop).
template <class PJ, bool RES, int PENDING, class Stage, class Hook>
__device__ __forceinline__ void project(Stage stage_in, const uint4* buf, u64* mbar, u32 parity,
                                        const u16 (&sr)[PJ::MAXR][PJ::NPART], float* xs, float* part, void* out_act,
                                        u32 epoch, float* out_res, float& res_own, u64* trace, int l,
                                        Hook after_stage) {
    stage_in();
    stamp(trace, l, RES ? 8 : 2);
    after_stage();
    if (!RES) fine_stamp(trace, l, 12);
    float xr[16][PJ::WPL], sx[PJ::NPART];
    lane_x<PJ>(xs, xr, sx);
    if (!RES) fine_stamp(trace, l, 13);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const LaneChunk lc = lane_chunk<PJ>();
    const int wg = lc.wg, c = lc.c;
    const int rb = row_begin<PJ>(blockIdx.x), cnt = row_begin<PJ>(blockIdx.x + 1) - rb;
    constexpr int R = pow2_at_least(PJ::MAXR);
    static_assert(R <= 32, "at most 32 rows per warp");
    words_wait<PENDING>(mbar, parity); // the projection's words have landed (and are visible to this thread)
    if (!RES) fine_stamp(trace, l, 14);
    const u32* bw = reinterpret_cast<const u32*>(buf) + wg * PJ::KWT + c * PJ::CW;
    float v[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int ii = i < PJ::MAXR ? i : 0;
        v[i] = i < PJ::MAXR ? row_dot<PJ>(bw + ii * PJ::NWG * PJ::KWT, xr, sx, sr[ii], lane) : 0.f;
    }
    if (!RES) fine_stamp(trace, l, 15);
    const float sum = multi_warp_sum<R, 16, R>(v, lane);
    const int i = lane / (32 / R), local = i * PJ::NWG + wg;
    // in_proj with whole rows per warp writes directly; otherwise the chunks' partial sums meet in shared memory.
    // out_proj always goes through it: thread ``local`` owns residual row rb + local and keeps its value in a
    // register (``res_own``) across layers, so the update needs no read of global memory.
    constexpr bool DIRECT = PJ::NCH == 1 && !RES;
    if (lane % (32 / R) == 0 && i < PJ::MAXR && local < cnt && warp < PJ::NWG * PJ::NCH) {
        if (DIRECT) store_act(out_act, rb + local, sum, epoch);
        else part[local * PJ::NCH + c] = sum;
    }
    if (!RES) fine_stamp(trace, l, 16);
    if (!DIRECT) {
        static_assert(!RES || PJ::RPC <= NT, "one thread per out_proj row of a CTA");
        __syncthreads();
        for (int l2 = threadIdx.x; l2 < cnt; l2 += NT) {
            float t = 0.f;
#pragma unroll
            for (int cc = 0; cc < PJ::NCH; ++cc) t += part[l2 * PJ::NCH + cc];
            if (RES) {
                res_own += t;
                out_res[rb + l2] = res_own;
            } else {
                store_act(out_act, rb + l2, t, epoch);
            }
        }
    }
}

// ---------------------------------------------------------------- the SSM step (phase B)
// An item: CH channels of head hd (channel block pb). Thread t: channel t / TPC; its SPT states are 16-byte
// vectors (VEC elements) t % TPC, + TPC, + 2 TPC, ... of the channel's row, so a channel's TPC threads read
// consecutive vectors (coalesced, and conflict-free from shared memory).
constexpr int NITEMS = NH * (P / CH);
constexpr int SPT = NS / TPC;
constexpr int VEC = STATE_T == 0 ? 4 : 8;
constexpr int SBYTES = STATE_T == 0 ? 4 : 2;
constexpr int ITEM_BYTES = CH * NS * SBYTES;       // an item's state tile (contiguous in memory)
__device__ __forceinline__ int state_n(int t, int k) { return VEC * (t % TPC + TPC * (k / VEC)) + k % VEC; }
constexpr int BCPER = (2 * NS + NT - 1) / NT;     // B / C channels per thread

struct SsmPre {                       // what predates the step, loaded before the barrier (no arithmetic on it
    float S[SPT];                     // there: a use would wait for the load); the thread's state elements
    u16 xr[DCONV - 1];                // thread t < CH: x channel t's older inputs (ring), conv taps and bias
    float xw[DCONV], xb;
    u16 bcr[BCPER][DCONV - 1];        // the same for B / C channel t + i NT (B: < NS, then C), i < BCPER
    float bcw[BCPER][DCONV], bcb[BCPER];
    float dtb, A, D;
    float gw;                         // SPLIT_OUT, thread t % TPC == 0: the gated norm's weight of channel t / TPC
};

__device__ __forceinline__ int item_channel(int item, int t) {   // x channel (xBC-relative) of thread t < CH
    const int hd = item / (P / CH), pb = item % (P / CH);
    return hd * P + pb * CH + t;
}
__device__ __forceinline__ int bc_channel(int item, int t) {     // B / C channel (xBC-relative) of thread t < 2 NS
    const int grp = (item / (P / CH)) / (NH / NG);
    return E + (t < NS ? grp * NS + t : NG * NS + grp * NS + (t - NS));
}

__device__ __forceinline__ void conv_load(const LayerP& L, int ch, int T, u16 (&r)[DCONV - 1], float (&w)[DCONV],
                                          float& b) {
    b = __ldg(L.conv_b + ch);
#pragma unroll
    for (int i = 0; i < DCONV; ++i) w[i] = __ldg(L.conv_w + ch * DCONV + i);
#pragma unroll
    for (int i = 0; i < DCONV - 1; ++i) r[i] = ld_h(L.ring + ch * DCONV + (T + 1 + i) % DCONV);
}
// silu(conv) of a channel with this step's input ``xin``: bias, older taps oldest first, then the new one.
__device__ __forceinline__ float conv_out(const u16 (&r)[DCONV - 1], const float (&w)[DCONV], float b, float xin) {
    float acc = b;
#pragma unroll
    for (int i = 0; i < DCONV - 1; ++i) acc += w[i] * act2f(r[i]);
    return silu(acc + w[DCONV - 1] * xin);
}

// The thread's state elements from 16-byte vectors at ``base`` (the item's tile, global or shared memory).
__device__ __forceinline__ void state_unpack(const void* tile, SsmPre& pre, bool global) {
    const int t = threadIdx.x;
    const char* base = reinterpret_cast<const char*>(tile) + (long long)(t / TPC) * NS * SBYTES;
#pragma unroll
    for (int k = 0; k < SPT; k += VEC) {
        const void* p = base + state_n(t, k) * SBYTES;
        const uint4 v = global ? ld_u4(p) : *reinterpret_cast<const uint4*>(p);
        const u32 q[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
#if STATE_T == 0
            pre.S[k + e] = __uint_as_float(q[e]);
#else
            pre.S[k + 2 * e] = st2f(q[e] & 0xffffu);
            pre.S[k + 2 * e + 1] = st2f(q[e] >> 16);
#endif
        }
    }
}

// The thread's 16-byte vector k / VEC of new state values, in the storage dtype.
__device__ __forceinline__ uint4 state_pack(const SsmPre& pre, int k) {
    uint4 v;
#if STATE_T == 0
    v = make_uint4(__float_as_uint(pre.S[k]), __float_as_uint(pre.S[k + 1]), __float_as_uint(pre.S[k + 2]),
                   __float_as_uint(pre.S[k + 3]));
#else
    v.x = f2st(pre.S[k]) | (f2st(pre.S[k + 1]) << 16); v.y = f2st(pre.S[k + 2]) | (f2st(pre.S[k + 3]) << 16);
    v.z = f2st(pre.S[k + 4]) | (f2st(pre.S[k + 5]) << 16); v.w = f2st(pre.S[k + 6]) | (f2st(pre.S[k + 7]) << 16);
#endif
    return v;
}

__device__ __forceinline__ const char* item_tile(const LayerP& L, int item) {
    return reinterpret_cast<const char*>(L.state) + (long long)item_channel(item, 0) * NS * SBYTES;
}

// What the item needs that predates the step. ``tma`` (sm_90, first item): the state tile goes to ``stile`` by one
// TMA copy (ssm_finish waits for it); else into registers.
__device__ __forceinline__ void ssm_load(const LayerP& L, int item, int T, SsmPre& pre, bool tma, void* stile,
                                         u64* mbar) {
    const int t = threadIdx.x;
#if TMA
    if (tma) {
        if (t == 0) {
            tma_store_read_wait();     // the previous layer's state left the tile (ssm_writeback)
            mbar_expect(mbar, ITEM_BYTES);
            tma_load(stile, item_tile(L, item), ITEM_BYTES, mbar);
        }
    } else
#endif
    if (t < CH * TPC) {
        state_unpack(item_tile(L, item), pre, true);
    }
    if (t < CH) conv_load(L, item_channel(item, t), T, pre.xr, pre.xw, pre.xb);
#pragma unroll
    for (int i = 0; i < BCPER; ++i)
        if (t + i * NT < 2 * NS) conv_load(L, bc_channel(item, t + i * NT), T, pre.bcr[i], pre.bcw[i], pre.bcb[i]);
    const int hd = item / (P / CH);
    pre.dtb = __ldg(L.dt_bias + hd);
    pre.A = __ldg(L.A + hd);
    pre.D = __ldg(L.D + hd);
    if (SPLIT_OUT && t < CH * TPC && t % TPC == 0) pre.gw = __ldg(L.gnorm_w + item_channel(item, t / TPC));
}

__device__ __forceinline__ void ssm_finish(const LayerP& L, int item, int T, SsmPre& pre, const void* zxv, u32 epoch,
                                           float* hbuf, float* hsm, u64* hbar, float* sm, bool tma,
                                           const void* stile, u64* mbar, u32 parity, u64* trace = nullptr,
                                           int l = 0) {
    float* sm_x = sm;                 // CH
    float* sm_z = sm + CH;            // CH
    float* sm_bc = sm + 2 * CH;       // 2 NS
    float* sm_dt = sm + 2 * CH + 2 * NS;
    const int t = threadIdx.x;
    const int hd = item / (P / CH), pb = item % (P / CH);
    const int slot = T % DCONV;
    float ssm_y = 0.f;
    // Every load of in_proj's outputs first, then the arithmetic on them: one L2 round trip, not one per branch
    // (the loads are volatile and each branch waited for its own: 3 round trips).
    const int ch = item_channel(item, t < CH ? t : 0);
    const int dt_row = 2 * E + 2 * NG * NS + hd;
    u16 raw_x = 0, raw_z = 0, raw_dt = 0, raw_bc[BCPER];
#if LL_ZX
    // Every word first (one L2 round trip when they are there), then each one again until its epoch is the layer's.
    const u32* zl = static_cast<const u32*>(zxv);
    u32 wx = 0, wz = 0, wdt = 0, wbc[BCPER];
    if (t < CH) {
        wx = ld_ll(zl + E + ch);
        wz = ld_ll(zl + ch);
    }
#pragma unroll
    for (int i = 0; i < BCPER; ++i) wbc[i] = t + i * NT < 2 * NS ? ld_ll(zl + E + bc_channel(item, t + i * NT)) : 0;
    if (t == DT_THREAD) wdt = ld_ll(zl + dt_row);
    if (t < CH) {
        while ((wx >> 16) != epoch) wx = ld_ll(zl + E + ch);
        while ((wz >> 16) != epoch) wz = ld_ll(zl + ch);
        raw_x = (u16)wx;
        raw_z = (u16)wz;
    }
#pragma unroll
    for (int i = 0; i < BCPER; ++i) {
        if (t + i * NT < 2 * NS)
            while ((wbc[i] >> 16) != epoch) wbc[i] = ld_ll(zl + E + bc_channel(item, t + i * NT));
        raw_bc[i] = (u16)wbc[i];
    }
    if (t == DT_THREAD) {
        while ((wdt >> 16) != epoch) wdt = ld_ll(zl + dt_row);
        raw_dt = (u16)wdt;
    }
    fine_stamp(trace, l, 17);
#else
    const u16* zx = static_cast<const u16*>(zxv);
    if (t < CH) {
        raw_x = ld_h(zx + E + ch);
        raw_z = ld_h(zx + ch);
    }
#pragma unroll
    for (int i = 0; i < BCPER; ++i) raw_bc[i] = t + i * NT < 2 * NS ? ld_h(zx + E + bc_channel(item, t + i * NT)) : 0;
    if (t == DT_THREAD) raw_dt = ld_h(zx + dt_row);
#endif
    if (t < CH) {
        L.ring[ch * DCONV + slot] = raw_x;
        sm_x[t] = rnd(conv_out(pre.xr, pre.xw, pre.xb, act2f(raw_x)));
        sm_z[t] = act2f(raw_z);
    }
#pragma unroll
    for (int i = 0; i < BCPER; ++i) {
        const int tb = t + i * NT;
        if (tb < 2 * NS) {
            if (hd % (NH / NG) == 0 && pb == 0)      // the group's first item
                L.ring[bc_channel(item, tb) * DCONV + slot] = raw_bc[i];
            sm_bc[tb] = rnd(conv_out(pre.bcr[i], pre.bcw[i], pre.bcb[i], act2f(raw_bc[i])));
        }
    }
    if (t == DT_THREAD) {
        float dt = act2f(raw_dt) + pre.dtb;
        sm_dt[0] = dt > 20.f ? dt : logf(1.f + expf(dt));    // softplus, torch's threshold
    }
#if TMA
    if (tma) mbar_wait(mbar, parity);
#endif
    __syncthreads();
    fine_stamp(trace, l, 18);
    if (t < CH * TPC) {
#if TMA
        if (tma) state_unpack(stile, pre, false);
#endif
        const int cl = t / TPC;
        const float dt = sm_dt[0], dA = __expf(dt * pre.A), xv = sm_x[cl], dtx = dt * xv;
        float y = 0.f;
#pragma unroll
        for (int k = 0; k < SPT; ++k) {
            const int n = state_n(t, k);
            const float s = pre.S[k] * dA + dtx * sm_bc[n];
            pre.S[k] = s;
            y += s * sm_bc[NS + n];
        }
        ssm_y = y;
#if TMA
        if (tma) {                     // the new state back into the tile, for ssm_writeback's TMA store
            char* base = reinterpret_cast<char*>(const_cast<void*>(stile)) + (long long)(t / TPC) * NS * SBYTES;
#pragma unroll
            for (int k = 0; k < SPT; k += VEC)
                *reinterpret_cast<uint4*>(base + state_n(t, k) * SBYTES) = state_pack(pre, k);
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");   // visible to the TMA store
        }
#endif
    }
    // Outside the branch: CH * TPC need not fill whole warps, and every lane of a warp must shuffle.
#pragma unroll
    for (int o = TPC / 2; o > 0; o >>= 1) ssm_y += __shfl_xor_sync(0xffffffffu, ssm_y, o);
    if (t < CH * TPC && t % TPC == 0) {
        const int cl = t / TPC;
        const float yv = rnd(ssm_y) + sm_x[cl] * pre.D;
        const float hv = yv * silu(sm_z[cl]);
        if (SPLIT_OUT) {              // the item's h for out_split: times the norm weight, and squared
            const int at = (PAIR == 2 ? (int)(blockIdx.x % 2) * CH : 0) + cl;
            hsm[at] = hv * pre.gw;
            hsm[SCOLS + cl] = hv * hv;
            if (PAIR == 2) st_partner(&hsm[at], hv * pre.gw, hbar);
        } else {
            hbuf[item_channel(item, cl)] = hv;
        }
    }
    __syncthreads();                  // the item's shared memory is reused by the next item
    fine_stamp(trace, l, 19);
}

// The updated state back to memory. Nothing reads it before the next step, so the last item's store is issued
// during out_proj, not before a barrier (whose release would wait for it).
__device__ __forceinline__ void ssm_store(const LayerP& L, int item, const SsmPre& pre) {
    const int t = threadIdx.x;
    if (t >= CH * TPC) return;
    char* base = const_cast<char*>(item_tile(L, item)) + (long long)(t / TPC) * NS * SBYTES;
#pragma unroll
    for (int k = 0; k < SPT; k += VEC) *reinterpret_cast<uint4*>(base + state_n(t, k) * SBYTES) = state_pack(pre, k);
}

// sm_90: the first item's new state, left in the shared tile by ssm_finish, goes back by one TMA store (thread 0).
__device__ __forceinline__ void ssm_writeback(const LayerP& L, const void* stile) {
#if TMA
    if (threadIdx.x == 0) tma_store(const_cast<char*>(item_tile(L, blockIdx.x)), stile, ITEM_BYTES);
#endif
}

// ---------------------------------------------------------------- SPLIT_OUT: out_proj by SSM item
// split_layout (persistent_decode.py): item i's columns [i CH, (i + 1) CH) of out_proj as a (DM, CH / 16) matrix of
// words, row-major, field j of word w = column 16 w + j (stored code + 1), the items one after another; the scales
// transposed, (E / GOUT, DM) fp16, so an item's scales are SG whole rows. Both reach shared memory by one TMA copy
// each during in_proj (the CTA's first item; later items are read from global memory).
// sums[0..3] += v (fp32 atomics: one 16-byte reduction on sm_90).
__device__ __forceinline__ void red_add4(float* p, float a, float b, float c, float d) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p), "f"(a), "f"(b), "f"(c), "f"(d)
                 : "memory");
#else
    atomicAdd(p, a); atomicAdd(p + 1, b); atomicAdd(p + 2, c); atomicAdd(p + 3, d);
#endif
}

#if SPLIT_OUT
// The item's block (the pair's, under SPLIT_PAIR) and its rows: item / PAIR, rows from (item % PAIR) * SROWS.
__device__ __forceinline__ const uint4* split_words(const LayerP& L, int item) {
    return L.out_ws + ((long long)(item / PAIR) * DM + (item % PAIR) * SROWS) * WPR / 4;
}
// Scale row g of the block (its first, + g DM), from the CTA's first row.
__device__ __forceinline__ const u16* split_scales(const LayerP& L, int item) {
    return L.out_st + (long long)((item / PAIR) * SCOLS / GOUT) * DM + (item % PAIR) * SROWS;
}

// The CTA's first item's words and scales into shared memory (one completion on ``mbar``), issued during in_proj.
__device__ __forceinline__ void prefetch_split(const LayerP& L, int item, uint4* wbuf, u16* sbuf, u64* mbar) {
#if TMA
    if (threadIdx.x == 0) {
        mbar_expect(mbar, SPLIT_WORDS_B + SPLIT_SCALES_B);
        tma_load(wbuf, split_words(L, item), SPLIT_WORDS_B, mbar);
        for (int g = 0; g < SG; ++g) tma_load(sbuf + g * SROWS, split_scales(L, item) + g * DM, SROWS * 2, mbar);
    }
#else
    const uint4* w = split_words(L, item);
    for (int i = threadIdx.x; i < SPLIT_WORDS_B / 16; i += NT) cp_async16(wbuf + i, w + i, true);
    for (int g = 0; g < SG; ++g) {
        const uint4* sc = reinterpret_cast<const uint4*>(split_scales(L, item) + g * DM);
        for (int i = threadIdx.x; i < SROWS * 2 / 16; i += NT)
            cp_async16(reinterpret_cast<uint4*>(sbuf + g * SROWS) + i, sc + i, true);
    }
    cp_async_commit();
#endif
}

// sums[row] += sum over the block's SCOLS columns c of W[row, c] hg[c] for the CTA's SROWS rows (``hg``: h times
// the gated norm's weight, shared memory; ``sums``, ``words``, ``scales`` from the CTA's first row). Thread t takes
// row quads t, t + NT, ... (from a row of the CTA's own, so that the CTAs' atomics spread over the rows): 4 rows'
// words are 4 WPR consecutive words, their scales 4 consecutive fp16, and their sums one 16-byte reduction.
// Decode as row_dot (denormal fields, the "+ 1" removed per word with the sum of its 16 inputs, the scale applied
// per word).
__device__ __forceinline__ void out_split(const uint4* words, const u16* scales, const float* hg, float* sums) {
    float xr[SCOLS], sxw[WPR];
#pragma unroll
    for (int w = 0; w < WPR; ++w) {
        float sx = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const float v = hg[16 * w + j];
            sx += v;
            xr[16 * w + j] = v * field_scale(j);
        }
        sxw[w] = sx;
    }
    constexpr int NQ = SROWS / 4;
    const int q0 = SPLIT_STAGGER ? (int)((long long)NQ * blockIdx.x / GRID) : 0;
    for (int qi = threadIdx.x; qi < NQ; qi += NT) {
        const int q = qi + q0 < NQ ? qi + q0 : qi + q0 - NQ;
        u32 wd[4 * WPR];
#pragma unroll
        for (int i = 0; i < WPR; ++i) {
            const uint4 v = words[q * WPR + i];
            wd[4 * i] = v.x; wd[4 * i + 1] = v.y; wd[4 * i + 2] = v.z; wd[4 * i + 3] = v.w;
        }
        float o[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            float acc_row = 0.f;
#pragma unroll
            for (int w = 0; w < WPR; ++w) {
                const float acc = word_dot(wd[r * WPR + w], [&](int j) { return xr[16 * w + j]; });
                const float sc = h2f(scales[(SG == 1 ? 0 : (16 * w) / GOUT) * SROWS + 4 * q + r]);
                acc_row += (acc * TWO_XS - sxw[w]) * sc;
            }
            o[r] = acc_row;
        }
        red_add4(sums + 4 * q, o[0], o[1], o[2], o[3]);
    }
}

// Under SPLIT_OUT: v += the previous layer's out_proj at the thread's elements 4 k4 .. 4 k4 + 3, that is the sum
// over norm groups g of rsqrt(ss[g] / (E / NG) + eps) * sums[g] (``sums`` (NG, DM), ``ss`` (NG,), complete after
// the barrier that ended the layer).
__device__ __forceinline__ void add_out(float4 (&v)[NormW<Proj<DIP, DM, KBIN, GIN>>::PER], const float* sums,
                                        const float* ss, float eps) {
    using PV = Proj<DIP, DM, KBIN, GIN>;
    constexpr int PER = NormW<PV>::PER;
    // The sums of squares and the partial sums loaded before any arithmetic on them (one round trip; 7.76 against
    // 7.80 us a layer at 1.3B with the rsqrt between the loads).
    float r[NG];
#pragma unroll
    for (int g = 0; g < NG; ++g) r[g] = ld_f(ss + g);
#pragma unroll
    for (int g = 0; g < NG; ++g) {
        float4 p[SUMS_PARTS][PER];                    // (every part's loads first: one round trip)
#pragma unroll
        for (int k = 0; k < SUMS_PARTS; ++k) load_vec<PV>(sums + k * NG * DM + g * DM, p[k]);
        r[g] = rsqrtf(r[g] / (E / NG) + eps);
#pragma unroll
        for (int k = 1; k < SUMS_PARTS; ++k)
#pragma unroll
            for (int i = 0; i < PER; ++i) {
                p[0][i].x += p[k][i].x; p[0][i].y += p[k][i].y; p[0][i].z += p[k][i].z; p[0][i].w += p[k][i].w;
            }
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            v[i].x += r[g] * p[0][i].x; v[i].y += r[g] * p[0][i].y; v[i].z += r[g] * p[0][i].z;
            v[i].w += r[g] * p[0][i].w;
        }
    }
}
#endif

// EMB (SPLIT_OUT only): the thread's elements (load_vec's) of the embedding row of token ids[T]; 1: rows in the model
// dtype, 2: int8 rows times their fp16 scale, rounded to the model dtype (as ``quant.int8.Int8Embedding``).
template <class PJ>
__device__ __forceinline__ void emb_row(const long long* ids, const void* emb, const u16* emb_scale, int T,
                                        float4 (&v)[NormW<PJ>::PER]) {
    const long long tok = __ldg(ids + T);
    const float sc = EMB == 2 ? h2f(__ldg(emb_scale + tok)) : 1.f;
#pragma unroll
    for (int i = 0; i < NormW<PJ>::PER; ++i) {
        const int k4 = threadIdx.x + i * NT;
        v[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (k4 >= PJ::K / 4) continue;
        if (EMB == 2) {
            const u32 q = __ldg(reinterpret_cast<const unsigned int*>(static_cast<const signed char*>(emb) +
                                                                      tok * PJ::K) + k4);
            auto b = [&](int j) { return rnd((float)(signed char)(q >> (8 * j)) * sc); };
            v[i] = make_float4(b(0), b(1), b(2), b(3));
        } else {
            const uint2 q = __ldg(reinterpret_cast<const uint2*>(static_cast<const u16*>(emb) + tok * PJ::K) + k4);
            v[i] = make_float4(act2f(q.x & 0xffffu), act2f(q.x >> 16), act2f(q.y & 0xffffu), act2f(q.y >> 16));
        }
    }
}

// ---------------------------------------------------------------- the kernel
using PA = Proj<DIP, DM, KBIN, GIN>;
using PC = Proj<DM, E, KBOUT, GOUT>;
// (SPLIT_OUT never stages out_proj's input.)
constexpr int XMAX = SPLIT_OUT || PA::XLEN > PC::XLEN ? PA::XLEN : PC::XLEN;
constexpr int PMAX = (PA::RPC * PA::NCH > PC::RPC * PC::NCH || SPLIT_OUT ? PA::RPC * PA::NCH : PC::RPC * PC::NCH);
// Bytes of dynamic shared memory before the state tile: in_proj's words, then out_proj's (or SPLIT_OUT's item).
constexpr int WC_BYTES = SPLIT_OUT ? SPLIT_WORDS_B + SPLIT_SCALES_B : PC::WORDS * 4;

static_assert(NW % PA::NCH == 0 && NW % PC::NCH == 0, "warps per CTA must be a multiple of both chunk counts");
static_assert(PA::KW % 4 == 0 && PC::KW % 4 == 0, "pack blocks of at least 64 inputs");
static_assert(CH * TPC <= NT, "SSM item larger than the CTA");
static_assert(P % CH == 0 && NS % TPC == 0 && SPT % 8 == 0 && 32 % TPC == 0, "SSM item shape");

extern "C" __global__ void __launch_bounds__(NT, 1)
#if SPLIT_PAIR
__cluster_dims__(2, 1, 1)
#endif
persistent_decode(const LayerP* __restrict__ layers, float* residual, u16* zx, float* hbuf,
                  const int* __restrict__ pos, u32* bar, float* sums, float eps, u64* trace, u32* zxl, u32* genp,
                  const long long* __restrict__ ids, const void* __restrict__ emb, const u16* __restrict__ emb_scale,
                  const float* __restrict__ norm_f, u16* xn) {
    // Cycle -> time calibration for the trace: (clock, globaltimer) at the start and at the end.
    if (trace != nullptr && threadIdx.x == 0) {
        trace[(long long)blockIdx.x * NL * NTRACE + 10] = clock64();
        trace[(long long)blockIdx.x * NL * NTRACE + 11] = globaltimer();
    }
    __shared__ __align__(16) float xs[XMAX];
    __shared__ float red[NW * NG];
    __shared__ float part[PMAX];
    __shared__ float sm[2 * CH + 2 * NS + 1];
    // SPLIT_OUT: the block's h times the norm weight (SCOLS: under SPLIT_PAIR the other CTA writes its half), then
    // the item's h squared (CH).
    __shared__ float hsm[SPLIT_OUT ? SCOLS + CH : 1];
    u32 nbar = 0;
    // Dynamic shared memory: in_proj words, out_proj words, the first SSM item's state tile (TMA targets).
    extern __shared__ __align__(16) uint4 wbuf[];
    uint4* wa = wbuf;
    uint4* wc = wbuf + PA::WORDS / 4;
    void* stile = reinterpret_cast<char*>(wc) + WC_BYTES;
    // Completion of: in_proj words, out_proj words, state tile; SPLIT_PAIR: the other CTA's half of hsm.
    __shared__ __align__(8) u64 mbar[4];
#if TMA
    if (threadIdx.x == 0) {
        for (int i = 0; i < 4; ++i) mbar_init(&mbar[i]);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
#endif
    __syncthreads();
    if (PAIR == 2) cluster_sync();                   // both CTAs' mbarriers are initialised before any st_partner
    u16 sa[PA::MAXR][PA::NPART];
    SsmPre pre;
    NormW<PA> na;
    const bool has_item = (int)blockIdx.x < NITEMS;
    const int cta = blockIdx.x;
#if SPLIT_OUT
    // ``sums``: out_proj's partial sums, (NBUF, NG, DM), then the gated norm's sums of squares (NBUF, NG); zero at the
    // launch (zeroed with the counter before it, or under SELF_RESET at the end of the launch before). Layer l adds
    // into buffer l % NBUF; every CTA reads it after the barrier that ends layer l. NBUF = 2: after the next layer's
    // in_proj barrier nobody reads it, and its slices are zeroed there for layer l + 2 (ordered before that layer's
    // additions by the barriers between). LL_ZX (no such barrier), NBUF = 3: zeroed during layer l + 2, after the
    // barrier that ends layer l + 1 (every CTA has staged layer l + 2's input from buffer l + 1 before it, and read
    // buffer l before that), for layer l + 3, whose additions follow the barrier that ends layer l + 2.
    // LL_ZX: layer l's epoch, (gen NL + l + 1) mod 2**16 (0 is the zeroed words' before the first launch).
    float4 res[NormW<PA>::PER];                      // the thread's elements of the residual, across layers
    LayerP L = layers[0];
    // The first in_proj's words before the embedding: they do not depend on the token, and the embedding's chain
    // of loads (pos, then ids[pos], then its row) has them to land in.
    if (PREFETCH_FIRST) prefetch<PA>(L.in_w, L.in_s, wa, sa, &mbar[0]);
    const int T = pos[0];
    const u32 gen = LL_ZX ? ld_ll(genp) : 0u;
    auto epoch_of = [&](int l) { return (u32)(gen * NL + l + 1) & 0xffffu; };
    // SELF_RESET: the counter keeps counting over launches (NL arrivals a CTA each): launch gen's base.
    const u32 base = SELF_RESET ? gen * (u32)(NL * GRID) : 0u;
    void* zx_out = LL_ZX ? static_cast<void*>(zxl) : static_cast<void*>(zx);
#if EMB
    emb_row<PA>(ids, emb, emb_scale, T, res);        // the residual starts as the embedding of ids[pos]
#else
    load_vec<PA>(residual, res);
#endif
    float res_own = 0.f;                             // (project's out_proj register: unused here)
    if (!PREFETCH_FIRST) prefetch<PA>(L.in_w, L.in_s, wa, sa, &mbar[0]);
    u16* wcs = reinterpret_cast<u16*>(reinterpret_cast<char*>(wc) + SPLIT_WORDS_B);
    // Zero buffer zb (see ``sums`` above): this CTA's slice of it, or all of it (``whole``); its sums of squares by
    // CTA 0.
    auto zero_buf = [&](int zb, bool whole = false) {
        float* z = sums + zb * SB;
        const int i0 = whole ? 0 : (SB / 4) * cta / GRID, i1 = whole ? SB / 4 : (SB / 4) * (cta + 1) / GRID;
        for (int i = i0 + threadIdx.x; i < i1; i += NT)
            reinterpret_cast<float4*>(z)[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (cta == 0 && threadIdx.x < NG) sums[NBUF * SB + zb * NG + threadIdx.x] = 0.f;
    };
    for (int l = 0; l < NL; ++l) {
        const LayerP Ln = l + 1 < NL ? layers[l + 1] : L;
        const u32 parity = l & 1;
        const int b = l % NBUF, bp = (l + NBUF - 1) % NBUF;     // this layer's sums, the previous layer's
        float* sums_l = sums + b * SB + (cta % SUMS_PARTS) * NG * DM;
        float* ss_l = sums + NBUF * SB + b * NG;
        // ---- A: in_proj, after the previous layer's out_proj
        if (!LATE_LOADS || l == 0) prefetch_norm<PA>(L.norm_w, na);
        stamp(trace, l, 0);
        if (l > 0) wait(bar, base + nbar * GRID);
        stamp(trace, l, 1);
        auto issue_bc = [&] {
            if (has_item) {
                prefetch_split(L, blockIdx.x, wc, wcs, &mbar[1]);
                ssm_load(L, blockIdx.x, T, pre, TMA, stile, &mbar[2]);
            }
        };
        // The residual += the previous layer's out_proj, then in_proj's RMSNorm of it.
        auto stage_a = [&] {
            if (l > 0) add_out(res, sums + bp * SB, sums + NBUF * SB + bp * NG, eps);
            norm_to_shared<PA, 1>(res, na, eps, xs, red);
        };
        project<PA, false, 0>(stage_a, wa, &mbar[0], parity, sa, xs, part, zx_out, epoch_of(l), nullptr, res_own,
                              trace, l, issue_bc);
        if (!LL_ZX) {
            arrive(bar);
            ++nbar;
        } else if (l > 0) {
            zero_buf((l + 1) % NBUF);
        }
        stamp(trace, l, 3);
        if (LATE_LOADS && l + 1 < NL) {
            load_scales<PA>(Ln.in_s, sa);
            prefetch_norm<PA>(Ln.norm_w, na);
        }
        // ---- B: conv + SSM step + gate, and out_proj by item
        if (!LL_ZX) wait(bar, base + nbar * GRID);
        stamp(trace, l, 5);
        if (!LL_ZX && l > 0) zero_buf(bp);           // the sums of layer l - 1 are read by now: zero them for l + 1
        // The next in_proj's words (A's buffer is free), by default now, before the SSM step: issued after it they
        // were still landing when the barrier that ends the layer was released, which waited for them (9.83
        // against 9.40 us a layer at 1.3B; issued after that barrier's arrival, in_proj waited for them instead).
        auto issue_a = [&] {
            if (l + 1 < NL) prefetch<PA>(Ln.in_w, Ln.in_s, wa, sa, &mbar[0], !LATE_LOADS);
            else if (!TMA) cp_async_commit();
        };
        if ((!has_item && SPLIT_ISSUE_AT < 2) || SPLIT_ISSUE_AT == 0) issue_a();
        for (int item = blockIdx.x; item < NITEMS; item += GRID) {
            const bool first = item == (int)blockIdx.x;
            if (!first) ssm_load(L, item, T, pre, false, stile, &mbar[2]);
            ssm_finish(L, item, T, pre, zx_out, epoch_of(l), hbuf, hsm, &mbar[3], sm, TMA && first, stile, &mbar[2],
                       parity, trace, l);
            if (!(TMA && first)) ssm_store(L, item, pre);
            const int grp = item / (P / CH) / (NH / NG);
            if (threadIdx.x / 32 == SS_WARP) {        // the item's share of its group's sum of squares
                float q = 0.f;
                for (int c = threadIdx.x % 32; c < CH; c += 32) q += hsm[SCOLS + c];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
                if (threadIdx.x % 32 == 0) atomicAdd(ss_l + grp, q);
            }
            stamp(trace, l, 6);
            if (first) {
                if (TMA && !SPLIT_STORE_LATE) ssm_writeback(L, stile);   // the new state, left in its tile
                if (SPLIT_ISSUE_AT == 1) issue_a();
                stamp(trace, l, 4);
                words_wait<SPLIT_ISSUE_AT == 2 ? 0 : 1>(&mbar[1], parity);   // (cp.async: the newer group pending)
            }
            stamp(trace, l, 7);
            if (PAIR == 2) {                          // the other CTA's half of hsm has landed
                if (threadIdx.x == 0) mbar_expect(&mbar[3], CH * 4);
                mbar_wait(&mbar[3], parity);
            }
            out_split(first ? wc : split_words(L, item), first ? wcs : split_scales(L, item), hsm,
                      sums_l + grp * DM + (item % PAIR) * SROWS);
            __syncthreads();                          // hsm is reused by the next item
            if (TMA && first && SPLIT_STORE_LATE) ssm_writeback(L, stile);
        }
        stamp(trace, l, 8);
        arrive(bar);
        ++nbar;
        if (SPLIT_ISSUE_AT == 2) issue_a();
        stamp(trace, l, 9);
        L = Ln;
    }
    // The last layer's out_proj into the residual, written back by CTA 0 for the head.
    wait(bar, base + nbar * GRID);
    // SELF_RESET: the buffers still holding sums are zeroed for the next launch: layer NL - 2's (every CTA read it
    // before the barrier above) by slices, layer NL - 1's by CTA 0 once it has read it (nobody else does).
    if (SELF_RESET && NL >= 2) zero_buf((NL - 2) % NBUF);
    if (cta == 0) {
        const int pl = (NL - 1) % NBUF;
        add_out(res, sums + pl * SB, sums + NBUF * SB + pl * NG, eps);
        if (SELF_RESET) {
            __syncthreads();                                     // every thread has read the buffer
            zero_buf(pl, true);
        }
        if (LL_ZX && threadIdx.x == 0) st_ll(genp, gen + 1);   // every CTA has read ``gen`` before the barrier
#pragma unroll
        for (int i = 0; i < NormW<PA>::PER; ++i) {
            const int k4 = threadIdx.x + i * NT;
            if (k4 < DM / 4) reinterpret_cast<float4*>(residual)[k4] = res[i];
        }
#if FINAL_NORM
        // The head's input: rmsnorm(residual) * norm_f in the model dtype, once here instead of in every program
        // of the head's GEMV (which read the residual twice and the norm weight once: 150 MB from L2 at 1.3B).
        NormW<PA> nf;
        prefetch_norm<PA>(norm_f, nf);
        norm_to_shared<PA, 1>(res, nf, eps, xs, red);
        for (int k = threadIdx.x; k < DM; k += NT) xn[k] = f2act(xs[k + (k / PA::KB) * PA::XPAD]);
#endif
    }
#else
    const int T = pos[0];
    u16 sc[PC::MAXR][PC::NPART];
    NormW<PC> nc;
    // The last SSM item of this CTA (its state is stored during out_proj), or -1.
    const int last_item = has_item ? cta + GRID * ((NITEMS - 1 - cta) / GRID) : -1;
    // This thread's residual row of the CTA's out_proj rows (project<PC>): read once, then kept in a register.
    float res_own = 0.f;
    if ((int)threadIdx.x < row_begin<PC>(blockIdx.x + 1) - row_begin<PC>(blockIdx.x))
        res_own = residual[row_begin<PC>(blockIdx.x) + threadIdx.x];
    LayerP L = layers[0];
    prefetch<PA>(L.in_w, L.in_s, wa, sa, &mbar[0]);
    // When copies are issued matters (benchmarks/RESULTS.md): a grid barrier completes only once the memory
    // requests queued before its counter updates and polls have drained, so a burst issued just before a barrier
    // delays it by the burst's transfer time. Each phase's copies are therefore issued right after the barrier
    // that opens an earlier phase and after that phase's own activations are read (the ``after_stage`` hooks),
    // and have that phase's arithmetic to land in: out_proj words and the SSM state during in_proj, the next
    // in_proj's words (and the state write-back) during out_proj.
    // Each mbarrier completes one phase per layer: layer l waits for parity l & 1.
    for (int l = 0; l < NL; ++l) {
        const LayerP Ln = l + 1 < NL ? layers[l + 1] : L;
        const u32 parity = l & 1;
        // ---- A: in_proj, after the previous layer's C
        if (!LATE_LOADS || l == 0) prefetch_norm<PA>(L.norm_w, na);
        stamp(trace, l, 0);
        if (l > 0) wait(bar, nbar * GRID);
        stamp(trace, l, 1);
        auto issue_bc = [&] {
            prefetch<PC>(L.out_w, L.out_s, wc, sc, &mbar[1], !LATE_LOADS);
            if (has_item) ssm_load(L, blockIdx.x, T, pre, TMA, stile, &mbar[2]);
        };
        if (PHASES & 1) {
            project<PA, false, 0>([&] { stage<PA, 1>(residual, na, eps, xs, red); }, wa, &mbar[0], parity, sa, xs,
                                  part, zx, 0u, nullptr, res_own, trace, l, issue_bc);
        } else {
            issue_bc();
            words_wait<0>(&mbar[0], parity);       // (timing variants: the copies complete before the next ones)
        }
        arrive(bar);
        ++nbar;
        stamp(trace, l, 3);
        // ---- B: conv + SSM step + gate
        wait(bar, nbar * GRID);
        stamp(trace, l, 5);
        if (TMA && !(PHASES & 2) && has_item) mbar_wait(&mbar[2], parity);
        for (int item = blockIdx.x; (PHASES & 2) && item < NITEMS; item += GRID) {
            const bool first = item == (int)blockIdx.x;
            if (!first) ssm_load(L, item, T, pre, false, stile, &mbar[2]);
            ssm_finish(L, item, T, pre, zx, 0u, hbuf, hsm, &mbar[3], sm, TMA && first, stile, &mbar[2], parity);
            // The first item's state is written back during out_proj (TMA store on sm_90, else from registers if
            // it is the last one); any other item's now.
            if (TMA ? !first : item != last_item) ssm_store(L, item, pre);
        }
        arrive(bar);
        ++nbar;
        stamp(trace, l, 6);
        if (LATE_LOADS) {
            load_scales<PC>(L.out_s, sc);
            prefetch_norm<PC>(L.gnorm_w, nc);
            if (l + 1 < NL) {
                load_scales<PA>(Ln.in_s, sa);
                prefetch_norm<PA>(Ln.norm_w, na);
            }
        }
        // ---- C: out_proj + residual
        if (!LATE_LOADS) prefetch_norm<PC>(L.gnorm_w, nc);
        wait(bar, nbar * GRID);
        stamp(trace, l, 7);
        // The next in_proj's words (A's buffer is free); without TMA a cp.async group is committed either way, so
        // C always waits for all but the newest group. Then the state write-back (nothing reads it this step).
        auto issue_a = [&] {
            if (l + 1 < NL) prefetch<PA>(Ln.in_w, Ln.in_s, wa, sa, &mbar[0], !LATE_LOADS);
            else if (!TMA) cp_async_commit();
            if ((PHASES & 2) && has_item) {
                if (TMA) ssm_writeback(L, stile);
                else ssm_store(L, last_item, pre);
            }
        };
        if (PHASES & 4) {
            project<PC, true, 1>([&] { stage<PC, NG>(hbuf, nc, eps, xs, red); }, wc, &mbar[1], parity, sc, xs, part,
                                 nullptr, 0u, residual, res_own, trace, l, issue_a);
        } else {
            issue_a();
            words_wait<1>(&mbar[1], parity);
        }
        if (l + 1 < NL) {
            arrive(bar);
            ++nbar;
        }
        stamp(trace, l, 9);
        L = Ln;
    }
#endif
#if TMA
    if (threadIdx.x == 0) tma_store_wait();
#endif
    if (trace != nullptr && threadIdx.x == 0) {
        trace[(long long)blockIdx.x * NL * NTRACE + NTRACE + 10] = clock64();
        trace[(long long)blockIdx.x * NL * NTRACE + NTRACE + 11] = globaltimer();
    }
}
