// Kernels with one output element per input element (or row gather): add, embedding,
// SwiGLU, bf16 conversion and AdamW. Grid-stride loops, so any n fits one launch.
#include "cuda_internal.h"

#include <cuda_bf16.h>
#include <stdlib.h>

namespace {
__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    QFT_CUDA_GRID_STRIDE(e, n) out[e] = a[e] + b[e];
}

__global__ void embedding_fwd_kernel(float *out, const int32_t *ids, const float *table, int N,
                                     int C) {
    const size_t total = (size_t)N * C; // (N, C)
    QFT_CUDA_GRID_STRIDE(e, total) {
        const size_t n = e / C, c = e % C;
        out[e] = table[(size_t)ids[n] * C + c];
    }
}

// The same from a bf16 table: bf16 is fp32's top half, so the widening is exact.
__global__ void embedding_fwd_bf16_kernel(float *out, const int32_t *ids, const uint16_t *table,
                                          int N, int C) {
    const size_t total = (size_t)N * C; // (N, C)
    QFT_CUDA_GRID_STRIDE(e, total) {
        const size_t n = e / C, c = e % C;
        out[e] = __uint_as_float((unsigned)table[(size_t)ids[n] * C + c] << 16);
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
    QFT_CUDA_GRID_STRIDE(e, total) {
        const size_t n = e / I, i = e % I;
        const float g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i]; // row n of (N, 2I)
        h[e] = g / (1.0f + expf(-g)) * u;
    }
}

__global__ void swiglu_bwd_kernel(float *dgu, const float *dh, const float *gu, int N, int I) {
    const size_t total = (size_t)N * I; // (N, I)
    QFT_CUDA_GRID_STRIDE(e, total) {
        const size_t n = e / I, i = e % I;
        const size_t gi = n * 2 * I + i, ui = gi + I; // gate and up of row n in (N, 2I)
        const float g = gu[gi], u = gu[ui], d = dh[e];
        const float s = 1.0f / (1.0f + expf(-g));
        dgu[gi] = d * u * (s * (1.0f + g * (1.0f - s)));
        dgu[ui] = d * (g * s);
    }
}

__global__ void f32_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    QFT_CUDA_GRID_STRIDE(e, n) dst[e] = __float2bfloat16_rn(src[e]);
}

__global__ void bf16_to_f32_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    QFT_CUDA_GRID_STRIDE(e, n) dst[e] = __bfloat162float(src[e]);
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n,
                             qft_cuda_adamw_scalars s) {
    QFT_CUDA_GRID_STRIDE(e, n) {
        float pe = p[e], me = m[e], ve = v[e];
        qft_twin_adamw_elem(&pe, &me, &ve, g[e], &s);
        p[e] = pe, m[e] = me, v[e] = ve;
    }
}

} // namespace

// Outside the anonymous namespace: nvcc's stubs for these did not resolve inside it.
static __global__ void sgd_kernel(float *p, const float *g, float *buf, size_t n, qft_ops_sgd_scalars s) {
    const int mom_on = s.mom_on && buf;
    QFT_CUDA_GRID_STRIDE(e, n) {
        float pe = p[e], be = mom_on ? buf[e] : 0.0f;
        qft_twin_sgd_elem(&pe, &be, g[e], s.wd_on, s.wd, mom_on, s.mom, s.first, s.neg_lr);
        p[e] = pe;
        if (mom_on) buf[e] = be;
    }
}

// One thread per fixed chunk of QFT_OPS_SUMSQ_CHUNK floats, summed in index order: the CPU's
// partials bit for bit, whatever the launch shape (deterministic; no atomics).
static __global__ void sumsq_chunks_kernel(double *part, const float *x, size_t n, size_t n_chunks) {
    QFT_CUDA_GRID_STRIDE(c, n_chunks) {
        const size_t lo = c * QFT_OPS_SUMSQ_CHUNK;
        const size_t hi = lo + QFT_OPS_SUMSQ_CHUNK < n ? lo + QFT_OPS_SUMSQ_CHUNK : n;
        part[c] = qft_twin_sumsq_range(x, lo, hi);
    }
}

static __global__ void scale_kernel(float *x, size_t n, float coef) {
    QFT_CUDA_GRID_STRIDE(e, n) x[e] = qft_twin_mul(x[e], coef);
}

void qft_cuda_add(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    add_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>(out, a, b, n);
    CUDA_LAUNCHED();
}

void qft_cuda_embedding_fwd_bf16(float *out, const int32_t *ids, const uint16_t *table, int N,
                                 int C) {
    if (N <= 0 || C <= 0) return;
    embedding_fwd_bf16_kernel<<<qft_cuda_grid_for((size_t)N * C), QFT_CUDA_TPB>>>(out, ids, table,
                                                                                  N, C);
    CUDA_LAUNCHED();
}

void qft_cuda_embedding_fwd(float *out, const int32_t *ids, const float *table, int N, int C) {
    if (N <= 0 || C <= 0) return;
    embedding_fwd_kernel<<<qft_cuda_grid_for((size_t)N * C), QFT_CUDA_TPB>>>(out, ids, table, N,
                                                                             C);
    CUDA_LAUNCHED();
}

void qft_cuda_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    if (N <= 0 || C <= 0) return;
    embedding_bwd_kernel<<<qft_cuda_blocks((size_t)C, 128), 128>>>(dtable, dout, ids, N, C);
    CUDA_LAUNCHED();
}

void qft_cuda_swiglu_fwd(float *h, const float *gu, int N, int inter) {
    if (N <= 0 || inter <= 0) return;
    swiglu_fwd_kernel<<<qft_cuda_grid_for((size_t)N * inter), QFT_CUDA_TPB>>>(h, gu, N, inter);
    CUDA_LAUNCHED();
}

void qft_cuda_swiglu_bwd(float *dgu, const float *dh, const float *gu, int N, int inter) {
    if (N <= 0 || inter <= 0) return;
    swiglu_bwd_kernel<<<qft_cuda_grid_for((size_t)N * inter), QFT_CUDA_TPB>>>(dgu, dh, gu, N,
                                                                              inter);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
    if (!n) return;
    f32_to_bf16_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>((__nv_bfloat16 *)dst, src, n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    if (!n) return;
    bf16_to_f32_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>(dst, (const __nv_bfloat16 *)src,
                                                               n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_adamw(float *p, const float *g, float *m, float *v, size_t n,
                               const qft_cuda_adamw_scalars *s) {
    if (!n) return;
    adamw_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>(p, g, m, v, n, *s);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_sgd(float *p, const float *g, float *buf, size_t n,
                             const qft_ops_sgd_scalars *s) {
    if (!n) return;
    sgd_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>(p, g, buf, n, *s);
    CUDA_LAUNCHED();
}

// The partials on the device, summed on the host in chunk order (as the CPU does): a few
// doubles per 65536 floats cross the bus once per step.
extern "C" double qft_cuda_sumsq(const float *x, size_t n) {
    if (!n) return 0.0;
    const size_t n_chunks = (n + QFT_OPS_SUMSQ_CHUNK - 1) / QFT_OPS_SUMSQ_CHUNK;
    // the backend's scratch for host-visible results: no cudaMalloc (a device-wide wait)
    // at every call
    double *part = (double *)qft_cuda_scratch(n_chunks * sizeof(double)); // (n_chunks)
    if (!part) return NAN; // recorded
    sumsq_chunks_kernel<<<qft_cuda_blocks(n_chunks, 64), 64>>>(part, x, n, n_chunks);
    CUDA_LAUNCHED();
    double *host = (double *)malloc(n_chunks * sizeof(double)); // (n_chunks)
    double s = 0.0;
    if (host) {
        CUDA_CHECK(cudaMemcpy(host, part, n_chunks * sizeof(double), cudaMemcpyDeviceToHost));
        for (size_t c = 0; c < n_chunks; c++) s += host[c];
        free(host);
    } else {
        // no host memory for the partials: one at a time, the same order
        for (size_t c = 0; c < n_chunks; c++) {
            double v = 0.0;
            CUDA_CHECK(cudaMemcpy(&v, part + c, sizeof v, cudaMemcpyDeviceToHost));
            s += v;
        }
    }
    return s;
}

extern "C" void qft_cuda_scale(float *x, size_t n, float coef) {
    if (!n || coef == 1.0f) return;
    scale_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>(x, n, coef);
    CUDA_LAUNCHED();
}
