/* The NCCL transport: one rank per GPU, buffers in that GPU's memory.
 *
 * The communicator is bootstrapped through a host transport (MPI under mpirun): rank 0 makes
 * NCCL's unique id and the host transport broadcasts it, so one `mpirun` launches both.
 * The communicator is non-blocking (config.blocking = 0) so that nothing, not even its
 * creation, can hang out of the watchdog's reach: every NCCL call is followed by polling
 * ncclCommGetAsyncError and then cudaStreamQuery against the deadline, and a collective
 * past $QFT_COLLECTIVE_TIMEOUT aborts the communicator and ends the process (status 3).
 *
 * Entries are synchronous (the result is in place on return) on the transport's own
 * stream. Sums follow NCCL's ring or tree order, not rank order (see qft_transport.h).
 * Every CUDA and NCCL call goes through a check that reports the call, file and line.
 *
 * Built as its own library, libqft_nccl.so, which alone links NCCL and the CUDA runtime; it
 * needs no MPI symbols (the bootstrap goes through the host transport's vtable), and the
 * core dlopens it only when NCCL is asked for (transport_loader.c, transport_plugin.h). */
#include "transport_plugin.h"

#include "qft_base.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

typedef struct nccl_impl {
    qft_transport pub;
    qft_transport_stats stats;
    qft_transport_env env;
    ncclComm_t comm;
    cudaStream_t stream;
    float *scratch;             /* (1) device float for the barrier */
    qft_transport *host;        /* host transport with the same ranks (node fields, ids) */
    int owns_host;              /* host came from a split and is closed with this one */
} nccl_impl;

static nccl_impl *impl_of(const qft_transport *t) { return (nccl_impl *)t->impl; }

static int call_name_len(const char *call) { return (int)strcspn(call, "("); }

/* In functions that have `t`, `err`, `op`, an int `rc` and a `done:` label for cleanup. */
#define CUDA_TRY(call)                                                                    \
    do {                                                                                  \
        cudaError_t cu_rc_ = (call);                                                      \
        if (cu_rc_ != cudaSuccess) {                                                      \
            rc = qft_transport_errf(t, err, "%s: %.*s failed at %s:%d: %s (%s)", op,      \
                                    call_name_len(#call), #call, __FILE__, __LINE__,      \
                                    cudaGetErrorName(cu_rc_), cudaGetErrorString(cu_rc_)); \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)

/* ncclInProgress is the normal answer of a non-blocking communicator: completion is
 * observed by nccl_wait. */
#define NCCL_TRY(comm, call)                                                              \
    do {                                                                                  \
        ncclResult_t nc_rc_ = (call);                                                     \
        if (nc_rc_ != ncclSuccess && nc_rc_ != ncclInProgress) {                          \
            rc = nccl_fail(t, err, op, #call, __FILE__, __LINE__, nc_rc_, (comm));       \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)

static int nccl_fail(const qft_transport *t, qft_err *err, const char *op, const char *call,
                     const char *file, int line, ncclResult_t r, ncclComm_t comm) {
    const char *last = comm ? ncclGetLastError(comm) : NULL;
    return qft_transport_errf(t, err, "%s: %.*s failed at %s:%d: %s%s%s", op,
                              call_name_len(call), call, file, line, ncclGetErrorString(r),
                              last && *last ? ": " : "", last ? last : "");
}

/* Waits for a communicator's pending work (creation, split, an enqueued collective) and,
 * with a stream, for the stream; past t0 + timeout, aborts comm and ends the process. */
static int nccl_wait(const qft_transport *t, ncclComm_t comm, cudaStream_t stream,
                     const char *op, double t0, double limit, qft_err *err) {
    int rc = 0;
    for (;;) {
        ncclResult_t async = ncclSuccess;
        NCCL_TRY(comm, ncclCommGetAsyncError(comm, &async));
        if (async != ncclSuccess && async != ncclInProgress) {
            rc = nccl_fail(t, err, op, "ncclCommGetAsyncError", __FILE__, __LINE__, async,
                           comm);
            goto done;
        }
        if (async == ncclSuccess) {
            if (!stream) break;
            cudaError_t q = cudaStreamQuery(stream);
            if (q == cudaSuccess) break;
            if (q != cudaErrorNotReady) CUDA_TRY(q);
            /* "not ready" is an answer, but the runtime also keeps it as this thread's last
             * error, which the CUDA backend's next launch check (one libcudart) would take
             * for its own failure */
            (void)cudaGetLastError();
        }
        double waited = qft_time_now() - t0;
        if (waited > limit) {
            ncclCommAbort(comm); /* frees the GPU's side; peers see the communicator die */
            qft_transport_timed_out(t->rank, op, limit);
        }
        qft_transport_backoff(waited);
    }
done:
    return rc;
}

static int run_wait(const qft_transport *t, const char *op, double t0, qft_err *err) {
    nccl_impl *m = impl_of(t);
    return nccl_wait(t, m->comm, m->stream, op, t0, m->env.timeout_s, err);
}

static int device_check(const qft_transport *t, const char *op, qft_err *err) {
    int rc = 0;
    CUDA_TRY(cudaSetDevice(t->device));
done:
    return rc;
}

static int nccl_all_gather(const qft_transport *t, const void *send, void *recv,
                           size_t bytes_per_rank, qft_err *err) {
    const char *op = "all_gather";
    double t0 = qft_time_now();
    int rc = 0;
    if (bytes_per_rank && (!send || !recv)) {
        return qft_transport_errf(t, err, "%s: %s is NULL", op, send ? "recv" : "send");
    }
    if (bytes_per_rank) {
        if (device_check(t, op, err)) return -1;
        /* NCCL counts are size_t: no splitting needed. In place when send is this rank's
         * block of recv, as NCCL documents. */
        NCCL_TRY(impl_of(t)->comm, ncclAllGather(send, recv, bytes_per_rank, ncclUint8,
                                                 impl_of(t)->comm, impl_of(t)->stream));
        if (run_wait(t, op, t0, err)) return -1;
    }
    qft_transport_count(t, QFT_COLL_ALL_GATHER, bytes_per_rank, 1, t0);
done:
    return rc;
}

static int nccl_reduce_scatter_f32(const qft_transport *t, const float *send, float *recv,
                                   size_t n, qft_err *err) {
    const char *op = "reduce_scatter";
    double t0 = qft_time_now();
    int rc = 0;
    if (n && (!send || !recv)) {
        return qft_transport_errf(t, err, "%s: %s is NULL", op, send ? "recv" : "send");
    }
    if (n) {
        if (device_check(t, op, err)) return -1;
        NCCL_TRY(impl_of(t)->comm, ncclReduceScatter(send, recv, n, ncclFloat32, ncclSum,
                                                     impl_of(t)->comm, impl_of(t)->stream));
        if (run_wait(t, op, t0, err)) return -1;
    }
    qft_transport_count(t, QFT_COLL_REDUCE_SCATTER, n, sizeof(float), t0);
done:
    return rc;
}

static int nccl_all_reduce(const qft_transport *t, void *buf, size_t n, size_t elt,
                           ncclDataType_t dtype, qft_reduce_op op_kind, qft_err *err) {
    const char *op = "all_reduce";
    double t0 = qft_time_now();
    int rc = 0;
    ncclRedOp_t red;
    switch (op_kind) {
    case QFT_REDUCE_SUM: red = ncclSum; break;
    case QFT_REDUCE_MAX: red = ncclMax; break;
    case QFT_REDUCE_MIN: red = ncclMin; break;
    default: return qft_transport_errf(t, err, "%s: unknown reduction %d", op, (int)op_kind);
    }
    if (n && !buf) return qft_transport_errf(t, err, "%s: buf is NULL", op);
    if (n) {
        if (device_check(t, op, err)) return -1;
        NCCL_TRY(impl_of(t)->comm, ncclAllReduce(buf, buf, n, dtype, red, impl_of(t)->comm,
                                                 impl_of(t)->stream));
        if (run_wait(t, op, t0, err)) return -1;
    }
    qft_transport_count(t, QFT_COLL_ALL_REDUCE, n, elt, t0);
done:
    return rc;
}

static int nccl_all_reduce_f32(const qft_transport *t, float *buf, size_t n, qft_reduce_op op,
                               qft_err *err) {
    return nccl_all_reduce(t, buf, n, sizeof(float), ncclFloat32, op, err);
}

static int nccl_all_reduce_f64(const qft_transport *t, double *buf, size_t n,
                               qft_reduce_op op, qft_err *err) {
    return nccl_all_reduce(t, buf, n, sizeof(double), ncclFloat64, op, err);
}

static int nccl_broadcast(const qft_transport *t, void *buf, size_t bytes, int root,
                          qft_err *err) {
    const char *op = "broadcast";
    double t0 = qft_time_now();
    int rc = 0;
    if (root < 0 || root >= t->world) {
        return qft_transport_errf(t, err, "%s: root %d is not a rank (world size %d)", op, root,
                                  t->world);
    }
    if (bytes && !buf) return qft_transport_errf(t, err, "%s: buf is NULL", op);
    if (bytes) {
        if (device_check(t, op, err)) return -1;
        NCCL_TRY(impl_of(t)->comm, ncclBroadcast(buf, buf, bytes, ncclUint8, root,
                                                 impl_of(t)->comm, impl_of(t)->stream));
        if (run_wait(t, op, t0, err)) return -1;
    }
    qft_transport_count(t, QFT_COLL_BROADCAST, bytes, 1, t0);
done:
    return rc;
}

/* NCCL has no barrier: a one-float all-reduce completes only once every rank joined it. */
static int nccl_barrier(const qft_transport *t, qft_err *err) {
    const char *op = "barrier";
    double t0 = qft_time_now();
    int rc = 0;
    if (device_check(t, op, err)) return -1;
    NCCL_TRY(impl_of(t)->comm, ncclAllReduce(impl_of(t)->scratch, impl_of(t)->scratch, 1,
                                             ncclFloat32, ncclSum, impl_of(t)->comm,
                                             impl_of(t)->stream));
    if (run_wait(t, op, t0, err)) return -1;
    qft_transport_count(t, QFT_COLL_BARRIER, 0, 0, t0);
done:
    return rc;
}

static const qft_transport_vtable nccl_vtable;

/* Stream and scratch for a communicator that is ready; on failure frees what it made
 * (the caller destroys comm). */
static int nccl_make(const qft_transport *host, int owns_host, int device, ncclComm_t comm,
                     const qft_transport_env *env, qft_transport **out, qft_err *err) {
    const char *op = "open";
    int rc = 0;
    nccl_impl *m = qft_mem_calloc(sizeof *m, "transport");
    if (!m) return qft_err_setf(err, "nccl transport: out of memory (%zu bytes)", sizeof *m);
    m->pub = (qft_transport){.vt = &nccl_vtable, .kind = "nccl", .rank = host->rank,
                             .world = host->world, .node_rank = host->node_rank,
                             .node_size = host->node_size, .node_index = host->node_index,
                             .nodes = host->nodes, .device = device, .stats = &m->stats,
                             .impl = m, .host = host};
    m->env = *env;
    m->comm = comm;
    m->host = (qft_transport *)host;
    m->owns_host = owns_host;
    qft_transport *t = &m->pub;
    int nr = 0, nw = 0;
    NCCL_TRY(comm, ncclCommUserRank(comm, &nr));
    NCCL_TRY(comm, ncclCommCount(comm, &nw));
    if (nr != host->rank || nw != host->world) {
        rc = qft_transport_errf(t, err, "%s: NCCL made rank %d of %d, the host transport rank "
                                        "%d of %d", op, nr, nw, host->rank, host->world);
        goto done;
    }
    CUDA_TRY(cudaSetDevice(device));
    /* a blocking stream: its collectives start only after the work queued before them on
     * the legacy default stream, where the CUDA backend's kernels run (and that stream's
     * later work waits for them), so a buffer a kernel is still writing is never sent */
    CUDA_TRY(cudaStreamCreateWithFlags(&m->stream, cudaStreamDefault));
    CUDA_TRY(cudaMalloc((void **)&m->scratch, sizeof(float)));
    CUDA_TRY(cudaMemsetAsync(m->scratch, 0, sizeof(float), m->stream));
    CUDA_TRY(cudaStreamSynchronize(m->stream));
done:
    if (rc) {
        if (m->scratch) cudaFree(m->scratch);
        if (m->stream) cudaStreamDestroy(m->stream);
        qft_mem_free(m);
        return rc;
    }
    *out = t;
    return 0;
}

static void nccl_close(qft_transport *t);

static int nccl_split(const qft_transport *t, int color, int key, qft_transport **sub,
                      qft_err *err) {
    const char *op = "split";
    int rc = 0;
    nccl_impl *m = impl_of(t);
    qft_transport *host_sub = NULL;
    ncclComm_t comm = NULL;
    *sub = NULL;
    if (color < 0 && color != QFT_TRANSPORT_NO_COLOR) {
        return qft_transport_errf(t, err, "%s: color %d is negative (use "
                                          "QFT_TRANSPORT_NO_COLOR to stay out)", op, color);
    }
    /* The same split of the host transport gives the members' node fields. */
    if (m->host->vt->split(m->host, color, key, &host_sub, err)) return -1;
    if (device_check(t, op, err)) {
        rc = -1;
        goto done;
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    double t0 = qft_time_now();
    NCCL_TRY(m->comm, ncclCommSplit(m->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &comm,
                                    &config));
    /* The parent carries the split's progress until the child exists. */
    if (nccl_wait(t, m->comm, NULL, op, t0, m->env.timeout_s, err)) {
        rc = -1;
        goto done;
    }
    if (!comm) goto done; /* NCCL_SPLIT_NOCOLOR */
    if (nccl_wait(t, comm, NULL, op, t0, m->env.timeout_s, err)) {
        rc = -1;
        goto done;
    }
    rc = nccl_make(host_sub, 1, t->device, comm, &m->env, sub, err);
    if (rc == 0) {
        host_sub = NULL;
        comm = NULL;
    }
done:
    if (comm) ncclCommDestroy(comm);
    if (host_sub) host_sub->vt->close(host_sub);
    return rc;
}

static void nccl_close(qft_transport *t) {
    if (!t) return;
    nccl_impl *m = impl_of(t);
    cudaSetDevice(t->device);
    /* Finalize flushes the communicator's pending work before it is destroyed; a failure
     * here leaves nothing to do but free what we can. */
    ncclResult_t fin = ncclCommFinalize(m->comm);
    if (fin == ncclSuccess || fin == ncclInProgress) {
        qft_err ignored = {0};
        nccl_wait(t, m->comm, NULL, "close", qft_time_now(), m->env.timeout_s, &ignored);
    }
    ncclCommDestroy(m->comm);
    if (m->scratch) cudaFree(m->scratch);
    if (m->stream) cudaStreamDestroy(m->stream);
    if (m->owns_host) m->host->vt->close(m->host);
    qft_mem_free(m);
}

static void nccl_abort(const qft_transport *t, int code, const char *why) {
    ncclCommAbort(impl_of(t)->comm);
    impl_of(t)->host->vt->abort(impl_of(t)->host, code, why);
    exit(code);
}

static const qft_transport_vtable nccl_vtable = {
    .all_gather = nccl_all_gather,
    .reduce_scatter_f32 = nccl_reduce_scatter_f32,
    .all_reduce_f32 = nccl_all_reduce_f32,
    .all_reduce_f64 = nccl_all_reduce_f64,
    .broadcast = nccl_broadcast,
    .barrier = nccl_barrier,
    .split = nccl_split,
    .close = nccl_close,
    .abort = nccl_abort,
};

static int nccl_open(const qft_transport *boot, int device, qft_transport **out,
                     qft_err *err) {
    *out = NULL;
    if (!boot || boot->device != -1) {
        return qft_err_setf(err, "nccl transport: the bootstrap transport must be a host "
                                 "transport (mpi or local)");
    }
    qft_transport_env env;
    if (qft_transport_env_read(&env, err)) return -1;
    /* Messages before the communicator exists name the host rank. */
    qft_transport pre = {.kind = "nccl", .rank = boot->rank, .world = boot->world,
                         .device = device};
    const qft_transport *t = &pre;
    const char *op = "open";
    int rc = 0, count = 0;
    ncclComm_t comm = NULL;
    CUDA_TRY(cudaGetDeviceCount(&count));
    if (count <= 0) return qft_transport_errf(t, err, "%s: no CUDA device is visible", op);
    if (device < 0) device = boot->node_rank % count;
    if (device >= count) {
        return qft_transport_errf(t, err, "%s: device %d asked for, but %d are visible", op,
                                  device, count);
    }
    pre.device = device;
    CUDA_TRY(cudaSetDevice(device));
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (boot->rank == 0) NCCL_TRY(NULL, ncclGetUniqueId(&id));
    if (boot->vt->broadcast(boot, &id, sizeof id, 0, err)) return -1;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    double t0 = qft_time_now();
    NCCL_TRY(comm, ncclCommInitRankConfig(&comm, boot->world, id, boot->rank, &config));
    if (nccl_wait(t, comm, NULL, op, t0, env.timeout_s, err)) {
        rc = -1;
        goto done;
    }
    rc = nccl_make(boot, 0, device, comm, &env, out, err);
    if (rc == 0) comm = NULL;
done:
    if (comm) ncclCommDestroy(comm);
    return rc;
}

/* The one symbol libqft_nccl.so exports (libqft_nccl.map); transport_loader.c calls it. */
int qft_transport_nccl_entry(const qft_transport_host *host, qft_transport_open_nccl_fn *open,
                             qft_err *err) {
    *open = NULL;
    if (qft_transport_shim_bind(host, "libqft_nccl.so", err)) return -1;
    *open = nccl_open;
    return 0;
}
