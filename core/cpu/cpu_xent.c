/* Cross-entropy over the vocabulary, fp32 log-softmax per row, ignore index -100 (as
 * torch.nn.functional.cross_entropy). The loss sum is accumulated in double from per-row
 * values in row order, so it does not depend on the thread count. */
#include "cpu_math.h"
#include "cpu_ops.h"

#include <math.h>

#define IGNORE (-100)

/* log sum exp of one row (V) */
static float row_lse(const float *l, int V) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int v = 0; v < V; v++) m = l[v] > m ? l[v] : m;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int v = 0; v < V; v++) s += qft_cpu_expf(l[v] - m);
    return m + logf(s);
}

/* d (V) = scale * exp(l - lse); d may be l (in place), hence no restrict */
static void row_softmax_scaled(float *d, const float *l, float lse, float scale, int V) {
#pragma omp simd
    for (int v = 0; v < V; v++) d[v] = scale * qft_cpu_expf(l[v] - lse);
}

double qft_cpu_cross_entropy_fwd(const float *logits, const int32_t *targets, int N, int V,
                                 float *lse, float *loss, int *n_valid) {
    double total = 0.0;
    int cnt = 0;
#pragma omp parallel for schedule(static) reduction(+ : cnt) if (N > 4)
    for (int n = 0; n < N; n++) {
        if (targets[n] == IGNORE) {
            if (loss) loss[n] = 0.0f;
            lse[n] = 0.0f;
            continue;
        }
        const float *l = logits + (size_t)n * V; // (V)
        lse[n] = row_lse(l, V);
        if (loss) loss[n] = lse[n] - l[targets[n]];
        cnt++;
    }
    for (int n = 0; n < N; n++)
        if (targets[n] != IGNORE) total += (double)(lse[n] - logits[(size_t)n * V + targets[n]]);
    if (n_valid) *n_valid = cnt;
    return total;
}

void qft_cpu_cross_entropy_bwd(float *dlogits, const float *logits, const float *lse,
                               const int32_t *targets, int N, int V, float scale) {
#pragma omp parallel for schedule(static) if (N > 4)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * V; // (V)
        float *d = dlogits + (size_t)n * V;      // (V), may be l itself
        if (targets[n] == IGNORE) {
#pragma omp simd
            for (int v = 0; v < V; v++) d[v] = 0.0f;
            continue;
        }
        row_softmax_scaled(d, l, lse[n], scale, V);
        d[targets[n]] -= scale;
    }
}

double qft_cpu_cross_entropy_fused(float *logits, const int32_t *targets, int N, int V,
                                   float scale, float *loss, int *n_valid) {
    int cnt = 0;
#pragma omp parallel for schedule(static) reduction(+ : cnt) if (N > 4)
    for (int n = 0; n < N; n++) {
        float *l = logits + (size_t)n * V; // (V) logits in, gradient out
        if (targets[n] == IGNORE) {
            loss[n] = 0.0f;
#pragma omp simd
            for (int v = 0; v < V; v++) l[v] = 0.0f;
            continue;
        }
        const float m = row_lse(l, V);
        loss[n] = m - l[targets[n]];
        row_softmax_scaled(l, l, m, scale, V);
        l[targets[n]] -= scale;
        cnt++;
    }
    double total = 0.0;
    for (int n = 0; n < N; n++) total += loss[n];
    if (n_valid) *n_valid = cnt;
    return total;
}
