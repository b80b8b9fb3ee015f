/* Counter-based dropout: every mask element is a hash of (seed, step, micro-batch, layer,
 * module name, element index), so the forward repeated by activation recomputation, and
 * the backward, draw exactly the mask of the first forward without storing it, and no
 * stream advances per call. tests/reference/peft_reference.py computes the same mask in
 * Python to hand it to PEFT; change both together. */
#include "lora_common.h"

#define GOLDEN 0x9E3779B97F4A7C15ull

/* splitmix64's finaliser: a bijection of 64-bit words with full avalanche */
static inline uint64_t mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001B3ull;
    }
    return h;
}

uint64_t qft_lora_dropout_key(const qft_adapter_step *st, int layer, const char *name) {
    uint64_t k = mix64(st->seed + GOLDEN);
    k = mix64(k ^ (uint64_t)st->step);
    k = mix64(k ^ (uint64_t)(int64_t)st->micro);
    k = mix64(k ^ (uint64_t)(int64_t)layer);
    return mix64(k ^ fnv1a64(name ? name : ""));
}

/* An element is dropped when the top 24 bits of its hash fall below p * 2^24. */
uint64_t qft_lora_dropout_threshold(double p) { return (uint64_t)(p * 16777216.0 + 0.5); }

int qft_lora_dropout_keep(uint64_t key, uint64_t idx, uint64_t threshold) {
    return (mix64(key + (idx + 1) * GOLDEN) >> 40) >= threshold;
}

void qft_lora_dropout_apply(uint64_t key, double p, const float *src, int64_t N, int64_t d,
                            float *dst, int accumulate) {
    const uint64_t thr = qft_lora_dropout_threshold(p);
    const float scale = (float)(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static) if (N * d > 32768)
    for (int64_t n = 0; n < N; n++) {
        const float *s = src + n * d; // (d) row n of (N, d)
        float *o = dst + n * d;       // (d)
        const uint64_t base = (uint64_t)(n * d);
        for (int64_t i = 0; i < d; i++) {
            const float v =
                qft_lora_dropout_keep(key, base + (uint64_t)i, thr) ? s[i] * scale : 0.0f;
            o[i] = accumulate ? o[i] + v : v;
        }
    }
}
