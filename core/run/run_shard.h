/* A run's place among its ranks: the collective transport (world size 1 unless launched by
 * mpirun) and the shard plugin that decides which slice of the flat trainable buffer each
 * rank's optimizer owns and how gradients and parameters move around the optimizer step. */
#ifndef QFT_RUN_SHARD_H
#define QFT_RUN_SHARD_H

#include "config.h"
#include "registry.h"
#include "qft_transport.h"

typedef struct qft_run_shard {
    qft_transport *t;           /* the run's transport ("local" or "mpi") */
    const qft_shard_vtable *vt; /* NULL: the built-in identity (no_shard, world 1, plugin absent) */
    void *state;
    const char *name;           /* the strategy, for messages */
    size_t n;                   /* trainable floats */
    size_t offset, len;         /* this rank's optimizer slice [offset, offset + len) of (n) */
} qft_run_shard;

/* Opens the transport ("auto": MPI under mpirun, else local). Before anything else of a
 * run, so that the data can be cut for the global batch. */
int qft_run_shard_open_transport(qft_run_shard *sh, qft_err *err);
/* Finds and configures rc->shard.plugin in reg. */
int qft_run_shard_configure(qft_run_shard *sh, const qft_run_config *rc, const qft_registry *reg,
                            qft_err *err);
/* Asks the plugin for this rank's slice of the n trainable floats. */
int qft_run_shard_plan(qft_run_shard *sh, size_t n, qft_err *err);
/* grads (n): this rank's slice becomes the sum over ranks. */
int qft_run_shard_reduce_grads(qft_run_shard *sh, float *grads, qft_err *err);
/* Global-norm clipping of the reduced gradient: returns the norm before clipping in *norm.
 * A rank that holds the whole sum clips it locally, as one process does; sharded ranks
 * all-reduce their slices' sums of squares in f64 (each slice counted once, however many
 * machines hold it) and scale their slices alike. */
int qft_run_shard_clip(qft_run_shard *sh, float *grads, float max_norm, float *norm,
                       qft_err *err);
/* params (n): every rank receives every slice's update. */
int qft_run_shard_gather_params(qft_run_shard *sh, float *params, qft_err *err);
/* v (n) summed over ranks in rank order (loss and token counts). */
int qft_run_shard_sum_f64(qft_run_shard *sh, double *v, size_t n, qft_err *err);
/* Ends the run's part in the job. failed = 0: closes the plugin and the transport (every
 * rank must get here). failed != 0 with world > 1: prints `why` and ends every rank of the
 * job (MPI_Abort), since peers may be waiting in a collective; does not return then. */
void qft_run_shard_close(qft_run_shard *sh, int failed, const char *why);

#endif
