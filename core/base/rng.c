/* xoshiro256** (Blackman and Vigna), seeded through splitmix64: fast, well mixed, and
 * the state is four words that a checkpoint can store. */
#include "qft_base.h"

#include <math.h>
#include <string.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void qft_rng_seed(qft_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t qft_rng_next(qft_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double qft_rng_uniform(qft_rng *r) { return (double)(qft_rng_next(r) >> 11) * 0x1.0p-53; }

float qft_rng_normal(qft_rng *r) {
    double u1 = qft_rng_uniform(r), u2 = qft_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void qft_rng_normal_pair(qft_rng *r, float *a, float *b) {
    double u1 = qft_rng_uniform(r), u2 = qft_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    const double rad = sqrt(-2.0 * log(u1)), t = 6.283185307179586 * u2;
    *a = (float)(rad * cos(t));
    *b = (float)(rad * sin(t));
}

void qft_rng_fork(const qft_rng *parent, const char *purpose, qft_rng *child) {
    /* FNV-1a of the purpose, mixed with the parent's state. */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *c = purpose; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ULL;
    qft_rng_seed(child, h ^ parent->s[0] ^ rotl(parent->s[1], 17) ^ rotl(parent->s[2], 31) ^
                            rotl(parent->s[3], 47));
}
