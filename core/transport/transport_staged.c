/* The staged transport: collectives over buffers of a backend whose memory host code may
 * not touch (cpu_guard), run by a host transport (mpi or local) on copies in host memory.
 * Each collective downloads its operands in pieces of at most $QFT_TRANSPORT_CHUNK_BYTES
 * (64 MiB by default: the host copy of a piece is all the memory it adds), lets the host
 * transport combine the piece and uploads the result.
 *
 * Why it exists: a model whose gradients and optimizer stay on the backend needs the
 * strategies' collectives on backend memory. On a GPU that is NCCL; the same run on
 * cpu_guard, whose memory faults on any host access outside an op, tests on a machine
 * without a GPU that the core hands the strategies backend buffers, and only those. Sums
 * are the host transport's (rank order over MPI), so W ranks still reproduce one process.
 *
 * It counts nothing itself: its `stats` are the host transport's, which counts each piece
 * as it moves (the pieces of one call add up to the call's bytes when there is one piece;
 * an all-reduce cut into several can count a few elements' worth more or less). */
#include "transport_internal.h"

#include "qft_base.h"
#include "qft_ops.h"

#include <string.h>

typedef struct staged_impl {
    qft_transport pub;
    const qft_transport *host; /* runs the collectives on host memory */
    qft_transport *owned;      /* host, when a split made it for this one (closed with it) */
    const qft_ops *ops;        /* upload and download of the backend's memory */
    size_t piece;              /* bytes staged at a time */
    unsigned char *buf;        /* (cap) host copy of the piece(s) in flight */
    size_t cap;
} staged_impl;

static staged_impl *impl_of(const qft_transport *t) { return (staged_impl *)t->impl; }

/* The host copy, grown to `bytes` (a piece, or world pieces for the scatter and gather). */
static unsigned char *stage(const qft_transport *t, size_t bytes, const char *op,
                            qft_err *err) {
    staged_impl *m = impl_of(t);
    if (bytes <= m->cap) return m->buf;
    unsigned char *b = qft_mem_alloc(bytes, "staged transport");
    if (!b) {
        qft_transport_errf(t, err, "%s: out of host memory for a %zu-byte staging copy", op,
                           bytes);
        return NULL;
    }
    qft_mem_free(m->buf);
    m->buf = b, m->cap = bytes;
    return b;
}

static int check_ptr(const qft_transport *t, const void *p, size_t bytes, const char *op,
                     const char *what, qft_err *err) {
    if (bytes && !p) return qft_transport_errf(t, err, "%s: %s is NULL", op, what);
    return 0;
}

/* Elements of `elt` bytes per piece: at least one. */
static size_t piece_elems(const qft_transport *t, size_t elt) {
    const size_t p = impl_of(t)->piece / elt;
    return p ? p : 1;
}

static int staged_all_gather(const qft_transport *t, const void *send, void *recv,
                             size_t bytes_per_rank, qft_err *err) {
    const staged_impl *m = impl_of(t);
    if (check_ptr(t, send, bytes_per_rank, "all_gather", "send", err) ||
        check_ptr(t, recv, bytes_per_rank, "all_gather", "recv", err))
        return -1;
    const size_t W = (size_t)t->world, r = (size_t)t->rank, step = piece_elems(t, 1);
    // piece by piece of each rank's block: h (W, p) holds every rank's bytes [i, i + p)
    size_t i = 0;
    do { /* once with nothing to move: the call stays collective and counted */
        const size_t p = bytes_per_rank - i < step ? bytes_per_rank - i : step;
        unsigned char *h = stage(t, W * p + 1, "all_gather", err);
        if (!h) return -1;
        if (p) m->ops->download(h + r * p, (const unsigned char *)send + i, p);
        if (m->host->vt->all_gather(m->host, h + r * p, h, p, err)) return -1;
        for (size_t j = 0; j < W && p; j++)
            m->ops->upload((unsigned char *)recv + j * bytes_per_rank + i, h + j * p, p);
        i += p;
    } while (i < bytes_per_rank);
    return 0;
}

static int staged_reduce_scatter_f32(const qft_transport *t, const float *send, float *recv,
                                     size_t n, qft_err *err) {
    const staged_impl *m = impl_of(t);
    if (check_ptr(t, send, n * sizeof(float), "reduce_scatter", "send", err) ||
        check_ptr(t, recv, n * sizeof(float), "reduce_scatter", "recv", err))
        return -1;
    const size_t W = (size_t)t->world, r = (size_t)t->rank, step = piece_elems(t, sizeof(float));
    // columns [i, i + p) of the (W, n) blocks: h (W, p), this rank's sum lands in row r
    size_t i = 0;
    do {
        const size_t p = n - i < step ? n - i : step;
        float *h = (float *)stage(t, W * p * sizeof(float) + 1, "reduce_scatter", err);
        if (!h) return -1;
        for (size_t j = 0; j < W && p; j++)
            m->ops->download(h + j * p, send + j * n + i, p * sizeof(float));
        if (m->host->vt->reduce_scatter_f32(m->host, h, h + r * p, p, err)) return -1;
        if (p) m->ops->upload(recv + i, h + r * p, p * sizeof(float));
        i += p;
    } while (i < n);
    return 0;
}

static int staged_all_reduce(const qft_transport *t, void *buf, size_t n, size_t elt,
                             qft_reduce_op op, qft_err *err) {
    const staged_impl *m = impl_of(t);
    if (check_ptr(t, buf, n * elt, "all_reduce", "buf", err)) return -1;
    const size_t step = piece_elems(t, elt);
    size_t i = 0;
    do {
        const size_t p = n - i < step ? n - i : step;
        unsigned char *h = stage(t, p * elt + 1, "all_reduce", err);
        if (!h) return -1;
        unsigned char *b = (unsigned char *)buf + i * elt;
        if (p) m->ops->download(h, b, p * elt);
        const int rc = elt == sizeof(float)
                           ? m->host->vt->all_reduce_f32(m->host, (float *)h, p, op, err)
                           : m->host->vt->all_reduce_f64(m->host, (double *)h, p, op, err);
        if (rc) return -1;
        if (p) m->ops->upload(b, h, p * elt);
        i += p;
    } while (i < n);
    return 0;
}

static int staged_all_reduce_f32(const qft_transport *t, float *buf, size_t n, qft_reduce_op op,
                                 qft_err *err) {
    return staged_all_reduce(t, buf, n, sizeof(float), op, err);
}

static int staged_all_reduce_f64(const qft_transport *t, double *buf, size_t n,
                                 qft_reduce_op op, qft_err *err) {
    return staged_all_reduce(t, buf, n, sizeof(double), op, err);
}

static int staged_broadcast(const qft_transport *t, void *buf, size_t bytes, int root,
                            qft_err *err) {
    const staged_impl *m = impl_of(t);
    if (check_ptr(t, buf, bytes, "broadcast", "buf", err)) return -1;
    if (root < 0 || root >= t->world)
        return qft_transport_errf(t, err, "broadcast: root %d is not a rank of %d", root,
                                  t->world);
    const size_t step = piece_elems(t, 1);
    size_t i = 0;
    do {
        const size_t p = bytes - i < step ? bytes - i : step;
        unsigned char *h = stage(t, p + 1, "broadcast", err);
        if (!h) return -1;
        unsigned char *b = (unsigned char *)buf + i;
        if (p && t->rank == root) m->ops->download(h, b, p);
        if (m->host->vt->broadcast(m->host, h, p, root, err)) return -1;
        if (p && t->rank != root) m->ops->upload(b, h, p);
        i += p;
    } while (i < bytes);
    return 0;
}

static int staged_barrier(const qft_transport *t, qft_err *err) {
    const staged_impl *m = impl_of(t);
    return m->host->vt->barrier(m->host, err);
}

static int staged_make(const qft_transport *host, qft_transport *owned, const qft_ops *ops,
                       qft_transport **out, qft_err *err);

static int staged_split(const qft_transport *t, int color, int key, qft_transport **sub,
                        qft_err *err) {
    const staged_impl *m = impl_of(t);
    *sub = NULL;
    qft_transport *hs = NULL;
    if (m->host->vt->split(m->host, color, key, &hs, err)) return -1;
    if (!hs) return 0; /* QFT_TRANSPORT_NO_COLOR */
    if (staged_make(hs, hs, m->ops, sub, err)) {
        hs->vt->close(hs);
        return -1;
    }
    return 0;
}

static void staged_close(qft_transport *t) {
    if (!t) return;
    staged_impl *m = impl_of(t);
    qft_mem_free(m->buf);
    if (m->owned) m->owned->vt->close(m->owned);
    qft_mem_free(m);
}

static void staged_abort(const qft_transport *t, int code, const char *why) {
    const staged_impl *m = impl_of(t);
    m->host->vt->abort(m->host, code, why);
}

static const qft_transport_vtable staged_vtable = {
    .all_gather = staged_all_gather,
    .reduce_scatter_f32 = staged_reduce_scatter_f32,
    .all_reduce_f32 = staged_all_reduce_f32,
    .all_reduce_f64 = staged_all_reduce_f64,
    .broadcast = staged_broadcast,
    .barrier = staged_barrier,
    .split = staged_split,
    .close = staged_close,
    .abort = staged_abort,
};

static int staged_make(const qft_transport *host, qft_transport *owned, const qft_ops *ops,
                       qft_transport **out, qft_err *err) {
    qft_transport_env env;
    if (qft_transport_env_read(&env, err)) return -1;
    staged_impl *m = qft_mem_calloc(sizeof *m, "transport");
    if (!m) return qft_err_setf(err, "staged transport: out of memory (%zu bytes)", sizeof *m);
    m->pub = (qft_transport){.vt = &staged_vtable, .kind = "staged", .rank = host->rank,
                             .world = host->world, .node_rank = host->node_rank,
                             .node_size = host->node_size, .node_index = host->node_index,
                             .nodes = host->nodes, .device = QFT_TRANSPORT_DEVICE_STAGED,
                             .stats = host->stats, .impl = m, .host = host};
    m->host = host, m->owned = owned, m->ops = ops;
    m->piece = env.chunk_bytes;
    *out = &m->pub;
    return 0;
}

int qft_transport_open_staged(const qft_transport *host, const qft_ops *ops,
                              qft_transport **out, qft_err *err) {
    *out = NULL;
    if (!host || host->device != -1)
        return qft_err_setf(err, "staged transport: the transport it wraps must be a host "
                                 "transport (mpi or local)");
    if (!ops || !ops->upload || !ops->download)
        return qft_err_setf(err, "staged transport: the backend's op table has no upload and "
                                 "download");
    return staged_make(host, NULL, ops, out, err);
}
