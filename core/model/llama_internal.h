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
    float *x;            // (L+1, cap_N, C) block inputs; x[L] is the last block's output;
                         // with x_bf16 (2, cap_N, C): the pass's working copies, kept in xq
    int x_bf16;          /* the residual stream is kept as bf16 (m->residual_bf16) */
    uint16_t *xq;        // (L+1, cap_N, C) with x_bf16: the block inputs as bf16
    float *rstd1, *rstd2; // (slots, cap_N)
    float *qkv;          // (slots, cap_N, (H+2KV)*hd) after RoPE
    float *att;          // (slots, cap_N, H*hd) attention output before o_proj
    float *lse;          // (slots, cap_N*H) as (B, H, T) log-sum-exp of attention rows
    float *xmid;         // (slots, cap_N, C) residual after attention
    float *gu;           // (slots, cap_N, 2I) gate and up projections; backward overwrites
                         // a layer's with their gradient
    float *lnf;          // (cap_N, C) final norm output
    float *rstdf;        // (cap_N)
    int logit_cap;       /* rows the logits buffer holds: min(cap_N, m->logit_rows) */
    float *logits;       // (logit_cap, V); becomes dlogits in backward
    float *ce_lse;       // (cap_N) log-sum-exp of each logits row
    int32_t *targets;    // (cap_N) labels shifted left by one, -100 at each row's end
    int32_t *ids;        // (cap_N) the batch's ids, in backend memory
    uint8_t *mask_buf;   // (cap_N) the batch's mask, in backend memory
    int32_t *targets_host; // (cap_N) the targets built on the host, then uploaded
    /* scratch, shared by all layers */
    float *ln;           // (cap_N, C) a norm output, recomputed where backward needs it
    float *h;            // (cap_N, I) silu(gate) * up
    float *dres;         // (cap_N, C) gradient of the residual stream
    float *dln;          // (cap_N, C)
    float *dqkv;         // (cap_N, (H+2KV)*hd)
    float *datt;         // (cap_N, H*hd)
    float *dh;           // (cap_N, I)
    float *lin_tmp;      // (cap_N, C) an adapted o_proj's or down_proj's output / its gradient
    float *att_work;     // (att_work_n) attention scratch, a few query rows per thread
    float *embed_rows;   // (cap_N, C) host memory: the rows gathered with m->embed_on_host
    size_t att_work_n;
    /* the last forward */
    int B, T;            /* shape of the last forward's batch, 0 when none */
    const uint8_t *mask; /* that batch's mask in backend memory (mask_buf), NULL for none */
    int fwd_recompute;   /* m->recompute at the last forward: its backward follows it */
    int n_valid;         /* positions counted in the loss */
    int logits_valid;    /* 1 after a forward that held all its logits at once, 0 once
                          * backward turned them into gradients */
    int grad_ready;      /* 1 after forward until its backward */
};

/* Block l's input (l = L: the last block's output) as the passes use it, fp32: with
 * bf16 residuals one of two working buffers, which x_keep rounds and keeps and x_load
 * brings back for backward. */
float *qft_llama_x(const qft_llama_model *m, int l);
void qft_llama_x_keep(const qft_llama_model *m, int l, int N);
const float *qft_llama_x_load(const qft_llama_model *m, int l, int N);

/* Rows per head-and-loss chunk for a batch of N rows (m->logit_rows, or N). */
int qft_llama_logit_chunk(const qft_llama_model *m, int N);

/* The view slot of an entry (its layer and field) in a pointer table, p or g. */
float **qft_llama_view_slot(qft_llama_ptrs *v, int layer, int field);

/* Assigns the unit layout's offsets (llama_units.c): sets every dense entry's offset,
 * n_trainable, n_params and the unit table; bf16: qft_llama_build.units_bf16. */
int qft_llama_units_layout(qft_llama_model *m, int pad, size_t align, int bf16, qft_err *err);

/* Runs block l on x_in (N, C): fills slot `slot` of rstd1, qkv, att, lse, xmid, rstd2, gu
 * and, when x_out is not NULL, writes x_out (N, C) = the block's output. */
int qft_llama_block_forward(qft_llama_model *m, int l, int slot, const float *x_in,
                            float *x_out, qft_err *err);

/* One linear of a block as the passes see it: a dense base (in the flat buffer) or a
 * packed one (its quantizer's state), and its gradient when it trains. */
typedef struct qft_llama_linear {
    int out, in;
    struct qft_llama_adapted *ad;    /* the adapter on it, NULL when none */
    const float *w;                  /* (out, in) dense weight, NULL when packed */
    float *dw;                       /* (out, in) gradient, NULL when frozen or packed */
    const qft_quantizer_vtable *qvt; /* when packed */
    const struct qft_qweight *qw;
    /* when packed and the model is on another backend: the buffers there, and the
     * model's scratch for dequantized tiles */
    const struct qft_qlayout *ql;
    float *qtile;
    size_t qtile_floats;
} qft_llama_linear;

/* An adapted linear: the adapter plugin's state and the base as the plugin sees it. */
typedef struct qft_llama_adapted {
    qft_linear_base base;    /* its ctx points back to this struct */
    char name[80];           /* "model.layers.3.self_attn.q_proj" */
    qft_llama_model *m;
    int layer, k;
    qft_adapter_param params[QFT_ADAPTER_MAX_PARAMS];
    int n_params;
    int first_entry;         /* entries[first_entry .. + n_params) are its tensors */
    qft_adapter_linear *al;  /* NULL until attached */
    /* The adapter trains a vector with one entry per output row (DoRA's magnitude): its
     * gradient sums dy times an (N, out) product of forward, which the adapter keeps. On
     * down_proj, whose forward recomputation otherwise skips, that would be (N, C) kept
     * for every layer until backward (1 GiB at 8B shapes), so such a down_proj is run
     * again in backward's recomputation instead (one more down GEMM a layer). */
    int row_scaled;
    int on_backend;          /* attached to the backend's copies (m->ops), not the host's */
} qft_llama_adapted;

/* Frees the backend's copies: packed buffers, the tile scratch, dev_params, dev_grads. */
void qft_llama_backend_free(qft_llama_model *m);

/* Detaches every attached adapter and attaches it again (init = 0) on the backend's copies
 * (on_backend, m->ops) or the host's (the cpu backend). */
int qft_llama_adapters_rebind(qft_llama_model *m, int on_backend, qft_err *err);

/* Linear k (QFT_LIN_*) of layer l; gradients only when `grads` is set. */
qft_llama_linear qft_llama_linear_of(const qft_llama_model *m, int l, int k, int grads);
/* The LM head as a linear (V, C): the view p.lm_head, or its bf16 copy on a backend. */
qft_llama_linear qft_llama_head_of(const qft_llama_model *m);
/* The embedding's bf16 copy on a backend (V, C), NULL when it has none. */
const uint16_t *qft_llama_embed_bf16(const qft_llama_model *m);
/* Frozen dense weights the backend may keep as bf16 (frozen_bf16): a block's linears and
 * an untied head, whose products go through the tile path like packed weights, and an
 * untied embedding, whose rows the backend widens as it looks them up. The norms
 * (vectors) stay fp32. */
static inline int qft_llama_bf16_candidate(const qft_llama_model *m, const qft_param_entry *e) {
    if (e->role != QFT_ROLE_FROZEN || e->ndim != 2) return 0;
    if (e->layer >= 0) return 1; /* a block's 2-D tensors are its linears */
    /* the embedding (field 0, looked up by embedding_fwd_bf16) and the head (2), untied */
    return e->layer == -1 && (e->field == 0 || e->field == 2) && !m->cfg.tie_word_embeddings;
}

/* The entry of a tensor outside the blocks (layer -1): field 0 the embedding, 1 the final
 * norm, 2 the head; NULL when the model has none (a tied head). */
const qft_param_entry *qft_llama_outer_entry(const qft_llama_model *m, int field);

/* A group of linears sharing one input, whose outputs sit side by side in one buffer
 * (q,k,v into qkv; gate,up into gu; or one linear alone). When the dense weights (or
 * gradients) are adjacent in memory, as in the flat parameter table, the group is one
 * GEMM. */
typedef struct qft_llama_lin_group {
    int n;
    qft_llama_linear lin[3];
} qft_llama_lin_group;

qft_llama_lin_group qft_llama_qkv_group(const qft_llama_model *m, int l, int grads);
qft_llama_lin_group qft_llama_gu_group(const qft_llama_model *m, int l, int grads);
qft_llama_lin_group qft_llama_one_group(const qft_llama_model *m, int l, int k, int grads);

/* y (N, ldy): columns [sum out[<i], + out[i]) = beta * y + x (N, in) W[i]^T, each
 * member's adapter (if any) applied to its own term before the beta * y is added. */
int qft_llama_lin_fwd(qft_llama_model *m, const qft_llama_lin_group *g, const float *x, int N,
                      float *y, int ldy, float beta, qft_err *err);
/* dx (N, in) = sum_i d/dx of member i given dy[:, cols i]; adapters accumulate their
 * parameters' gradients. An adapter may rewrite its member's columns of dy (DoRA scales
 * them): with tmp NULL it does so in place, for a caller that reads dy no more; otherwise
 * on a copy in tmp, (N, widest member's out) of scratch that is not x, dy or dx. */
int qft_llama_lin_bwd_x(qft_llama_model *m, const qft_llama_lin_group *g, const float *x,
                        float *dy, int ldy, int N, float *dx, float *tmp, qft_err *err);
/* The base product of one linear, as qft_linear_base offers it to adapters. */
int qft_llama_base_fwd(const qft_ops *ops, const qft_llama_linear *L, const float *x, int N,
                       float *y, int ldy, float beta, qft_err *err);
int qft_llama_base_bwd_x(const qft_ops *ops, const qft_llama_linear *L, const float *dy, int ldy,
                         int N, float *dx, float beta, qft_err *err);
/* dW[i] (out[i], in) += dy[:, cols i]^T x, for the members that train */
void qft_llama_lin_bwd_w(const qft_ops *ops, const qft_llama_lin_group *g, const float *dy,
                         int ldy, const float *x, int N);

#endif
