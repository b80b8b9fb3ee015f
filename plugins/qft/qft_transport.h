/*
 * qft collective transport — what a sharding strategy plugin talks to its peer ranks with.
 *
 * The core opens one transport per run and hands the shard plugin a `const qft_transport *`.
 * Three implementations fill the same vtable:
 *   - "local": world size 1 (a run not launched under mpirun); every collective is a copy
 *     or nothing.
 *   - "mpi": one rank per process, host buffers, launched with `mpirun -np N qft ...`.
 *   - "nccl": one rank per GPU, device buffers (on `device`), its communicator bootstrapped
 *     through the MPI transport so that the same mpirun launches both.
 *   - "staged": buffers in the memory of the run's backend, which host code may not touch
 *     (the memory-guarded cpu_guard backend; a GPU without NCCL, or one shared by several
 *     ranks), moved through host memory to and from the host transport it wraps; its sums
 *     and its counters are that transport's, so sums in rank order over MPI.
 *
 * Rules every entry follows:
 *   - Collective: every rank of the transport calls the same entries in the same order
 *     with the same sizes (and the same root); otherwise the job fails or hangs until the
 *     watchdog below ends it.
 *   - Buffers are host memory when `device` is -1, the run's backend memory when it is
 *     QFT_TRANSPORT_DEVICE_STAGED, else memory of that CUDA device. A plugin's own scalars
 *     (counts, flags, a norm's partial sums) live in host memory: they go through `host`.
 *   - Sizes are size_t and may exceed INT_MAX; implementations split the work as needed.
 *   - A zero size is valid and moves nothing (the call still counts in `stats`).
 *   - On return the result is in place: the entries are synchronous.
 *   - Errors return non-zero and fill `err` with a message that starts "rank R of W (kind):"
 *     and names the operation and the failing call with its source file and line.
 *   - Watchdog: a collective that has not completed after $QFT_COLLECTIVE_TIMEOUT seconds
 *     (default 300) prints "rank R: <op> timed out after S s; a peer has probably died" to
 *     stderr and exits the process with status 3. This is the one place the library exits:
 *     a hung collective cannot be returned from. (A peer that dies normally makes mpirun
 *     end the whole job much sooner; the watchdog covers launchers that do not.)
 *
 * Deterministic sums (what the multi-rank equivalence tests rely on): on the "local" and
 * "mpi" transports a sum over ranks is computed as (((x_0 + x_1) + x_2) + ... + x_{W-1})
 * in the element type, ranks in increasing order, once per element, by the one rank that
 * owns that element; every rank receives those same bits. So a W-rank sum reproduces a
 * single process that accumulates the W parts in rank order, bit for bit, and the result
 * never depends on message sizes or MPI's algorithm choice. The "nccl" transport sums in
 * NCCL's ring/tree order (deterministic for a fixed world size and topology, but not rank
 * order).
 */
#ifndef QFT_TRANSPORT_H
#define QFT_TRANSPORT_H

#include "qft_sdk.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Reductions offered by the all_reduce entries. */
typedef enum qft_reduce_op {
    QFT_REDUCE_SUM = 0, /* in rank order, see above */
    QFT_REDUCE_MAX,
    QFT_REDUCE_MIN,
    QFT_REDUCE_COUNT
} qft_reduce_op;

/* The collectives, as indices of the counters in qft_transport_stats. */
typedef enum qft_coll {
    QFT_COLL_ALL_GATHER = 0,
    QFT_COLL_REDUCE_SCATTER,
    QFT_COLL_ALL_REDUCE,
    QFT_COLL_BROADCAST,
    QFT_COLL_BARRIER,
    QFT_COLL_COUNT
} qft_coll;

/* Per-transport counters, for the benchmark's "bytes communicated per step".
 *
 * bytes_sent is the volume this rank puts on the wire under a bandwidth-optimal algorithm
 * (the convention NCCL's tests use for "bus bandwidth"), so the MPI and NCCL transports
 * count alike whatever algorithm the library picks inside. With W = world, per call:
 *   all_gather       (W-1) * bytes_per_rank
 *   reduce_scatter   (W-1) * n * 4
 *   all_reduce       (n - c) * e + (W-1) * c * e, where e is the element size and c this
 *                    rank's share of the n elements (n/W, the first n%W ranks one more):
 *                    a reduce-scatter followed by an all-gather. It is 2(W-1)/W * n * e
 *                    when W divides n.
 *   broadcast        bytes (every rank's link carries the payload once)
 *   barrier          0
 * and everything is 0 when W = 1. A sub-transport made by `split` has its own counters;
 * the parent's do not include them. */
typedef struct qft_transport_stats {
    uint64_t calls[QFT_COLL_COUNT];
    uint64_t bytes_sent[QFT_COLL_COUNT];
    double seconds[QFT_COLL_COUNT]; /* wall time spent inside the entries */
} qft_transport_stats;

/* `device` of a transport whose buffers are the run's backend memory, staged through the
 * host ("staged"). */
#define QFT_TRANSPORT_DEVICE_STAGED (-2)

/* The color that leaves a rank out of every sub-transport made by `split`. */
#define QFT_TRANSPORT_NO_COLOR (-1)

typedef struct qft_transport qft_transport;

typedef struct qft_transport_vtable {
    /* recv (world * bytes_per_rank) receives every rank's send (bytes_per_rank) in rank
     * order: rank j's bytes at recv + j * bytes_per_rank. In place is allowed when
     * send == recv + rank * bytes_per_rank; any other overlap is not. */
    int (*all_gather)(const qft_transport *t, const void *send, void *recv,
                      size_t bytes_per_rank, qft_err *err);
    /* send (world * n floats) holds one block of n per destination rank, in rank order;
     * recv (n floats) receives the sum over ranks of their block `rank`, summed in rank
     * order. In place is allowed when recv == send + rank * n. */
    int (*reduce_scatter_f32)(const qft_transport *t, const float *send, float *recv,
                              size_t n, qft_err *err);
    /* buf (n) is replaced on every rank by the element-wise reduction over ranks. */
    int (*all_reduce_f32)(const qft_transport *t, float *buf, size_t n, qft_reduce_op op,
                          qft_err *err);
    int (*all_reduce_f64)(const qft_transport *t, double *buf, size_t n, qft_reduce_op op,
                          qft_err *err);
    /* buf (bytes) on every rank receives root's buf (bytes). */
    int (*broadcast)(const qft_transport *t, void *buf, size_t bytes, int root, qft_err *err);
    int (*barrier)(const qft_transport *t, qft_err *err);
    /* Collective over t: ranks passing the same color (>= 0) form one sub-transport, ranked
     * by (key, parent rank); *sub is NULL for a rank passing QFT_TRANSPORT_NO_COLOR. The
     * sub-transport has its own counters and watchdog, the same kind and device, node
     * fields relative to its own members, and is closed by `close` before its parent.
     * Hybrid sharding: split(t, t->node_index, t->rank) groups the ranks of one node,
     * split(t, t->node_rank, t->rank) the ranks with one local index across nodes. */
    int (*split)(const qft_transport *t, int color, int key, qft_transport **sub,
                 qft_err *err);
    /* Frees t. The transport the core opened also shuts the launcher's library down (MPI
     * finalize): collective, every rank must reach it. On a fatal error use `abort`. */
    void (*close)(qft_transport *t);
    /* Ends every rank of the job with `code` (MPI_Abort; exit on "local") after printing
     * "rank R: <why>". For a rank that cannot go on while its peers may be waiting in a
     * collective: close would wait for them forever. Does not return. */
    void (*abort)(const qft_transport *t, int code, const char *why);
} qft_transport_vtable;

struct qft_transport {
    const qft_transport_vtable *vt;
    const char *kind;   /* "local", "mpi" or "nccl" */
    int rank, world;    /* 0 <= rank < world */
    /* The ranks sharing this rank's machine (shared memory): this rank's index among them
     * and their count; and which machine this is (0 <= node_index < nodes, machines ordered
     * by their lowest rank). $QFT_TRANSPORT_NODE_SIZE=k pretends the machines hold k
     * consecutive ranks each, to test hybrid sharding on one machine. */
    int node_rank, node_size;
    int node_index, nodes;
    int device;                 /* -1: host buffers; QFT_TRANSPORT_DEVICE_STAGED; else the
                                 * CUDA device of the buffers */
    qft_transport_stats *stats; /* writable through a const transport: counting is not a
                                 * change of the transport */
    void *impl;
    /* (ABI 7) A transport over host buffers with the same ranks, for scalars that live on
     * the host whatever `device` says: the transport itself when device is -1. */
    const qft_transport *host;
};

/* Convenience wrappers, so that callers read like the operations they perform. */
static inline int qft_transport_all_gather(const qft_transport *t, const void *send, void *recv,
                                           size_t bytes_per_rank, qft_err *err) {
    return t->vt->all_gather(t, send, recv, bytes_per_rank, err);
}
static inline int qft_transport_reduce_scatter_f32(const qft_transport *t, const float *send,
                                                   float *recv, size_t n, qft_err *err) {
    return t->vt->reduce_scatter_f32(t, send, recv, n, err);
}
static inline int qft_transport_all_reduce_f32(const qft_transport *t, float *buf, size_t n,
                                               qft_reduce_op op, qft_err *err) {
    return t->vt->all_reduce_f32(t, buf, n, op, err);
}
static inline int qft_transport_all_reduce_f64(const qft_transport *t, double *buf, size_t n,
                                               qft_reduce_op op, qft_err *err) {
    return t->vt->all_reduce_f64(t, buf, n, op, err);
}
static inline int qft_transport_broadcast(const qft_transport *t, void *buf, size_t bytes,
                                          int root, qft_err *err) {
    return t->vt->broadcast(t, buf, bytes, root, err);
}
static inline int qft_transport_barrier(const qft_transport *t, qft_err *err) {
    return t->vt->barrier(t, err);
}
static inline int qft_transport_split(const qft_transport *t, int color, int key,
                                      qft_transport **sub, qft_err *err) {
    return t->vt->split(t, color, key, sub, err);
}

/* Hybrid strategies: splits t into this machine's ranks (*intra) and the ranks with this
 * local index on every machine (*inter), after checking on every rank alike that all
 * machines hold the same number of ranks (so that slices line up across machines).
 * `who` names the caller in the message. Collective. */
static inline int qft_transport_split_machines(const qft_transport *t, const char *who,
                                               qft_transport **intra, qft_transport **inter,
                                               qft_err *err) {
    double lo = t->node_size, hi = t->node_size; /* the smallest and largest machine */
    const qft_transport *h = t->host ? t->host : t; /* lo and hi are host doubles */
    if (h->vt->all_reduce_f64(h, &lo, 1, QFT_REDUCE_MIN, err) ||
        h->vt->all_reduce_f64(h, &hi, 1, QFT_REDUCE_MAX, err))
        return -1;
    if (lo != hi)
        return qft_err_setf(err, "%s: rank %d of %d: the machines hold between %.0f and %.0f "
                                 "ranks; hybrid sharding needs the same number on each "
                                 "(launch with --map-by ppr:N:node)",
                            who, t->rank, t->world, lo, hi);
    if (t->vt->split(t, t->node_index, t->rank, intra, err) ||
        t->vt->split(t, t->node_rank, t->rank, inter, err))
        return -1;
    return 0;
}

/* This rank's share of n elements split over the world in rank order: the first n % world
 * ranks hold one more. Shard plugins use it to cut flat buffers the way all_reduce does. */
static inline size_t qft_transport_share(size_t n, int world, int rank, size_t *offset) {
    size_t base = n / (size_t)world, extra = n % (size_t)world, r = (size_t)rank;
    if (offset) *offset = r * base + (r < extra ? r : extra);
    return base + (r < extra ? 1 : 0);
}

#ifdef __cplusplus
}
#endif
#endif /* QFT_TRANSPORT_H */
