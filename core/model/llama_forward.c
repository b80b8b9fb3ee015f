/* The Llama forward pass and loss, as transformers' LlamaForCausalLM computes them in
 * fp32: embeddings, L pre-norm blocks (RMSNorm, GQA attention with RoPE, residual;
 * RMSNorm, SwiGLU MLP, residual), final RMSNorm, the head, and the shifted cross-entropy
 * averaged over labels != -100. Every kernel is an op of the backend table. */
#include "llama_internal.h"

#include <math.h>
#include <string.h>

#define IGNORE_INDEX (-100)

int qft_llama_block_forward(qft_llama_model *m, int l, int slot, const float *x_in,
                            float *x_out, qft_err *err) {
    struct qft_llama_acts *a = m->acts;
    const qft_ops *o = a->ops;
    const qft_llama_config *c = &m->cfg;
    const qft_llama_layer_ptrs *w = &m->p.layers[l];
    const int B = a->B, T = a->T, N = B * T;
    const int C = c->hidden_size, I = c->intermediate_size, H = c->num_attention_heads;
    const int KV = c->num_key_value_heads, hd = c->head_dim;
    const int W = QFT_QKV_WIDTH(H, KV, hd);
    const size_t cN = (size_t)a->cap_N;
    float *rstd1 = a->rstd1 + slot * cN;                 // (N)
    float *qkv = a->qkv + slot * cN * W;                 // (N, W)
    float *att = a->att + slot * cN * H * hd;            // (N, H*hd)
    float *lse = a->lse + slot * cN * H;                 // (B, H, T)
    float *xmid = a->xmid + slot * cN * C;               // (N, C)
    float *rstd2 = a->rstd2 + slot * cN;                 // (N)
    float *gu = a->gu + slot * cN * 2 * I;               // (N, 2I)

    o->rmsnorm_fwd(a->ln, rstd1, x_in, w->ln1, N, C, c->rms_norm_eps);
    qft_llama_lin_group g = qft_llama_qkv_group(m, l, 0);
    if (qft_llama_lin_fwd(m, &g, a->ln, N, qkv, W, 0.0f, err)) return -1;
    /* queries and keys are adjacent heads (H then KV) in each qkv row: one rope call */
    o->rope_fwd(qkv, W, a->rope_cos, a->rope_sin, B, T, H + KV, hd);
    o->attention_fwd(att, lse, qkv, a->mask, B, T, H, KV, hd, (float)(1.0 / sqrt((double)hd)),
                     a->att_work, a->att_work_n);
    o->copy(xmid, x_in, (size_t)N * C);
    g = qft_llama_one_group(m, l, QFT_LIN_O, 0);
    if (qft_llama_lin_fwd(m, &g, att, N, xmid, C, 1.0f, err)) return -1; /* residual */

    o->rmsnorm_fwd(a->ln, rstd2, xmid, w->ln2, N, C, c->rms_norm_eps);
    g = qft_llama_gu_group(m, l, 0);
    if (qft_llama_lin_fwd(m, &g, a->ln, N, gu, 2 * I, 0.0f, err)) return -1;
    /* recomputation for backward stops here (h is rebuilt there), unless down_proj's
     * adapter keeps output-sized activations (row_scaled), which forward did not keep: its
     * product again, into scratch that backward overwrites before reading */
    const qft_llama_adapted *down = m->adapted ? m->adapted[l][QFT_LIN_DOWN] : NULL;
    if (!x_out && !(down && down->row_scaled)) return 0;
    o->swiglu_fwd(a->h, gu, N, I);
    if (!x_out) {
        g = qft_llama_one_group(m, l, QFT_LIN_DOWN, 0);
        return qft_llama_lin_fwd(m, &g, a->h, N, a->dln, C, 0.0f, err); // (N, C)
    }
    o->copy(x_out, xmid, (size_t)N * C);
    g = qft_llama_one_group(m, l, QFT_LIN_DOWN, 0);
    return qft_llama_lin_fwd(m, &g, a->h, N, x_out, C, 1.0f, err); /* residual */
}

static int check_batch(const qft_llama_model *m, const qft_batch *b, qft_err *err) {
    const int V = m->cfg.vocab_size;
    if (!b || b->B <= 0 || b->T <= 0 || !b->ids)
        return qft_err_setf(err, "llama forward: empty batch (B=%d, T=%d, ids %s)", b ? b->B : 0,
                            b ? b->T : 0, b && b->ids ? "set" : "missing");
    for (int i = 0; i < b->B * b->T; i++) {
        if (b->ids[i] < 0 || b->ids[i] >= V)
            return qft_err_setf(err, "llama forward: batch ids[%d][%d] = %d is outside the "
                                     "vocabulary [0, %d)", i / b->T, i % b->T, b->ids[i], V);
        if (b->labels && b->labels[i] != IGNORE_INDEX && (b->labels[i] < 0 || b->labels[i] >= V))
            return qft_err_setf(err, "llama forward: batch labels[%d][%d] = %d is neither -100 "
                                     "nor in [0, %d)", i / b->T, i % b->T, b->labels[i], V);
    }
    return 0;
}

/* The batch's embedding rows gathered from the host's table (m->embed_on_host), rounded
 * to bf16 where the backend would have held the table so; ids are checked already. */
static void embed_rows_on_host(const qft_llama_model *m, const int32_t *ids, int N,
                               float *rows) {
    const float *table = m->params + qft_llama_outer_entry(m, 0)->offset; // (V, C)
    const size_t C = (size_t)m->cfg.hidden_size;
    const int bf16 = m->embed_host_bf16;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *src = table + (size_t)ids[n] * C;
        float *dst = rows + (size_t)n * C;
        if (bf16)
            for (size_t j = 0; j < C; j++) dst[j] = qft_bf16_to_f32(qft_f32_to_bf16(src[j]));
        else
            memcpy(dst, src, C * sizeof(float));
    }
}

/* The same rows as bf16 bit patterns (m->embed_host_bf16), for a residual stream kept as
 * bf16: they go up at half the bytes straight into block 0's kept input. */
static void embed_bf16_on_host(const qft_llama_model *m, const int32_t *ids, int N,
                               uint16_t *rows) {
    const float *table = m->params + qft_llama_outer_entry(m, 0)->offset; // (V, C)
    const size_t C = (size_t)m->cfg.hidden_size;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *src = table + (size_t)ids[n] * C;
        uint16_t *dst = rows + (size_t)n * C;
        for (size_t j = 0; j < C; j++) dst[j] = qft_f32_to_bf16(src[j]);
    }
}

int qft_llama_forward(qft_llama_model *m, const qft_batch *b, float *loss, qft_err *err) {
    if (!m->entries) return qft_err_setf(err, "llama forward: model has no parameters");
    if (check_batch(m, b, err)) return -1;
    if (qft_llama_acts_reserve(m, b->B, b->T, err)) return -1;
    struct qft_llama_acts *a = m->acts;
    const qft_ops *o = a->ops;
    const qft_llama_config *c = &m->cfg;
    const int B = b->B, T = b->T, N = B * T;
    const int C = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    a->B = B, a->T = T, a->fwd_recompute = m->recompute;
    /* the batch into the backend's memory (a copy on the CPU backend: small) */
    o->upload(a->ids, b->ids, (size_t)N * sizeof(int32_t));
    if (b->mask) o->upload(a->mask_buf, b->mask, (size_t)N);
    a->mask = b->mask ? a->mask_buf : NULL;
    a->grad_ready = 0, a->logits_valid = 0;
    if (a->rope_T != T) {
        o->rope_table(a->rope_cos, a->rope_sin, T, c->head_dim, c->rope_theta, c->rope_type,
                      c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                      c->rope_original_max_position_embeddings);
        a->rope_T = T;
    }

    /* Units come and go around their use (full sharding; no-ops otherwise). A tied head
     * reads the embedding, which then stays until backward is past the head. */
    const int tied = m->cfg.tie_word_embeddings;
    if (qft_llama_unit_event(m, QFT_UNIT_GATHER, 0, err)) return -1;
    if (qft_llama_embed_gathered(m) && m->embed_host_bf16 && a->x_bf16) {
        /* what keeping block 0's input would store, uploaded as that (the rows' buffer
         * holds N C floats, so N C halves fit) and widened: the same bits as below */
        uint16_t *rows = (uint16_t *)a->embed_rows; // (N, C)
        embed_bf16_on_host(m, b->ids, N, rows);
        o->upload(a->xq, rows, (size_t)N * C * sizeof(uint16_t));
        qft_llama_x_load(m, 0, N);
    } else {
        if (qft_llama_embed_gathered(m)) {
            embed_rows_on_host(m, b->ids, N, a->embed_rows);
            o->upload(qft_llama_x(m, 0), a->embed_rows, (size_t)N * C * sizeof(float));
        } else if (m->p.embed)
            o->embedding_fwd(qft_llama_x(m, 0), a->ids, m->p.embed, N, C);
        else /* frozen and kept as bf16 on the backend */
            o->embedding_fwd_bf16(qft_llama_x(m, 0), a->ids, qft_llama_embed_bf16(m), N, C);
        qft_llama_x_keep(m, 0, N);
    }
    if (!tied && qft_llama_unit_event(m, QFT_UNIT_RELEASE, 0, err)) return -1;
    /* with recomputation, adapters keep nothing in this pass: backward repeats it */
    m->astep.no_grad = a->fwd_recompute;
    for (int l = 0; l < L; l++) {
        if (qft_llama_unit_event(m, QFT_UNIT_GATHER, l + 1, err) ||
            qft_llama_block_forward(m, l, a->fwd_recompute ? 0 : l, qft_llama_x(m, l),
                                    qft_llama_x(m, l + 1), err) ||
            qft_llama_unit_event(m, QFT_UNIT_RELEASE, l + 1, err))
            return -1;
        qft_llama_x_keep(m, l + 1, N);
    }
    /* the head unit stays for the backward that follows */
    if (qft_llama_unit_event(m, QFT_UNIT_GATHER, L + 1, err)) return -1;
    const float *xL = qft_llama_x(m, L); // (N, C)
    o->rmsnorm_fwd(a->lnf, a->rstdf, xL, m->p.norm, N, C, c->rms_norm_eps);

    /* transformers shifts inside the loss: logits[t] is scored against labels[t+1] */
    for (int bi = 0; bi < B; bi++)
        for (int t = 0; t < T; t++)
            a->targets_host[bi * T + t] =
                (b->labels && t + 1 < T) ? b->labels[bi * T + t + 1] : IGNORE_INDEX;
    o->upload(a->targets, a->targets_host, (size_t)N * sizeof(int32_t));
    /* the head and the loss a chunk of rows at a time (one chunk unless m->logit_rows says
     * otherwise): only the rows' log-sum-exps outlive their chunk */
    const qft_llama_linear head = qft_llama_head_of(m);
    const int R = qft_llama_logit_chunk(m, N);
    double sum = 0.0;
    int n_valid = 0;
    for (int r0 = 0; r0 < N; r0 += R) {
        const int rows = N - r0 < R ? N - r0 : R;
        int nv = 0;
        if (qft_llama_base_fwd(o, &head, a->lnf + (size_t)r0 * C, rows, a->logits, V, 0.0f,
                               err))
            return -1; // (rows, V)
        sum += o->cross_entropy_fwd(a->logits, a->targets + r0, rows, V, a->ce_lse + r0, NULL,
                                    &nv);
        n_valid += nv;
    }
    a->n_valid = n_valid;
    a->logits_valid = R == N;
    a->grad_ready = 1;
    if (loss) *loss = n_valid ? (float)(sum / n_valid) : 0.0f;
    return 0;
}

const float *qft_llama_logits(const qft_llama_model *m) {
    return m->acts && m->acts->logits_valid ? m->acts->logits : NULL;
}
