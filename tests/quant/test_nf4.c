/* bnb_nf4 against bitsandbytes' own output (tests/fixtures/quant, made by
 * tests/reference/nf4_reference.py): packed bytes, absmax, nested statistics and
 * dequantized values bit for bit; a transformers-saved tiny model; save/load; bits per
 * weight; bad configs and bad checkpoints. */
#include "nf4.h" /* the plugin's private codec, compiled into this test */
#include "quant_test_util.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const qft_quantizer_vtable *vt;
static qft_st_file g_fx;
static json_t *g_cases;

static void *configure(const char *body) { return qt_configure(vt, "bnb_nf4", body); }

static int configure_err(const char *body, qft_err *err, char *path) {
    char text[512];
    snprintf(text, sizeof text, "quant: {\n  plugin = \"bnb_nf4\";\n%s\n};\n", body);
    config_t cfg;
    config_setting_t *s = qt_cfg(&cfg, text, path, 256);
    void *st = NULL;
    int rc = vt->configure(qt_services(), s, &st, err);
    if (st) vt->close(st);
    qt_cfg_free(&cfg, path);
    return rc;
}

static const char *name_of(const char *c, const char *field) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s.%s", c, field);
    return buf;
}

/* Bits of v as the fixture's dtype stores them. */
static int same_value(float ours, const qft_st_entry *ref, size_t i) {
    if (ref->t.dtype == QFT_DT_BF16) {
        uint16_t r;
        memcpy(&r, (const uint8_t *)ref->t.data + 2 * i, 2);
        return qft_f32_to_bf16(ours) == r;
    }
    float r;
    memcpy(&r, (const uint8_t *)ref->t.data + 4 * i, 4);
    return memcmp(&r, &ours, 4) == 0;
}

static float fixture_scalar(const char *name) {
    float v;
    memcpy(&v, qt_need(&g_fx, name)->t.data, 4);
    return v;
}

static void for_each_case(void (*fn)(const char *name, int64_t out, int64_t in, int bs, int dq)) {
    size_t i;
    json_t *c;
    json_array_foreach(g_cases, i, c) {
        json_t *shape = json_object_get(c, "shape");
        fn(json_string_value(json_object_get(c, "name")),
           (int64_t)json_integer_value(json_array_get(shape, 0)),
           (int64_t)json_integer_value(json_array_get(shape, 1)),
           (int)json_integer_value(json_object_get(c, "blocksize")),
           json_is_true(json_object_get(c, "double_quant")));
    }
}

static int g_offset_diffs;

/* The plugin's quantize, end to end: packed codes and (un-nested) absmax bit for bit;
 * nested statistics and values bit for bit whenever our fp32 mean equals torch's. */
static void check_quantize(const char *c, int64_t out, int64_t in, int bs, int dq) {
    char body[128];
    snprintf(body, sizeof body, "  blocksize = %d;\n  double_quant = %s;", bs, dq ? "true" : "false");
    void *st = configure(body);
    float *x = qt_f32(&g_fx, name_of(c, "input"), NULL); // (out, in)
    qft_qweight *qw = NULL;
    qft_err err = {0};
    ck_assert_msg(vt->quantize(st, c, x, out, in, &qw, &err) == 0, "%s", err.msg);
    qt_mem mem = {0};
    qft_tensor_sink sink = qt_mem_sink(&mem);
    ck_assert_msg(vt->save(qw, "m", &sink, &err) == 0, "%s", err.msg);

    const int64_t n = out * in;
    const qft_tensor *packed = qt_mem_find(&mem, "m.weight");
    const qft_st_entry *ref = qt_need(&g_fx, name_of(c, "packed"));
    ck_assert_int_eq(qt_numel(packed), (n + 1) / 2);
    ck_assert_int_eq(ref->nbytes, (n + 1) / 2);
    ck_assert_msg(memcmp(packed->data, ref->t.data, (size_t)(n + 1) / 2) == 0,
                  "%s: packed bytes differ from bitsandbytes", c);

    int offsets_equal = 1;
    if (!dq) {
        const qft_tensor *am = qt_mem_find(&mem, "m.weight.absmax");
        const qft_st_entry *ra = qt_need(&g_fx, name_of(c, "absmax"));
        ck_assert_int_eq(am->dtype, QFT_DT_F32);
        ck_assert_int_eq(qt_numel(am) * 4, ra->nbytes);
        ck_assert_msg(memcmp(am->data, ra->t.data, ra->nbytes) == 0, "%s: absmax differs", c);
    } else {
        const qft_tensor *qs = qt_mem_find(&mem, "m.weight.quant_state.bitsandbytes__nf4");
        json_t *j = json_loadb(qs->data, qt_numel(qs), 0, NULL);
        ck_assert_ptr_nonnull(j);
        float ours = (float)json_real_value(json_object_get(j, "nested_offset"));
        float theirs = fixture_scalar(name_of(c, "offset"));
        json_decref(j);
        offsets_equal = memcmp(&ours, &theirs, 4) == 0;
        if (!offsets_equal) {
            g_offset_diffs++;
            printf("  %s: offset %.9g vs torch's %.9g (reduction order)\n", c, ours, theirs);
        } else {
            const qft_tensor *qa = qt_mem_find(&mem, "m.weight.absmax");
            const qft_st_entry *rq = qt_need(&g_fx, name_of(c, "qabsmax"));
            ck_assert_int_eq(qt_numel(qa), rq->nbytes);
            ck_assert_msg(memcmp(qa->data, rq->t.data, rq->nbytes) == 0, "%s: qabsmax", c);
            const qft_tensor *na = qt_mem_find(&mem, "m.weight.nested_absmax");
            const qft_st_entry *rn = qt_need(&g_fx, name_of(c, "nested_absmax"));
            ck_assert_int_eq(qt_numel(na) * 4, rn->nbytes);
            ck_assert_msg(memcmp(na->data, rn->t.data, rn->nbytes) == 0, "%s: nested_absmax", c);
        }
    }
    if (offsets_equal) {
        float *y = malloc((size_t)n * sizeof(float)); // (out, in)
        ck_assert_int_eq(vt->dequantize_rows(qw, 0, out, y, &err), 0);
        const qft_st_entry *rd = qt_need(&g_fx, name_of(c, "dequant"));
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(same_value(y[i], rd, (size_t)i), "%s: dequant[%lld] = %.9g", c,
                          (long long)i, y[i]);
        free(y);
    }
    free(x);
    vt->free_weight(qw);
    vt->close(st);
}

START_TEST(test_quantize_matches_bitsandbytes) {
    g_offset_diffs = 0;
    for_each_case(check_quantize);
    printf("nf4 quantize: %zu cases; %d with an offset unlike torch's\n",
           json_array_size(g_cases), g_offset_diffs);
    ck_assert_int_eq(g_offset_diffs, 0);
}
END_TEST

/* The double quantization of the absmax alone, from the fixture's absmax and offset. */
static void check_nested(const char *c, int64_t out, int64_t in, int bs, int dq) {
    if (!dq) return;
    size_t nb;
    float *am = qt_f32(&g_fx, name_of(c, "absmax"), &nb);
    const float off = fixture_scalar(name_of(c, "offset"));
    for (size_t b = 0; b < nb; b++) am[b] -= off;
    const size_t nn = (nb + 255) / 256;
    uint8_t *q = malloc(nb);
    float *na = malloc(nn * sizeof(float));
    ck_assert_int_eq(nf4_quantize_dynamic(am, (int64_t)nb, qft_nf4_dynamic_map, q, na), 0);
    ck_assert_msg(memcmp(q, qt_need(&g_fx, name_of(c, "qabsmax"))->t.data, nb) == 0,
                  "%s: absmax codes", c);
    ck_assert_msg(memcmp(na, qt_need(&g_fx, name_of(c, "nested_absmax"))->t.data, nn * 4) == 0,
                  "%s: nested absmax", c);
    ck_assert_msg(memcmp(qft_nf4_dynamic_map, qt_need(&g_fx, name_of(c, "nested_quant_map"))->t.data,
                         1024) == 0, "%s: dynamic map", c);
    free(am);
    free(q);
    free(na);
    (void)out; (void)in; (void)bs;
}

START_TEST(test_double_quant_matches_bitsandbytes) { for_each_case(check_nested); }
END_TEST

/* Loading the fixture's statistics under bitsandbytes' names and dequantizing: every value
 * bit for bit, and the absmax the nested statistics decode to as well. */
static void check_load(const char *c, int64_t out, int64_t in, int bs, int dq) {
    qt_mem mem = {0};
    qft_tensor_sink sink = qt_mem_sink(&mem);
    qft_err err = {0};
    char js[512];
    const qft_st_entry *e;
#define PUT(n, src)                                              \
    do {                                                         \
        e = qt_need(&g_fx, name_of(c, src));                     \
        ck_assert_int_eq(sink.add(sink.ctx, n, &e->t, &err), 0); \
    } while (0)
    PUT("m.weight", "packed");
    PUT("m.weight.quant_map", "quant_map");
    if (dq) {
        PUT("m.weight.absmax", "qabsmax");
        PUT("m.weight.nested_absmax", "nested_absmax");
        PUT("m.weight.nested_quant_map", "nested_quant_map");
        snprintf(js, sizeof js,
                 "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"float32\", \"shape\": "
                 "[%lld, %lld], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
                 "\"nested_offset\": %.17g}",
                 bs, (long long)out, (long long)in, (double)fixture_scalar(name_of(c, "offset")));
    } else {
        PUT("m.weight.absmax", "absmax");
        snprintf(js, sizeof js,
                 "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"float32\", \"shape\": "
                 "[%lld, %lld]}", bs, (long long)out, (long long)in);
    }
#undef PUT
    qft_tensor jt = {.dtype = QFT_DT_U8, .ndim = 1, .shape = {(int64_t)strlen(js)}, .data = js};
    ck_assert_int_eq(sink.add(sink.ctx, "m.weight.quant_state.bitsandbytes__nf4", &jt, &err), 0);
    qft_tensor_source src = qt_mem_source(&mem);
    void *st = configure("");
    qft_qweight *qw = NULL;
    ck_assert_msg(vt->load(st, "m", out, in, &src, &qw, &err) == 0, "%s: %s", c, err.msg);
    const int64_t n = out * in;
    float *y = malloc((size_t)n * sizeof(float));
    /* in uneven row tiles, to exercise starts inside blocks and on odd elements */
    for (int64_t r = 0; r < out;) {
        int64_t k = (r % 3) + 1 < out - r ? (r % 3) + 1 : out - r;
        ck_assert_int_eq(vt->dequantize_rows(qw, r, k, y + r * in, &err), 0);
        r += k;
    }
    const qft_st_entry *rd = qt_need(&g_fx, name_of(c, "dequant"));
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(same_value(y[i], rd, (size_t)i), "%s: dequant[%lld] = %.9g", c, (long long)i,
                      y[i]);
    if (dq) {
        size_t nb;
        float *ad = qt_f32(&g_fx, name_of(c, "absmax_dq"), &nb);
        for (size_t b = 0; b < nb; b++)
            ck_assert_msg(memcmp(&ad[b], &(float){nf4_block_absmax((const struct qft_qweight *)qw,
                                                                   (int64_t)b)}, 4) == 0,
                          "%s: decoded absmax %zu", c, b);
        free(ad);
    }
    free(y);
    vt->free_weight(qw);
    vt->close(st);
}

START_TEST(test_load_fixture_stats_dequantizes_exactly) { for_each_case(check_load); }
END_TEST

/* The model transformers saved: every quantized linear loads, dequantizes to exactly what
 * bitsandbytes gives (its bf16 output), and saves back to the very same tensors. */
START_TEST(test_transformers_saved_model) {
    char p[4096], q[4096];
    snprintf(p, sizeof p, "%s/tiny_bnb/model.safetensors", qt_fixture_dir());
    snprintf(q, sizeof q, "%s/tiny_bnb/dequant.safetensors", qt_fixture_dir());
    qft_st_file mf, df;
    qft_err err = {0};
    ck_assert_msg(qft_st_open(p, &mf, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_st_open(q, &df, &err) == 0, "%s", err.msg);
    qft_tensor_source src = qt_st_source(&mf);
    void *st = configure("");
    int linears = 0;
    for (int i = 0; i < df.n_entries; i++) {
        const qft_st_entry *e = &df.entries[i];
        char prefix[256];
        snprintf(prefix, sizeof prefix, "%s", e->name);
        *strrchr(prefix, '.') = 0; /* drop ".weight" */
        const int64_t out = e->t.shape[0], in = e->t.shape[1];
        qft_qweight *qw = NULL;
        ck_assert_msg(vt->load(st, prefix, out, in, &src, &qw, &err) == 0, "%s", err.msg);
        float *y = malloc((size_t)(out * in) * sizeof(float));
        float *ref = qt_f32(&df, e->name, NULL);
        ck_assert_int_eq(vt->dequantize_rows(qw, 0, out, y, &err), 0);
        for (int64_t k = 0; k < out * in; k++)
            ck_assert_msg(qft_bf16_to_f32(qft_f32_to_bf16(y[k])) == ref[k], "%s[%lld]", e->name,
                          (long long)k);
        qt_mem mem = {0};
        qft_tensor_sink sink = qt_mem_sink(&mem);
        ck_assert_int_eq(vt->save(qw, prefix, &sink, &err), 0);
        ck_assert_int_eq(mem.n, 6);
        for (int k = 0; k < mem.n; k++) {
            const qft_st_entry *fe = qt_need(&mf, mem.e[k].name);
            ck_assert_int_eq(fe->t.dtype, mem.e[k].t.dtype);
            ck_assert_int_eq(fe->t.ndim, mem.e[k].t.ndim);
            ck_assert_int_eq(fe->nbytes, qt_numel(&mem.e[k].t) * qt_dtype_size(mem.e[k].t.dtype));
            ck_assert_msg(memcmp(fe->t.data, mem.e[k].t.data, fe->nbytes) == 0, "%s re-saved differs",
                          mem.e[k].name);
        }
        free(y);
        free(ref);
        vt->free_weight(qw);
        linears++;
    }
    ck_assert_int_eq(linears, 14);
    /* dense tensors are not this plugin's: load says so with 1 and no error */
    qft_qweight *qw = NULL;
    ck_assert_int_eq(vt->load(st, "lm_head", 128, 64, &src, &qw, &err), 1);
    ck_assert_ptr_null(qw);
    vt->close(st);
    qft_st_close(&mf);
    qft_st_close(&df);
}
END_TEST

static float *gaussian(int64_t n, uint64_t seed, float sd) {
    float *w = malloc((size_t)n * sizeof(float));
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) w[i] = sd * qft_rng_normal(&r);
    return w;
}

START_TEST(test_save_load_round_trip) {
    const int64_t out = 37, in = 192; // (37, 192): blocks straddle rows
    float *w = gaussian(out * in, 7, 0.02f);
    for (int dq = 0; dq < 2; dq++) {
        void *st = configure(dq ? "  blocksize = 128; quant_storage = \"bfloat16\";"
                                : "  double_quant = false; blocksize = 32;");
        qft_qweight *a = NULL, *b = NULL;
        qft_err err = {0};
        ck_assert_int_eq(vt->quantize(st, "w", w, out, in, &a, &err), 0);
        qt_mem mem = {0};
        qft_tensor_sink sink = qt_mem_sink(&mem);
        ck_assert_msg(vt->save(a, "model.layers.0.mlp.up_proj", &sink, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(qt_mem_find(&mem, "model.layers.0.mlp.up_proj.weight")->dtype,
                         dq ? QFT_DT_BF16 : QFT_DT_U8);
        qft_tensor_source src = qt_mem_source(&mem);
        ck_assert_msg(vt->load(st, "model.layers.0.mlp.up_proj", out, in, &src, &b, &err) == 0, "%s",
                      err.msg);
        ck_assert_int_eq(vt->bytes(a), vt->bytes(b));
        float *ya = malloc((size_t)(out * in) * 4), *yb = malloc((size_t)(out * in) * 4);
        ck_assert_int_eq(vt->dequantize_rows(a, 0, out, ya, &err), 0);
        ck_assert_int_eq(vt->dequantize_rows(b, 0, out, yb, &err), 0);
        ck_assert(memcmp(ya, yb, (size_t)(out * in) * 4) == 0);
        /* and the values are NF4's: within half a code step of the input */
        double num = 0, den = 0;
        for (int64_t i = 0; i < out * in; i++) {
            num += (ya[i] - w[i]) * (double)(ya[i] - w[i]);
            den += (double)w[i] * w[i];
        }
        ck_assert_double_lt(sqrt(num / den), 0.12);
        ck_assert_double_gt(sqrt(num / den), 0.02);
        free(ya);
        free(yb);
        vt->free_weight(a);
        vt->free_weight(b);
        vt->close(st);
    }
    free(w);
}
END_TEST

START_TEST(test_bits_per_weight) {
    const int64_t out = 1024, in = 4096;
    float *w = gaussian(out * in, 11, 0.02f);
    const char *cfgs[2] = {"", "  double_quant = false;"};
    double bits[2];
    for (int k = 0; k < 2; k++) {
        void *st = configure(cfgs[k]);
        qft_qweight *qw = NULL;
        qft_err err = {0};
        ck_assert_int_eq(vt->quantize(st, "w", w, out, in, &qw, &err), 0);
        bits[k] = 8.0 * (double)vt->bytes(qw) / (double)(out * in);
        vt->free_weight(qw);
        vt->close(st);
    }
    printf("nf4 bits per weight (1024 x 4096): %.4f with double quant, %.4f without\n", bits[0],
           bits[1]);
    /* 4 + 8/64 + 32/(64*256) = 4.1270 and 4 + 32/64 = 4.5, plus a struct of a few KB */
    ck_assert_double_lt(fabs(bits[0] - 4.1270), 0.004);
    ck_assert_double_lt(fabs(bits[1] - 4.5), 0.004);
    free(w);
}
END_TEST

START_TEST(test_bad_config) {
    qft_err err = {0};
    char path[256];
    ck_assert_int_ne(configure_err("  blocksize = 48;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, ":3:") && strstr(err.msg, "blocksize"),
                  "%s", err.msg);
    ck_assert_int_ne(configure_err("  double_quant = true;\n  blocksize = 8192;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, ":4:"), "%s", err.msg);
    ck_assert_int_ne(configure_err("  quant_type = \"int3\";", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "quant_type"), "%s", err.msg);
    ck_assert_int_ne(configure_err("  block_size = 64;", &err, path), 0);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "block_size"), "%s", err.msg);
    ck_assert_int_ne(configure_err("  blocksize = \"64\";", &err, path), 0);
    ck_assert_msg(strstr(err.msg, ":3:"), "%s", err.msg);
}
END_TEST

/* A saved weight, then one piece of it broken at a time. */
START_TEST(test_bad_checkpoint) {
    const int64_t out = 16, in = 96;
    float *w = gaussian(out * in, 3, 1.0f);
    void *st = configure("");
    qft_qweight *a = NULL, *b = NULL;
    qft_err err = {0};
    ck_assert_int_eq(vt->quantize(st, "w", w, out, in, &a, &err), 0);
    qt_mem mem = {0};
    qft_tensor_sink sink = qt_mem_sink(&mem);
    ck_assert_int_eq(vt->save(a, "p", &sink, &err), 0);
    qft_tensor_source src = qt_mem_source(&mem);

    /* statistics that disagree with the model's shape */
    ck_assert_int_ne(vt->load(st, "p", out, in + 64, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "<memory>") && strstr(err.msg, "shape"), "%s", err.msg);
    ck_assert_ptr_null(b);

    /* a truncated packed tensor */
    qft_tensor *pk = (qft_tensor *)qt_mem_find(&mem, "p.weight");
    const int64_t full = pk->shape[0];
    pk->shape[0] = full - 5;
    ck_assert_int_ne(vt->load(st, "p", out, in, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "p.weight") && strstr(err.msg, "truncated"), "%s", err.msg);
    pk->shape[0] = full;

    /* an absmax vector of the wrong length */
    qft_tensor *am = (qft_tensor *)qt_mem_find(&mem, "p.weight.absmax");
    am->shape[0] -= 1;
    ck_assert_int_ne(vt->load(st, "p", out, in, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "p.weight.absmax") && strstr(err.msg, "disagree"), "%s", err.msg);
    am->shape[0] += 1;

    /* a quant_state that is not JSON */
    qft_tensor *qs = (qft_tensor *)qt_mem_find(&mem, "p.weight.quant_state.bitsandbytes__nf4");
    const void *good = qs->data;
    qs->data = (void *)"{\"quant_type\": nf4";
    qs->shape[0] = 18;
    ck_assert_int_ne(vt->load(st, "p", out, in, &src, &b, &err), 0);
    ck_assert_msg(strstr(err.msg, "quant_state"), "%s", err.msg);
    qs->data = (void *)good;
    qs->shape[0] = (int64_t)strlen(good);

    /* intact again: loads */
    ck_assert_msg(vt->load(st, "p", out, in, &src, &b, &err) == 0, "%s", err.msg);
    ck_assert_int_ne(vt->dequantize_rows(b, 10, 7, w, &err), 0); /* rows past the end */
    vt->free_weight(a);
    vt->free_weight(b);
    vt->close(st);
    free(w);
}
END_TEST

int main(void) {
    vt = qt_load_plugin("QFT_NF4_PLUGIN");
    if (!vt) return 1;
    char p[4096];
    snprintf(p, sizeof p, "%s/nf4_cases.safetensors", qt_fixture_dir());
    qft_err err = {0};
    if (qft_st_open(p, &g_fx, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    g_cases = json_loads(qft_st_meta(&g_fx, "cases"), 0, NULL);
    if (!g_cases) return 1;
    Suite *s = suite_create("quant_nf4");
    TCase *tc = tcase_create("nf4");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_quantize_matches_bitsandbytes);
    tcase_add_test(tc, test_double_quant_matches_bitsandbytes);
    tcase_add_test(tc, test_load_fixture_stats_dequantizes_exactly);
    tcase_add_test(tc, test_transformers_saved_model);
    tcase_add_test(tc, test_save_load_round_trip);
    tcase_add_test(tc, test_bits_per_weight);
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
