/* The CUDA emulator's race check (core/cuda/emu/cuda_emu_sched.cc built with QFT_EMU_TSAN,
 * the kernels instrumented for ThreadSanitizer) reports what compute-sanitizer's racecheck
 * reports, and only that. Each case of emu_racecheck.cu runs in a fresh process (this
 * program again, with --case NAME) under TSAN_OPTIONS=halt_on_error=1:exitcode=66:
 *   - races, which must end the child with TSan's "data race" naming the kernel: a thread
 *     reading another's shared or global slot with no __syncthreads between, lanes of a warp
 *     doing so with only a shuffle between (shuffles order no memory), lanes reading an
 *     accumulator another lane stored (WMMA) without __syncwarp, and a write after one
 *     barrier read before the next (the case a race check with one synchronisation object
 *     per barrier, rather than one per episode, misses), and blocks of one launch writing
 *     the same global elements, or one block reading what its neighbour wrote (nothing
 *     orders a launch's blocks; the emulator leaves neighbouring blocks unordered);
 *   - their controls, with the barrier CUDA requires, which must run clean; an accumulator
 *     loaded, added to and stored back in place round after round (each lane stores what it
 *     loaded: no barrier needed); and blocks of one launch, and two launches in a row, that
 *     share nothing unordered (each block's static and dynamic shared memory is its own). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int emu_rc_run(const char *name);

static char self_path[4096]; /* this program (popen's shell has another /proc/self/exe) */

/* Runs case `name` in a child; its exit status, and its output (TSan reports on stderr)
 * into out. */
static int run_case(const char *name, char *out, size_t cap) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "'%s' --case %s 2>&1", self_path, name);
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "popen: %s", cmd);
    const size_t got = fread(out, 1, cap - 1, p);
    out[got] = 0;
    const int st = pclose(p);
    ck_assert_msg(WIFEXITED(st), "case %s: status %d\n%s", name, st, out);
    return WEXITSTATUS(st);
}

static const struct {
    const char *name, *kernel; /* the kernel a report must name */
} k_racy[] = {
    {"shared_racy", "neighbour"},
    {"global_racy", "neighbour_global"},
    {"warp_racy", "warp_neighbour"},
    {"wmma_racy", "wmma_store_read"},
    {"barriers_racy", "after_barrier"},
    {"blocks_write_racy", "blocks_write"},
    {"blocks_read_racy", "blocks_read"},
};
static const char *k_clean[] = {"shared_clean",   "global_clean",        "warp_clean", "wmma_clean",
                                "barriers_clean", "wmma_in_place_clean", "blocks_clean"};

START_TEST(test_racy) {
    static char err[1 << 16];
    const int st = run_case(k_racy[_i].name, err, sizeof err);
    ck_assert_msg(st == 66, "case %s: exit %d, not TSan's 66\n%s", k_racy[_i].name, st, err);
    ck_assert_msg(strstr(err, "WARNING: ThreadSanitizer: data race"), "case %s:\n%s", k_racy[_i].name, err);
    ck_assert_msg(strstr(err, k_racy[_i].kernel), "case %s: the report does not name %s\n%s",
                  k_racy[_i].name, k_racy[_i].kernel, err);
    /* the two sides are emulated threads (fibers), not host threads */
    ck_assert_msg(strstr(err, "emulated thread"), "case %s:\n%s", k_racy[_i].name, err);
}
END_TEST

START_TEST(test_clean) {
    static char err[1 << 16];
    const int st = run_case(k_clean[_i], err, sizeof err);
    ck_assert_msg(st == 0, "case %s: exit %d\n%s", k_clean[_i], st, err);
    ck_assert_msg(!strstr(err, "ThreadSanitizer"), "case %s:\n%s", k_clean[_i], err);
}
END_TEST

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--case")) return emu_rc_run(argv[2]) ? 3 : 0;
    const ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n <= 0) return EXIT_FAILURE;
    self_path[n] = 0;
    Suite *s = suite_create("cuda_emu_racecheck");
    TCase *tc = tcase_create("cases");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_racy, 0, (int)(sizeof k_racy / sizeof k_racy[0]));
    tcase_add_loop_test(tc, test_clean, 0, (int)(sizeof k_clean / sizeof k_clean[0]));
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
