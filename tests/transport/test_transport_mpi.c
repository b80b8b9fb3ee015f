/* The MPI transport under mpirun (tests/transport/meson.build launches it with -np 2 and
 * -np 3, once with QFT_TRANSPORT_CHUNK_BYTES=20 so that every call is split into pieces).
 *
 * Every rank draws every rank's input from a fixed seed and computes the serial answer
 * itself; results must match it bit for bit, sums included, since the transport sums in
 * rank order (qft_transport.h). Tests run without forking (CK_NOFORK: an MPI process cannot
 * fork) and assert only after their last collective, so a failure on one rank does not
 * leave the ranks calling different collectives. The exit status is non-zero on every rank
 * when a test failed on any rank.
 *
 * Other modes, for test_transport_fail.c: `kill` (rank 1 dies by SIGKILL before a
 * collective), `hang` (rank 1 sleeps through one), `abort` (rank 1 calls abort while the
 * others wait in a barrier), `world` (a resumed run with a mismatched world size), and
 * `measure` (prints how MPI's own reductions compare with ours; asserts nothing). */
#include "qft_base.h"
#include "transport.h"
#include "transport_test_util.h"

#include <check.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static qft_transport *g_t;

#define W (g_t->world)
#define R (g_t->rank)

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* The serial answer of a rank-ordered sum of block `blk` (len) of every rank's data. */
static void serial_sum_f32(float *out, size_t len, size_t blk, size_t total, uint64_t purpose) {
    float *x = xmalloc(total * sizeof(float)); // (total)
    for (int r = 0; r < W; r++) {
        tt_fill_f32(x, total, purpose, r);
        for (size_t i = 0; i < len; i++) out[i] = r == 0 ? x[blk + i] : out[i] + x[blk + i];
    }
    free(x);
}

START_TEST(t_info) {
    ck_assert_str_eq(g_t->kind, "mpi");
    ck_assert_int_ge(W, 2);
    ck_assert_int_eq(g_t->device, -1);
    const char *fake = getenv("QFT_TRANSPORT_NODE_SIZE");
    int k = fake ? atoi(fake) : W; /* tests run on one machine */
    ck_assert_int_eq(g_t->node_index, R / k);
    ck_assert_int_eq(g_t->node_rank, R % k);
    ck_assert_int_eq(g_t->node_size, (R / k + 1) * k <= W ? k : W - (R / k) * k);
    ck_assert_int_eq(g_t->nodes, (W + k - 1) / k);
}
END_TEST

START_TEST(t_all_gather) {
    static const size_t sizes[] = {0, 1, 7, 1000, 4099};
    int bad = 0, bad_inplace = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t bpr = sizes[s];
        unsigned char *send = xmalloc(bpr), *recv = xmalloc((size_t)W * bpr), // (W * bpr)
            *want = xmalloc((size_t)W * bpr);
        for (int r = 0; r < W; r++) tt_fill_bytes(want + (size_t)r * bpr, bpr, 100 + s, r);
        tt_fill_bytes(send, bpr, 100 + s, R);
        memset(recv, 0xAB, (size_t)W * bpr);
        qft_err err = {0};
        ck_assert_msg(qft_transport_all_gather(g_t, send, recv, bpr, &err) == 0, "%s", err.msg);
        if (memcmp(recv, want, (size_t)W * bpr)) bad++;
        /* In place: this rank's block already sits in recv. */
        memset(recv, 0xCD, (size_t)W * bpr);
        memcpy(recv + (size_t)R * bpr, send, bpr);
        ck_assert_msg(qft_transport_all_gather(g_t, recv + (size_t)R * bpr, recv, bpr, &err) == 0,
                      "%s", err.msg);
        if (memcmp(recv, want, (size_t)W * bpr)) bad_inplace++;
        free(send);
        free(recv);
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
        size_t n = sizes[s], total = (size_t)W * n; // (W * n)
        float *send = xmalloc(total * sizeof(float)), *recv = xmalloc(n * sizeof(float)),
              *want = xmalloc(n * sizeof(float));
        tt_fill_f32(send, total, 200 + s, R);
        serial_sum_f32(want, n, (size_t)R * n, total, 200 + s);
        qft_err err = {0};
        ck_assert_msg(qft_transport_reduce_scatter_f32(g_t, send, recv, n, &err) == 0, "%s",
                      err.msg);
        if (memcmp(recv, want, n * sizeof(float))) bad++;
        ck_assert_msg(qft_transport_reduce_scatter_f32(g_t, send, send + (size_t)R * n, n,
                                                       &err) == 0, "%s", err.msg);
        if (memcmp(send + (size_t)R * n, want, n * sizeof(float))) bad_inplace++;
        free(send);
        free(recv);
        free(want);
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(bad_inplace, 0);
}
END_TEST

/* Sizes below, at and above the world size, not divisible by 2 or 3. */
static const size_t ar_sizes[] = {0, 1, 2, 4, 1001, 4097};
#define N_AR (sizeof ar_sizes / sizeof ar_sizes[0])

START_TEST(t_all_reduce_f32) {
    int bad[3] = {0, 0, 0};
    for (size_t s = 0; s < N_AR; s++) {
        size_t n = ar_sizes[s];
        float *buf = xmalloc(n * sizeof(float)), *x = xmalloc(n * sizeof(float)),
              *want = xmalloc(3 * n * sizeof(float)); // (3, n): sum, max, min
        for (int r = 0; r < W; r++) {
            tt_fill_f32(x, n, 300 + s, r);
            for (size_t i = 0; i < n; i++) {
                want[i] = r == 0 ? x[i] : want[i] + x[i];
                want[n + i] = r == 0 || x[i] > want[n + i] ? x[i] : want[n + i];
                want[2 * n + i] = r == 0 || x[i] < want[2 * n + i] ? x[i] : want[2 * n + i];
            }
        }
        qft_reduce_op ops[3] = {QFT_REDUCE_SUM, QFT_REDUCE_MAX, QFT_REDUCE_MIN};
        for (int o = 0; o < 3; o++) {
            tt_fill_f32(buf, n, 300 + s, R);
            qft_err err = {0};
            ck_assert_msg(qft_transport_all_reduce_f32(g_t, buf, n, ops[o], &err) == 0, "%s",
                          err.msg);
            if (memcmp(buf, want + (size_t)o * n, n * sizeof(float))) bad[o]++;
        }
        free(buf);
        free(x);
        free(want);
    }
    ck_assert_int_eq(bad[0], 0);
    ck_assert_int_eq(bad[1], 0);
    ck_assert_int_eq(bad[2], 0);
}
END_TEST

START_TEST(t_all_reduce_f64) {
    int bad = 0;
    for (size_t s = 0; s < N_AR; s++) {
        size_t n = ar_sizes[s];
        double *buf = xmalloc(n * sizeof(double)), *x = xmalloc(n * sizeof(double)),
               *want = xmalloc(n * sizeof(double));
        for (int r = 0; r < W; r++) {
            tt_fill_f64(x, n, 400 + s, r);
            for (size_t i = 0; i < n; i++) want[i] = r == 0 ? x[i] : want[i] + x[i];
        }
        tt_fill_f64(buf, n, 400 + s, R);
        qft_err err = {0};
        ck_assert_msg(qft_transport_all_reduce_f64(g_t, buf, n, QFT_REDUCE_SUM, &err) == 0, "%s",
                      err.msg);
        if (memcmp(buf, want, n * sizeof(double))) bad++;
        free(buf);
        free(x);
        free(want);
    }
    ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(t_broadcast) {
    static const size_t sizes[] = {0, 13, 5000};
    int bad = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (int root = 0; root < W; root++) {
            size_t n = sizes[s];
            unsigned char *buf = xmalloc(n), *want = xmalloc(n);
            tt_fill_bytes(want, n, 500 + s, root);
            tt_fill_bytes(buf, n, 500 + s, R); /* differs from root's except on the root */
            qft_err err = {0};
            ck_assert_msg(qft_transport_broadcast(g_t, buf, n, root, &err) == 0, "%s", err.msg);
            if (memcmp(buf, want, n)) bad++;
            free(buf);
            free(want);
        }
    }
    ck_assert_int_eq(bad, 0);
}
END_TEST

/* Two sub-groups by parity with reversed keys, and one rank left out. */
START_TEST(t_split) {
    qft_err err = {0};
    qft_transport *sub = NULL, *part = NULL;
    ck_assert_msg(qft_transport_split(g_t, R % 2, -R, &sub, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(sub);
    int members[8], m = 0;
    for (int r = 0; r < W; r++)
        if (r % 2 == R % 2) members[m++] = r;
    /* key = -rank: the highest parent rank comes first. */
    int want_rank = 0;
    for (int i = 0; i < m; i++) want_rank += members[i] > R;
    size_t n = 37;
    float *buf = xmalloc(n * sizeof(float)), *x = xmalloc(n * sizeof(float)),
          *want = xmalloc(n * sizeof(float));
    /* Sum in the sub-transport's rank order: parent ranks from the highest down. */
    for (int i = m - 1; i >= 0; i--) {
        tt_fill_f32(x, n, 600, members[i]);
        for (size_t j = 0; j < n; j++) want[j] = i == m - 1 ? x[j] : want[j] + x[j];
    }
    tt_fill_f32(buf, n, 600, R);
    ck_assert_msg(qft_transport_all_reduce_f32(sub, buf, n, QFT_REDUCE_SUM, &err) == 0, "%s",
                  err.msg);
    int gathered[8] = {0};
    ck_assert_msg(qft_transport_all_gather(sub, &R, gathered, sizeof(int), &err) == 0, "%s",
                  err.msg);
    /* Leave the last rank out of a group of all the others. */
    int color = R == W - 1 ? QFT_TRANSPORT_NO_COLOR : 7;
    ck_assert_msg(qft_transport_split(g_t, color, R, &part, &err) == 0, "%s", err.msg);
    int part_sum = -1;
    if (part) {
        int v = R + 1;
        double d = v;
        ck_assert_msg(qft_transport_all_reduce_f64(part, &d, 1, QFT_REDUCE_SUM, &err) == 0,
                      "%s", err.msg);
        part_sum = (int)d;
    }
    ck_assert_int_eq(sub->world, m);
    ck_assert_int_eq(sub->rank, want_rank);
    const char *fake = getenv("QFT_TRANSPORT_NODE_SIZE");
    int k = fake ? atoi(fake) : W, same_machine = 0; /* one machine, unless faked */
    for (int i = 0; i < m; i++) same_machine += members[i] / k == R / k;
    ck_assert_int_eq(sub->node_size, same_machine);
    ck_assert_int_eq(memcmp(buf, want, n * sizeof(float)), 0);
    for (int i = 0; i < m; i++) ck_assert_int_eq(gathered[i], members[m - 1 - i]);
    ck_assert_uint_eq(sub->stats->calls[QFT_COLL_ALL_REDUCE], 1);
    ck_assert_uint_eq(sub->stats->calls[QFT_COLL_ALL_GATHER], 1);
    if (R == W - 1) {
        ck_assert_ptr_null(part);
    } else {
        ck_assert_ptr_nonnull(part);
        ck_assert_int_eq(part->world, W - 1);
        ck_assert_int_eq(part->rank, R);
        ck_assert_int_eq(part_sum, (W - 1) * W / 2);
        part->vt->close(part);
    }
    sub->vt->close(sub);
    free(buf);
    free(x);
    free(want);
}
END_TEST

/* Hybrid sharding's two splits: within a machine and across machines. Under
 * QFT_TRANSPORT_NODE_SIZE=2 with 3 ranks: machines {0,1} and {2}. */
START_TEST(t_split_nodes) {
    qft_err err = {0};
    qft_transport *intra = NULL, *inter = NULL;
    ck_assert_msg(qft_transport_split(g_t, g_t->node_index, R, &intra, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_transport_split(g_t, g_t->node_rank, R, &inter, &err) == 0, "%s", err.msg);
    int ranks[8] = {0};
    ck_assert_msg(qft_transport_all_gather(intra, &R, ranks, sizeof(int), &err) == 0, "%s",
                  err.msg);
    ck_assert_int_eq(intra->world, g_t->node_size);
    ck_assert_int_eq(intra->rank, g_t->node_rank);
    ck_assert_int_eq(intra->nodes, 1);
    for (int i = 0; i < intra->world; i++) ck_assert_int_eq(ranks[i], R - g_t->node_rank + i);
    ck_assert_int_eq(inter->node_size, 1);
    ck_assert_int_eq(inter->nodes, inter->world);
    ck_assert_int_eq(inter->node_index, inter->rank);
    inter->vt->close(inter);
    intra->vt->close(intra);
}
END_TEST

START_TEST(t_stats) {
    qft_err err = {0};
    memset(g_t->stats, 0, sizeof *g_t->stats);
    unsigned char bytes[3 * 100], one[100];
    float f[3 * 10], g[10];
    double d[10];
    tt_fill_bytes(one, sizeof one, 700, R);
    tt_fill_f32(f, 3 * 10, 701, R);
    tt_fill_f64(d, 10, 702, R);
    ck_assert_int_le(W, 3);
    /* The transport lives in libqft_mpi.so but counts into the core's process-wide counter
     * and allocates its scratch through the core's accounted allocator. */
    uint64_t process0 = qft_transport_process_bytes();
    qft_mem_reset_peak();
    size_t mem0 = qft_mem_current();
    ck_assert(qft_transport_all_gather(g_t, one, bytes, 100, &err) == 0);
    ck_assert(qft_transport_all_gather(g_t, one, bytes, 100, &err) == 0);
    ck_assert(qft_transport_reduce_scatter_f32(g_t, f, g, 10, &err) == 0);
    ck_assert_uint_eq(qft_mem_current(), mem0);
    const char *chunk_env = getenv("QFT_TRANSPORT_CHUNK_BYTES");
    size_t piece = chunk_env ? (size_t)atol(chunk_env) / sizeof(float) : 10;
    if (piece > 10) piece = 10;
    ck_assert_uint_ge(qft_mem_peak(), mem0 + (size_t)W * piece * sizeof(float)); // (W, piece)
    ck_assert(qft_transport_all_reduce_f32(g_t, f, 10, QFT_REDUCE_SUM, &err) == 0);
    ck_assert(qft_transport_all_reduce_f64(g_t, d, 10, QFT_REDUCE_MAX, &err) == 0);
    ck_assert(qft_transport_broadcast(g_t, one, 33, W - 1, &err) == 0);
    ck_assert(qft_transport_barrier(g_t, &err) == 0);
    const qft_transport_stats *st = g_t->stats;
    uint64_t w1 = (uint64_t)W - 1;
    uint64_t c = 10 / W + ((uint64_t)R < 10 % (uint64_t)W); /* this rank's share of 10 */
    ck_assert_uint_eq(st->calls[QFT_COLL_ALL_GATHER], 2);
    ck_assert_uint_eq(st->bytes_sent[QFT_COLL_ALL_GATHER], 2 * w1 * 100);
    ck_assert_uint_eq(st->calls[QFT_COLL_REDUCE_SCATTER], 1);
    ck_assert_uint_eq(st->bytes_sent[QFT_COLL_REDUCE_SCATTER], w1 * 10 * 4);
    ck_assert_uint_eq(st->calls[QFT_COLL_ALL_REDUCE], 2);
    ck_assert_uint_eq(st->bytes_sent[QFT_COLL_ALL_REDUCE],
                      ((10 - c) * 4 + w1 * c * 4) + ((10 - c) * 8 + w1 * c * 8));
    ck_assert_uint_eq(st->calls[QFT_COLL_BROADCAST], 1);
    ck_assert_uint_eq(st->bytes_sent[QFT_COLL_BROADCAST], 33);
    ck_assert_uint_eq(st->calls[QFT_COLL_BARRIER], 1);
    ck_assert_uint_eq(st->bytes_sent[QFT_COLL_BARRIER], 0);
    for (int k = 0; k < QFT_COLL_COUNT; k++) ck_assert(st->seconds[k] >= 0 && st->seconds[k] < 10);
    if (W == 2) ck_assert_uint_eq(st->bytes_sent[QFT_COLL_ALL_REDUCE], 40 + 80); /* 2(W-1)/W n e */
    uint64_t sum = 0;
    for (int k = 0; k < QFT_COLL_COUNT; k++) sum += st->bytes_sent[k];
    ck_assert_uint_eq(qft_transport_process_bytes() - process0, sum);
}
END_TEST

START_TEST(t_check_world) {
    qft_err err = {0};
    ck_assert_int_eq(qft_transport_check_world(g_t, W, &err), 0);
    ck_assert_int_ne(qft_transport_check_world(g_t, 4, &err), 0);
    char want[256];
    snprintf(want, sizeof want, "rank %d of %d (mpi): this run was saved with world size 4 but "
             "is launched with %d", R, W, W);
    ck_assert_msg(strstr(err.msg, want), "got \"%s\"", err.msg);
}
END_TEST

/* Misuse is found before any communication, alike on every rank, and named. */
START_TEST(t_errors) {
    qft_err err = {0};
    char buf[8] = {0}, want[128];
    ck_assert_int_ne(qft_transport_broadcast(g_t, buf, sizeof buf, W, &err), 0);
    snprintf(want, sizeof want, "rank %d of %d (mpi): broadcast: root %d is not a rank", R, W, W);
    ck_assert_msg(strstr(err.msg, want), "got \"%s\"", err.msg);
    ck_assert_int_ne(qft_transport_all_reduce_f32(g_t, NULL, 3, QFT_REDUCE_SUM, &err), 0);
    ck_assert_msg(strstr(err.msg, "all_reduce: buf is NULL"), "got \"%s\"", err.msg);
    ck_assert_int_ne(qft_transport_all_reduce_f32(g_t, (float *)buf, 1, (qft_reduce_op)9, &err),
                     0);
    ck_assert_msg(strstr(err.msg, "unknown reduction 9"), "got \"%s\"", err.msg);
    char big[64];
    ck_assert_int_ne(qft_transport_all_gather(g_t, big + 1, big, 8, &err), 0);
    ck_assert_msg(strstr(err.msg, "send overlaps recv"), "got \"%s\"", err.msg);
    qft_transport *sub = NULL;
    ck_assert_int_ne(qft_transport_split(g_t, -5, 0, &sub, &err), 0);
    ck_assert_msg(strstr(err.msg, "color -5 is negative"), "got \"%s\"", err.msg);
}
END_TEST

/* ---- the modes test_transport_fail.c launches ----------------------------------------- */

static int die(const char *what, const qft_err *err) {
    fprintf(stderr, "rank %d: %s: %s\n", g_t ? g_t->rank : -1, what, err->msg);
    return 1;
}

static int run_mode(const char *mode) {
    qft_err err = {0};
    float x[64];
    tt_fill_f32(x, 64, 800, R);
    if (qft_transport_barrier(g_t, &err)) return die(mode, &err);
    if (!strcmp(mode, "kill")) {
        if (R == 1) raise(SIGKILL);
    } else if (!strcmp(mode, "hang")) {
        if (R == 1) sleep(60);
    } else if (!strcmp(mode, "abort")) {
        if (R == 1) g_t->vt->abort(g_t, 5, "cannot go on (test of abort)");
    } else if (!strcmp(mode, "world")) {
        /* What a resumed run does first; every rank fails alike and exits non-zero, and
         * mpirun ends the job. */
        if (qft_transport_check_world(g_t, 4, &err)) {
            fprintf(stderr, "qft: error: %s\n", err.msg);
            exit(1);
        }
    }
    if (qft_transport_all_reduce_f32(g_t, x, 64, QFT_REDUCE_SUM, &err)) return die(mode, &err);
    fprintf(stderr, "rank %d: mode %s finished its collective (unexpected)\n", R, mode);
    g_t->vt->close(g_t);
    return 0;
}

/* How MPI's own reductions compare with the rank-ordered ones; printed for the notes. */
static int run_measure(void) {
    qft_err err = {0};
    size_t n = 1 << 20; // (n) per rank's block of the reduce-scatter, and the all-reduce
    float *ours = malloc(n * sizeof(float)), *mpis = malloc(n * sizeof(float)),
          *send = malloc((size_t)W * n * sizeof(float)), *rs = malloc(n * sizeof(float)),
          *rs_mpi = malloc(n * sizeof(float));
    if (!ours || !mpis || !send || !rs || !rs_mpi) return 1;
    tt_fill_f32(ours, n, 900, R);
    memcpy(mpis, ours, n * sizeof(float));
    /* Timing: the best of 5 calls after a first one on scratch copies (connections). */
    float *scratch = malloc(n * sizeof(float));
    if (!scratch) return 1;
    double t_ours = 1e9, t_mpi = 1e9;
    for (int rep = 0; rep < 6; rep++) {
        memcpy(scratch, ours, n * sizeof(float));
        double t0 = qft_time_now();
        if (qft_transport_all_reduce_f32(g_t, scratch, n, QFT_REDUCE_SUM, &err))
            return die("measure", &err);
        if (rep && qft_time_now() - t0 < t_ours) t_ours = qft_time_now() - t0;
        memcpy(scratch, ours, n * sizeof(float));
        t0 = qft_time_now();
        MPI_Allreduce(MPI_IN_PLACE, scratch, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rep && qft_time_now() - t0 < t_mpi) t_mpi = qft_time_now() - t0;
    }
    free(scratch);
    if (qft_transport_all_reduce_f32(g_t, ours, n, QFT_REDUCE_SUM, &err)) return die("measure", &err);
    MPI_Allreduce(MPI_IN_PLACE, mpis, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    tt_fill_f32(send, (size_t)W * n, 901, R);
    if (qft_transport_reduce_scatter_f32(g_t, send, rs, n, &err)) return die("measure", &err);
    MPI_Reduce_scatter_block(send, rs_mpi, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    size_t diff_ar = 0, diff_rs = 0;
    double rel_ar = 0, rel_rs = 0;
    for (size_t i = 0; i < n; i++) {
        if (ours[i] != mpis[i]) {
            diff_ar++;
            double r = fabs((double)ours[i] - mpis[i]) / (fabs((double)ours[i]) + 1e-30);
            if (r > rel_ar) rel_ar = r;
        }
        if (rs[i] != rs_mpi[i]) {
            diff_rs++;
            double r = fabs((double)rs[i] - rs_mpi[i]) / (fabs((double)rs[i]) + 1e-30);
            if (r > rel_rs) rel_rs = r;
        }
    }
    printf("rank %d of %d: %zu floats: MPI_Allreduce differs from the rank-ordered sum in %zu "
           "elements (max rel %.3g); MPI_Reduce_scatter_block in %zu (max rel %.3g); "
           "all_reduce %.1f ms ours, %.1f ms MPI_Allreduce\n",
           R, W, n, diff_ar, rel_ar, diff_rs, rel_rs, 1e3 * t_ours, 1e3 * t_mpi);
    free(ours);
    free(mpis);
    free(send);
    free(rs);
    free(rs_mpi);
    g_t->vt->close(g_t);
    return 0;
}

int main(int argc, char **argv) {
    qft_err err = {0};
    if (qft_transport_open("auto", &g_t, &err)) {
        fprintf(stderr, "cannot open the transport: %s\n", err.msg);
        return 1;
    }
    if (strcmp(g_t->kind, "mpi") != 0) {
        fprintf(stderr, "test_transport_mpi runs under mpirun (got the %s transport)\n",
                g_t->kind);
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "measure")) return run_measure();
    if (argc > 1) return run_mode(argv[1]);

    Suite *s = suite_create("transport_mpi");
    TCase *tc = tcase_create("collectives");
    tcase_add_test(tc, t_info);
    tcase_add_test(tc, t_all_gather);
    tcase_add_test(tc, t_reduce_scatter);
    tcase_add_test(tc, t_all_reduce_f32);
    tcase_add_test(tc, t_all_reduce_f64);
    tcase_add_test(tc, t_broadcast);
    tcase_add_test(tc, t_split);
    tcase_add_test(tc, t_split_nodes);
    tcase_add_test(tc, t_stats);
    tcase_add_test(tc, t_check_world);
    tcase_add_test(tc, t_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    double failed = srunner_ntests_failed(sr);
    if (failed) fprintf(stderr, "rank %d: %d test(s) failed\n", R, (int)failed);
    srunner_free(sr);
    /* Every rank exits non-zero when any rank failed. */
    if (qft_transport_all_reduce_f64(g_t, &failed, 1, QFT_REDUCE_SUM, &err)) {
        fprintf(stderr, "rank %d: %s\n", R, err.msg);
        return 1;
    }
    if (R == 0) printf("transport_mpi: %d ranks, %s\n", W, failed ? "FAILED" : "all passed");
    g_t->vt->close(g_t);
    return failed ? 1 : 0;
}
