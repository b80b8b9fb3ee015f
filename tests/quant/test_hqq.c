/* hqq against the hqq library's own output (tests/fixtures/quant/hqq_*.safetensors, made by
 * tests/reference/hqq_reference.py): code agreement, dequantized values, HQQLinear's
 * serialized form, save/load, bits per weight, bad configs and checkpoints. */
#include "hqq.h" /* the plugin's private codec, compiled into this test */
#include "quant_test_util.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const qft_quantizer_vtable *vt;
static qft_st_file g_fx;
static json_t *g_cases;

static void *configure(const char *body) { return qt_configure(vt, "hqq", body); }

static int configure_err(const char *body, qft_err *err, char *path) {
    char text[512];
    snprintf(text, sizeof text, "quant: {\n  plugin = \"hqq\";\n%s\n};\n", body);
    config_t cfg;
    config_setting_t *s = qt_cfg(&cfg, text, path, 256);
    void *st = NULL;
    int rc = vt->configure(qt_services(), s, &st, err);
    if (st) vt->close(st);
    qt_cfg_free(&cfg, path);
    return rc;
}

static const char *nm(const char *c, const char *f) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s.%s", c, f);
    return buf;
}

/* A weight view over packed codes, for reading codes with the plugin's own unpacking. */
static void code_view(struct qft_qweight *v, int nbits, int gs, int axis, int64_t out,
                      int64_t in, const void *packed) {
    hqq_opts o = {.nbits = nbits, .group_size = gs, .axis = axis};
    memset(v, 0, sizeof *v);
    qft_err err = {0};
    ck_assert_int_eq(hqq_weight_init(v, &o, out, in, "view", &err), 0);
    v->packed = (uint8_t *)packed;
}

START_TEST(test_matches_hqq) {
    size_t i;
    json_t *c;
    double worst_agree = 1.0, worst_rel = 0.0;
    json_array_foreach(g_cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const int nbits = (int)json_integer_value(json_object_get(c, "nbits"));
        const int gs = (int)json_integer_value(json_object_get(c, "group_size"));
        const int axis = (int)json_integer_value(json_object_get(c, "axis"));
        const int opt = json_is_true(json_object_get(c, "optimize"));
        const int meta = json_is_true(json_object_get(c, "meta_quant"));
        json_t *shape = json_object_get(c, "shape");
        const int64_t out = json_integer_value(json_array_get(shape, 0));
        const int64_t in = json_integer_value(json_array_get(shape, 1));
        char body[256];
        snprintf(body, sizeof body,
                 "  nbits = %d; group_size = %d; axis = %d; optimize = %s;\n"
                 "  quant_zero = %s; quant_scale = %s;",
                 nbits, gs, axis, opt ? "true" : "false", meta ? "true" : "false",
                 meta ? "true" : "false");
        void *st = configure(body);
        float *w = qt_f32(&g_fx, nm(name, "input"), NULL); // (out, in)
        qft_qweight *qw = NULL;
        qft_err err = {0};
        ck_assert_msg(vt->quantize(st, name, w, out, in, &qw, &err) == 0, "%s", err.msg);
        struct qft_qweight ref;
        const qft_st_entry *rq = qt_need(&g_fx, nm(name, "W_q"));
        code_view(&ref, nbits, gs, axis, out, in, rq->t.data);
        ck_assert_int_eq(rq->nbytes, qw->packed_bytes);
        int64_t agree = 0;
        for (int64_t r = 0; r < qw->R; r++)
            for (int64_t k = 0; k < qw->C; k++) agree += hqq_code(qw, r, k) == hqq_code(&ref, r, k);
        const int64_t n = out * in;
        float *y = malloc((size_t)n * sizeof(float));
        ck_assert_int_eq(vt->dequantize_rows(qw, 0, out, y, &err), 0);
        float *d = qt_f32(&g_fx, nm(name, "dequant"), NULL);
        /* relative error of the values where the codes agree: the zero and scale */
        double maxref = 0, maxdiff = 0, num = 0, den = 0;
        for (int64_t f = 0; f < n; f++) {
            const int64_t r = axis == 1 ? f / gs : f / qw->C, k = axis == 1 ? f % gs : f % qw->C;
            maxref = fmax(maxref, fabs(d[f]));
            num += (y[f] - d[f]) * (double)(y[f] - d[f]);
            den += (double)d[f] * d[f];
            if (hqq_code(qw, r, k) == hqq_code(&ref, r, k)) maxdiff = fmax(maxdiff, fabs(y[f] - d[f]));
        }
        const double frac = (double)agree / (double)n, rel = maxdiff / maxref;
        printf("hqq %-13s %d-bit axis %d: codes identical %.5f%% (%lld of %lld); values where "
               "codes agree: max rel %.2e; all values: Frobenius rel %.2e\n",
               name, nbits, axis, 100.0 * frac, (long long)agree, (long long)n, rel,
               sqrt(num / den));
        worst_agree = fmin(worst_agree, frac);
        worst_rel = fmax(worst_rel, rel);
        free(w);
        free(y);
        free(d);
        vt->free_weight(qw);
        vt->close(st);
    }
    printf("hqq worst: codes identical %.5f%%, dequantized max rel %.2e\n", 100 * worst_agree,
           worst_rel);
    ck_assert_double_ge(worst_agree, 0.999);
    ck_assert_double_le(worst_rel, 1e-6);
}
END_TEST

/* hqq's own codes and statistics, loaded, dequantize to hqq's values exactly. */
START_TEST(test_load_hqq_statistics) {
    size_t i;
    json_t *c;
    json_array_foreach(g_cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        if (json_is_true(json_object_get(c, "meta_quant"))) continue; /* covered below */
        const int nbits = (int)json_integer_value(json_object_get(c, "nbits"));
        const int gs = (int)json_integer_value(json_object_get(c, "group_size"));
        const int axis = (int)json_integer_value(json_object_get(c, "axis"));
        json_t *shape = json_object_get(c, "shape");
        int64_t sh[2] = {json_integer_value(json_array_get(shape, 0)),
                         json_integer_value(json_array_get(shape, 1))};
        int32_t nb = nbits, g = gs, ax = axis;
        qt_mem mem = {0};
        qft_tensor_sink sink = qt_mem_sink(&mem);
        qft_err err = {0};
        const qft_st_entry *e;
        e = qt_need(&g_fx, nm(name, "W_q"));
        ck_assert_int_eq(sink.add(sink.ctx, "p.W_q", &e->t, &err), 0);
        e = qt_need(&g_fx, nm(name, "scale"));
        ck_assert_int_eq(sink.add(sink.ctx, "p.scale", &e->t, &err), 0);
        e = qt_need(&g_fx, nm(name, "zero"));
        ck_assert_int_eq(sink.add(sink.ctx, "p.zero", &e->t, &err), 0);
        qft_tensor t0 = {.dtype = QFT_DT_I32, .ndim = 0, .data = &nb};
        ck_assert_int_eq(sink.add(sink.ctx, "p.nbits", &t0, &err), 0);
        t0.data = &g;
        ck_assert_int_eq(sink.add(sink.ctx, "p.group_size", &t0, &err), 0);
        t0.data = &ax;
        ck_assert_int_eq(sink.add(sink.ctx, "p.axis", &t0, &err), 0);
        qft_tensor ts = {.dtype = QFT_DT_I64, .ndim = 1, .shape = {2}, .data = sh};
        ck_assert_int_eq(sink.add(sink.ctx, "p.shape", &ts, &err), 0);
        qft_tensor_source src = qt_mem_source(&mem);
        void *st = configure("");
        qft_qweight *qw = NULL;
        ck_assert_msg(vt->load(st, "p", sh[0], sh[1], &src, &qw, &err) == 0, "%s", err.msg);
        float *y = malloc((size_t)(sh[0] * sh[1]) * sizeof(float));
        for (int64_t r = 0; r < sh[0]; r += 5) {
            const int64_t k = sh[0] - r < 5 ? sh[0] - r : 5;
            ck_assert_int_eq(vt->dequantize_rows(qw, r, k, y + r * sh[1], &err), 0);
        }
        float *d = qt_f32(&g_fx, nm(name, "dequant"), NULL);
        ck_assert_msg(memcmp(y, d, (size_t)(sh[0] * sh[1]) * 4) == 0, "%s: dequant differs", name);
        free(y);
        free(d);
        vt->free_weight(qw);
        vt->close(st);
    }
}
END_TEST

/* The meta-quantized case: our 8-bit codes of zero and scale against hqq's Quantizer run
 * on hqq's own zero and scale (so the refinement's last bits do not matter here). */
START_TEST(test_meta_quantization) {
    const char *name = "b4_ax0_meta";
    size_t G, mc;
    float *z = qt_f32(&g_fx, nm(name, "zero"), &G);
    float *s = qt_f32(&g_fx, nm(name, "scale"), NULL);
    float *ss = qt_f32(&g_fx, nm(name, "scale_scale"), &mc);
    ck_assert_int_eq(mc, G / 128);
    /* run our meta quantizer through a weight that carries hqq's zero and scale: quantize
     * a tiny weight would refit them, so exercise save/load of a meta state instead */
    qt_mem mem = {0};
    qft_tensor_sink sink = qt_mem_sink(&mem);
    qft_err err = {0};
    int32_t nb = 4, g = 64, ax = 0;
    int64_t sh[2] = {256, 256};
    uint8_t one = 1;
    const char *map[][2] = {{"p.W_q", "W_q"}, {"p.zero_q", "zero_q"}, {"p.scale_q", "scale_q"},
                            {"p.meta_zero.scale", "zero_scale"}, {"p.meta_zero.zero", "zero_zero"},
                            {"p.meta_scale.scale", "scale_scale"},
                            {"p.meta_scale.zero", "scale_zero"}};
    for (int k = 0; k < 7; k++)
        ck_assert_int_eq(sink.add(sink.ctx, map[k][0], &qt_need(&g_fx, nm(name, map[k][1]))->t, &err), 0);
    qft_tensor t0 = {.dtype = QFT_DT_I32, .ndim = 0, .data = &nb};
    sink.add(sink.ctx, "p.nbits", &t0, &err);
    t0.data = &g;
    sink.add(sink.ctx, "p.group_size", &t0, &err);
    t0.data = &ax;
    sink.add(sink.ctx, "p.axis", &t0, &err);
    qft_tensor tb = {.dtype = QFT_DT_U8, .ndim = 0, .data = &one};
    sink.add(sink.ctx, "p.quant_zero", &tb, &err);
    sink.add(sink.ctx, "p.quant_scale", &tb, &err);
    qft_tensor ts = {.dtype = QFT_DT_I64, .ndim = 1, .shape = {2}, .data = sh};
    sink.add(sink.ctx, "p.shape", &ts, &err);
    qft_tensor_source src = qt_mem_source(&mem);
    void *st = configure("");
    qft_qweight *qw = NULL;
    ck_assert_msg(vt->load(st, "p", 256, 256, &src, &qw, &err) == 0, "%s", err.msg);
    float *y = malloc(256 * 256 * sizeof(float));
    ck_assert_int_eq(vt->dequantize_rows(qw, 0, 256, y, &err), 0);
    float *d = qt_f32(&g_fx, nm(name, "dequant"), NULL);
    double maxd = 0, maxr = 0;
    for (int i = 0; i < 256 * 256; i++) {
        maxd = fmax(maxd, fabs(y[i] - d[i]));
        maxr = fmax(maxr, fabs(d[i]));
    }
    printf("hqq meta-quantized zero/scale, loaded: dequantized max rel %.2e\n", maxd / maxr);
    ck_assert_double_le(maxd / maxr, 1e-6);
    /* and the plugin's own meta quantization of a fresh weight, from the same input */
    void *st2 = configure("  axis = 0; quant_zero = true; quant_scale = true;");
    float *w = qt_f32(&g_fx, nm(name, "input"), NULL);
    qft_qweight *q2 = NULL;
    ck_assert_int_eq(vt->quantize(st2, name, w, 256, 256, &q2, &err), 0);
    int64_t same = 0;
    for (size_t k = 0; k < G; k++) same += q2->scale_q[k] == ((uint8_t *)qt_need(&g_fx, nm(name, "scale_q"))->t.data)[k];
    printf("hqq meta-quantized scale codes identical: %lld of %zu\n", (long long)same, G);
    ck_assert_int_ge(same, (int64_t)(0.99 * (double)G));
    free(w);
    vt->free_weight(q2);
    vt->close(st2);
    free(y);
    free(d);
    free(z);
    free(s);
    free(ss);
    vt->free_weight(qw);
    vt->close(st);
}
END_TEST

/* HQQLinear.state_dict as hqq writes it: loads, dequantizes to HQQLinear.dequantize(), and
 * saves back to the same tensors. */
START_TEST(test_hqq_linear_state_dict) {
    char p[4096];
    snprintf(p, sizeof p, "%s/hqq_linear.safetensors", qt_fixture_dir());
    qft_st_file f;
    qft_err err = {0};
    ck_assert_msg(qft_st_open(p, &f, &err) == 0, "%s", err.msg);
    qft_tensor_source src = qt_st_source(&f);
    void *st = configure("");
    qft_qweight *qw = NULL;
    const char *prefix = "model.layers.0.mlp.up_proj";
    ck_assert_msg(vt->load(st, prefix, 96, 128, &src, &qw, &err) == 0, "%s", err.msg);
    float *y = malloc(96 * 128 * sizeof(float));
    ck_assert_int_eq(vt->dequantize_rows(qw, 0, 96, y, &err), 0);
    float *d = qt_f32(&f, "ref.dequant", NULL);
    ck_assert(memcmp(y, d, 96 * 128 * 4) == 0);
    qt_mem mem = {0};
    qft_tensor_sink sink = qt_mem_sink(&mem);
    ck_assert_int_eq(vt->save(qw, prefix, &sink, &err), 0);
    for (int k = 0; k < mem.n; k++) {
        const qft_st_entry *e = qt_need(&f, mem.e[k].name);
        ck_assert_msg(e->t.dtype == mem.e[k].t.dtype && e->t.ndim == mem.e[k].t.ndim, "%s",
                      mem.e[k].name);
        ck_assert_int_eq(e->nbytes, qt_numel(&mem.e[k].t) * qt_dtype_size(mem.e[k].t.dtype));
        ck_assert_msg(memcmp(e->t.data, mem.e[k].t.data, e->nbytes) == 0, "%s differs",
                      mem.e[k].name);
    }
    ck_assert_int_ge(mem.n, 17);
    vt->free_weight(qw);
    qft_qweight *none = NULL; /* a prefix without hqq tensors: a dense checkpoint */
    ck_assert_int_eq(vt->load(st, "lm_head", 96, 128, &src, &none, &err), 1);
    ck_assert_ptr_null(none);
    free(y);
    free(d);
    vt->close(st);
    qft_st_close(&f);
}
END_TEST

static float *gaussian(int64_t n, uint64_t seed, float sd) {
    float *w = malloc((size_t)n * sizeof(float));
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) w[i] = sd * qft_rng_normal(&r);
    return w;
}

START_TEST(test_round_trip_and_bits) {
    const int64_t out = 256, in = 512;
    float *w = gaussian(out * in, 5, 0.02f);
    const char *cfgs[] = {"", "  axis = 0; quant_zero = true; quant_scale = true;",
                          "  nbits = 3;", "  nbits = 2; axis = 0;", "  nbits = 8;"};
    const double expect[] = {5.0, 4.25, 4.2, 3.0, 9.0}; /* 3 bits: 10 codes a word */
    for (int k = 0; k < 5; k++) {
        void *st = configure(cfgs[k]);
        qft_qweight *a = NULL, *b = NULL;
        qft_err err = {0};
        ck_assert_msg(vt->quantize(st, "w", w, out, in, &a, &err) == 0, "%s", err.msg);
        qt_mem mem = {0};
        qft_tensor_sink sink = qt_mem_sink(&mem);
        ck_assert_int_eq(vt->save(a, "q", &sink, &err), 0);
        qft_tensor_source src = qt_mem_source(&mem);
        ck_assert_msg(vt->load(st, "q", out, in, &src, &b, &err) == 0, "%s", err.msg);
        float *ya = malloc((size_t)(out * in) * 4), *yb = malloc((size_t)(out * in) * 4);
        ck_assert_int_eq(vt->dequantize_rows(a, 0, out, ya, &err), 0);
        ck_assert_int_eq(vt->dequantize_rows(b, 0, out, yb, &err), 0);
        ck_assert(memcmp(ya, yb, (size_t)(out * in) * 4) == 0);
        const double bits = 8.0 * (double)vt->bytes(a) / (double)(out * in);
        printf("hqq config {%s}: %.4f bits per weight\n", cfgs[k], bits);
        ck_assert_double_lt(fabs(bits - expect[k]), 0.03); /* + the struct */
        free(ya);
        free(yb);
        vt->free_weight(a);
        vt->free_weight(b);
        vt->close(st);
    }
    free(w);
}
END_TEST

START_TEST(test_bad_config) {
    qft_err err = {0};
    char path[256];
    ck_assert_int_ne(configure_err("  nbits = 5;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, ":3:") && strstr(err.msg, "nbits"), "%s",
                  err.msg);
    ck_assert_int_ne(configure_err("  axis = 1;\n  group_size = 12;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, ":4:"), "%s", err.msg);
    ck_assert_int_ne(configure_err("  axis = 2;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, ":3:") && strstr(err.msg, "axis"), "%s", err.msg);
    ck_assert_int_ne(configure_err("  n_bits = 4;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "n_bits"), "%s", err.msg);
}
END_TEST

START_TEST(test_bad_checkpoint) {
    const int64_t out = 64, in = 128;
    float *w = gaussian(out * in, 9, 1.0f);
    void *st = configure("");
    qft_qweight *a = NULL, *b = NULL;
    qft_err err = {0};
    ck_assert_int_eq(vt->quantize(st, "w", w, out, in, &a, &err), 0);
    qt_mem mem = {0};
    qft_tensor_sink sink = qt_mem_sink(&mem);
    ck_assert_int_eq(vt->save(a, "p", &sink, &err), 0);
    qft_tensor_source src = qt_mem_source(&mem);
    ck_assert_int_ne(vt->load(st, "p", out * 2, in / 2, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "p.shape") && strstr(err.msg, "disagrees"), "%s", err.msg);
    qft_tensor *wq = (qft_tensor *)qt_mem_find(&mem, "p.W_q");
    wq->shape[0] -= 1;
    ck_assert_int_ne(vt->load(st, "p", out, in, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "p.W_q") && strstr(err.msg, "truncated"), "%s", err.msg);
    wq->shape[0] += 1;
    qft_tensor *sc = (qft_tensor *)qt_mem_find(&mem, "p.scale");
    sc->shape[0] -= 2;
    ck_assert_int_ne(vt->load(st, "p", out, in, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "p.scale") && strstr(err.msg, "disagree"), "%s", err.msg);
    sc->shape[0] += 2;
    ck_assert_msg(vt->load(st, "p", out, in, &src, &b, &err) == 0, "%s", err.msg);
    /* a shape hqq cannot pack: 4 bits pair rows of the grouped matrix */
    qft_qweight *c = NULL;
    ck_assert_int_ne(vt->quantize(st, "odd", w, 1, 64, &c, &err), 0);
    ck_assert_msg(strstr(err.msg, "odd"), "%s", err.msg);
    vt->free_weight(a);
    vt->free_weight(b);
    vt->close(st);
    free(w);
}
END_TEST

int main(void) {
    vt = qt_load_plugin("QFT_HQQ_PLUGIN");
    if (!vt) return 1;
    char p[4096];
    snprintf(p, sizeof p, "%s/hqq_cases.safetensors", qt_fixture_dir());
    qft_err err = {0};
    if (qft_st_open(p, &g_fx, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    g_cases = json_loads(qft_st_meta(&g_fx, "cases"), 0, NULL);
    if (!g_cases) return 1;
    Suite *s = suite_create("quant_hqq");
    TCase *tc = tcase_create("hqq");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_matches_hqq);
    tcase_add_test(tc, test_load_hqq_statistics);
    tcase_add_test(tc, test_meta_quantization);
    tcase_add_test(tc, test_hqq_linear_state_dict);
    tcase_add_test(tc, test_round_trip_and_bits);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_bad_checkpoint);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    json_decref(g_cases);
    qft_st_close(&g_fx);
    return failed ? 1 : 0;
}
