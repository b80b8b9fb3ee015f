/* Every train_type trains from its example config in configs/: a few steps, with falling
 * loss, on the project's own data (the configs use a small random Llama and synth_math).
 * QFT_TRAIN_TYPES lists the configs to run (meson passes those of this build). */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char g_tmp[4096];

static double loss_at(const char *metrics, int step) {
    FILE *f = fopen(metrics, "r");
    if (!f) return -1;
    char line[4096];
    double v = -1;
    while (fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (o && json_integer_value(json_object_get(o, "step")) == step)
            v = json_number_value(json_object_get(o, "loss"));
        json_decref(o);
    }
    fclose(f);
    return v;
}

/* mean loss over steps [a, b] */
static double mean_loss(const char *metrics, int a, int b) {
    double s = 0;
    for (int i = a; i <= b; i++) s += loss_at(metrics, i);
    return s / (b - a + 1);
}

START_TEST(test_each_train_type) {
    const char *qft = getenv("QFT_BIN"), *src = getenv("QFT_SOURCE_ROOT");
    const char *list = getenv("QFT_TRAIN_TYPES");
    ck_assert(qft && src && list);
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char cmd[16384];
        snprintf(cmd, sizeof cmd,
                 "%s train %s/configs/%s.cfg --set train.max_steps=16 --set data.count=400 "
                 "--set output.dir=\\\"%s/%s\\\" --set output.save=\\\"none\\\" -q 2>&1",
                 qft, src, t, g_tmp, t);
        FILE *p = popen(cmd, "r");
        char out[8192] = "";
        size_t got = fread(out, 1, sizeof out - 1, p);
        out[got] = 0;
        int st = pclose(p);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "train_type %s failed: %s", t, out);
        char metrics[8192];
        snprintf(metrics, sizeof metrics, "%s/%s/metrics.jsonl", g_tmp, t);
        const double first = mean_loss(metrics, 1, 3), last = mean_loss(metrics, 14, 16);
        printf("%-14s loss %.4f -> %.4f\n", t, first, last);
        ck_assert_msg(first > 0 && last > 0, "%s: metrics missing", t);
        ck_assert_msg(last < first - 0.1, "%s: loss did not fall (%.4f -> %.4f)", t, first, last);
        n++;
    }
    ck_assert_int_ge(n, 1);
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-test-types-XXXXXX");
    if (!mkdtemp(g_tmp)) return EXIT_FAILURE;
    Suite *s = suite_create("train_types");
    TCase *tc = tcase_create("train_types");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_each_train_type);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
