/* `qft expand` against tests/fixtures/expand (tests/reference/expand_reference.py, the
 * seed's block_expansion.py rule applied with torch): for each case the command is run on
 * the case's source folder with its --set, and every tensor of the written checkpoint must
 * equal the fixture's bit for bit, in the same dtype (fp32 for llama/untied, bf16 for the
 * 5-layer model: an unchanged tensor passes through fp32 and back losslessly), with no
 * tensor missing or extra; config.json must carry the new num_hidden_layers. */
#include "export_test_util.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_case(const char *name) {
    qft_err err = {0};
    char path[8192], out_dir[8192], cmd[16384];
    snprintf(path, sizeof path, "%s/tests/fixtures/expand/%s.safetensors", et_root(), name);
    qft_st_file want;
    ck_assert_msg(qft_st_open(path, &want, &err) == 0, "%s", err.msg);
    const char *src = qft_st_meta(&want, "source"), *args = qft_st_meta(&want, "qft_args"),
               *layers = qft_st_meta(&want, "num_hidden_layers"),
               *inserted = qft_st_meta(&want, "inserted");
    ck_assert_msg(src && args && layers && inserted, "%s: metadata incomplete", path);

    snprintf(out_dir, sizeof out_dir, "%s/%s", et_tmp(), name);
    snprintf(cmd, sizeof cmd, "'%s' expand '%s/%s' -o '%s' %s", getenv("QFT_BIN"), et_root(), src,
             out_dir, args);
    char *out;
    int code = et_run(cmd, &out);
    ck_assert_msg(code == 0, "%s failed (%d): %s", cmd, code, out);
    /* the command names the inserted blocks; the fixture lists them as a JSON array */
    char ids[256] = "";
    json_t *ins = json_loads(inserted, 0, NULL);
    ck_assert_ptr_nonnull(ins);
    for (size_t i = 0; i < json_array_size(ins); i++)
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), " %lld",
                 (long long)json_integer_value(json_array_get(ins, i)));
    json_decref(ins);
    char expect_msg[512];
    snprintf(expect_msg, sizeof expect_msg, "to %s layers (inserted:%s)", layers, ids);
    ck_assert_msg(strstr(out, expect_msg), "%s: expected \"%s\" in: %s", name, expect_msg, out);
    free(out);

    qft_st_file got;
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    ck_assert_msg(qft_st_open(path, &got, &err) == 0, "%s", err.msg);
    ck_assert_msg(got.n_entries == want.n_entries, "%s: %d tensors written, fixture has %d", name,
                  got.n_entries, want.n_entries);
    size_t bytes = 0;
    for (int i = 0; i < want.n_entries; i++) {
        const qft_st_entry *w = &want.entries[i], *g = qft_st_find(&got, w->name);
        ck_assert_msg(g != NULL, "%s: tensor %s missing", name, w->name);
        ck_assert_msg(g->t.dtype == w->t.dtype, "%s: %s is %s, fixture %s", name, w->name,
                      qft_dtype_name(g->t.dtype), qft_dtype_name(w->t.dtype));
        ck_assert_int_eq(g->t.ndim, w->t.ndim);
        for (int d = 0; d < w->t.ndim; d++) ck_assert_int_eq(g->t.shape[d], w->t.shape[d]);
        ck_assert_uint_eq(g->nbytes, w->nbytes);
        ck_assert_msg(memcmp(g->t.data, w->t.data, w->nbytes) == 0, "%s: %s differs", name,
                      w->name);
        bytes += w->nbytes;
    }
    qft_st_close(&got);

    snprintf(path, sizeof path, "%s/config.json", out_dir);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    ck_assert_msg(c != NULL, "%s: %s", path, je.text);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "num_hidden_layers")), atoi(layers));
    json_decref(c);
    printf("  %s: %s -> %s layers (inserted:%s), %d tensors, %zu bytes bit-equal\n", name, src,
           layers, ids, want.n_entries, bytes);
    qft_st_close(&want);
}

START_TEST(test_expand_untied_rate) { check_case("untied_r0.5"); }
END_TEST
START_TEST(test_expand_bf16_rate) { check_case("llama5_r0.4"); }
END_TEST
START_TEST(test_expand_bf16_interval) { check_case("llama5_i3"); }
END_TEST
/* int(5 * 0.6) = 3 asked, split 1: the seed's rule inserts after every layer */
START_TEST(test_expand_rule_overshoot) { check_case("llama5_r0.6"); }
END_TEST

/* A rate that adds no layer is refused with the reason, and nothing is written. */
START_TEST(test_expand_rate_too_small) {
    char cmd[16384], *out;
    snprintf(cmd, sizeof cmd, "'%s' expand '%s/tests/fixtures/llama/untied' -o '%s/none' "
                              "--set adapter.expansion_rate=0.1", getenv("QFT_BIN"), et_root(),
             et_tmp());
    ck_assert_int_ne(et_run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "adds no layer"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' expand '%s/tests/fixtures/llama/untied' -o '%s/none' "
                              "--set train.lr=1", getenv("QFT_BIN"), et_root(), et_tmp());
    ck_assert_int_ne(et_run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "only adapter.expansion_rate"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "test -e '%s/none'", et_tmp());
    ck_assert_int_ne(et_run(cmd, &out), 0);
    free(out);
}
END_TEST

int main(void) {
    if (!getenv("QFT_BIN")) {
        fprintf(stderr, "QFT_BIN is not set: run this through meson\n");
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("export_expand");
    TCase *tc = tcase_create("expand");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_expand_untied_rate);
    tcase_add_test(tc, test_expand_bf16_rate);
    tcase_add_test(tc, test_expand_bf16_interval);
    tcase_add_test(tc, test_expand_rule_overshoot);
    tcase_add_test(tc, test_expand_rate_too_small);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    et_cleanup();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
