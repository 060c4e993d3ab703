// Batch-1 LM head with greedy sampling fused: logits = W x (x a row scale), token = argmax(logits[:V]), appended.
// Licence: Apache-2.0 (ssmquant). Compiled at run time by NVRTC after head_rows.cuh (the rows, the int8 decode and
// the argmax, shared with persistent_decode.cu's HEAD); head_argmax.py sets the -D constants below and has the
// design notes.
//
// Programmatic dependent launch: each warp's first rows are loaded before griddepcontrol.wait (they do not depend
// on the kernel before); x, pos and every write come after it (kernels/pdl.py's rules).
//
// Constants: K (inputs a row), INT8 (int8 rows with one scale a row; else rows in x's dtype), XBF16 (x, and dense
// rows, are bf16; else fp16), SCALE_T (int8 rows' scales: 0 fp16, 1 bf16, 2 fp32), R (rows a warp loads at once),
// NT (threads a CTA), MINB (CTAs an SM, for the register budget).

#define NW (NT / 32)

extern "C" __global__ void __launch_bounds__(NT, MINB)
head_argmax(const uint4* __restrict__ w, const void* __restrict__ scale, const hd::u16* __restrict__ x,
            float* __restrict__ logits, int N, int V, hd::i64* key, hd::u32* count, hd::i64* tok, hd::i64* ids,
            int* pos, int append) {
    using S = hd::Shape<K, INT8>;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gw = blockIdx.x * NW + warp, tw = gridDim.x * NW;
    __shared__ hd::i64 best_w[NW];
    uint4 wa[R][S::CNT];
    float sa[R];
    if (gw * R < N) hd::load_rows<K, INT8, SCALE_T, R>(w, scale, N, gw * R, lane, wa, sa);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");     // (a no-op without the launch attribute)
#endif
    float xv[S::CNT][S::EPS];
    const float corr = hd::inputs<K, INT8, XBF16>(x, lane, xv);
    const hd::i64 best = hd::sweep<K, INT8, XBF16, SCALE_T, R>(w, scale, N, V, gw, tw, lane, wa, sa, xv, corr,
                                                               logits);
    hd::finish<NW>(best, best_w, key, count, tok, ids, pos, append, gridDim.x);
}
