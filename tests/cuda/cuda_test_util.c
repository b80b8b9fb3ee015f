#include "cuda_test_util.h"

#include "qft_base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ctu_fill(float *x, size_t n, uint64_t seed, float scale) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * qft_rng_normal(&r);
}

void *ctu_calloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    ck_assert_ptr_nonnull(p);
    return p;
}

double ctu_rel_err(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isinf(ref[i]) && got[i] == ref[i]) continue;
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= num)) num = e; /* NaN too */
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return den > 0 ? num / den : num;
}

long ctu_first_diff(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof *a) != 0) return (long)i;
    return -1;
}

float ctu_bf16_round(float v) { return qft_bf16_to_f32(qft_f32_to_bf16(v)); }
