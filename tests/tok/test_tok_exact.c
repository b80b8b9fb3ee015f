/* Exactness against Hugging Face tokenizers on the real tokenizers in ../shared: every
 * corpus text of tests/fixtures/tok/corpus.jsonl must encode to the ids the reference
 * recorded (with and without special tokens) and decode to the reference's string (with
 * and without skipping special tokens). Zero mismatches allowed. Skips, passing, when
 * ../shared/assets/tokenizers is absent. Also encodes the corpus from four threads sharing
 * one tokenizer and checks that the ids do not change. */
#include "tok_fixture.h"
#include "tokenizer.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct corpus {
    json_t **lines; /* lines[0] is the meta line */
    size_t n;
} corpus;

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

typedef struct thread_job {
    const qft_tokenizer *t;
    fx_text *texts;
    int32_t **ids;
    size_t *n_ids;
    size_t n, start, step;
    int failures;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    for (size_t i = j->start; i < j->n; i += j->step) {
        if (!j->texts[i].raw) continue;
        int32_t *ids;
        size_t n;
        qft_err e = {0};
        if (qft_tokenizer_encode(j->t, j->texts[i].raw, j->texts[i].raw_len, 0, &ids, &n, &e) ||
            !ids_equal(ids, n, j->ids[i], j->n_ids[i]))
            j->failures++;
        free(ids);
    }
    return NULL;
}

static void run_exact(const char *name) {
    char dir[2048], path[4096];
    fx_path(dir, sizeof dir, "../shared/assets/tokenizers");
    snprintf(path, sizeof path, "%s/%s/tokenizer.json", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("SKIP tok_exact %s: %s is absent (needs ../shared/assets/tokenizers)\n", name, path);
        return;
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    qft_tokenizer *t;
    qft_err err = {0};
    ck_assert_msg(qft_tokenizer_load(path, &t, &err) == 0, "%s", err.msg);

    corpus c, r;
    fx_path(path, sizeof path, "tests/fixtures/tok/corpus.jsonl");
    c.lines = fx_read_jsonl(path, &c.n);
    ck_assert_msg(c.lines != NULL, "cannot read %s", path);
    snprintf(dir, sizeof dir, "tests/fixtures/tok/%s.jsonl", name);
    fx_path(path, sizeof path, dir);
    r.lines = fx_read_jsonl(path, &r.n);
    ck_assert_msg(r.lines != NULL, "cannot read %s", path);
    ck_assert_uint_eq(c.n, r.n);

    json_t *meta = json_object_get(r.lines[0], "meta");
    long n_pre, n_suf;
    int32_t *pre = fx_ids(meta, "special_prefix", &n_pre);
    int32_t *suf = fx_ids(meta, "special_suffix", &n_suf);
    ck_assert(n_pre >= 0 && n_suf >= 0);

    size_t n = c.n - 1;
    fx_stats st = {0};
    fx_text *texts = calloc(n, sizeof *texts);
    int32_t **all_ids = calloc(n, sizeof *all_ids);
    size_t *all_n = calloc(n, sizeof *all_n);
    ck_assert(texts && all_ids && all_n);
    for (size_t i = 0; i < n; i++) {
        json_t *crec = c.lines[i + 1], *rrec = r.lines[i + 1];
        ck_assert_int_eq(json_integer_value(json_object_get(crec, "i")), (long)i);
        ck_assert_int_eq(json_integer_value(json_object_get(rrec, "i")), (long)i);
        int rc = fx_check_record(t, name, i, crec, rrec, pre, n_pre, suf, n_suf, &st, &all_ids[i],
                                 &all_n[i], &texts[i]);
        ck_assert_msg(rc >= 0, "corpus record %zu is broken (or its dataset row changed)", i);
    }

    // Four threads, one tokenizer: the same ids as the single-threaded pass.
    pthread_t th[4];
    thread_job jobs[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (thread_job){t, texts, all_ids, all_n, n, (size_t)k, 4, 0};
        ck_assert_int_eq(pthread_create(&th[k], NULL, thread_main, &jobs[k]), 0);
    }
    int thread_failures = 0;
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        thread_failures += jobs[k].failures;
    }

    printf("tok_exact %s: %zu texts checked (%zu dataset texts skipped), encode mismatches %zu "
           "(add_special %zu), decode mismatches %zu (skip_special %zu), round trip %zu/%zu "
           "(reference %zu), threaded mismatches %d\n",
           name, st.checked, st.skipped, st.bad_enc, st.bad_enc_sp, st.bad_dec, st.bad_dec_skip,
           st.rt_ours, st.checked, st.rt_ref, thread_failures);
    ck_assert_uint_eq(st.bad_enc, 0);
    ck_assert_uint_eq(st.bad_enc_sp, 0);
    ck_assert_uint_eq(st.bad_dec, 0);
    ck_assert_uint_eq(st.bad_dec_skip, 0);
    ck_assert_uint_eq(st.rt_ours, st.rt_ref);
    ck_assert_int_eq(thread_failures, 0);
    ck_assert_uint_ge(st.checked, 2000);

    for (size_t i = 0; i < n; i++) {
        fx_text_free(&texts[i]);
        free(all_ids[i]);
    }
    free(texts);
    free(all_ids);
    free(all_n);
    free(pre);
    free(suf);
    fx_free_lines(c.lines, c.n);
    fx_free_lines(r.lines, r.n);
    qft_tokenizer_free(t);
}

START_TEST(test_llama3) { run_exact("llama3"); }
END_TEST

START_TEST(test_sp_bpe_32k) { run_exact("sp-bpe-32k"); }
END_TEST

int main(void) {
    Suite *s = suite_create("tok_exact");
    TCase *tc = tcase_create("hf_tokenizers");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_llama3);
    tcase_add_test(tc, test_sp_bpe_32k);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
