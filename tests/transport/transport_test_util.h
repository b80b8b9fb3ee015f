/* Test data for the transport tests: every rank can draw every rank's contribution (one
 * seeded stream per rank and purpose), so each rank computes the serial answer itself. */
#ifndef TRANSPORT_TEST_UTIL_H
#define TRANSPORT_TEST_UTIL_H

#include "qft_base.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline void tt_rng(qft_rng *r, uint64_t purpose, int rank) {
    qft_rng_seed(r, 0x5eedULL * 1000003ULL + purpose * 7919ULL + (uint64_t)rank);
}

/* Magnitudes spread over four decades, so that a sum in another order differs in its bits:
 * a test of the order must see it. */
static inline float tt_value(qft_rng *r) {
    double mag = pow(10.0, 4.0 * qft_rng_uniform(r) - 2.0);
    return (float)(qft_rng_normal(r) * mag);
}

static inline void tt_fill_f32(float *x, size_t n, uint64_t purpose, int rank) {
    qft_rng r;
    tt_rng(&r, purpose, rank);
    for (size_t i = 0; i < n; i++) x[i] = tt_value(&r);
}

static inline void tt_fill_f64(double *x, size_t n, uint64_t purpose, int rank) {
    qft_rng r;
    tt_rng(&r, purpose, rank);
    for (size_t i = 0; i < n; i++) x[i] = (double)tt_value(&r) * (1.0 + 1e-9 * (double)i);
}

static inline void tt_fill_bytes(unsigned char *x, size_t n, uint64_t purpose, int rank) {
    qft_rng r;
    tt_rng(&r, purpose, rank);
    for (size_t i = 0; i < n; i++) x[i] = (unsigned char)(qft_rng_next(&r) >> 56);
}

#endif
