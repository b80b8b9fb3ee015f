/* The element-wise pieces adapter plugins compose (qft_ops.h, appended in ABI 4): scaled
 * column updates, column dot products, division, row norms and counter-based dropout, over
 * host memory. In the no-contraction library with the optimizer (core/cpu/meson.build):
 * these replace loops that used to live in adapters/common, and the CUDA kernels repeat
 * their roundings one for one, so every multiply and add here is rounded on its own. */
#include "cpu_optim.h"

#include <math.h>

/* Below this many elements the OpenMP fork costs more than the loop. */
#define CPU_ADAPT_PAR_MIN 65536

void qft_cpu_cols_axpby(float *dst, int64_t ldd, float beta, const float *src, int64_t lds,
                        const float *f, float fadd, int64_t N, int64_t n) {
#pragma omp parallel for schedule(static) if (N * n > CPU_ADAPT_PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
        float *d = dst + r * ldd;       // (n)
        const float *s = src + r * lds; // (n)
        for (int64_t j = 0; j < n; j++) {
            const float c = f ? (fadd == 0.0f ? f[j] : f[j] + fadd) : fadd;
            const float t = c * s[j];
            d[j] = beta == 0.0f ? t : beta * d[j] + t;
        }
    }
}

void qft_cpu_col_dot(float *acc, const float *a, int64_t lda, const float *b, int64_t ldb,
                     const float *div, int64_t N, int64_t n) {
    qft_cpu_col_dot_scale(acc, NULL, 0, a, lda, b, ldb, div, NULL, N, n);
}

void qft_cpu_col_dot_scale(float *acc, float *g, int64_t ldg, const float *a, int64_t lda,
                           const float *b, int64_t ldb, const float *div, const float *f,
                           int64_t N, int64_t n) {
    /* threads own blocks of 64 columns, so each sum runs in row order whatever their count;
     * with g (col_dot_scale rather than col_dot) each element of a is read once, then (in
     * place when g is a) overwritten by its scaled value, as cols_axpby with beta 0 would */
    const int64_t nblk = (n + 63) / 64;
#pragma omp parallel for schedule(static) if (N * n > CPU_ADAPT_PAR_MIN)
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t j0 = blk * 64, j1 = j0 + 64 < n ? j0 + 64 : n;
        double s[64] = {0};
        for (int64_t r = 0; r < N; r++) {
            const float *ar = a + r * lda, *br = b + r * ldb; // (n) each
            if (!g) {
                for (int64_t j = j0; j < j1; j++) s[j - j0] += (double)ar[j] * br[j];
                continue;
            }
            float *gr = g + r * ldg; // (n)
            for (int64_t j = j0; j < j1; j++) {
                const float av = ar[j];
                s[j - j0] += (double)av * br[j];
                gr[j] = f[j] * av;
            }
        }
        for (int64_t j = j0; j < j1; j++) acc[j] += (float)(s[j - j0] / div[j]);
    }
}

void qft_cpu_out_keep_scale(float *y, int64_t ldy, const float *f, float *h, int64_t N,
                            int64_t n) {
#pragma omp parallel for schedule(static) if (N * n > CPU_ADAPT_PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
        float *yr = y + r * ldy; // (n)
        float *hr = h ? h + r * n : NULL;
        for (int64_t j = 0; j < n; j++) {
            const float t = yr[j];
            if (hr) hr[j] = t;
            if (f) yr[j] = f[j] * t;
        }
    }
}

void qft_cpu_div(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] / b[i];
}

void qft_cpu_row_norms(float *norm, const float *x, int64_t ld, int64_t n, int64_t len) {
#pragma omp parallel for schedule(static) if (n * len > CPU_ADAPT_PAR_MIN)
    for (int64_t j = 0; j < n; j++) {
        const float *row = x + j * ld; // (len)
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < len; k++) s += (double)row[k] * row[k];
        norm[j] = (float)sqrt(s);
    }
}

void qft_cpu_dropout(uint64_t key, double p, const float *src, int64_t N, int64_t d, float *dst,
                     int accumulate) {
    const uint64_t thr = qft_ops_dropout_threshold(p);
    const float scale = (float)(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static) if (N * d > 32768)
    for (int64_t r = 0; r < N; r++) {
        const float *s = src + r * d; // (d)
        float *o = dst + r * d;       // (d)
        const uint64_t base = (uint64_t)(r * d);
        for (int64_t i = 0; i < d; i++) {
            const float v = qft_ops_dropout_keep(key, base + (uint64_t)i, thr) ? s[i] * scale : 0.0f;
            o[i] = accumulate ? o[i] + v : v;
        }
    }
}
