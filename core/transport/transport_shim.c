/* Inside libqft_mpi.so and libqft_nccl.so only: the core functions the transports call,
 * forwarded to the core that loaded the library (see transport_plugin.h). A private copy of
 * the allocator or the counter here would split the process's memory report and byte count
 * in two; the version map keeps these definitions local, so they never interpose on the
 * core's own. */
#include "transport_plugin.h"

#include "qft_base.h"

#include <string.h>

/* Set once by the entry, before the library's open function is handed out; the core's
 * table is static, so it outlives the library. */
static const qft_transport_host *g_host;

int qft_transport_shim_bind(const qft_transport_host *host, const char *lib, qft_err *err) {
    if (!host || host->abi != QFT_TRANSPORT_LIB_ABI || !host->mem_alloc || !host->mem_free ||
        !host->time_now || !host->count) {
        return qft_err_setf(err, "%s: built for transport ABI %d, but the qft loading it "
                                 "speaks %d; use the library from the same build as qft",
                            lib, QFT_TRANSPORT_LIB_ABI, host ? host->abi : -1);
    }
    g_host = host;
    return 0;
}

void *qft_mem_alloc(size_t bytes, const char *what) { return g_host->mem_alloc(bytes, what); }

void *qft_mem_calloc(size_t bytes, const char *what) {
    void *p = g_host->mem_alloc(bytes, what);
    if (p) memset(p, 0, bytes);
    return p;
}

void qft_mem_free(void *p) { g_host->mem_free(p); }

double qft_time_now(void) { return g_host->time_now(); }

void qft_transport_count(const qft_transport *t, qft_coll c, size_t n, size_t elt, double t0) {
    g_host->count(t, c, n, elt, t0);
}
