/* The CUDA linear path on a GPU against the CPU plugins (part of test_cuda_ops, which
 * skips without a device):
 *   - qft_cuda_hqq_dequantize, fp32 and bf16, against the hqq plugin's dequantize_rows on
 *     weights it quantized: every bit width, both axes, with and without meta
 *     quantization; exact (bf16: the plugin's value rounded to nearest even);
 *   - qft_cuda_qlinear_fwd / _bwd_input for NF4, HQQ and dense bf16 weights, whole-weight
 *     scratch and row tiles, against the CPU GEMM over the same bf16-rounded weight and
 *     input: 1e-4 for fp32 outputs (fp32 accumulation in another order), 1e-2 for bf16
 *     outputs (one bf16 rounding); and the refusals (scratch too small, tiled bf16 dX).
 * LoRA and DoRA run through the table's generic entries, tested in test_cuda_ops_adapt.c. */
#include "ops_suites.h"

#include "cpu_ops.h"
#include "cuda_test_util.h"
#include "cuda_twin.h"
#include "qft_base.h"
#include "qft_cuda.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef QFT_TWIN_HQQ
#include "cuda_test_hqq.h"
#endif

static const qft_ops *G;

static void dfree(const void *d) {
    if (d) G->free((void *)d);
}

/* bf16 copies of host floats, on the host. */
static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *b = ctu_calloc(n, 2);
    for (size_t i = 0; i < n; i++) b[i] = qft_f32_to_bf16(x[i]);
    return b;
}

/* ---- HQQ on the device -------------------------------------------------------------------- */
#ifdef QFT_TWIN_HQQ
/* The plugin's weight uploaded; the device buffers are freed by hqq_dev_free. */
static qft_cuda_hqq hqq_dev(const struct qft_qweight *qw) {
    const size_t G_ = (size_t)qw->n_groups;
    qft_cuda_hqq w;
    memset(&w, 0, sizeof w);
    w.packed = ops_dup(qw->packed, qw->packed_bytes);
    if (qw->quant_zero) {
        w.zero_q = ops_dup(qw->zero_q, G_);
        w.zero_meta[0] = qw->zero_meta[0], w.zero_meta[1] = qw->zero_meta[1];
    } else {
        w.zero = ops_dup(qw->zero, G_ * 4);
    }
    if (qw->quant_scale) {
        w.scale_q = ops_dup(qw->scale_q, G_);
        w.scale_meta = ops_dup(qw->scale_meta, 2 * (G_ / QFT_HQQ_META_GROUP) * 4);
    } else {
        w.scale = ops_dup(qw->scale, G_ * 4);
    }
    w.nbits = qw->nbits, w.group_size = qw->group_size, w.axis = qw->axis, w.n = qw->n;
    return w;
}
static void hqq_dev_free(qft_cuda_hqq *w) {
    dfree(w->packed), dfree(w->zero), dfree(w->zero_q), dfree(w->scale), dfree(w->scale_q);
    dfree(w->scale_meta);
}

START_TEST(test_hqq_dequantize) {
    static const int bits[4] = {8, 4, 3, 2};
    cth_case c = {bits[_i / 4], (_i / 2) % 2, _i % 2, 0, 0, 0};
    if (c.meta)
        c.gs = 64, c.out = 384, c.in = 512; /* 3072 groups, multiple of 128 */
    else
        c.gs = 32, c.out = 262, c.in = 256; /* 2096 groups, 3-bit words part-filled */
    struct qft_qweight *qw = cth_quantize(&c, 2000 + (uint64_t)_i);
    const int64_t n = qw->n;
    float *ref = ctu_calloc((size_t)n, 4), *got = ctu_calloc((size_t)n, 4);
    uint16_t *gotb = ctu_calloc((size_t)n, 2);
    qft_err err = {0, ""};
    ck_assert(cth_plugin()->dequantize_rows(qw, 0, c.out, ref, &err) == 0);
    qft_cuda_hqq w = hqq_dev(qw);
    float *d = G->alloc((size_t)n * 4, "t");
    uint16_t *db = G->alloc((size_t)n * 2, "t");
    ck_assert_msg(qft_cuda_hqq_dequantize(&w, 0, n, d, QFT_DT_F32, &err) == 0, "%s", err.msg);
    const int64_t f0 = 1001, cnt = n - f0 - 7; /* odd start inside a group, short of the end */
    ck_assert_msg(qft_cuda_hqq_dequantize(&w, f0, cnt, db, QFT_DT_BF16, &err) == 0, "%s", err.msg);
    ck_assert_int_ne(qft_cuda_hqq_dequantize(&w, n - 3, 4, d, QFT_DT_F32, &err), 0);
    ops_get(got, d, (size_t)n * 4), ops_get(gotb, db, (size_t)cnt * 2);
    ops_synced();
    for (int64_t f = 0; f < n; f++)
        ck_assert_msg(memcmp(&got[f], &ref[f], 4) == 0, "nbits %d axis %d meta %d: element %lld "
                      "gpu %.9g plugin %.9g", c.nbits, c.axis, c.meta, (long long)f,
                      (double)got[f], (double)ref[f]);
    for (int64_t e = 0; e < cnt; e++) ck_assert(gotb[e] == qft_f32_to_bf16(ref[f0 + e]));
    /* the op table's entry over the plugin's own layout, its buffers copied to the device,
     * rows [1, out - 1): the plugin's bits, and the CPU backend's entry's */
    if (cth_plugin()->layout) {
        qft_qlayout hl, dl;
        ck_assert_msg(cth_plugin()->layout(qw, &hl, &err) == 0, "%s", err.msg);
        dl = hl;
        for (int i = 0; i < QFT_QLAYOUT_MAX_BUFS; i++)
            if (hl.buf[i]) dl.buf[i] = ops_dup(hl.buf[i], hl.bytes[i]);
        const int64_t r0 = 1, nr = c.out - 2, in = c.in;
        float *cpu = ctu_calloc((size_t)(nr * in), 4); // (nr, in)
        qft_cpu_dequantize(&hl, r0, nr, cpu);
        ck_assert(memcmp(cpu, ref + r0 * in, (size_t)(nr * in) * 4) == 0);
        G->dequantize(&dl, r0, nr, d);
        ops_get(got, d, (size_t)(nr * in) * 4);
        ops_synced();
        for (int64_t e = 0; e < nr * in; e++)
            ck_assert_msg(memcmp(&got[e], &cpu[e], 4) == 0, "nbits %d axis %d meta %d: dequantize "
                          "entry, element %lld: gpu %.9g cpu %.9g", c.nbits, c.axis, c.meta,
                          (long long)(r0 * in + e), (double)got[e], (double)cpu[e]);
        for (int i = 0; i < QFT_QLAYOUT_MAX_BUFS; i++) dfree(dl.buf[i]);
        free(cpu);
    }
    hqq_dev_free(&w);
    dfree(d), dfree(db);
    cth_plugin()->free_weight(qw);
    free(ref), free(got), free(gotb);
}
END_TEST
#endif

/* ---- the quantized linear ----------------------------------------------------------------- */
static const float nf4_code[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f,
                                   -0.39491748809814453f, -0.28444138169288635f,
                                   -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                   0.07958029955625534f, 0.16093020141124725f,
                                   0.24611230194568634f, 0.33791524171829224f,
                                   0.44070982933044434f, 0.5626170039176941f,
                                   0.7229568362236023f, 1.0f};

/* A random NF4 weight of n elements (a multiple of 64; blocks of 64 over the flattened
 * weight, plain fp32 absmax) on the device, its three buffers in dev[0..2], and in Wf (n)
 * the values the GPU decodes, rounded to bf16. */
static qft_cuda_nf4 nf4_random(int64_t n, uint64_t seed, float *Wf, void *dev[3]) {
    uint8_t *packed = ctu_calloc((size_t)n / 2, 1);
    float *absmax = ctu_calloc((size_t)n / 64, 4);
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (int64_t i = 0; i < n / 2; i++) packed[i] = (uint8_t)qft_rng_next(&r);
    for (int64_t b = 0; b < n / 64; b++) absmax[b] = 0.01f + 0.1f * (float)qft_rng_uniform(&r);
    for (int64_t i = 0; i < n; i++) {
        const int q = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4;
        Wf[i] = ctu_bf16_round(nf4_code[q] * absmax[i / 64]);
    }
    dev[0] = ops_dup(packed, (size_t)n / 2), dev[1] = ops_dup(nf4_code, 64);
    dev[2] = ops_dup(absmax, (size_t)n / 64 * 4);
    free(packed), free(absmax);
    return (qft_cuda_nf4){dev[0], dev[1], dev[2], NULL, NULL, NULL, 0.0f, 64, n};
}

/* Y = X W^T + 0.5 Y and dX = dY W + 0.5 dX through the on-chip kernels, X and dY (N, ld*)
 * bf16 on the device, against the CPU GEMM over the same bf16 values (Yref, dXref computed
 * by the caller from Y0, dX0): fp32 accumulation in another order, 1e-4; the columns past
 * out and in are untouched. */
static void check_onchip(const qft_cuda_weight *w, const uint16_t *dXb, int ldx, const uint16_t *dYb,
                         int ldg, int N, const float *Y0, int ldy, const float *dX0,
                         const float *Yref, const float *dXref) {
    qft_err err = {0, ""};
    float *dY = ops_dup(Y0, (size_t)N * ldy * 4), *dX = ops_dup(dX0, (size_t)N * ldx * 4);
    float *got = ctu_calloc((size_t)N * (ldx > ldy ? ldx : ldy), 4);
    ck_assert_msg(qft_cuda_qgemm_onchip_fwd(w, dXb, N, ldx, dY, ldy, 0.5f, &err) == 0, "%s",
                  err.msg);
    ck_assert_msg(qft_cuda_qgemm_onchip_bwd(w, dYb, ldg, N, dX, ldx, 0.5f, &err) == 0, "%s",
                  err.msg);
    ops_get(got, dY, (size_t)N * ldy * 4);
    ops_synced();
    for (int i = 0; i < N; i++) {
        CTU_CHECK_ERR(got + (size_t)i * ldy, Yref + (size_t)i * ldy, (size_t)w->out, 1e-4,
                      "on-chip Y");
        for (int j = w->out; j < ldy; j++) ck_assert(got[(size_t)i * ldy + j] == Y0[(size_t)i * ldy + j]);
    }
    ops_get(got, dX, (size_t)N * ldx * 4);
    ops_synced();
    for (int i = 0; i < N; i++) {
        CTU_CHECK_ERR(got + (size_t)i * ldx, dXref + (size_t)i * ldx, (size_t)w->in, 1e-4,
                      "on-chip dX");
        for (int j = w->in; j < ldx; j++) ck_assert(got[(size_t)i * ldx + j] == dX0[(size_t)i * ldx + j]);
    }
    dfree(dY), dfree(dX);
    free(got);
}

/* _i 0: NF4 (block 64), 1: HQQ 4-bit axis 1, 2: dense bf16. */
START_TEST(test_qlinear) {
    const int out = 200, in = 256, N = 33, ldx = in + 8, ldy = out + 8, ldg = out + 8;
    const int64_t n = (int64_t)out * in;
    float *Wf = ctu_calloc((size_t)n, 4); /* the weight as the GPU sees it, bf16-rounded */
    qft_cuda_weight w = {NULL, NULL, NULL, out, in};
    qft_cuda_nf4 nf4;
    void *dev_bufs[4] = {NULL, NULL, NULL, NULL};
#ifdef QFT_TWIN_HQQ
    qft_cuda_hqq hq;
    struct qft_qweight *qw = NULL;
#endif
    qft_err err = {0, ""};
    if (_i == 0) {
        nf4 = nf4_random(n, 101, Wf, dev_bufs);
        w.nf4 = &nf4;
    } else if (_i == 1) {
#ifdef QFT_TWIN_HQQ
        const cth_case c = {4, 1, 0, 64, out, in};
        qw = cth_quantize(&c, 102);
        ck_assert(cth_plugin()->dequantize_rows(qw, 0, out, Wf, &err) == 0);
        for (int64_t i = 0; i < n; i++) Wf[i] = ctu_bf16_round(Wf[i]);
        hq = hqq_dev(qw);
        w.hqq = &hq;
#else
        printf("qlinear (HQQ): skipped, the hqq plugin is not in this build\n");
        free(Wf);
        return;
#endif
    } else {
        ctu_fill(Wf, (size_t)n, 103, 0.05f);
        uint16_t *Wb = to_bf16(Wf, (size_t)n);
        for (int64_t i = 0; i < n; i++) Wf[i] = qft_bf16_to_f32(Wb[i]);
        dev_bufs[3] = ops_dup(Wb, (size_t)n * 2);
        w.bf16 = dev_bufs[3];
        free(Wb);
    }
    float *X = ctu_calloc((size_t)N * ldx, 4), *dY = ctu_calloc((size_t)N * ldg, 4);
    float *Y0 = ctu_calloc((size_t)N * ldy, 4), *dX0 = ctu_calloc((size_t)N * ldx, 4);
    float *Yref = ctu_calloc((size_t)N * ldy, 4), *dXref = ctu_calloc((size_t)N * ldx, 4);
    float *got = ctu_calloc((size_t)N * (ldx > ldy ? ldx : ldy), 4);
    uint16_t *gotb = ctu_calloc((size_t)N * (ldx > ldy ? ldx : ldy), 2);
    ctu_fill(X, (size_t)N * ldx, 104, 1.0f), ctu_fill(dY, (size_t)N * ldg, 105, 1.0f);
    ctu_fill(Y0, (size_t)N * ldy, 106, 1.0f), ctu_fill(dX0, (size_t)N * ldx, 107, 1.0f);
    uint16_t *Xb = to_bf16(X, (size_t)N * ldx), *dYb = to_bf16(dY, (size_t)N * ldg);
    for (int i = 0; i < N * ldx; i++) X[i] = qft_bf16_to_f32(Xb[i]);
    for (int i = 0; i < N * ldg; i++) dY[i] = qft_bf16_to_f32(dYb[i]);
    memcpy(Yref, Y0, (size_t)N * ldy * 4), memcpy(dXref, dX0, (size_t)N * ldx * 4);
    qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wf, in, 0.5f, Yref, ldy);
    qft_cpu_gemm(0, 0, N, in, out, 1.0f, dY, ldg, Wf, in, 0.5f, dXref, ldx);
    uint16_t *dXb_ = ops_dup(Xb, (size_t)N * ldx * 2), *ddYb = ops_dup(dYb, (size_t)N * ldg * 2);
    if (!w.bf16) check_onchip(&w, dXb_, ldx, ddYb, ldg, N, Y0, ldy, dX0, Yref, dXref);
    float *dYo = G->alloc((size_t)N * ldy * 4, "t"), *dXo = G->alloc((size_t)N * ldx * 4, "t");
    uint16_t *dYob = G->alloc((size_t)N * ldy * 2, "t"), *dXob = G->alloc((size_t)N * ldx * 2, "t");
    uint16_t *scratch = G->alloc((size_t)n * 2, "t");
    /* the whole weight, then tiles of 64 rows (the last of 8) */
    const int64_t sizes[2] = {n, 64 * (int64_t)in + 100};
    for (int si = 0; si < 2; si++) {
        ck_assert_msg(qft_cuda_upload(dYo, Y0, (size_t)N * ldy * 4, &err) == 0, "%s", err.msg);
        ck_assert(qft_cuda_upload(dXo, dX0, (size_t)N * ldx * 4, &err) == 0);
        ck_assert_msg(qft_cuda_qlinear_fwd(&w, dXb_, N, ldx, dYo, QFT_DT_F32, ldy, 0.5f, scratch,
                                           sizes[si], &err) == 0, "%s", err.msg);
        ck_assert_msg(qft_cuda_qlinear_bwd_input(&w, ddYb, ldg, N, dXo, QFT_DT_F32, ldx, 0.5f,
                                                 scratch, sizes[si], &err) == 0, "%s", err.msg);
        ops_get(got, dYo, (size_t)N * ldy * 4);
        ops_synced();
        for (int i = 0; i < N; i++) {
            CTU_CHECK_ERR(got + (size_t)i * ldy, Yref + (size_t)i * ldy, (size_t)out, 1e-4, "qlinear Y");
            for (int j = out; j < ldy; j++) ck_assert(got[(size_t)i * ldy + j] == Y0[(size_t)i * ldy + j]);
        }
        ops_get(got, dXo, (size_t)N * ldx * 4);
        ops_synced();
        for (int i = 0; i < N; i++)
            CTU_CHECK_ERR(got + (size_t)i * ldx, dXref + (size_t)i * ldx, (size_t)in, 1e-4, "qlinear dX");
        /* bf16 outputs, beta 0 (Y = X W^T alone) */
        ck_assert_msg(qft_cuda_qlinear_fwd(&w, dXb_, N, ldx, dYob, QFT_DT_BF16, ldy, 0.0f, scratch,
                                           sizes[si], &err) == 0, "%s", err.msg);
        ops_get(gotb, dYob, (size_t)N * ldy * 2);
        ops_synced();
        memset(Yref, 0, (size_t)N * ldy * 4);
        qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wf, in, 0.0f, Yref, ldy);
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < out; j++) got[j] = qft_bf16_to_f32(gotb[(size_t)i * ldy + j]);
            CTU_CHECK_ERR(got, Yref + (size_t)i * ldy, (size_t)out, 1e-2, "qlinear Y bf16");
        }
        memcpy(Yref, Y0, (size_t)N * ldy * 4);
        qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wf, in, 0.5f, Yref, ldy);
        const int whole = sizes[si] >= n || w.bf16;
        const int rc = qft_cuda_qlinear_bwd_input(&w, ddYb, ldg, N, dXob, QFT_DT_BF16, ldx, 0.0f,
                                                  scratch, sizes[si], &err);
        if (!whole) {
            ck_assert_int_ne(rc, 0); /* tiles would round partial sums to bf16 */
            ck_assert_msg(strstr(err.msg, "bf16 dX") != NULL, "%s", err.msg);
        } else {
            ck_assert_msg(rc == 0, "%s", err.msg);
            ops_get(gotb, dXob, (size_t)N * ldx * 2);
            ops_synced();
            float *ref0 = ctu_calloc((size_t)N * in, 4);
            qft_cpu_gemm(0, 0, N, in, out, 1.0f, dY, ldg, Wf, in, 0.0f, ref0, in);
            for (int i = 0; i < N; i++) {
                for (int j = 0; j < in; j++) got[j] = qft_bf16_to_f32(gotb[(size_t)i * ldx + j]);
                CTU_CHECK_ERR(got, ref0 + (size_t)i * in, (size_t)in, 1e-2, "qlinear dX bf16");
            }
            free(ref0);
        }
    }
    if (!w.bf16) { /* a scratch under 8 rows is refused, naming the minimum */
        ck_assert_int_ne(qft_cuda_qlinear_fwd(&w, dXb_, N, ldx, dYo, QFT_DT_F32, ldy, 0.0f, scratch,
                                              7 * (int64_t)in, &err), 0);
        ck_assert_msg(strstr(err.msg, "fewer than 8 rows") != NULL, "%s", err.msg);
    }
    ck_assert_int_eq(qft_cuda_status(&err), 0);
#ifdef QFT_TWIN_HQQ
    if (w.hqq) hqq_dev_free(&hq), cth_plugin()->free_weight(qw);
#endif
    for (int i = 0; i < 4; i++) dfree(dev_bufs[i]);
    dfree(dXb_), dfree(ddYb), dfree(dYo), dfree(dXo), dfree(dYob), dfree(dXob), dfree(scratch);
    free(Wf), free(X), free(dY), free(Y0), free(dX0), free(Yref), free(dXref), free(got);
    free(gotb), free(Xb), free(dYb);
}
END_TEST

/* The on-chip kernels on NF4 weights of shapes that leave partial tiles everywhere: rows of
 * X, W's rows and columns, K steps of 32 (in = 40), and NF4 blocks that run across W's rows
 * (in not a multiple of 64); then a dense bf16 weight is refused. */
START_TEST(test_qgemm_onchip) {
    static const int shapes[4][3] = {{72, 40, 19}, {130, 96, 70}, {64, 64, 64}, {1, 128, 129}};
    const int out = shapes[_i][0], in = shapes[_i][1], N = shapes[_i][2];
    const int ldx = in + 3, ldg = out + 5, ldy = out + 2;
    const int64_t n = (int64_t)out * in;
    float *Wf = ctu_calloc((size_t)n, 4);
    void *dev[3];
    qft_cuda_nf4 nf4 = nf4_random(n, 300 + (uint64_t)_i, Wf, dev);
    qft_cuda_weight w = {&nf4, NULL, NULL, out, in};
    float *X = ctu_calloc((size_t)N * ldx, 4), *dY = ctu_calloc((size_t)N * ldg, 4);
    float *Y0 = ctu_calloc((size_t)N * ldy, 4), *dX0 = ctu_calloc((size_t)N * ldx, 4);
    ctu_fill(X, (size_t)N * ldx, 311, 1.0f), ctu_fill(dY, (size_t)N * ldg, 312, 1.0f);
    ctu_fill(Y0, (size_t)N * ldy, 313, 1.0f), ctu_fill(dX0, (size_t)N * ldx, 314, 1.0f);
    uint16_t *Xb = to_bf16(X, (size_t)N * ldx), *dYb = to_bf16(dY, (size_t)N * ldg);
    for (int i = 0; i < N * ldx; i++) X[i] = qft_bf16_to_f32(Xb[i]);
    for (int i = 0; i < N * ldg; i++) dY[i] = qft_bf16_to_f32(dYb[i]);
    float *Yref = ctu_calloc((size_t)N * ldy, 4), *dXref = ctu_calloc((size_t)N * ldx, 4);
    memcpy(Yref, Y0, (size_t)N * ldy * 4), memcpy(dXref, dX0, (size_t)N * ldx * 4);
    qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wf, in, 0.5f, Yref, ldy);
    qft_cpu_gemm(0, 0, N, in, out, 1.0f, dY, ldg, Wf, in, 0.5f, dXref, ldx);
    uint16_t *dXb = ops_dup(Xb, (size_t)N * ldx * 2), *ddYb = ops_dup(dYb, (size_t)N * ldg * 2);
    check_onchip(&w, dXb, ldx, ddYb, ldg, N, Y0, ldy, dX0, Yref, dXref);
    qft_err err = {0, ""};
    const qft_cuda_weight dense = {NULL, NULL, dXb, out, in};
    ck_assert_int_ne(qft_cuda_qgemm_onchip_fwd(&dense, dXb, N, ldx, Yref, ldy, 0.0f, &err), 0);
    ck_assert_msg(strstr(err.msg, "nf4 or hqq") != NULL, "%s", err.msg);
    printf("on-chip NF4 GEMMs (%d, %d) x %d rows: within 1e-4 of the CPU\n", out, in, N);
    for (int i = 0; i < 3; i++) dfree(dev[i]);
    dfree(dXb), dfree(ddYb);
    free(Wf), free(X), free(dY), free(Y0), free(dX0), free(Xb), free(dYb), free(Yref), free(dXref);
}
END_TEST

/* lowrank_row_norms (DoRA's norms in one read of W) on an NF4 layout (_i 0, 1: ranks 4 and
 * 16) or an HQQ one (_i 2: 4 bits, groups of 64 along the rows, so a row of 320 holds 5
 * groups and the grouped matrix is not (out, in)) and on the dense fp32 weight it decodes
 * to, 38 rows (a partial block of rows) of 320 (a partial pass of columns): the two GPU
 * paths give the same bits, and the CPU entry's within one float rounding (the same
 * elements; the squares summed in double in another order). */
START_TEST(test_lowrank_row_norms) {
    const int64_t out = 38, in = 320, r = _i == 1 ? 16 : 4; /* 38 * 320: blocks of 64 */
    const float s = 0.5f;
    float *Wf = ctu_calloc((size_t)(out * in), 4);
    void *dev[3] = {NULL, NULL, NULL};
    qft_qlayout L;
    memset(&L, 0, sizeof L);
    L.out = out, L.in = in;
#ifdef QFT_TWIN_HQQ
    qft_cuda_hqq hq;
    memset(&hq, 0, sizeof hq);
#endif
    if (_i < 2) {
        qft_cuda_nf4 nf4 = nf4_random(out * in, 400 + (uint64_t)_i, Wf, dev);
        L.format = QFT_QFMT_NF4, L.nf4_blocksize = nf4.blocksize;
        L.buf[QFT_QL_NF4_PACKED] = nf4.packed, L.buf[QFT_QL_NF4_CODE] = nf4.code;
        L.buf[QFT_QL_NF4_ABSMAX] = nf4.absmax;
    } else {
#ifdef QFT_TWIN_HQQ
        const cth_case c = {4, 1, 0, 64, out, in};
        struct qft_qweight *qw = cth_quantize(&c, 402);
        hq = hqq_dev(qw);
        cth_plugin()->free_weight(qw);
        L.format = QFT_QFMT_HQQ, L.hqq_nbits = hq.nbits, L.hqq_group_size = hq.group_size;
        L.hqq_axis = hq.axis;
        L.buf[QFT_QL_HQQ_PACKED] = hq.packed, L.buf[QFT_QL_HQQ_ZERO] = hq.zero;
        L.buf[QFT_QL_HQQ_SCALE] = hq.scale;
#else
        printf("lowrank_row_norms (HQQ): skipped, the hqq plugin is not in this build\n");
        free(Wf);
        return;
#endif
    }
    float *W = ctu_calloc((size_t)(out * in), 4), *dW = G->alloc((size_t)(out * in) * 4, "t");
    ck_assert_ptr_nonnull(dW);
    G->dequantize(&L, 0, out, dW);
    ops_get(W, dW, (size_t)(out * in) * 4);
    float *A = ctu_calloc((size_t)(r * in), 4), *B = ctu_calloc((size_t)(out * r), 4);
    ctu_fill(A, (size_t)(r * in), 410, 0.1f), ctu_fill(B, (size_t)(out * r), 411, 0.05f);
    float *dA = ops_dup(A, (size_t)(r * in) * 4), *dB = ops_dup(B, (size_t)(out * r) * 4);
    float *dn = G->alloc((size_t)out * 4, "t");
    ck_assert_ptr_nonnull(dn);
    float *got = ctu_calloc((size_t)out, 4), *got2 = ctu_calloc((size_t)out, 4);
    float *ref = ctu_calloc((size_t)out, 4);
    G->lowrank_row_norms(dn, &L, NULL, out, in, dA, dB, r, s);
    ops_get(got, dn, (size_t)out * 4);
    G->lowrank_row_norms(dn, NULL, dW, out, in, dA, dB, r, s);
    ops_get(got2, dn, (size_t)out * 4);
    ops_synced();
    ck_assert(memcmp(got, got2, (size_t)out * 4) == 0);
    /* the generic fallback (QFT_CUDA_LOWRANK=tiles): its GEMM sums s B A in another order */
    qft_cuda_set_lowrank_tiles(1);
    G->lowrank_row_norms(dn, &L, NULL, out, in, dA, dB, r, s);
    qft_cuda_set_lowrank_tiles(0);
    ops_get(got2, dn, (size_t)out * 4);
    ops_synced();
    for (int64_t j = 0; j < out; j++)
        ck_assert_msg(fabs((double)got2[j] - got[j]) <= 1e-5 * got[j], "row %lld: tiles %.9g, "
                      "one pass %.9g", (long long)j, got2[j], got[j]);
    qft_cpu_lowrank_row_norms(ref, NULL, W, out, in, A, B, r, s);
    for (int64_t j = 0; j < out; j++)
        ck_assert_msg(ref[j] > 0 && fabs((double)got[j] - ref[j]) <= 1.2e-7 * ref[j],
                      "row %lld rank %lld: gpu %.9g cpu %.9g", (long long)j, (long long)r,
                      got[j], ref[j]);
    for (int i = 0; i < 3; i++) dfree(dev[i]);
#ifdef QFT_TWIN_HQQ
    if (_i == 2) hqq_dev_free(&hq);
#endif
    dfree(dW), dfree(dA), dfree(dB), dfree(dn);
    free(Wf), free(W), free(A), free(B), free(got), free(got2), free(ref);
}
END_TEST

void ops_linear_add_tests(TCase *tc, const qft_ops *gpu) {
    G = gpu;
#ifdef QFT_TWIN_HQQ
    tcase_add_loop_test(tc, test_hqq_dequantize, 0, 16);
#else
    printf("HQQ on the GPU: skipped, the hqq plugin is not in this build\n");
#endif
    tcase_add_loop_test(tc, test_qlinear, 0, 3);
    tcase_add_loop_test(tc, test_qgemm_onchip, 0, 4);
    tcase_add_loop_test(tc, test_lowrank_row_norms, 0, 3);
}
