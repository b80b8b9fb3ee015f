/* Adapters on the model's linears: the frozen base offered to the plugin as
 * qft_linear_base (dense or packed products, weight rows for DoRA's norms and merging),
 * and attaching the plugin once the base weights are in. */
#include "cpu_ops.h"
#include "llama_internal.h"

#include <stdlib.h>

static qft_llama_linear base_of(const qft_llama_adapted *ad) {
    qft_llama_linear L = qft_llama_linear_of(ad->m, ad->layer, ad->k, 0);
    L.ad = NULL; /* the base alone */
    return L;
}

static int cb_forward(void *ctx, const float *x, int64_t N, float *y, int64_t ldy, float beta,
                      qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    qft_llama_linear L = base_of(ad);
    return qft_llama_base_fwd(qft_cpu_ops(), &L, x, (int)N, y, (int)ldy, beta, err);
}

static int cb_backward_input(void *ctx, const float *dy, int64_t ldy, int64_t N, float *dx,
                             float beta, qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    qft_llama_linear L = base_of(ad);
    return qft_llama_base_bwd_x(qft_cpu_ops(), &L, dy, (int)ldy, (int)N, dx, beta, err);
}

static int cb_weight_rows(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err) {
    const qft_llama_adapted *ad = ctx;
    qft_llama_linear L = base_of(ad);
    if (row0 < 0 || n < 0 || row0 + n > L.out)
        return qft_err_setf(err, "%s: weight rows [%lld, %lld) outside %d rows", ad->name,
                            (long long)row0, (long long)(row0 + n), L.out);
    if (L.w) {
        for (int64_t i = 0; i < n * L.in; i++) dst[i] = L.w[row0 * L.in + i];
        return 0;
    }
    return L.qvt->dequantize_rows(L.qw, row0, n, dst, err);
}

int qft_llama_attach_adapters(qft_llama_model *m, int init, uint64_t seed, qft_err *err) {
    if (!m->avt) return 0;
    if (!m->grads) return qft_err_setf(err, "attach adapters after qft_llama_alloc_grads");
    qft_rng root;
    qft_rng_seed(&root, seed);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int k = 0; k < QFT_LIN_COUNT; k++) {
            qft_llama_adapted *ad = m->adapted[l][k];
            if (!ad || ad->al) continue;
            ad->base.forward = cb_forward;
            ad->base.backward_input = cb_backward_input;
            ad->base.weight_rows = cb_weight_rows;
            /* one stream per linear, so a linear's init does not depend on which others
             * are adapted */
            qft_rng r;
            qft_rng_fork(&root, ad->name, &r);
            if (m->avt->attach(m->astate, &ad->base, ad->params, ad->n_params, init, &r, &ad->al,
                               err))
                return -1;
        }
    return 0;
}
