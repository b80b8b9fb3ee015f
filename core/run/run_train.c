/* The training loop of a run: compose, tokenize once, then for each optimizer step
 * grad_accum micro-batches of forward and backward, clipping, the schedule's learning
 * rate, the optimizer, metrics and progress; at the end an atomic Hugging Face save. */
#include "batch.h"
#include "cpu_ops.h"
#include "cuda_backend.h"
#include "hf_model.h"
#include "metrics.h"
#include "optim.h"
#include "registry.h"
#include "run.h"
#include "run_ckpt.h"
#include "run_pin.h"
#include "run_shard.h"
#include "schedule.h"
#include "transport.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


typedef struct run_state {
    qft_run_data data;
    qft_data_loader loader;
    qft_llama_model model;
    qft_optim opt;
    qft_metrics metrics;
    qft_run_shard shard;
    int have_loader, have_model, have_opt, have_metrics;
    /* the optimizer runs on the model's backend over dev_params and dev_grads (another
     * backend without shard.cpu_offload); otherwise on the host copies */
    int dev_opt;
    size_t opt_bytes; /* the optimizer state's allocation on this rank */
    /* with dev_opt, or full sharding with cpu_offload: what moving the model to the
     * backend allocated there */
    size_t dev_model_bytes;
    /* the adapters' params_version (qft_sdk.h): non-zero, and a new value after anything
     * that writes the trainable parameters (a resume, each optimizer update) */
    uint64_t params_version;
    qft_run_pins pins; /* shard.cpu_offload's host buffers, page-locked */
} run_state;

static void run_state_free(run_state *s) {
    if (s->have_metrics) qft_metrics_close(&s->metrics, NULL);
    if (s->have_opt) qft_optim_free(&s->opt);
    if (s->have_model) qft_llama_free(&s->model);
    if (s->have_loader) qft_data_loader_free(&s->loader);
    qft_run_data_close(&s->data);
}

static int prepare_loader(const qft_run_config *rc, run_state *s, qft_err *err) {
    qft_data_loader_options lo = {
        .batch_size = rc->train.batch_size,
        .pad_to_context = rc->data.pad_to_context,
        .shuffle = 1,
        .group_by_length = rc->data.group_by_length,
        .drop_last = 1,
        .seed = (uint64_t)rc->train.seed,
        .pad_id = qft_tokenizer_pad(s->data.tok),
    };
    if (qft_data_loader_init(&s->loader, &s->data.ex, &lo, err)) return -1;
    s->have_loader = 1;
    return 0;
}

static void report_start(const qft_run_config *rc, const run_state *s, long total_steps,
                         int quiet) {
    if (quiet) return;
    const int world = s->shard.t->world;
    const qft_llama_model *m = &s->model;
    const qft_llama_config *c = &m->cfg;
    const double mib = 1.0 / 1048576.0;
    const size_t total = m->n_params + m->n_quantized;
    const size_t packed = qft_llama_weight_bytes(m) - m->n_params * sizeof(float);
    const size_t tbytes = m->n_trainable * sizeof(float);
    const double opt_states = strcmp(rc->train.optimizer, "adamw") == 0 ? 2.0
                              : rc->train.momentum > 0                 ? 1.0
                                                                       : 0.0;
    qft_log(QFT_LOG_INFO,
            "model: %d layers, hidden %d, heads %d/%d kv, vocab %d; %.2fM parameters, %.2fM "
            "trainable (%.2f%%), train_type %s",
            c->num_hidden_layers, c->hidden_size, c->num_attention_heads,
            c->num_key_value_heads, c->vocab_size, total / 1e6, m->n_trainable / 1e6,
            100.0 * (double)m->n_trainable / (double)(total ? total : 1), rc->train_type);
    qft_log(QFT_LOG_INFO,
            "memory: quantized base %.1f MiB (%s), dense frozen %.1f MiB, trainable %.1f MiB, "
            "gradients %.1f MiB, optimizer state %.1f MiB per rank",
            packed * mib, rc->quant_plugin, (m->n_params - m->n_trainable) * sizeof(float) * mib,
            tbytes * mib, tbytes * mib, opt_states * (double)(s->shard.len * sizeof(float)) * mib);
    if (world > 1)
        qft_log(QFT_LOG_INFO,
                "shard: %s over %d ranks (%s transport); global batch %d x %d x grad_accum %d",
                rc->shard.plugin, world, s->shard.dt->kind, world, rc->train.batch_size,
                rc->train.grad_accum);
    if (world > 1 && s->shard.full)
        qft_log(QFT_LOG_INFO,
                "shard: loaded unit by unit: this rank held at most %.3f MiB of the model's "
                "buffers and its pieces (%.3f MiB for all its units whole, the largest "
                "%.3f MiB); the process's peak RSS by then %.1f MiB",
                (double)s->shard.fsdp.load_peak * mib, (double)s->shard.fsdp.load_whole * mib,
                (double)s->shard.fsdp.load_largest * mib, (double)s->shard.fsdp.load_rss * mib);
    if (world > 1 && s->shard.full && s->shard.fsdp.embed_whole)
        qft_log(QFT_LOG_INFO,
                "shard: the frozen embedding (%.1f MiB) stays whole in host memory on every "
                "rank (train.embedding_on_host = true): not sharded, never gathered; forward "
                "sends up the batch's rows",
                (double)c->vocab_size * c->hidden_size * sizeof(float) * mib);
    /* fp32 GEMMs leave an H200's tensor cores idle: say what the fast setting is */
    if (strcmp(rc->train.backend, "cuda") == 0 &&
        strcmp(rc->train.matmul_precision, "highest") == 0)
        qft_log(QFT_LOG_INFO, "cuda: GEMMs in full fp32 (train.matmul_precision = \"highest\", "
                              "the default); \"medium\" runs them on bf16 tensor cores with "
                              "fp32 accumulation, as PyTorch's bf16 models do, many times "
                              "faster");
    qft_log(QFT_LOG_INFO,
            "data: %ld examples (%ld tokens, %ld truncated to %d, %ld with no target), "
            "%ld batches of %d per epoch, grad_accum %d -> %ld optimizer steps",
            s->data.ex.count, s->data.ex.n_tokens, s->data.ex.n_truncated,
            s->data.ex.context_length, s->data.ex.n_no_target,
            qft_data_loader_count(&s->loader), rc->train.batch_size, world * rc->train.grad_accum,
            total_steps);
}

/* The bytes the run's backend (not the cpu) holds now, by its allocator. */
static size_t backend_mem_held(const run_state *s) {
    return s->data.ops == qft_cpu_guard_ops() ? qft_cpu_guard_mem_held()
                                              : qft_cuda_loaded_mem_held();
}

/* The bytes held now by the allocator of the memory the optimizer works in: the host's
 * accounted one, or the backend's with dev_opt. */
static size_t opt_mem_held(const run_state *s) {
    return s->dev_opt ? backend_mem_held(s) : qft_mem_current();
}

/* Full sharding with shard.cpu_offload: shards and optimizer in host memory, the units
 * and the model's other buffers on the backend. */
static int full_offload(const run_state *s) {
    return s->shard.full && s->shard.offload && s->data.ops != qft_cpu_ops();
}

/* The backend's first failure (qft_ops.status) as the run's error, `what` saying where
 * (at `step`, 1-based, when > 0), after waiting for the queued work with wait: a fault on a
 * device ends the run with its own message, not with what a failed copy left in the loss
 * or the weights. */
static int backend_check(const run_state *s, const char *what, long step, int wait,
                         qft_err *err) {
    const qft_ops *o = s->data.ops;
    char why[1536];
    if (!o->status || o->status(wait, why, sizeof why) == 0) return 0;
    if (step > 0)
        return qft_err_setf(err, "backend \"%s\" failed %s at step %ld: %s", o->name, what,
                            step, why);
    return qft_err_setf(err, "backend \"%s\" failed %s: %s", o->name, what, why);
}

/* The run's last check, on every rank (collective): each rank's backend after all its
 * queued work, then the count of ranks whose backend failed. A fault after the last step's
 * own check (its optimizer's kernels, the final downloads) ends the run, and a rank whose
 * backend failed keeps the others from saving what it contributed (its slices of a
 * gather, its pieces of the model). */
static int end_check(run_state *s, qft_err *err) {
    const int bad = backend_check(s, "by the end of training", 0, 1, err) != 0;
    double failed = bad;
    qft_err sum_err = {0, ""};
    if (qft_run_shard_sum_f64(&s->shard, &failed, 1, bad ? &sum_err : err) || bad) return -1;
    if (failed > 0)
        return qft_err_setf(err, "the backend of %.0f other rank%s failed by the end of "
                                 "training: nothing is saved",
                            failed, failed == 1 ? "" : "s");
    return 0;
}

/* shard.cpu_offload on another backend: the host buffers that every step copies up and
 * down, page-locked (run_pin.h). A refusal leaves them pageable: slower, still correct, so
 * every rank it happens on says so, quiet or not. */
static void pin_offloaded(run_state *s, int rank, int quiet) {
    qft_run_pins_offload(&s->pins, s->data.ops, &s->shard, &s->model);
    if (s->pins.bytes && !quiet)
        qft_log(QFT_LOG_INFO,
                "shard.cpu_offload: %.3f MiB of host buffers page-locked for the copies to and "
                "from backend \"%s\" every step (shard.pin_memory)",
                (double)s->pins.bytes / 1048576.0, s->data.ops->name);
    if (s->pins.refused)
        qft_log(QFT_LOG_WARN,
                "shard.cpu_offload: rank %d: %.3f MiB of host buffers stay pageable, slower to "
                "copy: %s (shard.pin_memory = false does without)",
                rank, (double)s->pins.refused / 1048576.0, s->pins.why);
}

/* The optimizer over this rank's slice only: state for shard.len floats. Measured from the
 * allocator, so the per-rank figure in the log is what the strategy really saves; every
 * rank of several logs it (quiet is the user's -q, not the silence of ranks other than 0). */
static int prepare_optimizer(const qft_run_config *rc, run_state *s, int quiet, qft_err *err) {
    qft_optim_config oc = {
        .kind = strcmp(rc->train.optimizer, "sgd") == 0 ? QFT_OPT_SGD : QFT_OPT_ADAMW,
        .beta1 = (float)rc->train.beta1,
        .beta2 = (float)rc->train.beta2,
        .eps = (float)rc->train.eps,
        .weight_decay = (float)rc->train.weight_decay,
        .momentum = (float)rc->train.momentum,
    };
    const size_t before = opt_mem_held(s);
    if (qft_optim_init_on(&s->opt, &oc, s->shard.len, s->dev_opt ? s->data.ops : NULL, err))
        return -1;
    s->have_opt = 1;
    const size_t bytes = opt_mem_held(s) - before;
    s->opt_bytes = bytes;
    const qft_transport *t = s->shard.t;
    if (!quiet && t->world > 1)
        qft_log(QFT_LOG_INFO,
                "shard: rank %d of %d (%s): optimizer state %zu bytes for trainable floats "
                "[%zu, %zu) of %zu",
                t->rank, t->world, rc->shard.plugin, bytes, s->shard.offset,
                s->shard.offset + s->shard.len, s->shard.n);
    return 0;
}

/* Each rank's peak of parameters, gradients and optimizer state over the steps, measured
 * (resident pages and allocations), beside the figure its strategy implies. */
static void report_memory(const qft_run_config *rc, run_state *s, int quiet, long steps,
                          uint64_t comm_bytes) {
    if (quiet) return;
    size_t measured = 0, expected = 0;
    if (s->dev_opt) {
        /* on the backend: the model's buffers there (measured once, on both sides) and the
         * optimizer state as its allocator measured it, against the strategy's slice; under
         * full sharding also the units' commits, peak measured against the schedule's */
        const size_t states = (s->opt.m ? 1 : 0) + (s->opt.v ? 1 : 0);
        measured = s->dev_model_bytes + s->opt_bytes;
        expected = s->dev_model_bytes + states * s->shard.len * sizeof(float);
        if (s->shard.full) {
            measured += s->shard.fsdp.peak;
            expected += qft_run_fsdp_expected_peak(&s->shard.fsdp, rc->train.grad_accum);
        }
    } else {
        qft_run_shard_memory(&s->shard, &s->model, s->opt_bytes, rc->train.grad_accum,
                             &measured, &expected);
        /* the backend's model buffers besides the units' commits (the dequantization tile
         * scratch, the pieces' scratch), measured once, on both sides as above */
        if (full_offload(s)) measured += s->dev_model_bytes, expected += s->dev_model_bytes;
    }
    const qft_transport *t = s->shard.t;
    /* offloaded, the part that must fit the device: its buffers and the units' commits */
    char dev_s[96] = "";
    if (full_offload(s))
        snprintf(dev_s, sizeof dev_s, " (%.3f MiB of it on backend \"%s\", the rest host)",
                 (double)(s->dev_model_bytes + s->shard.fsdp.peak) / 1048576.0,
                 s->data.ops->name);
    qft_log(QFT_LOG_INFO,
            "memory: rank %d of %d (%s): parameters, gradients and optimizer state peaked at "
            "%.3f MiB measured, %.3f MiB expected%s",
            t->rank, t->world, rc->shard.plugin, measured / 1048576.0, expected / 1048576.0,
            dev_s);
    if (t->world == 1 || steps <= 0) return;
    const double want = qft_run_shard_expected_bytes(&s->shard, &s->model, rc->train.grad_accum);
    char exp_s[64] = "no figure for this plugin";
    if (want >= 0) snprintf(exp_s, sizeof exp_s, "%.0f expected", want);
    qft_log(QFT_LOG_INFO, "comm: rank %d of %d (%s): %.0f bytes sent per step measured, %s",
            t->rank, t->world, rc->shard.plugin, (double)comm_bytes / (double)steps, exp_s);
}

/* The parameters and gradients this rank's optimizer updates: shard.len floats, in the
 * backend's memory when the optimizer runs there (one rank: the slice is everything). */
static float *opt_params(run_state *s) {
    if (s->dev_opt && !s->shard.full) return s->model.dev_params + s->shard.offset;
    return qft_run_shard_opt_params(&s->shard, &s->model);
}
static float *opt_grads(run_state *s) {
    if (s->dev_opt && !s->shard.full) return s->model.dev_grads + s->shard.offset;
    return qft_run_shard_opt_grads(&s->shard, &s->model);
}

/* The host memory a checkpoint reads and writes the slice's parameters in: the master
 * copy's slice, or under full sharding (whose host pieces moved to the backend) a buffer of
 * its own, which the caller frees with host_slice_free. */
static float *host_slice(run_state *s) {
    if (!s->shard.full) return s->model.params + s->shard.offset;
    return qft_mem_alloc((s->shard.len ? s->shard.len : 1) * sizeof(float), "checkpoint slice");
}
static void host_slice_free(run_state *s, float *p) {
    if (s->shard.full) qft_mem_free(p);
}

/* Training-state checkpoints read and write the optimizer's state and the slice in host
 * memory (run_ckpt.c); with the optimizer on the backend they are staged through a host
 * optimizer and host_slice. */
static int ckpt_save(const qft_run_config *rc, run_state *s, const qft_run_ckpt_info *ck,
                     qft_err *err) {
    if (!s->dev_opt) return qft_run_ckpt_save(rc, &s->shard, &s->opt, opt_params(s), ck, err);
    qft_optim host;
    float *slice = host_slice(s);
    if (!slice) return qft_err_setf(err, "out of memory staging the checkpoint's parameters");
    if (qft_optim_init(&host, &s->opt.cfg, s->opt.n, err)) {
        host_slice_free(s, slice);
        return -1;
    }
    qft_optim_copy_state(&host, &s->opt);
    if (s->shard.full)
        s->data.ops->download(slice, opt_params(s), s->shard.len * sizeof(float));
    else
        qft_llama_params_to_host(&s->model, s->shard.offset, s->shard.len);
    /* nothing a failed download left is written */
    const int r = backend_check(s, "bringing the checkpoint's state to the host", ck->step, 0, err)
                      ? -1
                      : qft_run_ckpt_save(rc, &s->shard, &host, slice, ck, err);
    qft_optim_free(&host);
    host_slice_free(s, slice);
    return r;
}

static int ckpt_load(const qft_run_config *rc, run_state *s, long *start_step, qft_err *err) {
    if (!s->dev_opt)
        return qft_run_ckpt_load(rc, &s->shard, &s->opt, opt_params(s), start_step, err);
    qft_optim host;
    float *slice = host_slice(s);
    if (!slice) return qft_err_setf(err, "out of memory staging the checkpoint's parameters");
    if (qft_optim_init(&host, &s->opt.cfg, s->opt.n, err)) {
        host_slice_free(s, slice);
        return -1;
    }
    const int r = qft_run_ckpt_load(rc, &s->shard, &host, slice, start_step, err);
    if (r == 0) qft_optim_copy_state(&s->opt, &host);
    /* full sharding: the pieces are the parameters, whole units come with each gather */
    if (r == 0 && s->shard.full)
        s->data.ops->upload(opt_params(s), slice, s->shard.len * sizeof(float));
    qft_optim_free(&host);
    host_slice_free(s, slice);
    return r;
}

/* After every rank's backward: gradients reduced, clipped by the global norm, this rank's
 * slice updated, the slices gathered. *gnorm gets the norm before clipping. */
static int optimizer_step(const qft_run_config *rc, run_state *s, float lr, float *gnorm,
                          qft_err *err) {
    qft_llama_model *m = &s->model;
    qft_run_shard *sh = &s->shard;
    if (s->dev_opt) {
        /* everything on the backend, the strategy's collectives over its memory: no
         * traffic with the host (one rank: reduce and gather do nothing) */
        if (qft_run_shard_reduce_grads(sh, m->dev_grads, err) ||
            qft_run_shard_clip(sh, opt_grads(s), (float)rc->train.grad_clip, gnorm, err))
            return -1;
        qft_optim_step(&s->opt, opt_params(s), opt_grads(s), lr); // (len) on the backend
        return qft_run_shard_gather_params(sh, m->dev_params, err);
    }
    /* another backend: the optimizer works in host memory (under full sharding on the
     * host's shards, which the units' backwards reduced into and their gathers read) */
    if (!sh->full) qft_llama_grads_to_host(m);
    if (qft_run_shard_reduce_grads(sh, m->grads, err) ||
        qft_run_shard_clip(sh, opt_grads(s), (float)rc->train.grad_clip, gnorm, err))
        return -1;
    qft_optim_step(&s->opt, opt_params(s), opt_grads(s), lr); // (len) slices
    if (qft_run_shard_gather_params(sh, m->params, err)) return -1;
    if (!sh->full) qft_llama_params_to_backend(m, 0, m->n_trainable);
    return 0;
}

int qft_run_train(const qft_run_config *rc, const char *const *cli_plugin_dirs, int n_cli,
                  int quiet, qft_run_summary *summary, qft_err *err) {
    run_state s;
    memset(&s, 0, sizeof s);
    memset(summary, 0, sizeof *summary);
    int rc_ = -1;
    if (qft_run_shard_open_transport(&s.shard, err)) return -1;
    const int rank = s.shard.t->rank, world = s.shard.t->world;
    /* Rank 0 speaks for the job: progress, metrics and the saved result are its alone. */
    const int lead = rank == 0, user_quiet = quiet;
    if (!lead) quiet = 1;
    /* several ranks of a machine take one GPU each: train.device is the machine's first */
    const int device = rc->train.device + (world > 1 ? s.shard.t->node_rank : 0);
    if (qft_run_data_open_world(rc, cli_plugin_dirs, n_cli, world, device, &s.data, err))
        goto done;
    /* gradients and the optimizer stay on another backend unless shard.cpu_offload; the
     * strategy's collectives then go over that backend's memory */
    s.dev_opt = s.data.ops != qft_cpu_ops() && !rc->shard.cpu_offload;
    /* full sharding gathers its units there even with cpu_offload (its shards stay here) */
    const int dev_units = s.data.ops != qft_cpu_ops() && rc->shard.cpu_offload &&
                          qft_run_shard_full_plugin(rc, &s.data.reg);
    if (((s.dev_opt || dev_units) &&
         qft_run_shard_open_device(&s.shard, s.data.ops, rc->shard.device_transport,
                                   strcmp(rc->train.backend, "cuda") == 0, device, err)) ||
        qft_run_shard_configure(&s.shard, rc, &s.data.reg, err) || prepare_loader(rc, &s, err))
        goto done;

    if (qft_run_build_model(rc, qft_tokenizer_vocab_size(s.data.tok), (uint64_t)rc->train.seed,
                            &s.data, qft_run_shard_unit_pad(&s.shard),
                            qft_run_shard_cut_unit, &s.shard, &s.model, err))
        goto done;
    s.have_model = 1;
    if (qft_tokenizer_vocab_size(s.data.tok) > s.model.cfg.vocab_size) {
        qft_err_setf(err, "the tokenizer has %d tokens but the model's vocab_size is %d",
                     qft_tokenizer_vocab_size(s.data.tok), s.model.cfg.vocab_size);
        goto done;
    }
    /* A random model learns its special ids from the tokenizer, so the saved config.json
     * says what generation should stop on. */
    if (!rc->model.path) {
        s.model.cfg.bos_token_id = qft_tokenizer_bos(s.data.tok);
        s.model.cfg.eos_token_id = qft_tokenizer_eos(s.data.tok);
        s.model.cfg.pad_token_id = qft_tokenizer_pad(s.data.tok);
    }
    s.model.recompute = rc->train.recompute;
    s.model.residual_bf16 = strcmp(rc->train.residual_dtype, "bf16") == 0;
    s.model.embed_on_host = rc->train.embedding_on_host; /* applies on another backend only */
    /* the head and the loss in chunks of tokens, so that no (tokens, vocab) logits buffer
     * exists (1 GiB at Llama-3's vocabulary and 2048 tokens) */
    s.model.logit_rows = rc->train.loss_chunk_tokens
                             ? rc->train.loss_chunk_tokens
                             : qft_llama_logit_rows_auto(s.model.cfg.vocab_size,
                                                         s.data.ops->host_memory
                                                             ? (size_t)1 << 30
                                                             : (size_t)64 << 20);

    if (qft_run_shard_plan(&s.shard, &s.model, err) ||
        prepare_optimizer(rc, &s, user_quiet, err))
        goto done;
    /* another backend (train.backend): the passes run on its copy of the model */
    /* what that allocates there is counted in the memory line: with dev_opt, and under
     * full sharding with cpu_offload */
    const int dev_counted = s.dev_opt || full_offload(&s);
    const size_t held = dev_counted ? backend_mem_held(&s) : 0;
    if (s.data.ops != qft_cpu_ops() &&
        (qft_llama_to_backend(&s.model, s.data.ops, strcmp(rc->train.frozen_dtype, "bf16") == 0,
                              err) ||
         qft_run_shard_to_backend(&s.shard, err) ||
         backend_check(&s, "moving the model there", 0, 1, err)))
        goto done;
    if (dev_counted) s.dev_model_bytes = backend_mem_held(&s) - held;
    if (rc->shard.cpu_offload && rc->shard.pin_memory && s.data.ops != qft_cpu_ops())
        pin_offloaded(&s, rank, quiet);
    /* train.resume_from (run_ckpt.c): this rank's slice and optimizer state from the
     * checkpoint, then every rank holds the full parameters; the loop starts after it. */
    long start_step = 0;
    if (rc->train.resume_from) {
        if (ckpt_load(rc, &s, &start_step, err)) goto done;
        if (s.shard.full) {
            /* the pieces are the parameters: the units' next gathers bring them */
        } else if (s.dev_opt) { /* the slice up, then gathered on the backend */
            qft_llama_params_to_backend(&s.model, s.shard.offset, s.shard.len);
            if (qft_run_shard_gather_params(&s.shard, s.model.dev_params, err)) goto done;
        } else {
            if (qft_run_shard_gather_params(&s.shard, s.model.params, err)) goto done;
            qft_llama_params_to_backend(&s.model, 0, s.model.n_trainable);
        }
        if (backend_check(&s, "bringing the checkpoint there", 0, 0, err)) goto done;
    }
    s.params_version = 1; /* the parameters the loop starts from, resumed or not */

    /* One optimizer step takes world * grad_accum micro-batches of the one-process order;
     * rank r trains those at positions r, r + world, ... of them. */
    const int G = rc->train.grad_accum, micro_per_step = world * G;
    const long batches_per_epoch = qft_data_loader_count(&s.loader);
    const long steps_per_epoch = batches_per_epoch / micro_per_step;
    if (steps_per_epoch <= 0) {
        if (world == 1)
            qft_err_setf(err, "%ld batches per epoch cannot fill grad_accum = %d",
                         batches_per_epoch, G);
        else
            qft_err_setf(err, "%ld batches per epoch cannot fill %d ranks x grad_accum = %d",
                         batches_per_epoch, world, G);
        goto done;
    }
    const long total = rc->train.max_steps > 0 ? rc->train.max_steps
                                               : steps_per_epoch * rc->train.epochs;
    qft_schedule sched = {.lr = (float)rc->train.lr,
                          .warmup = (float)rc->train.warmup,
                          .min_lr_ratio = (float)rc->train.min_lr_ratio,
                          .total_steps = total};
    qft_schedule_parse(rc->train.schedule, &sched.kind);

    if (lead && qft_mkdir_p(rc->output.dir, err)) goto done;
    if (lead && rc->output.jsonl) {
        char path[8192];
        snprintf(path, sizeof path, "%s/metrics.jsonl", rc->output.dir);
        /* a resumed run continues the file after the checkpoint's step */
        if ((start_step > 0 && qft_run_ckpt_trim_metrics(path, start_step, err)) ||
            qft_metrics_open(&s.metrics, path, start_step > 0, err))
            goto done;
        s.have_metrics = 1;
    }
    report_start(rc, &s, total, quiet);

    qft_progress prog;
    qft_progress_init(&prog, stderr, total, rc->train.log_every,
                      rc->output.progress && !quiet ? QFT_PROGRESS_AUTO : QFT_PROGRESS_PLAIN);
    const int show = rc->output.progress && !quiet;
    const double t_start = qft_time_now();
    const uint64_t comm_start = qft_transport_process_bytes();
    long tokens_total = 0;
    int epoch = 0;
    /* each micro-batch's share of the global mean, so that the sum over ranks is it */
    const float loss_scale = 1.0f / (float)micro_per_step;
    for (long step = start_step; step < total; step++) {
        const double t0 = qft_time_now();
        qft_llama_zero_grads(&s.model);
        double sums[2] = {0, 0}; /* (loss, tokens) of this rank's micro-batches */
        for (int k = 0; k < G; k++) {
            const int j = k * world + rank; /* position among the step's micro-batches */
            const long micro = step * micro_per_step + j;
            /* epochs past the config's count continue the same way when max_steps asks
             * for more steps than the epochs hold, as transformers' Trainer does */
            const int e = (int)(micro / batches_per_epoch);
            if (e != epoch) {
                epoch = e;
                if (qft_data_loader_epoch(&s.loader, epoch, err)) goto done;
            }
            qft_batch b;
            long nt = 0;
            float loss = 0;
            /* the position j, not k, keys dropout: every rank draws other masks, and each
             * micro-batch gets the mask one process would give it */
            s.model.astep = (qft_adapter_step){.seed = (uint64_t)rc->train.seed, .step = step,
                                               .micro = j, .training = 1,
                                               .params_version = s.params_version};
            qft_run_shard_set_last_micro(&s.shard, k == G - 1);
            if (qft_data_loader_get(&s.loader, micro % batches_per_epoch, &b, &nt, err) ||
                qft_llama_forward(&s.model, &b, &loss, err) ||
                qft_llama_backward(&s.model, &b, loss_scale, err) ||
                backend_check(&s, "in the forward and backward passes", step + 1, 0, err))
                goto done;
            sums[0] += loss;
            sums[1] += (double)nt;
        }
        if (qft_run_shard_sum_f64(&s.shard, sums, 2, err)) goto done;
        const double loss = sums[0] / micro_per_step;
        const long step_tokens = (long)sums[1];
        if (!isfinite(loss)) {
            if (show) qft_progress_finish(&prog);
            qft_err_setf(err, "loss is %g at step %ld: training diverged (lower train.lr, or "
                              "set train.grad_clip)", loss, step + 1);
            goto done;
        }
        const float lr = qft_schedule_lr(&sched, step);
        float gnorm = 0;
        if (optimizer_step(rc, &s, lr, &gnorm, err) ||
            backend_check(&s, "in the optimizer step", step + 1, 0, err))
            goto done;
        s.params_version++;
        const double t1 = qft_time_now();
        const double tps = step_tokens / (t1 - t0 > 1e-9 ? t1 - t0 : 1e-9);
        tokens_total += step_tokens;
        if (step == start_step) summary->first_loss = loss;
        summary->last_loss = loss;
        summary->steps = step + 1;
        if (s.have_metrics) {
            qft_metrics_row row = {.step = step + 1, .loss = loss, .lr = lr,
                                   .tokens_per_s = tps, .grad_norm = gnorm,
                                   .elapsed_s = t1 - t_start};
            if (qft_metrics_write(&s.metrics, &row, err)) goto done;
        }
        if (show) qft_progress_update(&prog, step + 1, loss, lr, tps);
        /* output.save_state_every (run_ckpt.c): collective, every rank after the same step */
        const qft_run_ckpt_info ck = {.step = step + 1, .total_steps = total,
                                      .epoch = (double)((step + 1) * micro_per_step) /
                                               (double)batches_per_epoch};
        if (qft_run_ckpt_due(rc, step + 1, total) &&
            ckpt_save(rc, &s, &ck, err))
            goto done;
    }
    if (show) qft_progress_finish(&prog);
    summary->elapsed_s = qft_time_now() - t_start;
    summary->tokens_per_s = tokens_total / (summary->elapsed_s > 1e-9 ? summary->elapsed_s : 1e-9);

    report_memory(rc, &s, user_quiet, summary->steps - start_step,
                  qft_transport_process_bytes() - comm_start);
    /* the activation buffers (the largest batch's): what recompute, the residual dtype and
     * the loss chunks decide */
    if (!user_quiet && qft_llama_acts_bytes(&s.model))
        qft_log(QFT_LOG_INFO, "memory: activations %.1f MiB (recompute %s, residual stream %s, "
                              "logits held for %d tokens at a time%s)",
                qft_llama_acts_bytes(&s.model) / 1048576.0, s.model.recompute ? "on" : "off",
                s.model.residual_bf16 ? "bf16" : "fp32", qft_llama_acts_logit_rows(&s.model),
                qft_llama_embed_gathered(&s.model)
                    ? "; the frozen embedding stays in host memory, its rows gathered there"
                    : "");
    if (!quiet && strcmp(rc->train.backend, "cpu_guard") == 0)
        qft_log(QFT_LOG_INFO, "memory: cpu_guard backend peak %.1f MiB allocated (what the "
                              "model's buffers would take on a GPU, without the CUDA "
                              "backend's own scratch)",
                qft_cpu_guard_mem_peak() / 1048576.0);
    /* the CUDA backend counts its own cudaMalloc bytes; bench/run_model_gpu.sh reads this */
    if (!quiet && strcmp(rc->train.backend, "cuda") == 0)
        qft_log(QFT_LOG_INFO, "memory: CUDA device peak %.1f MiB allocated by the backend "
                              "(weights, gradients, optimizer state, activations, scratch; "
                              "without the CUDA context)",
                qft_cuda_loaded_mem_peak() / 1048576.0);
    /* the optimizer updated the backend's copy: the host's, which the savers read, follows */
    if (s.dev_opt && !s.shard.full) qft_llama_params_to_host(&s.model, 0, s.model.n_trainable);
    /* full sharding holds pieces: every rank helps make the model whole for rank 0's save */
    const int save_model = lead && strcmp(rc->output.save, "model") == 0;
    /* a merged save reads the adapters' merged rows on the host; nothing a failed download
     * left (here or on another rank) is written */
    if ((strcmp(rc->output.save, "none") != 0 &&
         (qft_run_shard_gather_model(&s.shard, err) ||
          (save_model && s.model.dev_params && qft_llama_adapters_to_host(&s.model, err)))) ||
        end_check(&s, err))
        goto done;
    if (save_model && qft_run_save_model(rc, &s.model, err)) goto done;
    if (lead && strcmp(rc->output.save, "adapter") == 0 &&
        qft_run_save_adapter(rc, &s.model, err))
        goto done;
    qft_progress_summary_memory(summary);
    if (!quiet) {
        char line[512];
        qft_progress_summary_format(line, sizeof line, summary);
        fprintf(stderr, "%s\n", line);
    }
    rc_ = 0;
done:
    qft_run_pins_release(&s.pins); /* before the shards and the model are freed */
    /* A failing rank of several ends the job (and does not return): its peers may be
     * waiting in a collective. The plugin closes before the registry that loaded it. */
    qft_run_shard_close(&s.shard, rc_ != 0, err ? err->msg : "training failed");
    run_state_free(&s);
    return rc_;
}
