/* The staged transport under mpirun (-np 2, and -np 3 with QFT_TRANSPORT_CHUNK_BYTES=20 so
 * that every call moves in pieces): collectives over cpu_guard memory, which is PROT_NONE
 * outside the backend's own calls, so a collective that touched a buffer from host code
 * instead of going through upload and download would fault here.
 *
 * Each rank draws every rank's input, computes the serial answer itself and compares the
 * downloaded result bit for bit: the staged transport sums through the MPI transport, in
 * rank order. Tests run without forking (CK_NOFORK) and assert after their last collective,
 * so a failing rank does not leave the others in a different collective. */
#include "cpu_ops.h"
#include "qft_base.h"
#include "qft_ops.h"
#include "transport.h"
#include "transport_test_util.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qft_transport *g_host, *g_t;
static const qft_ops *g_ops;

#define W (g_t->world)
#define R (g_t->rank)

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* backend memory holding `bytes` of src (or nothing when src is NULL) */
static void *dev_from(const void *src, size_t bytes) {
    void *d = g_ops->alloc(bytes ? bytes : 1, "test");
    ck_assert_ptr_nonnull(d);
    if (src && bytes) g_ops->upload(d, src, bytes);
    return d;
}

static void host_from(void *dst, const void *dev, size_t bytes) {
    if (bytes) g_ops->download(dst, dev, bytes);
}

START_TEST(t_info) {
    ck_assert_str_eq(g_t->kind, "staged");
    ck_assert_int_eq(g_t->device, QFT_TRANSPORT_DEVICE_STAGED);
    ck_assert_int_eq(g_t->rank, g_host->rank);
    ck_assert_int_eq(g_t->world, g_host->world);
    ck_assert_int_eq(g_t->node_size, g_host->node_size);
    ck_assert_ptr_eq(g_t->host, g_host);
    ck_assert_ptr_eq(g_host->host, g_host);
    /* its traffic is counted once, by the transport that carries it */
    ck_assert_ptr_eq(g_t->stats, g_host->stats);
}
END_TEST

START_TEST(t_all_gather) {
    static const size_t sizes[] = {0, 1, 7, 1000, 4099};
    int bad = 0, bad_inplace = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t bpr = sizes[s], all = (size_t)W * bpr;
        unsigned char *mine = xmalloc(bpr), *got = xmalloc(all), *want = xmalloc(all);
        for (int r = 0; r < W; r++) tt_fill_bytes(want + (size_t)r * bpr, bpr, 100 + s, r);
        tt_fill_bytes(mine, bpr, 100 + s, R);
        unsigned char *dsend = dev_from(mine, bpr), *drecv = dev_from(NULL, all);
        qft_err err = {0};
        ck_assert_msg(qft_transport_all_gather(g_t, dsend, drecv, bpr, &err) == 0, "%s", err.msg);
        host_from(got, drecv, all);
        bad += memcmp(got, want, all) != 0;
        /* in place: this rank's block already sits in recv */
        memset(got, 0xCD, all);
        memcpy(got + (size_t)R * bpr, mine, bpr);
        if (all) g_ops->upload(drecv, got, all);
        ck_assert_msg(qft_transport_all_gather(g_t, drecv + (size_t)R * bpr, drecv, bpr, &err) == 0,
                      "%s", err.msg);
        host_from(got, drecv, all);
        bad_inplace += memcmp(got, want, all) != 0;
        g_ops->free(dsend);
        g_ops->free(drecv);
        free(mine);
        free(got);
        free(want);
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(bad_inplace, 0);
}
END_TEST

START_TEST(t_reduce_scatter) {
    static const size_t sizes[] = {0, 1, 5, 1023};
    int bad = 0, bad_inplace = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s], total = (size_t)W * n; // (W, n)
        float *x = xmalloc(total * sizeof(float)), *want = xmalloc(n * sizeof(float)),
              *got = xmalloc(n * sizeof(float));
        for (int r = 0; r < W; r++) { /* block R summed over ranks in rank order */
            tt_fill_f32(x, total, 200 + s, r);
            for (size_t i = 0; i < n; i++)
                want[i] = r == 0 ? x[(size_t)R * n + i] : want[i] + x[(size_t)R * n + i];
        }
        tt_fill_f32(x, total, 200 + s, R);
        float *dsend = dev_from(x, total * sizeof(float)), *drecv = dev_from(NULL, n * sizeof(float));
        qft_err err = {0};
        ck_assert_msg(qft_transport_reduce_scatter_f32(g_t, dsend, drecv, n, &err) == 0, "%s",
                      err.msg);
        host_from(got, drecv, n * sizeof(float));
        bad += memcmp(got, want, n * sizeof(float)) != 0;
        ck_assert_msg(qft_transport_reduce_scatter_f32(g_t, dsend, dsend + (size_t)R * n, n,
                                                       &err) == 0, "%s", err.msg);
        host_from(got, dsend + (size_t)R * n, n * sizeof(float));
        bad_inplace += memcmp(got, want, n * sizeof(float)) != 0;
        g_ops->free(dsend);
        g_ops->free(drecv);
        free(x);
        free(want);
        free(got);
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(bad_inplace, 0);
}
END_TEST

/* Sizes below, at and above the world size and the 5-float pieces. */
static const size_t ar_sizes[] = {0, 1, 2, 4, 1001, 4097};
#define N_AR (sizeof ar_sizes / sizeof ar_sizes[0])

START_TEST(t_all_reduce) {
    int bad_sum = 0, bad_max = 0, bad_f64 = 0;
    for (size_t s = 0; s < N_AR; s++) {
        const size_t n = ar_sizes[s];
        float *x = xmalloc(n * sizeof(float)), *sum = xmalloc(n * sizeof(float)),
              *mx = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float));
        double *xd = xmalloc(n * sizeof(double)), *sumd = xmalloc(n * sizeof(double)),
               *gotd = xmalloc(n * sizeof(double));
        for (int r = 0; r < W; r++) {
            tt_fill_f32(x, n, 300 + s, r);
            tt_fill_f64(xd, n, 400 + s, r);
            for (size_t i = 0; i < n; i++) {
                sum[i] = r == 0 ? x[i] : sum[i] + x[i];
                mx[i] = r == 0 || x[i] > mx[i] ? x[i] : mx[i];
                sumd[i] = r == 0 ? xd[i] : sumd[i] + xd[i];
            }
        }
        tt_fill_f32(x, n, 300 + s, R);
        tt_fill_f64(xd, n, 400 + s, R);
        float *d = dev_from(x, n * sizeof(float)), *d2 = dev_from(x, n * sizeof(float));
        double *dd = dev_from(xd, n * sizeof(double));
        qft_err err = {0};
        ck_assert_msg(qft_transport_all_reduce_f32(g_t, d, n, QFT_REDUCE_SUM, &err) == 0, "%s",
                      err.msg);
        ck_assert_msg(qft_transport_all_reduce_f32(g_t, d2, n, QFT_REDUCE_MAX, &err) == 0, "%s",
                      err.msg);
        ck_assert_msg(qft_transport_all_reduce_f64(g_t, dd, n, QFT_REDUCE_SUM, &err) == 0, "%s",
                      err.msg);
        host_from(got, d, n * sizeof(float));
        bad_sum += memcmp(got, sum, n * sizeof(float)) != 0;
        host_from(got, d2, n * sizeof(float));
        bad_max += memcmp(got, mx, n * sizeof(float)) != 0;
        host_from(gotd, dd, n * sizeof(double));
        bad_f64 += memcmp(gotd, sumd, n * sizeof(double)) != 0;
        g_ops->free(d);
        g_ops->free(d2);
        g_ops->free(dd);
        free(x), free(sum), free(mx), free(got), free(xd), free(sumd), free(gotd);
    }
    ck_assert_int_eq(bad_sum, 0);
    ck_assert_int_eq(bad_max, 0);
    ck_assert_int_eq(bad_f64, 0);
}
END_TEST

START_TEST(t_broadcast) {
    static const size_t sizes[] = {0, 13, 5000};
    int bad = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (int root = 0; root < W; root++) {
            const size_t n = sizes[s];
            unsigned char *buf = xmalloc(n), *want = xmalloc(n);
            tt_fill_bytes(want, n, 500 + s, root);
            tt_fill_bytes(buf, n, 500 + s, R); /* differs from root's except on the root */
            unsigned char *d = dev_from(buf, n);
            qft_err err = {0};
            ck_assert_msg(qft_transport_broadcast(g_t, d, n, root, &err) == 0, "%s", err.msg);
            host_from(buf, d, n);
            bad += memcmp(buf, want, n) != 0;
            g_ops->free(d);
            free(buf);
            free(want);
        }
    }
    ck_assert_int_eq(bad, 0);
}
END_TEST

/* Sub-transports are staged too: by parity, a sum over the members in rank order; and the
 * hybrid strategies' split by machine, whose size check goes through `host`. */
START_TEST(t_split) {
    qft_err err = {0};
    qft_transport *sub = NULL, *intra = NULL, *inter = NULL;
    ck_assert_msg(qft_transport_split(g_t, R % 2, R, &sub, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(sub);
    const size_t n = 37;
    float *x = xmalloc(n * sizeof(float)), *want = xmalloc(n * sizeof(float)),
          *got = xmalloc(n * sizeof(float));
    int k = 0;
    for (int r = R % 2; r < W; r += 2, k++) {
        tt_fill_f32(x, n, 600, r);
        for (size_t i = 0; i < n; i++) want[i] = k == 0 ? x[i] : want[i] + x[i];
    }
    tt_fill_f32(x, n, 600, R);
    float *d = dev_from(x, n * sizeof(float));
    ck_assert_msg(qft_transport_all_reduce_f32(sub, d, n, QFT_REDUCE_SUM, &err) == 0, "%s",
                  err.msg);
    host_from(got, d, n * sizeof(float));
    const int split_ok =
        qft_transport_split_machines(g_t, "test", &intra, &inter, &err) == 0;
    ck_assert_msg(split_ok, "%s", err.msg);
    ck_assert_str_eq(sub->kind, "staged");
    ck_assert_int_eq(sub->world, k);
    ck_assert_int_eq(sub->rank, R / 2);
    ck_assert_ptr_nonnull(sub->host);
    ck_assert_int_eq(sub->host->world, k);
    ck_assert_mem_eq(got, want, n * sizeof(float));
    ck_assert_str_eq(intra->kind, "staged");
    ck_assert_int_eq(intra->world, g_t->node_size);
    ck_assert_int_eq(inter->world, g_t->nodes);
    g_ops->free(d);
    free(x), free(want), free(got);
    inter->vt->close(inter);
    intra->vt->close(intra);
    sub->vt->close(sub);
}
END_TEST

int main(void) {
    qft_err err = {0};
    if (qft_transport_open("auto", &g_host, &err)) {
        fprintf(stderr, "cannot open the transport: %s\n", err.msg);
        return 1;
    }
    if (strcmp(g_host->kind, "mpi") != 0) {
        fprintf(stderr, "test_transport_staged runs under mpirun (got the %s transport)\n",
                g_host->kind);
        return 1;
    }
    g_ops = qft_cpu_guard_ops();
    if (qft_transport_open_staged(g_host, g_ops, &g_t, &err)) {
        fprintf(stderr, "cannot open the staged transport: %s\n", err.msg);
        return 1;
    }
    Suite *s = suite_create("transport_staged");
    TCase *tc = tcase_create("collectives");
    tcase_add_test(tc, t_info);
    tcase_add_test(tc, t_all_gather);
    tcase_add_test(tc, t_reduce_scatter);
    tcase_add_test(tc, t_all_reduce);
    tcase_add_test(tc, t_broadcast);
    tcase_add_test(tc, t_split);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    double failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    const int rank = g_t->rank, world = g_t->world;
    g_t->vt->close(g_t);
    /* every rank exits non-zero when any rank failed */
    if (qft_transport_all_reduce_f64(g_host, &failed, 1, QFT_REDUCE_SUM, &err)) {
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        return 1;
    }
    if (rank == 0) printf("transport_staged: %d ranks, %s\n", world, failed ? "FAILED" : "all passed");
    g_host->vt->close(g_host);
    return failed ? 1 : 0;
}
