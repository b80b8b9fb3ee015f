/* The single-process transport, the choice of transport, and the shared helpers (shares,
 * machine fields, settings from the environment). Runs without mpirun. */
#include "transport_internal.h"
#include "transport_test_util.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static void not_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                       "PMI_SIZE", "PMI_RANK", "PMIX_SIZE", "PMIX_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
}

START_TEST(t_auto_is_local) {
    not_launched();
    int world = -1;
    ck_assert_int_eq(qft_transport_launched(&world), 0);
    ck_assert_int_eq(world, 1);
    qft_transport *t = NULL;
    qft_err err = {0};
    ck_assert_msg(qft_transport_open("auto", &t, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(t->kind, "local");
    ck_assert_int_eq(t->rank, 0);
    ck_assert_int_eq(t->world, 1);
    ck_assert_int_eq(t->node_rank, 0);
    ck_assert_int_eq(t->node_size, 1);
    ck_assert_int_eq(t->nodes, 1);
    ck_assert_int_eq(t->device, -1);
    t->vt->close(t);
    ck_assert_int_ne(qft_transport_open("carrier-pigeon", &t, &err), 0);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, "unknown transport \"carrier-pigeon\""), "%s", err.msg);
}
END_TEST

START_TEST(t_launched) {
    not_launched();
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    int world = 0;
    ck_assert_int_eq(qft_transport_launched(&world), 1);
    ck_assert_int_eq(world, 4);
    not_launched();
    setenv("PMIX_RANK", "2", 1);
    ck_assert_int_eq(qft_transport_launched(&world), 1);
    ck_assert_int_eq(world, 1);
    not_launched();
    if (!qft_transport_has_mpi()) {
        qft_transport *t = NULL;
        qft_err err = {0};
        setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
        ck_assert_int_ne(qft_transport_open(NULL, &t, &err), 0);
        ck_assert_msg(strstr(err.msg, "built without MPI"), "%s", err.msg);
        not_launched();
    }
}
END_TEST

/* On one rank every collective is the identity (a copy where buffers differ); the counters
 * count calls but no bytes. */
START_TEST(t_collectives) {
    not_launched();
    qft_transport *t = NULL;
    qft_err err = {0};
    ck_assert(qft_transport_open_local(&t, &err) == 0);
    size_t n = 1031;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float)),
          *keep = malloc(n * sizeof(float));
    double d[5];
    unsigned char bytes[77], got[77];
    ck_assert(a && b && keep);
    tt_fill_f32(a, n, 1, 0);
    memcpy(keep, a, n * sizeof(float));
    tt_fill_bytes(bytes, sizeof bytes, 2, 0);
    tt_fill_f64(d, 5, 3, 0);
    double d_keep[5];
    memcpy(d_keep, d, sizeof d);

    memset(got, 0, sizeof got);
    ck_assert(qft_transport_all_gather(t, bytes, got, sizeof bytes, &err) == 0);
    ck_assert_int_eq(memcmp(got, bytes, sizeof bytes), 0);
    ck_assert(qft_transport_all_gather(t, got, got, sizeof got, &err) == 0); /* in place */
    ck_assert_int_eq(memcmp(got, bytes, sizeof bytes), 0);
    ck_assert(qft_transport_reduce_scatter_f32(t, a, b, n, &err) == 0);
    ck_assert_int_eq(memcmp(b, keep, n * sizeof(float)), 0);
    ck_assert(qft_transport_all_reduce_f32(t, a, n, QFT_REDUCE_SUM, &err) == 0);
    ck_assert_int_eq(memcmp(a, keep, n * sizeof(float)), 0);
    ck_assert(qft_transport_all_reduce_f64(t, d, 5, QFT_REDUCE_MAX, &err) == 0);
    ck_assert_int_eq(memcmp(d, d_keep, sizeof d), 0);
    ck_assert(qft_transport_broadcast(t, bytes, sizeof bytes, 0, &err) == 0);
    ck_assert(qft_transport_barrier(t, &err) == 0);
    ck_assert(qft_transport_all_gather(t, NULL, NULL, 0, &err) == 0); /* zero bytes */

    const qft_transport_stats *st = t->stats;
    ck_assert_uint_eq(st->calls[QFT_COLL_ALL_GATHER], 3);
    ck_assert_uint_eq(st->calls[QFT_COLL_REDUCE_SCATTER], 1);
    ck_assert_uint_eq(st->calls[QFT_COLL_ALL_REDUCE], 2);
    ck_assert_uint_eq(st->calls[QFT_COLL_BROADCAST], 1);
    ck_assert_uint_eq(st->calls[QFT_COLL_BARRIER], 1);
    for (int c = 0; c < QFT_COLL_COUNT; c++) ck_assert_uint_eq(st->bytes_sent[c], 0);

    qft_transport_stats sum = {0};
    qft_transport_stats_add(&sum, st);
    qft_transport_stats_add(&sum, st);
    ck_assert_uint_eq(sum.calls[QFT_COLL_ALL_GATHER], 6);
    ck_assert_str_eq(qft_transport_coll_name(QFT_COLL_REDUCE_SCATTER), "reduce_scatter");

    /* Misuse is named. */
    ck_assert_int_ne(qft_transport_broadcast(t, bytes, sizeof bytes, 1, &err), 0);
    ck_assert_msg(strstr(err.msg, "rank 0 of 1 (local): broadcast: root 1 is not a rank"), "%s",
                  err.msg);
    ck_assert_int_ne(qft_transport_reduce_scatter_f32(t, a, a + 1, 8, &err), 0);
    ck_assert_msg(strstr(err.msg, "reduce_scatter: recv overlaps send"), "%s", err.msg);
    ck_assert_int_ne(qft_transport_all_reduce_f32(t, a, n, QFT_REDUCE_COUNT, &err), 0);
    ck_assert_int_ne(qft_transport_all_gather(t, NULL, got, 4, &err), 0);
    ck_assert_msg(strstr(err.msg, "all_gather: send is NULL"), "%s", err.msg);
    free(a);
    free(b);
    free(keep);
    t->vt->close(t);
}
END_TEST

START_TEST(t_split_and_world) {
    qft_transport *t = NULL, *sub = NULL;
    qft_err err = {0};
    ck_assert(qft_transport_open_local(&t, &err) == 0);
    ck_assert(qft_transport_split(t, 3, 0, &sub, &err) == 0);
    ck_assert_ptr_nonnull(sub);
    ck_assert_int_eq(sub->world, 1);
    ck_assert_ptr_ne(sub->stats, t->stats);
    sub->vt->close(sub);
    ck_assert(qft_transport_split(t, QFT_TRANSPORT_NO_COLOR, 0, &sub, &err) == 0);
    ck_assert_ptr_null(sub);
    ck_assert_int_ne(qft_transport_split(t, -2, 0, &sub, &err), 0);
    ck_assert_int_eq(qft_transport_check_world(t, 1, &err), 0);
    ck_assert_int_ne(qft_transport_check_world(t, 2, &err), 0);
    ck_assert_msg(strstr(err.msg, "rank 0 of 1 (local): this run was saved with world size 2 "
                                  "but is launched with 1; relaunch with `mpirun -np 2"),
                  "%s", err.msg);
    t->vt->close(t);
}
END_TEST

/* Shares cover [0, n) in rank order, differ by at most one, larger ones first. */
START_TEST(t_share) {
    static const size_t ns[] = {0, 1, 2, 5, 6, 7, 1000, 1001};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        for (int w = 1; w <= 5; w++) {
            size_t next = 0, prev_len = (size_t)-1;
            for (int r = 0; r < w; r++) {
                size_t off, len = qft_transport_share(ns[i], w, r, &off);
                ck_assert_uint_eq(off, next);
                ck_assert(len <= prev_len);
                ck_assert(len == ns[i] / (size_t)w || len == ns[i] / (size_t)w + 1);
                next += len;
                prev_len = len;
            }
            ck_assert_uint_eq(next, ns[i]);
        }
    }
    size_t off;
    ck_assert_uint_eq(qft_transport_share(10, 3, 0, &off), 4);
    ck_assert_uint_eq(qft_transport_share(10, 3, 2, &off), 3);
    ck_assert_uint_eq(off, 7);
}
END_TEST

/* Machines are numbered by their lowest member; ranks within a machine by rank. */
START_TEST(t_node_fields) {
    const int ids[] = {5, 5, 9, 5, 9, 2};
    const int want[6][4] = {{0, 3, 0, 3}, {1, 3, 0, 3}, {0, 2, 1, 3},
                            {2, 3, 0, 3}, {1, 2, 1, 3}, {0, 1, 2, 3}};
    for (int r = 0; r < 6; r++) {
        int nr, ns, ni, nn;
        qft_transport_node_fields(ids, 6, r, &nr, &ns, &ni, &nn);
        ck_assert_int_eq(nr, want[r][0]);
        ck_assert_int_eq(ns, want[r][1]);
        ck_assert_int_eq(ni, want[r][2]);
        ck_assert_int_eq(nn, want[r][3]);
    }
}
END_TEST

START_TEST(t_env) {
    qft_transport_env env;
    qft_err err = {0};
    unsetenv("QFT_COLLECTIVE_TIMEOUT");
    unsetenv("QFT_TRANSPORT_CHUNK_BYTES");
    unsetenv("QFT_TRANSPORT_NODE_SIZE");
    ck_assert(qft_transport_env_read(&env, &err) == 0);
    ck_assert(env.timeout_s == 300.0);
    ck_assert_uint_eq(env.chunk_bytes, (size_t)64 << 20);
    ck_assert_int_eq(env.node_size, 0);
    setenv("QFT_COLLECTIVE_TIMEOUT", "2.5", 1);
    setenv("QFT_TRANSPORT_CHUNK_BYTES", "20", 1);
    setenv("QFT_TRANSPORT_NODE_SIZE", "2", 1);
    ck_assert(qft_transport_env_read(&env, &err) == 0);
    ck_assert(env.timeout_s == 2.5);
    ck_assert_uint_eq(env.chunk_bytes, 20);
    ck_assert_int_eq(env.node_size, 2);
    setenv("QFT_COLLECTIVE_TIMEOUT", "soon", 1);
    ck_assert_int_ne(qft_transport_env_read(&env, &err), 0);
    ck_assert_msg(strstr(err.msg, "QFT_COLLECTIVE_TIMEOUT=\"soon\""), "%s", err.msg);
    unsetenv("QFT_COLLECTIVE_TIMEOUT");
    setenv("QFT_TRANSPORT_CHUNK_BYTES", "3000000000", 1); /* above INT_MAX */
    ck_assert_int_ne(qft_transport_env_read(&env, &err), 0);
    ck_assert_msg(strstr(err.msg, "QFT_TRANSPORT_CHUNK_BYTES"), "%s", err.msg);
    /* The MPI transport reads them before it starts MPI, so a bad value fails fast. */
    setenv("QFT_TRANSPORT_CHUNK_BYTES", "0", 1);
    qft_transport *t = NULL;
    ck_assert_int_ne(qft_transport_open_mpi(&t, &err), 0);
    ck_assert_ptr_null(t);
    if (qft_transport_has_mpi()) {
        ck_assert_msg(strstr(err.msg, "QFT_TRANSPORT_CHUNK_BYTES=\"0\""), "%s", err.msg);
    } else {
        ck_assert_msg(strstr(err.msg, "built without MPI"), "%s", err.msg);
    }
    unsetenv("QFT_TRANSPORT_CHUNK_BYTES");
    unsetenv("QFT_TRANSPORT_NODE_SIZE");
}
END_TEST

/* Without NCCL, or without a GPU, opening NCCL is an error that says why; on a GPU machine
 * a one-rank NCCL transport opens over the local one. */
START_TEST(t_nccl_open) {
    qft_transport *boot = NULL, *t = NULL;
    qft_err err = {0};
    ck_assert(qft_transport_open_local(&boot, &err) == 0);
    if (qft_transport_open_nccl(boot, -1, &t, &err) == 0) {
        ck_assert_str_eq(t->kind, "nccl");
        ck_assert_int_eq(t->world, 1);
        ck_assert_int_ge(t->device, 0);
        ck_assert(qft_transport_barrier(t, &err) == 0);
        int dev = t->device;
        t->vt->close(t);
        printf("t_nccl_open: opened a one-rank NCCL transport on device %d\n", dev);
    } else {
        ck_assert_ptr_null(t);
        ck_assert(strlen(err.msg) > 0);
        printf("t_nccl_open: no NCCL transport here: %s\n", err.msg);
    }
    boot->vt->close(boot);
}
END_TEST

/* MPI and NCCL come from libqft_mpi.so / libqft_nccl.so, dlopened on demand: a library
 * that does not load, or is not a qft transport, is an error naming the library, the path
 * tried and what the dynamic loader said. ($QFT_MPI_LIB, when set, is the only path tried.) */
START_TEST(t_library_missing) {
    not_launched();
    qft_transport *t = NULL;
    qft_err err = {0};
    setenv("QFT_MPI_LIB", "/nonexistent/qft-test/libqft_mpi.so", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    ck_assert_int_eq(qft_transport_has_mpi(), 1);
    ck_assert_int_ne(qft_transport_open(NULL, &t, &err), 0);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, "launched by an MPI launcher with 2 ranks") &&
                      strstr(err.msg, "libqft_mpi.so did not load") &&
                      strstr(err.msg, "/nonexistent/qft-test/libqft_mpi.so") &&
                      strstr(err.msg, "No such file") && strstr(err.msg, "QFT_MPI_LIB"),
                  "%s", err.msg);
    not_launched();
    /* A library that loads but is no transport: the C maths library. */
    setenv("QFT_MPI_LIB", "libm.so.6", 1);
    ck_assert_int_ne(qft_transport_open_mpi(&t, &err), 0);
    ck_assert_msg(strstr(err.msg, "libm.so.6 loaded but has no qft_transport_mpi_entry"), "%s",
                  err.msg);
    unsetenv("QFT_MPI_LIB");
    qft_transport *boot = NULL;
    ck_assert(qft_transport_open_local(&boot, &err) == 0);
    setenv("QFT_NCCL_LIB", "/nonexistent/qft-test/libqft_nccl.so", 1);
    ck_assert_int_ne(qft_transport_open_nccl(boot, -1, &t, &err), 0);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, "libqft_nccl.so did not load") &&
                      strstr(err.msg, "/nonexistent/qft-test/libqft_nccl.so") &&
                      strstr(err.msg, "QFT_NCCL_LIB"),
                  "%s", err.msg);
    unsetenv("QFT_NCCL_LIB");
    boot->vt->close(boot);
}
END_TEST

int main(void) {
    Suite *s = suite_create("transport_local");
    TCase *tc = tcase_create("local");
    tcase_add_test(tc, t_auto_is_local);
    tcase_add_test(tc, t_launched);
    tcase_add_test(tc, t_collectives);
    tcase_add_test(tc, t_split_and_world);
    tcase_add_test(tc, t_share);
    tcase_add_test(tc, t_node_fields);
    tcase_add_test(tc, t_env);
    tcase_add_test(tc, t_nccl_open);
    tcase_add_test(tc, t_library_missing);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
