/* The fused tile products against a dense sgemm on the weight each plugin dequantizes,
 * for odd shapes that leave partial tiles, both plugins, beta 0 and beta 1. */
#include "qlinear.h"
#include "quant_test_util.h"

#include <cblas.h>
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const qft_quantizer_vtable *g_vt[2];
static const char *g_cfg[2] = {"quant: { plugin = \"bnb_nf4\"; blocksize = 64; };\n",
                               "quant: { plugin = \"hqq\"; group_size = 64; axis = 0; };\n"};

static float *randn(int64_t n, uint64_t seed, float sd) {
    float *w = malloc((size_t)n * sizeof(float));
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) w[i] = sd * qft_rng_normal(&r);
    return w;
}

static double rel_err(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - (double)b[i]) * (a[i] - (double)b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static void check_shape(int p, int64_t out, int64_t in, int64_t N) {
    const qft_quantizer_vtable *vt = g_vt[p];
    config_t cfg;
    char path[256];
    config_setting_t *s = qt_cfg(&cfg, g_cfg[p], path, sizeof path);
    void *st = NULL;
    qft_err err = {0};
    ck_assert_msg(vt->configure(qt_services(), s, &st, &err) == 0, "%s", err.msg);
    qt_cfg_free(&cfg, path);
    float *w = randn(out * in, 100 + out, 0.05f);   // (out, in)
    qft_qweight *qw = NULL;
    ck_assert_msg(vt->quantize(st, "w", w, out, in, &qw, &err) == 0, "%s", err.msg);
    float *wd = malloc((size_t)(out * in) * 4);      // (out, in) dequantized
    ck_assert_int_eq(vt->dequantize_rows(qw, 0, out, wd, &err), 0);
    float *x = randn(N * in, 7 + N, 1.0f);            // (N, in)
    float *dy = randn(N * out, 9 + N, 1.0f);          // (N, out)
    for (int beta = 0; beta < 2; beta++) {
        float *y = randn(N * out, 11, 1.0f), *yr = malloc((size_t)(N * out) * 4);  // (N, out)
        float *dx = randn(N * in, 13, 1.0f), *dxr = malloc((size_t)(N * in) * 4);  // (N, in)
        memcpy(yr, y, (size_t)(N * out) * 4);
        memcpy(dxr, dx, (size_t)(N * in) * 4);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)out, (int)in, 1.0f, x,
                    (int)in, wd, (int)in, (float)beta, yr, (int)out);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)in, (int)out, 1.0f, dy,
                    (int)out, wd, (int)in, (float)beta, dxr, (int)in);
        ck_assert_msg(qft_qlinear_forward(vt, qw, out, in, x, N, y, out, (float)beta, &err) == 0, "%s",
                      err.msg);
        ck_assert_msg(qft_qlinear_backward_input(vt, qw, out, in, dy, out, N, dx, (float)beta, &err) == 0,
                      "%s", err.msg);
        const double ef = rel_err(y, yr, N * out), eb = rel_err(dx, dxr, N * in);
        ck_assert_msg(ef < 1e-5 && eb < 1e-5, "plugin %d (%lld, %lld) N=%lld beta=%d: %.2e %.2e", p,
                      (long long)out, (long long)in, (long long)N, beta, ef, eb);
        free(y); free(yr); free(dx); free(dxr);
    }
    free(w); free(wd); free(x); free(dy);
    vt->free_weight(qw);
    vt->close(st);
}

START_TEST(test_products_match_dense) {
    /* out past one tile with a partial last tile (tile rows are a multiple of 16), with
     * the small tiles of N < 128 (1037 x 320 spans two backward tiles) and the large ones
     * (4200 x 1024 at N = 130 spans two 16 MiB backward tiles and three forward ones) */
    const int64_t shapes[][3] = {{1037, 320, 3}, {75, 64, 1}, {1100, 1024, 70}, {16, 4160, 5},
                                 {4200, 1024, 130}};
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < 5; k++) {
            if (p == 1 && (shapes[k][0] * shapes[k][1] / 64) % 2) continue; /* hqq pairs rows */
            check_shape(p, shapes[k][0], shapes[k][1], shapes[k][2]);
        }
    ck_assert_int_lt(qft_qlinear_tile_rows(11008, 4096, 512), 11008);
}
END_TEST

START_TEST(test_errors) {
    qft_err err = {0};
    float y[4] = {1, 2, 3, 4};
    ck_assert_int_ne(qft_qlinear_forward(g_vt[0], NULL, 2, 2, y, 1, y, 2, 0.0f, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "qlinear"));
}
END_TEST

int main(void) {
    g_vt[0] = qt_load_plugin("QFT_NF4_PLUGIN");
    g_vt[1] = qt_load_plugin("QFT_HQQ_PLUGIN");
    if (!g_vt[0] || !g_vt[1]) return 1;
    Suite *s = suite_create("quant_qlinear");
    TCase *tc = tcase_create("qlinear");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_products_match_dense);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
