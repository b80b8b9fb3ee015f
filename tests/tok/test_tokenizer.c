/* Tokenizer checks that always run: the byte tokenizer, UTF-8 repair against Python's
 * errors="replace", BPE merge order on hand-made models, three synthetic tokenizers whose
 * expected ids come from Hugging Face tokenizers (tests/fixtures/tok/synth-*), and load
 * errors that must name the file and the component. */
#include "qft_base.h"
#include "tok_fixture.h"
#include "tok_internal.h"
#include "tokenizer.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[256];

/* ---- the byte tokenizer -------------------------------------------------------------- */
START_TEST(test_byte_tokenizer) {
    qft_tokenizer *t = qft_tokenizer_byte_new();
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(qft_tokenizer_vocab_size(t), 259);
    ck_assert_int_eq(qft_tokenizer_bos(t), 256);
    ck_assert_int_eq(qft_tokenizer_eos(t), 257);
    ck_assert_int_eq(qft_tokenizer_pad(t), 258);
    ck_assert_int_eq(qft_tokenizer_adds_bos(t), 1);
    ck_assert_int_eq(qft_tokenizer_adds_eos(t), 0);
    ck_assert_int_eq(qft_tokenizer_token_to_id(t, "</s>"), 257);
    ck_assert_int_eq(qft_tokenizer_token_to_id(t, "A"), 65);

    qft_rng rng;
    qft_rng_seed(&rng, 1234);
    char text[777]; // every byte value can appear, NUL and invalid UTF-8 included
    for (size_t i = 0; i < sizeof text; i++) text[i] = (char)(qft_rng_next(&rng) & 0xFF);
    int32_t *ids;
    size_t n;
    qft_err err = {0};
    ck_assert_int_eq(qft_tokenizer_encode(t, text, sizeof text, 1, &ids, &n, &err), 0);
    ck_assert_uint_eq(n, sizeof text + 1);
    ck_assert_int_eq(ids[0], 256);
    for (size_t i = 0; i < sizeof text; i++) ck_assert_int_eq(ids[i + 1], (unsigned char)text[i]);

    char *dec;
    size_t len;
    ck_assert_int_eq(qft_tokenizer_decode_n(t, ids, n, 1, &dec, &len, &err), 0);
    ck_assert_uint_eq(len, sizeof text);
    ck_assert_mem_eq(dec, text, sizeof text);
    free(dec);
    ck_assert_int_eq(qft_tokenizer_decode_n(t, ids, 3, 0, &dec, &len, &err), 0);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(dec, "<s>", 3);
    ck_assert_mem_eq(dec + 3, text, 2);
    free(dec);
    free(ids);

    ck_assert_int_eq(qft_tokenizer_encode(t, "hi", 2, 0, &ids, &n, &err), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], 'h');
    ck_assert_int_eq(ids[1], 'i');
    free(ids);

    int32_t bad[3] = {104, 259, 105};
    ck_assert_int_ne(qft_tokenizer_decode(t, bad, 3, 0, &dec, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "259"));
    ck_assert_ptr_nonnull(strstr(err.msg, "position 1"));
    qft_tokenizer_free(t);
}
END_TEST

/* ---- UTF-8 repair: the bytes Python's errors="replace" produces ----------------------- */
static void hex_to(const char *h, char *out, size_t *n) {
    *n = strlen(h) / 2;
    for (size_t i = 0; i < *n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
}

START_TEST(test_utf8_repair) {
    static const char *cases[][2] = {
        {"61eda08062", "61efbfbdefbfbdefbfbd62"}, // a, lone surrogate U+D800, b
        {"f09f98", "efbfbd"},                     // truncated 4-byte sequence: one U+FFFD
        {"e228a1", "efbfbd28efbfbd"},
        {"c0af", "efbfbdefbfbd"},                 // overlong
        {"f4908080", "efbfbdefbfbdefbfbdefbfbd"}, // above U+10FFFF
        {"e080af", "efbfbdefbfbdefbfbd"},
        {"78c3", "78efbfbd"},
        {"f09f9880ff", "f09f9880efbfbd"},
        {"e282ac8080", "e282acefbfbdefbfbd"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char in[64], want[64];
        size_t n_in, n_want;
        hex_to(cases[k][0], in, &n_in);
        hex_to(cases[k][1], want, &n_want);
        tok_buf out = {0};
        ck_assert_int_eq(tok_utf8_sanitize(in, n_in, &out), 1);
        ck_assert_uint_eq(out.len, n_want);
        ck_assert_mem_eq(out.p, want, n_want);
        tok_buf_free(&out);
    }
    tok_buf out = {0};
    ck_assert_int_eq(tok_utf8_sanitize("\xef\xbf\xbe ok \xf0\x9f\x98\x80", 12, &out), 0);
    tok_buf_free(&out);
}
END_TEST

/* ---- hand-made models ---------------------------------------------------------------- */
static const char *write_tok(const char *sub, const char *json, const char *config) {
    static char dir[512];
    char path[600];
    snprintf(dir, sizeof dir, "%s/%s", g_tmp, sub);
    qft_err err = {0};
    ck_assert_int_eq(qft_mkdir_p(dir, &err), 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (config) {
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs(config, f);
        fclose(f);
    } else {
        unlink(path);
    }
    return dir;
}

/* A model over a, b, c with a pipeline of nothing but the BPE. */
static char *model_json(const char *vocab, const char *merges, const char *extra) {
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [],"
             " \"normalizer\": null, \"pre_tokenizer\": null, \"post_processor\": null,"
             " \"decoder\": null, \"model\": {\"type\": \"BPE\", \"dropout\": null,"
             " \"unk_token\": null, %s \"vocab\": {%s}, \"merges\": [%s]}}",
             extra ? extra : "", vocab, merges);
    return buf;
}

static void expect_ids(const qft_tokenizer *t, const char *text, const int32_t *want, size_t n) {
    int32_t *ids;
    size_t k;
    qft_err err = {0};
    ck_assert_msg(qft_tokenizer_encode(t, text, strlen(text), 0, &ids, &k, &err) == 0, "%s", err.msg);
    ck_assert_msg(k == n, "\"%s\": %zu ids, want %zu", text, k, n);
    for (size_t i = 0; i < n; i++) ck_assert_msg(ids[i] == want[i], "\"%s\": id %zu is %d, want %d",
                                                 text, i, ids[i], want[i]);
    free(ids);
}

START_TEST(test_merge_order) {
    const char *vocab = "\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, \"abc\": 5, \"aa\": 6";
    qft_tokenizer *t;
    qft_err err = {0};
    // Rank order decides: (b, c) first, then the stale (a, b) entry is skipped, then (a, bc).
    const char *d = write_tok("m1", model_json(vocab, "\"b c\", \"a b\", \"a bc\", \"a a\"", NULL), NULL);
    ck_assert_msg(qft_tokenizer_load(d, &t, &err) == 0, "%s", err.msg);
    expect_ids(t, "abc", (int32_t[]){5}, 1);
    expect_ids(t, "aba", (int32_t[]){3, 0}, 2);
    expect_ids(t, "aaa", (int32_t[]){6, 0}, 2); // equal ranks: the leftmost pair first
    expect_ids(t, "cab", (int32_t[]){2, 3}, 2);
    qft_tokenizer_free(t);
    // The [a, b] list form reads the same; now (a, b) outranks (b, c).
    d = write_tok("m2", model_json(vocab, "[\"a\", \"b\"], [\"b\", \"c\"], [\"a\", \"bc\"]", NULL),
                  NULL);
    ck_assert_msg(qft_tokenizer_load(d, &t, &err) == 0, "%s", err.msg);
    expect_ids(t, "abc", (int32_t[]){3, 2}, 2);
    qft_tokenizer_free(t);
    // ignore_merges: a word that is itself in the vocab maps directly.
    d = write_tok("m3", model_json(vocab, "", "\"ignore_merges\": true,"), NULL);
    ck_assert_msg(qft_tokenizer_load(d, &t, &err) == 0, "%s", err.msg);
    expect_ids(t, "abc", (int32_t[]){5}, 1);
    expect_ids(t, "abca", (int32_t[]){0, 1, 2, 0}, 4);
    qft_tokenizer_free(t);
}
END_TEST

/* ---- synthetic tokenizers with HF reference ids --------------------------------------- */
static void check_synth(const char *name) {
    char dir[4096], jsonl[4096], rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/tok/synth-%s", name);
    fx_path(dir, sizeof dir, rel);
    snprintf(rel, sizeof rel, "tests/fixtures/tok/synth-%s.jsonl", name);
    fx_path(jsonl, sizeof jsonl, rel);
    fx_stats st;
    ck_assert_int_eq(fx_check_inline(dir, jsonl, name, &st), 0);
    ck_assert_uint_ge(st.checked, 200);
    ck_assert_uint_eq(st.bad_enc, 0);
    ck_assert_uint_eq(st.bad_enc_sp, 0);
    ck_assert_uint_eq(st.bad_dec, 0);
    ck_assert_uint_eq(st.bad_dec_skip, 0);
    ck_assert_uint_eq(st.rt_ours, st.rt_ref);
}

START_TEST(test_synth_meta) { check_synth("meta"); }
END_TEST
START_TEST(test_synth_bytelevel) {
    check_synth("bytelevel");
    // tokenizer_config.json: add_bos_token and add_eos_token replace the template; the pad
    // token is null, so PAD falls back to EOS.
    char dir[4096];
    fx_path(dir, sizeof dir, "tests/fixtures/tok/synth-bytelevel");
    qft_tokenizer *t;
    qft_err err = {0};
    ck_assert_msg(qft_tokenizer_load(dir, &t, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(qft_tokenizer_bos(t), 1);
    ck_assert_int_eq(qft_tokenizer_eos(t), 0);
    ck_assert_int_eq(qft_tokenizer_pad(t), 0);
    ck_assert_int_eq(qft_tokenizer_adds_bos(t), 1);
    ck_assert_int_eq(qft_tokenizer_adds_eos(t), 1);
    qft_tokenizer_free(t);
}
END_TEST
START_TEST(test_synth_suffix) { check_synth("suffix"); }
END_TEST

/* ---- errors name the file and the component ------------------------------------------ */
static void expect_load_error(const char *sub, const char *json, const char *config,
                              const char *needle) {
    const char *d = write_tok(sub, json, config);
    qft_tokenizer *t = NULL;
    qft_err err = {0};
    ck_assert_int_ne(qft_tokenizer_load(d, &t, &err), 0);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error \"%s\" lacks \"%s\"", err.msg, needle);
    ck_assert_msg(strstr(err.msg, sub) != NULL, "error \"%s\" lacks the path", err.msg);
}

static char *with(const char *key, const char *value) {
    static char buf[4096];
    const char *base = model_json("\"a\": 0, \"b\": 1, \"ab\": 2", "\"a b\"", NULL);
    const char *at = strstr(base, key);
    ck_assert_ptr_nonnull(at);
    const char *end = strchr(at, ',');
    snprintf(buf, sizeof buf, "%.*s%s: %s%s", (int)(at - base), base, key, value, end);
    return buf;
}

START_TEST(test_load_errors) {
    qft_tokenizer *t = NULL;
    qft_err err = {0};
    char missing[512];
    snprintf(missing, sizeof missing, "%s/nowhere", g_tmp);
    ck_assert_int_ne(qft_tokenizer_load(missing, &t, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "nowhere/tokenizer.json"));

    expect_load_error("e_json", "{\"model\": \n  {\"type\": }", NULL, "tokenizer.json:2:");
    expect_load_error("e_norm", with("\"normalizer\"", "{\"type\": \"NFC\"}"), NULL,
                      "normalizer type \"NFC\"");
    expect_load_error("e_pre", with("\"pre_tokenizer\"", "{\"type\": \"Whitespace\"}"), NULL,
                      "pre_tokenizer type \"Whitespace\"");
    expect_load_error("e_post", with("\"post_processor\"", "{\"type\": \"BertProcessing\"}"), NULL,
                      "post_processor type \"BertProcessing\"");
    expect_load_error("e_dec", with("\"decoder\"", "{\"type\": \"WordPiece\"}"), NULL,
                      "decoder type \"WordPiece\"");
    expect_load_error("e_drop", with("\"dropout\"", "0.1"), NULL, "model.dropout");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", model_json("\"a\": 0, \"b\": 1", "\"a b\"", NULL));
    expect_load_error("e_merge", buf, NULL, "model.merges[0]");
    expect_load_error("e_wp", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", NULL,
                      "model type \"WordPiece\"");
    expect_load_error("e_cfg", model_json("\"a\": 0, \"b\": 1, \"ab\": 2", "\"a b\"", NULL),
                      "{\"add_bos_token\": true}", "tokenizer_config.json");
    expect_load_error("e_cfg2", model_json("\"a\": 0, \"b\": 1, \"ab\": 2", "\"a b\"", NULL),
                      "{\"bos_token\": \"<nope>\"}", "<nope>");
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft_test_tok_%ld", (long)getpid());
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_byte_tokenizer);
    tcase_add_test(tc, test_utf8_repair);
    tcase_add_test(tc, test_merge_order);
    tcase_add_test(tc, test_synth_meta);
    tcase_add_test(tc, test_synth_bytelevel);
    tcase_add_test(tc, test_synth_suffix);
    tcase_add_test(tc, test_load_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
