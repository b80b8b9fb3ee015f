/* Host-side helpers every CUDA test file shares (cuda_test_util.c, linked into test_cuda_twin
 * and test_cuda_ops): seeded data, checked allocation and the two ways results are compared
 * (relative error, first differing bit pattern). */
#ifndef QFT_CUDA_TEST_UTIL_H
#define QFT_CUDA_TEST_UTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* x (n) = scale * N(0, 1) drawn from `seed`. */
void ctu_fill(float *x, size_t n, uint64_t seed, float scale);
/* calloc that fails the test instead of returning NULL (n = 0 allocates one element). */
void *ctu_calloc(size_t n, size_t sz);
/* max |got - ref| / max |ref| over n elements; a NaN in got is an infinite error, an
 * infinity in ref matched exactly is no error. */
double ctu_rel_err(const float *got, const float *ref, size_t n);
/* The first index where a and b (n) differ in their bits, or -1. */
long ctu_first_diff(const float *a, const float *b, size_t n);
/* v rounded to bf16 (nearest even) and back. */
float ctu_bf16_round(float v);

#define CTU_CHECK_ERR(got, ref, n, tol, what)                                                 \
    do {                                                                                      \
        double e_ = ctu_rel_err(got, ref, n);                                                 \
        ck_assert_msg(e_ < (tol), "%s: rel err %g (tolerance %g)", what, e_, (double)(tol));  \
    } while (0)

#endif
