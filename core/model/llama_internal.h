/* Private to core/model: the activation storage and the pieces forward and backward share.
 * Shapes: N = B*T rows of the current batch; capacity is sized for cap_N rows. */
#ifndef QFT_LLAMA_INTERNAL_H
#define QFT_LLAMA_INTERNAL_H

#include "llama.h"
#include "qft_ops.h"


struct qft_llama_acts {
    const qft_ops *ops;
    int cap_N, cap_T;    /* rows and sequence length the buffers hold */
    int slots;           /* layers whose block activations are kept: L, or 1 with recompute */
    int recompute;       /* the mode the buffers were sized for */
    size_t bytes;        /* total allocated, for reports */
    /* rope tables, for rope_T positions */
    int rope_T;
    float *rope_cos, *rope_sin; // (cap_T, hd/2) each
    /* saved by forward */
    float *x;            // (L+1, cap_N, C) block inputs; x[L] is the last block's output
    float *rstd1, *rstd2; // (slots, cap_N)
    float *qkv;          // (slots, cap_N, (H+2KV)*hd) after RoPE
    float *att;          // (slots, cap_N, H*hd) attention output before o_proj
    float *lse;          // (slots, cap_N*H) as (B, H, T) log-sum-exp of attention rows
    float *xmid;         // (slots, cap_N, C) residual after attention
    float *gu;           // (slots, cap_N, 2I) gate and up projections
    float *lnf;          // (cap_N, C) final norm output
    float *rstdf;        // (cap_N)
    float *logits;       // (cap_N, V); becomes dlogits in backward
    float *ce_lse;       // (cap_N) log-sum-exp of each logits row
    int32_t *targets;    // (cap_N) labels shifted left by one, -100 at each row's end
    /* scratch, shared by all layers */
    float *ln;           // (cap_N, C) a norm output, recomputed where backward needs it
    float *h;            // (cap_N, I) silu(gate) * up
    float *dres;         // (cap_N, C) gradient of the residual stream
    float *dln;          // (cap_N, C)
    float *dqkv;         // (cap_N, (H+2KV)*hd)
    float *datt;         // (cap_N, H*hd)
    float *dgu;          // (cap_N, 2I)
    float *dh;           // (cap_N, I)
    float *att_work;     // (att_work_n) attention scratch, a few query rows per thread
    size_t att_work_n;
    /* the last forward */
    int B, T;            /* shape of the last forward's batch, 0 when none */
    const uint8_t *mask; /* that batch's mask (the caller's memory, only during forward) */
    int fwd_recompute;   /* m->recompute at the last forward: its backward follows it */
    int n_valid;         /* positions counted in the loss */
    int logits_valid;    /* 1 after forward, 0 once backward turned them into gradients */
    int grad_ready;      /* 1 after forward until its backward */
};

/* Runs block l on x_in (N, C): fills slot `slot` of rstd1, qkv, att, lse, xmid, rstd2, gu
 * and, when x_out is not NULL, writes x_out (N, C) = the block's output. */
void qft_llama_block_forward(qft_llama_model *m, int l, int slot, const float *x_in,
                             float *x_out);

/* A group of linears sharing one input, whose outputs sit side by side in one buffer
 * (q,k,v into qkv; gate,up into gu). When the weights are adjacent in memory (they are,
 * in the flat parameter table) the group is one GEMM. */
typedef struct qft_llama_lin_group {
    int n;
    const float *w[3]; /* (out[i], in) each */
    int out[3];
} qft_llama_lin_group;

/* q, k, v of layer weights w (or of their gradients): outputs H*hd, KV*hd, KV*hd */
static inline qft_llama_lin_group qft_llama_qkv_group(const qft_llama_config *c,
                                                      const qft_llama_layer_ptrs *w) {
    const int qo = c->num_attention_heads * c->head_dim, kvo = c->num_key_value_heads * c->head_dim;
    return (qft_llama_lin_group){3, {w->wq, w->wk, w->wv}, {qo, kvo, kvo}};
}

/* gate, up: outputs I, I */
static inline qft_llama_lin_group qft_llama_gu_group(const qft_llama_config *c,
                                                     const qft_llama_layer_ptrs *w) {
    return (qft_llama_lin_group){2, {w->wgate, w->wup, NULL},
                                 {c->intermediate_size, c->intermediate_size, 0}};
}

/* y (N, ldy): columns [sum out[<i], + out[i]) = x (N, in) W[i]^T */
void qft_llama_lin_fwd(const qft_ops *ops, const qft_llama_lin_group *g, const float *x, int N,
                       int in, float *y, int ldy);
/* dx (N, in) = beta * dx + sum_i dy[:, cols i] W[i] */
void qft_llama_lin_bwd_x(const qft_ops *ops, const qft_llama_lin_group *g, const float *dy,
                         int ldy, int N, int in, float beta, float *dx);
/* dW[i] (out[i], in) += dy[:, cols i]^T x; dw lists the gradient views of g's weights */
void qft_llama_lin_bwd_w(const qft_ops *ops, const qft_llama_lin_group *g, float *const *dw,
                         const float *dy, int ldy, const float *x, int N, int in);

#endif
