/* Learning-rate schedules against transformers' schedulers (tests/fixtures/train/
 * schedule.json, made by tests/reference/optim_reference.py): get_constant_schedule,
 * get_linear_schedule_with_warmup, and get_cosine_with_min_lr_schedule_with_warmup with
 * num_cycles 0.5 and min_lr_rate 0.1 (= the seed's cosine one-cycle). The warm-up length
 * is the seed's int(total * 0.1). Tolerance 1e-6 relative: the lr is returned as float. */
#include "schedule.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static json_t *g_fx;

START_TEST(matches_transformers) {
    const json_t *cases = json_object_get(g_fx, "cases");
    ck_assert_uint_ge(json_array_size(cases), 12);
    for (size_t k = 0; k < json_array_size(cases); k++) {
        const json_t *c = json_array_get(cases, k);
        qft_schedule s = {0};
        ck_assert_int_eq(qft_schedule_parse(json_string_value(json_object_get(c, "kind")), &s.kind), 0);
        s.lr = (float)json_number_value(json_object_get(c, "lr"));
        s.warmup = (float)json_number_value(json_object_get(c, "warmup"));
        s.min_lr_ratio = (float)json_number_value(json_object_get(c, "min_lr_ratio"));
        s.total_steps = (long)json_integer_value(json_object_get(c, "total_steps"));
        ck_assert_int_eq(qft_schedule_warmup_steps(&s),
                         json_integer_value(json_object_get(c, "warmup_steps")));
        const json_t *lrs = json_object_get(c, "lrs");
        ck_assert_uint_eq(json_array_size(lrs), (size_t)s.total_steps);
        for (long t = 0; t < s.total_steps; t++) {
            double want = json_number_value(json_array_get(lrs, (size_t)t));
            double got = qft_schedule_lr(&s, t);
            ck_assert_msg(fabs(got - want) <= 1e-6 * fabs(want) + 1e-15,
                          "%s total %ld step %ld: %.9g, transformers %.9g",
                          qft_schedule_name(s.kind), s.total_steps, t, got, want);
        }
    }
}
END_TEST

/* Shape facts independent of the fixture: warm-up starts at 0 and reaches lr at W; the
 * cosine ends near the floor; linear falls to lr / (total - W) at the last step. */
START_TEST(shape) {
    qft_schedule s = {.kind = QFT_SCHED_COSINE, .lr = 2e-4f, .warmup = 0.1f, .min_lr_ratio = 0.1f,
                      .total_steps = 1000};
    ck_assert_int_eq(qft_schedule_warmup_steps(&s), 100);
    ck_assert(qft_schedule_lr(&s, 0) == 0.0f);
    ck_assert(fabsf(qft_schedule_lr(&s, 50) - 1e-4f) < 1e-10f);
    ck_assert(fabsf(qft_schedule_lr(&s, 100) - 2e-4f) < 1e-10f);
    float last = qft_schedule_lr(&s, 999);
    ck_assert(last > 2e-5f && last < 2.001e-5f);
    for (long t = 101; t < 1000; t++) ck_assert(qft_schedule_lr(&s, t) <= qft_schedule_lr(&s, t - 1));
    s.kind = QFT_SCHED_LINEAR;
    ck_assert(fabsf(qft_schedule_lr(&s, 999) - 2e-4f / 900.0f) < 1e-12f);
    s.kind = QFT_SCHED_CONSTANT;
    ck_assert(qft_schedule_lr(&s, 0) == 2e-4f && qft_schedule_lr(&s, 999) == 2e-4f);
    ck_assert_int_eq(qft_schedule_warmup_steps(&s), 0);
    /* A run shorter than 10 steps has no warm-up, as int(total * 0.1) = 0 in the seed. */
    s.kind = QFT_SCHED_LINEAR;
    s.total_steps = 7;
    ck_assert_int_eq(qft_schedule_warmup_steps(&s), 0);
    ck_assert(qft_schedule_lr(&s, 0) == 2e-4f);
    qft_schedule_kind k;
    ck_assert_int_ne(qft_schedule_parse("onecycle", &k), 0);
}
END_TEST

int main(void) {
    const char *root = getenv("QFT_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/train/schedule.json", root ? root : QFT_TEST_SOURCE_ROOT);
    json_error_t e;
    g_fx = json_load_file(path, 0, &e);
    if (!g_fx) {
        fprintf(stderr, "cannot load %s: %s\n", path, e.text);
        return EXIT_FAILURE;
    }
    Suite *su = suite_create("train_schedule");
    TCase *tc = tcase_create("schedule");
    tcase_add_test(tc, matches_transformers);
    tcase_add_test(tc, shape);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    json_decref(g_fx);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
