/* The CUDA linear path's twins (core/cuda/cuda_twin.h, "HQQ" onward), run on the CPU
 * against the plugins they must reproduce:
 *   - HQQ dequantization: the twin's unpacking, grouping and meta-quantized scale/zero,
 *     element by element, against the hqq plugin's dequantize_rows (dlopened from the build
 *     tree, as tests/quant does) on weights the plugin quantized from seeded data: every
 *     bit width, both axes, with and without meta quantization; bit for bit;
 *   - the quantized linear's tile schedule (rows per tile, each tile's GEMM arguments) for
 *     HQQ and NF4 weights against one GEMM over the whole dequantized bf16 weight;
 *   - LoRA and DoRA: the twin's GEMM call lists and DoRA's f, row scaling and magnitude
 *     gradient, against adapters/common's forward and backward (bit for bit: the same CPU
 *     GEMM runs the same calls), and the twin's tiled, lane-ordered row norm against the
 *     plugin's exact ||W + s B A||.
 * Each case is skipped with a message where its plugin is not part of the build. */
#include "twin_suites.h"

#include "cpu_ops.h"
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
#ifdef QFT_TWIN_LORA
#include "lora_common.h"
#endif

static void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * qft_rng_normal(&r);
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= num)) num = e; /* NaN too */
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return den > 0 ? num / den : num;
}

static float bf16_round(float v) { return qft_bf16_to_f32(qft_f32_to_bf16(v)); }

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
    float *ref = xcalloc((size_t)n, 4);
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
        dst[e] = bf16_round(v);
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
        packed = xcalloc((size_t)n / 2, 1);
        absmax = xcalloc((size_t)n / 64, 4);
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
    float *Wb = xcalloc((size_t)n, 4), *X = xcalloc((size_t)N * ldx, 4);
    float *dY = xcalloc((size_t)N * ldg, 4), *Y0 = xcalloc((size_t)N * ldy, 4);
    float *dX0 = xcalloc((size_t)N * ldx, 4), *Yref = xcalloc((size_t)N * ldy, 4);
    float *dXref = xcalloc((size_t)N * ldx, 4), *Y = xcalloc((size_t)N * ldy, 4);
    float *dX = xcalloc((size_t)N * ldx, 4), *scratch = xcalloc((size_t)n, 4);
    twin_rows_bf16(&w, 0, n, Wb); // (out, in), the whole weight at once
    fill(X, (size_t)N * ldx, 33, 1.0f), fill(dY, (size_t)N * ldg, 34, 1.0f);
    for (int i = 0; i < N * ldx; i++) X[i] = bf16_round(X[i]);
    for (int i = 0; i < N * ldg; i++) dY[i] = bf16_round(dY[i]);
    fill(Y0, (size_t)N * ldy, 35, 1.0f), fill(dX0, (size_t)N * ldx, 36, 1.0f);
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
            double e = rel_err(Y + (size_t)i * ldy, Yref + (size_t)i * ldy, (size_t)out);
            ck_assert_msg(e < 1e-5, "kind %d, tile %lld rows: Y row %d rel err %g", _i,
                          (long long)T, i, e);
            for (int j = out; j < ldy; j++) /* padding untouched */
                ck_assert(Y[(size_t)i * ldy + j] == Y0[(size_t)i * ldy + j]);
            e = rel_err(dX + (size_t)i * ldx, dXref + (size_t)i * ldx, (size_t)in);
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

/* ---- LoRA and DoRA against adapters/common ------------------------------------------------------ */
#ifdef QFT_TWIN_LORA
typedef struct {
    const float *W;
    int64_t out, in;
} dense_base;

static int d_forward(void *ctx, const float *x, int64_t N, float *y, int64_t ldy, float beta,
                     qft_err *err) {
    (void)err;
    const dense_base *d = ctx;
    qft_cpu_gemm(0, 1, (int)N, (int)d->out, (int)d->in, 1.0f, x, (int)d->in, d->W, (int)d->in,
                 beta, y, (int)ldy);
    return 0;
}
static int d_backward_input(void *ctx, const float *dy, int64_t ldy, int64_t N, float *dx,
                            float beta, qft_err *err) {
    (void)err;
    const dense_base *d = ctx;
    qft_cpu_gemm(0, 0, (int)N, (int)d->in, (int)d->out, 1.0f, dy, (int)ldy, d->W, (int)d->in, beta,
                 dx, (int)d->in);
    return 0;
}
static int d_weight_rows(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err) {
    const dense_base *d = ctx;
    if (row0 < 0 || n < 0 || row0 + n > d->out) return qft_err_setf(err, "rows out of range");
    memcpy(dst, d->W + row0 * d->in, (size_t)(n * d->in) * 4);
    return 0;
}

static const qft_services *lora_services(void) {
    static qft_services s;
    s = (qft_services){.abi_version = QFT_ABI_VERSION,
                       .alloc = qft_mem_alloc,
                       .free = qft_mem_free,
                       .rng_seed = qft_rng_seed,
                       .rng_next = qft_rng_next,
                       .ops = qft_cpu_ops()};
    return &s;
}

/* The twin's norm of rows of W + s B A: tiles of T rows, one call each, lanes and tree. */
static void twin_dora_norm(const float *W, const float *A, const float *B, int out, int in, int r,
                           float s, int64_t T, float *tile, float *norm) {
    float *opd[QFT_OPD_COUNT] = {0};
    opd[QFT_OPD_A] = (float *)A, opd[QFT_OPD_B] = (float *)B, opd[QFT_OPD_W] = tile;
    for (int64_t r0 = 0; r0 < out; r0 += T) {
        const int n = (int)(r0 + T < out ? T : out - r0);
        memcpy(tile, W + r0 * in, (size_t)n * in * 4); // (n, in)
        const qft_twin_gemm_call k = qft_twin_dora_norm_tile_call(r0, n, in, r, s);
        run_call(&k, opd);
        for (int i = 0; i < n; i++) {
            double part[QFT_NORM_LANES];
            for (int l = 0; l < QFT_NORM_LANES; l++)
                part[l] = qft_twin_sumsq_lane(tile + (size_t)i * in, in, l);
            for (int off = QFT_NORM_LANES / 2; off > 0; off >>= 1)
                for (int l = 0; l < off; l++) part[l] += part[l + off];
            norm[r0 + i] = (float)sqrt(part[0]);
        }
    }
}

/* _i 0: LoRA, 1: DoRA. Output with a row stride wider than out (the engine's qkv rows). */
START_TEST(test_lora_dora_calls) {
    const int dora = _i, out = 52, in = 300, r = 8, N = 9, ldy = out + 3;
    const float alpha = 16.0f;
    const qft_services *svc = lora_services();
    config_t cfg;
    config_init(&cfg);
    ck_assert(config_read_string(&cfg, "adapter = { rank = 8; alpha = 16.0; norm_tile_rows = 5; };") ==
              CONFIG_TRUE);
    void *state = NULL;
    qft_err err = {0, ""};
    ck_assert_msg(qft_lora_configure(svc, config_lookup(&cfg, "adapter"), dora, &state, &err) == 0,
                  "%s", err.msg);
    const float s = ((qft_lora_config *)state)->scale;
    ck_assert(s == alpha / r);
    float *W = xcalloc((size_t)out * in, 4); // (out, in)
    fill(W, (size_t)out * in, 41, 0.05f);
    dense_base db = {W, out, in};
    qft_linear_base lin = {.name = "model.layers.0.self_attn.q_proj", .module = "q_proj",
                           .layer = 0, .out = out, .in = in, .ctx = &db, .forward = d_forward,
                           .backward_input = d_backward_input, .weight_rows = d_weight_rows};
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np = 0;
    ck_assert_msg(qft_lora_declare(state, &lin, p, &np, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(np, dora ? 3 : 2);
    for (int i = 0; i < np; i++) {
        const size_t k = (size_t)p[i].shape[0] * (size_t)(p[i].ndim > 1 ? p[i].shape[1] : 1);
        p[i].data = xcalloc(k, 4), p[i].grad = xcalloc(k, 4);
        fill(p[i].data, k, 50 + (uint64_t)i, i == 0 ? 0.05f : 0.2f);
        fill(p[i].grad, k, 60 + (uint64_t)i, 0.01f); /* gradients accumulate into these */
    }
    float *A = p[0].data, *B = p[1].data, *m = dora ? p[2].data : NULL;
    if (dora)
        for (int j = 0; j < out; j++) m[j] = 1.0f + 0.5f * fabsf(m[j]);
    qft_adapter_linear *al = NULL;
    ck_assert_msg(qft_lora_attach(state, &lin, p, np, 0, NULL, &al, &err) == 0, "%s", err.msg);

    /* ---- forward: y holds W x, padding columns random ---- */
    float *x = xcalloc((size_t)N * in, 4), *y0 = xcalloc((size_t)N * ldy, 4);
    float *yc = xcalloc((size_t)N * ldy, 4), *yt = xcalloc((size_t)N * ldy, 4);
    float *u = xcalloc((size_t)N * r, 4), *h = xcalloc((size_t)N * out, 4), *f = xcalloc(out, 4);
    fill(x, (size_t)N * in, 42, 1.0f), fill(y0, (size_t)N * ldy, 43, 1.0f);
    qft_cpu_gemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y0, ldy);
    memcpy(yc, y0, (size_t)N * ldy * 4), memcpy(yt, y0, (size_t)N * ldy * 4);
    const qft_adapter_step step = {.seed = 1, .step = 0, .micro = 0, .training = 1};
    ck_assert_msg(qft_lora_forward(al, &step, x, N, yc, ldy, &err) == 0, "%s", err.msg);
    qft_twin_gemm_call k[4];
    float *opd[QFT_OPD_COUNT] = {0};
    opd[QFT_OPD_X] = x, opd[QFT_OPD_A] = A, opd[QFT_OPD_B] = B, opd[QFT_OPD_U] = u;
    opd[QFT_OPD_Y] = yt, opd[QFT_OPD_H] = h;
    if (dora) {
        for (int j = 0; j < out; j++) f[j] = qft_twin_dora_f(m[j], al->norm[j]);
        for (int i = 0; i < N; i++) memcpy(h + (size_t)i * out, yt + (size_t)i * ldy, (size_t)out * 4);
    }
    int nk = qft_twin_lora_fwd_calls(k, dora, N, out, in, r, s, ldy);
    for (int i = 0; i < nk; i++) run_call(&k[i], opd);
    if (dora)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < out; j++)
                yt[(size_t)i * ldy + j] = qft_twin_dora_scale(f[j], h[(size_t)i * out + j]);
    ck_assert_msg(memcmp(yt, yc, (size_t)N * ldy * 4) == 0, "%s forward: y differs (rel err %g)",
                  dora ? "DoRA" : "LoRA", rel_err(yt, yc, (size_t)N * ldy));
    ck_assert(memcmp(u, al->u, (size_t)N * r * 4) == 0);
    if (dora) {
        ck_assert(memcmp(h, al->h, (size_t)N * out * 4) == 0);
        ck_assert(memcmp(f, al->f, (size_t)out * 4) == 0);
        ck_assert(rel_err(yc, y0, (size_t)N * ldy) > 1e-3); /* the adapter changed y */
    }

    /* ---- backward: dy (N, ldy), dx and the gradients accumulated into ---- */
    float *dy0 = xcalloc((size_t)N * ldy, 4), *dyc = xcalloc((size_t)N * ldy, 4);
    float *dyt = xcalloc((size_t)N * ldy, 4), *dxc = xcalloc((size_t)N * in, 4);
    float *dxt = xcalloc((size_t)N * in, 4), *du = xcalloc((size_t)N * r, 4);
    float *gt[3];
    fill(dy0, (size_t)N * ldy, 44, 1.0f), fill(dxc, (size_t)N * in, 45, 0.1f);
    memcpy(dyc, dy0, (size_t)N * ldy * 4), memcpy(dyt, dy0, (size_t)N * ldy * 4);
    memcpy(dxt, dxc, (size_t)N * in * 4);
    for (int i = 0; i < np; i++) {
        const size_t kk = (size_t)p[i].shape[0] * (size_t)(p[i].ndim > 1 ? p[i].shape[1] : 1);
        gt[i] = xcalloc(kk, 4);
        memcpy(gt[i], p[i].grad, kk * 4);
    }
    const float *norm_used = dora ? al->norm : NULL; /* the norm the forward used */
    float *norm_keep = xcalloc(out, 4);
    if (dora) memcpy(norm_keep, norm_used, (size_t)out * 4);
    ck_assert_msg(qft_lora_backward(al, &step, x, dyc, ldy, N, dxc, &err) == 0, "%s", err.msg);
    if (dora) {
        for (int j = 0; j < out; j++)
            gt[2][j] += qft_twin_dora_dm(dyt, ldy, h, out, N, j, norm_keep[j]);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < out; j++)
                dyt[(size_t)i * ldy + j] = qft_twin_dora_scale(f[j], dyt[(size_t)i * ldy + j]);
    }
    memset(opd, 0, sizeof opd);
    opd[QFT_OPD_X] = x, opd[QFT_OPD_A] = A, opd[QFT_OPD_B] = B, opd[QFT_OPD_U] = u;
    opd[QFT_OPD_DY] = dyt, opd[QFT_OPD_DU] = du, opd[QFT_OPD_DA] = gt[0], opd[QFT_OPD_DB] = gt[1];
    opd[QFT_OPD_DX] = dxt;
    nk = qft_twin_lora_bwd_calls(k, N, out, in, r, s, ldy);
    for (int i = 0; i < nk; i++) run_call(&k[i], opd);
    ck_assert_msg(memcmp(dyt, dyc, (size_t)N * ldy * 4) == 0, "dy as backward leaves it differs");
    ck_assert_msg(memcmp(gt[0], p[0].grad, (size_t)r * in * 4) == 0, "dA differs (rel err %g)",
                  rel_err(gt[0], p[0].grad, (size_t)r * in));
    ck_assert_msg(memcmp(gt[1], p[1].grad, (size_t)out * r * 4) == 0, "dB differs (rel err %g)",
                  rel_err(gt[1], p[1].grad, (size_t)out * r));
    ck_assert_msg(memcmp(dxt, dxc, (size_t)N * in * 4) == 0, "dx differs (rel err %g)",
                  rel_err(dxt, dxc, (size_t)N * in));
    if (dora) ck_assert_msg(memcmp(gt[2], p[2].grad, (size_t)out * 4) == 0, "dm differs");

    /* ---- DoRA's exact row norm: twin tiles of 7 rows (the plugin's are 5) ---- */
    if (dora) {
        float *nc = xcalloc(out, 4), *nt = xcalloc(out, 4), *tile = xcalloc((size_t)7 * in + 3, 4);
        ck_assert_msg(qft_lora_row_norms(al, nc, &err) == 0, "%s", err.msg);
        twin_dora_norm(W, A, B, out, in, r, s, 7, tile, nt);
        int exact = 0;
        for (int j = 0; j < out; j++) {
            /* both sum squares in double; the tile GEMMs (5 vs 7 rows) may round an element
             * of W + s B A differently, so allow 2 ulp */
            ck_assert_msg(fabsf(nt[j] - nc[j]) <= 2.4e-7f * nc[j], "row %d: twin %.9g plugin %.9g",
                          j, (double)nt[j], (double)nc[j]);
            exact += nt[j] == nc[j];
        }
        /* and the expansion the plugin's forward used agrees to fp32 rounding */
        ck_assert_msg(rel_err(norm_keep, nc, (size_t)out) < 1e-6, "expanded norm rel err %g",
                      rel_err(norm_keep, nc, (size_t)out));
        printf("DoRA row norms: twin = plugin exactly on %d of %d rows\n", exact, out);
        free(nc), free(nt), free(tile);
    }
    qft_lora_detach(al);
    qft_lora_close(state);
    config_destroy(&cfg);
    for (int i = 0; i < np; i++) free(p[i].data), free(p[i].grad), free(gt[i]);
    free(W), free(x), free(y0), free(yc), free(yt), free(u), free(h), free(f);
    free(dy0), free(dyc), free(dyt), free(dxc), free(dxt), free(du), free(norm_keep);
}
END_TEST
#endif

void twin_linear_add_tests(TCase *tc) {
#ifdef QFT_TWIN_HQQ
    tcase_add_loop_test(tc, test_hqq_vs_plugin, 0, 16);
#else
    printf("HQQ twin: skipped, the hqq plugin is not in this build\n");
#endif
    tcase_add_loop_test(tc, test_qlinear_tiles, 0, 2);
#ifdef QFT_TWIN_LORA
    tcase_add_loop_test(tc, test_lora_dora_calls, 0, 2);
#else
    printf("LoRA/DoRA twin: skipped, adapters/common is not in this build\n");
#endif
}
