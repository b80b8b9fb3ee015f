// Kernels with one output element per input element (or row gather): add, embedding,
// SwiGLU, bf16 conversion and AdamW. Grid-stride loops, so any n fits one launch.
#include "cuda_internal.h"

#include <cuda_bf16.h>

#define GRID_STRIDE(e, n)                                                                     \
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (n);                  \
         e += (size_t)gridDim.x * blockDim.x)

namespace {
const unsigned TPB = 256;
// Enough blocks to fill the device several times over; the loops stride the rest.
unsigned grid_for(size_t n) {
    unsigned b = qft_cuda_blocks(n, TPB);
    unsigned cap = (unsigned)(qft_cuda_g.sm_count > 0 ? qft_cuda_g.sm_count : 1) * 32u;
    return b < cap ? b : cap;
}

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE(e, n) out[e] = a[e] + b[e];
}

__global__ void embedding_fwd_kernel(float *out, const int32_t *ids, const float *table, int N,
                                     int C) {
    const size_t total = (size_t)N * C; // (N, C)
    GRID_STRIDE(e, total) {
        const size_t n = e / C, c = e % C;
        out[e] = table[(size_t)ids[n] * C + c];
    }
}

// One thread per column walks the rows in order 0..N-1: an id that repeats is summed in
// row order, as on the CPU, with no atomics (deterministic, bit-identical to the CPU).
__global__ void embedding_bwd_kernel(float *dtable, const float *dout, const int32_t *ids, int N,
                                     int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) dtable[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
}

__global__ void swiglu_fwd_kernel(float *h, const float *gu, int N, int I) {
    const size_t total = (size_t)N * I; // (N, I)
    GRID_STRIDE(e, total) {
        const size_t n = e / I, i = e % I;
        const float g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i]; // row n of (N, 2I)
        h[e] = g / (1.0f + expf(-g)) * u;
    }
}

__global__ void swiglu_bwd_kernel(float *dgu, const float *dh, const float *gu, int N, int I) {
    const size_t total = (size_t)N * I; // (N, I)
    GRID_STRIDE(e, total) {
        const size_t n = e / I, i = e % I;
        const size_t gi = n * 2 * I + i, ui = gi + I; // gate and up of row n in (N, 2I)
        const float g = gu[gi], u = gu[ui], d = dh[e];
        const float s = 1.0f / (1.0f + expf(-g));
        dgu[gi] = d * u * (s * (1.0f + g * (1.0f - s)));
        dgu[ui] = d * (g * s);
    }
}

__global__ void f32_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    GRID_STRIDE(e, n) dst[e] = __float2bfloat16_rn(src[e]);
}

__global__ void bf16_to_f32_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    GRID_STRIDE(e, n) dst[e] = __bfloat162float(src[e]);
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n,
                             qft_cuda_adamw_scalars s) {
    GRID_STRIDE(e, n) {
        float pe = p[e], me = m[e], ve = v[e];
        qft_twin_adamw_elem(&pe, &me, &ve, g[e], &s);
        p[e] = pe, m[e] = me, v[e] = ve;
    }
}
} // namespace

void qft_cuda_add(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    add_kernel<<<grid_for(n), TPB>>>(out, a, b, n);
    CUDA_LAUNCHED();
}

void qft_cuda_embedding_fwd(float *out, const int32_t *ids, const float *table, int N, int C) {
    if (N <= 0 || C <= 0) return;
    embedding_fwd_kernel<<<grid_for((size_t)N * C), TPB>>>(out, ids, table, N, C);
    CUDA_LAUNCHED();
}

void qft_cuda_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    if (N <= 0 || C <= 0) return;
    embedding_bwd_kernel<<<qft_cuda_blocks((size_t)C, 128), 128>>>(dtable, dout, ids, N, C);
    CUDA_LAUNCHED();
}

void qft_cuda_swiglu_fwd(float *h, const float *gu, int N, int inter) {
    if (N <= 0 || inter <= 0) return;
    swiglu_fwd_kernel<<<grid_for((size_t)N * inter), TPB>>>(h, gu, N, inter);
    CUDA_LAUNCHED();
}

void qft_cuda_swiglu_bwd(float *dgu, const float *dh, const float *gu, int N, int inter) {
    if (N <= 0 || inter <= 0) return;
    swiglu_bwd_kernel<<<grid_for((size_t)N * inter), TPB>>>(dgu, dh, gu, N, inter);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
    if (!n) return;
    f32_to_bf16_kernel<<<grid_for(n), TPB>>>((__nv_bfloat16 *)dst, src, n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    if (!n) return;
    bf16_to_f32_kernel<<<grid_for(n), TPB>>>(dst, (const __nv_bfloat16 *)src, n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_adamw(float *p, const float *g, float *m, float *v, size_t n,
                               const qft_cuda_adamw_scalars *s) {
    if (!n) return;
    adamw_kernel<<<grid_for(n), TPB>>>(p, g, m, v, n, *s);
    CUDA_LAUNCHED();
}
