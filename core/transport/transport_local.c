/* The single-process transport: world size 1, so every collective is a copy or nothing.
 * It keeps the same argument checks and counters as the others, so a shard plugin that
 * misuses the interface fails on one process too, not first under mpirun. */
#include "transport_internal.h"

#include "qft_base.h"

#include <stdlib.h>
#include <string.h>

typedef struct local_impl {
    qft_transport pub;
    qft_transport_stats stats;
} local_impl;

static int check_ptr(const qft_transport *t, const void *p, size_t bytes, const char *op,
                     const char *what, qft_err *err) {
    if (bytes && !p) return qft_transport_errf(t, err, "%s: %s is NULL", op, what);
    return 0;
}

static int local_all_gather(const qft_transport *t, const void *send, void *recv,
                            size_t bytes_per_rank, qft_err *err) {
    double t0 = qft_time_now();
    if (check_ptr(t, send, bytes_per_rank, "all_gather", "send", err) ||
        check_ptr(t, recv, bytes_per_rank, "all_gather", "recv", err)) {
        return -1;
    }
    if (send != recv && qft_transport_overlap(send, bytes_per_rank, recv, bytes_per_rank)) {
        return qft_transport_errf(t, err, "all_gather: send overlaps recv but is not rank 0's "
                                          "block of it");
    }
    if (bytes_per_rank && send != recv) memcpy(recv, send, bytes_per_rank);
    qft_transport_count(t, QFT_COLL_ALL_GATHER, bytes_per_rank, 1, t0);
    return 0;
}

static int local_reduce_scatter_f32(const qft_transport *t, const float *send, float *recv,
                                    size_t n, qft_err *err) {
    double t0 = qft_time_now();
    size_t bytes = n * sizeof(float); // (n)
    if (check_ptr(t, send, bytes, "reduce_scatter", "send", err) ||
        check_ptr(t, recv, bytes, "reduce_scatter", "recv", err)) {
        return -1;
    }
    if (send != recv && qft_transport_overlap(send, bytes, recv, bytes)) {
        return qft_transport_errf(t, err, "reduce_scatter: recv overlaps send but is not rank "
                                          "0's block of it");
    }
    if (bytes && send != recv) memcpy(recv, send, bytes);
    qft_transport_count(t, QFT_COLL_REDUCE_SCATTER, n, sizeof(float), t0);
    return 0;
}

static int local_all_reduce(const qft_transport *t, const void *buf, size_t n, size_t elt,
                            qft_reduce_op op, qft_err *err) {
    double t0 = qft_time_now();
    if (check_ptr(t, buf, n * elt, "all_reduce", "buf", err)) return -1;
    if ((int)op < 0 || op >= QFT_REDUCE_COUNT) {
        return qft_transport_errf(t, err, "all_reduce: unknown reduction %d", (int)op);
    }
    qft_transport_count(t, QFT_COLL_ALL_REDUCE, n, elt, t0);
    return 0;
}

static int local_all_reduce_f32(const qft_transport *t, float *buf, size_t n, qft_reduce_op op,
                                qft_err *err) {
    return local_all_reduce(t, buf, n, sizeof(float), op, err);
}

static int local_all_reduce_f64(const qft_transport *t, double *buf, size_t n,
                                qft_reduce_op op, qft_err *err) {
    return local_all_reduce(t, buf, n, sizeof(double), op, err);
}

static int local_broadcast(const qft_transport *t, void *buf, size_t bytes, int root,
                           qft_err *err) {
    double t0 = qft_time_now();
    if (check_ptr(t, buf, bytes, "broadcast", "buf", err)) return -1;
    if (root != 0) {
        return qft_transport_errf(t, err, "broadcast: root %d is not a rank (world size 1)",
                                  root);
    }
    qft_transport_count(t, QFT_COLL_BROADCAST, bytes, 1, t0);
    return 0;
}

static int local_barrier(const qft_transport *t, qft_err *err) {
    qft_transport_count(t, QFT_COLL_BARRIER, 0, 0, qft_time_now());
    return 0;
}

static int local_make(qft_transport **out, qft_err *err);

static int local_split(const qft_transport *t, int color, int key, qft_transport **sub,
                       qft_err *err) {
    *sub = NULL;
    if (color < 0 && color != QFT_TRANSPORT_NO_COLOR) {
        return qft_transport_errf(t, err, "split: color %d is negative (use "
                                          "QFT_TRANSPORT_NO_COLOR to stay out)", color);
    }
    if (color == QFT_TRANSPORT_NO_COLOR) return 0;
    return local_make(sub, err);
}

static void local_close(qft_transport *t) {
    if (t) qft_mem_free(t->impl);
}

static void local_abort(const qft_transport *t, int code, const char *why) {
    fprintf(stderr, "rank %d: %s\n", t->rank, why ? why : "aborting");
    fflush(stdout);
    fflush(stderr);
    exit(code);
}

static const qft_transport_vtable local_vtable = {
    .all_gather = local_all_gather,
    .reduce_scatter_f32 = local_reduce_scatter_f32,
    .all_reduce_f32 = local_all_reduce_f32,
    .all_reduce_f64 = local_all_reduce_f64,
    .broadcast = local_broadcast,
    .barrier = local_barrier,
    .split = local_split,
    .close = local_close,
    .abort = local_abort,
};

static int local_make(qft_transport **out, qft_err *err) {
    local_impl *m = qft_mem_calloc(sizeof *m, "transport");
    if (!m) return qft_err_setf(err, "local transport: out of memory (%zu bytes)", sizeof *m);
    m->pub = (qft_transport){.vt = &local_vtable, .kind = "local", .rank = 0, .world = 1,
                             .node_rank = 0, .node_size = 1, .node_index = 0, .nodes = 1,
                             .device = -1, .stats = &m->stats, .impl = m};
    m->pub.host = &m->pub;
    *out = &m->pub;
    return 0;
}

int qft_transport_open_local(qft_transport **out, qft_err *err) {
    *out = NULL;
    return local_make(out, err);
}
