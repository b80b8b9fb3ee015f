/* One batch of Orca-Math-style examples through the Llama 3 tokenizer, against the seed's
 * own InstructionDataset + collate_fn logic run with transformers
 * (tests/fixtures/train/seed_batch_llama3.json, made by tests/reference/batch_reference.py):
 * ids, labels and attention mask must be identical, including the truncated rows and the
 * row exactly context_length long. Needs ../shared/assets/tokenizers/llama3; skips when absent. */
#include "batch.h"

#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_root[4096];

START_TEST(matches_the_seed) {
    char tok_dir[4200], fx_path[4200];
    snprintf(tok_dir, sizeof tok_dir, "%s/../shared/assets/tokenizers/llama3", g_root);
    snprintf(fx_path, sizeof fx_path, "%s/tests/fixtures/train/seed_batch_llama3.json", g_root);
    char tj[4300];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tok_dir);
    if (access(tj, R_OK) != 0) {
        printf("SKIP: %s is absent (../shared not present)\n", tj);
        return;
    }
    json_error_t je;
    json_t *fx = json_load_file(fx_path, 0, &je);
    ck_assert_msg(fx != NULL, "%s: %s", fx_path, je.text);
    qft_tokenizer *tok = NULL;
    qft_err err = {0};
    ck_assert_msg(qft_tokenizer_load(tok_dir, &tok, &err) == 0, "%s", err.msg);

    const json_t *jp = json_object_get(fx, "prompts"), *jr = json_object_get(fx, "responses");
    const long n = (long)json_array_size(jp);
    const int ctx = (int)json_integer_value(json_object_get(fx, "context_length"));
    const char **prompts = calloc((size_t)n, sizeof(char *)), **responses = calloc((size_t)n, sizeof(char *));
    ck_assert(prompts && responses);
    for (long i = 0; i < n; i++) {
        prompts[i] = json_string_value(json_array_get(jp, (size_t)i));
        responses[i] = json_string_value(json_array_get(jr, (size_t)i));
    }
    qft_data_examples d;
    ck_assert_msg(qft_data_examples_from_pairs(&d, tok, prompts, responses, n, ctx, &err) == 0, "%s", err.msg);
    const json_t *full = json_object_get(fx, "full_lengths");
    long truncated = 0;
    for (long i = 0; i < n; i++) {
        long want = (long)json_integer_value(json_array_get(full, (size_t)i));
        ck_assert_int_eq(d.ex[i].n_full, want);
        truncated += want > ctx;
    }
    ck_assert_int_eq(d.n_truncated, truncated);
    ck_assert_int_ge(truncated, 1);

    ck_assert_int_eq(qft_tokenizer_pad(tok), json_integer_value(json_object_get(fx, "pad_id")));
    qft_data_loader_options o = {.batch_size = (int)n, .pad_id = qft_tokenizer_pad(tok)};
    qft_data_loader l;
    ck_assert_int_eq(qft_data_loader_init(&l, &d, &o, &err), 0);
    qft_batch b;
    ck_assert_int_eq(qft_data_loader_get(&l, 0, &b, NULL, &err), 0);
    const json_t *ids = json_object_get(fx, "ids"), *labels = json_object_get(fx, "labels"),
                 *mask = json_object_get(fx, "mask");
    ck_assert_int_eq(b.B, (int)json_array_size(ids));
    ck_assert_int_eq(b.T, (int)json_array_size(json_array_get(ids, 0)));
    for (int r = 0; r < b.B; r++)
        for (int t = 0; t < b.T; t++) {
            size_t at = (size_t)r * b.T + t; // (B, T)
            ck_assert_msg(b.ids[at] == json_integer_value(json_array_get(json_array_get(ids, r), t)),
                          "ids[%d][%d] = %d", r, t, b.ids[at]);
            ck_assert_msg(b.labels[at] == json_integer_value(json_array_get(json_array_get(labels, r), t)),
                          "labels[%d][%d] = %d", r, t, b.labels[at]);
            ck_assert_int_eq(b.mask[at], json_integer_value(json_array_get(json_array_get(mask, r), t)));
        }
    qft_data_loader_free(&l);
    qft_data_examples_free(&d);
    free(prompts);
    free(responses);
    qft_tokenizer_free(tok);
    json_decref(fx);
}
END_TEST

int main(void) {
    const char *r = getenv("QFT_SOURCE_ROOT");
    snprintf(g_root, sizeof g_root, "%s", r ? r : QFT_TEST_SOURCE_ROOT);
    Suite *s = suite_create("data_batch_seed");
    TCase *tc = tcase_create("seed");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, matches_the_seed);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
