/* config.json: the fixtures transformers wrote, bad files made from them, and qft's own
 * config.json read back. */
#include <stdlib.h>
#include <string.h>

#include "hf_model.h"
#include "io_test_util.h"

static char g_dir[4096];

static void setup(void) { iot_mkdtemp(g_dir, sizeof g_dir); }
static void teardown(void) { iot_rm_rf(g_dir); }

/* Writes the f32 fixture's config.json with key `key` replaced by the JSON text `val`
 * (NULL: key removed) into the scratch folder; returns the path. */
static const char *write_variant(const char *key, const char *val, char *path, size_t n) {
    char src[4096];
    iot_fixture("tiny_llama_f32/config.json", src, sizeof src);
    json_t *root = iot_load_json(src);
    if (val) {
        json_error_t jerr;
        json_t *v = json_loads(val, JSON_DECODE_ANY, &jerr);
        ck_assert_msg(v != NULL, "bad test value %s", val);
        json_object_set_new(root, key, v);
    } else {
        json_object_del(root, key);
    }
    snprintf(path, n, "%s/config.json", g_dir);
    ck_assert_int_eq(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
    return path;
}

static qft_err expect_fail(const char *path) {
    qft_llama_config cfg;
    qft_err err = {0};
    ck_assert_msg(qft_hf_config_load(path, &cfg, &err) != 0, "%s loaded although bad", path);
    ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0, "\"%s\" does not begin with %s",
                  err.msg, path);
    return err;
}

START_TEST(test_fixture_f32) {
    char dir[4096];
    iot_fixture("tiny_llama_f32", dir, sizeof dir);
    qft_llama_config c;
    qft_err err = {0};
    ck_assert_msg(qft_hf_config_load(dir, &c, &err) == 0, "%s", err.msg); /* a folder works */
    ck_assert_int_eq(c.vocab_size, 256);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.intermediate_size, 128);
    ck_assert_int_eq(c.num_hidden_layers, 2);
    ck_assert_int_eq(c.num_attention_heads, 4);
    ck_assert_int_eq(c.num_key_value_heads, 2);
    ck_assert_int_eq(c.head_dim, 16);
    ck_assert_int_eq(c.max_position_embeddings, 2048);
    ck_assert_float_eq(c.rms_norm_eps, 1e-6f);
    ck_assert_float_eq(c.rope_theta, 10000.0f); /* from transformers 5's rope_parameters */
    ck_assert_int_eq(c.rope_type, QFT_ROPE_DEFAULT);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_int_eq(c.bos_token_id, 1);
    ck_assert_int_eq(c.eos_token_id, 2);
    ck_assert_int_eq(c.pad_token_id, -1); /* null */
    ck_assert_float_eq(c.initializer_range, 0.02f);
    ck_assert_str_eq(c.torch_dtype, "float32");
}
END_TEST

START_TEST(test_fixture_tied_llama3) {
    char path[4096];
    iot_fixture("tiny_llama_tied_bf16/config.json", path, sizeof path);
    qft_llama_config c;
    qft_err err = {0};
    ck_assert_msg(qft_hf_config_load(path, &c, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.tie_word_embeddings, 1);
    ck_assert_int_eq(c.rope_type, QFT_ROPE_LLAMA3);
    ck_assert_float_eq(c.rope_theta, 500000.0f);
    ck_assert_float_eq(c.rope_factor, 8.0f);
    ck_assert_float_eq(c.rope_low_freq_factor, 1.0f);
    ck_assert_float_eq(c.rope_high_freq_factor, 4.0f);
    ck_assert_int_eq(c.rope_original_max_position_embeddings, 1024);
    ck_assert_int_eq(c.max_position_embeddings, 4096);
    ck_assert_int_eq(c.eos_token_id, 7); /* first of [7, 9] */
    ck_assert_int_eq(c.pad_token_id, 3);
    ck_assert_str_eq(c.torch_dtype, "bfloat16");
}
END_TEST

/* transformers 4 spelling: rope_theta and rope_scaling at the top, torch_dtype. */
START_TEST(test_transformers4_spelling) {
    char p[4200];
    write_variant("rope_parameters", NULL, p, sizeof p);
    json_t *root = iot_load_json(p);
    json_object_set_new(root, "rope_theta", json_integer(500000)); /* integers are fine too */
    json_object_del(root, "dtype");
    json_object_set_new(root, "torch_dtype", json_string("bfloat16"));
    json_object_del(root, "num_key_value_heads");
    json_object_del(root, "head_dim");
    json_object_set_new(root, "rope_scaling",
                        json_pack("{s:s, s:f, s:f, s:f, s:i}", "type", "llama3", "factor", 32.0,
                                  "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                  "original_max_position_embeddings", 8192));
    json_object_set_new(root, "eos_token_id", json_pack("[i,i,i]", 128001, 128008, 128009));
    ck_assert_int_eq(json_dump_file(root, p, 0), 0);
    json_decref(root);
    qft_llama_config c;
    qft_err err = {0};
    ck_assert_msg(qft_hf_config_load(p, &c, &err) == 0, "%s", err.msg);
    ck_assert_float_eq(c.rope_theta, 500000.0f);
    ck_assert_int_eq(c.rope_type, QFT_ROPE_LLAMA3);
    ck_assert_float_eq(c.rope_factor, 32.0f);
    ck_assert_int_eq(c.rope_original_max_position_embeddings, 8192);
    ck_assert_int_eq(c.num_key_value_heads, 4); /* defaults to the head count */
    ck_assert_int_eq(c.head_dim, 16);           /* and hidden / heads */
    ck_assert_int_eq(c.eos_token_id, 128001);
    ck_assert_str_eq(c.torch_dtype, "bfloat16");
    /* "default" and null mean plain RoPE */
    write_variant("rope_scaling", "{\"rope_type\": \"default\"}", p, sizeof p);
    ck_assert_msg(qft_hf_config_load(p, &c, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.rope_type, QFT_ROPE_DEFAULT);
    write_variant("rope_scaling", "null", p, sizeof p);
    ck_assert_msg(qft_hf_config_load(p, &c, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.rope_type, QFT_ROPE_DEFAULT);
}
END_TEST

START_TEST(test_missing_key) {
    static const char *const required[] = {"hidden_size", "num_hidden_layers",
                                           "num_attention_heads", "vocab_size",
                                           "intermediate_size"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char p[4200], want[128];
        write_variant(required[i], NULL, p, sizeof p);
        qft_err e = expect_fail(p);
        snprintf(want, sizeof want, "config.json: missing key '%s'", required[i]);
        IOT_ASSERT_MSG_HAS(e, want);
    }
}
END_TEST

START_TEST(test_mistyped_key) {
    char p[4200];
    write_variant("hidden_size", "\"abc\"", p, sizeof p);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "config.json: key 'hidden_size' must be a positive integer, got \"abc\"");
    write_variant("num_hidden_layers", "-2", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'num_hidden_layers' must be a positive integer, got -2");
    write_variant("intermediate_size", "128.5", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'intermediate_size' must be a positive integer, got 128.5");
    write_variant("vocab_size", "0", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'vocab_size' must be a positive integer, got 0");
    write_variant("rms_norm_eps", "-1e-5", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'rms_norm_eps' must be a positive number");
    write_variant("tie_word_embeddings", "\"yes\"", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'tie_word_embeddings' must be true or false, got \"yes\"");
    write_variant("eos_token_id", "[\"</s>\"]", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'eos_token_id[0]' must be a non-negative integer");
    write_variant("num_key_value_heads", "3", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
}
END_TEST

START_TEST(test_rope_scaling_unknown) {
    char p[4200];
    write_variant("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}", p, sizeof p);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'rope_scaling.rope_type' has unsupported value \"yarn\"");
    write_variant("rope_scaling", NULL, p, sizeof p);
    write_variant("rope_parameters", "{\"rope_type\": \"linear\", \"rope_theta\": 10000.0}", p,
                  sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'rope_parameters.rope_type' has unsupported value \"linear\"");
    write_variant("rope_parameters",
                  "{\"rope_type\": \"llama3\", \"rope_theta\": 10000.0, \"factor\": 8.0}", p,
                  sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "missing key 'rope_parameters.low_freq_factor'");
    write_variant("rope_parameters", "\"llama3\"", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'rope_parameters' must be an object or null");
}
END_TEST

START_TEST(test_not_llama) {
    char p[4200];
    write_variant("model_type", "\"mistral\"", p, sizeof p);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'model_type' is \"mistral\"; only \"llama\" is supported");
    write_variant("model_type", NULL, p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "missing key 'model_type'");
    write_variant("model_type", "\"llama\"", p, sizeof p);
    write_variant("attention_bias", "true", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'attention_bias' is true");
    IOT_ASSERT_MSG_HAS(e, "not supported");
    write_variant("attention_bias", "false", p, sizeof p);
    write_variant("mlp_bias", "true", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'mlp_bias' is true");
    write_variant("mlp_bias", "false", p, sizeof p);
    write_variant("hidden_act", "\"gelu\"", p, sizeof p);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "key 'hidden_act' is \"gelu\"");
}
END_TEST

START_TEST(test_invalid_json) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    const char *text = "{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 64,,\n}\n";
    iot_write(p, text, strlen(text));
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "config.json:3:");
    IOT_ASSERT_MSG_HAS(e, "invalid JSON");
    char absent[4300];
    snprintf(absent, sizeof absent, "%s/nope/config.json", g_dir);
    e = expect_fail(absent);
    IOT_ASSERT_MSG_HAS(e, "cannot open");
}
END_TEST

/* Whatever qft writes it reads back field for field, spelled like transformers. */
START_TEST(test_save_roundtrip) {
    qft_llama_config c, back;
    qft_llama_config_defaults(&c);
    c.vocab_size = 1000, c.hidden_size = 96, c.intermediate_size = 200;
    c.num_hidden_layers = 3, c.num_attention_heads = 6, c.num_key_value_heads = 2;
    c.head_dim = 24; /* not hidden / heads: must be written, not recomputed */
    c.max_position_embeddings = 8192, c.rms_norm_eps = 1e-5f, c.rope_theta = 500000.0f;
    c.rope_type = QFT_ROPE_LLAMA3, c.rope_factor = 8.0f, c.rope_low_freq_factor = 1.0f;
    c.rope_high_freq_factor = 4.0f, c.rope_original_max_position_embeddings = 8192;
    c.tie_word_embeddings = 1, c.bos_token_id = 128000, c.eos_token_id = 128001;
    c.pad_token_id = -1, c.initializer_range = 0.013f;
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", g_dir);
    qft_err err = {0};
    ck_assert_msg(qft_hf_config_save(p, &c, "bfloat16", &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_hf_config_load(g_dir, &back, &err) == 0, "%s", err.msg);
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "bfloat16");
    ck_assert_int_eq(back.vocab_size, c.vocab_size);
    ck_assert_int_eq(back.hidden_size, c.hidden_size);
    ck_assert_int_eq(back.intermediate_size, c.intermediate_size);
    ck_assert_int_eq(back.num_hidden_layers, c.num_hidden_layers);
    ck_assert_int_eq(back.num_attention_heads, c.num_attention_heads);
    ck_assert_int_eq(back.num_key_value_heads, c.num_key_value_heads);
    ck_assert_int_eq(back.head_dim, c.head_dim);
    ck_assert_int_eq(back.max_position_embeddings, c.max_position_embeddings);
    ck_assert_float_eq(back.rms_norm_eps, c.rms_norm_eps);
    ck_assert_float_eq(back.rope_theta, c.rope_theta);
    ck_assert_int_eq(back.rope_type, c.rope_type);
    ck_assert_float_eq(back.rope_factor, c.rope_factor);
    ck_assert_float_eq(back.rope_low_freq_factor, c.rope_low_freq_factor);
    ck_assert_float_eq(back.rope_high_freq_factor, c.rope_high_freq_factor);
    ck_assert_int_eq(back.rope_original_max_position_embeddings,
                     c.rope_original_max_position_embeddings);
    ck_assert_int_eq(back.tie_word_embeddings, 1);
    ck_assert_int_eq(back.bos_token_id, c.bos_token_id);
    ck_assert_int_eq(back.eos_token_id, c.eos_token_id);
    ck_assert_int_eq(back.pad_token_id, -1);
    ck_assert_float_eq(back.initializer_range, c.initializer_range);
    ck_assert_str_eq(back.torch_dtype, "bfloat16");
    /* spelled as Python would, so diffs against transformers' own files stay readable */
    size_t len;
    char *text = iot_read(p, &len);
    ck_assert_ptr_nonnull(strstr(text, "\"rms_norm_eps\": 1e-05,"));
    ck_assert_ptr_nonnull(strstr(text, "\"rope_theta\": 500000.0,"));
    ck_assert_ptr_nonnull(strstr(text, "\"initializer_range\": 0.013,"));
    ck_assert_ptr_nonnull(strstr(text, "\"factor\": 8.0,"));
    ck_assert_ptr_nonnull(strstr(text, "\"pad_token_id\": null,"));
    ck_assert_ptr_nonnull(strstr(text, "\"architectures\": [\n    \"LlamaForCausalLM\"\n  ]"));
    free(text);
    /* plain RoPE and the f32 fixture's config survive the trip as well */
    qft_llama_config f;
    char fx[4096];
    iot_fixture("tiny_llama_f32", fx, sizeof fx);
    ck_assert_int_eq(qft_hf_config_load(fx, &f, &err), 0);
    ck_assert_int_eq(qft_hf_config_save(g_dir, &f, NULL, &err), 0); /* folder; dtype from cfg */
    ck_assert_msg(qft_hf_config_load(p, &back, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(memcmp(&f, &back, sizeof f), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("io_hf_config");
    TCase *tc = tcase_create("config.json");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_fixture_f32);
    tcase_add_test(tc, test_fixture_tied_llama3);
    tcase_add_test(tc, test_transformers4_spelling);
    tcase_add_test(tc, test_missing_key);
    tcase_add_test(tc, test_mistyped_key);
    tcase_add_test(tc, test_rope_scaling_unknown);
    tcase_add_test(tc, test_not_llama);
    tcase_add_test(tc, test_invalid_json);
    tcase_add_test(tc, test_save_roundtrip);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
