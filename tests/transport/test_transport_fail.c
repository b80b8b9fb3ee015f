/* Failures end the whole job, in bounded time, with a message naming a rank.
 *
 * Launches `mpirun <flags> -np 3 test_transport_mpi <mode>` (argv: mpirun, the worker, then
 * mpirun's flags) with a wall-clock limit, and checks the exit status, the time and the
 * output:
 *   kill   rank 1 dies by SIGKILL before a collective: mpirun ends the others.
 *   hang   rank 1 sleeps through a collective: the others' watchdog (QFT_COLLECTIVE_TIMEOUT
 *          = 3) prints "rank R: all_reduce timed out after 3 s; ..." and exits 3.
 *   abort  rank 1 calls the transport's abort while the others wait in a barrier.
 *   world  a resumed run whose checkpoint says world size 4 is launched with 3. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char **g_argv;
static int g_argc;

typedef struct job {
    char out[65536];
    size_t len;
    int status;    /* waitpid status */
    int timed_out; /* killed by us at the limit */
    double seconds;
} job;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void run_job(const char *mode, const char *timeout_env, double limit, job *j) {
    memset(j, 0, sizeof *j);
    int fd[2];
    ck_assert_int_eq(pipe(fd), 0);
    char *args[64];
    int a = 0;
    args[a++] = g_argv[1];
    for (int i = 3; i < g_argc && a < 56; i++) args[a++] = g_argv[i];
    args[a++] = "-np";
    args[a++] = "3";
    args[a++] = g_argv[2];
    args[a++] = (char *)mode;
    args[a] = NULL;
    double t0 = now();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setpgid(0, 0); /* one group: at the limit we kill mpirun and its ranks together */
        dup2(fd[1], 1);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        if (timeout_env) setenv("QFT_COLLECTIVE_TIMEOUT", timeout_env, 1);
        execv(args[0], args);
        fprintf(stderr, "cannot run %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    int done = 0, eof = 0;
    while (!done || !eof) {
        double left = limit - (now() - t0);
        if (left <= 0) {
            kill(-pid, SIGKILL);
            if (!done) waitpid(pid, &j->status, 0);
            j->timed_out = 1;
            break;
        }
        if (!eof) {
            struct pollfd p = {fd[0], POLLIN, 0};
            if (poll(&p, 1, 50) > 0) {
                char buf[4096];
                ssize_t n = read(fd[0], buf, sizeof buf);
                if (n <= 0) {
                    eof = 1;
                } else {
                    size_t room = sizeof j->out - 1 - j->len;
                    size_t take = (size_t)n < room ? (size_t)n : room;
                    memcpy(j->out + j->len, buf, take);
                    j->len += take;
                }
            }
        } else {
            usleep(10000);
        }
        if (!done && waitpid(pid, &j->status, WNOHANG) == pid) done = 1;
        /* A straggler holding the pipe after mpirun ended: what it says no longer counts. */
        if (done && !eof && now() - t0 > limit - 1) break;
    }
    j->seconds = now() - t0;
    kill(-pid, SIGKILL); /* nothing of the job may outlive the test */
    close(fd[0]);
    j->out[j->len] = '\0';
    fprintf(stderr, "---- mode %s: %.1f s, %s %d%s ----\n%s\n", mode, j->seconds,
            WIFEXITED(j->status) ? "exit" : "signal",
            WIFEXITED(j->status) ? WEXITSTATUS(j->status) : WTERMSIG(j->status),
            j->timed_out ? " (killed at the limit)" : "", j->out);
}

static int failed(const job *j) {
    return !WIFEXITED(j->status) || WEXITSTATUS(j->status) != 0;
}

START_TEST(t_kill) {
    job j;
    run_job("kill", "60", 30, &j);
    ck_assert_msg(!j.timed_out, "the job outlived 30 s after rank 1 died");
    ck_assert(failed(&j));
    ck_assert_msg(strstr(j.out, "rank 1"), "the output does not name rank 1");
    ck_assert(!strstr(j.out, "finished its collective"));
}
END_TEST

START_TEST(t_hang) {
    job j;
    run_job("hang", "3", 25, &j);
    ck_assert_msg(!j.timed_out, "the watchdog did not end the job within 25 s");
    ck_assert(failed(&j));
    ck_assert_msg(strstr(j.out, "rank 0: all_reduce timed out after 3 s; a peer has probably died") ||
                      strstr(j.out, "rank 2: all_reduce timed out after 3 s; a peer has probably died"),
                  "no watchdog message");
    ck_assert(j.seconds >= 3);
}
END_TEST

START_TEST(t_abort) {
    job j;
    run_job("abort", "60", 25, &j);
    ck_assert(!j.timed_out);
    ck_assert(failed(&j));
    ck_assert(strstr(j.out, "rank 1: cannot go on (test of abort)"));
}
END_TEST

START_TEST(t_world) {
    job j;
    run_job("world", "60", 25, &j);
    ck_assert(!j.timed_out);
    ck_assert(failed(&j));
    ck_assert(strstr(j.out, "of 3 (mpi): this run was saved with world size 4 but is launched "
                            "with 3"));
}
END_TEST

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MPIRUN WORKER [MPIRUN_FLAGS...]\n", argv[0]);
        return 1;
    }
    g_argc = argc;
    g_argv = argv;
    Suite *s = suite_create("transport_fail");
    TCase *tc = tcase_create("jobs");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, t_kill);
    tcase_add_test(tc, t_hang);
    tcase_add_test(tc, t_abort);
    tcase_add_test(tc, t_world);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
