/* numpy's seeded shuffle, bit for bit: the order `datasets.Dataset.shuffle(seed=s)` gives,
 * which is numpy.random.default_rng(s).permutation(n) -- SeedSequence(s) feeds PCG64, and
 * Generator.permutation runs a Fisher-Yates loop whose draws come from random_interval over
 * PCG64's buffered 32-bit outputs. The seed's Orca-Math split is defined by this order, so
 * reproducing it exactly is the only way to train and evaluate on the seed's rows. */
#ifndef QFT_NP_RANDOM_H
#define QFT_NP_RANDOM_H

#include <stdint.h>

/* SeedSequence(seed) with no spawn key: the pool of 4 uint32 words mixed from the seed's
 * 32-bit little-endian words (a seed < 2^32 is one word, 0 included). */
void qft_np_seedseq_pool(uint64_t seed, uint32_t pool[4]);
/* SeedSequence.generate_state(n_words, np.uint32) from a pool. */
void qft_np_seedseq_generate(const uint32_t pool[4], uint32_t *out, int n_words);

/* PCG64 (128-bit LCG, XSL-RR output) with numpy's one-word buffer for 32-bit draws. */
typedef struct qft_np_pcg64 {
    uint64_t state_hi, state_lo; /* 128-bit state */
    uint64_t inc_hi, inc_lo;     /* 128-bit odd increment */
    int has_uint32;              /* a buffered upper half is pending */
    uint32_t uinteger;
} qft_np_pcg64;

/* PCG64(seed): generate_state(4, uint64) gives (state_hi, state_lo, seq_hi, seq_lo). */
void qft_np_pcg64_seed(qft_np_pcg64 *g, uint64_t seed);
uint64_t qft_np_pcg64_next64(qft_np_pcg64 *g);
/* The low half of a fresh 64-bit draw, then its high half on the next call. */
uint32_t qft_np_pcg64_next32(qft_np_pcg64 *g);
/* A uniform value in [0, max] by masked rejection (numpy's random_interval). */
uint64_t qft_np_random_interval(qft_np_pcg64 *g, uint64_t max);
/* perm (n) = default_rng(seed).permutation(n). */
void qft_np_permutation(uint64_t seed, long n, long *perm);

#endif
