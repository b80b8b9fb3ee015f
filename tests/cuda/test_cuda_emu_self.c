/* The CUDA emulator's own checks bite (core/cuda/emu; the kernels are emu_selftest.cu):
 *   - aborts, each in a child process, with the message that names the fault: a kernel's
 *     write past an allocation (into its guard page), into freed memory, into an
 *     uncommitted part of a virtual reservation or a committed one without access
 *     (cuMemSetAccess); a host pointer as a kernel argument, or another device's
 *     allocation (no peer access); a WMMA load from a pointer that is not 256-bit aligned or
 *     with a leading dimension not in 16-byte units; a
 *     host write to device memory; a barrier that can never fill (deadlock);
 *   - refusals that a GPU's runtime makes too: a block of more than 1024 threads, or more
 *     than the kernel's __launch_bounds__, more
 *     dynamic shared memory than the kernel opted into (and the launch once it has), a
 *     copy whose direction does not match its pointers, a cuBLASLt algorithm used on an
 *     operand less aligned than it was chosen for; host registrations (cudaHostRegister)
 *     that overlap, unregistering a pointer inside a range or outside every range, a
 *     PROT_NONE or device range, and (stricter than the driver) a range unmapped before it
 *     is unregistered, with two buffers on one page registering apart as the control;
 *   - what a GPU leaves undefined comes out loud: new memory reads as 0xff (NaN), a shuffle
 *     from a lane that returned as all ones, and a shared-memory race (a read of another
 *     thread's slot with no barrier between) gives wrong results, while the same kernel with
 *     the barrier gives the right ones. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void emu_st_out_of_bounds(int past);
void emu_st_deadlock(void);
void emu_st_host_pointer_arg(void);
void emu_st_host_touch(void);
void emu_st_other_device_arg(void);
float emu_st_wmma(int offset, int ldm);
void emu_st_use_after_free(void);
void emu_st_reservation(long index, int access);
int emu_st_launch(int threads, size_t smem, int opt_in, int *ok);
int emu_st_bounded(int threads);
int emu_st_neighbour(int barrier);
unsigned emu_st_shuffle_from_returned(void);
int emu_st_poisoned(void);
int emu_st_copy_wrong_kind(void);
int emu_st_lt_alignment(int a_offset);
int emu_st_host_register(int scenario);

enum { CUDA_SUCCESS_ = 0, CUDA_INVALID_VALUE_ = 1, CUDA_INVALID_CONFIGURATION_ = 9,
       CUDA_LAUNCH_OUT_OF_RESOURCES_ = 701, CUDA_ALREADY_REGISTERED_ = 712,
       CUDA_NOT_REGISTERED_ = 713 };
enum { CUBLAS_SUCCESS_ = 0, CUBLAS_INVALID_VALUE_ = 7 };

/* Runs fn(arg) in a child with stderr captured; the child must abort (SIGABRT) with
 * `want` in its message, and with every string of `also` (NULL-terminated). */
static void expect_abort(void (*fn)(long), long arg, const char *want, const char *also) {
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    fflush(NULL);
    const pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    static char msg[16384];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof msg - 1 && (r = read(fds[0], msg + got, sizeof msg - 1 - got)) > 0)
        got += (size_t)r;
    msg[got] = 0;
    close(fds[0]);
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "no abort for \"%s\" (status %d):\n%s",
                  want, st, msg);
    ck_assert_msg(strstr(msg, want) != NULL, "no \"%s\" in:\n%s", want, msg);
    ck_assert_msg(!also || strstr(msg, also) != NULL, "no \"%s\" in:\n%s", also, msg);
    printf("aborts as it should: %s\n", want);
}

static void oob(long past) { emu_st_out_of_bounds((int)past); }
static void deadlock(long a) { (void)a, emu_st_deadlock(); }
static void host_arg(long a) { (void)a, emu_st_host_pointer_arg(); }
static void host_touch(long a) { (void)a, emu_st_host_touch(); }
static void other_device(long a) { (void)a, emu_st_other_device_arg(); }
static void wmma_misaligned(long a) { (void)a, emu_st_wmma(8, 16); }
static void wmma_bad_ldm(long a) { (void)a, emu_st_wmma(0, 12); }
static void after_free(long a) { (void)a, emu_st_use_after_free(); }
static void reservation(long i) { emu_st_reservation(i, 1); }
static void no_access(long i) { emu_st_reservation(i, 0); }

START_TEST(test_aborts) {
    /* 100 floats round to 512 bytes before the guard page: float 128 is its first */
    expect_abort(oob, 28, "device access out of bounds", "112 bytes past the end of a 400-byte allocation");
    expect_abort(deadlock, 0, "deadlock in block (0,0,0): 1 threads at __syncthreads, 31 at a warp barrier", NULL);
    expect_abort(host_arg, 0, "given a pointer that is not device memory as its argument 0", NULL);
    expect_abort(wmma_misaligned, 0, "wmma::load_matrix_sync: pointer", "is not 256-bit aligned");
    expect_abort(wmma_bad_ldm, 0, "leading dimension 12 is not a multiple of 8 elements", NULL);
    ck_assert_float_eq(emu_st_wmma(0, 16), 16.0f); /* the control: aligned, whole units */
    /* QFT_CUDA_EMU_DEVICES=2 (meson.build) */
    expect_abort(other_device, 0, "launched on device 1 given device 0's memory as its argument 0", NULL);
    expect_abort(host_touch, 0, "host code touched device memory", "byte 28 of a 256-byte allocation");
    expect_abort(after_free, 0, "given a pointer that is not device memory", NULL);
    /* the first float past the committed 2 MiB */
    expect_abort(reservation, 1 << 19, "where no memory is committed (cuMemMap)", NULL);
    expect_abort(no_access, 0, "the device was given no access (cuMemSetAccess)", NULL);
}
END_TEST

START_TEST(test_the_committed_part_of_a_reservation_is_memory) {
    /* the child writes inside the committed 2 MiB and exits normally */
    fflush(NULL);
    const pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        emu_st_reservation((1 << 19) - 1, 1);
        _exit(0);
    }
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
}
END_TEST

START_TEST(test_refusals) {
    int ok = 0;
    ck_assert_int_eq(emu_st_launch(256, 256 * 4, 0, &ok), CUDA_SUCCESS_);
    ck_assert(ok);
    ck_assert_int_eq(emu_st_launch(2048, 2048 * 4, 0, &ok), CUDA_INVALID_CONFIGURATION_);
    ck_assert(!ok); /* nothing ran: out[0] is still the poison */
    /* 64 KiB of dynamic shared memory: past the default 48 KiB until the kernel opts in */
    ck_assert_int_eq(emu_st_launch(32, 64 << 10, 0, &ok), CUDA_INVALID_CONFIGURATION_);
    ck_assert_int_eq(emu_st_launch(32, 64 << 10, 64 << 10, &ok), CUDA_SUCCESS_);
    ck_assert(ok);
    /* a kernel declared __launch_bounds__(64): 64 threads run, 128 are refused */
    ck_assert_int_eq(emu_st_bounded(64), CUDA_SUCCESS_);
    ck_assert_int_eq(emu_st_bounded(128), CUDA_LAUNCH_OUT_OF_RESOURCES_);
    ck_assert_int_eq(emu_st_copy_wrong_kind(), CUDA_INVALID_VALUE_);
    ck_assert_int_eq(emu_st_lt_alignment(0), CUBLAS_SUCCESS_);
    ck_assert_int_eq(emu_st_lt_alignment(1), CUBLAS_INVALID_VALUE_); /* 4-byte aligned A */
}
END_TEST

/* Page-locked host memory's bookkeeping, as the driver keeps it (byte ranges: buffers
 * sharing a page register apart), and a range freed while still registered. */
START_TEST(test_host_registration) {
    ck_assert_int_eq(emu_st_host_register(0), CUDA_SUCCESS_);
    ck_assert_int_eq(emu_st_host_register(1), CUDA_ALREADY_REGISTERED_);
    ck_assert_int_eq(emu_st_host_register(2), CUDA_INVALID_VALUE_);
    ck_assert_int_eq(emu_st_host_register(3), CUDA_NOT_REGISTERED_);
    ck_assert_int_eq(emu_st_host_register(4), CUDA_INVALID_VALUE_);
    ck_assert_int_eq(emu_st_host_register(5), CUDA_INVALID_VALUE_);
    ck_assert_int_eq(emu_st_host_register(6), CUDA_INVALID_VALUE_);
}
END_TEST

START_TEST(test_undefined_is_loud) {
    ck_assert(emu_st_poisoned());
    ck_assert_uint_eq(emu_st_shuffle_from_returned(), 0xffffffffu);
    ck_assert_int_eq(emu_st_neighbour(1), 0);
    const int bad = emu_st_neighbour(0);
    printf("the racy kernel got %d of 256 outputs wrong, the one with the barrier none\n", bad);
    ck_assert_int_gt(bad, 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_emu_self");
    TCase *tc = tcase_create("self");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_aborts);
    tcase_add_test(tc, test_the_committed_part_of_a_reservation_is_memory);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_host_registration);
    tcase_add_test(tc, test_undefined_is_loud);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
