/* Choosing and opening a transport, and what the implementations share. */
#include "transport_internal.h"

#include "qft_base.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int qft_transport_has_mpi(void) {
#ifdef QFT_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int qft_transport_has_nccl(void) {
#ifdef QFT_HAVE_NCCL
    return 1;
#else
    return 0;
#endif
}

int qft_transport_launched(int *world) {
    /* Open MPI's mpirun, MPICH's Hydra and PMIx launchers (srun, prterun) respectively. */
    static const char *const size_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    static const char *const rank_vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"};
    int found = 0, w = 1;
    for (size_t i = 0; i < sizeof size_vars / sizeof size_vars[0]; i++) {
        const char *s = getenv(size_vars[i]);
        if (s && *s) {
            found = 1;
            long v = strtol(s, NULL, 10);
            if (v > 0 && v <= INT_MAX) w = (int)v;
            break;
        }
        if (getenv(rank_vars[i])) found = 1;
    }
    if (world) *world = w;
    return found;
}

int qft_transport_open(const char *kind, qft_transport **out, qft_err *err) {
    *out = NULL;
    if (!kind || !strcmp(kind, "auto")) {
        int world = 1;
        if (!qft_transport_launched(&world)) return qft_transport_open_local(out, err);
        if (!qft_transport_has_mpi()) {
            if (world == 1) return qft_transport_open_local(out, err);
            return qft_err_setf(err,
                                "launched by an MPI launcher with %d ranks, but this qft was "
                                "built without MPI (install Open MPI, e.g. Debian's "
                                "libopenmpi-dev, and rerun meson setup)",
                                world);
        }
        return qft_transport_open_mpi(out, err);
    }
    if (!strcmp(kind, "local")) return qft_transport_open_local(out, err);
    if (!strcmp(kind, "mpi")) return qft_transport_open_mpi(out, err);
    return qft_err_setf(err, "unknown transport \"%s\" (expected auto, local or mpi)", kind);
}

int qft_transport_check_world(const qft_transport *t, int saved_world, qft_err *err) {
    if (saved_world == t->world) return 0;
    return qft_transport_errf(t, err,
                              "this run was saved with world size %d but is launched with %d; "
                              "relaunch with `mpirun -np %d ...` to resume it, or start a "
                              "fresh run in another output directory",
                              saved_world, t->world, saved_world);
}

const char *qft_transport_coll_name(qft_coll c) {
    static const char *const names[QFT_COLL_COUNT] = {"all_gather", "reduce_scatter",
                                                      "all_reduce", "broadcast", "barrier"};
    return (int)c >= 0 && c < QFT_COLL_COUNT ? names[c] : "unknown collective";
}

void qft_transport_stats_add(qft_transport_stats *dst, const qft_transport_stats *src) {
    for (int c = 0; c < QFT_COLL_COUNT; c++) {
        dst->calls[c] += src->calls[c];
        dst->bytes_sent[c] += src->bytes_sent[c];
        dst->seconds[c] += src->seconds[c];
    }
}

/* ---- shared by the implementations --------------------------------------------------- */

static int env_double(const char *name, double dflt, double *out, qft_err *err) {
    const char *s = getenv(name);
    *out = dflt;
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v > 0)) {
        return qft_err_setf(err, "%s=\"%s\": expected a number of seconds > 0", name, s);
    }
    *out = v;
    return 0;
}

static int env_size(const char *name, size_t dflt, size_t max, size_t *out, qft_err *err) {
    const char *s = getenv(name);
    *out = dflt;
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0 || v > max || s[0] == '-') {
        return qft_err_setf(err, "%s=\"%s\": expected an integer from 1 to %zu", name, s, max);
    }
    *out = (size_t)v;
    return 0;
}

int qft_transport_env_read(qft_transport_env *env, qft_err *err) {
    size_t node_size = 0;
    if (env_double("QFT_COLLECTIVE_TIMEOUT", QFT_TRANSPORT_DEFAULT_TIMEOUT_S, &env->timeout_s,
                   err) ||
        env_size("QFT_TRANSPORT_CHUNK_BYTES", QFT_TRANSPORT_DEFAULT_CHUNK_BYTES, INT_MAX,
                 &env->chunk_bytes, err) ||
        env_size("QFT_TRANSPORT_NODE_SIZE", 0, INT_MAX, &node_size, err)) {
        return -1;
    }
    env->node_size = (int)node_size;
    return 0;
}

int qft_transport_errf(const qft_transport *t, qft_err *err, const char *fmt, ...) {
    if (!err) return -1;
    int n = snprintf(err->msg, sizeof err->msg, "rank %d of %d (%s): ", t->rank, t->world,
                     t->kind);
    if (n < 0 || (size_t)n >= sizeof err->msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg + n, sizeof err->msg - (size_t)n, fmt, ap);
    va_end(ap);
    err->code = -1;
    return -1;
}

_Noreturn void qft_transport_timed_out(int rank, const char *op, double seconds) {
    fprintf(stderr, "rank %d: %s timed out after %g s; a peer has probably died\n", rank, op,
            seconds);
    fflush(stdout);
    fflush(stderr);
    exit(3);
}

void qft_transport_backoff(double waited_s) {
    if (waited_s < 2e-4) return;
    if (waited_s < 2e-2) {
        sched_yield();
        return;
    }
    /* A hundredth of the time waited so far, at most 1 ms: a slow peer costs little extra
     * latency, an idle rank little CPU. */
    double s = waited_s * 0.01;
    if (s > 1e-3) s = 1e-3;
    struct timespec ts = {0, (long)(s * 1e9)};
    nanosleep(&ts, NULL);
}

/* Every transport of the process together, sub-transports included (a shard plugin's
 * own splits are invisible to the core otherwise). One thread drives the collectives. */
static uint64_t g_process_bytes;

uint64_t qft_transport_process_bytes(void) { return g_process_bytes; }

void qft_transport_count(const qft_transport *t, qft_coll c, size_t n, size_t elt, double t0) {
    qft_transport_stats *st = t->stats;
    uint64_t w = (uint64_t)t->world, bytes = 0;
    if (w > 1) {
        switch (c) {
        case QFT_COLL_ALL_GATHER:
        case QFT_COLL_REDUCE_SCATTER: bytes = (w - 1) * n * elt; break;
        case QFT_COLL_ALL_REDUCE: {
            uint64_t mine = qft_transport_share(n, t->world, t->rank, NULL); // (c)
            bytes = ((uint64_t)n - mine) * elt + (w - 1) * mine * elt;
            break;
        }
        case QFT_COLL_BROADCAST: bytes = (uint64_t)n * elt; break;
        default: break;
        }
    }
    st->calls[c]++;
    st->bytes_sent[c] += bytes;
    g_process_bytes += bytes;
    st->seconds[c] += qft_time_now() - t0;
}

void qft_transport_node_fields(const int *ids, int world, int rank, int *node_rank,
                               int *node_size, int *node_index, int *nodes) {
    int nr = 0, ns = 0, ni = 0, nn = 0;
    for (int j = 0; j < world; j++) {
        int first = 1; /* is j the lowest rank of its machine? */
        for (int i = 0; i < j && first; i++) first = ids[i] != ids[j];
        if (first) {
            if (ids[j] == ids[rank]) ni = nn;
            nn++;
        }
        if (ids[j] == ids[rank]) {
            if (j < rank) nr++;
            ns++;
        }
    }
    *node_rank = nr;
    *node_size = ns;
    *node_index = ni;
    *nodes = nn;
}

int qft_transport_overlap(const void *a, size_t an, const void *b, size_t bn) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return an && bn && pa < pb + bn && pb < pa + an;
}

/* ---- what a build without MPI or NCCL answers -------------------------------------------- */

#ifndef QFT_HAVE_MPI
int qft_transport_open_mpi(qft_transport **out, qft_err *err) {
    *out = NULL;
    return qft_err_setf(err, "this qft was built without MPI, so it cannot run with several "
                             "ranks (install Open MPI, e.g. Debian's libopenmpi-dev, and rerun "
                             "meson setup)");
}
#endif

#ifndef QFT_HAVE_NCCL
int qft_transport_open_nccl(const qft_transport *boot, int device, qft_transport **out,
                            qft_err *err) {
    *out = NULL;
    return qft_err_setf(err, "this qft was built without NCCL and CUDA (and MPI, which "
                             "bootstraps NCCL); GPU collectives are not available");
}
#endif
