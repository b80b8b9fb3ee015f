/* Full sharding of the model's units (see run_fsdp.h). */
#include "run_fsdp.h"

#include <stdlib.h>
#include <string.h>

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

/* The model buffers' resident bytes now (mincore), folded into the peak. */
static void measure(qft_run_fsdp *f) {
    const qft_llama_model *m = f->m;
    const size_t now = qft_vm_resident(m->params, m->n_params * sizeof(float)) +
                       qft_vm_resident(m->grads, m->n_trainable * sizeof(float)) +
                       qft_vm_resident(m->packed, m->packed_cap);
    if (now > f->peak) f->peak = now;
}

static int gather(qft_run_fsdp *f, int u, qft_err *err) {
    if (f->gathered[u]) return 0;
    qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    const size_t G = (size_t)f->G;
    // every rank's piece lands at its place in the unit's full range
    if (qft_transport_all_gather(f->group, f->shard_t + f->pt[u], m->params + un->t_off,
                                 un->t_len / G * sizeof(float), err) ||
        qft_transport_all_gather(f->group, f->shard_f + f->pf[u], m->params + un->f_off,
                                 un->f_len / G * sizeof(float), err) ||
        qft_transport_all_gather(f->group, f->shard_q + f->pq[u], un->q, un->q_len / G, err))
        return -1;
    f->gathered[u] = 1;
    measure(f);
    return 0;
}

static void release(qft_run_fsdp *f, int u) {
    if (!f->gathered[u]) return;
    qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    /* whole pages: a unit's ranges start on a page and nothing else shares their last */
    const size_t page = qft_vm_page();
    qft_vm_release(m->params + un->t_off, round_up(un->t_len * sizeof(float), page));
    qft_vm_release(m->params + un->f_off, round_up(un->f_len * sizeof(float), page));
    if (un->q_cap) qft_vm_release(un->q, un->q_cap);
    f->gathered[u] = 0;
}

/* The unit's gradients, summed over the group into this rank's piece, then over the
 * replicas; the full range goes back to zero pages for the next step. Before the last
 * micro-batch of a step nothing moves: gradients accumulate in the full range. */
static int grads_done(qft_run_fsdp *f, int u, qft_err *err) {
    qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    if (!f->sync || un->t_len == 0) return 0;
    measure(f);
    const size_t piece = un->t_len / (size_t)f->G;
    float *g = f->shard_g + f->pt[u]; // (piece)
    if (qft_transport_reduce_scatter_f32(f->group, m->grads + un->t_off, g, piece, err) ||
        (f->replicas &&
         qft_transport_all_reduce_f32(f->replicas, g, piece, QFT_REDUCE_SUM, err)))
        return -1;
    qft_vm_release(m->grads + un->t_off, round_up(un->t_len * sizeof(float), qft_vm_page()));
    return 0;
}

static int hook(void *ctx, int event, int u, qft_err *err) {
    qft_run_fsdp *f = ctx;
    switch (event) {
    case QFT_UNIT_GATHER: return gather(f, u, err);
    case QFT_UNIT_RELEASE: release(f, u); return 0;
    case QFT_UNIT_GRADS_DONE: return grads_done(f, u, err);
    default: return qft_err_setf(err, "full sharding: unknown unit event %d", event);
    }
}

int qft_run_fsdp_init(qft_run_fsdp *f, qft_llama_model *m, const qft_transport *group,
                      const qft_transport *replicas, qft_err *err) {
    memset(f, 0, sizeof *f);
    f->m = m, f->group = group, f->replicas = replicas;
    f->G = group->world, f->r = group->rank;
    if (!m->units)
        return qft_err_setf(err, "full sharding: the model was not built with the unit layout");
    if (m->unit_pad % f->G != 0)
        return qft_err_setf(err, "full sharding: unit padding %d is not a multiple of the "
                                 "group's %d ranks", m->unit_pad, f->G);
    if (qft_llama_place_packed(m, err)) return -1;
    const int U = m->n_units;
    const size_t G = (size_t)f->G, r = (size_t)f->r;
    f->pt = calloc((size_t)U, sizeof *f->pt);
    f->pf = calloc((size_t)U, sizeof *f->pf);
    f->pq = calloc((size_t)U, sizeof *f->pq);
    f->gathered = calloc((size_t)U, sizeof *f->gathered);
    if (!f->pt || !f->pf || !f->pq || !f->gathered) goto oom;
    for (int u = 0; u < U; u++) {
        const qft_llama_unit *un = &m->units[u];
        f->pt[u] = f->n_t, f->n_t += un->t_len / G;
        f->pf[u] = f->n_f, f->n_f += un->f_len / G;
        f->pq[u] = f->n_q, f->n_q += un->q_len / G;
    }
    f->shard_t = qft_mem_calloc((f->n_t ? f->n_t : 1) * sizeof(float), "parameter shard");
    f->shard_g = qft_mem_calloc((f->n_t ? f->n_t : 1) * sizeof(float), "gradient shard");
    f->shard_f = qft_mem_calloc((f->n_f ? f->n_f : 1) * sizeof(float), "frozen shard");
    f->shard_q = qft_mem_calloc(f->n_q ? f->n_q : 1, "packed shard");
    if (!f->shard_t || !f->shard_g || !f->shard_f || !f->shard_q) goto oom;
    for (int u = 0; u < U; u++) {
        const qft_llama_unit *un = &m->units[u];
        const size_t pt = un->t_len / G, pf = un->f_len / G, pq = un->q_len / G;
        memcpy(f->shard_t + f->pt[u], m->params + un->t_off + r * pt, pt * sizeof(float));
        memcpy(f->shard_f + f->pf[u], m->params + un->f_off + r * pf, pf * sizeof(float));
        if (pq) memcpy(f->shard_q + f->pq[u], un->q + r * pq, pq);
        f->gathered[u] = 1;
        release(f, u);
    }
    qft_vm_release(m->grads, m->n_trainable * sizeof(float));
    m->unit_hook = hook, m->unit_ctx = f;
    f->sync = 1;
    measure(f);
    f->peak = 0; /* the load is over: the peak is training's */
    return 0;
oom:
    qft_run_fsdp_free(f);
    return qft_err_setf(err, "full sharding: out of memory for this rank's shard");
}

int qft_run_fsdp_gather_all(qft_run_fsdp *f, qft_err *err) {
    for (int u = 0; u < f->m->n_units; u++)
        if (gather(f, u, err)) return -1;
    /* the trainable pieces are the optimizer's: the full ranges now hold its update */
    return 0;
}

/* Replays the order of the model's unit events (llama_forward.c, llama_backward.c) with
 * the units' page-rounded sizes: parameters resident from GATHER to RELEASE, a unit's
 * gradients from its backward to its reduce-scatter (or the whole step before the last
 * micro-batch). */
size_t qft_run_fsdp_expected_peak(const qft_run_fsdp *f, int grad_accum) {
    const qft_llama_model *m = f->m;
    const int U = m->n_units, L = U - 2, tied = m->cfg.tie_word_embeddings;
    const size_t page = qft_vm_page();
    size_t params = 0, grads = 0, peak = 0;
#define P(u) (round_up(m->units[u].t_len * 4, page) + round_up(m->units[u].f_len * 4, page) + \
              round_up(m->units[u].q_len, page))
#define GR(u) round_up(m->units[u].t_len * 4, page)
#define SEE() (peak = params + grads > peak ? params + grads : peak)
    for (int micro = 0; micro < (grad_accum > 1 ? 2 : 1); micro++) {
        const int sync = micro == (grad_accum > 1 ? 1 : 0);
        params += P(0), SEE();
        if (!tied) params -= P(0);
        for (int u = 1; u <= L; u++) params += P(u), SEE(), params -= P(u);
        params += P(L + 1), SEE();
        /* backward: a unit's gradients are resident once its backward wrote them */
        if (micro == 0) grads += GR(L + 1) + (tied ? GR(0) : 0), SEE();
        if (sync) grads -= GR(L + 1);
        params -= P(L + 1);
        if (tied) params -= P(0);
        for (int u = L; u >= 1; u--) {
            params += P(u);
            if (micro == 0) grads += GR(u);
            SEE();
            if (sync) grads -= GR(u);
            params -= P(u);
        }
        if (micro == 0 && !tied) grads += GR(0), SEE();
        if (sync) grads -= GR(0);
    }
#undef P
#undef GR
#undef SEE
    return peak;
}

size_t qft_run_fsdp_shard_bytes(const qft_run_fsdp *f) {
    return (2 * f->n_t + f->n_f) * sizeof(float) + f->n_q;
}

void qft_run_fsdp_free(qft_run_fsdp *f) {
    if (f->m && f->m->unit_ctx == f) f->m->unit_hook = NULL, f->m->unit_ctx = NULL;
    free(f->pt);
    free(f->pf);
    free(f->pq);
    free(f->gathered);
    qft_mem_free(f->shard_t);
    qft_mem_free(f->shard_g);
    qft_mem_free(f->shard_f);
    qft_mem_free(f->shard_q);
    memset(f, 0, sizeof *f);
}
