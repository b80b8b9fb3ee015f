/* The Llama MLP activation: h = silu(gate) * up, silu(g) = g * sigmoid(g). The row bodies
 * are separate functions with restrict pointers: inside the OpenMP-outlined loop GCC
 * does not vectorize them otherwise. */
#include "cpu_math.h"
#include "cpu_ops.h"

static void fwd_row(float *restrict o, const float *restrict g, const float *restrict u, int I) {
#pragma omp simd
    for (int i = 0; i < I; i++) o[i] = g[i] / (1.0f + qft_cpu_expf(-g[i])) * u[i];
}

/* d gate = dh * up * s * (1 + g * (1 - s)), d up = dh * g * s, with s = sigmoid(g). dg and
 * du may be g and u (in place): element i reads its gate and up before writing, and no
 * element reads another's, which is what `omp simd` asserts (so no restrict there). */
static void bwd_row(float *dg, float *du, const float *restrict d, const float *g,
                    const float *u, int I) {
#pragma omp simd
    for (int i = 0; i < I; i++) {
        const float gi = g[i], ui = u[i];
        const float s = 1.0f / (1.0f + qft_cpu_expf(-gi));
        dg[i] = d[i] * ui * (s * (1.0f + gi * (1.0f - s)));
        du[i] = d[i] * (gi * s);
    }
}

void qft_cpu_swiglu_fwd(float *h, const float *gu, int N, int I) {
#pragma omp parallel for schedule(static) if (N > 16)
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * I; // (I) gate half of the (2I) row
        fwd_row(h + (size_t)n * I, g, g + I, I); // (I) out, (I) gate, (I) up
    }
}

void qft_cpu_swiglu_bwd(float *dgu, const float *dh, const float *gu, int N, int I) {
#pragma omp parallel for schedule(static) if (N > 16)
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * I; // (I) gate, then (I) up
        float *dg = dgu + (size_t)n * 2 * I;     // (I) d gate, then (I) d up
        bwd_row(dg, dg + I, dh + (size_t)n * I, g, g + I, I);
    }
}
