/* The key of counter-based dropout: every mask element is a hash of (seed, step,
 * micro-batch, layer, module name, element index) — the key hashes all but the index, and
 * the backend's `dropout` entry (qft_ops.h) mixes in the index — so the forward repeated
 * by activation recomputation, and the backward, draw exactly the mask of the first
 * forward without storing it, and no stream advances per call.
 * tests/reference/peft_reference.py computes the same mask in Python to hand it to PEFT;
 * change both together. */
#include "lora_common.h"

#define GOLDEN 0x9E3779B97F4A7C15ull

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001B3ull;
    }
    return h;
}

uint64_t qft_lora_dropout_key(const qft_adapter_step *st, int layer, const char *name) {
    uint64_t k = qft_ops_mix64(st->seed + GOLDEN);
    k = qft_ops_mix64(k ^ (uint64_t)st->step);
    k = qft_ops_mix64(k ^ (uint64_t)(int64_t)st->micro);
    k = qft_ops_mix64(k ^ (uint64_t)(int64_t)layer);
    return qft_ops_mix64(k ^ fnv1a64(name ? name : ""));
}
