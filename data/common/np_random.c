/* numpy's SeedSequence, PCG64 and Generator.permutation, written from the algorithms'
 * descriptions in numpy's bit_generator.pyx, pcg64.h and distributions.c. All SeedSequence
 * arithmetic is modulo 2^32, as numpy's uint32 arrays are. */
#include "np_random.h"

#define NP_INIT_A 0x43b0d7e5u
#define NP_MULT_A 0x931e8875u
#define NP_INIT_B 0x8b51f9ddu
#define NP_MULT_B 0x58f38dedu
#define NP_MIX_MULT_L 0xca01f9ddu
#define NP_MIX_MULT_R 0x4973f715u
#define NP_XSHIFT 16
#define NP_POOL 4

/* The multiplier of PCG's 128-bit LCG. */
#define PCG_MULT_HI 0x2360ed051fc65da4ull
#define PCG_MULT_LO 0x4385df649fccf645ull

/* Each call advances the shared hash constant, so the order of calls is part of the output. */
static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= NP_MULT_A;
    value *= *hash_const;
    value ^= value >> NP_XSHIFT;
    return value;
}

static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = NP_MIX_MULT_L * x - NP_MIX_MULT_R * y;
    r ^= r >> NP_XSHIFT;
    return r;
}

void qft_np_seedseq_pool(uint64_t seed, uint32_t pool[4]) {
    /* numpy turns a Python int into its 32-bit words, least significant first, and keeps at
     * least one word; there is no padding when no spawn key is given. */
    uint32_t entropy[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const int n_entropy = (seed >> 32) ? 2 : 1;
    uint32_t hc = NP_INIT_A;
    for (int i = 0; i < NP_POOL; i++)
        pool[i] = hashmix(i < n_entropy ? entropy[i] : 0u, &hc);
    /* Every word mixes into every other so that late words reach early ones. */
    for (int src = 0; src < NP_POOL; src++)
        for (int dst = 0; dst < NP_POOL; dst++)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], &hc));
    /* Entropy past the pool's size (never here: at most 2 words) would be folded in last. */
}

void qft_np_seedseq_generate(const uint32_t pool[4], uint32_t *out, int n_words) {
    uint32_t hc = NP_INIT_B;
    for (int i = 0; i < n_words; i++) {
        uint32_t v = pool[i % NP_POOL];
        v ^= hc;
        hc *= NP_MULT_B;
        v *= hc;
        v ^= v >> NP_XSHIFT;
        out[i] = v;
    }
}

/* 128-bit arithmetic on (hi, lo) pairs keeps this portable C11 (no __int128 needed). */
static void mul128(uint64_t ah, uint64_t al, uint64_t bh, uint64_t bl, uint64_t *rh,
                   uint64_t *rl) {
    /* (ah*2^64 + al)(bh*2^64 + bl) mod 2^128 = al*bl + 2^64 (ah*bl + al*bh) */
    const uint64_t a0 = al & 0xffffffffu, a1 = al >> 32, b0 = bl & 0xffffffffu, b1 = bl >> 32;
    const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    *rl = (p00 & 0xffffffffu) | (mid << 32);
    const uint64_t hi_of_albl = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    *rh = hi_of_albl + ah * bl + al * bh;
}

static void add128(uint64_t *h, uint64_t *l, uint64_t bh, uint64_t bl) {
    const uint64_t lo = *l + bl;
    *h += bh + (lo < bl);
    *l = lo;
}

static void pcg_step(qft_np_pcg64 *g) {
    uint64_t h, l;
    mul128(g->state_hi, g->state_lo, PCG_MULT_HI, PCG_MULT_LO, &h, &l);
    add128(&h, &l, g->inc_hi, g->inc_lo);
    g->state_hi = h;
    g->state_lo = l;
}

void qft_np_pcg64_seed(qft_np_pcg64 *g, uint64_t seed) {
    uint32_t pool[4], w[8];
    qft_np_seedseq_pool(seed, pool);
    qft_np_seedseq_generate(pool, w, 8);
    /* generate_state(4, uint64) views the uint32 words as little-endian uint64 pairs. */
    uint64_t v[4];
    for (int i = 0; i < 4; i++) v[i] = (uint64_t)w[2 * i] | ((uint64_t)w[2 * i + 1] << 32);
    /* pcg64_set_seed: initstate = (v0, v1), initseq = (v2, v3), each (high, low). Then PCG's
     * srandom: state = 0; inc = initseq << 1 | 1; step; state += initstate; step. */
    g->inc_hi = (v[2] << 1) | (v[3] >> 63);
    g->inc_lo = (v[3] << 1) | 1u;
    g->state_hi = 0;
    g->state_lo = 0;
    pcg_step(g);
    add128(&g->state_hi, &g->state_lo, v[0], v[1]);
    pcg_step(g);
    g->has_uint32 = 0;
    g->uinteger = 0;
}

uint64_t qft_np_pcg64_next64(qft_np_pcg64 *g) {
    pcg_step(g);
    /* XSL-RR: fold the halves together, rotate right by the state's top 6 bits. */
    const uint64_t x = g->state_hi ^ g->state_lo;
    const unsigned rot = (unsigned)(g->state_hi >> 58);
    return (x >> rot) | (x << ((64u - rot) & 63u));
}

uint32_t qft_np_pcg64_next32(qft_np_pcg64 *g) {
    if (g->has_uint32) {
        g->has_uint32 = 0;
        return g->uinteger;
    }
    const uint64_t next = qft_np_pcg64_next64(g);
    g->has_uint32 = 1;
    g->uinteger = (uint32_t)(next >> 32);
    return (uint32_t)next;
}

uint64_t qft_np_random_interval(qft_np_pcg64 *g, uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max; /* the smallest all-ones mask covering max */
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    uint64_t value;
    if (max <= 0xffffffffu) {
        while ((value = (qft_np_pcg64_next32(g) & mask)) > max) {}
    } else {
        while ((value = (qft_np_pcg64_next64(g) & mask)) > max) {}
    }
    return value;
}

void qft_np_permutation(uint64_t seed, long n, long *perm) { // perm (n)
    qft_np_pcg64 g;
    qft_np_pcg64_seed(&g, seed);
    for (long i = 0; i < n; i++) perm[i] = i;
    /* Generator.shuffle on a 1-d array: from the last slot down to slot 1, swap with a
     * uniform slot at or below it. */
    for (long i = n - 1; i >= 1; i--) {
        const long j = (long)qft_np_random_interval(&g, (uint64_t)i);
        const long t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
