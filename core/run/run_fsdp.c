/* Full sharding of the model's units (see run_fsdp.h). */
#include "run_fsdp.h"

#include "qft_ops.h"

#include <stdlib.h>
#include <string.h>

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

/* The model buffers' resident bytes now, folded into the peak: on the host the pages
 * mincore finds, on a backend the bytes committed there. */
static void measure(qft_run_fsdp *f) {
    const qft_llama_model *m = f->m;
    const size_t now = f->ops ? f->committed
                              : qft_vm_resident(m->params, m->n_params * sizeof(float)) +
                                    qft_vm_resident(m->grads, m->n_trainable * sizeof(float)) +
                                    qft_vm_resident(m->packed, m->packed_cap);
    if (now > f->peak) f->peak = now;
}

/* ---- the unit ranges in the memory the passes use --------------------------------------
 * The host's buffers (qft_vm_*: pages appear on first write and go at release), or the
 * backend's mirrors of them (dev_params, dev_grads, dev_packed: memory behind a range only
 * between vm_commit and vm_decommit). Ranges are whole alignment units: each starts on one
 * and nothing else shares its last. */
typedef struct unit_range {
    void *p;      /* in the passes' memory */
    size_t bytes; /* what a commit or release covers */
} unit_range;

static unit_range t_range(const qft_run_fsdp *f, int u) {
    const qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    float *base = f->ops ? m->dev_params : m->params;
    return (unit_range){base + un->t_off, round_up(un->t_len * sizeof(float), m->unit_align)};
}
static unit_range f_range(const qft_run_fsdp *f, int u) {
    const qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    float *base = f->ops ? m->dev_params : m->params;
    return (unit_range){base + un->f_off, round_up(un->f_len * sizeof(float), m->unit_align)};
}
static unit_range q_range(const qft_run_fsdp *f, int u) {
    const qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    if (!un->q_len) return (unit_range){NULL, 0};
    /* the placed bytes, not the unit's whole room (q_cap): nothing lies past q_len */
    uint8_t *base = f->ops ? m->dev_packed : m->packed;
    return (unit_range){base + (un->q - m->packed), round_up(un->q_len, m->unit_align)};
}
static unit_range g_range(const qft_run_fsdp *f, int u) {
    const qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    float *base = f->ops ? m->dev_grads : m->grads;
    return (unit_range){base + un->t_off, round_up(un->t_len * sizeof(float), m->unit_align)};
}

/* Memory behind r on the backend; nothing to do on the host, whose pages come on write. */
static int commit(qft_run_fsdp *f, unit_range r, const char *what, qft_err *err) {
    if (!f->ops || !r.bytes) return 0;
    if (f->ops->vm_commit(r.p, r.bytes, what)) {
        /* the backend's own reason where it keeps one (CUDA: the driver's call and code) */
        char why[1024] = "out of memory";
        if (f->ops->status) f->ops->status(0, why, sizeof why);
        return qft_err_setf(err, "full sharding: backend \"%s\" could not commit %zu bytes of "
                                 "%s: %s",
                            f->ops->name, r.bytes, what, why);
    }
    f->committed += r.bytes;
    return 0;
}

static void drop(qft_run_fsdp *f, unit_range r) {
    if (!r.bytes) return;
    if (f->ops) {
        f->ops->vm_decommit(r.p, r.bytes);
        f->committed -= r.bytes;
    } else {
        qft_vm_release(r.p, r.bytes);
    }
}

/* Where unit u's pieces (bt, bf, bq bytes) lie in the offload scratch: trainable at 0,
 * frozen at *at_f, packed at *at_q, 64-byte aligned. Returns the bytes they take. */
static size_t scratch_layout(const qft_run_fsdp *f, int u, size_t *bt, size_t *bf, size_t *bq,
                             size_t *at_f, size_t *at_q) {
    const qft_llama_unit *un = &f->m->units[u];
    const size_t G = (size_t)f->G;
    *bt = un->t_len / G * sizeof(float), *bf = un->f_len / G * sizeof(float);
    *bq = un->q_len / G;
    *at_f = round_up(*bt, 64), *at_q = *at_f + round_up(*bf, 64);
    return *at_q + *bq;
}

/* This rank's pieces of unit u, where the group's transport reads them: the shard
 * buffers, or with offload (whose shards are the host's) copies in the backend's scratch. */
static void pieces_of(qft_run_fsdp *f, int u, const void **pt, const void **pf,
                      const void **pq) {
    *pt = f->shard_t + f->pt[u], *pf = f->shard_f + f->pf[u], *pq = f->shard_q + f->pq[u];
    if (!f->offload) return;
    size_t bt, bf, bq, at_f, at_q;
    scratch_layout(f, u, &bt, &bf, &bq, &at_f, &at_q);
    uint8_t *s = f->scratch; // (bt | bf | bq)
    if (bt) f->ops->upload(s, *pt, bt);
    if (bf) f->ops->upload(s + at_f, *pf, bf);
    if (bq) f->ops->upload(s + at_q, *pq, bq);
    *pt = s, *pf = s + at_f, *pq = s + at_q;
}

static int gather(qft_run_fsdp *f, int u, qft_err *err) {
    if (f->gathered[u] || qft_run_fsdp_whole(f, u)) return 0;
    qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    const unit_range t = t_range(f, u), fr = f_range(f, u), q = q_range(f, u);
    if (commit(f, t, "a gathered unit's parameters", err)) return -1;
    if (commit(f, fr, "a gathered unit's frozen weights", err)) {
        drop(f, t);
        return -1;
    }
    if (commit(f, q, "a gathered unit's packed weights", err)) {
        drop(f, t), drop(f, fr);
        return -1;
    }
    f->gathered[u] = 1; /* committed: a failed gather below still releases it */
    // every rank's piece lands at its place in the unit's full range
    const size_t G = (size_t)f->G;
    const void *pt, *pf, *pq;
    pieces_of(f, u, &pt, &pf, &pq);
    if (qft_transport_all_gather(f->group, pt, t.p, un->t_len / G * sizeof(float), err) ||
        qft_transport_all_gather(f->group, pf, fr.p, un->f_len / G * sizeof(float), err) ||
        qft_transport_all_gather(f->group, pq, q.p, un->q_len / G, err))
        return -1;
    measure(f);
    return 0;
}

static void release(qft_run_fsdp *f, int u) {
    if (!f->gathered[u]) return;
    drop(f, t_range(f, u));
    drop(f, f_range(f, u));
    drop(f, q_range(f, u));
    f->gathered[u] = 0;
}

/* Memory for the unit's gradients before its backward writes them (the backend's; the
 * host's pages come on write), kept until they are reduced. */
static int grads_begin(qft_run_fsdp *f, int u, qft_err *err) {
    if (f->grads_held[u]) return 0;
    if (commit(f, g_range(f, u), "a unit's gradients", err)) return -1;
    f->grads_held[u] = 1;
    return 0;
}

static void grads_drop(qft_run_fsdp *f, int u) {
    if (!f->grads_held[u]) return;
    drop(f, g_range(f, u));
    f->grads_held[u] = 0;
}

/* The unit's gradients, summed over the group into this rank's piece, then over the
 * replicas; the full range goes back to zeros for the next step. Before the last
 * micro-batch of a step nothing moves: gradients accumulate in the full range. */
static int grads_done(qft_run_fsdp *f, int u, qft_err *err) {
    qft_llama_model *m = f->m;
    const qft_llama_unit *un = &m->units[u];
    if (!f->sync || un->t_len == 0) return 0;
    /* a backward that added nothing (no target token) still joins the reduce-scatter */
    if (grads_begin(f, u, err)) return -1;
    measure(f);
    const size_t piece = un->t_len / (size_t)f->G;
    /* offloaded, the piece is summed in the backend's scratch and goes down to its shard */
    float *g = f->offload ? (float *)f->scratch : f->shard_g + f->pt[u]; // (piece)
    if (qft_transport_reduce_scatter_f32(f->group, g_range(f, u).p, g, piece, err) ||
        (f->replicas &&
         qft_transport_all_reduce_f32(f->replicas, g, piece, QFT_REDUCE_SUM, err)))
        return -1;
    if (f->offload) f->ops->download(f->shard_g + f->pt[u], g, piece * sizeof(float));
    grads_drop(f, u);
    return 0;
}

static int hook(void *ctx, int event, int u, qft_err *err) {
    qft_run_fsdp *f = ctx;
    switch (event) {
    case QFT_UNIT_GATHER: return gather(f, u, err);
    case QFT_UNIT_RELEASE: release(f, u); return 0;
    case QFT_UNIT_GRADS_BEGIN: return grads_begin(f, u, err);
    case QFT_UNIT_GRADS_DONE: return grads_done(f, u, err);
    default: return qft_err_setf(err, "full sharding: unknown unit event %d", event);
    }
}

int qft_run_fsdp_begin(qft_run_fsdp *f, qft_llama_model *m, const qft_transport *group,
                       const qft_transport *replicas, int embed_whole, qft_err *err) {
    memset(f, 0, sizeof *f);
    f->m = m, f->group = group, f->replicas = replicas;
    f->G = group->world, f->r = group->rank;
    if (!m->units)
        return qft_err_setf(err, "full sharding: the model was not built with the unit layout");
    /* the embedding alone in its unit, frozen: no gradients or packed bytes to move */
    f->embed_whole = embed_whole && m->units[0].t_len == 0;
    for (int i = 0; f->embed_whole && i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (qft_llama_unit_of(m, e) == 0 &&
            (e->role == QFT_ROLE_QUANTIZED || qft_llama_unit_bf16(m, e)))
            f->embed_whole = 0;
    }
    if (m->unit_pad % f->G != 0)
        return qft_err_setf(err, "full sharding: unit padding %d is not a multiple of the "
                                 "group's %d ranks", m->unit_pad, f->G);
    if (qft_llama_packed_begin(m, err)) return -1;
    const int U = m->n_units;
    const size_t G = (size_t)f->G;
    f->pt = calloc((size_t)U, sizeof *f->pt);
    f->pf = calloc((size_t)U, sizeof *f->pf);
    f->pq = calloc((size_t)U, sizeof *f->pq);
    f->gathered = calloc((size_t)U, sizeof *f->gathered);
    f->grads_held = calloc((size_t)U, sizeof *f->grads_held);
    if (!f->pt || !f->pf || !f->pq || !f->gathered || !f->grads_held) goto oom;
    for (int u = 0; u < U; u++) {
        const qft_llama_unit *un = &m->units[u];
        if (qft_run_fsdp_whole(f, u)) continue; /* no pieces: offsets 0, never read */
        f->pt[u] = f->n_t, f->n_t += un->t_len / G;
        f->pf[u] = f->n_f, f->n_f += un->f_len / G;
        /* the packed pieces' offsets come as units are placed (qft_run_fsdp_cut) */
    }
    f->shard_t = qft_mem_calloc((f->n_t ? f->n_t : 1) * sizeof(float), "parameter shard");
    f->shard_g = qft_mem_calloc((f->n_t ? f->n_t : 1) * sizeof(float), "gradient shard");
    f->shard_f = qft_mem_calloc((f->n_f ? f->n_f : 1) * sizeof(float), "frozen shard");
    /* address space for every unit's packed room over G (a bound until the units are
     * quantized): the pages this rank's pieces fill are the shard */
    f->shard_q_cap = m->packed_cap / G + 64;
    f->shard_q = qft_vm_reserve(f->shard_q_cap, err);
    if (!f->shard_t || !f->shard_g || !f->shard_f || !f->shard_q) goto oom;
    return 0;
oom:
    qft_run_fsdp_free(f);
    return qft_err_setf(err, "full sharding: out of memory for this rank's shard");
}

/* The load's memory now: the model buffers' resident pages and the pieces cut so far. */
static void measure_load(qft_run_fsdp *f) {
    const qft_llama_model *m = f->m;
    const size_t now = qft_vm_resident(m->params, m->n_params * sizeof(float)) +
                       qft_vm_resident(m->grads, m->n_trainable * sizeof(float)) +
                       qft_vm_resident(m->packed, m->packed_used) + f->load_cut;
    if (now > f->load_peak) f->load_peak = now;
}

int qft_run_fsdp_cut(qft_run_fsdp *f, int u, qft_err *err) {
    qft_llama_model *m = f->m;
    if (u != f->n_cut)
        return qft_err_setf(err, "full sharding: unit %d cut out of order (unit %d is next)",
                            u, f->n_cut);
    if (qft_llama_place_unit(m, u, err)) return -1;
    f->n_cut++;
    const qft_llama_unit *un = &m->units[u];
    const size_t G = (size_t)f->G, r = (size_t)f->r;
    /* every unit's ranges: what the whole model would hold on this rank */
    const size_t whole = round_up(un->t_len * sizeof(float), m->unit_align) +
                         round_up(un->f_len * sizeof(float), m->unit_align) +
                         round_up(un->q_len, m->unit_align);
    f->load_whole += whole;
    if (whole > f->load_largest) f->load_largest = whole;
    if (qft_run_fsdp_whole(f, u)) { /* its host range stays as loaded */
        measure_load(f);
        return 0;
    }
    const size_t pt = un->t_len / G, pf = un->f_len / G, pq = un->q_len / G;
    if (f->n_q + pq > f->shard_q_cap)
        return qft_err_setf(err, "full sharding: unit %d's packed piece overflows the shard's "
                                 "%zu reserved bytes", u, f->shard_q_cap);
    f->pq[u] = f->n_q, f->n_q += pq;
    memcpy(f->shard_t + f->pt[u], m->params + un->t_off + r * pt, pt * sizeof(float));
    memcpy(f->shard_f + f->pf[u], m->params + un->f_off + r * pf, pf * sizeof(float));
    if (pq) memcpy(f->shard_q + f->pq[u], un->q + r * pq, pq);
    f->load_cut += (pt + pf) * sizeof(float) + pq;
    measure_load(f); /* the unit still whole: the load's high point for it */
    f->gathered[u] = 1;
    release(f, u);
    return 0;
}

int qft_run_fsdp_finish(qft_run_fsdp *f, qft_err *err) {
    qft_llama_model *m = f->m;
    if (f->n_cut != m->n_units)
        return qft_err_setf(err, "full sharding: %d of the model's %d units were cut",
                            f->n_cut, m->n_units);
    qft_llama_packed_end(m);
    qft_vm_release(m->grads, m->n_trainable * sizeof(float));
    f->load_rss = qft_mem_peak_rss();
    m->unit_hook = hook, m->unit_ctx = f;
    f->sync = 1;
    measure(f);
    f->peak = 0; /* the load is over: the peak is training's */
    return 0;
}

/* A host shard buffer's contents in new backend memory; the host's is freed. */
static void *to_backend(const qft_ops *ops, void *host, size_t bytes, const char *what) {
    void *d = ops->alloc(bytes ? bytes : 1, what);
    if (d && bytes) ops->upload(d, host, bytes);
    if (d) qft_mem_free(host);
    return d;
}

int qft_run_fsdp_to_backend(qft_run_fsdp *f, const qft_ops *ops, int offload, qft_err *err) {
    qft_llama_model *m = f->m;
    if (m->ops != ops || !m->dev_params || !m->dev_grads)
        return qft_err_setf(err, "full sharding: the model is not on backend \"%s\" with the "
                                 "unit layout",
                            ops->name);
    if (offload) {
        /* the shard buffers stay; a scratch for one unit's pieces carries them up (and a
         * unit's summed gradient piece down) */
        size_t bytes = 64;
        for (int u = 0; u < m->n_units; u++) {
            size_t bt, bf, bq, at_f, at_q;
            const size_t need = scratch_layout(f, u, &bt, &bf, &bq, &at_f, &at_q);
            if (need > bytes) bytes = need;
        }
        f->scratch = ops->alloc(bytes, "full sharding's piece scratch");
        if (!f->scratch)
            return qft_err_setf(err, "full sharding: backend \"%s\" is out of memory for a "
                                     "%zu-byte scratch",
                                ops->name, bytes);
        f->ops = ops, f->offload = 1;
        f->peak = 0;
        return 0;
    }
    const size_t bt = (f->n_t ? f->n_t : 1) * sizeof(float);
    float *t = to_backend(ops, f->shard_t, bt, "parameter shard");
    if (t) f->shard_t = t;
    float *g = t ? to_backend(ops, f->shard_g, bt, "gradient shard") : NULL;
    if (g) f->shard_g = g;
    float *fr = g ? to_backend(ops, f->shard_f, (f->n_f ? f->n_f : 1) * sizeof(float),
                               "frozen shard")
                  : NULL;
    if (fr) f->shard_f = fr;
    uint8_t *q = fr ? ops->alloc(f->n_q ? f->n_q : 1, "packed shard") : NULL;
    if (q) {
        if (f->n_q) ops->upload(q, f->shard_q, f->n_q);
        qft_vm_free(f->shard_q, f->shard_q_cap); /* a reservation, not qft_mem's */
        f->shard_q = q;
    }
    if (!q) {
        /* the buffers moved so far are the backend's, the rest still the host's */
        if (t) ops->free(t), f->shard_t = NULL;
        if (g) ops->free(g), f->shard_g = NULL;
        if (fr) ops->free(fr), f->shard_f = NULL;
        return qft_err_setf(err, "full sharding: backend \"%s\" is out of memory for this "
                                 "rank's %zu-byte shard",
                            ops->name, qft_run_fsdp_shard_bytes(f));
    }
    f->ops = ops;
    f->peak = 0;
    return 0;
}

int qft_run_fsdp_gather_all(qft_run_fsdp *f, qft_err *err) {
    qft_llama_model *m = f->m;
    for (int u = 0; u < m->n_units; u++) {
        if (qft_run_fsdp_whole(f, u)) continue; /* whole in the host's buffers already */
        if (gather(f, u, err)) return -1;
        if (!f->ops) continue; /* the host's ranges are whole now */
        /* a unit at a time through the backend, so that its memory holds one unit more at
         * most; the host's ranges (released pages) fill as the downloads write them */
        const qft_llama_unit *un = &m->units[u];
        if (un->t_len)
            f->ops->download(m->params + un->t_off, t_range(f, u).p, un->t_len * sizeof(float));
        if (un->f_len)
            f->ops->download(m->params + un->f_off, f_range(f, u).p, un->f_len * sizeof(float));
        if (un->q_len) f->ops->download(un->q, q_range(f, u).p, un->q_len);
        qft_llama_unit_widen_bf16(m, u); /* bf16 weights back in their fp32 slots */
        release(f, u);
    }
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
    /* the host's pages, or the backend's commits: whole alignment units */
    const size_t page = f->ops ? m->unit_align : qft_vm_page();
    size_t params = 0, grads = 0, peak = 0;
#define P(u) (qft_run_fsdp_whole(f, u) ? 0 : \
              round_up(m->units[u].t_len * 4, page) + round_up(m->units[u].f_len * 4, page) + \
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
    /* a run that stopped in a pass may hold units: the backend's reservations can only go
     * once nothing is committed in them */
    if (f->ops && f->gathered && f->grads_held)
        for (int u = 0; u < f->m->n_units; u++) release(f, u), grads_drop(f, u);
    free(f->pt);
    free(f->pf);
    free(f->pq);
    free(f->gathered);
    free(f->grads_held);
    if (f->scratch) f->ops->free(f->scratch);
    if (f->ops && !f->offload) {
        f->ops->free(f->shard_t);
        f->ops->free(f->shard_g);
        f->ops->free(f->shard_f);
        f->ops->free(f->shard_q);
    } else {
        qft_mem_free(f->shard_t);
        qft_mem_free(f->shard_g);
        qft_mem_free(f->shard_f);
        qft_vm_free(f->shard_q, f->shard_q_cap);
    }
    memset(f, 0, sizeof *f);
}
