/* The hand-written backward of llama_forward.c, layer by layer in reverse. With
 * m->recompute the block's activations are rebuilt from its saved input by the very
 * same op calls forward made, so gradients are bit-identical to the stored-activation
 * path. Gradients accumulate (+=) into m->grads. */
#include "llama_internal.h"

#include <math.h>

static int block_backward(qft_llama_model *m, int l, int slot, const float *x_in,
                          qft_err *err) {
    struct qft_llama_acts *a = m->acts;
    const qft_ops *o = a->ops;
    const qft_llama_config *c = &m->cfg;
    const qft_llama_layer_ptrs *w = &m->p.layers[l];
    const qft_llama_layer_ptrs *gw = &m->g.layers[l];
    const int B = a->B, T = a->T, N = B * T;
    const int C = c->hidden_size, I = c->intermediate_size, H = c->num_attention_heads;
    const int KV = c->num_key_value_heads, hd = c->head_dim;
    const int W = QFT_QKV_WIDTH(H, KV, hd), A = H * hd;
    const size_t cN = (size_t)a->cap_N;
    float *rstd1 = a->rstd1 + slot * cN;            // (N)
    const float *qkv = a->qkv + slot * cN * W;      // (N, W)
    const float *att = a->att + slot * cN * A;      // (N, H*hd)
    const float *lse = a->lse + slot * cN * H;      // (B, H, T)
    const float *xmid = a->xmid + slot * cN * C;    // (N, C)
    float *rstd2 = a->rstd2 + slot * cN;            // (N)
    float *gu = a->gu + slot * cN * 2 * I;          // (N, 2I), then its gradient
    float *dres = a->dres;                          // (N, C) d(block output) in, d(x_in) out

    /* MLP: x_out = xmid + down(swiglu(gate/up(norm2(xmid)))) */
    o->rmsnorm_fwd(a->ln, rstd2, xmid, w->ln2, N, C, c->rms_norm_eps); /* rebuild norm2 out */
    o->swiglu_fwd(a->h, gu, N, I);                                     /* rebuild h */
    qft_llama_lin_group g = qft_llama_one_group(m, l, QFT_LIN_DOWN, 1);
    qft_llama_lin_bwd_w(o, &g, dres, C, a->h, N);                       // (C, I) += dres^T h
    if (qft_llama_lin_bwd_x(m, &g, a->h, dres, C, N, a->dh, a->lin_tmp, err)) // (N, I)
        return -1;
    /* gu is not read again (recomputation rebuilds the slot; without it each layer's
     * backward runs once), so its gradient takes its place */
    float *dgu = gu;
    o->swiglu_bwd(dgu, a->dh, gu, N, I);                                // (N, 2I)
    g = qft_llama_gu_group(m, l, 1);
    qft_llama_lin_bwd_w(o, &g, dgu, 2 * I, a->ln, N);
    /* dgu is not read again: adapters may rewrite it in place */
    if (qft_llama_lin_bwd_x(m, &g, a->ln, dgu, 2 * I, N, a->dln, NULL, err)) // (N, C)
        return -1;
    o->rmsnorm_bwd(dres, gw->ln2, a->dln, xmid, w->ln2, rstd2, N, C);  /* dres = d xmid */

    /* attention: xmid = x_in + o_proj(attn(rope(q/k/v(norm1(x_in))))) */
    g = qft_llama_one_group(m, l, QFT_LIN_O, 1);
    qft_llama_lin_bwd_w(o, &g, dres, C, att, N);                        // (C, H*hd)
    if (qft_llama_lin_bwd_x(m, &g, att, dres, C, N, a->datt, a->lin_tmp, err)) // (N, H*hd)
        return -1;
    o->attention_bwd(a->dqkv, a->datt, att, lse, qkv, a->mask, B, T, H, KV, hd,
                     (float)(1.0 / sqrt((double)hd)), a->att_work, a->att_work_n);
    o->rope_bwd(a->dqkv, W, a->rope_cos, a->rope_sin, B, T, H + KV, hd);
    o->rmsnorm_fwd(a->ln, rstd1, x_in, w->ln1, N, C, c->rms_norm_eps); /* norm1 out */
    g = qft_llama_qkv_group(m, l, 1);
    qft_llama_lin_bwd_w(o, &g, a->dqkv, W, a->ln, N);
    if (qft_llama_lin_bwd_x(m, &g, a->ln, a->dqkv, W, N, a->dln, NULL, err)) // (N, C)
        return -1;
    o->rmsnorm_bwd(dres, gw->ln1, a->dln, x_in, w->ln1, rstd1, N, C);  /* dres = d x_in */
    return 0;
}

/* A backward with nothing to add still tells the unit hook what a full one would, in the
 * same order: under full sharding the peers' backward runs the same collectives. */
static int units_without_grads(qft_llama_model *m, qft_err *err) {
    const int L = m->cfg.num_hidden_layers;
    if (qft_llama_unit_event(m, QFT_UNIT_GRADS_DONE, L + 1, err) ||
        qft_llama_unit_event(m, QFT_UNIT_RELEASE, L + 1, err) ||
        (m->cfg.tie_word_embeddings && qft_llama_unit_event(m, QFT_UNIT_RELEASE, 0, err)))
        return -1;
    for (int l = L - 1; l >= 0; l--)
        if (qft_llama_unit_event(m, QFT_UNIT_GATHER, l + 1, err) ||
            qft_llama_unit_event(m, QFT_UNIT_GRADS_DONE, l + 1, err) ||
            qft_llama_unit_event(m, QFT_UNIT_RELEASE, l + 1, err))
            return -1;
    return qft_llama_unit_event(m, QFT_UNIT_GRADS_DONE, 0, err);
}

int qft_llama_backward(qft_llama_model *m, const qft_batch *b, float loss_scale, qft_err *err) {
    struct qft_llama_acts *a = m->acts;
    if (!m->grads) return qft_err_setf(err, "llama backward: gradients are not allocated "
                                            "(call qft_llama_alloc_grads)");
    if (!a || !a->grad_ready)
        return qft_err_setf(err, "llama backward: no forward to differentiate (each backward "
                                 "needs its own forward)");
    if (!b || b->B != a->B || b->T != a->T)
        return qft_err_setf(err, "llama backward: batch is %dx%d but the last forward ran on "
                                 "%dx%d", b ? b->B : 0, b ? b->T : 0, a->B, a->T);
    a->grad_ready = 0;
    if (a->n_valid == 0) return units_without_grads(m, err); /* the loss is a constant 0 */
    const qft_ops *o = a->ops;
    const qft_llama_config *c = &m->cfg;
    const int N = a->B * a->T, C = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    /* the batch of the forward, whose ids and mask are in the backend's memory already */
    a->mask = b->mask ? a->mask_buf : NULL;

    /* the head's gradients (and a tied head's, the embedding's) start here */
    if (qft_llama_unit_event(m, QFT_UNIT_GRADS_BEGIN, L + 1, err) ||
        (c->tie_word_embeddings && qft_llama_unit_event(m, QFT_UNIT_GRADS_BEGIN, 0, err)))
        return -1;
    /* The head's backward a chunk of rows at a time, as forward ran it: d loss / d logits
     * in place (the logits are not needed any more; a chunked forward's are computed again
     * first, the same GEMM on the same rows), then dln's rows and the head's gradient. */
    const qft_llama_linear head = qft_llama_head_of(m);
    const int R = qft_llama_logit_chunk(m, N);
    for (int r0 = 0; r0 < N; r0 += R) {
        const int rows = N - r0 < R ? N - r0 : R;
        const float *lnf = a->lnf + (size_t)r0 * C;
        if (!a->logits_valid && qft_llama_base_fwd(o, &head, lnf, rows, a->logits, V, 0.0f, err))
            return -1;
        o->cross_entropy_bwd(a->logits, a->logits, a->ce_lse + r0, a->targets + r0, rows, V,
                             loss_scale / (float)a->n_valid);
        const float *dlogits = a->logits; // (rows, V)
        if (qft_llama_base_bwd_x(o, &head, dlogits, V, rows, a->dln + (size_t)r0 * C, 0.0f,
                                 err))
            return -1; // (rows, C)
        /* tied: g.lm_head is g.embed, so the head's gradient lands in the embedding's */
        if (m->g.lm_head)
            o->gemm(1, 0, V, C, rows, 1.0f, dlogits, V, lnf, C, 1.0f, m->g.lm_head, C); // (V, C)
    }
    a->logits_valid = 0;
    o->zero(a->dres, (size_t)N * C);
    o->rmsnorm_bwd(a->dres, m->g.norm, a->dln, qft_llama_x_load(m, L, N), m->p.norm, a->rstdf, N,
                   C);
    /* the head unit, kept from forward, is done; a tied head's gradient went into the
     * embedding's, which embedding_bwd completes below */
    if (qft_llama_unit_event(m, QFT_UNIT_GRADS_DONE, L + 1, err) ||
        qft_llama_unit_event(m, QFT_UNIT_RELEASE, L + 1, err) ||
        (c->tie_word_embeddings && qft_llama_unit_event(m, QFT_UNIT_RELEASE, 0, err)))
        return -1;

    for (int l = L - 1; l >= 0; l--) {
        const float *x_in = qft_llama_x_load(m, l, N); // (N, C)
        /* the mode forward ran in, not m->recompute now: the buffers hold what it kept */
        m->astep.no_grad = 0; /* this pass keeps what the backward right after needs */
        if (qft_llama_unit_event(m, QFT_UNIT_GATHER, l + 1, err)) return -1;
        if (a->fwd_recompute && qft_llama_block_forward(m, l, 0, x_in, NULL, err)) return -1;
        if (qft_llama_unit_event(m, QFT_UNIT_GRADS_BEGIN, l + 1, err) ||
            block_backward(m, l, a->fwd_recompute ? 0 : l, x_in, err) ||
            qft_llama_unit_event(m, QFT_UNIT_GRADS_DONE, l + 1, err) ||
            qft_llama_unit_event(m, QFT_UNIT_RELEASE, l + 1, err))
            return -1;
    }
    if (!c->tie_word_embeddings && qft_llama_unit_event(m, QFT_UNIT_GRADS_BEGIN, 0, err))
        return -1;
    if (m->g.embed) o->embedding_bwd(m->g.embed, a->dres, a->ids, N, C);
    return qft_llama_unit_event(m, QFT_UNIT_GRADS_DONE, 0, err);
}
