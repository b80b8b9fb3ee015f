// Causal grouped-query attention as cuBLASLt GEMMs over tiles of query rows, with two row
// kernels between them; the schedule (which GEMM, on which strides, in which order) is
// cuda_twin_attg.h's, replayed on the CPU by tests/cuda/test_cuda_twin_attg.c. The GEMMs
// run at the backend's matmul precision (fp32, or TF32 / bf16 tensor cores), the row
// kernels in fp32.
//
// Row kernels: one block of THREADS per row of nk scores; each thread walks keys
// j = tid, tid + THREADS, ... and the block combines the threads' partial max or sum in a
// fixed tree (warp shuffles, then the warps in order), so results are deterministic.
#include "cuda_internal.h"

#include <string.h>

namespace {
const int THREADS = 128;
const int WARPS = THREADS / 32;
const unsigned FULL = 0xffffffffu;

// The block's maximum (is_max) or sum of v, returned to every thread. red holds WARPS
// floats of shared memory; the call ends with a barrier, so it can be called again.
__device__ float block_reduce(float v, bool is_max, float *red) {
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(FULL, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < WARPS; w++) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();
    return r;
}

struct row_args {
    float *s, *ds;       // (H, nq, nk) tile blocks
    float *lse;          // (B, H, T)
    const uint8_t *mask; // (B, T) or NULL
    const float *dout, *out; // (B, T, H hd), backward only
    int T, H, hd, b, i0, nq, nk;
    float scale;
};

// Forward: the row's scores -> probabilities (0 where invisible), its log-sum-exp -> lse.
__global__ void __launch_bounds__(THREADS) attg_softmax_kernel(row_args a) {
    __shared__ float red[WARPS];
    const int r = blockIdx.x, i = qft_twin_attg_row_query(r, a.nq, a.i0);
    const uint8_t *mb = a.mask ? a.mask + (size_t)a.b * a.T : NULL;
    float *s = a.s + (size_t)r * a.nk; // (nk)
    float m = -INFINITY;
    for (int j = threadIdx.x; j < a.nk; j += THREADS)
        if (qft_twin_att_visible(i, j, a.T, mb)) m = fmaxf(m, s[j]);
    m = block_reduce(m, true, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < a.nk; j += THREADS) {
        const float p =
            m != -INFINITY && qft_twin_att_visible(i, j, a.T, mb) ? expf(s[j] - m) : 0.0f;
        s[j] = p;
        sum += p;
    }
    sum = block_reduce(sum, false, red);
    if (m != -INFINITY) {
        const float inv = 1.0f / sum;
        for (int j = threadIdx.x; j < a.nk; j += THREADS) s[j] *= inv;
    }
    if (threadIdx.x == 0)
        a.lse[qft_twin_attg_row_lse(r, a.b, a.nq, a.i0, a.H, a.T)] =
            m == -INFINITY ? -INFINITY : m + logf(sum);
}

// Backward: the row's scores -> probabilities from its lse, and dP -> scale P (dP - D) with
// D = dO . O over the head dim.
__global__ void __launch_bounds__(THREADS) attg_dscores_kernel(row_args a) {
    __shared__ float red[WARPS];
    const int r = blockIdx.x, i = qft_twin_attg_row_query(r, a.nq, a.i0);
    const uint8_t *mb = a.mask ? a.mask + (size_t)a.b * a.T : NULL;
    const float L = a.lse[qft_twin_attg_row_lse(r, a.b, a.nq, a.i0, a.H, a.T)];
    const size_t orow = qft_twin_attg_row_out(r, a.b, a.nq, a.i0, a.H, a.T, a.hd);
    float d = 0.0f;
    for (int k = threadIdx.x; k < a.hd; k += THREADS) d += a.dout[orow + k] * a.out[orow + k];
    const float D = block_reduce(d, false, red);
    float *s = a.s + (size_t)r * a.nk, *ds = a.ds + (size_t)r * a.nk; // (nk) each
    for (int j = threadIdx.x; j < a.nk; j += THREADS) {
        const float p = L != -INFINITY && qft_twin_att_visible(i, j, a.T, mb)
                            ? qft_twin_att_prob(s[j], L)
                            : 0.0f;
        s[j] = p;
        ds[j] = p * (ds[j] - D) * a.scale;
    }
}

row_args rows_of(const qft_twin_attg_args *a, const qft_twin_attg_tile *t) {
    row_args r;
    r.s = a->s, r.ds = a->ds, r.lse = a->lse, r.mask = a->mask, r.dout = a->dout, r.out = a->out;
    r.T = a->T, r.H = a->H, r.hd = a->hd, r.b = t->b, r.i0 = t->i0, r.nq = t->nq, r.nk = t->nk;
    r.scale = a->scale;
    return r;
}

int prim_bgemm(void *, const qft_twin_bgemm *g) { return qft_cuda_gemm_batched(g); }

int prim_softmax(void *, const qft_twin_attg_args *a, const qft_twin_attg_tile *t) {
    attg_softmax_kernel<<<(unsigned)(a->H * t->nq), THREADS>>>(rows_of(a, t));
    return CUDA_LAUNCHED();
}

int prim_dscores(void *, const qft_twin_attg_args *a, const qft_twin_attg_tile *t) {
    attg_dscores_kernel<<<(unsigned)(a->H * t->nq), THREADS>>>(rows_of(a, t));
    return CUDA_LAUNCHED();
}

const qft_twin_attg_prims k_prims = {NULL, prim_bgemm, prim_softmax, prim_dscores};

qft_twin_attg_args args_of(int B, int T, int H, int KV, int hd, float scale, const float *qkv,
                           const uint8_t *mask, float *work, int rows) {
    qft_twin_attg_args a;
    memset(&a, 0, sizeof a);
    a.B = B, a.T = T, a.H = H, a.KV = KV, a.hd = hd, a.scale = scale;
    a.qkv = qkv, a.mask = mask, a.rows = rows;
    a.s = work, a.ds = work + (size_t)H * rows * T; // (H, rows, T) each
    return a;
}
} // namespace

int qft_cuda_attg_forward(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                          int T, int H, int KV, int hd, float scale, float *work, int rows) {
    qft_twin_attg_args a = args_of(B, T, H, KV, hd, scale, qkv, mask, work, rows);
    a.out = out, a.lse = lse;
    return qft_twin_attg_forward(&a, &k_prims) ? -1 : 0;
}

int qft_cuda_attg_backward(float *dqkv, const float *dout, const float *out, const float *lse,
                           const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                           int hd, float scale, float *work, int rows) {
    qft_twin_attg_args a = args_of(B, T, H, KV, hd, scale, qkv, mask, work, rows);
    // the schedule's out and lse are the forward's outputs; backward only reads them
    a.out = const_cast<float *>(out), a.lse = const_cast<float *>(lse);
    a.dout = dout, a.dqkv = dqkv;
    return qft_twin_attg_backward(&a, &k_prims) ? -1 : 0;
}
