/* The contract between the core and the transport libraries it dlopens: libqft_mpi.so (the
 * MPI transport, linked against MPI) and libqft_nccl.so (the NCCL transport, linked against
 * NCCL and the CUDA runtime). Keeping them out of libqft lets a qft installed on a machine
 * without MPI, CUDA or NCCL start; transport_loader.c opens them only when asked.
 *
 * Each library exports exactly one entry function (its version map hides everything else).
 * The core hands it a table of the core functions whose state must stay one per process:
 * the accounted allocator (the run's memory report must see transport scratch) and the
 * collective counter (qft_transport_process_bytes sums every transport of the process).
 * Inside a library, transport_shim.c forwards qft_mem_alloc, qft_mem_free, qft_time_now and
 * qft_transport_count to that table; the stateless helpers (transport_util.c) are compiled
 * into each library as private copies. Not part of any public API. */
#ifndef QFT_TRANSPORT_PLUGIN_H
#define QFT_TRANSPORT_PLUGIN_H

#include "transport_internal.h"

#include <stddef.h>

/* Bumped whenever this table, the entry signatures, qft_transport, qft_transport_stats or
 * qft_err change shape: a library from another build then refuses to bind. */
#define QFT_TRANSPORT_LIB_ABI 2

typedef struct qft_transport_host {
    int abi; /* QFT_TRANSPORT_LIB_ABI of the core */
    void *(*mem_alloc)(size_t bytes, const char *what);
    void (*mem_free)(void *p);
    double (*time_now)(void);
    void (*count)(const qft_transport *t, qft_coll c, size_t n, size_t elt, double t0);
} qft_transport_host;

typedef int (*qft_transport_open_mpi_fn)(qft_transport **out, qft_err *err);
typedef int (*qft_transport_open_nccl_fn)(const qft_transport *boot, int device,
                                          qft_transport **out, qft_err *err);

/* The entries: check host->abi, keep host (it must outlive the library: the core's table is
 * static), and give the library's open function. 0, or -1 with err filled. */
#define QFT_TRANSPORT_MPI_ENTRY "qft_transport_mpi_entry"
#define QFT_TRANSPORT_NCCL_ENTRY "qft_transport_nccl_entry"
typedef int (*qft_transport_mpi_entry_fn)(const qft_transport_host *host,
                                          qft_transport_open_mpi_fn *open, qft_err *err);
typedef int (*qft_transport_nccl_entry_fn)(const qft_transport_host *host,
                                           qft_transport_open_nccl_fn *open, qft_err *err);
int qft_transport_mpi_entry(const qft_transport_host *host, qft_transport_open_mpi_fn *open,
                            qft_err *err);
int qft_transport_nccl_entry(const qft_transport_host *host, qft_transport_open_nccl_fn *open,
                             qft_err *err);

/* In the libraries only (transport_shim.c): keeps host after checking its ABI; `lib` names
 * the library in the message. */
int qft_transport_shim_bind(const qft_transport_host *host, const char *lib, qft_err *err);

#endif
