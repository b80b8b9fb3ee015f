/* AdamW and SGD element updates, sum of squares and scale over host memory, with the
 * arithmetic of torch's CPU kernels: float element-wise work, fused multiply-add only where
 * torch's vectorised kernels fuse (lerp, add with alpha). Built with -ffp-contract=off
 * (core/cpu/meson.build), so the compiler fuses nothing else and every rounding here is
 * deliberate; the scalars come made from the host (core/train/optim.c). */
#include "cpu_optim.h"

#include <math.h>
#include <stdlib.h>

/* Below this many elements the OpenMP fork costs more than the loop. */
#define CPU_OPTIM_PAR_MIN 32768

void qft_cpu_adamw(float *p, const float *g, float *m, float *v, size_t n,
                   const qft_ops_adamw_scalars *s) {
    const int decay_on = s->decay_on, small = s->small;
    const float decay = s->decay, w1 = s->w1, w1m = s->w1m, b2f = s->b2, c2 = s->c2;
    const float neg_step = s->neg_step, bc2_sqrt = s->bc2_sqrt, epsf = s->eps;
    const long long nn = (long long)n;

#pragma omp parallel for schedule(static) if (nn >= CPU_OPTIM_PAR_MIN)
    for (long long i = 0; i < nn; i++) {
        float pi = p[i];
        const float gi = g[i];
        if (decay_on) pi = pi * decay;
        const float mi = m[i];
        /* torch's lerp takes the other branch for weights >= 0.5, to stay exact at 1 */
        const float mn = small ? fmaf(w1, gi - mi, mi) : fmaf(w1m, gi - mi, gi);
        float vi = v[i] * b2f;
        vi = vi + c2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + epsf;
        m[i] = mn;
        v[i] = vi;
        p[i] = pi + neg_step * mn / denom;
    }
}

void qft_cpu_sgd(float *p, const float *g, float *buf, size_t n, const qft_ops_sgd_scalars *s) {
    const int wd_on = s->wd_on, mom_on = s->mom_on && buf, first = s->first;
    const float wdf = s->wd, momf = s->mom, neg_lr = s->neg_lr;
    const long long nn = (long long)n;

#pragma omp parallel for schedule(static) if (nn >= CPU_OPTIM_PAR_MIN)
    for (long long i = 0; i < nn; i++) {
        float d = g[i];
        if (wd_on) d = fmaf(wdf, p[i], d);
        if (mom_on) {
            d = first ? d : buf[i] * momf + d;
            buf[i] = d;
        }
        p[i] = fmaf(neg_lr, d, p[i]);
    }
}

static double sumsq_range(const float *x, size_t lo, size_t hi) {
    double s = 0.0;
    for (size_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
    return s;
}

double qft_cpu_sumsq(const float *x, size_t n) {
    const size_t chunk = QFT_OPS_SUMSQ_CHUNK;
    const long long n_chunks = (long long)((n + chunk - 1) / chunk);
    if (n_chunks <= 1) return sumsq_range(x, 0, n);
    double *part = malloc((size_t)n_chunks * sizeof(double)); // (n_chunks)
    if (!part) {
        /* no memory for the partials: the same chunks, summed one after another */
        double s = 0.0;
        for (long long c = 0; c < n_chunks; c++) {
            const size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
            s += sumsq_range(x, lo, hi);
        }
        return s;
    }
#pragma omp parallel for schedule(static)
    for (long long c = 0; c < n_chunks; c++) {
        const size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        part[c] = sumsq_range(x, lo, hi);
    }
    double s = 0.0;
    for (long long c = 0; c < n_chunks; c++) s += part[c];
    free(part);
    return s;
}

void qft_cpu_scale(float *x, size_t n, float coef) {
    if (coef == 1.0f) return;
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (nn >= CPU_OPTIM_PAR_MIN)
    for (long long i = 0; i < nn; i++) x[i] *= coef;
}
