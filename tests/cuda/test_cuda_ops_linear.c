/* The CUDA linear path on a GPU against the CPU plugins (part of test_cuda_ops, which
 * skips without a device):
 *   - qft_cuda_hqq_dequantize, fp32 and bf16, against the hqq plugin's dequantize_rows on
 *     weights it quantized: every bit width, both axes, with and without meta
 *     quantization; exact (bf16: the plugin's value rounded to nearest even);
 *   - qft_cuda_qlinear_fwd / _bwd_input for NF4, HQQ and dense bf16 weights, whole-weight
 *     scratch and row tiles, against the CPU GEMM over the same bf16-rounded weight and
 *     input: 1e-4 for fp32 outputs (fp32 accumulation in another order), 1e-2 for bf16
 *     outputs (one bf16 rounding); and the refusals (scratch too small, tiled bf16 dX);
 *   - qft_cuda_lora_fwd / _bwd and qft_cuda_dora_norm against adapters/common's LoRA and
 *     DoRA on the CPU: 1e-5 (fp32 GEMMs in another order; the GPU's DoRA norm is the exact
 *     one where the CPU's forward uses its expansion, which agree to about 1e-7). */
#include "ops_suites.h"

#include "cpu_ops.h"
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
#ifdef QFT_TWIN_LORA
#include "lora_common.h"
#endif

static const qft_ops *G;

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

static void *hcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void synced(void) {
    qft_err err = {0, ""};
    ck_assert_msg(qft_cuda_sync(&err) == 0, "%s", err.msg);
}

static void *dup_dev(const void *h, size_t bytes) {
    qft_err err = {0, ""};
    void *d = G->alloc(bytes, "test");
    ck_assert_ptr_nonnull(d);
    ck_assert_msg(qft_cuda_upload(d, h, bytes, &err) == 0, "%s", err.msg);
    return d;
}
static void get(void *h, const void *d, size_t bytes) {
    qft_err err = {0, ""};
    ck_assert_msg(qft_cuda_download(h, d, bytes, &err) == 0, "%s", err.msg);
}
static void dfree(const void *d) {
    if (d) G->free((void *)d);
}

static float bf16_round(float v) { return qft_bf16_to_f32(qft_f32_to_bf16(v)); }

/* bf16 copies of host floats, on the host. */
static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *b = hcalloc(n, 2);
    for (size_t i = 0; i < n; i++) b[i] = qft_f32_to_bf16(x[i]);
    return b;
}

#define CHECK_ERR(got, ref, n, tol, what)                                                     \
    do {                                                                                      \
        double e_ = rel_err(got, ref, n);                                                     \
        ck_assert_msg(e_ < (tol), "%s: rel err %g (tolerance %g)", what, e_, (double)(tol));  \
    } while (0)

/* ---- HQQ on the device -------------------------------------------------------------------- */
#ifdef QFT_TWIN_HQQ
/* The plugin's weight uploaded; the device buffers are freed by hqq_dev_free. */
static qft_cuda_hqq hqq_dev(const struct qft_qweight *qw) {
    const size_t G_ = (size_t)qw->n_groups;
    qft_cuda_hqq w;
    memset(&w, 0, sizeof w);
    w.packed = dup_dev(qw->packed, qw->packed_bytes);
    if (qw->quant_zero) {
        w.zero_q = dup_dev(qw->zero_q, G_);
        w.zero_meta[0] = qw->zero_meta[0], w.zero_meta[1] = qw->zero_meta[1];
    } else {
        w.zero = dup_dev(qw->zero, G_ * 4);
    }
    if (qw->quant_scale) {
        w.scale_q = dup_dev(qw->scale_q, G_);
        w.scale_meta = dup_dev(qw->scale_meta, 2 * (G_ / QFT_HQQ_META_GROUP) * 4);
    } else {
        w.scale = dup_dev(qw->scale, G_ * 4);
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
    float *ref = hcalloc((size_t)n, 4), *got = hcalloc((size_t)n, 4);
    uint16_t *gotb = hcalloc((size_t)n, 2);
    qft_err err = {0, ""};
    ck_assert(cth_plugin()->dequantize_rows(qw, 0, c.out, ref, &err) == 0);
    qft_cuda_hqq w = hqq_dev(qw);
    float *d = G->alloc((size_t)n * 4, "t");
    uint16_t *db = G->alloc((size_t)n * 2, "t");
    ck_assert_msg(qft_cuda_hqq_dequantize(&w, 0, n, d, QFT_DT_F32, &err) == 0, "%s", err.msg);
    const int64_t f0 = 1001, cnt = n - f0 - 7; /* odd start inside a group, short of the end */
    ck_assert_msg(qft_cuda_hqq_dequantize(&w, f0, cnt, db, QFT_DT_BF16, &err) == 0, "%s", err.msg);
    ck_assert_int_ne(qft_cuda_hqq_dequantize(&w, n - 3, 4, d, QFT_DT_F32, &err), 0);
    get(got, d, (size_t)n * 4), get(gotb, db, (size_t)cnt * 2);
    synced();
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
            if (hl.buf[i]) dl.buf[i] = dup_dev(hl.buf[i], hl.bytes[i]);
        const int64_t r0 = 1, nr = c.out - 2, in = c.in;
        float *cpu = hcalloc((size_t)(nr * in), 4); // (nr, in)
        qft_cpu_dequantize(&hl, r0, nr, cpu);
        ck_assert(memcmp(cpu, ref + r0 * in, (size_t)(nr * in) * 4) == 0);
        G->dequantize(&dl, r0, nr, d);
        get(got, d, (size_t)(nr * in) * 4);
        synced();
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

/* _i 0: NF4 (block 64), 1: HQQ 4-bit axis 1, 2: dense bf16. */
START_TEST(test_qlinear) {
    const int out = 200, in = 256, N = 33, ldx = in + 8, ldy = out + 8, ldg = out + 8;
    const int64_t n = (int64_t)out * in;
    float *Wf = hcalloc((size_t)n, 4); /* the weight as the GPU sees it, bf16-rounded */
    qft_cuda_weight w = {NULL, NULL, NULL, out, in};
    qft_cuda_nf4 nf4;
    void *dev_bufs[4] = {NULL, NULL, NULL, NULL};
#ifdef QFT_TWIN_HQQ
    qft_cuda_hqq hq;
    struct qft_qweight *qw = NULL;
#endif
    qft_err err = {0, ""};
    if (_i == 0) {
        uint8_t *packed = hcalloc((size_t)n / 2, 1);
        float *absmax = hcalloc((size_t)n / 64, 4);
        qft_rng r;
        qft_rng_seed(&r, 101);
        for (int64_t i = 0; i < n / 2; i++) packed[i] = (uint8_t)qft_rng_next(&r);
        for (int64_t b = 0; b < n / 64; b++) absmax[b] = 0.01f + 0.1f * (float)qft_rng_uniform(&r);
        for (int64_t i = 0; i < n; i++) {
            const int q = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4;
            Wf[i] = bf16_round(nf4_code[q] * absmax[i / 64]);
        }
        dev_bufs[0] = dup_dev(packed, (size_t)n / 2), dev_bufs[1] = dup_dev(nf4_code, 64);
        dev_bufs[2] = dup_dev(absmax, (size_t)n / 64 * 4);
        nf4 = (qft_cuda_nf4){dev_bufs[0], dev_bufs[1], dev_bufs[2], NULL, NULL, NULL, 0.0f, 64, n};
        w.nf4 = &nf4;
        free(packed), free(absmax);
    } else if (_i == 1) {
#ifdef QFT_TWIN_HQQ
        const cth_case c = {4, 1, 0, 64, out, in};
        qw = cth_quantize(&c, 102);
        ck_assert(cth_plugin()->dequantize_rows(qw, 0, out, Wf, &err) == 0);
        for (int64_t i = 0; i < n; i++) Wf[i] = bf16_round(Wf[i]);
        hq = hqq_dev(qw);
        w.hqq = &hq;
#else
        printf("qlinear (HQQ): skipped, the hqq plugin is not in this build\n");
        free(Wf);
        return;
#endif
    } else {
        fill(Wf, (size_t)n, 103, 0.05f);
        uint16_t *Wb = to_bf16(Wf, (size_t)n);
        for (int64_t i = 0; i < n; i++) Wf[i] = qft_bf16_to_f32(Wb[i]);
        dev_bufs[3] = dup_dev(Wb, (size_t)n * 2);
        w.bf16 = dev_bufs[3];
        free(Wb);
    }
    float *X = hcalloc((size_t)N * ldx, 4), *dY = hcalloc((size_t)N * ldg, 4);
    float *Y0 = hcalloc((size_t)N * ldy, 4), *dX0 = hcalloc((size_t)N * ldx, 4);
    float *Yref = hcalloc((size_t)N * ldy, 4), *dXref = hcalloc((size_t)N * ldx, 4);
    float *got = hcalloc((size_t)N * (ldx > ldy ? ldx : ldy), 4);
    uint16_t *gotb = hcalloc((size_t)N * (ldx > ldy ? ldx : ldy), 2);
    fill(X, (size_t)N * ldx, 104, 1.0f), fill(dY, (size_t)N * ldg, 105, 1.0f);
    fill(Y0, (size_t)N * ldy, 106, 1.0f), fill(dX0, (size_t)N * ldx, 107, 1.0f);
    uint16_t *Xb = to_bf16(X, (size_t)N * ldx), *dYb = to_bf16(dY, (size_t)N * ldg);
    for (int i = 0; i < N * ldx; i++) X[i] = qft_bf16_to_f32(Xb[i]);
    for (int i = 0; i < N * ldg; i++) dY[i] = qft_bf16_to_f32(dYb[i]);
    memcpy(Yref, Y0, (size_t)N * ldy * 4), memcpy(dXref, dX0, (size_t)N * ldx * 4);
    qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wf, in, 0.5f, Yref, ldy);
    qft_cpu_gemm(0, 0, N, in, out, 1.0f, dY, ldg, Wf, in, 0.5f, dXref, ldx);
    uint16_t *dXb_ = dup_dev(Xb, (size_t)N * ldx * 2), *ddYb = dup_dev(dYb, (size_t)N * ldg * 2);
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
        get(got, dYo, (size_t)N * ldy * 4);
        synced();
        for (int i = 0; i < N; i++) {
            CHECK_ERR(got + (size_t)i * ldy, Yref + (size_t)i * ldy, (size_t)out, 1e-4, "qlinear Y");
            for (int j = out; j < ldy; j++) ck_assert(got[(size_t)i * ldy + j] == Y0[(size_t)i * ldy + j]);
        }
        get(got, dXo, (size_t)N * ldx * 4);
        synced();
        for (int i = 0; i < N; i++)
            CHECK_ERR(got + (size_t)i * ldx, dXref + (size_t)i * ldx, (size_t)in, 1e-4, "qlinear dX");
        /* bf16 outputs, beta 0 (Y = X W^T alone) */
        ck_assert_msg(qft_cuda_qlinear_fwd(&w, dXb_, N, ldx, dYob, QFT_DT_BF16, ldy, 0.0f, scratch,
                                           sizes[si], &err) == 0, "%s", err.msg);
        get(gotb, dYob, (size_t)N * ldy * 2);
        synced();
        memset(Yref, 0, (size_t)N * ldy * 4);
        qft_cpu_gemm(0, 1, N, out, in, 1.0f, X, ldx, Wf, in, 0.0f, Yref, ldy);
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < out; j++) got[j] = qft_bf16_to_f32(gotb[(size_t)i * ldy + j]);
            CHECK_ERR(got, Yref + (size_t)i * ldy, (size_t)out, 1e-2, "qlinear Y bf16");
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
            get(gotb, dXob, (size_t)N * ldx * 2);
            synced();
            float *ref0 = hcalloc((size_t)N * in, 4);
            qft_cpu_gemm(0, 0, N, in, out, 1.0f, dY, ldg, Wf, in, 0.0f, ref0, in);
            for (int i = 0; i < N; i++) {
                for (int j = 0; j < in; j++) got[j] = qft_bf16_to_f32(gotb[(size_t)i * ldx + j]);
                CHECK_ERR(got, ref0 + (size_t)i * in, (size_t)in, 1e-2, "qlinear dX bf16");
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

/* ---- LoRA and DoRA ------------------------------------------------------------------------- */
#if defined(QFT_TWIN_LORA) && defined(QFT_TWIN_HQQ)
typedef struct {
    const struct qft_qweight *qw;
    const float *W; /* its dequantized rows, for the products */
    int64_t out, in;
} hqq_base;

static int b_forward(void *ctx, const float *x, int64_t N, float *y, int64_t ldy, float beta,
                     qft_err *err) {
    (void)err;
    const hqq_base *d = ctx;
    qft_cpu_gemm(0, 1, (int)N, (int)d->out, (int)d->in, 1.0f, x, (int)d->in, d->W, (int)d->in,
                 beta, y, (int)ldy);
    return 0;
}
static int b_backward_input(void *ctx, const float *dy, int64_t ldy, int64_t N, float *dx,
                            float beta, qft_err *err) {
    (void)err;
    const hqq_base *d = ctx;
    qft_cpu_gemm(0, 0, (int)N, (int)d->in, (int)d->out, 1.0f, dy, (int)ldy, d->W, (int)d->in, beta,
                 dx, (int)d->in);
    return 0;
}
static int b_weight_rows(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err) {
    const hqq_base *d = ctx;
    return cth_plugin()->dequantize_rows(d->qw, row0, n, dst, err);
}

/* _i 0: LoRA, 1: DoRA, on an HQQ 4-bit base; y with a row stride wider than out. */
START_TEST(test_lora_dora) {
    const int dora = _i, out = 320, in = 512, r = 16, N = 65, ldy = out + 8;
    qft_services svc = {.abi_version = QFT_ABI_VERSION, .alloc = qft_mem_alloc,
                        .free = qft_mem_free, .rng_seed = qft_rng_seed, .rng_next = qft_rng_next,
                        .ops = qft_cpu_ops()};
    config_t cfg;
    config_init(&cfg);
    ck_assert(config_read_string(&cfg, "adapter = { rank = 16; alpha = 32.0; };") == CONFIG_TRUE);
    void *state = NULL;
    qft_err err = {0, ""};
    ck_assert_msg(qft_lora_configure(&svc, config_lookup(&cfg, "adapter"), dora, &state, &err) == 0,
                  "%s", err.msg);
    const float s = ((qft_lora_config *)state)->scale;
    const cth_case c = {4, 1, 0, 64, out, in};
    struct qft_qweight *qw = cth_quantize(&c, 111);
    float *W = hcalloc((size_t)out * in, 4); // (out, in)
    ck_assert(cth_plugin()->dequantize_rows(qw, 0, out, W, &err) == 0);
    hqq_base hb = {qw, W, out, in};
    qft_linear_base lin = {.name = "model.layers.0.mlp.up_proj", .module = "up_proj", .layer = 0,
                           .out = out, .in = in, .ctx = &hb, .forward = b_forward,
                           .backward_input = b_backward_input, .weight_rows = b_weight_rows};
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np = 0;
    ck_assert(qft_lora_declare(state, &lin, p, &np, &err) == 0);
    size_t cnt[3];
    for (int i = 0; i < np; i++) {
        cnt[i] = (size_t)p[i].shape[0] * (size_t)(p[i].ndim > 1 ? p[i].shape[1] : 1);
        p[i].data = hcalloc(cnt[i], 4), p[i].grad = hcalloc(cnt[i], 4);
        fill(p[i].data, cnt[i], 120 + (uint64_t)i, i == 0 ? 0.05f : 0.02f);
        fill(p[i].grad, cnt[i], 130 + (uint64_t)i, 0.01f);
    }
    if (dora)
        for (int j = 0; j < out; j++) p[2].data[j] = 0.2f + 0.1f * fabsf(p[2].data[j]);
    /* device copies before the CPU changes anything */
    qft_cuda_lora l;
    memset(&l, 0, sizeof l);
    l.A = dup_dev(p[0].data, cnt[0] * 4), l.B = dup_dev(p[1].data, cnt[1] * 4);
    l.dA = dup_dev(p[0].grad, cnt[0] * 4), l.dB = dup_dev(p[1].grad, cnt[1] * 4);
    l.out = out, l.in = in, l.r = r, l.scale = s;
    float *dnorm = NULL;
    qft_cuda_hqq hq = hqq_dev(qw);
    const qft_cuda_weight w = {NULL, &hq, NULL, out, in};
    if (dora) {
        l.m = dup_dev(p[2].data, cnt[2] * 4), l.dm = dup_dev(p[2].grad, cnt[2] * 4);
        dnorm = G->alloc((size_t)out * 4, "t");
        l.norm = dnorm, l.f = G->alloc((size_t)out * 4, "t");
    }
    qft_adapter_linear *al = NULL;
    ck_assert_msg(qft_lora_attach(state, &lin, p, np, 0, NULL, &al, &err) == 0, "%s", err.msg);

    float *x = hcalloc((size_t)N * in, 4), *y = hcalloc((size_t)N * ldy, 4);
    float *got = hcalloc((size_t)N * (ldy > in ? ldy : in), 4);
    float *dy = hcalloc((size_t)N * ldy, 4), *dx = hcalloc((size_t)N * in, 4);
    fill(x, (size_t)N * in, 140, 1.0f), fill(y, (size_t)N * ldy, 141, 1.0f);
    fill(dy, (size_t)N * ldy, 142, 1.0f), fill(dx, (size_t)N * in, 143, 0.1f);
    qft_cpu_gemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, ldy); /* the base's W x */
    float *dX = dup_dev(x, (size_t)N * in * 4), *dYv = dup_dev(y, (size_t)N * ldy * 4);
    float *dDy = dup_dev(dy, (size_t)N * ldy * 4), *dDx = dup_dev(dx, (size_t)N * in * 4);
    float *dU = G->alloc((size_t)N * r * 4, "t"), *dDu = G->alloc((size_t)N * r * 4, "t");
    float *dH = dora ? G->alloc((size_t)N * out * 4, "t") : NULL;
    float *tile = G->alloc((size_t)37 * in * 4, "t"); /* norm tiles of 37 rows */

    if (dora) {
        float *nc = hcalloc(out, 4);
        ck_assert_msg(qft_cuda_dora_norm(&l, &w, tile, 37 * (int64_t)in, dnorm, &err) == 0, "%s",
                      err.msg);
        get(got, dnorm, (size_t)out * 4);
        synced();
        ck_assert(qft_lora_row_norms(al, nc, &err) == 0);
        CHECK_ERR(got, nc, (size_t)out, 1e-6, "DoRA row norm");
        free(nc);
    }
    const qft_adapter_step step = {.seed = 1, .training = 1};
    ck_assert_msg(qft_cuda_lora_fwd(&l, dX, N, dU, dH, dYv, ldy, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_lora_forward(al, &step, x, N, y, ldy, &err) == 0, "%s", err.msg);
    get(got, dYv, (size_t)N * ldy * 4);
    synced();
    CHECK_ERR(got, y, (size_t)N * ldy, 1e-5, dora ? "DoRA y" : "LoRA y");
    ck_assert_msg(qft_cuda_lora_bwd(&l, dX, dU, dH, N, dDy, ldy, dDu, dDx, &err) == 0, "%s",
                  err.msg);
    ck_assert_msg(qft_lora_backward(al, &step, x, dy, ldy, N, dx, &err) == 0, "%s", err.msg);
    get(got, dDx, (size_t)N * in * 4);
    synced();
    CHECK_ERR(got, dx, (size_t)N * in, 1e-5, "dx");
    get(got, dDy, (size_t)N * ldy * 4);
    synced();
    CHECK_ERR(got, dy, (size_t)N * ldy, 1e-5, "dy as backward leaves it");
    get(got, l.dA, cnt[0] * 4);
    synced();
    CHECK_ERR(got, p[0].grad, cnt[0], 1e-5, "dA");
    get(got, l.dB, cnt[1] * 4);
    synced();
    CHECK_ERR(got, p[1].grad, cnt[1], 1e-5, "dB");
    if (dora) {
        get(got, l.dm, cnt[2] * 4);
        synced();
        CHECK_ERR(got, p[2].grad, cnt[2], 1e-5, "dm");
    }
    qft_lora_detach(al);
    qft_lora_close(state);
    config_destroy(&cfg);
    hqq_dev_free(&hq);
    cth_plugin()->free_weight(qw);
    dfree(l.A), dfree(l.B), dfree(l.dA), dfree(l.dB), dfree(l.m), dfree(l.dm), dfree(l.norm);
    dfree(l.f), dfree(dX), dfree(dYv), dfree(dDy), dfree(dDx), dfree(dU), dfree(dDu), dfree(dH);
    dfree(tile);
    for (int i = 0; i < np; i++) free(p[i].data), free(p[i].grad);
    free(W), free(x), free(y), free(got), free(dy), free(dx);
}
END_TEST
#endif

void ops_linear_add_tests(TCase *tc, const qft_ops *gpu) {
    G = gpu;
#ifdef QFT_TWIN_HQQ
    tcase_add_loop_test(tc, test_hqq_dequantize, 0, 16);
#else
    printf("HQQ on the GPU: skipped, the hqq plugin is not in this build\n");
#endif
    tcase_add_loop_test(tc, test_qlinear, 0, 3);
#if defined(QFT_TWIN_LORA) && defined(QFT_TWIN_HQQ)
    tcase_add_loop_test(tc, test_lora_dora, 0, 2);
#else
    printf("LoRA/DoRA on the GPU: skipped, adapters/common or the hqq plugin is not in this build\n");
#endif
}
