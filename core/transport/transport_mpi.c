/* The MPI transport: one rank per process, host buffers.
 *
 * Every collective is MPI's non-blocking variant polled with MPI_Test against a deadline,
 * so a rank whose peer died ends with a message (the watchdog) instead of hanging; errors
 * come back as return codes (MPI_ERRORS_RETURN) and become qft_err messages naming the
 * rank, the operation and the MPI call with its source line.
 *
 * Sums are computed in rank order by the rank that owns each element (see qft_transport.h):
 * reduce_scatter is an all-to-all of the blocks followed by a local sum of the W received
 * blocks in source-rank order; all_reduce is that reduce-scatter over W near-equal shares
 * followed by an all-gather of the reduced shares. That moves the same bytes per rank as a
 * ring, and the bits do not depend on MPI's algorithm choice, which for MPI's own reductions
 * changes with message size and world size.
 *
 * Counts in MPI calls are ints, so every call moves at most chunk_bytes per block
 * (QFT_TRANSPORT_CHUNK_BYTES, <= INT_MAX); strided blocks use a resized datatype, so large
 * buffers are split without copies.
 *
 * Built as its own library, libqft_mpi.so, which alone links MPI; the core dlopens it only
 * when launched by mpirun (transport_loader.c, transport_plugin.h). */
#include "transport_plugin.h"

#include "qft_base.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

typedef struct mpi_impl {
    qft_transport pub;
    qft_transport_stats stats;
    qft_transport_env env;
    MPI_Comm comm;
    int owns_mpi; /* this transport initialised MPI and finalizes it in close */
    int node_id;  /* this process's machine: its lowest world rank, or rank / fake size */
} mpi_impl;

static mpi_impl *impl_of(const qft_transport *t) { return (mpi_impl *)t->impl; }

/* Names the failing MPI function (the text of the call up to its parenthesis). */
static int mpi_fail(const qft_transport *t, qft_err *err, const char *op, const char *call,
                    const char *file, int line, int rc) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
    int fn_len = (int)strcspn(call, "(");
    return qft_transport_errf(t, err, "%s: %.*s failed at %s:%d: %s", op, fn_len, call, file,
                              line, msg);
}

/* In functions that have `t`, `err`, `op`, an int `rc` and a `done:` label for cleanup. */
#define MPI_TRY(call)                                                                     \
    do {                                                                                  \
        int mpi_rc_ = (call);                                                             \
        if (mpi_rc_ != MPI_SUCCESS) {                                                     \
            rc = mpi_fail(t, err, op, #call, __FILE__, __LINE__, mpi_rc_);                \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)

/* Polls req until it completes; past t0 + timeout the watchdog ends the process. */
static int mpi_wait(const qft_transport *t, MPI_Request *req, const char *op, double t0,
                    qft_err *err) {
    int rc = 0, flag = 0;
    double limit = impl_of(t)->env.timeout_s;
    for (;;) {
        MPI_TRY(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
        if (flag) break;
        double waited = qft_time_now() - t0;
        if (waited > limit) qft_transport_timed_out(t->rank, op, limit);
        qft_transport_backoff(waited);
    }
done:
    return rc;
}

/* A block of `len` elements of `base` followed by a gap up to `stride` elements: one block of
 * a rank-ordered buffer when a call moves only part of each block. */
static int strided_type(const qft_transport *t, MPI_Datatype base, size_t elt, size_t len,
                        size_t stride, MPI_Datatype *out, const char *op, qft_err *err) {
    int rc = 0;
    MPI_Datatype blk = MPI_DATATYPE_NULL;
    *out = MPI_DATATYPE_NULL;
    MPI_TRY(MPI_Type_contiguous((int)len, base, &blk));
    MPI_TRY(MPI_Type_create_resized(blk, 0, (MPI_Aint)(stride * elt), out));
    MPI_TRY(MPI_Type_commit(out));
done:
    if (blk != MPI_DATATYPE_NULL) MPI_Type_free(&blk);
    if (rc && *out != MPI_DATATYPE_NULL) MPI_Type_free(out);
    return rc;
}

static int mpi_all_gather(const qft_transport *t, const void *send, void *recv,
                          size_t bytes_per_rank, qft_err *err) {
    const char *op = "all_gather";
    double t0 = qft_time_now();
    int rc = 0;
    MPI_Datatype strided = MPI_DATATYPE_NULL;
    size_t total = (size_t)t->world * bytes_per_rank; // (W * bytes_per_rank)
    const char *mine = (const char *)recv + (size_t)t->rank * bytes_per_rank;
    int in_place = send == (const void *)mine;
    if (bytes_per_rank && (!send || !recv)) {
        return qft_transport_errf(t, err, "%s: %s is NULL", op, send ? "recv" : "send");
    }
    if (!in_place && qft_transport_overlap(send, bytes_per_rank, recv, total)) {
        return qft_transport_errf(t, err, "%s: send overlaps recv but is not this rank's "
                                          "block of it", op);
    }
    size_t chunk = impl_of(t)->env.chunk_bytes;
    for (size_t o = 0; o < bytes_per_rank;) {
        size_t len = bytes_per_rank - o < chunk ? bytes_per_rank - o : chunk;
        MPI_Request req;
        MPI_Datatype rtype = MPI_BYTE;
        int rcount = (int)len;
        if (len < bytes_per_rank) { /* a piece of each rank's block: stride over the rest */
            if (strided_type(t, MPI_BYTE, 1, len, bytes_per_rank, &strided, op, err)) return -1;
            rtype = strided;
            rcount = 1;
        }
        MPI_TRY(MPI_Iallgather(in_place ? MPI_IN_PLACE : (const char *)send + o, (int)len,
                               MPI_BYTE, (char *)recv + o, rcount, rtype, impl_of(t)->comm,
                               &req));
        if (mpi_wait(t, &req, op, t0, err)) {
            rc = -1;
            goto done;
        }
        if (strided != MPI_DATATYPE_NULL) MPI_Type_free(&strided);
        o += len;
    }
    qft_transport_count(t, QFT_COLL_ALL_GATHER, bytes_per_rank, 1, t0);
done:
    if (strided != MPI_DATATYPE_NULL) MPI_Type_free(&strided);
    return rc;
}

/* dst[i] = src[0][i] (op) src[1][i] (op) ... in source-rank order, left to right. */
static void combine_f32(float *dst, const float *src, size_t len, int world, qft_reduce_op op) {
    memmove(dst, src, len * sizeof(float)); // (len); dst may be src's own block
    for (int r = 1; r < world; r++) {
        const float *s = src + (size_t)r * len; // (len)
        if (op == QFT_REDUCE_SUM) {
            for (size_t i = 0; i < len; i++) dst[i] += s[i];
        } else if (op == QFT_REDUCE_MAX) {
            for (size_t i = 0; i < len; i++) dst[i] = s[i] > dst[i] ? s[i] : dst[i];
        } else {
            for (size_t i = 0; i < len; i++) dst[i] = s[i] < dst[i] ? s[i] : dst[i];
        }
    }
}

static void combine_f64(double *dst, const double *src, size_t len, int world,
                        qft_reduce_op op) {
    memmove(dst, src, len * sizeof(double)); // (len)
    for (int r = 1; r < world; r++) {
        const double *s = src + (size_t)r * len; // (len)
        if (op == QFT_REDUCE_SUM) {
            for (size_t i = 0; i < len; i++) dst[i] += s[i];
        } else if (op == QFT_REDUCE_MAX) {
            for (size_t i = 0; i < len; i++) dst[i] = s[i] > dst[i] ? s[i] : dst[i];
        } else {
            for (size_t i = 0; i < len; i++) dst[i] = s[i] < dst[i] ? s[i] : dst[i];
        }
    }
}

static int mpi_reduce_scatter_f32(const qft_transport *t, const float *send, float *recv,
                                  size_t n, qft_err *err) {
    const char *op = "reduce_scatter";
    double t0 = qft_time_now();
    int rc = 0;
    int W = t->world;
    float *tmp = NULL;
    MPI_Datatype strided = MPI_DATATYPE_NULL;
    const float *mine = send + (size_t)t->rank * n; // (n)
    if (n && (!send || !recv)) {
        return qft_transport_errf(t, err, "%s: %s is NULL", op, send ? "recv" : "send");
    }
    if (recv != mine && qft_transport_overlap(send, (size_t)W * n * sizeof(float), recv,
                                              n * sizeof(float))) {
        return qft_transport_errf(t, err, "%s: recv overlaps send but is not this rank's "
                                          "block of it", op);
    }
    if (n == 0) goto count;
    size_t chunk = impl_of(t)->env.chunk_bytes / sizeof(float);
    if (chunk == 0) chunk = 1;
    size_t piece = n < chunk ? n : chunk;
    tmp = qft_mem_alloc((size_t)W * piece * sizeof(float), "transport"); // (W, piece)
    if (!tmp) {
        return qft_transport_errf(t, err, "%s: out of memory for %zu bytes of scratch", op,
                                  (size_t)W * piece * sizeof(float));
    }
    for (size_t o = 0; o < n;) {
        size_t len = n - o < piece ? n - o : piece;
        MPI_Request req;
        MPI_Datatype stype = MPI_FLOAT;
        int scount = (int)len;
        if (len < n) {
            if (strided_type(t, MPI_FLOAT, sizeof(float), len, n, &strided, op, err)) {
                rc = -1;
                goto done;
            }
            stype = strided;
            scount = 1;
        }
        /* Block j of every rank's piece lands at rank j, in source-rank order in tmp. */
        MPI_TRY(MPI_Ialltoall(send + o, scount, stype, tmp, (int)len, MPI_FLOAT,
                              impl_of(t)->comm, &req));
        if (mpi_wait(t, &req, op, t0, err)) {
            rc = -1;
            goto done;
        }
        combine_f32(recv + o, tmp, len, W, QFT_REDUCE_SUM);
        if (strided != MPI_DATATYPE_NULL) MPI_Type_free(&strided);
        o += len;
    }
count:
    qft_transport_count(t, QFT_COLL_REDUCE_SCATTER, n, sizeof(float), t0);
done:
    if (strided != MPI_DATATYPE_NULL) MPI_Type_free(&strided);
    qft_mem_free(tmp);
    return rc;
}

static int mpi_all_reduce(const qft_transport *t, void *buf, size_t n, size_t elt,
                          MPI_Datatype dtype, qft_reduce_op op_kind, qft_err *err) {
    const char *op = "all_reduce";
    double t0 = qft_time_now();
    int rc = 0;
    int W = t->world, R = t->rank;
    int *counts = NULL; // (4, W): send counts, send displacements, recv counts, recv displs
    void *tmp = NULL;
    if (n && !buf) return qft_transport_errf(t, err, "%s: buf is NULL", op);
    if ((int)op_kind < 0 || op_kind >= QFT_REDUCE_COUNT) {
        return qft_transport_errf(t, err, "%s: unknown reduction %d", op, (int)op_kind);
    }
    if (n == 0) goto count;
    /* Segments of at most `chunk` elements, each cut into W shares (so every count and
     * displacement below is at most chunk <= INT_MAX). */
    size_t chunk = impl_of(t)->env.chunk_bytes / elt;
    if (chunk == 0) chunk = 1;
    size_t seg_max = n < chunk ? n : chunk;
    size_t share_max = qft_transport_share(seg_max, W, 0, NULL);
    counts = malloc(4 * (size_t)W * sizeof(int)); // (4, W)
    tmp = qft_mem_alloc((size_t)W * share_max * elt, "transport"); // (W, share_max)
    if (!counts || !tmp) {
        rc = qft_transport_errf(t, err, "%s: out of memory for %zu bytes of scratch", op,
                                (size_t)W * share_max * elt);
        goto done;
    }
    int *scnt = counts, *sdsp = counts + W, *rcnt = counts + 2 * W, *rdsp = counts + 3 * W;
    for (size_t s = 0; s < n;) {
        size_t seg = n - s < seg_max ? n - s : seg_max;
        char *base = (char *)buf + s * elt; // (seg)
        size_t my_off;
        size_t my_len = qft_transport_share(seg, W, R, &my_off);
        for (int j = 0; j < W; j++) {
            size_t off, len = qft_transport_share(seg, W, j, &off);
            scnt[j] = (int)len;
            sdsp[j] = (int)off;
            rcnt[j] = (int)my_len;
            rdsp[j] = (int)((size_t)j * my_len);
        }
        MPI_Request req;
        MPI_TRY(MPI_Ialltoallv(base, scnt, sdsp, dtype, tmp, rcnt, rdsp, dtype,
                               impl_of(t)->comm, &req));
        if (mpi_wait(t, &req, op, t0, err)) {
            rc = -1;
            goto done;
        }
        char *mine = base + my_off * elt; // (my_len)
        if (elt == sizeof(float)) {
            combine_f32((float *)mine, tmp, my_len, W, op_kind);
        } else {
            combine_f64((double *)mine, tmp, my_len, W, op_kind);
        }
        /* Every rank's reduced share back to every rank, in place in buf. */
        MPI_TRY(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, scnt, sdsp, dtype,
                                impl_of(t)->comm, &req));
        if (mpi_wait(t, &req, op, t0, err)) {
            rc = -1;
            goto done;
        }
        s += seg;
    }
count:
    qft_transport_count(t, QFT_COLL_ALL_REDUCE, n, elt, t0);
done:
    free(counts);
    qft_mem_free(tmp);
    return rc;
}

static int mpi_all_reduce_f32(const qft_transport *t, float *buf, size_t n, qft_reduce_op op,
                              qft_err *err) {
    return mpi_all_reduce(t, buf, n, sizeof(float), MPI_FLOAT, op, err);
}

static int mpi_all_reduce_f64(const qft_transport *t, double *buf, size_t n, qft_reduce_op op,
                              qft_err *err) {
    return mpi_all_reduce(t, buf, n, sizeof(double), MPI_DOUBLE, op, err);
}

static int mpi_broadcast(const qft_transport *t, void *buf, size_t bytes, int root,
                         qft_err *err) {
    const char *op = "broadcast";
    double t0 = qft_time_now();
    int rc = 0;
    if (root < 0 || root >= t->world) {
        return qft_transport_errf(t, err, "%s: root %d is not a rank (world size %d)", op, root,
                                  t->world);
    }
    if (bytes && !buf) return qft_transport_errf(t, err, "%s: buf is NULL", op);
    size_t chunk = impl_of(t)->env.chunk_bytes;
    for (size_t o = 0; o < bytes;) {
        size_t len = bytes - o < chunk ? bytes - o : chunk;
        MPI_Request req;
        MPI_TRY(MPI_Ibcast((char *)buf + o, (int)len, MPI_BYTE, root, impl_of(t)->comm, &req));
        if (mpi_wait(t, &req, op, t0, err)) return -1;
        o += len;
    }
    qft_transport_count(t, QFT_COLL_BROADCAST, bytes, 1, t0);
done:
    return rc;
}

static int barrier_uncounted(const qft_transport *t, const char *op, double t0, qft_err *err) {
    int rc = 0;
    MPI_Request req;
    MPI_TRY(MPI_Ibarrier(impl_of(t)->comm, &req));
    rc = mpi_wait(t, &req, op, t0, err);
done:
    return rc;
}

static int mpi_barrier(const qft_transport *t, qft_err *err) {
    double t0 = qft_time_now();
    if (barrier_uncounted(t, "barrier", t0, err)) return -1;
    qft_transport_count(t, QFT_COLL_BARRIER, 0, 0, t0);
    return 0;
}

static const qft_transport_vtable mpi_vtable;

/* Takes ownership of comm (freed on failure); fills rank, world and the node fields from
 * every member's machine id, exchanged under the watchdog. */
static int mpi_make(MPI_Comm comm, int node_id, const qft_transport_env *env, int owns_mpi,
                    qft_transport **out, qft_err *err) {
    const char *op = "open";
    int rc = 0;
    int *ids = NULL;
    mpi_impl *m = qft_mem_calloc(sizeof *m, "transport");
    if (!m) {
        MPI_Comm_free(&comm);
        return qft_err_setf(err, "mpi transport: out of memory (%zu bytes)", sizeof *m);
    }
    m->pub = (qft_transport){.vt = &mpi_vtable, .kind = "mpi", .device = -1,
                             .stats = &m->stats, .impl = m};
    m->pub.host = &m->pub;
    m->env = *env;
    m->comm = comm;
    m->owns_mpi = owns_mpi;
    m->node_id = node_id;
    qft_transport *t = &m->pub;
    MPI_TRY(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    MPI_TRY(MPI_Comm_rank(comm, &t->rank));
    MPI_TRY(MPI_Comm_size(comm, &t->world));
    ids = malloc((size_t)t->world * sizeof(int)); // (W)
    if (!ids) {
        rc = qft_transport_errf(t, err, "%s: out of memory", op);
        goto done;
    }
    MPI_Request req;
    MPI_TRY(MPI_Iallgather(&node_id, 1, MPI_INT, ids, 1, MPI_INT, comm, &req));
    if (mpi_wait(t, &req, "open (exchanging machine ids)", qft_time_now(), err)) {
        rc = -1;
        goto done;
    }
    qft_transport_node_fields(ids, t->world, t->rank, &t->node_rank, &t->node_size,
                              &t->node_index, &t->nodes);
done:
    free(ids);
    if (rc) {
        MPI_Comm_free(&m->comm);
        qft_mem_free(m);
        return rc;
    }
    *out = t;
    return 0;
}

static int mpi_split(const qft_transport *t, int color, int key, qft_transport **sub,
                     qft_err *err) {
    const char *op = "split";
    int rc = 0;
    *sub = NULL;
    if (color < 0 && color != QFT_TRANSPORT_NO_COLOR) {
        return qft_transport_errf(t, err, "%s: color %d is negative (use "
                                          "QFT_TRANSPORT_NO_COLOR to stay out)", op, color);
    }
    /* MPI has no non-blocking split: a watched barrier first, so that a peer dead before the
     * split ends this rank by the watchdog rather than inside MPI_Comm_split. */
    if (barrier_uncounted(t, op, qft_time_now(), err)) return -1;
    MPI_Comm comm = MPI_COMM_NULL;
    MPI_TRY(MPI_Comm_split(impl_of(t)->comm, color < 0 ? MPI_UNDEFINED : color, key, &comm));
    if (comm == MPI_COMM_NULL) return 0;
    rc = mpi_make(comm, impl_of(t)->node_id, &impl_of(t)->env, 0, sub, err);
done:
    return rc;
}

static void mpi_close(qft_transport *t) {
    if (!t) return;
    mpi_impl *m = impl_of(t);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        MPI_Comm_free(&m->comm);
        if (m->owns_mpi) MPI_Finalize();
    }
    qft_mem_free(m);
}

static void mpi_abort(const qft_transport *t, int code, const char *why) {
    fprintf(stderr, "rank %d: %s\n", t->rank, why ? why : "aborting");
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(impl_of(t)->comm, code);
    exit(code); /* MPI_Abort does not return; this keeps the promise if it did */
}

static const qft_transport_vtable mpi_vtable = {
    .all_gather = mpi_all_gather,
    .reduce_scatter_f32 = mpi_reduce_scatter_f32,
    .all_reduce_f32 = mpi_all_reduce_f32,
    .all_reduce_f64 = mpi_all_reduce_f64,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .split = mpi_split,
    .close = mpi_close,
    .abort = mpi_abort,
};

static int mpi_open(qft_transport **out, qft_err *err) {
    *out = NULL;
    qft_transport_env env;
    if (qft_transport_env_read(&env, err)) return -1;
    int inited = 0, finalized = 0, owns = 0, rc = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) return qft_err_setf(err, "mpi transport: MPI was already finalized");
    if (!inited) {
        /* OpenMP threads never call MPI: only the main thread does. */
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            return qft_err_setf(err, "mpi transport: MPI_Init_thread failed");
        }
        owns = 1;
    }
    /* An error in MPI_COMM_WORLD itself (the launcher's) must come back to us too. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    /* A transport of our own: the placeholder names the rank before we know it. */
    qft_transport boot = {.kind = "mpi", .rank = -1, .world = -1};
    qft_transport *t = &boot;
    const char *op = "open";
    MPI_Comm comm = MPI_COMM_NULL, node = MPI_COMM_NULL;
    MPI_TRY(MPI_Comm_rank(MPI_COMM_WORLD, &boot.rank));
    MPI_TRY(MPI_Comm_size(MPI_COMM_WORLD, &boot.world));
    MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    int node_id;
    if (env.node_size > 0) {
        node_id = boot.rank / env.node_size;
    } else {
        /* A machine is named by its lowest world rank: rank 0 of the shared-memory
         * communicator, whose ranks follow the world's (key = world rank). */
        MPI_TRY(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, boot.rank, MPI_INFO_NULL,
                                    &node));
        node_id = boot.rank;
        MPI_TRY(MPI_Bcast(&node_id, 1, MPI_INT, 0, node));
    }
    rc = mpi_make(comm, node_id, &env, owns, out, err);
    comm = MPI_COMM_NULL; /* mpi_make owns it now */
done:
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    return rc;
}

/* The one symbol libqft_mpi.so exports (libqft_mpi.map); transport_loader.c calls it. */
int qft_transport_mpi_entry(const qft_transport_host *host, qft_transport_open_mpi_fn *open,
                            qft_err *err) {
    *open = NULL;
    if (qft_transport_shim_bind(host, "libqft_mpi.so", err)) return -1;
    *open = mpi_open;
    return 0;
}
