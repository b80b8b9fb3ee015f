/* RMSNorm as transformers' LlamaRMSNorm computes it in fp32:
 * out = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps). */
#include "cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void qft_cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C,
                         float eps) {
#pragma omp parallel for schedule(static) if (N > 16)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C; // (C)
        float *o = out + (size_t)n * C;      // (C)
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        const float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = w[c] * (xr[c] * r);
    }
}

/* dx += rstd * (g - xhat * mean(g * xhat)) with g = dout * w and xhat = x * rstd, and
 * dw += sum over rows of dout * xhat. Rows are split over threads for dx; dw is a second
 * pass with threads owning column blocks, so each dw[c] sums rows in order 0..N-1 for any
 * thread count (bit-stable results, needed for recompute to match exactly). */
void qft_cpu_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static) if (N > 16)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;    // (C)
        const float *dy = dout + (size_t)n * C; // (C)
        float *d = dx + (size_t)n * C;          // (C)
        const float r = rstd[n];
        float dot = 0.0f; /* sum of g * xhat */
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) dot += dy[c] * w[c] * (xr[c] * r);
        const float m = dot / (float)C;
#pragma omp simd
        for (int c = 0; c < C; c++) d[c] += r * (dy[c] * w[c] - (xr[c] * r) * m);
    }
    if (!dw) return; /* a frozen norm weight: only the input gradient */
#pragma omp parallel if (N > 16)
    {
        int nt = 1, tid = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(), tid = omp_get_thread_num();
#endif
        /* column blocks of 16 floats (one cache line) so threads never share a line */
        int blocks = (C + 15) / 16, per = (blocks + nt - 1) / nt;
        int c0 = tid * per * 16, c1 = (tid + 1) * per * 16;
        if (c1 > C) c1 = C;
        if (c0 < c1) {
            float acc[256];
            for (int cb = c0; cb < c1; cb += 256) {
                int ce = cb + 256 < c1 ? cb + 256 : c1;
                memset(acc, 0, sizeof acc);
                for (int n = 0; n < N; n++) {
                    const float *xr = x + (size_t)n * C;
                    const float *dy = dout + (size_t)n * C;
                    const float r = rstd[n];
#pragma omp simd
                    for (int c = cb; c < ce; c++) acc[c - cb] += dy[c] * (xr[c] * r);
                }
                for (int c = cb; c < ce; c++) dw[c] += acc[c - cb];
            }
        }
    }
}
