/* A run's place among its ranks: the collective transport (world size 1 unless launched by
 * mpirun) and the shard plugin that decides which slice of the flat trainable buffer each
 * rank's optimizer owns and how gradients and parameters move around the optimizer step. */
#ifndef QFT_RUN_SHARD_H
#define QFT_RUN_SHARD_H

#include "config.h"
#include "registry.h"
#include "qft_transport.h"
#include "run_fsdp.h"

struct qft_ops;

typedef struct qft_run_shard {
    qft_transport *t;           /* the run's transport ("local" or "mpi") */
    /* The transport the strategy's buffers go through: t, or (gradients and optimizer on
     * another backend, several ranks) one over that backend's memory that this owns:
     * "nccl" on the cuda backend, "staged" through t on cpu_guard. */
    qft_transport *dt;
    const struct qft_ops *ops;  /* the backend of those buffers; NULL: host memory */
    /* shard.cpu_offload: the optimizer and its slice in host memory. Full sharding still
     * gathers its units in ops's memory over dt; only its shards stay on the host. */
    int offload;
    const qft_shard_vtable *vt; /* NULL: the built-in identity (no_shard, world 1, plugin absent) */
    void *state;
    const char *name;           /* the strategy, for messages */
    size_t n;                   /* trainable floats */
    size_t offset, len;         /* this rank's optimizer slice [offset, offset + len) of (n) */
    /* full sharding (the plugin has param_group): the group and replicas it named, and
     * the model's units cut over them once the model is attached */
    const qft_transport *group, *replicas;
    int full;
    qft_run_fsdp fsdp;
} qft_run_shard;

/* Opens the transport ("auto": MPI under mpirun, else local). Before anything else of a
 * run, so that the data can be cut for the global batch. */
int qft_run_shard_open_transport(qft_run_shard *sh, qft_err *err);
/* Gradients and optimizer on the backend `ops` (not the cpu's; no shard.cpu_offload), or
 * full sharding's units there (also with shard.cpu_offload):
 * with several ranks, opens the transport over its memory that the strategy then uses,
 * shard.device_transport `kind`: "nccl" (CUDA device `device`; cuda must be set), "staged"
 * (through the host transport), "auto" (nccl when cuda is set, else staged). With one rank
 * only notes ops. Before configure. Collective. */
int qft_run_shard_open_device(qft_run_shard *sh, const struct qft_ops *ops, const char *kind,
                              int cuda, int device, qft_err *err);
/* Whether rc->shard.plugin (found in reg) shards the parameters (has param_group): full
 * sharding on another backend needs the transport over its memory even with
 * shard.cpu_offload. 0 where the plugin is absent (configure then says so). */
int qft_run_shard_full_plugin(const qft_run_config *rc, const qft_registry *reg);
/* Finds and configures rc->shard.plugin in reg. */
int qft_run_shard_configure(qft_run_shard *sh, const qft_run_config *rc, const qft_registry *reg,
                            qft_err *err);
/* The model build's qft_llama_build.unit_pad: 0 unless the strategy shards parameters. */
int qft_run_shard_unit_pad(const qft_run_shard *sh);
/* The build's cut (qft_run_build_model) under full sharding: unit u of m is complete, with
 * its adapters; this rank keeps its pieces and releases the rest (qft_run_fsdp_cut; the
 * first call begins the cut). A no-op for other strategies. ctx is the qft_run_shard. */
int qft_run_shard_cut_unit(void *ctx, qft_llama_model *m, int u, qft_err *err);
/* Takes the run's model (built, loaded, adapters attached): asks the plugin for this rank's
 * slice of its trainable floats, or, under full sharding, finishes the cut the build made
 * unit by unit. */
int qft_run_shard_plan(qft_run_shard *sh, qft_llama_model *m, qft_err *err);
/* Under full sharding on another backend (ops): the units are gathered in its memory from
 * then on, and the shards move there too unless they stay on the host with the optimizer
 * (offload; qft_run_fsdp_to_backend), after qft_llama_to_backend; otherwise a no-op. */
int qft_run_shard_to_backend(qft_run_shard *sh, qft_err *err);
/* The parameters and gradients this rank's optimizer updates: len floats each (under full
 * sharding the shard buffers, in the backend's memory after qft_run_shard_to_backend). */
float *qft_run_shard_opt_params(qft_run_shard *sh, qft_llama_model *m);
float *qft_run_shard_opt_grads(qft_run_shard *sh, qft_llama_model *m);
/* Whether the micro-batch about to run is the last of its step: under full sharding only
 * its backward reduces gradients (the others accumulate them unsynchronised). */
void qft_run_shard_set_last_micro(qft_run_shard *sh, int last);
/* The whole model on every rank (full sharding gathers every unit; otherwise a no-op):
 * before saving. Collective. */
int qft_run_shard_gather_model(qft_run_shard *sh, qft_err *err);
/* The per-rank memory of parameters, gradients and optimizer state: the peak measured
 * during training and the figure the strategy implies, in bytes. */
void qft_run_shard_memory(qft_run_shard *sh, const qft_llama_model *m, size_t opt_bytes,
                          int grad_accum, size_t *measured, size_t *expected);
/* grads (n): this rank's slice becomes the sum over ranks (under full sharding the
 * model's backward did it unit by unit). */
int qft_run_shard_reduce_grads(qft_run_shard *sh, float *grads, qft_err *err);
/* Global-norm clipping of the reduced gradient slice (len floats, in sh->ops's memory):
 * returns the norm before clipping in *norm.
 * A rank that holds the whole sum clips it locally, as one process does; sharded ranks
 * all-reduce their slices' sums of squares in f64 (each slice counted once, however many
 * machines hold it) and scale their slices alike. */
int qft_run_shard_clip(qft_run_shard *sh, float *slice, float max_norm, float *norm,
                       qft_err *err);
/* params (n): every rank receives every slice's update. */
int qft_run_shard_gather_params(qft_run_shard *sh, float *params, qft_err *err);
/* The bytes this rank sends per optimizer step under its strategy (the transport's
 * convention, qft_transport_stats), computed from the model's sizes; -1 for a plugin whose
 * algorithm the core does not know. After plan. */
double qft_run_shard_expected_bytes(const qft_run_shard *sh, const qft_llama_model *m,
                                    int grad_accum);
/* v (n) summed over ranks in rank order (loss and token counts). */
int qft_run_shard_sum_f64(qft_run_shard *sh, double *v, size_t n, qft_err *err);
/* Ends the run's part in the job. failed = 0: closes the plugin and the transport (every
 * rank must get here). failed != 0 with world > 1: prints `why` and ends every rank of the
 * job (MPI_Abort), since peers may be waiting in a collective; does not return then. */
void qft_run_shard_close(qft_run_shard *sh, int failed, const char *why);

#endif
