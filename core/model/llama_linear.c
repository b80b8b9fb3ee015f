/* The linears of a block: dense, trainable or frozen, or packed by a quantizer plugin.
 * Groups that share an input (q/k/v, gate/up) are one GEMM when their dense weights are
 * adjacent in memory, which the flat parameter table guarantees; otherwise one product
 * per member, the packed ones computed tile by tile (core/qlinear) without a dense copy
 * of the whole weight. */
#include "qlinear.h"
#include "llama_internal.h"

qft_llama_linear qft_llama_linear_of(const qft_llama_model *m, int l, int k, int grads) {
    const qft_param_entry *e = &m->entries[m->lin_entry[l][k]];
    const qft_llama_layer_ptrs *p = &m->p.layers[l];
    const qft_llama_layer_ptrs *g = grads && m->g.layers ? &m->g.layers[l] : NULL;
    const float *w[QFT_LIN_COUNT] = {p->wq, p->wk, p->wv, p->wo, p->wgate, p->wup, p->wdown};
    float *dw[QFT_LIN_COUNT] = {0};
    if (g) {
        float *t[QFT_LIN_COUNT] = {g->wq, g->wk, g->wv, g->wo, g->wgate, g->wup, g->wdown};
        for (int i = 0; i < QFT_LIN_COUNT; i++) dw[i] = t[i];
    }
    qft_llama_linear lin = {.out = (int)e->shape[0], .in = (int)e->shape[1], .w = w[k],
                            .dw = dw[k], .ad = m->adapted ? m->adapted[l][k] : NULL};
    if (e->role == QFT_ROLE_QUANTIZED) lin.qvt = m->qvt, lin.qw = e->qw;
    if (e->ql) lin.ql = e->ql, lin.qtile = m->qtile, lin.qtile_floats = m->qtile_floats;
    return lin;
}

const qft_param_entry *qft_llama_outer_entry(const qft_llama_model *m, int field) {
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i].layer == -1 && m->entries[i].field == field) return &m->entries[i];
    return NULL;
}

/* The backend layout of the embedding (field 0) or the head (field 2), NULL when none. */
static const qft_qlayout *outer_layout(const qft_llama_model *m, int field) {
    const qft_param_entry *e = qft_llama_outer_entry(m, field);
    return e ? e->ql : NULL;
}

qft_llama_linear qft_llama_head_of(const qft_llama_model *m) {
    qft_llama_linear lin = {.out = m->cfg.vocab_size, .in = m->cfg.hidden_size,
                            .w = m->p.lm_head};
    if (!lin.w) /* kept as bf16 on a backend */
        lin.ql = outer_layout(m, 2), lin.qtile = m->qtile, lin.qtile_floats = m->qtile_floats;
    return lin;
}

const uint16_t *qft_llama_embed_bf16(const qft_llama_model *m) {
    const qft_qlayout *ql = outer_layout(m, 0);
    return ql ? ql->buf[QFT_QL_BF16_VALUES] : NULL;
}

qft_llama_lin_group qft_llama_qkv_group(const qft_llama_model *m, int l, int grads) {
    return (qft_llama_lin_group){3,
                                 {qft_llama_linear_of(m, l, QFT_LIN_Q, grads),
                                  qft_llama_linear_of(m, l, QFT_LIN_K, grads),
                                  qft_llama_linear_of(m, l, QFT_LIN_V, grads)}};
}

qft_llama_lin_group qft_llama_gu_group(const qft_llama_model *m, int l, int grads) {
    return (qft_llama_lin_group){2,
                                 {qft_llama_linear_of(m, l, QFT_LIN_GATE, grads),
                                  qft_llama_linear_of(m, l, QFT_LIN_UP, grads)}};
}

qft_llama_lin_group qft_llama_one_group(const qft_llama_model *m, int l, int k, int grads) {
    return (qft_llama_lin_group){1, {qft_llama_linear_of(m, l, k, grads)}};
}

/* The members' dense weights (which = 0) or gradients (which = 1) follow each other in
 * memory, so the group is one (sum out, in) matrix. */
static int adjacent(const qft_llama_lin_group *g, int which) {
    for (int i = 0; i < g->n; i++) {
        const float *p = which ? g->lin[i].dw : g->lin[i].w;
        if (!p) return 0;
        if (i) {
            const float *prev = which ? g->lin[i - 1].dw : g->lin[i - 1].w;
            if (p != prev + (size_t)g->lin[i - 1].out * g->lin[i - 1].in) return 0;
        }
    }
    return 1;
}

static int total_out(const qft_llama_lin_group *g) {
    int s = 0;
    for (int i = 0; i < g->n; i++) s += g->lin[i].out;
    return s;
}

int qft_llama_base_fwd(const qft_ops *ops, const qft_llama_linear *L, const float *x, int N,
                       float *y, int ldy, float beta, qft_err *err) {
    if (L->w) {
        ops->gemm(0, 1, N, L->out, L->in, 1.0f, x, L->in, L->w, L->in, beta, y, ldy);
        return 0;
    }
    if (L->ql) { /* on another backend: its product with the layout, through the scratch */
        ops->qmatmul(L->ql, 0, x, L->in, N, y, ldy, beta, L->qtile, L->qtile_floats);
        return 0;
    }
    return qft_qlinear_forward(L->qvt, L->qw, L->out, L->in, x, N, y, ldy, beta, err);
}

int qft_llama_base_bwd_x(const qft_ops *ops, const qft_llama_linear *L, const float *dy, int ldy,
                         int N, float *dx, float beta, qft_err *err) {
    if (L->w) {
        ops->gemm(0, 0, N, L->in, L->out, 1.0f, dy, ldy, L->w, L->in, beta, dx, L->in);
        return 0;
    }
    if (L->ql) {
        ops->qmatmul(L->ql, 1, dy, ldy, N, dx, L->in, beta, L->qtile, L->qtile_floats);
        return 0;
    }
    return qft_qlinear_backward_input(L->qvt, L->qw, L->out, L->in, dy, ldy, N, dx, beta, err);
}

int qft_llama_lin_fwd(qft_llama_model *m, const qft_llama_lin_group *g, const float *x, int N,
                      float *y, int ldy, float beta, qft_err *err) {
    const qft_ops *ops = m->acts->ops;
    const int in = g->lin[0].in;
    int adapted = 0;
    for (int i = 0; i < g->n; i++) adapted |= g->lin[i].ad != NULL;
    if (adapted && beta != 0.0f) {
        /* An adapter may rewrite its linear's whole output (DoRA scales it), so the term
         * is built apart and only then added to what y holds (the residual). */
        const int out = total_out(g);
        float *tmp = m->acts->lin_tmp; // (N, out)
        if (qft_llama_lin_fwd(m, g, x, N, tmp, out, 0.0f, err)) return -1;
        ops->cols_axpby(y, ldy, beta, tmp, out, NULL, 1.0f, N, out); // y = beta y + tmp
        return 0;
    }
    if (adjacent(g, 0)) {
        ops->gemm(0, 1, N, total_out(g), in, 1.0f, x, in, g->lin[0].w, in, beta, y, ldy);
    } else {
        int col = 0;
        for (int i = 0; i < g->n; i++) {
            if (qft_llama_base_fwd(ops, &g->lin[i], x, N, y + col, ldy, beta, err)) return -1;
            col += g->lin[i].out;
        }
    }
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        const qft_llama_linear *L = &g->lin[i];
        /* down_proj is not repeated by recomputation (backward rebuilds its input
         * itself), so its adapter keeps its activations from the one forward there is,
         * unless they are output-sized (row_scaled: then recomputation repeats it) */
        qft_adapter_step st = m->astep;
        if (L->ad && L->ad->k == QFT_LIN_DOWN && !L->ad->row_scaled) st.no_grad = 0;
        if (L->ad && m->avt->forward(L->ad->al, &st, x, N, y + col, ldy, err)) return -1;
        col += L->out;
    }
    return 0;
}

int qft_llama_lin_bwd_x(qft_llama_model *m, const qft_llama_lin_group *g, const float *x,
                        float *dy, int ldy, int N, float *dx, float *tmp, qft_err *err) {
    const qft_ops *ops = m->acts->ops;
    const int in = g->lin[0].in;
    int adapted = 0;
    for (int i = 0; i < g->n; i++) adapted |= g->lin[i].ad != NULL;
    if (!adapted && adjacent(g, 0)) {
        ops->gemm(0, 0, N, in, total_out(g), 1.0f, dy, ldy, g->lin[0].w, in, 0.0f, dx, in);
        return 0;
    }
    if (adapted) ops->zero(dx, (size_t)N * in);
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        const qft_llama_linear *L = &g->lin[i];
        float *d = dy + col;
        int ld = ldy;
        if (L->ad) {
            /* the adapter adds its input gradient and may rewrite the output gradient into
             * the base product's (DoRA): in place, or on a copy when the caller still needs
             * dy (tmp given) */
            if (tmp) {
                ops->cols_axpby(tmp, L->out, 0.0f, dy + col, ldy, NULL, 1.0f, N, L->out);
                d = tmp, ld = L->out;
            }
            if (m->avt->backward(L->ad->al, &m->astep, x, d, ld, N, dx, err)) return -1;
        }
        if (qft_llama_base_bwd_x(ops, L, d, ld, N, dx, adapted || i ? 1.0f : 0.0f, err))
            return -1;
        col += L->out;
    }
    return 0;
}

void qft_llama_lin_bwd_w(const qft_ops *ops, const qft_llama_lin_group *g, const float *dy,
                         int ldy, const float *x, int N) {
    const int in = g->lin[0].in;
    if (adjacent(g, 1)) {
        ops->gemm(1, 0, total_out(g), in, N, 1.0f, dy, ldy, x, in, 1.0f, g->lin[0].dw, in);
        return;
    }
    int col = 0;
    for (int i = 0; i < g->n; i++) {
        const qft_llama_linear *L = &g->lin[i];
        if (L->dw) ops->gemm(1, 0, L->out, in, N, 1.0f, dy + col, ldy, x, in, 1.0f, L->dw, in);
        col += L->out;
    }
}
