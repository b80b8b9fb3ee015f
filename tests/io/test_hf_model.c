/* Hugging Face model folders: the tiny models transformers saved (values checked against
 * the reference script's JSON), saving back byte-for-byte, shards, tied heads, and
 * folders that are wrong in each way the loader must catch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hf_model.h"
#include "io_test_util.h"
#include "safetensors.h"

static char g_dir[4096];

static void setup(void) { iot_mkdtemp(g_dir, sizeof g_dir); }
static void teardown(void) { iot_rm_rf(g_dir); }

static void load_ok(const char *dir, qft_llama_model *m) {
    qft_err err = {0};
    ck_assert_msg(qft_hf_model_load(dir, m, &err) == 0, "%s", err.msg);
}

/* Compares every tensor with the checksums and samples the reference script recorded. */
static void check_against_values(const qft_llama_model *m, const char *model_name) {
    char vp[4096];
    iot_fixture("tiny_llama_values.json", vp, sizeof vp);
    json_t *root = iot_load_json(vp);
    json_t *tensors = json_object_get(json_object_get(root, "models"), model_name);
    ck_assert_ptr_nonnull(tensors);
    ck_assert_int_eq((int)json_object_size(tensors), m->n_entries);
    const char *name;
    json_t *rec;
    json_object_foreach(tensors, name, rec) {
        const qft_param_entry *e = qft_llama_find_entry(m, name);
        ck_assert_msg(e != NULL, "%s not in the parameter table", name);
        json_t *shape = json_object_get(rec, "shape");
        ck_assert_int_eq(e->ndim, (int)json_array_size(shape));
        for (int d = 0; d < e->ndim; d++)
            ck_assert_int_eq(e->shape[d], json_integer_value(json_array_get(shape, (size_t)d)));
        const float *p = m->params + e->offset; // (numel)
        double sum = 0, wsum = 0;
        for (size_t i = 0; i < e->numel; i++) {
            sum += p[i];
            wsum += (double)p[i] * (double)(i % 97 + 1);
        }
        /* the reference sums exactly (math.fsum); a double accumulation of a few thousand
         * fp32 values is off by far less than 1e-9 of the sum of magnitudes */
        double scale = json_number_value(json_object_get(rec, "abs_wsum"));
        double tol = 1e-9 * scale;
        double want_sum = json_number_value(json_object_get(rec, "sum"));
        double want_wsum = json_number_value(json_object_get(rec, "wsum"));
        ck_assert_msg(fabs(sum - want_sum) <= tol, "%s: sum %.17g vs %.17g", name, sum, want_sum);
        ck_assert_msg(fabs(wsum - want_wsum) <= tol, "%s: wsum %.17g vs %.17g", name, wsum,
                      want_wsum);
        size_t k;
        json_t *s;
        json_array_foreach(json_object_get(rec, "samples"), k, s) {
            size_t i = (size_t)json_integer_value(json_array_get(s, 0));
            float want = (float)json_number_value(json_array_get(s, 1));
            ck_assert_msg(p[i] == want, "%s[%zu]: %.9g vs %.9g", name, i, p[i], want);
        }
    }
    json_decref(root);
}

START_TEST(test_load_transformers_f32) {
    char dir[4096];
    qft_llama_model m;
    load_ok(iot_fixture("tiny_llama_f32", dir, sizeof dir), &m);
    ck_assert_int_eq(m.n_entries, 1 + 2 * 9 + 1 + 1);
    ck_assert_ptr_ne(m.p.lm_head, m.p.embed);
    check_against_values(&m, "tiny_llama_f32");
    qft_llama_free(&m);
}
END_TEST

START_TEST(test_load_transformers_bf16) {
    char dir[4096];
    qft_llama_model m, ref;
    load_ok(iot_fixture("tiny_llama_bf16", dir, sizeof dir), &m);
    check_against_values(&m, "tiny_llama_bf16");
    /* the bf16 folder is the f32 model cast by torch: qft's rounding must agree */
    load_ok(iot_fixture("tiny_llama_f32", dir, sizeof dir), &ref);
    ck_assert_uint_eq(m.n_params, ref.n_params);
    for (size_t i = 0; i < m.n_params; i++)
        ck_assert_msg(m.params[i] == qft_bf16_to_f32(qft_f32_to_bf16(ref.params[i])),
                      "param %zu: %.9g vs bf16(%.9g)", i, m.params[i], ref.params[i]);
    qft_llama_free(&m);
    qft_llama_free(&ref);
}
END_TEST

START_TEST(test_load_transformers_tied) {
    char dir[4096];
    qft_llama_model m;
    load_ok(iot_fixture("tiny_llama_tied_bf16", dir, sizeof dir), &m);
    ck_assert_int_eq(m.cfg.tie_word_embeddings, 1);
    ck_assert_ptr_eq(m.p.lm_head, m.p.embed);
    ck_assert_int_eq(m.cfg.rope_type, QFT_ROPE_LLAMA3);
    check_against_values(&m, "tiny_llama_tied_bf16");
    qft_llama_free(&m);
}
END_TEST

static void check_same_bytes(const char *a_path, const char *b_path) {
    size_t la, lb;
    char *a = iot_read(a_path, &la), *b = iot_read(b_path, &lb);
    ck_assert_msg(la == lb && memcmp(a, b, la) == 0, "%s and %s differ", a_path, b_path);
    free(a);
    free(b);
}

/* Saving a loaded model gives back transformers' own model.safetensors, byte for byte; the
 * folder loads again to the same values. QFT_IO_SAVE_DIR keeps the folders for a check
 * with transformers (tests/reference/io_reference.py --check-qft-dir). */
static void save_and_compare(const char *fixture, qft_dtype dt, const char *out_name) {
    char src[4096], out[4300], a[4400], b[4400];
    qft_llama_model m, back;
    load_ok(iot_fixture(fixture, src, sizeof src), &m);
    const char *keep = getenv("QFT_IO_SAVE_DIR");
    snprintf(out, sizeof out, "%s/%s", keep && *keep ? keep : g_dir, out_name);
    qft_err err = {0};
    ck_assert_msg(qft_hf_model_save(out, &m, dt, &err) == 0, "%s", err.msg);
    snprintf(a, sizeof a, "%s/model.safetensors", src);
    snprintf(b, sizeof b, "%s/model.safetensors", out);
    check_same_bytes(a, b);
    load_ok(out, &back);
    ck_assert_uint_eq(back.n_params, m.n_params);
    ck_assert(memcmp(back.params, m.params, m.n_params * sizeof(float)) == 0);
    ck_assert(memcmp(&back.cfg, &m.cfg, sizeof m.cfg) == 0);
    qft_llama_free(&m);
    qft_llama_free(&back);
}

START_TEST(test_save_matches_transformers) {
    save_and_compare("tiny_llama_f32", QFT_DT_F32, "qft_f32");
    save_and_compare("tiny_llama_bf16", QFT_DT_BF16, "qft_bf16");
    save_and_compare("tiny_llama_tied_bf16", QFT_DT_BF16, "qft_tied_bf16");
    /* f32 weights saved as bf16 round exactly as torch's cast did */
    char src[4096], out[4300], a[4400], b[4400];
    qft_llama_model m;
    load_ok(iot_fixture("tiny_llama_f32", src, sizeof src), &m);
    snprintf(out, sizeof out, "%s/cast", g_dir);
    qft_err err = {0};
    ck_assert_msg(qft_hf_model_save(out, &m, QFT_DT_BF16, &err) == 0, "%s", err.msg);
    snprintf(a, sizeof a, "%s/model.safetensors", iot_fixture("tiny_llama_bf16", src, sizeof src));
    snprintf(b, sizeof b, "%s/model.safetensors", out);
    check_same_bytes(a, b);
    ck_assert_int_ne(qft_hf_model_save(out, &m, QFT_DT_I32, &err), 0);
    IOT_ASSERT_MSG_HAS(err, "I32");
    /* F16 folders load too, each value rounded to half precision */
    snprintf(out, sizeof out, "%s/half", g_dir);
    ck_assert_msg(qft_hf_model_save(out, &m, QFT_DT_F16, &err) == 0, "%s", err.msg);
    qft_llama_model h;
    load_ok(out, &h);
    ck_assert_str_eq(h.cfg.torch_dtype, "float16");
    for (size_t i = 0; i < m.n_params; i++)
        ck_assert_msg(h.params[i] == qft_f16_to_f32(qft_f32_to_f16(m.params[i])), "param %zu", i);
    qft_llama_free(&h);
    qft_llama_free(&m);
}
END_TEST

/* Copies the fixture's config.json into dir and writes dir/<file> with the fixture's
 * tensors, less `drop` (NULL: none), plus `extra` (NULL: none) named `extra_name`. */
static void make_folder(const char *fixture, const char *dir, const char *file, const char *drop,
                        const char *extra_name, const qft_tensor *extra) {
    char src[4096], p[4400];
    iot_fixture(fixture, src, sizeof src);
    qft_err err = {0};
    ck_assert_int_eq(qft_mkdir_p(dir, &err), 0);
    snprintf(p, sizeof p, "%s/config.json", src);
    char q[4400];
    snprintf(q, sizeof q, "%s/config.json", dir);
    iot_copy(p, q);
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    qft_st_file f;
    ck_assert_msg(qft_st_open(p, &f, &err) == 0, "%s", err.msg);
    qft_st_writer w;
    qft_st_writer_init(&w);
    for (int i = 0; i < f.n_entries; i++)
        if (!drop || strcmp(f.entries[i].name, drop) != 0)
            ck_assert_int_eq(qft_st_writer_add(&w, f.entries[i].name, &f.entries[i].t, &err), 0);
    if (extra) ck_assert_int_eq(qft_st_writer_add(&w, extra_name, extra, &err), 0);
    snprintf(q, sizeof q, "%s/%s", dir, file);
    ck_assert_msg(qft_st_write(&w, q, &err) == 0, "%s", err.msg);
    qft_st_writer_free(&w);
    qft_st_close(&f);
}

static qft_err expect_load_fail(const char *dir) {
    qft_llama_model m;
    qft_err err = {0};
    int rc = qft_hf_model_load(dir, &m, &err);
    if (rc == 0) qft_llama_free(&m);
    ck_assert_msg(rc != 0, "%s loaded although bad", dir);
    ck_assert_msg(strncmp(err.msg, dir, strlen(dir)) == 0, "\"%s\" does not begin with %s",
                  err.msg, dir);
    return err;
}

START_TEST(test_missing_tensor) {
    char d[4300];
    snprintf(d, sizeof d, "%s/missing", g_dir);
    make_folder("tiny_llama_f32", d, "model.safetensors", "model.layers.1.mlp.up_proj.weight",
                NULL, NULL);
    qft_err e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "tensor 'model.layers.1.mlp.up_proj.weight' not found in model.safetensors");
    /* and a folder with no weights at all */
    snprintf(d, sizeof d, "%s/empty", g_dir);
    qft_err err = {0};
    ck_assert_int_eq(qft_mkdir_p(d, &err), 0);
    char src[4096], p[4400], q[4400];
    snprintf(p, sizeof p, "%s/config.json", iot_fixture("tiny_llama_f32", src, sizeof src));
    snprintf(q, sizeof q, "%s/config.json", d);
    iot_copy(p, q);
    e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "neither model.safetensors nor model.safetensors.index.json found");
}
END_TEST

START_TEST(test_shape_disagrees_with_config) {
    char d[4300], p[4400];
    snprintf(d, sizeof d, "%s/shape", g_dir);
    make_folder("tiny_llama_f32", d, "model.safetensors", NULL, NULL, NULL);
    snprintf(p, sizeof p, "%s/config.json", d);
    json_t *cfg = iot_load_json(p);
    json_object_set_new(cfg, "intermediate_size", json_integer(96));
    ck_assert_int_eq(json_dump_file(cfg, p, JSON_INDENT(2)), 0);
    json_decref(cfg);
    qft_err e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "/model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has "
                          "shape [128, 64] but config.json implies [96, 64]");
    IOT_ASSERT_MSG_HAS(e, "config.json disagrees");
}
END_TEST

/* Two shards and an index, as transformers writes large models. */
START_TEST(test_sharded) {
    char src[4096], d[4300], p[4400];
    iot_fixture("tiny_llama_f32", src, sizeof src);
    snprintf(d, sizeof d, "%s/sharded", g_dir);
    qft_err err = {0};
    ck_assert_int_eq(qft_mkdir_p(d, &err), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    qft_st_file f;
    ck_assert_msg(qft_st_open(p, &f, &err) == 0, "%s", err.msg);
    qft_st_writer w[2];
    qft_st_writer_init(&w[0]);
    qft_st_writer_init(&w[1]);
    static const char *const shard[2] = {"model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors"};
    json_t *wm = json_object();
    for (int i = 0; i < f.n_entries; i++) {
        /* layer 1 and the head in the second shard, the rest in the first */
        const char *name = f.entries[i].name;
        int k = strstr(name, "layers.1.") || strstr(name, "lm_head") ? 1 : 0;
        ck_assert_int_eq(qft_st_writer_add(&w[k], name, &f.entries[i].t, &err), 0);
        json_object_set_new(wm, name, json_string(shard[k]));
    }
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(qft_st_writer_meta(&w[k], "format", "pt", &err), 0);
        snprintf(p, sizeof p, "%s/%s", d, shard[k]);
        ck_assert_msg(qft_st_write(&w[k], p, &err) == 0, "%s", err.msg);
        qft_st_writer_free(&w[k]);
    }
    qft_st_close(&f);
    json_t *index = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 429000, "weight_map", wm);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    ck_assert_int_eq(json_dump_file(index, p, JSON_INDENT(2)), 0);
    char q[4400];
    snprintf(p, sizeof p, "%s/config.json", src);
    snprintf(q, sizeof q, "%s/config.json", d);
    iot_copy(p, q);

    qft_llama_model a, b;
    load_ok(d, &a);
    load_ok(src, &b);
    ck_assert_uint_eq(a.n_params, b.n_params);
    ck_assert(memcmp(a.params, b.params, a.n_params * sizeof(float)) == 0);
    check_against_values(&a, "tiny_llama_f32");
    qft_llama_free(&a);
    qft_llama_free(&b);

    /* the index places a tensor in a shard that lacks it */
    json_object_set_new(wm, "model.layers.0.self_attn.q_proj.weight", json_string(shard[1]));
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    ck_assert_int_eq(json_dump_file(index, p, JSON_INDENT(2)), 0);
    qft_err e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "tensor 'model.layers.0.self_attn.q_proj.weight' not found in "
                          "model-00002-of-00002.safetensors");
    /* the index forgets a tensor */
    json_object_del(wm, "model.layers.0.self_attn.q_proj.weight");
    ck_assert_int_eq(json_dump_file(index, p, JSON_INDENT(2)), 0);
    e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "tensor 'model.layers.0.self_attn.q_proj.weight' not found in "
                          "model.safetensors.index.json");
    /* a shard path that would leave the folder */
    json_object_set_new(wm, "model.layers.0.self_attn.q_proj.weight",
                        json_string("../elsewhere.safetensors"));
    ck_assert_int_eq(json_dump_file(index, p, JSON_INDENT(2)), 0);
    e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "must be a file name in the same folder");
    json_decref(index);
}
END_TEST

/* Tied: a stored lm_head.weight is ignored and the head is the embedding. */
START_TEST(test_tied_with_stray_lm_head) {
    char d[4300];
    snprintf(d, sizeof d, "%s/tied", g_dir);
    enum { V = 256, C = 64 };
    uint16_t *head = malloc((size_t)V * C * sizeof *head); // (V, C) bf16
    qft_rng r;
    qft_rng_seed(&r, 17);
    for (size_t i = 0; i < (size_t)V * C; i++) head[i] = qft_f32_to_bf16(qft_rng_normal(&r));
    qft_tensor t = {.dtype = QFT_DT_BF16, .ndim = 2, .shape = {V, C}, .data = head};
    make_folder("tiny_llama_tied_bf16", d, "model.safetensors", NULL, "lm_head.weight", &t);
    qft_llama_model m, ref;
    load_ok(d, &m);
    char src[4096];
    load_ok(iot_fixture("tiny_llama_tied_bf16", src, sizeof src), &ref);
    ck_assert_ptr_eq(m.p.lm_head, m.p.embed);
    ck_assert(memcmp(m.params, ref.params, m.n_params * sizeof(float)) == 0);
    ck_assert_float_ne(m.p.lm_head[5], qft_bf16_to_f32(head[5]));
    qft_llama_free(&m);
    qft_llama_free(&ref);
    free(head);
}
END_TEST

START_TEST(test_unknown_tensor) {
    char d[4300];
    snprintf(d, sizeof d, "%s/extra", g_dir);
    float bias[64]; // (C)
    qft_rng r;
    qft_rng_seed(&r, 23);
    for (int i = 0; i < 64; i++) bias[i] = qft_rng_normal(&r);
    qft_tensor t = {.dtype = QFT_DT_F32, .ndim = 1, .shape = {64}, .data = bias};
    make_folder("tiny_llama_f32", d, "model.safetensors", NULL,
                "model.layers.0.self_attn.q_proj.bias", &t);
    qft_err e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "'model.layers.0.self_attn.q_proj.bias'");
    IOT_ASSERT_MSG_HAS(e, "model.safetensors holds 1 tensor that is not part of the Llama model");
    /* RoPE buffers of old checkpoints are derived from config.json and are ignored */
    snprintf(d, sizeof d, "%s/inv_freq", g_dir);
    qft_tensor inv = {.dtype = QFT_DT_F32, .ndim = 1, .shape = {8}, .data = bias};
    make_folder("tiny_llama_f32", d, "model.safetensors", NULL,
                "model.layers.0.self_attn.rotary_emb.inv_freq", &inv);
    qft_llama_model m;
    load_ok(d, &m);
    check_against_values(&m, "tiny_llama_f32");
    qft_llama_free(&m);
    /* a weight of the wrong kind */
    snprintf(d, sizeof d, "%s/ints", g_dir);
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = i * 7 - 3;
    qft_tensor ti = {.dtype = QFT_DT_I32, .ndim = 1, .shape = {64}, .data = ids};
    make_folder("tiny_llama_f32", d, "model.safetensors", "model.norm.weight",
                "model.norm.weight", &ti);
    e = expect_load_fail(d);
    IOT_ASSERT_MSG_HAS(e, "tensor 'model.norm.weight' has dtype I32");
}
END_TEST

int main(void) {
    Suite *s = suite_create("io_hf_model");
    TCase *tc = tcase_create("model folders");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_load_transformers_f32);
    tcase_add_test(tc, test_load_transformers_bf16);
    tcase_add_test(tc, test_load_transformers_tied);
    tcase_add_test(tc, test_save_matches_transformers);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_shape_disagrees_with_config);
    tcase_add_test(tc, test_sharded);
    tcase_add_test(tc, test_tied_with_stray_lm_head);
    tcase_add_test(tc, test_unknown_tensor);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
