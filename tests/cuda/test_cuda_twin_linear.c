/* The CUDA linear path's twins (core/cuda/cuda_twin.h, "HQQ" onward), run on the CPU
 * against what they must reproduce:
 *   - HQQ dequantization: the twin's unpacking, grouping and meta-quantized scale/zero,
 *     element by element, against the hqq plugin's dequantize_rows (dlopened from the build
 *     tree, as tests/quant does) on weights the plugin quantized from seeded data: every
 *     bit width, both axes, with and without meta quantization; bit for bit;
 *   - the quantized linear's tile schedule (rows per tile, each tile's GEMM arguments) for
 *     HQQ and NF4 weights against one GEMM over the whole dequantized bf16 weight.
 * The HQQ cases are skipped with a message where the plugin is not part of the build. */
#include "twin_suites.h"

#include "cpu_ops.h"
#include "cuda_test_util.h"
#include "cuda_twin.h"
#include "qft_base.h"

#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef QFT_TWIN_HQQ
#include "cuda_test_hqq.h"
#endif

/* Runs a twin GEMM call on host operands, with the CPU backend's GEMM. */
static void run_call(const qft_twin_gemm_call *k, float *const opd[QFT_OPD_COUNT]) {
    ck_assert_ptr_nonnull(opd[k->a]);
    ck_assert_ptr_nonnull(opd[k->b]);
    ck_assert_ptr_nonnull(opd[k->c]);
    qft_cpu_gemm(k->ta, k->tb, k->M, k->N, k->K, k->alpha, opd[k->a] + k->a_off, k->lda,
                 opd[k->b] + k->b_off, k->ldb, k->beta, opd[k->c] + k->c_off, k->ldc);
}

/* ---- HQQ ---------------------------------------------------------------------------------- */
#ifdef QFT_TWIN_HQQ
/* Flattened element f as the kernel computes it. */
static float twin_hqq_elem(const struct qft_qweight *qw, const qft_twin_hqq_geom *g, int64_t f) {
    const int64_t r = f / g->C, c = f % g->C, gi = qft_twin_hqq_group(g, r, c);
    const float z = qft_twin_hqq_zero(qw->quant_zero ? NULL : qw->zero, qw->zero_q,
                                      qw->zero_meta[0], qw->zero_meta[1], gi);
    const float s = qft_twin_hqq_scale(qw->quant_scale ? NULL : qw->scale, qw->scale_q,
                                       qw->scale_meta, g->n_groups, gi);
    return qft_twin_hqq_value(qft_twin_hqq_code(qw->packed, g, r, c), z, s);
}

static qft_twin_hqq_geom hqq_geom(const struct qft_qweight *qw) {
    qft_twin_hqq_geom g;
    ck_assert_int_eq(qft_twin_hqq_geom_make(&g, qw->nbits, qw->group_size, qw->axis, qw->n), 0);
    return g;
}

/* _i: nbits {8, 4, 3, 2} x axis {0, 1} x meta {off, on}. Meta quantization groups the
 * scales by 128, so those cases use 384 groups; the others a shape whose group count is
 * not a multiple of 128 and whose 3-bit words end part-filled. */
START_TEST(test_hqq_vs_plugin) {
    static const int bits[4] = {8, 4, 3, 2};
    cth_case c = {bits[_i / 4], (_i / 2) % 2, _i % 2, 0, 0, 0};
    if (c.meta)
        c.gs = 64, c.out = 96, c.in = 256; /* 384 groups */
    else
        c.gs = 32, c.out = 52, c.in = 192; /* 312 groups; R = 312 (axis 1) or 32 (axis 0) */
    const qft_quantizer_vtable *vt = cth_plugin();
    struct qft_qweight *qw = cth_quantize(&c, 1000 + (uint64_t)_i);
    ck_assert(qw->quant_zero == c.meta && qw->quant_scale == c.meta);
    const qft_twin_hqq_geom g = hqq_geom(qw);
    ck_assert(g.R == qw->R && g.C == qw->C && g.n_groups == qw->n_groups);
    ck_assert(g.packed_rows == qw->packed_rows);
    ck_assert_int_eq(qft_twin_hqq_packed_bytes(&g), (int64_t)qw->packed_bytes);
    if (c.nbits == 3) ck_assert(g.R % 10 != 0); /* a part-filled last word is exercised */
    const int64_t n = qw->n;
    float *ref = ctu_calloc((size_t)n, 4);
    qft_err err = {0, ""};
    ck_assert_msg(vt->dequantize_rows(qw, 0, c.out, ref, &err) == 0, "%s", err.msg);
    int64_t distinct = 0;
    for (int64_t f = 0; f < n; f++) {
        const float v = twin_hqq_elem(qw, &g, f);
        ck_assert_msg(memcmp(&v, &ref[f], 4) == 0,
                      "nbits %d axis %d meta %d: element %lld twin %.9g plugin %.9g", c.nbits,
                      c.axis, c.meta, (long long)f, (double)v, (double)ref[f]);
        distinct += f > 0 && ref[f] != ref[f - 1];
    }
    ck_assert_int_gt(distinct, n / 4); /* real data, not a constant */
    /* a row range from an odd row: the kernel's f0 offset */
    const int64_t row0 = 7, nr = 13;
    ck_assert(vt->dequantize_rows(qw, row0, nr, ref, &err) == 0);
    for (int64_t e = 0; e < nr * c.in; e++) {
        const float v = twin_hqq_elem(qw, &g, row0 * c.in + e);
        ck_assert(memcmp(&v, &ref[e], 4) == 0);
    }
    /* the geometry refuses what hqq refuses */
    qft_twin_hqq_geom bad;
    ck_assert_int_ne(qft_twin_hqq_geom_make(&bad, 5, 64, 1, 4096), 0);
    ck_assert_int_ne(qft_twin_hqq_geom_make(&bad, 4, 64, 1, 4096 + 8), 0);
    ck_assert_int_ne(qft_twin_hqq_geom_make(&bad, 2, 64, 1, 64 * 6), 0); /* R = 6 */
    vt->free_weight(qw);
    free(ref);
}
END_TEST
#endif

/* ---- the quantized linear's tiles ----------------------------------------------------------- */
static const float nf4_code[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f,
                                   -0.39491748809814453f, -0.28444138169288635f,
                                   -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                   0.07958029955625534f, 0.16093020141124725f,
                                   0.24611230194568634f, 0.33791524171829224f,
                                   0.44070982933044434f, 0.5626170039176941f,
                                   0.7229568362236023f, 1.0f};

typedef struct {
    int kind; /* 0 NF4, 1 HQQ */
    const uint8_t *packed;
    const float *absmax;
#ifdef QFT_TWIN_HQQ
    const struct qft_qweight *hqq;
    qft_twin_hqq_geom g;
#endif
} twin_weight;

/* Elements [f0, f0 + count) rounded to bf16, as qft_cuda_weight_rows writes the scratch. */
static void twin_rows_bf16(const twin_weight *w, int64_t f0, int64_t count, float *dst) {
    for (int64_t e = 0; e < count; e++) {
        const int64_t f = f0 + e;
        float v;
#ifdef QFT_TWIN_HQQ
        if (w->kind == 1)
            v = twin_hqq_elem(w->hqq, &w->g, f);
        else
#endif
            v = qft_twin_mul(nf4_code[qft_twin_nf4_code(w->packed, f)],
                             qft_twin_nf4_absmax(w->absmax, NULL, NULL, NULL, 0.0f, f / 64));
        dst[e] = ctu_bf16_round(v);
    }
}

START_TEST(test_qlinear_tiles) {
    const int out = 52, in = 192, N = 7, ldx = in + 8, ldy = out + 4, ldg = out + 4;
    const int64_t n = (int64_t)out * in;
    twin_weight w;
    memset(&w, 0, sizeof w);
    uint8_t *packed = NULL;
    float *absmax = NULL;
#ifdef QFT_TWIN_HQQ
    struct qft_qweight *qw = NULL;
#endif
    if (_i == 0) { /* NF4, block 64, random codes and absmax */
        packed = ctu_calloc((size_t)n / 2, 1);
        absmax = ctu_calloc((size_t)n / 64, 4);
        qft_rng r;
        qft_rng_seed(&r, 31);
        for (int64_t i = 0; i < n / 2; i++) packed[i] = (uint8_t)qft_rng_next(&r);
        for (int64_t b = 0; b < n / 64; b++) absmax[b] = 0.01f + 0.1f * (float)qft_rng_uniform(&r);
        w.kind = 0, w.packed = packed, w.absmax = absmax;
    } else {
#ifdef QFT_TWIN_HQQ
        const cth_case c = {3, 0, 0, 32, out, in}; /* 3-bit words, axis 0 */
        qw = cth_quantize(&c, 32);
        w.kind = 1, w.hqq = qw, w.g = hqq_geom(qw);
#else
        printf("qlinear tiles (HQQ): skipped, the hqq plugin is not in this build\n");
        return;
#endif
    }
    float *Wb = ctu_calloc((size_t)n, 4), *X = ctu_calloc((size_t)N * ldx, 4);
    float *dY = ctu_calloc((size_t)N * ldg, 4), *Y0 = ctu_calloc((size_t)N * ldy, 4);
    float *dX0 = ctu_calloc((size_t)N * ldx, 4), *Yref = ctu_calloc((size_t)N * ldy, 4);
    float *dXref = ctu_calloc((size_t)N * ldx, 4), *Y = ctu_calloc((size_t)N * ldy, 4);
    float *dX = ctu_calloc((size_t)N * ldx, 4), *scratch = ctu_calloc((size_t)n, 4);
    twin_rows_bf16(&w, 0, n, Wb); // (out, in), the whole weight at once
    ctu_fill(X, (size_t)N * ldx, 33, 1.0f), ctu_fill(dY, (size_t)N * ldg, 34, 1.0f);
    for (int i = 0; i < N * ldx; i++) X[i] = ctu_bf16_round(X[i]);
    for (int i = 0; i < N * ldg; i++) dY[i] = ctu_bf16_round(dY[i]);
    ctu_fill(Y0, (size_t)N * ldy, 35, 1.0f), ctu_fill(dX0, (size_t)N * ldx, 36, 1.0f);
    memcpy(Yref, Y0, (size_t)N * ldy * 4), memcpy(dXref, dX0, (size_t)N * ldx * 4);
    qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wb, in, 0.5f, Yref, ldy);
    qft_cpu_gemm(0, 0, N, in, out, 1.0f, dY, ldg, Wb, in, 0.5f, dXref, ldx);
    /* scratch: the whole weight; 20 rows (tiles of 16, a last one of 4); 8 rows and a bit
     * (tiles of 8, a last of 4); 7 rows (too small) */
    const int64_t sizes[4] = {n, 20 * (int64_t)in, 8 * (int64_t)in + 5, 7 * (int64_t)in};
    const int64_t want_T[4] = {out, 16, 8, 0};
    for (int si = 0; si < 4; si++) {
        const int64_t T = qft_twin_qlinear_tile_rows(out, in, sizes[si]);
        ck_assert_int_eq(T, want_T[si]);
        if (T == 0) continue;
        ck_assert(T * in <= sizes[si]);
        memcpy(Y, Y0, (size_t)N * ldy * 4), memcpy(dX, dX0, (size_t)N * ldx * 4);
        float *opd[QFT_OPD_COUNT] = {0};
        opd[QFT_OPD_X] = X, opd[QFT_OPD_W] = scratch, opd[QFT_OPD_Y] = Y;
        opd[QFT_OPD_DY] = dY, opd[QFT_OPD_DX] = dX;
        int tiles = 0;
        for (int64_t r0 = 0; r0 < out; r0 += T, tiles++) {
            const int nr = (int)(r0 + T < out ? T : out - r0);
            memset(scratch, 0xff, (size_t)n * 4); /* NaN: a tile reading past its rows shows */
            twin_rows_bf16(&w, r0 * in, (int64_t)nr * in, scratch); // (nr, in)
            const qft_twin_gemm_call kf = qft_twin_qlinear_fwd_tile(N, in, r0, nr, ldx, ldy, 0.5f);
            const qft_twin_gemm_call kb =
                qft_twin_qlinear_bwd_tile(N, in, r0, nr, ldg, ldx, 0.5f, r0 == 0);
            ck_assert_int_eq(kf.c_off % 8, 0); /* tiles start 16 bytes apart in bf16 Y */
            run_call(&kf, opd);
            run_call(&kb, opd);
        }
        ck_assert_int_eq(tiles, (out + T - 1) / T);
        for (int i = 0; i < N; i++) {
            double e = ctu_rel_err(Y + (size_t)i * ldy, Yref + (size_t)i * ldy, (size_t)out);
            ck_assert_msg(e < 1e-5, "kind %d, tile %lld rows: Y row %d rel err %g", _i,
                          (long long)T, i, e);
            for (int j = out; j < ldy; j++) /* padding untouched */
                ck_assert(Y[(size_t)i * ldy + j] == Y0[(size_t)i * ldy + j]);
            e = ctu_rel_err(dX + (size_t)i * ldx, dXref + (size_t)i * ldx, (size_t)in);
            ck_assert_msg(e < 1e-5, "kind %d, tile %lld rows: dX row %d rel err %g", _i,
                          (long long)T, i, e);
        }
    }
#ifdef QFT_TWIN_HQQ
    if (qw) cth_plugin()->free_weight(qw);
#endif
    free(packed), free(absmax), free(Wb), free(X), free(dY), free(Y0), free(dX0), free(Yref);
    free(dXref), free(Y), free(dX), free(scratch);
}
END_TEST

void twin_linear_add_tests(TCase *tc) {
#ifdef QFT_TWIN_HQQ
    tcase_add_loop_test(tc, test_hqq_vs_plugin, 0, 16);
#else
    printf("HQQ twin: skipped, the hqq plugin is not in this build\n");
#endif
    tcase_add_loop_test(tc, test_qlinear_tiles, 0, 2);
}
