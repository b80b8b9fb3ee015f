/* Training-state checkpoints, for resuming a run where it stopped (Hugging Face Trainer
 * style): output.dir/checkpoint-<step>/ holds
 *   trainer_state.json                        rank 0's record of the run: global_step, epoch,
 *                                             world_size, shard_strategy, train_type,
 *                                             optimizer, n_trainable, seed, total_steps,
 *                                             qft_version, config_file, optimizer_files;
 *   optimizer-rank<r>-of-<W>.safetensors      rank r's optimizer slice: "params" (len) fp32,
 *                                             AdamW's "exp_avg" and "exp_avg_sq" (len) or
 *                                             SGD's "momentum_buffer" (len), and in
 *                                             __metadata__ the format and its version, rank,
 *                                             world, strategy, offset, len, n and the
 *                                             optimizer's step.
 * A save writes checkpoint-<step>.tmp (every file atomically) and rank 0 renames it to
 * checkpoint-<step> after a barrier over all ranks, so a folder under the final name is
 * always complete. A resumed run equals the uninterrupted one bit for bit: the data order,
 * the learning-rate schedule and dropout are keyed by step and micro-batch, and the
 * trainable parameters and optimizer state are restored exactly. */
#ifndef QFT_RUN_CKPT_H
#define QFT_RUN_CKPT_H

#include "config.h"
#include "optim.h"
#include "run_shard.h"

#define QFT_RUN_CKPT_VERSION 1

/* Where the run stands when a checkpoint is taken. */
typedef struct qft_run_ckpt_info {
    long step;        /* optimizer steps taken */
    double epoch;     /* epochs done: micro-batches trained / batches per epoch */
    long total_steps; /* the run's length (the schedule depends on it) */
} qft_run_ckpt_info;

/* 1 when output.save_state_every asks for a checkpoint after `done` of `total` steps:
 * every save_state_every steps, and after the last step. */
int qft_run_ckpt_due(const qft_run_config *rc, long done, long total);

/* Collective: every rank calls it after the same step. slice (sh->len) is the rank's part
 * of the trainable parameters (the optimizer's), opt its state. Rank 0 creates the folder
 * and writes trainer_state.json; every rank writes its own optimizer file. */
int qft_run_ckpt_save(const qft_run_config *rc, const qft_run_shard *sh, const qft_optim *opt,
                      const float *slice, const qft_run_ckpt_info *info, qft_err *err);

/* Reads train.resume_from into this rank's slice (sh->len) and opt (m, v, step), after
 * checking the checkpoint against this run: world size, strategy, train_type, optimizer,
 * trainable floats and the rank's offset and length. Errors start "rank R of W: checkpoint
 * DIR" and give both values. *step gets the optimizer steps the checkpoint holds. Not
 * collective: the caller gathers the parameters (every rank then holds them all). */
int qft_run_ckpt_load(const qft_run_config *rc, const qft_run_shard *sh, qft_optim *opt,
                      float *slice, long *step, qft_err *err);

/* A resumed run's metrics.jsonl: keeps the rows of steps 1..last_step (an interrupted run
 * may have logged steps past its last checkpoint, and a cut last line), rewritten
 * atomically, so the resumed run's rows follow without duplicates. A missing file is
 * fine. */
int qft_run_ckpt_trim_metrics(const char *path, long last_step, qft_err *err);

#endif
