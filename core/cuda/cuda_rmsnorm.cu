// RMSNorm as transformers' LlamaRMSNorm in fp32: out = w * (x * rstd),
// rstd = 1 / sqrt(mean(x^2) + eps). One block per row; sums reduce in a fixed tree, so
// results do not depend on scheduling.
#include "cuda_internal.h"

namespace {
const int ROW_THREADS = 256;
const int DW_COLS = 32;   // columns of dw per block
const int DW_PHASES = 16; // rows are dealt to 16 partial sums, added in order 0..15

// Sum of v over the block, every thread gets it. sh (ROW_THREADS) of shared memory.
__device__ float block_sum(float v, float *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int off = ROW_THREADS / 2; off > 0; off >>= 1) {
        if ((int)threadIdx.x < off) sh[threadIdx.x] += sh[threadIdx.x + off];
        __syncthreads();
    }
    const float r = sh[0];
    __syncthreads(); // sh is reused by the next call
    return r;
}

__global__ void rmsnorm_fwd_kernel(float *out, float *rstd, const float *x, const float *w, int C,
                                   float eps) {
    __shared__ float sh[ROW_THREADS];
    const float *xr = x + (size_t)blockIdx.x * C; // (C)
    float *o = out + (size_t)blockIdx.x * C;      // (C)
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += ROW_THREADS) ss += xr[c] * xr[c];
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int c = threadIdx.x; c < C; c += ROW_THREADS) o[c] = w[c] * (xr[c] * r);
}

// dx += r * (dy * w - xhat * mean(dy * w * xhat)), xhat = x * r
__global__ void rmsnorm_bwd_dx_kernel(float *dx, const float *dout, const float *x,
                                      const float *w, const float *rstd, int C) {
    __shared__ float sh[ROW_THREADS];
    const size_t row = (size_t)blockIdx.x * C;
    const float *xr = x + row, *dy = dout + row; // (C) each
    float *d = dx + row;                         // (C)
    const float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += ROW_THREADS) dot += dy[c] * w[c] * (xr[c] * r);
    const float m = block_sum(dot, sh) / (float)C;
    for (int c = threadIdx.x; c < C; c += ROW_THREADS) d[c] += r * (dy[c] * w[c] - (xr[c] * r) * m);
}

// dw[c] += sum over rows of dout * xhat. Block (DW_COLS, DW_PHASES): thread (cx, ph) sums
// rows ph, ph + 16, ... of column c; the 16 partials are then added in phase order.
__global__ void rmsnorm_bwd_dw_kernel(float *dw, const float *dout, const float *x,
                                      const float *rstd, int N, int C) {
    __shared__ float part[DW_PHASES][DW_COLS];
    const int c = blockIdx.x * DW_COLS + threadIdx.x;
    float acc = 0.0f;
    if (c < C)
        for (int n = threadIdx.y; n < N; n += DW_PHASES)
            acc += dout[(size_t)n * C + c] * (x[(size_t)n * C + c] * rstd[n]);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.0f;
        for (int p = 0; p < DW_PHASES; p++) s += part[p][threadIdx.x];
        dw[c] += s;
    }
}
} // namespace

void qft_cuda_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C,
                          float eps) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_fwd_kernel<<<N, ROW_THREADS>>>(out, rstd, x, w, C, eps);
    CUDA_LAUNCHED();
}

void qft_cuda_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x,
                          const float *w, const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_bwd_dx_kernel<<<N, ROW_THREADS>>>(dx, dout, x, w, rstd, C);
    CUDA_LAUNCHED();
    if (!dw) return; // a frozen norm weight
    rmsnorm_bwd_dw_kernel<<<qft_cuda_blocks((size_t)C, DW_COLS), dim3(DW_COLS, DW_PHASES)>>>(
        dw, dout, x, rstd, N, C);
    CUDA_LAUNCHED();
}
