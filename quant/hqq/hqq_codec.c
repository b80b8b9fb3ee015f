/* HQQ's arithmetic, operation for operation in fp32 as hqq runs it on the CPU:
 * per-group min/max scale and zero, the proximal refinement of the zero point
 * (optimize_weights_proximal_legacy: lp 0.7, beta 10, 20 iterations, early stop keeping
 * the zero just updated; hqq >= 0.2.7 no longer grows beta), the row-pairing bit packings,
 * and the 8-bit meta-quantization of zero and scale. */
#include "hqq.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define HQQ_LP_NORM 0.7f
#define HQQ_BETA 10.0f
#define HQQ_ITERS 20

void *hqq_alloc(const qft_services *svc, size_t bytes) {
    if (bytes == 0) bytes = 1;
    return svc && svc->alloc ? svc->alloc(bytes, "quant hqq") : malloc(bytes);
}

void hqq_free(const qft_services *svc, void *p) {
    if (!p) return;
    if (svc && svc->free)
        svc->free(p);
    else
        free(p);
}

void hqq_weight_free(struct qft_qweight *qw) {
    if (!qw) return;
    const qft_services *svc = qw->svc;
    if (!qw->placed) { /* placed buffers belong to the core */
        hqq_free(svc, qw->packed);
        hqq_free(svc, qw->scale);
        hqq_free(svc, qw->zero);
        hqq_free(svc, qw->zero_q);
        hqq_free(svc, qw->scale_q);
        hqq_free(svc, qw->scale_meta);
    }
    hqq_free(svc, qw);
}

int hqq_weight_init(struct qft_qweight *qw, const hqq_opts *o, int64_t out, int64_t in,
                    const char *name, qft_err *err) {
    const char *nm = name ? name : "weight";
    qw->out = out;
    qw->in = in;
    qw->n = out * in;
    qw->nbits = o->nbits;
    qw->group_size = o->group_size;
    qw->axis = o->axis;
    qw->optimize = o->optimize;
    qw->round_zero = o->round_zero;
    qw->quant_zero = o->quant_zero;
    qw->quant_scale = o->quant_scale;
    qw->s_nbits = o->nbits;
    qw->s_group_size = o->group_size;
    qw->s_axis = o->axis;
    qw->s_shape[0] = out;
    qw->s_shape[1] = in;
    qw->s_one = 1;
    qw->s_zero = 0;
    qw->s_optimize = (uint8_t)o->optimize;
    qw->s_round_zero = (uint8_t)o->round_zero;
    qw->s_quant_zero = (uint8_t)o->quant_zero;
    qw->s_quant_scale = (uint8_t)o->quant_scale;
    const int64_t gs = o->group_size;
    if (qw->n % gs)
        return qft_err_setf(err, "hqq: %s (%lld, %lld): %lld elements do not split into groups "
                            "of %lld", nm, (long long)out, (long long)in, (long long)qw->n,
                            (long long)gs);
    if (o->axis == 1) { qw->R = qw->n / gs; qw->C = gs; qw->n_groups = qw->R; }
    else { qw->R = gs; qw->C = qw->n / gs; qw->n_groups = qw->C; }
    int64_t rows_per = o->nbits == 4 ? 2 : o->nbits == 2 ? 4 : 1; // grouped rows per packed row
    if (o->nbits == 3) {
        qw->packed_rows = (qw->R + 9) / 10;                         // ceil(R / 10) int32 words
        qw->packed_bytes = (size_t)(qw->packed_rows * qw->C) * 4;
    } else {
        if (qw->R % rows_per)
            return qft_err_setf(err, "hqq: %s (%lld, %lld): %d-bit packing pairs rows, and the "
                                "grouped matrix has %lld rows (not a multiple of %lld)", nm,
                                (long long)out, (long long)in, o->nbits, (long long)qw->R,
                                (long long)rows_per);
        qw->packed_rows = qw->R / rows_per;
        qw->packed_bytes = (size_t)(qw->packed_rows * qw->C);
    }
    if (o->quant_scale && qw->n_groups % HQQ_META_GROUP)
        return qft_err_setf(err, "hqq: %s: quant_scale groups the %lld scales by %d", nm,
                            (long long)qw->n_groups, HQQ_META_GROUP);
    return 0;
}

int hqq_code(const struct qft_qweight *qw, int64_t r, int64_t c) {
    switch (qw->nbits) {
    case 8: return qw->packed[r * qw->C + c];
    case 4: {
        const int64_t h = qw->packed_rows; // R / 2
        return r < h ? qw->packed[r * qw->C + c] >> 4 : qw->packed[(r - h) * qw->C + c] & 15;
    }
    case 2: {
        const int64_t h = qw->packed_rows; // R / 4
        return (qw->packed[(r % h) * qw->C + c] >> (6 - 2 * (r / h))) & 3;
    }
    default: { /* 3 bits: ten rows a word, the first in bits 27..29 */
        const int64_t h = qw->packed_rows;
        uint32_t w;
        memcpy(&w, qw->packed + 4 * ((r % h) * qw->C + c), 4);
        return (int)((w >> (27 - 3 * (r / h))) & 7);
    }
    }
}

static void set_code(struct qft_qweight *qw, int64_t r, int64_t c, int q) {
    switch (qw->nbits) {
    case 8: qw->packed[r * qw->C + c] = (uint8_t)q; break;
    case 4: {
        const int64_t h = qw->packed_rows;
        uint8_t *b = &qw->packed[(r % h) * qw->C + c];
        *b = r < h ? (uint8_t)((*b & 15) | (q << 4)) : (uint8_t)((*b & 0xF0) | q);
        break;
    }
    case 2: {
        const int64_t h = qw->packed_rows;
        const int sh = 6 - 2 * (int)(r / h);
        uint8_t *b = &qw->packed[(r % h) * qw->C + c];
        *b = (uint8_t)((*b & ~(3 << sh)) | (q << sh));
        break;
    }
    default: {
        const int64_t h = qw->packed_rows;
        const int sh = 27 - 3 * (int)(r / h);
        uint32_t w;
        uint8_t *p = qw->packed + 4 * ((r % h) * qw->C + c);
        memcpy(&w, p, 4);
        w = (w & ~(7u << sh)) | ((uint32_t)q << sh);
        memcpy(p, &w, 4);
    }
    }
}

float hqq_group_zero(const struct qft_qweight *qw, int64_t g) {
    if (!qw->quant_zero) return qw->zero[g];
    return ((float)qw->zero_q[g] - qw->zero_meta[1]) * qw->zero_meta[0];
}

float hqq_group_scale(const struct qft_qweight *qw, int64_t g) {
    if (!qw->quant_scale) return qw->scale[g];
    const int64_t mc = qw->n_groups / HQQ_META_GROUP; // columns of the (128, mc) grouping
    const int64_t c = g % mc;
    return ((float)qw->scale_q[g] - qw->scale_meta[mc + c]) * qw->scale_meta[c];
}

void hqq_dequantize_range(const struct qft_qweight *qw, int64_t f0, int64_t count, float *dst) {
    const int64_t C = qw->C;
    if (qw->axis == 1) {
        /* runs of C = group_size elements share one group */
        int64_t f = f0;
        while (f < f0 + count) {
            const int64_t r = f / C;
            const int64_t stop = (r + 1) * C < f0 + count ? (r + 1) * C : f0 + count;
            const float z = hqq_group_zero(qw, r), s = hqq_group_scale(qw, r);
#ifdef __AVX512F__
            if (qw->nbits == 4) {
                /* 4 bits: grouped row r's codes are one nibble of a contiguous run of packed
                 * bytes (the high one for the first half of the rows), 16 at a time; the
                 * same subtract and multiply in fp32 as the scalar line below */
                const int64_t h = qw->packed_rows; // R / 2
                const uint8_t *pr = qw->packed + (r < h ? r : r - h) * C; // (C) bytes
                const __m128i sh = _mm_cvtsi32_si128(r < h ? 4 : 0);
                const __m512i m15 = _mm512_set1_epi32(15);
                const __m512 vz = _mm512_set1_ps(z), vs = _mm512_set1_ps(s);
                for (; f + 16 <= stop; f += 16) {
                    const __m128i b = _mm_loadu_si128((const __m128i *)(pr + (f - r * C)));
                    const __m512i q = _mm512_and_si512(_mm512_srl_epi32(_mm512_cvtepu8_epi32(b), sh),
                                                       m15); // (16) codes
                    _mm512_storeu_ps(dst + (f - f0),
                                     _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(q), vz), vs));
                }
            }
#endif
            for (; f < stop; f++) dst[f - f0] = ((float)hqq_code(qw, r, f - r * C) - z) * s;
        }
    } else {
        /* runs along one row r of the grouped matrix, every column its own group */
        int64_t f = f0;
        while (f < f0 + count) {
            const int64_t r = f / C;
            const int64_t stop = (r + 1) * C < f0 + count ? (r + 1) * C : f0 + count;
#ifdef __AVX512F__
            if (qw->nbits == 4 && !qw->quant_zero && !qw->quant_scale) {
                const int64_t h = qw->packed_rows; // R / 2
                const uint8_t *pr = qw->packed + (r < h ? r : r - h) * C; // (C) bytes
                const __m128i sh = _mm_cvtsi32_si128(r < h ? 4 : 0);
                const __m512i m15 = _mm512_set1_epi32(15);
                for (; f + 16 <= stop; f += 16) {
                    const int64_t c = f - r * C;
                    const __m128i b = _mm_loadu_si128((const __m128i *)(pr + c));
                    const __m512i q = _mm512_and_si512(_mm512_srl_epi32(_mm512_cvtepu8_epi32(b), sh),
                                                       m15); // (16) codes
                    const __m512 d = _mm512_sub_ps(_mm512_cvtepi32_ps(q), _mm512_loadu_ps(qw->zero + c));
                    _mm512_storeu_ps(dst + (f - f0), _mm512_mul_ps(d, _mm512_loadu_ps(qw->scale + c)));
                }
            }
#endif
            for (; f < stop; f++) {
                const int64_t c = f - r * C;
                dst[f - f0] = ((float)hqq_code(qw, r, c) - hqq_group_zero(qw, c)) *
                              hqq_group_scale(qw, c);
            }
        }
    }
}

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Group g's elements of the grouped matrix (R, C), as a strided run. */
#define GX(W, g, j) ((qw->axis == 1) ? (W)[(g) * C + (j)] : (W)[(j) * C + (g)])

/* Quantizes the grouped matrix W (R, C) with one scale/zero per group: hqq's
 * Quantizer.quantize minus the packing. s and z (n_groups) receive the multiplicative
 * scale (not yet inverted) and the zero; q (R, C) the codes. */
static int hqq_fit(const struct qft_qweight *qw, const float *W, int nbits, int optimize,
                   int round_zero, float *s, float *z, uint8_t *q, qft_err *err) {
    const int64_t R = qw->R, C = qw->C, G = qw->n_groups, gs = qw->axis == 1 ? C : R;
    const float max_v = (float)((1 << nbits) - 1);
    for (int64_t g = 0; g < G; g++) {
        float mn = GX(W, g, 0), mx = mn;
        for (int64_t j = 1; j < gs; j++) {
            const float v = GX(W, g, j);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        const float denom = mx - mn;
        float sc = max_v / denom;
        if (fabsf(denom) <= 1e-4f) sc = 1.0f;
        if (sc > 2e4f) sc = 2e4f;
        float zz = -mn * sc;
        if (round_zero) zz = rintf(zz);
        s[g] = sc;
        z[g] = zz;
    }
    if (optimize) {
        const int64_t n = R * C;
        float *Wr = malloc((size_t)n * sizeof(float));   // (R, C) W_r, then |W - W_r|
        float *T = malloc((size_t)n * sizeof(float));    // (R, C) W_q - (W - W_e) * s
        float *Wq = malloc((size_t)n * sizeof(float));   // (R, C)
        float *znew = malloc((size_t)G * sizeof(float)); // (G)
        if (!Wr || !T || !Wq || !znew) {
            free(Wr); free(T); free(Wq); free(znew);
            return qft_err_setf(err, "hqq: out of memory for the proximal solver");
        }
        const float inv_beta = 1.0f / HQQ_BETA;         // (1.0 / beta) as torch casts it
        const float p1 = HQQ_LP_NORM - 1.0f;           // lp_norm - 1
        float best = INFINITY;
        for (int it = 0; it < HQQ_ITERS; it++) {
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; i++) {
                const int64_t g = qw->axis == 1 ? i / C : i % C;
                const float wq = clampf(rintf(W[i] * s[g] + z[g]), 0.0f, max_v);
                const float wr = (wq - z[g]) / s[g];
                const float x = W[i] - wr;
                float a = fabsf(x);
                a = a - inv_beta * powf(a, p1);
                a = a < 0.0f ? 0.0f : a;
                const float we = x > 0.0f ? a : (x < 0.0f ? -a : 0.0f * a);
                Wq[i] = wq;
                T[i] = wq - (W[i] - we) * s[g];
                Wr[i] = fabsf(W[i] - wr);
            }
#pragma omp parallel for schedule(static)
            for (int64_t g = 0; g < G; g++) {
                const float sum = qw->axis == 1 ? hqq_torch_sum_inner(T + g * C, C)
                                                : hqq_torch_sum_outer(T, R, C, g);
                znew[g] = sum / (float)gs;
            }
            memcpy(z, znew, (size_t)G * sizeof(float));
            const float cur = hqq_torch_sum_inner(Wr, n) / (float)n;
            if (cur < best)
                best = cur;
            else
                break; /* hqq keeps the zero it has just updated */
        }
        free(Wr); free(T); free(Wq); free(znew);
    }
    for (int64_t i = 0; i < R * C; i++) {
        const int64_t g = qw->axis == 1 ? i / C : i % C;
        q[i] = (uint8_t)clampf(rintf(W[i] * s[g] + z[g]), 0.0f, max_v);
    }
    return 0;
}

/* hqq's Quantizer.quantize of a meta vector v (G) to 8 bits without refinement: one
 * group over everything (the zero point), or groups of 128 along axis 0 of the
 * (128, G/128) view (the scale). codes (G); meta receives scale row then zero row. */
static void quantize_meta(const float *v, int64_t G, int global, uint8_t *codes, float *meta) {
    const int64_t cols = global ? 1 : G / HQQ_META_GROUP; // groups
    for (int64_t c = 0; c < cols; c++) {
        float mn = INFINITY, mx = -INFINITY;
        for (int64_t i = c; i < G; i += cols) {
            mn = v[i] < mn ? v[i] : mn;
            mx = v[i] > mx ? v[i] : mx;
        }
        const float denom = mx - mn;
        float sc = 255.0f / denom;
        if (fabsf(denom) <= 1e-4f) sc = 1.0f;
        if (sc > 2e4f) sc = 2e4f;
        const float zz = -mn * sc;
        for (int64_t i = c; i < G; i += cols)
            codes[i] = (uint8_t)clampf(rintf(v[i] * sc + zz), 0.0f, 255.0f);
        meta[c] = 1.0f / sc;
        meta[cols + c] = zz;
    }
}

int hqq_quantize_weight(struct qft_qweight *qw, const float *w, qft_err *err) {
    const qft_services *svc = qw->svc;
    const int64_t G = qw->n_groups, n = qw->n;
    float *s = malloc((size_t)G * sizeof(float)), *z = malloc((size_t)G * sizeof(float));
    uint8_t *q = malloc((size_t)n);                    // (R, C) codes
    qw->packed = hqq_alloc(svc, qw->packed_bytes);
    if (!s || !z || !q || !qw->packed) {
        free(s); free(z); free(q);
        return qft_err_setf(err, "hqq: out of memory quantizing a (%lld, %lld) weight",
                            (long long)qw->out, (long long)qw->in);
    }
    /* W (out, in) row-major is already the grouped matrix (R, C) row-major */
    int rc = hqq_fit(qw, w, qw->nbits, qw->optimize, qw->round_zero, s, z, q, err);
    if (!rc) {
        memset(qw->packed, 0, qw->packed_bytes);
        for (int64_t r = 0; r < qw->R; r++)
            for (int64_t c = 0; c < qw->C; c++) set_code(qw, r, c, q[r * qw->C + c]);
        for (int64_t g = 0; g < G; g++) s[g] = 1.0f / s[g]; /* hqq stores the inverse */
        if (qw->quant_zero) {
            qw->zero_q = hqq_alloc(svc, (size_t)G);
            if (!qw->zero_q) rc = qft_err_setf(err, "hqq: out of memory");
            else quantize_meta(z, G, 1, qw->zero_q, qw->zero_meta);
        } else if ((qw->zero = hqq_alloc(svc, (size_t)G * sizeof(float)))) {
            memcpy(qw->zero, z, (size_t)G * sizeof(float));
        } else {
            rc = qft_err_setf(err, "hqq: out of memory");
        }
        if (!rc && qw->quant_scale) {
            qw->scale_q = hqq_alloc(svc, (size_t)G);
            qw->scale_meta = hqq_alloc(svc, (size_t)(2 * (G / HQQ_META_GROUP)) * sizeof(float));
            if (!qw->scale_q || !qw->scale_meta) rc = qft_err_setf(err, "hqq: out of memory");
            else quantize_meta(s, G, 0, qw->scale_q, qw->scale_meta);
        } else if (!rc) {
            if ((qw->scale = hqq_alloc(svc, (size_t)G * sizeof(float))))
                memcpy(qw->scale, s, (size_t)G * sizeof(float));
            else
                rc = qft_err_setf(err, "hqq: out of memory");
        }
    }
    free(s); free(z); free(q);
    return rc;
}
