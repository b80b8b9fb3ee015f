/* DoRA's weight norm on a backend without host memory (cpu_guard: every backend buffer is
 * PROT_NONE outside an op, as device memory is to the host), where the plugin cannot hash
 * A and B and trusts the step's params_version instead: one exact norm per non-zero
 * version, one per forward at version 0, and the same bits either way.
 *
 * The dora plugin is driven through its vtable as the engine drives it (y = W x first, then
 * forward); its per-linear state is read through lora_common.h, the plugin's own header,
 * for the count of norms computed and the norm itself. Every buffer the plugin sees lives
 * in guard memory, so a host read of one would stop the test with SIGSEGV. */
#include "adapter_test_util.h"
#include "cpu_ops.h"
#include "lora_common.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const qft_adapter_vtable *g_dora;
static const qft_ops *g_ops;

/* Shapes: 37 rows in tiles of 5 (a partial last tile), rank 4, 6 rows of input. */
enum { OUT = 37, IN = 50, R = 4, N = 6 };

/* A dense base whose W (OUT, IN) is backend memory, reached only through ops. */
typedef struct dev_base {
    const float *W; // (OUT, IN) backend memory
    long row_calls;  /* weight_rows calls: each is part of a norm's pass over W */
} dev_base;

static int b_forward(void *ctx, const float *x, int64_t n, float *y, int64_t ldy, float beta,
                     qft_err *err) {
    (void)err;
    const dev_base *b = ctx;
    g_ops->gemm(0, 1, (int)n, OUT, IN, 1.0f, x, IN, b->W, IN, beta, y, (int)ldy);
    return 0;
}

static int b_backward_input(void *ctx, const float *dy, int64_t ldy, int64_t n, float *dx,
                            float beta, qft_err *err) {
    (void)err;
    const dev_base *b = ctx;
    g_ops->gemm(0, 0, (int)n, IN, OUT, 1.0f, dy, (int)ldy, b->W, IN, beta, dx, IN);
    return 0;
}

static int b_weight_rows(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err) {
    dev_base *b = ctx;
    if (row0 < 0 || n < 0 || row0 + n > OUT)
        return qft_err_setf(err, "weight rows [%lld, %lld) outside %d", (long long)row0,
                            (long long)(row0 + n), OUT);
    b->row_calls++;
    g_ops->copy(dst, b->W + row0 * IN, (size_t)(n * IN)); // (n, IN)
    return 0;
}

static float *dev_upload(const float *host, size_t n) {
    float *d = g_ops->alloc(n * sizeof *d, "test");
    ck_assert_ptr_nonnull(d);
    g_ops->upload(d, host, n * sizeof *d);
    return d;
}

static void dev_download(float *host, const float *dev, size_t n) {
    g_ops->download(host, dev, n * sizeof *host);
}

/* One DoRA linear on the guard backend over W_host, with A, B, m from fixed seeds. */
typedef struct fixture {
    void *state;
    dev_base base;
    qft_linear_base lin;
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np;
    qft_adapter_linear *al;
    float *x, *y; // (N, IN), (N, OUT) backend memory
} fixture;

static float g_W[OUT * IN], g_A[R * IN], g_B[OUT * R], g_m[OUT], g_x[N * IN];

static void fx_open(fixture *f, float *W_dev, const char *tile_cfg) {
    memset(f, 0, sizeof *f);
    qft_err err = {0};
    char text[256];
    snprintf(text, sizeof text, "adapter = { rank = %d; alpha = 6; %s };", R, tile_cfg);
    ck_assert_msg(at_configure(g_dora, text, &f->state, &err) == 0, "%s", err.msg);
    f->base.W = W_dev;
    f->lin = (qft_linear_base){.name = "model.layers.2.mlp.up_proj",
                               .module = "up_proj",
                               .layer = 2,
                               .out = OUT,
                               .in = IN,
                               .ctx = &f->base,
                               .forward = b_forward,
                               .backward_input = b_backward_input,
                               .weight_rows = b_weight_rows,
                               .ops = g_ops};
    ck_assert_msg(g_dora->declare(f->state, &f->lin, f->p, &f->np, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f->np, 3);
    const float *src[3] = {g_A, g_B, g_m};
    for (int i = 0; i < 3; i++) {
        const size_t k = (size_t)f->p[i].shape[0] *
                         (size_t)(f->p[i].ndim > 1 ? f->p[i].shape[1] : 1);
        f->p[i].data = dev_upload(src[i], k);
        f->p[i].grad = g_ops->alloc(k * sizeof(float), "test");
        ck_assert_ptr_nonnull(f->p[i].grad);
        g_ops->zero(f->p[i].grad, k);
    }
    ck_assert_msg(g_dora->attach(f->state, &f->lin, f->p, f->np, 0, NULL, &f->al, &err) == 0,
                  "%s", err.msg);
    ck_assert_int_eq(f->al->norm_computes, 0);
    f->x = dev_upload(g_x, (size_t)(N * IN));
    f->y = g_ops->alloc((size_t)(N * OUT) * sizeof(float), "test");
    ck_assert_ptr_nonnull(f->y);
}

static void fx_close(fixture *f) {
    g_dora->detach(f->al);
    g_dora->close(f->state);
    for (int i = 0; i < f->np; i++) {
        g_ops->free(f->p[i].data);
        g_ops->free(f->p[i].grad);
    }
    g_ops->free(f->x);
    g_ops->free(f->y);
}

/* y (N, OUT) on the host = the adapted linear's output for step st. */
static void fx_forward(fixture *f, const qft_adapter_step *st, float *y_host) {
    qft_err err = {0};
    ck_assert(b_forward(&f->base, f->x, N, f->y, OUT, 0.0f, &err) == 0);
    ck_assert_msg(g_dora->forward(f->al, st, f->x, N, f->y, OUT, &err) == 0, "%s", err.msg);
    dev_download(y_host, f->y, (size_t)(N * OUT));
}

static void fx_set_B(fixture *f, const float *B) {
    g_ops->upload(f->p[1].data, B, sizeof(float) * OUT * R);
}

/* ||W + s B A|| per row in double on the host, s = 6 / R. */
static void host_norms(const float *B, double *norm) {
    const double s = 6.0 / R;
    for (int j = 0; j < OUT; j++) {
        double q = 0;
        for (int i = 0; i < IN; i++) {
            double w = g_W[j * IN + i];
            for (int k = 0; k < R; k++) w += s * (double)B[j * R + k] * g_A[k * IN + i];
            q += w * w;
        }
        norm[j] = sqrt(q);
    }
}

static void check_norm_exact(const fixture *f, const float *B) {
    float got[OUT];
    double want[OUT];
    dev_download(got, f->al->norm, OUT);
    host_norms(B, want);
    double e = 0;
    for (int j = 0; j < OUT; j++) e = fmax(e, fabs(got[j] - want[j]) / want[j]);
    /* fp32 rows of W + s B A summed in double: a few ulps of each row's norm */
    ck_assert_msg(e <= 1e-6, "norm relative error %.3e", e);
}

static void setup_inputs(void) {
    at_randn(g_W, OUT * IN, 501);
    at_randn(g_A, R * IN, 502);
    at_randn(g_B, OUT * R, 503);
    at_randn(g_x, N * IN, 504);
    for (int j = 0; j < OUT; j++) g_m[j] = 5.0f + 0.25f * (float)j;
}

/* The guard backend with a version: one norm for both forwards of a recomputed step (the
 * no-grad pass and the one that keeps activations), bit-identical to version 0's
 * recompute-every-time path; a changed B under a new version gives the fresh exact norm;
 * version 0 recomputes at every forward. */
START_TEST(test_guard_version_cache) {
    setup_inputs();
    float *W_dev = dev_upload(g_W, OUT * IN);
    fixture ref, c;
    fx_open(&ref, W_dev, "norm_tile_rows = 5;");
    fx_open(&c, W_dev, "norm_tile_rows = 5;");
    float y_ref[2][N * OUT], y[2][N * OUT], n_ref[OUT], n_c[OUT];
    const long tiles = (OUT + 4) / 5;

    /* the uncached path: version 0 twice */
    qft_adapter_step s0 = {.seed = 1, .training = 1, .no_grad = 1};
    fx_forward(&ref, &s0, y_ref[0]);
    s0.no_grad = 0;
    fx_forward(&ref, &s0, y_ref[1]);
    ck_assert_int_eq(ref.al->norm_computes, 2);
    ck_assert_int_eq(ref.base.row_calls, 2 * tiles);
    dev_download(n_ref, ref.al->norm, OUT);
    check_norm_exact(&ref, g_B);

    /* version 7: the second forward reads no row of W */
    qft_adapter_step s = {.seed = 1, .training = 1, .no_grad = 1, .params_version = 7};
    fx_forward(&c, &s, y[0]);
    s.no_grad = 0;
    fx_forward(&c, &s, y[1]);
    ck_assert_int_eq(c.al->norm_computes, 1);
    ck_assert_int_eq(c.base.row_calls, tiles);
    dev_download(n_c, c.al->norm, OUT);
    ck_assert(memcmp(n_c, n_ref, sizeof n_c) == 0);
    ck_assert(memcmp(y[0], y_ref[0], sizeof y[0]) == 0);
    ck_assert(memcmp(y[1], y_ref[1], sizeof y[1]) == 0);
    /* and the output is DoRA's, not a zero or a copy of W x: some row is rescaled */
    double dmax = 0;
    for (int i = 0; i < N * OUT; i++) dmax = fmax(dmax, fabs(y[1][i]));
    ck_assert_double_gt(dmax, 1.0);

    /* a backward between them uses the cached norm (dm divides by it) */
    {
        float dy_h[N * OUT];
        at_randn(dy_h, N * OUT, 505);
        float *dy = dev_upload(dy_h, N * OUT), *dx = g_ops->alloc(sizeof(float) * N * IN, "t");
        ck_assert_ptr_nonnull(dx);
        g_ops->zero(dx, N * IN);
        qft_err err = {0};
        ck_assert_msg(g_dora->backward(c.al, &s, c.x, dy, OUT, N, dx, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(c.al->norm_computes, 1);
        g_ops->free(dy), g_ops->free(dx);
    }

    /* B changes (an optimizer step) and the version with it: a fresh exact norm, the same
     * bits as the uncached path's over the same B */
    float B2[OUT * R];
    for (int i = 0; i < OUT * R; i++) B2[i] = g_B[i] * 0.5f + 0.03f * (float)(i % 7);
    fx_set_B(&c, B2);
    fx_set_B(&ref, B2);
    s.params_version = 8;
    fx_forward(&c, &s, y[0]);
    fx_forward(&c, &s, y[1]);
    ck_assert_int_eq(c.al->norm_computes, 2);
    fx_forward(&ref, &s0, y_ref[0]);
    ck_assert_int_eq(ref.al->norm_computes, 3);
    dev_download(n_c, c.al->norm, OUT);
    dev_download(n_ref, ref.al->norm, OUT);
    ck_assert(memcmp(n_c, n_ref, sizeof n_c) == 0);
    check_norm_exact(&c, B2);
    ck_assert(memcmp(y[0], y_ref[0], sizeof y[0]) == 0);
    ck_assert(memcmp(y[1], y_ref[0], sizeof y[1]) == 0);
    /* the norm did change with B (the test would otherwise not see a stale one) */
    float n_old[OUT];
    double e_old = 0;
    {
        fixture o;
        fx_open(&o, W_dev, "norm_tile_rows = 5;");
        fx_forward(&o, &s0, y_ref[1]);
        dev_download(n_old, o.al->norm, OUT);
        fx_close(&o);
    }
    for (int j = 0; j < OUT; j++) e_old = fmax(e_old, fabs(n_old[j] - n_c[j]) / n_c[j]);
    ck_assert_double_gt(e_old, 1e-3);

    /* the promise is the caller's: B changed under the same version keeps the norm */
    fx_set_B(&c, g_B);
    fx_forward(&c, &s, y[0]);
    ck_assert_int_eq(c.al->norm_computes, 2);

    /* version 0 on the same linear: recomputed at every forward, from the current B */
    s.params_version = 0;
    fx_forward(&c, &s, y[0]);
    fx_forward(&c, &s, y[1]);
    ck_assert_int_eq(c.al->norm_computes, 4);
    check_norm_exact(&c, g_B);
    /* and a version again after 0 does not match the norm left by version 0 */
    s.params_version = 9;
    fx_forward(&c, &s, y[0]);
    fx_forward(&c, &s, y[1]);
    ck_assert_int_eq(c.al->norm_computes, 5);

    /* a NULL step is version 0 */
    qft_err err = {0};
    ck_assert(b_forward(&c.base, c.x, N, c.y, OUT, 0.0f, &err) == 0);
    ck_assert(g_dora->forward(c.al, NULL, c.x, N, c.y, OUT, &err) == 0);
    ck_assert_int_eq(c.al->norm_computes, 6);

    /* a linear attached again (the engine's move to another backend) starts without a
     * norm, even under the version the previous attachment had cached */
    fx_close(&c);
    fx_open(&c, W_dev, "norm_tile_rows = 5;");
    s.params_version = 9;
    fx_forward(&c, &s, y[0]);
    ck_assert_int_eq(c.al->norm_computes, 1);
    fx_close(&c);
    fx_close(&ref);
    g_ops->free(W_dev);
}
END_TEST

/* The cpu backend keeps its own cache keyed on a hash of A and B, and does not trust the
 * version: B changed under the same version still gives a new norm. */
START_TEST(test_host_ignores_version) {
    setup_inputs();
    void *state;
    qft_err err = {0};
    ck_assert(at_configure(g_dora, "adapter = { rank = 4; alpha = 6; };", &state, &err) == 0);
    at_dense d;
    qft_linear_base lin;
    at_dense_init(&d, &lin, g_W, OUT, IN, "model.layers.2.mlp.up_proj", "up_proj", 2);
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np;
    ck_assert(at_declare(g_dora, state, &lin, p, &np, &err) == 0);
    memcpy(p[0].data, g_A, sizeof g_A);
    memcpy(p[1].data, g_B, sizeof g_B);
    memcpy(p[2].data, g_m, sizeof g_m);
    qft_adapter_linear *al;
    ck_assert(g_dora->attach(state, &lin, p, np, 0, NULL, &al, &err) == 0);
    float y[N * OUT];
    qft_adapter_step s = {.seed = 1, .training = 1, .params_version = 3};
    for (int k = 0; k < 2; k++) {
        lin.forward(lin.ctx, g_x, N, y, OUT, 0.0f, &err);
        ck_assert(g_dora->forward(al, &s, g_x, N, y, OUT, &err) == 0);
    }
    ck_assert_int_eq(al->norm_computes, 1);
    p[1].data[5] += 0.5f;
    lin.forward(lin.ctx, g_x, N, y, OUT, 0.0f, &err);
    ck_assert(g_dora->forward(al, &s, g_x, N, y, OUT, &err) == 0);
    ck_assert_int_eq(al->norm_computes, 2);
    float B[OUT * R];
    memcpy(B, p[1].data, sizeof B);
    double want[OUT], e = 0;
    host_norms(B, want);
    for (int j = 0; j < OUT; j++) e = fmax(e, fabs(al->norm[j] - want[j]) / want[j]);
    ck_assert_double_le(e, 1e-5); /* the expansion's rounding (test_adapters' bound) */
    g_dora->detach(al);
    g_dora->close(state);
    at_free_params(p, np);
}
END_TEST

int main(void) {
    g_dora = at_load_plugin("QFT_DORA_PLUGIN");
    if (!g_dora) return EXIT_FAILURE;
    g_ops = qft_cpu_guard_ops();
    if (g_ops->host_memory) {
        fprintf(stderr, "cpu_guard claims host memory: this test needs a backend without\n");
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("adapters_dora_cache");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_guard_version_cache);
    tcase_add_test(tc, test_host_ignores_version);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
