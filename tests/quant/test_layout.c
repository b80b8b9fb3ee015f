/* The quantizers' `layout` entry and the backends' `dequantize` over it: a weight quantized
 * by bnb_nf4 (blocksizes 32, 64, 4096, double quantization on and off, lengths that are
 * odd or not a multiple of the block) or hqq (2, 3, 4 and 8 bits, both axes, zero and scale
 * meta-quantized or not) is described as a qft_qlayout, and qft_cpu_dequantize, the cpu
 * table's entry and the cpu_guard table's entry (buffers copied into guarded memory) all
 * give the plugin's dequantize_rows bit for bit, on the first row, a middle range, the last
 * rows and the whole weight; lowrank_row_norms over the layout likewise. Also: the layout's buffers are exactly the weight's data, a
 * layout the backend cannot decode gives NaN rows, has_qformat, and the int8_rowwise
 * example plugin (when built) has no layout. */
#include "cpu_ops.h"
#include "quant_test_util.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const qft_quantizer_vtable *vt_nf4, *vt_hqq;

/* Seeded normal values scaled per row (1x to 2x), with a few outliers, so blocks and groups
 * have different statistics and a wrong row or block index shows; mild enough that a
 * 4096-element NF4 block still gives its quietest row nonzero codes. */
static float *structured_weight(int64_t out, int64_t in, uint64_t seed) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    float *w = malloc((size_t)(out * in) * sizeof(float)); // (out, in)
    ck_assert_ptr_nonnull(w);
    for (int64_t i = 0; i < out * in; i++) {
        const float row_scale = 0.01f * (1.0f + 0.25f * (float)((i / in) % 5));
        w[i] = row_scale * qft_rng_normal(&r);
        if (qft_rng_uniform(&r) < 0.0005) w[i] *= 4.0f;
    }
    return w;
}

/* rows [row0, row0 + n) by the plugin, into a fresh buffer (n, in) */
static float *plugin_rows(const qft_quantizer_vtable *vt, const qft_qweight *qw, int64_t in,
                          int64_t row0, int64_t n) {
    float *d = malloc((size_t)(n * in) * sizeof(float)); // (n, in)
    ck_assert_ptr_nonnull(d);
    qft_err err = {0};
    ck_assert_msg(vt->dequantize_rows(qw, row0, n, d, &err) == 0, "%s", err.msg);
    return d;
}

/* The layout with every buffer copied into cpu_guard memory (ops->alloc + upload). */
static qft_qlayout to_guard(const qft_ops *ops, const qft_qlayout *L) {
    qft_qlayout G = *L;
    for (int i = 0; i < QFT_QLAYOUT_MAX_BUFS; i++) {
        if (!L->buf[i]) continue;
        void *p = ops->alloc(L->bytes[i], "test_layout");
        ck_assert_ptr_nonnull(p);
        ops->upload(p, L->buf[i], L->bytes[i]);
        G.buf[i] = p;
    }
    return G;
}

static void guard_free_layout(const qft_ops *ops, qft_qlayout *G) {
    for (int i = 0; i < QFT_QLAYOUT_MAX_BUFS; i++)
        if (G->buf[i]) ops->free((void *)G->buf[i]);
}

/* Every decoding path against the plugin on one row range. */
static void check_rows(const qft_quantizer_vtable *vt, const qft_qweight *qw,
                       const qft_qlayout *L, const qft_qlayout *G, int64_t row0, int64_t n,
                       const char *what) {
    const int64_t in = L->in;
    const size_t nb = (size_t)(n * in) * sizeof(float);
    float *ref = plugin_rows(vt, qw, in, row0, n);
    int64_t nonzero = 0;
    for (int64_t i = 0; i < n * in; i++) nonzero += ref[i] != 0.0f;
    ck_assert_msg(nonzero > n * in / 3, "%s: rows [%lld, +%lld) dequantize to %lld nonzeros of "
                  "%lld", what, (long long)row0, (long long)n, (long long)nonzero,
                  (long long)(n * in));

    float *got = malloc(nb); // (n, in)
    ck_assert_ptr_nonnull(got);
    memset(got, 0x7f, nb);
    qft_cpu_dequantize(L, row0, n, got);
    ck_assert_msg(memcmp(ref, got, nb) == 0, "%s: qft_cpu_dequantize rows [%lld, +%lld) differ",
                  what, (long long)row0, (long long)n);
    memset(got, 0x7f, nb);
    qft_cpu_ops()->dequantize(L, row0, n, got);
    ck_assert_msg(memcmp(ref, got, nb) == 0, "%s: cpu ops->dequantize rows [%lld, +%lld) differ",
                  what, (long long)row0, (long long)n);

    const qft_ops *gops = qft_cpu_guard_ops();
    float *gdst = gops->alloc(nb, "test_layout dst"); // (n, in) guarded
    ck_assert_ptr_nonnull(gdst);
    gops->dequantize(G, row0, n, gdst);
    memset(got, 0x7f, nb);
    gops->download(got, gdst, nb);
    ck_assert_msg(memcmp(ref, got, nb) == 0,
                  "%s: cpu_guard ops->dequantize rows [%lld, +%lld) differ", what,
                  (long long)row0, (long long)n);
    gops->free(gdst);
    free(got), free(ref);
}

/* lowrank_row_norms over the layout (DoRA's ||W_j + s B_j A|| in one read of W), ranks 3
 * and 8: within 1e-5 of the norms computed in double from the dequantized W; the same bits
 * from the dense weight (the same elements, summed in the same order) and from cpu_guard's
 * entry on guarded copies. */
static void check_lowrank(const qft_qlayout *L, const qft_qlayout *G, const char *what) {
    const int64_t out = L->out, in = L->in;
    const float s = 0.7f;
    float *W = malloc((size_t)(out * in) * sizeof *W); // (out, in)
    ck_assert_ptr_nonnull(W);
    qft_cpu_dequantize(L, 0, out, W);
    const qft_ops *gops = qft_cpu_guard_ops();
    for (int64_t r = 3; r <= 8; r += 5) {
        float *A = malloc((size_t)(r * in) * sizeof *A), *B = malloc((size_t)(out * r) * sizeof *B);
        float *n1 = malloc((size_t)out * sizeof *n1), *n2 = malloc((size_t)out * sizeof *n2);
        ck_assert(A && B && n1 && n2);
        qft_rng g;
        qft_rng_seed(&g, 7 + (uint64_t)r);
        for (int64_t i = 0; i < r * in; i++) A[i] = 0.1f * qft_rng_normal(&g);
        for (int64_t i = 0; i < out * r; i++) B[i] = 0.05f * qft_rng_normal(&g);
        qft_cpu_lowrank_row_norms(n1, L, NULL, out, in, A, B, r, s);
        double worst = 0.0;
        for (int64_t j = 0; j < out; j++) {
            double sq = 0.0;
            for (int64_t c = 0; c < in; c++) {
                double l = 0.0;
                for (int64_t k = 0; k < r; k++) l += (double)B[j * r + k] * A[k * in + c];
                const double v = W[j * in + c] + (double)s * l;
                sq += v * v;
            }
            const double e = fabs(n1[j] - sqrt(sq)) / sqrt(sq);
            worst = e > worst ? e : worst;
        }
        ck_assert_msg(worst <= 1e-5, "%s: lowrank_row_norms rank %lld off by %.3g", what,
                      (long long)r, worst);
        qft_cpu_lowrank_row_norms(n2, NULL, W, out, in, A, B, r, s);
        ck_assert_msg(memcmp(n1, n2, (size_t)out * sizeof *n1) == 0,
                      "%s: the layout and the dense weight give different norms", what);
        float *gA = gops->alloc((size_t)(r * in) * sizeof *A, "t"),
              *gB = gops->alloc((size_t)(out * r) * sizeof *B, "t"),
              *gn = gops->alloc((size_t)out * sizeof *n1, "t");
        ck_assert(gA && gB && gn);
        gops->upload(gA, A, (size_t)(r * in) * sizeof *A);
        gops->upload(gB, B, (size_t)(out * r) * sizeof *B);
        gops->lowrank_row_norms(gn, G, NULL, out, in, gA, gB, r, s);
        memset(n2, 0, (size_t)out * sizeof *n2);
        gops->download(n2, gn, (size_t)out * sizeof *n2);
        ck_assert_msg(memcmp(n1, n2, (size_t)out * sizeof *n1) == 0,
                      "%s: cpu_guard's lowrank_row_norms differs from the cpu's", what);
        gops->free(gA), gops->free(gB), gops->free(gn);
        free(A), free(B), free(n1), free(n2);
    }
    free(W);
}

/* Quantizes a structured weight, takes its layout, checks the layout's fields against the
 * expected format (data_bytes: the buffers' bytes apart from the in-struct codebook and
 * nested map) and every decoder on four row ranges. */
static void check_weight(const qft_quantizer_vtable *vt, const void *state, int64_t out,
                         int64_t in, uint64_t seed, int format, size_t data_bytes,
                         const char *what) {
    float *w = structured_weight(out, in, seed);
    qft_qweight *qw = NULL;
    qft_err err = {0};
    ck_assert_msg(vt->quantize(state, "model.layers.0.mlp.down_proj", w, out, in, &qw, &err) == 0,
                  "%s: %s", what, err.msg);
    qft_qlayout L;
    memset(&L, 0xa5, sizeof L); /* layout must set every field it leaves absent */
    ck_assert_msg(vt->layout(qw, &L, &err) == 0, "%s: %s", what, err.msg);
    ck_assert_int_eq(err.code, 0);
    ck_assert_int_eq(L.format, format);
    ck_assert_int_eq(L.out, out);
    ck_assert_int_eq(L.in, in);
    size_t sum = 0;
    for (int i = 0; i < QFT_QLAYOUT_MAX_BUFS; i++) {
        ck_assert_msg((L.buf[i] == NULL) == (L.bytes[i] == 0), "%s: buffer %d: %p with %zu bytes",
                      what, i, L.buf[i], L.bytes[i]);
        const int in_struct = format == QFT_QFMT_NF4 &&
                              (i == QFT_QL_NF4_CODE || i == QFT_QL_NF4_NESTED_MAP);
        if (!in_struct) sum += L.bytes[i];
    }
    ck_assert_msg(sum == data_bytes, "%s: layout buffers hold %zu bytes, the data is %zu", what,
                  sum, data_bytes);

    const qft_ops *gops = qft_cpu_guard_ops();
    qft_qlayout G = to_guard(gops, &L);
    const int64_t mid = out / 3, nmid = out / 4 > 0 ? out / 4 : 1;
    check_rows(vt, qw, &L, &G, 0, 1, what);
    check_rows(vt, qw, &L, &G, mid, nmid, what);
    check_rows(vt, qw, &L, &G, out >= 2 ? out - 2 : 0, out >= 2 ? 2 : 1, what);
    check_rows(vt, qw, &L, &G, 0, out, what);
    check_lowrank(&L, &G, what);
    guard_free_layout(gops, &G);
    vt->free_weight(qw);
    free(w);
}

/* ---- bnb_nf4 ---------------------------------------------------------------------------- */
START_TEST(test_nf4_layout) {
    static const qt_nf4_case cases[] = {
        {37, 129, 64, 1},   /* 4773 elements: odd, a partial last block */
        {37, 129, 64, 0},
        {13, 1000, 4096, 1}, /* 13000: four blocks, the last partial */
        {13, 1000, 4096, 0},
        {301, 129, 64, 1},  /* 607 blocks: three nested blocks, the last partial */
        {5, 3, 32, 1},      /* fewer elements than a block */
        {256, 1024, 64, 1}, /* large enough for the parallel chunks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[128];
        void *st = qt_nf4_open(vt_nf4, &cases[i], what, sizeof what);
        check_weight(vt_nf4, st, cases[i].out, cases[i].in, 100 + i, QFT_QFMT_NF4,
                     qt_nf4_data_bytes(&cases[i]), what);
        vt_nf4->close(st);
    }
}
END_TEST

/* ---- hqq -------------------------------------------------------------------------------- */
START_TEST(test_hqq_layout) {
    static const qt_hqq_case cases[] = {
        {32, 128, 4, 64, 1, 0, 0},
        {64, 96, 4, 64, 0, 0, 0},   /* axis 0: groups are columns */
        {24, 80, 3, 64, 1, 0, 0},   /* 30 groups: the last int32 word holds no full ten rows */
        {48, 80, 3, 64, 0, 0, 0},   /* 3 bits on axis 0: 64 rows in 7 words */
        {16, 128, 2, 64, 1, 0, 0},
        {40, 64, 2, 32, 0, 1, 0},
        {10, 96, 8, 32, 1, 0, 0},
        {33, 64, 8, 64, 0, 0, 0},   /* an odd row count */
        {128, 128, 4, 64, 1, 1, 1}, /* 256 groups: zero and scale meta-quantized */
        {128, 128, 4, 64, 0, 1, 1}, /* the same on axis 0 */
        {64, 128, 2, 64, 0, 0, 1},  /* scale alone meta-quantized, 128 groups */
        {96, 128, 3, 48, 1, 1, 0},
        {256, 512, 4, 64, 1, 0, 0}, /* large enough for the parallel chunks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[160];
        void *st = qt_hqq_open(vt_hqq, &cases[i], what, sizeof what);
        check_weight(vt_hqq, st, cases[i].out, cases[i].in, 200 + i, QFT_QFMT_HQQ,
                     qt_hqq_data_bytes(&cases[i]), what);
        vt_hqq->close(st);
    }
}
END_TEST

/* ---- what the backends refuse ----------------------------------------------------------- */
START_TEST(test_has_qformat) {
    const qft_ops *tabs[2] = {qft_cpu_ops(), qft_cpu_guard_ops()};
    for (int t = 0; t < 2; t++) {
        ck_assert_ptr_nonnull(tabs[t]->dequantize);
        ck_assert_ptr_nonnull(tabs[t]->has_qformat);
        ck_assert_int_eq(tabs[t]->has_qformat(QFT_QFMT_NF4), 1);
        ck_assert_int_eq(tabs[t]->has_qformat(QFT_QFMT_HQQ), 1);
        ck_assert_int_eq(tabs[t]->has_qformat(QFT_QFMT_NONE), 0);
        ck_assert_int_eq(tabs[t]->has_qformat(99), 0);
    }
    ck_assert_int_eq(qft_cpu_has_qformat(-1), 0);
}
END_TEST

static int all_nan(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i])) return 0;
    return 1;
}

START_TEST(test_bad_layout_gives_nan) {
    void *st = qt_configure(vt_nf4, "bnb_nf4", "  blocksize = 64;");
    float *w = structured_weight(6, 64, 7);
    qft_qweight *qw = NULL;
    qft_err err = {0};
    ck_assert_msg(vt_nf4->quantize(st, "w", w, 6, 64, &qw, &err) == 0, "%s", err.msg);
    qft_qlayout L;
    ck_assert_msg(vt_nf4->layout(qw, &L, &err) == 0, "%s", err.msg);
    float dst[2 * 64]; // (2, in)
    qft_qlayout bad = L;
    bad.format = 99;
    qft_cpu_dequantize(&bad, 0, 2, dst);
    ck_assert_msg(all_nan(dst, 2 * 64), "an unknown format decoded to numbers");
    qft_cpu_dequantize(&L, 5, 2, dst); /* rows [5, 7) of 6 */
    ck_assert_msg(all_nan(dst, 2 * 64), "rows past the weight decoded to numbers");
    bad = L;
    bad.buf[QFT_QL_NF4_PACKED] = NULL;
    qft_cpu_dequantize(&bad, 0, 2, dst);
    ck_assert_msg(all_nan(dst, 2 * 64), "a layout without codes decoded to numbers");
    qft_cpu_dequantize(&L, 4, 2, dst); /* and the good one still decodes */
    float *ref = plugin_rows(vt_nf4, qw, 64, 4, 2);
    ck_assert(memcmp(ref, dst, sizeof dst) == 0);
    free(ref);
    vt_nf4->free_weight(qw);
    vt_nf4->close(st);
    free(w);

    /* hqq: meta-quantized scales need a multiple of 128 groups */
    st = qt_configure(vt_hqq, "hqq", "  nbits = 4;\n  group_size = 64;");
    w = structured_weight(4, 64, 8);
    ck_assert_msg(vt_hqq->quantize(st, "w", w, 4, 64, &qw, &err) == 0, "%s", err.msg);
    ck_assert_msg(vt_hqq->layout(qw, &L, &err) == 0, "%s", err.msg);
    bad = L;
    bad.buf[QFT_QL_HQQ_SCALE] = NULL;
    bad.buf[QFT_QL_HQQ_SCALE_Q] = L.buf[QFT_QL_HQQ_PACKED];
    bad.buf[QFT_QL_HQQ_SCALE_META] = L.buf[QFT_QL_HQQ_ZERO];
    qft_cpu_dequantize(&bad, 0, 2, dst);
    ck_assert_msg(all_nan(dst, 2 * 64), "4 meta-quantized scale groups decoded to numbers");
    bad = L;
    bad.hqq_group_size = 48; /* 256 elements do not split into groups of 48 */
    qft_cpu_dequantize(&bad, 0, 2, dst);
    ck_assert_msg(all_nan(dst, 2 * 64), "a geometry hqq cannot hold decoded to numbers");
    vt_hqq->free_weight(qw);
    vt_hqq->close(st);
    free(w);
}
END_TEST

/* ---- the example plugin keeps the cpu backend --------------------------------------------- */
START_TEST(test_int8_has_no_layout) {
    const char *ex = getenv("QFT_EXAMPLE_PLUGIN");
    if (!ex || access(ex, R_OK) != 0) {
        printf("int8_rowwise example plugin not built here: skipping its layout check\n");
        return;
    }
    const qft_quantizer_vtable *vt = qt_load_plugin("QFT_EXAMPLE_PLUGIN");
    ck_assert_msg(vt != NULL, "%s: not a quantizer", ex);
    ck_assert_msg(vt->layout == NULL, "int8_rowwise has a layout entry");
}
END_TEST

int main(void) {
    vt_nf4 = qt_load_plugin("QFT_NF4_PLUGIN");
    vt_hqq = qt_load_plugin("QFT_HQQ_PLUGIN");
    if (!vt_nf4 || !vt_hqq) return 1;
    if (!vt_nf4->layout || !vt_hqq->layout) {
        fprintf(stderr, "bnb_nf4 or hqq has no layout entry\n");
        return 1;
    }
    Suite *s = suite_create("quant_layout");
    TCase *tc = tcase_create("layout");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_nf4_layout);
    tcase_add_test(tc, test_hqq_layout);
    tcase_add_test(tc, test_has_qformat);
    tcase_add_test(tc, test_bad_layout_gives_nan);
    tcase_add_test(tc, test_int8_has_no_layout);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
