/* The CUDA emulator's NCCL (core/cuda/emu/cuda_emu_nccl.cc) does what NCCL does and
 * refuses what NCCL refuses (ranks are threads here, on QFT_CUDA_EMU_DEVICES=3 devices):
 *   - ranks on different devices reduce, and every rank gets the same sum;
 *   - its sums do not follow rank order (they start at a different rank each round, as a
 *     ring's do): three ranks holding 1e8, 1 and -1e8 get 0 or 1 depending on the order,
 *     and three successive reductions on one communicator do not all give rank order's 0;
 *   - two ranks on one device: "Duplicate GPU detected", ncclInvalidUsage, on both;
 *   - a rank that aborts makes the others' collective fail (ncclRemoteError), not hang;
 *   - misuse: a collective before the non-blocking communicator's creation was polled
 *     finished, another device's buffer, a host buffer, a config not from
 *     NCCL_CONFIG_INITIALIZER, an unmodelled type, buffers overlapping other than in
 *     place. */
#include <check.h>
#include <stdio.h>
#include <string.h>

void emu_st_nccl_ranks(int world, const int *devices, const float *values, int what, int calls,
                       float *results, int *rcs, char *msg, size_t cap);
int emu_st_nccl_misuse(int what, char *msg, size_t cap);

enum { NCCL_SUCCESS_ = 0, NCCL_INVALID_ARGUMENT_ = 4, NCCL_INVALID_USAGE_ = 5,
       NCCL_REMOTE_ERROR_ = 6 };

START_TEST(test_sum_on_three_devices) {
    const int dev[3] = {0, 1, 2};
    const float v[3] = {1.5f, -2.25f, 4.0f};
    float res[3];
    int rc[3];
    char msg[256];
    emu_st_nccl_ranks(3, dev, v, 0, 1, res, rc, msg, sizeof msg);
    for (int r = 0; r < 3; r++) {
        ck_assert_msg(rc[r] == NCCL_SUCCESS_, "rank %d: %d %s", r, rc[r], msg);
        ck_assert_float_eq(res[r], 3.25f);
    }
}
END_TEST

START_TEST(test_sum_order_moves) {
    const int dev[3] = {0, 1, 2};
    const float v[3] = {1e8f, 1.0f, -1e8f}; /* rank order: (1e8 + 1) - 1e8 = 0 in fp32 */
    float res[9];
    int rc[3];
    char msg[256];
    emu_st_nccl_ranks(3, dev, v, 0, 3, res, rc, msg, sizeof msg);
    int not_rank_order = 0;
    for (int k = 0; k < 3; k++) {
        for (int r = 0; r < 3; r++) {
            ck_assert_msg(rc[r] == NCCL_SUCCESS_, "%s", msg);
            ck_assert_float_eq(res[r * 3 + k], res[k]); /* every rank the same */
        }
        ck_assert_msg(res[k] == 0.0f || res[k] == 1.0f, "call %d: %g", k, res[k]);
        not_rank_order += res[k] != 0.0f;
    }
    ck_assert_int_ge(not_rank_order, 1);
}
END_TEST

START_TEST(test_duplicate_device) {
    const int dev[2] = {1, 1};
    const float v[2] = {1.0f, 2.0f};
    float res[2];
    int rc[2];
    char msg[256];
    emu_st_nccl_ranks(2, dev, v, 0, 1, res, rc, msg, sizeof msg);
    ck_assert_int_eq(rc[0], NCCL_INVALID_USAGE_);
    ck_assert_int_eq(rc[1], NCCL_INVALID_USAGE_);
    ck_assert_msg(strstr(msg, "Duplicate GPU detected") && strstr(msg, "device 1"), "%s", msg);
}
END_TEST

START_TEST(test_abort_ends_the_wait) {
    const int dev[2] = {0, 1};
    const float v[2] = {1.0f, 2.0f};
    float res[2];
    int rc[2];
    char msg[256];
    emu_st_nccl_ranks(2, dev, v, 1, 1, res, rc, msg, sizeof msg);
    ck_assert_int_eq(rc[0], NCCL_REMOTE_ERROR_);
    ck_assert_msg(strstr(msg, "another rank aborted"), "%s", msg);
}
END_TEST

START_TEST(test_misuse) {
    static const struct {
        int rc;
        const char *says;
    } want[] = {
        {NCCL_INVALID_USAGE_, "before ncclCommGetAsyncError"},
        {NCCL_INVALID_ARGUMENT_, "device 1's memory, the communicator's device is 0"},
        {NCCL_INVALID_ARGUMENT_, "is not device memory"},
        {NCCL_INVALID_ARGUMENT_, "NCCL_CONFIG_INITIALIZER"},
        {NCCL_INVALID_ARGUMENT_, "not modelled"},
        {NCCL_INVALID_ARGUMENT_, "other than in place"},
    };
    char msg[256];
    const int rc = emu_st_nccl_misuse(_i, msg, sizeof msg);
    ck_assert_msg(rc == want[_i].rc, "case %d: %d (%s)", _i, rc, msg);
    ck_assert_msg(strstr(msg, want[_i].says), "case %d: %s", _i, msg);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_emu_nccl");
    TCase *tc = tcase_create("nccl");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sum_on_three_devices);
    tcase_add_test(tc, test_sum_order_moves);
    tcase_add_test(tc, test_duplicate_device);
    tcase_add_test(tc, test_abort_ends_the_wait);
    tcase_add_loop_test(tc, test_misuse, 0, 6);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
