/* The JSONL metrics writer and the progress line: what is written, when, and that each
 * metrics line is on disk as soon as it is written. */
#include "metrics.h"
#include "progress.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *slurp_stream(FILE *f) {
    fflush(f);
    long len = ftell(f);
    ck_assert_int_ge(len, 0);
    char *buf = calloc((size_t)len + 1, 1);
    ck_assert_ptr_nonnull(buf);
    rewind(f);
    ck_assert_uint_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    return buf;
}

static char *slurp_path(const char *path) {
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    char *s = slurp_stream(f);
    fclose(f);
    return s;
}

static int count_char(const char *s, char c) {
    int n = 0;
    for (; *s; s++) n += *s == c;
    return n;
}

START_TEST(metrics_lines_parse_and_are_flushed) {
    char path[] = "/tmp/qft_metrics_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    qft_metrics m;
    qft_err err = {0};
    ck_assert_msg(qft_metrics_open(&m, path, 0, &err) == 0, "%s", err.msg);
    qft_rng r;
    qft_rng_seed(&r, 5);
    double losses[4];
    for (int s = 1; s <= 4; s++) {
        losses[s - 1] = 2.0 + qft_rng_uniform(&r);
        qft_metrics_row row = {.step = s, .loss = losses[s - 1], .lr = 1e-5 * s,
                               .tokens_per_s = 1000.0 + 17.0 * s, .grad_norm = 0.25 * s,
                               .elapsed_s = 1.5 * s};
        ck_assert_msg(qft_metrics_write(&m, &row, &err) == 0, "%s", err.msg);
        /* Read it back while still open: the line must already be in the file. */
        char *text = slurp_path(path);
        ck_assert_int_eq(count_char(text, '\n'), s);
        free(text);
    }
    qft_metrics_row bad = {.step = 5, .loss = NAN, .lr = 1e-5, .tokens_per_s = INFINITY,
                           .grad_norm = -1.0, .elapsed_s = 9.0};
    ck_assert_int_eq(qft_metrics_write(&m, &bad, &err), 0);
    ck_assert_int_eq(qft_metrics_close(&m, &err), 0);

    /* A resumed run appends. */
    ck_assert_int_eq(qft_metrics_open(&m, path, 1, &err), 0);
    qft_metrics_row six = {.step = 6, .loss = 1.25, .lr = 3e-5, .tokens_per_s = 10.0,
                           .grad_norm = 0.5, .elapsed_s = 10.0};
    ck_assert_int_eq(qft_metrics_write(&m, &six, &err), 0);
    ck_assert_int_eq(qft_metrics_close(&m, &err), 0);

    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t e;
        json_t *o = json_loads(line, 0, &e);
        ck_assert_msg(o != NULL, "line %d is not JSON: %s (%s)", n + 1, line, e.text);
        ck_assert_int_eq(json_integer_value(json_object_get(o, "step")), n + 1);
        if (n < 4) {
            ck_assert(fabs(json_number_value(json_object_get(o, "loss")) - losses[n]) < 1e-8);
            ck_assert(fabs(json_number_value(json_object_get(o, "lr")) - 1e-5 * (n + 1)) < 1e-14);
            ck_assert(fabs(json_number_value(json_object_get(o, "tokens_per_s")) - (1017.0 + 17.0 * n)) < 1e-6);
            ck_assert(fabs(json_number_value(json_object_get(o, "grad_norm")) - 0.25 * (n + 1)) < 1e-12);
            ck_assert(fabs(json_number_value(json_object_get(o, "elapsed_s")) - 1.5 * (n + 1)) < 1e-12);
        } else if (n == 4) {
            ck_assert(json_is_null(json_object_get(o, "loss")));
            ck_assert(json_is_null(json_object_get(o, "tokens_per_s")));
            ck_assert(json_is_null(json_object_get(o, "grad_norm")));
            ck_assert(json_number_value(json_object_get(o, "elapsed_s")) == 9.0);
        } else {
            ck_assert(json_number_value(json_object_get(o, "loss")) == 1.25);
        }
        ck_assert_uint_eq(json_object_size(o), 6);
        json_decref(o);
        n++;
    }
    fclose(f);
    ck_assert_int_eq(n, 6);
    unlink(path);
}
END_TEST

START_TEST(metrics_open_error_names_path) {
    qft_metrics m;
    qft_err err = {0};
    ck_assert_int_ne(qft_metrics_open(&m, "/nonexistent-dir/x/metrics.jsonl", 0, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-dir/x/metrics.jsonl"));
}
END_TEST

START_TEST(progress_plain_every_n) {
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    qft_progress p;
    qft_progress_init(&p, f, 10, 3, QFT_PROGRESS_AUTO); /* a file is not a terminal */
    ck_assert_int_eq(p.tty, 0);
    for (long s = 1; s <= 10; s++) qft_progress_update(&p, s, 3.0 - 0.1 * s, 1e-5, 2500.0);
    qft_progress_finish(&p);
    char *text = slurp_stream(f);
    ck_assert_int_eq(count_char(text, '\r'), 0);
    ck_assert_int_eq(count_char(text, '\n'), 4); /* steps 3, 6, 9 and the last */
    ck_assert_ptr_nonnull(strstr(text, "step 3/10 | loss 2.7000 | lr 1.000e-05 | 2.5k tok/s"));
    ck_assert_ptr_nonnull(strstr(text, "step 6/10 | loss 2.4000"));
    ck_assert_ptr_nonnull(strstr(text, "step 9/10 | loss 2.1000"));
    ck_assert_ptr_nonnull(strstr(text, "step 10/10 | loss 2.0000"));
    ck_assert_ptr_null(strstr(text, "step 4/10"));
    ck_assert_ptr_nonnull(strstr(text, "eta 0:00"));
    free(text);
    fclose(f);
}
END_TEST

START_TEST(progress_tty_redraws) {
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    qft_progress p;
    qft_progress_init(&p, f, 4, 100, QFT_PROGRESS_TTY);
    qft_progress_update(&p, 1, 12.3456, 1e-4, 123456.0); /* a long line ... */
    qft_progress_update(&p, 2, 1.5, 1e-4, 5.0);          /* ... then a shorter one */
    qft_progress_update(&p, 3, 1.25, 1e-4, 5.0);
    qft_progress_finish(&p); /* e.g. before a log message */
    qft_progress_update(&p, 4, 1.0, 1e-4, 5.0);          /* last step ends its line itself */
    char *text = slurp_stream(f);
    ck_assert_int_eq(count_char(text, '\r'), 4);
    ck_assert_int_eq(count_char(text, '\n'), 2);
    ck_assert_ptr_nonnull(strstr(text, "\rstep 1/4 | loss 12.3456 | lr 1.000e-04 | 123k tok/s"));
    /* The shorter second line is padded to cover the first. */
    char *second = strstr(text, "\rstep 2/4");
    ck_assert_ptr_nonnull(second);
    char *third = strstr(text, "\rstep 3/4");
    ck_assert_ptr_nonnull(third);
    char *first = strstr(text, "\rstep 1/4");
    ck_assert_int_eq((int)(third - second), (int)(second - first));
    ck_assert(text[strlen(text) - 1] == '\n');
    free(text);
    fclose(f);
}
END_TEST

START_TEST(summary_line) {
    qft_run_summary s = {.steps = 250, .first_loss = 2.71828, .last_loss = 0.5772,
                         .tokens_per_s = 4321.0, .elapsed_s = 3723.0};
    void *block = qft_mem_alloc(3 << 20, "test");
    ck_assert_ptr_nonnull(block);
    qft_progress_summary_memory(&s);
    qft_mem_free(block);
    ck_assert_uint_ge(s.peak_mem, (size_t)3 << 20);
    ck_assert_uint_gt(s.peak_rss, 0);
    char buf[256];
    ck_assert_int_gt(qft_progress_summary_format(buf, sizeof buf, &s), 0);
    ck_assert_ptr_nonnull(strstr(buf, "done: 250 steps in 1:02:03 | loss 2.7183 -> 0.5772 | 4.32k tok/s | peak mem "));
    ck_assert_ptr_nonnull(strstr(buf, " MiB (rss "));
    s.peak_mem = (size_t)3 << 30;
    qft_progress_summary_format(buf, sizeof buf, &s);
    ck_assert_ptr_nonnull(strstr(buf, "peak mem 3.00 GiB"));
    ck_assert_int_eq(qft_progress_summary_format(buf, 10, &s), -1);
}
END_TEST

int main(void) {
    Suite *su = suite_create("train_metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, metrics_lines_parse_and_are_flushed);
    tcase_add_test(tc, metrics_open_error_names_path);
    tcase_add_test(tc, progress_plain_every_n);
    tcase_add_test(tc, progress_tty_redraws);
    tcase_add_test(tc, summary_line);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
