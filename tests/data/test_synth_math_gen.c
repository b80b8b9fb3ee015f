/* The synth_math generator (data/synth_math/synth_math_gen.c, compiled into this test):
 * every answer recomputed from the numbers the question states, by formulas written here
 * independently of the templates; the question states exactly those numbers, in order;
 * every solution step is correct arithmetic; all templates occur. */
#include "synth_math_gen.h"
#include "synth_math_check.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define N_PROBLEMS 6000

/* The answer each template's question asks for, from its stated numbers. */
static long independent_answer(const qft_synth_math_problem *pr, int *ok) {
    const long *p = pr->p;
    *ok = 1;
    switch (pr->template_id) {
    case 0: return p[2] - p[0] * p[1];               /* bill - count × price */
    case 1: return p[0] * p[1] + p[2] * p[3];        /* speed × time, twice */
    case 2: *ok = p[0] % p[1] == 0; return p[0] / p[1] - p[2];
    case 3: return p[0] + (p[0] + p[1]) + 2 * p[2];  /* both ages, each + years */
    case 4: return p[0] * p[1] + p[2];
    case 5: return p[0] * p[1] * p[2];
    case 6: return p[0] * p[1] + p[2] * p[3] - p[4];
    case 7: return p[0] * p[1] - p[2];
    case 8: *ok = p[0] % p[1] == 0; return p[0] / p[1] * p[2];
    case 9: return 2 * (p[0] + p[1]) * p[2];
    case 10: return p[0] - p[1] * p[2];
    case 11: *ok = p[0] % 3 == 0; return p[0] - p[0] / 3 - p[1];
    case 12: return p[0] + p[1] - p[2];
    case 13: *ok = (p[0] - p[1]) % 2 == 0; return (p[0] - p[1]) / 2;
    case 14: *ok = (p[0] + p[1] + p[2]) % 3 == 0; return (p[0] + p[1] + p[2]) / 3;
    }
    *ok = 0;
    return 0;
}

static const int k_n_params[QFT_SYNTH_MATH_TEMPLATES] = {3, 4, 3, 3, 3, 3, 5, 3, 3, 3, 3, 2, 3, 2, 3};

START_TEST(answers_are_right) {
    int seen[QFT_SYNTH_MATH_TEMPLATES] = {0};
    qft_synth_math_problem pr;
    for (long i = 0; i < N_PROBLEMS; i++) {
        ck_assert_int_eq(qft_synth_math_make(42, i, &pr), 0);
        ck_assert(pr.template_id >= 0 && pr.template_id < QFT_SYNTH_MATH_TEMPLATES);
        seen[pr.template_id]++;
        const char *tn = qft_synth_math_template_name(pr.template_id);
        ck_assert_int_eq(pr.n_p, k_n_params[pr.template_id]);
        int ok;
        long want = independent_answer(&pr, &ok);
        ck_assert_msg(ok, "problem %ld (%s): numbers do not divide evenly", i, tn);
        ck_assert_msg(pr.answer == want, "problem %ld (%s): answer %ld, expected %ld\n%s", i, tn,
                      pr.answer, want, pr.question);
        ck_assert_msg(want > 0, "problem %ld (%s): answer %ld is not positive", i, tn, want);
        /* The question's integers, in order, are exactly the parameters. */
        const char *s = pr.question;
        int k = 0;
        while (*s) {
            long v;
            if (*s >= '0' && *s <= '9' && smc_int(&s, &v)) {
                ck_assert_msg(k < pr.n_p && v == pr.p[k], "problem %ld (%s): number %d of the question "
                              "is %ld\n%s", i, tn, k, v, pr.question);
                k++;
            } else {
                s++;
            }
        }
        ck_assert_int_eq(k, pr.n_p);
        long fin;
        char why[256];
        ck_assert_msg(smc_check_solution(pr.solution, &fin, why, sizeof why) == 0,
                      "problem %ld (%s): %s\n%s", i, tn, why, pr.solution);
        ck_assert_int_eq(fin, want);
    }
    for (int t = 0; t < QFT_SYNTH_MATH_TEMPLATES; t++)
        ck_assert_msg(seen[t] > N_PROBLEMS / QFT_SYNTH_MATH_TEMPLATES / 2, "template %s seen %d times",
                      qft_synth_math_template_name(t), seen[t]);
}
END_TEST

START_TEST(depends_only_on_seed_and_index) {
    qft_synth_math_problem a, b;
    int same_other_seed = 0, same_neighbour = 0;
    for (long i = 0; i < 500; i++) {
        qft_synth_math_make(42, i, &a);
        qft_synth_math_make(42, i, &b);
        ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
        qft_synth_math_make(43, i, &b);
        same_other_seed += strcmp(a.question, b.question) == 0;
        qft_synth_math_make(42, i + 1, &b);
        same_neighbour += strcmp(a.question, b.question) == 0;
    }
    ck_assert_int_le(same_other_seed, 2);
    ck_assert_int_le(same_neighbour, 2);
    /* A known problem, so a change to the stream is noticed. */
    qft_synth_math_make(42, 0, &a);
    printf("seed 42, problem 0 (%s):\n%s\n%s\n", qft_synth_math_template_name(a.template_id),
           a.question, a.solution);
}
END_TEST

START_TEST(the_checker_catches_errors) {
    long fin;
    char why[256];
    ck_assert_int_eq(smc_check_solution("It is 3 × 4 = 12 apples.\nThen 12 + 5 = 17.\n#### 17", &fin, why, sizeof why), 0);
    ck_assert_int_eq(fin, 17);
    ck_assert_int_ne(smc_check_solution("It is 3 × 4 = 13 apples.\n#### 13", &fin, why, sizeof why), 0);
    ck_assert_int_ne(smc_check_solution("It is 3 × 4 = 12 apples.\n#### 11", &fin, why, sizeof why), 0);
    ck_assert_int_ne(smc_check_solution("It is 7 ÷ 2 = 3.\n#### 3", &fin, why, sizeof why), 0);
    ck_assert_int_ne(smc_check_solution("No steps here.\n#### 3", &fin, why, sizeof why), 0);
    ck_assert_int_ne(smc_check_solution("It is 3 - 1 = 2.", &fin, why, sizeof why), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data_synth_math_gen");
    TCase *tc = tcase_create("gen");
    tcase_add_test(tc, answers_are_right);
    tcase_add_test(tc, depends_only_on_seed_and_index);
    tcase_add_test(tc, the_checker_catches_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
