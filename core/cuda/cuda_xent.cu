// Cross-entropy over the vocabulary, fp32, ignore index -100 (torch's cross_entropy). One
// block per row; its QFT_XENT_LANES threads each keep an online (max, sum of exp) over a
// strided share of the vocabulary (cuda_twin.h), merged in a fixed tree, so a row of
// 128k logits is read once for its log-sum-exp and the result is deterministic.
// The loss sum is formed on the host in double, in row order, as on the CPU.
#include "cuda_internal.h"

#include <stdlib.h>

namespace {
const int LANES = QFT_XENT_LANES;
const int IGNORE = -100;

// log-sum-exp of l (V) over the block; every thread gets it. sm_m, sm_s (LANES).
__device__ float row_lse(const float *l, int V, float *sm_m, float *sm_s) {
    const int t = threadIdx.x;
    float m = -INFINITY, s = 0.0f;
    for (int v = t; v < V; v += LANES) qft_twin_lse_push(&m, &s, l[v]);
    sm_m[t] = m, sm_s[t] = s;
    __syncthreads();
    for (int off = LANES / 2; off > 0; off >>= 1) {
        if (t < off) qft_twin_lse_merge(&sm_m[t], &sm_s[t], sm_m[t + off], sm_s[t + off]);
        __syncthreads();
    }
    const float r = sm_m[0] + logf(sm_s[0]);
    __syncthreads();
    return r;
}

// lse (N), rowloss (N): 0 on ignored rows
__global__ void xent_fwd_kernel(const float *logits, const int32_t *targets, int V, float *lse,
                                float *rowloss) {
    __shared__ float sm_m[LANES], sm_s[LANES];
    const int n = blockIdx.x, tg = targets[n];
    const float *l = logits + (size_t)n * V; // (V)
    if (tg == IGNORE) {
        if (threadIdx.x == 0) lse[n] = 0.0f, rowloss[n] = 0.0f;
        return;
    }
    const float r = row_lse(l, V, sm_m, sm_s);
    if (threadIdx.x == 0) lse[n] = r, rowloss[n] = r - l[tg];
}

// d (V) = scale * (softmax(l) - onehot); d may be l
__global__ void xent_bwd_kernel(float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, int V, float scale) {
    const int n = blockIdx.x, tg = targets[n];
    const float *l = logits + (size_t)n * V; // (V)
    float *d = dlogits + (size_t)n * V;      // (V)
    const float r = lse[n];
    for (int v = threadIdx.x; v < V; v += LANES) {
        float g = 0.0f;
        if (tg != IGNORE) {
            g = scale * expf(l[v] - r);
            if (v == tg) g -= scale;
        }
        d[v] = g;
    }
}

__global__ void xent_fused_kernel(float *logits, const int32_t *targets, int V, float scale,
                                  float *rowloss) {
    __shared__ float sm_m[LANES], sm_s[LANES];
    const int n = blockIdx.x, tg = targets[n];
    float *l = logits + (size_t)n * V; // (V) logits in, gradient out
    if (tg == IGNORE) {
        for (int v = threadIdx.x; v < V; v += LANES) l[v] = 0.0f;
        if (threadIdx.x == 0) rowloss[n] = 0.0f;
        return;
    }
    const float r = row_lse(l, V, sm_m, sm_s); // ends with a barrier: l[tg] not yet written
    if (threadIdx.x == 0) rowloss[n] = r - l[tg];
    __syncthreads();
    for (int v = threadIdx.x; v < V; v += LANES) {
        float g = scale * expf(l[v] - r);
        if (v == tg) g -= scale;
        l[v] = g;
    }
}

// Sum in double over valid rows, in row order, and their count, from the device's rowloss
// and targets (N each). Returns 0 and records the error on failure.
double host_sum(const float *rowloss_dev, const int32_t *targets_dev, int N, int *n_valid) {
    float *rl = (float *)malloc((size_t)N * sizeof *rl);
    int32_t *tg = (int32_t *)malloc((size_t)N * sizeof *tg);
    double total = 0.0;
    int cnt = 0;
    if (!rl || !tg) {
        qft_cuda_fail("malloc", __FILE__, __LINE__, "out of host memory for the loss rows");
    } else if (!CUDA_CHECK(cudaMemcpy(rl, rowloss_dev, (size_t)N * sizeof *rl,
                                      cudaMemcpyDeviceToHost)) &&
               !CUDA_CHECK(cudaMemcpy(tg, targets_dev, (size_t)N * sizeof *tg,
                                      cudaMemcpyDeviceToHost))) {
        for (int n = 0; n < N; n++)
            if (tg[n] != IGNORE) total += (double)rl[n], cnt++;
    }
    free(rl);
    free(tg);
    if (n_valid) *n_valid = cnt;
    return total;
}
} // namespace

double qft_cuda_cross_entropy_fwd(const float *logits, const int32_t *targets, int N, int V,
                                  float *lse, float *loss, int *n_valid) {
    if (n_valid) *n_valid = 0;
    if (N <= 0) return 0.0;
    float *rowloss = loss ? loss : (float *)qft_cuda_scratch((size_t)N * sizeof(float)); // (N)
    if (!rowloss) return 0.0;
    xent_fwd_kernel<<<N, LANES>>>(logits, targets, V, lse, rowloss);
    if (CUDA_LAUNCHED()) return 0.0;
    return host_sum(rowloss, targets, N, n_valid);
}

void qft_cuda_cross_entropy_bwd(float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, int N, int V, float scale) {
    if (N <= 0 || V <= 0) return;
    xent_bwd_kernel<<<N, LANES>>>(dlogits, logits, lse, targets, V, scale);
    CUDA_LAUNCHED();
}

double qft_cuda_cross_entropy_fused(float *logits, const int32_t *targets, int N, int V,
                                    float scale, float *loss, int *n_valid) {
    if (n_valid) *n_valid = 0;
    if (N <= 0) return 0.0;
    xent_fused_kernel<<<N, LANES>>>(logits, targets, V, scale, loss);
    if (CUDA_LAUNCHED()) return 0.0;
    return host_sum(loss, targets, N, n_valid);
}
