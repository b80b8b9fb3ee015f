/* Adapters on the model's linears: the frozen base offered to the plugin as
 * qft_linear_base (dense or packed products, weight rows for DoRA's norms and merging),
 * and attaching the plugin once the base weights are in. An adapter works on one copy of
 * the model: the host's (the cpu backend), or another backend's once the model moved
 * there; moving detaches it and attaches it again on the other copy. */
#include "cpu_ops.h"
#include "llama_internal.h"

#include <stdlib.h>

static const qft_ops *ops_of(const qft_llama_adapted *ad) {
    return ad->on_backend ? ad->m->ops : qft_cpu_ops();
}

/* The base alone, on the copy the adapter is attached to. */
static qft_llama_linear base_of(const qft_llama_adapted *ad) {
    const qft_llama_model *m = ad->m;
    qft_llama_linear L = qft_llama_linear_of(m, ad->layer, ad->k, 0);
    L.ad = NULL;
    if (!ad->on_backend && m->dev_params) {
        /* the views point at the backend's copy; the host's is the flat buffer */
        const qft_param_entry *e = &m->entries[m->lin_entry[ad->layer][ad->k]];
        if (e->role != QFT_ROLE_QUANTIZED) L.w = m->params + e->offset;
        L.ql = NULL;
    }
    return L;
}

static int cb_forward(void *ctx, const float *x, int64_t N, float *y, int64_t ldy, float beta,
                      qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    qft_llama_linear L = base_of(ad);
    return qft_llama_base_fwd(ops_of(ad), &L, x, (int)N, y, (int)ldy, beta, err);
}

static int cb_backward_input(void *ctx, const float *dy, int64_t ldy, int64_t N, float *dx,
                             float beta, qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    qft_llama_linear L = base_of(ad);
    return qft_llama_base_bwd_x(ops_of(ad), &L, dy, (int)ldy, (int)N, dx, beta, err);
}

static int cb_weight_rows(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    qft_llama_linear L = base_of(ad);
    if (row0 < 0 || n < 0 || row0 + n > L.out)
        return qft_err_setf(err, "%s: weight rows [%lld, %lld) outside %d rows", ad->name,
                            (long long)row0, (long long)(row0 + n), L.out);
    if (L.w) {
        ops_of(ad)->copy(dst, L.w + row0 * L.in, (size_t)(n * L.in));
        return 0;
    }
    if (L.ql) {
        ops_of(ad)->dequantize(L.ql, row0, n, dst);
        return 0;
    }
    return L.qvt->dequantize_rows(L.qw, row0, n, dst, err);
}

/* DoRA's norms in one read of W, by the backend, from W as it holds it: a layout there,
 * or the dense fp32 weight. */
static int cb_lowrank_row_norms(void *ctx, const float *A, const float *B, int64_t r,
                                float scale, float *norm, qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    const qft_llama_linear L = base_of(ad);
    const qft_ops *ops = ops_of(ad);
    if (!ops->lowrank_row_norms || (!L.ql && !L.w))
        return qft_err_setf(err, "%s: backend \"%s\" has no low-rank row norms for this weight",
                            ad->name, ops->name);
    ops->lowrank_row_norms(norm, L.ql, L.ql ? NULL : L.w, L.out, L.in, A, B, r, scale);
    return 0;
}

/* Attaches one linear's adapter on the copy ad->on_backend names. */
static int attach_one(qft_llama_model *m, qft_llama_adapted *ad, int init, qft_rng *r,
                      qft_err *err) {
    ad->base.forward = cb_forward;
    ad->base.backward_input = cb_backward_input;
    ad->base.weight_rows = cb_weight_rows;
    ad->base.ops = ops_of(ad);
    /* offered on a backend without host memory, for a weight it holds (a layout or a dense
     * weight there): the norm is recomputed there every optimizer step. On the cpu backend
     * DoRA keeps its own cached expansion, and its exact rows go faster through BLAS. */
    const qft_llama_linear L = base_of(ad);
    ad->base.lowrank_row_norms = ad->base.ops->lowrank_row_norms &&
                                         !ad->base.ops->host_memory && (L.ql || L.w)
                                     ? cb_lowrank_row_norms
                                     : NULL;
    return m->avt->attach(m->astate, &ad->base, ad->params, ad->n_params, init, r, &ad->al, err);
}

/* Block `only`'s linears, or with only < 0 every block's. */
static int attach_blocks(qft_llama_model *m, int only, int init, uint64_t seed, qft_err *err) {
    if (!m->avt) return 0;
    if (!m->grads) return qft_err_setf(err, "attach adapters after qft_llama_alloc_grads");
    qft_rng root;
    qft_rng_seed(&root, seed);
    for (int l = only < 0 ? 0 : only; l < (only < 0 ? m->cfg.num_hidden_layers : only + 1);
         l++)
        for (int k = 0; k < QFT_LIN_COUNT; k++) {
            qft_llama_adapted *ad = m->adapted[l][k];
            if (!ad || ad->al) continue;
            /* one stream per linear, so a linear's init does not depend on which others
             * are adapted */
            qft_rng r;
            qft_rng_fork(&root, ad->name, &r);
            if (attach_one(m, ad, init, &r, err)) return -1;
        }
    return 0;
}

int qft_llama_attach_adapters(qft_llama_model *m, int init, uint64_t seed, qft_err *err) {
    return attach_blocks(m, -1, init, seed, err);
}

int qft_llama_attach_unit_adapters(qft_llama_model *m, int u, int init, uint64_t seed,
                                   qft_err *err) {
    /* units 0 and L + 1 (embedding, head) carry no adapted linears */
    if (u < 1 || u > m->cfg.num_hidden_layers) return 0;
    return attach_blocks(m, u - 1, init, seed, err);
}

int qft_llama_adapters_rebind(qft_llama_model *m, int on_backend, qft_err *err) {
    if (!m->adapted) return 0;
    float *params = on_backend ? m->dev_params : m->params;
    float *grads = on_backend ? m->dev_grads : m->grads;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int k = 0; k < QFT_LIN_COUNT; k++) {
            qft_llama_adapted *ad = m->adapted[l][k];
            if (!ad || !ad->al) continue;
            m->avt->detach(ad->al);
            ad->al = NULL;
            ad->on_backend = on_backend;
            for (int i = 0; i < ad->n_params; i++) {
                const qft_param_entry *e = &m->entries[ad->first_entry + i];
                ad->params[i].data = params + e->offset;
                ad->params[i].grad = grads ? grads + e->offset : NULL;
            }
            qft_rng unused = {{0}};
            if (attach_one(m, ad, 0, &unused, err)) return -1;
        }
    return 0;
}

int qft_llama_adapters_to_host(qft_llama_model *m, qft_err *err) {
    return qft_llama_adapters_rebind(m, 0, err);
}
