/*
 * qft backend op table — the kernels a training step is made of.
 *
 * The model code and adapter plugins call these, never a BLAS or CUDA library directly, so
 * one model implementation runs on every backend. The CPU backend (core/cpu) computes in
 * fp32 with OpenBLAS for GEMM and OpenMP elsewhere; a CUDA backend fills the same table.
 * Pointers are backend memory (host memory on the CPU backend); tables and index arrays
 * (ids, targets, mask) live where the backend's tensors live too.
 *
 * Conventions:
 *   - Row-major, contiguous unless a leading dimension ("ld", in elements) is given.
 *   - Shape comments use B batch, T sequence, N = B*T rows, C hidden, H query heads,
 *     KV key/value heads, hd head dim, I intermediate (the parameter `inter`: complex.h,
 *     which some BLAS headers pull in, defines a macro I), V vocab.
 *   - "+=" marks outputs that are accumulated into (gradients, for micro-batch
 *     accumulation and for residual branches); every other output is overwritten.
 *   - Every op is deterministic: same inputs and thread count give the same bits, so
 *     activation recomputation reproduces the stored activations exactly.
 *   - In-place is allowed only where an entry says so.
 */
#ifndef QFT_OPS_H
#define QFT_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The qkv buffer layout attention reads: one row per token, (H + 2*KV)*hd floats wide,
 * queries first, then keys, then values; head h of row n starts at h*hd. */
#define QFT_QKV_WIDTH(H, KV, hd) (((H) + 2 * (KV)) * (hd))

/* The scalars of one AdamW update (torch's single-tensor AdamW, core/train/optim.c), made
 * on the host in double from the hyper-parameters, the learning rate and the step t, and
 * rounded to float where torch's kernel casts them; the op applies them element-wise. */
typedef struct qft_ops_adamw_scalars {
    int decay_on;   /* weight decay is applied */
    float decay;    /* 1 - lr * wd */
    float w1, w1m;  /* lerp weight 1 - beta1, and w1 - 1 */
    int small;      /* |w1| < 0.5: torch's lerp branch */
    float b2, c2;   /* beta2, 1 - beta2 */
    float neg_step; /* -lr / (1 - beta1^t) */
    float bc2_sqrt; /* sqrt(1 - beta2^t) */
    float eps;
} qft_ops_adamw_scalars;

/* The scalars of one SGD update (torch's single-tensor SGD, dampening 0, no nesterov). */
typedef struct qft_ops_sgd_scalars {
    int wd_on;     /* L2 weight decay added to the gradient */
    float wd;
    int mom_on;    /* momentum buffer in use */
    float mom;
    int first;     /* the first step: the buffer starts as a copy of the gradient */
    float neg_lr;  /* -lr */
} qft_ops_sgd_scalars;

/* rope_type values of rope_table (the same numbers as core's QFT_ROPE_*). */
enum { QFT_OPS_ROPE_DEFAULT = 0, QFT_OPS_ROPE_LLAMA3 = 1 };

typedef struct qft_ops {
    const char *name; /* "cpu", "cuda" */

    /* ---- memory ---------------------------------------------------------------------- */
    /* 64-byte aligned backend memory, counted in the memory report under `what`. */
    void *(*alloc)(size_t bytes, const char *what);
    void (*free)(void *p);
    void (*zero)(float *x, size_t n);
    void (*copy)(float *dst, const float *src, size_t n);

    /* ---- dense algebra --------------------------------------------------------------- */
    /* C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, row-major.
     * A is (M, K) with row stride lda, or (K, M) when transA; B is (K, N) with stride ldb,
     * or (N, K) when transB; C has row stride ldc. beta = 0 ignores C's old contents.
     * A linear y = x W^T with W (out, in) is gemm(0, 1, N, out, in, 1, x, in, W, in, 0,
     * y, out); its input gradient gemm(0, 0, N, in, out, 1, dy, out, W, in, beta, dx, in);
     * its weight gradient gemm(1, 0, out, in, N, 1, dy, out, x, in, 1, dW, in). */
    void (*gemm)(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* out (n) = a (n) + b (n); out may alias a or b. */
    void (*add)(float *out, const float *a, const float *b, size_t n);

    /* ---- embedding ------------------------------------------------------------------- */
    /* out (N, C) = table (V, C) [ids (N)]. Ids must be in [0, V): the caller checks. */
    void (*embedding_fwd)(float *out, const int32_t *ids, const float *table, int N, int C);
    /* dtable (V, C) += scatter of dout (N, C) by ids (N). */
    void (*embedding_bwd)(float *dtable, const float *dout, const int32_t *ids, int N, int C);

    /* ---- RMSNorm (transformers LlamaRMSNorm: w * (x * rsqrt(mean(x^2) + eps))) ---------- */
    /* out (N, C), rstd (N) saved for backward; x (N, C), w (C). out must not alias x. */
    void (*rmsnorm_fwd)(float *out, float *rstd, const float *x, const float *w, int N, int C,
                        float eps);
    /* dx (N, C) += d/dx, dw (C) += d/dw (dw NULL: a frozen weight, skipped), given dout
     * (N, C), x (N, C), w (C), rstd (N). */
    void (*rmsnorm_bwd)(float *dx, float *dw, const float *dout, const float *x, const float *w,
                        const float *rstd, int N, int C);

    /* ---- rotary position embedding (rotate-half, as transformers' Llama) -------------- */
    /* Fills cos, sin (T, hd/2) for positions 0..T-1: angle = t * inv_freq[i], inv_freq as
     * transformers computes it in fp32, rope_type 0 = default, 1 = llama3 scaling with
     * factor, low/high freq factors and the original max positions (ignored for 0).
     * Column i serves both dims i and i + hd/2 (transformers' cat(freqs, freqs)). */
    void (*rope_table)(float *cos, float *sin, int T, int hd, float theta, int rope_type,
                       float factor, float low_freq_factor, float high_freq_factor,
                       int original_max_pos);
    /* In place on nh heads of every row of x (B*T rows, row stride ld, head h at h*hd):
     * x' = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1). Row b*T + t uses
     * table row t. cos, sin (T, hd/2). */
    void (*rope_fwd)(float *x, int ld, const float *cos, const float *sin, int B, int T,
                     int nh, int hd);
    /* In place: the gradient of rope_fwd's input from its output's gradient (the inverse
     * rotation), same layout. */
    void (*rope_bwd)(float *dx, int ld, const float *cos, const float *sin, int B, int T,
                     int nh, int hd);

    /* ---- causal grouped-query attention ---------------------------------------------- */
    /* Floats of scratch that attention_fwd and attention_bwd need for sequence length T and
     * head dim hd at the current thread count (a per-thread row block, never (T, T)). */
    size_t (*attention_workspace)(int T, int hd);
    /* qkv (B, T, (H+2*KV)*hd) as QFT_QKV_WIDTH; query head h uses kv head h / (H / KV).
     * Key j is visible to query i when j <= i and mask[b*T + j] != 0 (mask (B, T), NULL =
     * all real). scale multiplies q.k (1/sqrt(hd) for Llama); softmax in fp32.
     * out (B, T, H*hd); lse (B, H, T) the log-sum-exp of each row's scaled scores, saved
     * for backward, which recomputes the probabilities from it. A row with no visible key
     * gets out = 0 and lse = -INFINITY (and no gradient). work holds work_floats floats of
     * scratch, attention_workspace(T, hd) for full speed; with less the op runs on fewer
     * threads (same results), and it needs at least one thread's share of it. */
    void (*attention_fwd)(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                          int T, int H, int KV, int hd, float scale, float *work,
                          size_t work_floats);
    /* dqkv (B, T, (H+2*KV)*hd) = the gradient of q, k and v (overwritten), from dout
     * (B, T, H*hd), out and lse of the forward, and the same qkv, mask, shapes and scale. */
    void (*attention_bwd)(float *dqkv, const float *dout, const float *out, const float *lse,
                          const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                          int hd, float scale, float *work, size_t work_floats);

    /* ---- SwiGLU MLP activation ------------------------------------------------------- */
    /* h (N, I) = silu(gate) * up, where row n of gu (N, 2*I) holds gate then up
     * (gate at gu[n*2I], up at gu[n*2I + I]). */
    void (*swiglu_fwd)(float *h, const float *gu, int N, int inter);
    /* dgu (N, 2*I) = gradient of gate and up (overwritten) from dh (N, I). */
    void (*swiglu_bwd)(float *dgu, const float *dh, const float *gu, int N, int inter);

    /* ---- cross-entropy (fp32 log-softmax over V) --------------------------------------- */
    /* For each row n of logits (N, V): if targets[n] == -100 the row is ignored (loss 0,
     * lse not needed); else loss[n] = lse - logits[n, targets[n]], lse[n] = log sum exp.
     * Targets are already shifted (transformers: logits[t] predicts label[t+1]) and must be
     * -100 or in [0, V): the caller checks. Returns the sum of the row losses (double
     * accumulation) and the count of non-ignored rows in *n_valid. loss may be NULL. */
    double (*cross_entropy_fwd)(const float *logits, const int32_t *targets, int N, int V,
                                float *lse, float *loss, int *n_valid);
    /* dlogits (N, V) = scale * (softmax(logits) - onehot(targets)) per row, 0 on ignored
     * rows; lse (N) from cross_entropy_fwd. dlogits may alias logits (the model does so,
     * so no second (N, V) buffer exists). */
    void (*cross_entropy_bwd)(float *dlogits, const float *logits, const float *lse,
                              const int32_t *targets, int N, int V, float scale);
    /* Both at once, in place, for callers that need no logits afterwards: per-row losses
     * into loss (N, required), returns their sum and *n_valid as cross_entropy_fwd, and
     * overwrites logits with scale * (softmax - onehot) (0 on ignored rows). scale is
     * usually 1/n_valid, which the caller knows from targets beforehand. */
    double (*cross_entropy_fused)(float *logits, const int32_t *targets, int N, int V,
                                  float scale, float *loss, int *n_valid);

    /* ---- host <-> backend memory ------------------------------------------------------- */
    /* bytes from host memory into backend memory (upload), and back (download); both
     * complete before they return. On the CPU backend, memcpy. */
    void (*upload)(void *dst, const void *src_host, size_t bytes);
    void (*download)(void *dst_host, const void *src, size_t bytes);

    /* ---- optimizer (appended; core/train/optim.c drives them) --------------------------- */
    /* One AdamW update of p (n) from g (n), with moments m (n) and v (n) updated in place. */
    void (*adamw)(float *p, const float *g, float *m, float *v, size_t n,
                  const qft_ops_adamw_scalars *s);
    /* One SGD update of p (n) from g (n); buf (n) is the momentum buffer (NULL without
     * momentum). */
    void (*sgd)(float *p, const float *g, float *buf, size_t n, const qft_ops_sgd_scalars *s);
    /* The sum of squares of x (n) in double, for the clipping norm: deterministic, the same
     * bits on every backend (partial sums over fixed chunks of QFT_OPS_SUMSQ_CHUNK floats,
     * each summed in index order, then the partials in chunk order). */
    double (*sumsq)(const float *x, size_t n);
    /* x (n) *= coef in place (no-op when coef == 1). */
    void (*scale)(float *x, size_t n, float coef);
} qft_ops;

/* The chunk of sumsq's partial sums. */
#define QFT_OPS_SUMSQ_CHUNK 65536

#ifdef __cplusplus
}
#endif
#endif /* QFT_OPS_H */
