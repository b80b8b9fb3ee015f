/* Opening the run's collective transport (the interface is the SDK's qft_transport.h).
 *
 * A run launched by mpirun (or another MPI launcher) gets the MPI transport, one rank per
 * process; any other run gets the local one (world size 1), so single-process runs need
 * neither MPI nor a GPU. The CUDA backend then opens NCCL on top of the MPI transport, which
 * carries NCCL's bootstrap id. Close in the reverse order of opening: sub-transports, then
 * NCCL, then the transport it was bootstrapped from. */
#ifndef QFT_CORE_TRANSPORT_H
#define QFT_CORE_TRANSPORT_H

#include "qft_transport.h"

/* What this build holds. */
int qft_transport_has_mpi(void);
int qft_transport_has_nccl(void);

/* 1 when an MPI launcher started this process (Open MPI, MPICH/Hydra or PMIx variables in
 * the environment); *world (may be NULL) gets the launcher's world size, or 1. */
int qft_transport_launched(int *world);

/* kind: NULL or "auto" (MPI when launched, else local), "local" or "mpi". Launched under
 * mpirun with more than one rank on a build without MPI is an error saying so. */
int qft_transport_open(const char *kind, qft_transport **out, qft_err *err);
int qft_transport_open_local(qft_transport **out, qft_err *err);
/* Initialises MPI when nobody has (and then finalizes it in close). */
int qft_transport_open_mpi(qft_transport **out, qft_err *err);
/* A transport over GPU buffers of `device` (-1: boot->node_rank modulo the visible device
 * count), with the same ranks as `boot` (a host transport: "mpi" or "local"), whose
 * broadcast carries NCCL's unique id from rank 0. boot must outlive it. */
int qft_transport_open_nccl(const qft_transport *boot, int device, qft_transport **out,
                            qft_err *err);

/* A transport over the memory of the backend `ops` (whose upload and download it uses),
 * with the ranks of `host` (a host transport: "mpi" or "local"), which runs every
 * collective on host copies of the operands (transport_staged.c): kind "staged", device
 * QFT_TRANSPORT_DEVICE_STAGED. host must outlive it. */
struct qft_ops;
int qft_transport_open_staged(const qft_transport *host, const struct qft_ops *ops,
                              qft_transport **out, qft_err *err);

/* Resuming a run: fails with "this run was saved with world size S but is launched with W"
 * (and what to do) when they differ. Every rank reads the same checkpoint, so every rank
 * fails alike and the job ends on all of them. */
int qft_transport_check_world(const qft_transport *t, int saved_world, qft_err *err);

/* "all_gather", "reduce_scatter", ...: the names the stats and messages use. */
const char *qft_transport_coll_name(qft_coll c);
void qft_transport_stats_add(qft_transport_stats *dst, const qft_transport_stats *src);
/* bytes_sent summed over every transport this process opened, sub-transports included. */
uint64_t qft_transport_process_bytes(void);

#endif
