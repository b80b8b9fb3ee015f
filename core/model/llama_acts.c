/* Activation storage: what forward keeps for backward, and backward's scratch, sized for
 * the largest batch seen so far (grown on demand) in one allocation per tensor family. */
#include "cpu_ops.h"
#include "llama_internal.h"

#include <stdlib.h>
#include <string.h>

static void acts_release(struct qft_llama_acts *a) {
    const qft_ops *o = a->ops;
    float **bufs[] = {&a->rope_cos, &a->rope_sin, &a->x, &a->rstd1, &a->rstd2, &a->qkv,
                      &a->att, &a->lse, &a->xmid, &a->gu, &a->lnf, &a->rstdf, &a->logits,
                      &a->ce_lse, &a->ln, &a->h, &a->dres, &a->dln, &a->dqkv, &a->datt,
                      &a->dh, &a->att_work, &a->lin_tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        o->free(*bufs[i]);
        *bufs[i] = NULL;
    }
    o->free(a->xq);
    o->free(a->targets);
    o->free(a->ids);
    o->free(a->mask_buf);
    free(a->targets_host);
    free(a->embed_rows);
    a->embed_rows = NULL;
    a->targets = NULL, a->ids = NULL, a->mask_buf = NULL, a->targets_host = NULL, a->xq = NULL;
    a->bytes = 0;
}

void qft_llama_acts_free(qft_llama_model *m) {
    if (!m->acts) return;
    acts_release(m->acts);
    free(m->acts);
    m->acts = NULL;
}

size_t qft_llama_acts_bytes(const qft_llama_model *m) { return m->acts ? m->acts->bytes : 0; }

int qft_llama_acts_logit_rows(const qft_llama_model *m) {
    return m->acts ? m->acts->logit_cap : 0;
}

int qft_llama_logit_rows_auto(int vocab_size, size_t budget_bytes) {
    const size_t row = (size_t)(vocab_size > 0 ? vocab_size : 1) * 4;
    const size_t rows = budget_bytes / row / 128 * 128;
    return rows < 128 ? 128 : rows > (1u << 30) ? 1 << 30 : (int)rows;
}

float *qft_llama_x(const qft_llama_model *m, int l) {
    const struct qft_llama_acts *a = m->acts;
    const size_t slot = (size_t)(a->x_bf16 ? l & 1 : l);
    return a->x + slot * (size_t)a->cap_N * (size_t)m->cfg.hidden_size;
}

void qft_llama_x_keep(const qft_llama_model *m, int l, int N) {
    const struct qft_llama_acts *a = m->acts;
    if (!a->x_bf16) return;
    const size_t C = (size_t)m->cfg.hidden_size, n = (size_t)N * C;
    uint16_t *kept = a->xq + (size_t)l * a->cap_N * C; // (N, C)
    a->ops->f32_to_bf16(kept, qft_llama_x(m, l), n);
    a->ops->bf16_to_f32(qft_llama_x(m, l), kept, n); /* the next block reads what is kept */
}

const float *qft_llama_x_load(const qft_llama_model *m, int l, int N) {
    const struct qft_llama_acts *a = m->acts;
    if (a->x_bf16) {
        const size_t C = (size_t)m->cfg.hidden_size;
        a->ops->bf16_to_f32(qft_llama_x(m, l), a->xq + (size_t)l * a->cap_N * C, (size_t)N * C);
    }
    return qft_llama_x(m, l);
}

int qft_llama_logit_chunk(const qft_llama_model *m, int N) {
    return m->logit_rows > 0 && m->logit_rows < N ? m->logit_rows : N;
}

int qft_llama_acts_reserve(qft_llama_model *m, int B, int T, qft_err *err) {
    const qft_llama_config *c = &m->cfg;
    if (B <= 0 || T <= 0)
        return qft_err_setf(err, "batch shape B=%d, T=%d: both must be positive", B, T);
    if (c->head_dim % 2)
        return qft_err_setf(err, "head_dim %d: RoPE needs an even head_dim", c->head_dim);
    struct qft_llama_acts *a = m->acts;
    const int want_slots = m->recompute ? 1 : c->num_hidden_layers;
    if (a && a->cap_N >= B * T && a->cap_T >= T && a->slots == want_slots &&
        a->logit_cap == qft_llama_logit_chunk(m, a->cap_N) && a->x_bf16 == !!m->residual_bf16)
        return 0;
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a) return qft_err_setf(err, "out of memory allocating activation bookkeeping");
        a->ops = m->ops ? m->ops : qft_cpu_ops();
        m->acts = a;
    }
    /* grow to the larger of the old and new shapes, so alternating batches do not thrash */
    int capN = B * T > a->cap_N ? B * T : a->cap_N;
    int capT = T > a->cap_T ? T : a->cap_T;
    acts_release(a);
    memset((char *)a + sizeof a->ops, 0, sizeof *a - sizeof a->ops);
    a->cap_N = capN, a->cap_T = capT, a->slots = want_slots, a->recompute = m->recompute;
    a->logit_cap = qft_llama_logit_chunk(m, capN);
    a->x_bf16 = !!m->residual_bf16;
    const size_t N = (size_t)capN, S = (size_t)want_slots, L = (size_t)c->num_hidden_layers;
    const size_t C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    const size_t V = (size_t)c->vocab_size, H = (size_t)c->num_attention_heads;
    const size_t hd = (size_t)c->head_dim;
    const size_t W = (size_t)QFT_QKV_WIDTH(c->num_attention_heads, c->num_key_value_heads,
                                           c->head_dim);
    struct {
        float **p;
        size_t n;
        const char *what;
    } t[] = {
        {&a->rope_cos, (size_t)capT * hd / 2, "activations"}, // (T, hd/2)
        {&a->rope_sin, (size_t)capT * hd / 2, "activations"}, // (T, hd/2)
        {&a->x, (a->x_bf16 ? 2 : L + 1) * N * C, "activations"}, // (L+1 or 2, N, C)
        {&a->rstd1, S * N, "activations"},                    // (S, N)
        {&a->rstd2, S * N, "activations"},                    // (S, N)
        {&a->qkv, S * N * W, "activations"},                  // (S, N, W)
        {&a->att, S * N * H * hd, "activations"},             // (S, N, H*hd)
        {&a->lse, S * N * H, "activations"},                  // (S, B, H, T)
        {&a->xmid, S * N * C, "activations"},                 // (S, N, C)
        {&a->gu, S * N * 2 * I, "activations"},               // (S, N, 2I)
        {&a->lnf, N * C, "activations"},                      // (N, C)
        {&a->rstdf, N, "activations"},                        // (N)
        {&a->logits, (size_t)a->logit_cap * V, "logits"},     // (logit_cap, V)
        {&a->ce_lse, N, "logits"},                            // (N)
        {&a->ln, N * C, "activation scratch"},                // (N, C)
        {&a->h, N * I, "activation scratch"},                 // (N, I)
        {&a->dres, N * C, "activation gradients"},            // (N, C)
        {&a->dln, N * C, "activation gradients"},             // (N, C)
        {&a->dqkv, N * W, "activation gradients"},            // (N, W)
        {&a->datt, N * H * hd, "activation gradients"},       // (N, H*hd)
        {&a->dh, N * I, "activation gradients"},              // (N, I)
        /* an adapted o_proj's or down_proj's own output or output gradient, (N, C): both
         * feed the residual stream, whose values and gradient the block still needs (the
         * other linears' adapters work in place) */
        {&a->lin_tmp, m->n_adapted ? N * C : 1, "adapter scratch"},
    };
    a->att_work_n = a->ops->attention_workspace(capT, c->head_dim);
    a->att_work = a->ops->alloc(a->att_work_n * sizeof(float), "activation scratch");
    if (!a->att_work) goto oom;
    a->bytes += a->att_work_n * sizeof(float);
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        *t[i].p = a->ops->alloc(t[i].n * sizeof(float), t[i].what);
        if (!*t[i].p) goto oom;
        a->bytes += t[i].n * sizeof(float);
    }
    if (a->x_bf16) {
        a->xq = a->ops->alloc((L + 1) * N * C * sizeof(uint16_t), "activations"); // (L+1, N, C)
        if (!a->xq) goto oom;
        a->bytes += (L + 1) * N * C * sizeof(uint16_t);
    }
    a->targets = a->ops->alloc(N * sizeof(int32_t), "activations"); // (N)
    /* the batch's ids and mask in the backend's memory, and the targets as the host
     * builds them before they go there */
    a->ids = a->ops->alloc(N * sizeof(int32_t), "activations");       // (N)
    a->mask_buf = a->ops->alloc(N, "activations");                    // (N)
    a->targets_host = malloc(N * sizeof(int32_t));                    // (N)
    if (!a->targets || !a->ids || !a->mask_buf || !a->targets_host) goto oom;
    a->bytes += N * (3 * sizeof(int32_t) + 1);
    if (qft_llama_embed_gathered(m)) { /* host memory, counted with the rest: this batch's */
        a->embed_rows = malloc(N * C * sizeof(float));
        if (!a->embed_rows) goto oom;
        a->bytes += N * C * sizeof(float);
    }
    return 0;
oom:;
    size_t had = a->bytes;
    acts_release(a);
    a->cap_N = a->cap_T = a->slots = a->logit_cap = 0;
    return qft_err_setf(err, "out of memory allocating activations for B=%d, T=%d (%zu bytes "
                        "allocated before the failure)", B, T, had);
}
