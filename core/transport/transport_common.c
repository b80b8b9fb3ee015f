/* Choosing a transport, and the process-wide collective counter. Opening MPI and NCCL
 * (dlopen of their libraries) is transport_loader.c's; the stateless helpers are in
 * transport_util.c. */
#include "transport_internal.h"

#include "qft_base.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        if (qft_transport_open_mpi(out, err) == 0) return 0;
        /* The launcher is the reason MPI was wanted: say so before what went wrong. */
        if (err) {
            char why[sizeof err->msg];
            snprintf(why, sizeof why, "%s", err->msg);
            qft_err_setf(err, "launched by an MPI launcher with %d ranks: %s", world, why);
        }
        return -1;
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

/* Every transport of the process together, sub-transports included (a shard plugin's
 * own splits are invisible to the core otherwise). One thread drives the collectives. The
 * dlopened MPI and NCCL transports count through this same function (they get it in their
 * host table, transport_plugin.h), so this stays the one counter of the process. */
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
