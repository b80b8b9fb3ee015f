/* The run's transport and shard plugin (see run_shard.h). */
#include "run_shard.h"

#include "optim.h"
#include "qft_ops.h"
#include "transport.h"

#include <math.h>
#include <string.h>

int qft_run_shard_open_transport(qft_run_shard *sh, qft_err *err) {
    memset(sh, 0, sizeof *sh);
    if (qft_transport_open("auto", &sh->t, err)) return -1;
    sh->dt = sh->t;
    return 0;
}

int qft_run_shard_open_device(qft_run_shard *sh, const qft_ops *ops, const char *kind,
                              int cuda, int device, qft_err *err) {
    sh->ops = ops;
    if (sh->t->world == 1) return 0; /* the strategies move nothing */
    /* "auto": NCCL on GPUs; the staged transport for cpu_guard, and on GPUs when asked
     * (no NCCL, or several ranks sharing one GPU, which NCCL refuses) */
    const int nccl = strcmp(kind, "nccl") == 0 || (strcmp(kind, "auto") == 0 && cuda);
    if (nccl && !cuda)
        return qft_err_setf(err, "shard.device_transport = \"nccl\" moves GPU memory; the %s "
                                 "backend's goes through \"staged\" (or \"auto\")",
                            ops->name);
    qft_transport *dt = NULL;
    qft_err e = {0, ""};
    if (nccl ? qft_transport_open_nccl(sh->t, device, &dt, &e)
             : qft_transport_open_staged(sh->t, ops, &dt, &e))
        return qft_err_setf(err, "%s ranks with gradients, or full sharding's units, on the %s "
                                 "backend: %s (shard.device_transport = \"staged\" goes "
                                 "through the host; for strategies other than full sharding "
                                 "shard.cpu_offload = true also keeps the gradients there)",
                            cuda ? "GPU" : "several", ops->name, e.msg);
    sh->dt = dt;
    return 0;
}

int qft_run_shard_full_plugin(const qft_run_config *rc, const qft_registry *reg) {
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_SHARD, rc->shard.plugin, NULL);
    return p && ((const qft_shard_vtable *)p->desc->vtable)->param_group != NULL;
}

int qft_run_shard_configure(qft_run_shard *sh, const qft_run_config *rc, const qft_registry *reg,
                            qft_err *err) {
    sh->name = rc->shard.plugin;
    sh->offload = rc->shard.cpu_offload;
    /* shard.cpu_offload is the backend's business (run_plugins.c): the shards live in host
     * memory either way */
    const int identity_ok = strcmp(rc->shard.plugin, "no_shard") == 0 && sh->t->world == 1;
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_SHARD, rc->shard.plugin,
                                            identity_ok ? NULL : err);
    if (!p) {
        /* One process without the no_shard module (an install that left it out): nothing
         * would cross a wire anyway. */
        if (identity_ok) return 0;
        return -1;
    }
    const qft_shard_vtable *vt = p->desc->vtable;
    if (!vt->param_group && (!vt->plan || !vt->reduce_grads || !vt->gather_params))
        return qft_err_setf(err, "shard plugin \"%s\" (%s) has neither param_group nor all of "
                                 "plan, reduce_grads and gather_params",
                            rc->shard.plugin, p->path);
    if (qft_registry_open(reg, QFT_KIND_SHARD, rc->shard.plugin, rc->sec_shard, 1, &p,
                          &sh->state, err))
        return -1;
    sh->vt = vt;
    if (vt->param_group) {
        /* the units move in the memory the passes use: dt is the backend's transport */
        if (vt->param_group(sh->state, sh->dt, &sh->group, &sh->replicas, err)) return -1;
        /* one rank holds everything anyway: cutting the model into one piece would only
         * keep a second copy of it */
        sh->full = sh->group->world > 1 || sh->replicas;
    }
    return 0;
}

int qft_run_shard_unit_pad(const qft_run_shard *sh) {
    /* 16 floats a rank: every piece starts 64-byte aligned */
    return sh->full ? 16 * sh->group->world : 0;
}

int qft_run_shard_cut_unit(void *ctx, qft_llama_model *m, int u, qft_err *err) {
    qft_run_shard *sh = ctx;
    if (!sh->full) return 0;
    /* on another backend a frozen embedding read on the host stays whole */
    if (!sh->fsdp.m && qft_run_fsdp_begin(&sh->fsdp, m, sh->group, sh->replicas,
                                          sh->ops && qft_llama_embed_stays_on_host(m), err))
        return -1;
    return qft_run_fsdp_cut(&sh->fsdp, u, err);
}

int qft_run_shard_plan(qft_run_shard *sh, qft_llama_model *m, qft_err *err) {
    if (sh->full) {
        /* the build cut it as it loaded (qft_run_shard_cut_unit) */
        if (sh->fsdp.m != m)
            return qft_err_setf(err, "full sharding: the model was not cut as it loaded "
                                     "(build it with qft_run_shard_cut_unit)");
        if (qft_run_fsdp_finish(&sh->fsdp, err)) return -1;
        /* the optimizer's slice is this rank's pieces; n counts the padded trainable
         * floats of one copy of the model, for the clipping norm's copy count */
        sh->len = sh->fsdp.n_t;
        sh->n = sh->len * (size_t)sh->group->world;
        sh->offset = sh->len * (size_t)sh->group->rank;
        return 0;
    }
    const size_t n = m->n_trainable;
    sh->n = n;
    sh->offset = 0, sh->len = n;
    if (!sh->vt || !sh->vt->plan) return 0; /* no plan: a full strategy on one rank */
    if (sh->vt->plan(sh->state, sh->dt, n, &sh->offset, &sh->len, err)) return -1;
    if (sh->offset > n || sh->len > n - sh->offset)
        return qft_err_setf(err, "shard plugin \"%s\": rank %d's slice [%zu, %zu) is outside "
                                 "the %zu trainable floats",
                            sh->name, sh->t->rank, sh->offset, sh->offset + sh->len, n);
    return 0;
}

int qft_run_shard_to_backend(qft_run_shard *sh, qft_err *err) {
    if (!sh->full || !sh->ops) return 0;
    return qft_run_fsdp_to_backend(&sh->fsdp, sh->ops, sh->offload, err);
}

float *qft_run_shard_opt_params(qft_run_shard *sh, qft_llama_model *m) {
    return sh->full ? sh->fsdp.shard_t : m->params + sh->offset;
}

float *qft_run_shard_opt_grads(qft_run_shard *sh, qft_llama_model *m) {
    return sh->full ? sh->fsdp.shard_g : m->grads + sh->offset;
}

void qft_run_shard_set_last_micro(qft_run_shard *sh, int last) {
    if (sh->full) sh->fsdp.sync = last;
}

int qft_run_shard_gather_model(qft_run_shard *sh, qft_err *err) {
    return sh->full ? qft_run_fsdp_gather_all(&sh->fsdp, err) : 0;
}

void qft_run_shard_memory(qft_run_shard *sh, const qft_llama_model *m, size_t opt_bytes,
                          int grad_accum, size_t *measured, size_t *expected) {
    if (sh->full) {
        const size_t fixed = qft_run_fsdp_shard_bytes(&sh->fsdp) + opt_bytes;
        *measured = fixed + sh->fsdp.peak;
        *expected = fixed + qft_run_fsdp_expected_peak(&sh->fsdp, grad_accum);
        return;
    }
    /* whole buffers: what the pages hold now, against their sizes */
    const size_t packed = qft_llama_weight_bytes(m) - m->n_params * sizeof(float);
    *measured = qft_vm_resident(m->params, m->n_params * sizeof(float)) +
                qft_vm_resident(m->grads, m->n_trainable * sizeof(float)) + packed + opt_bytes;
    *expected = (m->n_params + m->n_trainable) * sizeof(float) + packed + opt_bytes;
}

int qft_run_shard_reduce_grads(qft_run_shard *sh, float *grads, qft_err *err) {
    if (!sh->vt || !sh->vt->reduce_grads || sh->full) return 0;
    return sh->vt->reduce_grads(sh->state, sh->dt, grads, sh->n, err);
}

int qft_run_shard_clip(qft_run_shard *sh, float *slice, float max_norm, float *norm,
                       qft_err *err) {
    // slice (len) is its memory; NULL: the host's
    const qft_ops *ops = sh->offload ? NULL : sh->ops;
    if (sh->len == sh->n && !sh->full) {
        /* the whole sum is here (no_shard, or one rank): the one-process code path, bits
         * and all */
        *norm = qft_optim_clip_grad_norm_on(ops, slice, sh->n, max_norm);
        return 0;
    }
    /* (2): squares and floats of the slices, host doubles whatever holds the slices. A
     * hybrid strategy holds each slice on several machines alike; the floats summed over
     * ranks say how many times, to count it once. The backends' sumsq give the host's
     * bits. */
    double v[2] = {ops ? ops->sumsq(slice, sh->len) : qft_optim_grad_sumsq(slice, sh->len),
                   (double)sh->len};
    if (qft_transport_all_reduce_f64(sh->t, v, 2, QFT_REDUCE_SUM, err)) return -1;
    const double copies = sh->n ? v[1] / (double)sh->n : 1.0;
    if (copies < 1.0 || copies != floor(copies))
        return qft_err_setf(err, "shard plugin \"%s\": the ranks' slices hold %.0f floats, not "
                                 "a whole number of copies of the %zu trainable ones",
                            sh->name, v[1], sh->n);
    *norm = (float)sqrt(v[0] / copies);
    const float coef = qft_optim_clip_coef(*norm, max_norm);
    if (ops)
        ops->scale(slice, sh->len, coef);
    else
        qft_optim_scale(slice, sh->len, coef);
    return 0;
}

int qft_run_shard_gather_params(qft_run_shard *sh, float *params, qft_err *err) {
    /* full sharding: the pieces are the parameters; the next gather of a unit brings them */
    if (!sh->vt || !sh->vt->gather_params || sh->full) return 0;
    return sh->vt->gather_params(sh->state, sh->dt, params, sh->n, err);
}

int qft_run_shard_sum_f64(qft_run_shard *sh, double *v, size_t n, qft_err *err) {
    if (sh->t->world == 1) return 0;
    return qft_transport_all_reduce_f64(sh->t, v, n, QFT_REDUCE_SUM, err);
}

void qft_run_shard_close(qft_run_shard *sh, int failed, const char *why) {
    if (failed && sh->t && sh->t->world > 1) sh->t->vt->abort(sh->t, 1, why);
    if (sh->full) qft_run_fsdp_free(&sh->fsdp);
    if (sh->vt && sh->state) sh->vt->close(sh->state); /* with its sub-transports of dt */
    if (sh->dt && sh->dt != sh->t) sh->dt->vt->close(sh->dt);
    if (sh->t) sh->t->vt->close(sh->t);
    memset(sh, 0, sizeof *sh);
}

/* ---- the strategy's traffic, from the model's sizes ------------------------------------
 * Per rank and optimizer step, in the transport's bandwidth-optimal convention
 * (qft_transport_stats): all-gather (W-1) x the piece, reduce-scatter (W-1) x the block,
 * all-reduce (n - c) + (W-1) c elements for this rank's share c. */
static double ag_bytes(int W, double piece) { return (W - 1) * piece; }
static double ar_bytes(int W, int rank, size_t n, size_t e) {
    if (W <= 1) return 0;
    const size_t c = qft_transport_share(n, W, rank, NULL);
    return (double)(n - c) * (double)e + (double)(W - 1) * (double)c * (double)e;
}

double qft_run_shard_expected_bytes(const qft_run_shard *sh, const qft_llama_model *m,
                                    int grad_accum) {
    const qft_transport *t = sh->t;
    const int W = t->world, r = t->rank;
    if (W == 1) return 0;
    double b = ar_bytes(W, r, 2, sizeof(double)); /* the step's loss and token sums */
    if (sh->full || sh->len != sh->n) b += ar_bytes(W, r, 2, sizeof(double)); /* clipping */
    const char *s = sh->name;
    if (sh->full) {
        const int G = sh->group->world, L = m->n_units - 2;
        double gathered = 0, reduced = 0;
        for (int u = 0; u < m->n_units; u++) {
            const qft_llama_unit *un = &m->units[u];
            if (qft_run_fsdp_whole(&sh->fsdp, u)) continue; /* never moves */
            const double piece = (double)(un->t_len + un->f_len) * 4 / G + (double)un->q_len / G;
            /* every unit in forward; blocks again in backward (the embedding and the head
             * stay from forward into backward, or are not needed there) */
            gathered += ag_bytes(G, piece) * (u >= 1 && u <= L ? 2 : 1);
            if (un->t_len) {
                reduced += (double)(G - 1) * (double)(un->t_len / (size_t)G) * 4;
                if (sh->replicas)
                    reduced += ar_bytes(sh->replicas->world, sh->replicas->rank,
                                        un->t_len / (size_t)G, 4);
            }
        }
        return b + gathered * grad_accum + reduced;
    }
    const size_t n = sh->n;
    if (strcmp(s, "no_shard") == 0) return b + ar_bytes(W, r, n, 4);
    if (strcmp(s, "shard_grad_op") == 0 || strcmp(s, "hybrid_shard_grad_op") == 0) {
        const int S = strcmp(s, "shard_grad_op") == 0 ? W : t->node_size;
        const int l = S == W ? r : t->node_rank;
        const size_t block = n / (size_t)S, tail = n - (size_t)S * block;
        b += 2.0 * (S - 1) * (double)block * 4; /* reduce-scatter and all-gather */
        if (tail) b += ar_bytes(S, l, tail, 4) + (double)tail * 4; /* all-reduce, broadcast */
        if (S != W) b += ar_bytes(t->nodes, t->node_index, sh->len, 4); /* across machines */
        return b;
    }
    return -1; /* another plugin: its algorithm is its own */
}

