/* DoRA's weight norm ||W + s B A|| per output row, and the merged weight. The norm is
 * detached (no gradient flows through it), as in PEFT.
 *
 * At each refresh (A or B changed) the norm comes from an expansion, per row j:
 *   ||W_j + s B_j A||^2 = ||W_j||^2 + 2 s B_j (A W_j^T) + s^2 B_j (A A^T) B_j^T,
 * where ||W_j||^2 is computed once at attach (W is frozen) and A W^T (r, out) is the base's
 * own product run on the r rows of A (the fused dequantizing kernel for a packed base). So
 * a refresh costs one base product over r rows and O(r^2 (in + out)) more, and neither W
 * nor W + s B A is ever materialised. Rows where the expansion cancels (the norm far below
 * ||W_j||, where its rounding would show) are recomputed exactly from rows of W + s B A;
 * initialisation and merging use that exact path throughout, one tile of rows at a time.
 *
 * That cache and the expansion read A, B and the products from host code, so they run only
 * on a backend with host memory (cpu). Elsewhere (cuda, cpu_guard) the norm is recomputed
 * exactly: by the base's lowrank_row_norms when it offers one (the backend reads W once as
 * it stores it, packed or dense, and forms each element of W + s B A on the fly), else
 * through the op table, one pass over fp32 tiles of W plus a product of r rows per tile;
 * either costs about r / N of the linear's own forward product at N rows. Hashing A and B
 * there would need them on the host, so the core's word replaces the hash: the step's
 * params_version, which stays the same while the trainable parameters do, so the norm is
 * computed once per optimizer step instead of at each of the 2 x grad_accum forwards that
 * activation recomputation makes of it. Version 0 (a caller that does not know) means
 * recompute every time. */
#include "lora_common.h"

#include <math.h>
#include <string.h>

/* Rows per tile: on the host about 1 MiB of fp32, so a tile is still in cache when its norms
 * are read; on a device 64 MiB, so that a norm is a few large launches (a 4096-wide weight
 * of 14336 rows in 4 tiles, not 224), since there each norm is a full pass over W. */
static int64_t tile_rows(const qft_adapter_linear *al) {
    int64_t t = al->cfg->tile_rows;
    if (t <= 0) {
        const size_t bytes = al->base.ops->host_memory ? (size_t)1 << 20 : (size_t)64 << 20;
        t = (int64_t)(bytes / sizeof(float)) / al->in;
        if (t < 16) t = 16;
    }
    return t < al->out ? t : al->out;
}

/* dst (n, in) = rows [row0, row0 + n) of W + s B A (of W alone with plain_w) */
static int fused_rows(qft_adapter_linear *al, int64_t row0, int64_t n, float *dst, int plain_w,
                      qft_err *err) {
    if (al->base.weight_rows(al->base.ctx, row0, n, dst, err)) return -1;
    if (!plain_w)
        qft_lora_gemm(al->base.ops, 0, 0, n, al->in, al->r, al->scale, al->B + row0 * al->r, al->r,
                      al->A, al->in, 1.0f, dst, al->in);
    return 0;
}

static double sumsq(const float *row, int64_t n) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) s += (double)row[j] * row[j];
    return s;
}

/* out_sq (out) = squared row norms of W + s B A (of W with plain_w), tile by tile. */
static int tile_sumsq(qft_adapter_linear *al, int plain_w, double *out_sq, qft_err *err) {
    qft_lora_scratch *sc = al->cfg->scratch;
    const int64_t T = tile_rows(al);
    if (qft_lora_scratch_reserve(sc, al->base.ops, &sc->tile, &sc->cap_tile, (size_t)(T * al->in),
                                 al->base.name, err))
        return -1;
    for (int64_t r0 = 0; r0 < al->out; r0 += T) {
        const int64_t n = r0 + T < al->out ? T : al->out - r0;
        if (fused_rows(al, r0, n, sc->tile, plain_w, err)) return -1; // (n, in)
#pragma omp parallel for schedule(static) if (n * al->in > 65536)
        for (int64_t i = 0; i < n; i++) out_sq[r0 + i] = sumsq(sc->tile + i * al->in, al->in);
    }
    return 0;
}

int qft_lora_dora_prepare(qft_adapter_linear *al, qft_err *err) {
    al->norm_valid = 0;
    return tile_sumsq(al, 1, al->wsq, err);
}

int qft_lora_row_norms(qft_adapter_linear *al, float *norm, qft_err *err) {
    /* a base that reads its own W does it in one pass (the core's lowrank_row_norms),
     * without the fp32 tiles below */
    if (al->base.lowrank_row_norms)
        return al->base.lowrank_row_norms(al->base.ctx, al->A, al->B, al->r, al->scale, norm,
                                          err);
    qft_lora_scratch *sc = al->cfg->scratch;
    const qft_ops *ops = al->base.ops;
    const int64_t T = tile_rows(al);
    if (qft_lora_scratch_reserve(sc, ops, &sc->tile, &sc->cap_tile, (size_t)(T * al->in),
                                 al->base.name, err))
        return -1;
    for (int64_t r0 = 0; r0 < al->out; r0 += T) {
        const int64_t n = r0 + T < al->out ? T : al->out - r0;
        if (fused_rows(al, r0, n, sc->tile, 0, err)) return -1; // (n, in)
        ops->row_norms(norm + r0, sc->tile, al->in, n, al->in);
    }
    return 0;
}

/* The expansion above; rows that cancel below 1% of ||W_j||^2 go the exact way. */
static int expanded_norms(qft_adapter_linear *al, float *norm, qft_err *err) {
    const qft_ops *ops = al->base.ops;
    qft_lora_scratch *sc = al->cfg->scratch;
    const int64_t out = al->out, in = al->in, r = al->r;
    const double s = al->scale;
    if (qft_lora_scratch_reserve(sc, ops, &sc->norm_buf, &sc->cap_norm,
                                 (size_t)(2 * r * out + r * r), al->base.name, err))
        return -1;
    float *P = sc->norm_buf; // (r, out) = A W^T
    float *BG = P + r * out; // (out, r) = B (A A^T)
    float *G = BG + out * r; // (r, r) = A A^T
    if (al->base.forward(al->base.ctx, al->A, r, P, out, 0.0f, err)) return -1;
    qft_lora_gemm(ops, 0, 1, r, r, in, 1.0f, al->A, in, al->A, in, 0.0f, G, r);
    qft_lora_gemm(ops, 0, 0, out, r, r, 1.0f, al->B, r, G, r, 0.0f, BG, r);
    int64_t n_exact = 0;
#pragma omp parallel for schedule(static) reduction(+ : n_exact) if (out * r > 65536)
    for (int64_t j = 0; j < out; j++) {
        const float *b = al->B + j * r; // (r)
        const float *bg = BG + j * r;   // (r)
        double cross = 0.0, quad = 0.0;
        for (int64_t k = 0; k < r; k++) {
            cross += (double)b[k] * P[k * out + j];
            quad += (double)b[k] * bg[k];
        }
        const double q = al->wsq[j] + 2.0 * s * cross + s * s * quad;
        if (q < 0.01 * al->wsq[j] || !(q > 0.0)) {
            norm[j] = -1.0f; /* marked for the exact path */
            n_exact++;
        } else {
            norm[j] = (float)sqrt(q);
        }
    }
    if (n_exact == 0) return 0;
    if (qft_lora_scratch_reserve(sc, ops, &sc->tile, &sc->cap_tile, (size_t)in, al->base.name,
                                 err))
        return -1;
    for (int64_t j = 0; j < out; j++) {
        if (norm[j] >= 0.0f) continue;
        if (fused_rows(al, j, 1, sc->tile, 0, err)) return -1; // (1, in)
        norm[j] = (float)sqrt(sumsq(sc->tile, in));
    }
    return 0;
}

/* A and B are hashed rather than compared to a copy: the norm is needed again only when
 * they changed (an optimizer step, a load), and the hash costs a pass over r (in + out)
 * floats against the norm's base product over r rows. */
static uint64_t hash_floats(uint64_t h, const float *p, size_t n) {
    const uint32_t *w = (const uint32_t *)(const void *)p;
    for (size_t i = 0; i < n; i++) {
        h ^= w[i];
        h *= 0x100000001B3ull;
        h ^= h >> 29;
    }
    return h;
}

int qft_lora_dora_refresh(qft_adapter_linear *al, const qft_adapter_step *st, qft_err *err) {
    const qft_ops *ops = al->base.ops;
    if (!ops->host_memory) {
        const uint64_t version = st ? st->params_version : 0;
        if (!al->norm_valid || version == 0 || version != al->norm_version) {
            /* invalid until whole: a failure half-way leaves no stale norm to reuse */
            al->norm_valid = 0;
            if (qft_lora_row_norms(al, al->norm, err)) return -1;
            al->norm_version = version;
            al->norm_valid = 1;
            al->norm_computes++;
        }
        ops->div(al->f, al->m, al->norm, (size_t)al->out);
        return 0;
    }
    uint64_t key = hash_floats(0xCBF29CE484222325ull, al->A, (size_t)(al->r * al->in));
    key = hash_floats(key, al->B, (size_t)(al->out * al->r));
    if (!al->norm_valid || key != al->norm_key) {
        al->norm_valid = 0;
        if (expanded_norms(al, al->norm, err)) return -1;
        al->norm_key = key;
        al->norm_valid = 1;
        al->norm_computes++;
    }
    /* m changes at every step, so f is cheap enough to redo each time */
    for (int64_t j = 0; j < al->out; j++) al->f[j] = al->m[j] / al->norm[j];
    return 0;
}

int qft_lora_merge_rows(qft_adapter_linear *al, int64_t row0, int64_t n, float *dst, qft_err *err) {
    if (row0 < 0 || n < 0 || row0 + n > al->out)
        return qft_err_setf(err, "%s: merge rows [%lld, %lld) outside %lld rows", al->base.name,
                            (long long)row0, (long long)(row0 + n), (long long)al->out);
    if (n == 0) return 0;
    if (!al->base.ops->host_memory)
        return qft_err_setf(err, "%s: merging reads the merged rows on the host; the engine "
                                 "merges on the cpu backend",
                            al->base.name);
    if (fused_rows(al, row0, n, dst, 0, err)) return -1; // (n, in)
    if (!al->m) return 0;
        /* W' = m / ||W + s B A|| (W + s B A), the exact norm of exactly these rows */
#pragma omp parallel for schedule(static) if (n * al->in > 65536)
    for (int64_t i = 0; i < n; i++) {
        float *row = dst + i * al->in; // (in)
        const float f = al->m[row0 + i] / (float)sqrt(sumsq(row, al->in));
        for (int64_t j = 0; j < al->in; j++) row[j] *= f;
    }
    return 0;
}
