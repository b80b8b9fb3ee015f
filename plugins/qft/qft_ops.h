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

/* ---- packed weights a backend can decode ---------------------------------------------
 * A quantizer that can run on another backend describes its packed weight as one of these
 * formats (quantizer entry `layout`, qft_sdk.h); the core copies the buffers into the
 * backend's memory and the backend's `dequantize` decodes rows from them. The formats are
 * the peers' (bitsandbytes NF4, hqq), with every buffer in the plugin's own layout; a
 * plugin with another format runs on the cpu backend only. */
enum { QFT_QFMT_NONE = 0, QFT_QFMT_NF4 = 1, QFT_QFMT_HQQ = 2, QFT_QFMT_BF16 = 3 };
#define QFT_QLAYOUT_MAX_BUFS 8
/* Buffer indices of QFT_QFMT_NF4 (bitsandbytes): the flattened weight (n = out * in) in
 * blocks of `blocksize` consecutive elements, two 4-bit codes a byte (the first element
 * in the high nibble), value = code[c] * absmax[block]; with double quantization the
 * absmax is qabsmax's code in nested_map times nested_absmax[block / 256], plus offset. */
enum {
    QFT_QL_NF4_PACKED = 0,   /* u8 ((n + 1) / 2) */
    QFT_QL_NF4_CODE,         /* f32 (16) */
    QFT_QL_NF4_ABSMAX,       /* f32 (n_blocks), absent when double-quantized */
    QFT_QL_NF4_QABSMAX,      /* u8 (n_blocks), double-quantized only */
    QFT_QL_NF4_NESTED_ABSMAX,/* f32 (ceil(n_blocks / 256)), double-quantized only */
    QFT_QL_NF4_NESTED_MAP    /* f32 (256), double-quantized only */
};
/* Buffer indices of QFT_QFMT_HQQ (hqq): codes of nbits in hqq's packing over the grouped
 * matrix (axis 1: (n / group_size, group_size); axis 0: (group_size, n / group_size)),
 * value = (code - zero[g]) * scale[g] with hqq's stored scale; zero and scale fp32 per
 * group, or meta-quantized to 8 bits (zero: one global pair zero_meta; scale: groups of
 * 128 along axis 0 of (128, n_groups / 128) with scale_meta's rows). */
enum {
    QFT_QL_HQQ_PACKED = 0,   /* u8 bytes (int32 words for 3 bits) */
    QFT_QL_HQQ_SCALE,        /* f32 (n_groups), absent when meta-quantized */
    QFT_QL_HQQ_ZERO,         /* f32 (n_groups), absent when meta-quantized */
    QFT_QL_HQQ_ZERO_Q,       /* u8 (n_groups) */
    QFT_QL_HQQ_SCALE_Q,      /* u8 (n_groups) */
    QFT_QL_HQQ_SCALE_META    /* f32 (2, n_groups / 128): scale row, then zero row */
};
/* Buffer index of QFT_QFMT_BF16: a dense weight stored as bfloat16 (the core's own format
 * for frozen dense weights on a backend, train.frozen_dtype = "bf16"). */
enum {
    QFT_QL_BF16_VALUES = 0   /* u16 (out, in), bfloat16 bit patterns */
};
typedef struct qft_qlayout {
    int format;            /* QFT_QFMT_* */
    int64_t out, in;       /* the dense weight's shape */
    /* The buffers, by the format's indices (NULL with 0 bytes when absent): the plugin's
     * own memory when `layout` fills this, the backend's once the core has copied them. */
    const void *buf[QFT_QLAYOUT_MAX_BUFS];
    size_t bytes[QFT_QLAYOUT_MAX_BUFS];
    /* QFT_QFMT_NF4 */
    int nf4_blocksize;
    float nf4_offset;      /* double quantization's offset (0 without) */
    /* QFT_QFMT_HQQ */
    int hqq_nbits, hqq_group_size, hqq_axis; /* 2/3/4/8 bits, axis 0 or 1 */
    float hqq_zero_meta[2];/* meta-quantized zero: its scale, then its zero */
} qft_qlayout;

/* Counter-based dropout (the `dropout` entry): element idx of a call's (N, d) input,
 * row-major, is kept when the top 24 bits of mix(key + (idx + 1) * golden) are at least
 * p * 2^24 (rounded), mix being splitmix64's finaliser; kept elements are scaled by
 * 1 / (1 - p). Adapter plugins derive `key` from the step, micro-batch and linear, so
 * recomputation and backward draw the forward's mask without storing it. */
static inline uint64_t qft_ops_mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}
static inline uint64_t qft_ops_dropout_threshold(double p) {
    return (uint64_t)(p * 16777216.0 + 0.5);
}
static inline int qft_ops_dropout_keep(uint64_t key, uint64_t idx, uint64_t threshold) {
    return (qft_ops_mix64(key + (idx + 1) * 0x9E3779B97F4A7C15ull) >> 40) >= threshold;
}

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
    /* dgu (N, 2*I) = gradient of gate and up (overwritten) from dh (N, I). dgu may be gu
     * itself (the model overwrites gu with its gradient: no second (N, 2I) buffer). */
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

    /* ---- appended in ABI 4: packed weights and the pieces adapters compose ----------- */
    /* 1 when backend pointers are host pointers (cpu): host code may then read them (DoRA's
     * norm cache does); 0 when every access must go through an op (cuda, cpu_guard). */
    int host_memory;
    /* dst (n, w->in) = rows [row0, row0 + n) of the weight w describes, dequantized to
     * fp32. w is a host struct whose buffers are backend memory; its format is one the
     * backend decodes (the core checks with has_qformat before copying a weight there).
     * Values are the quantizer plugin's dequantize_rows, bit for bit. */
    void (*dequantize)(const qft_qlayout *w, int64_t row0, int64_t n, float *dst);
    /* 1 when dequantize decodes QFT_QFMT_* `format`. */
    int (*has_qformat)(int format);
    /* dst (N, n), row stride ldd: dst[r][j] = beta * dst[r][j] + c_j * src[r][j] (src row
     * stride lds), c_j = f[j] when fadd == 0, f[j] + fadd otherwise, and fadd alone when f
     * is NULL; beta = 0 ignores dst's old contents. dst may alias src (same strides). */
    void (*cols_axpby)(float *dst, int64_t ldd, float beta, const float *src, int64_t lds,
                       const float *f, float fadd, int64_t N, int64_t n);
    /* acc[j] += (float)((sum over r of (double)a[r][j] * b[r][j]) / div[j]) for j < n, each
     * column's sum in double in a fixed order of the backend's (the CPU's: row order; the
     * CUDA backend's: row slices summed in order, then the slices in order); a (N, lda),
     * b (N, ldb), div (n). */
    void (*col_dot)(float *acc, const float *a, int64_t lda, const float *b, int64_t ldb,
                    const float *div, int64_t N, int64_t n);
    /* out (n) = a (n) / b (n). */
    void (*div)(float *out, const float *a, const float *b, size_t n);
    /* norm[j] = (float)sqrt(sum over k of (double)x[j][k]^2) for the n rows of x (n, ld),
     * each `len` long. */
    void (*row_norms)(float *norm, const float *x, int64_t ld, int64_t n, int64_t len);
    /* dst (N, d) = src * keep / (1 - p), or += that with accumulate, with the counter-based
     * mask of qft_ops_dropout_keep for (key, p). dst may alias src without accumulate. */
    void (*dropout)(uint64_t key, double p, const float *src, int64_t N, int64_t d, float *dst,
                    int accumulate);
    /* out (N, C) = table (V, C) [ids (N)] from a bf16 table (bit patterns), exactly: a
     * frozen embedding kept as bf16 (QFT_QFMT_BF16). Ids in [0, V): the caller checks. */
    void (*embedding_fwd_bf16)(float *out, const int32_t *ids, const uint16_t *table, int N,
                               int C);

    /* ---- appended in ABI 5: bf16 storage of activations -------------------------------- */
    /* dst (n) = src (n) rounded to bf16, nearest even (bit patterns, as qft_f32_to_bf16). */
    void (*f32_to_bf16)(uint16_t *dst, const float *src, size_t n);
    /* dst (n) = src (n) widened to fp32, exactly. */
    void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);
    /* The product with a weight W (out, in) kept as a layout on this backend (a packed base,
     * or a frozen dense one as QFT_QFMT_BF16):
     *   backward 0: c (N, ldc)[:, 0:out] = a (N, lda)[:, 0:in] W^T + beta c;
     *   backward 1: c (N, ldc)[:, 0:in] = a (N, lda)[:, 0:out] W + beta c.
     * scratch (scratch_floats floats of backend memory, at least one row of W) receives
     * dequantized rows. How is the backend's: the CPU dequantizes fp32 tiles into the scratch
     * and runs its GEMM (the plugin's values, exactly); CUDA does the same, except under bf16
     * matmul precision, where it dequantizes bf16 tiles and runs bf16 GEMMs with fp32
     * accumulation from a bf16 copy of a. */
    void (*qmatmul)(const qft_qlayout *w, int backward, const float *a, int64_t lda, int64_t N,
                    float *c, int64_t ldc, float beta, float *scratch, size_t scratch_floats);

    /* ---- appended in ABI 6 ------------------------------------------------------------- */
    /* DoRA's weight norm with neither W nor W + s B A written out: for j < out,
     *   norm[j] = (float)sqrt(sum over c < in of (double)v_jc^2),
     *   v_jc = W_jc + scale * l_jc,  l_jc = sum over k < r, in order, of B[j][k] A[k][c],
     * every product and sum of v rounded to fp32 (cuda_twin.h's qft_twin_lowrank_elem), the
     * squares summed in double in the backend's order. W (out, in) is the layout w (packed
     * or bf16, decoded as `dequantize` decodes it) or, when w is NULL, the dense fp32
     * w_dense; A (r, in) and B (out, r) row-major. One read of W. */
    void (*lowrank_row_norms)(float *norm, const qft_qlayout *w, const float *w_dense,
                              int64_t out, int64_t in, const float *A, const float *B, int64_t r,
                              float scale);

    /* ---- appended in ABI 7: DoRA's element-wise steps, one pass each ------------------- */
    /* A low-rank term added to an output that holds the base product, then rescaled per
     * column: for r < N, j < out, with t = y[r][j] + scale * (u B^T)[r][j] (u (N, k) and
     * B (out, k) row-major; the rank-k product in fp32, summed in the backend's order: the
     * CPU's GEMM, CUDA's k order, neither following train.matmul_precision):
     *   h[r][j] = t when h (N, out) is not NULL,
     *   y[r][j] = f[j] * t when f (out) is not NULL, else t.
     * y has row stride ldy. One read of y instead of the GEMM's, a copy's and a scale's. */
    void (*lowrank_out)(float *y, int64_t ldy, const float *u, const float *B, int64_t k,
                        float scale, const float *f, float *h, int64_t N, int64_t out);
    /* col_dot (acc[j] += (float)(sum over r of (double)a[r][j] * b[r][j]) / div[j]), the
     * same sums in the same order, and from the same read of a: g[r][j] = f[j] * a[r][j]
     * (g (N, ldg) may be a itself, ldg = lda: in place). */
    void (*col_dot_scale)(float *acc, float *g, int64_t ldg, const float *a, int64_t lda,
                          const float *b, int64_t ldb, const float *div, const float *f,
                          int64_t N, int64_t n);

    /* ---- appended in ABI 8: address space with memory behind parts of it ---------------
     * What full sharding keeps the model's units in on a backend (CUDA's virtual memory
     * management: cuMemAddressReserve, then cuMemCreate + cuMemMap per range; cpu_guard's
     * reserved mappings): pointers into a reservation stay valid while memory comes and
     * goes behind its ranges, as the host's qft_vm_* do for the cpu backend. All five NULL
     * where the backend has none of this. */
    /* Bytes that a commit's offset from its reservation's start and its size are multiples
     * of (2 MiB on current GPUs); 0 where this device has no such memory management, and
     * the other four are not to be called. */
    size_t (*vm_granularity)(void);
    /* bytes (a multiple of the granularity) of address space with no memory behind it;
     * NULL when none is left */
    void *(*vm_reserve)(size_t bytes);
    /* Memory behind [p, p + bytes) of a reservation, zero-filled, counted as alloc counts
     * under `what`: 0, or -1 when the backend is out of memory. Until then, and after
     * vm_decommit, any access to the range is the backend's equivalent of a bad address. */
    int (*vm_commit)(void *p, size_t bytes, const char *what);
    /* Gives back the memory of one whole earlier commit (the same p and bytes) once work
     * queued on it is done. */
    void (*vm_decommit)(void *p, size_t bytes);
    /* Ends a reservation of vm_reserve, after every range of it has been decommitted. */
    void (*vm_unreserve)(void *p, size_t bytes);

    /* ---- appended in ABI 9: page-locked host memory ------------------------------------
     * shard.cpu_offload copies the same host buffers to and from the backend every step:
     * the trainable parameters up and their gradients down, or under full sharding each
     * unit's pieces. A GPU's copy engine reads and writes page-locked memory directly;
     * pageable memory goes through the driver's staging buffers, at a fraction of the
     * link's rate. Both NULL where the backend's memory is the host's (cpu, cpu_guard). */
    /* Locks [p, p + bytes) of mapped, writable host memory that overlaps no range locked
     * before: 0, or -1 with the reason (the driver's refusal) in why (why_len bytes), the
     * memory then as it was and copies from it as before. */
    int (*host_pin)(void *p, size_t bytes, char *why, size_t why_len);
    /* Unlocks the range an earlier host_pin locked at p, before that memory is freed. */
    void (*host_unpin)(void *p);

    /* ---- appended in ABI 9: the backend's first failure --------------------------------
     * 0 while every call so far has succeeded; -1 with the first failure's message in why
     * (why_len bytes): a kernel's fault, a copy or a cuBLASLt call that failed. With wait,
     * first waits for the work queued so far, so that a fault in it is counted (the copies
     * to the host wait anyway). The void entries above cannot return a failure, so the
     * core asks after each micro-batch's passes, after each optimizer step, at the end of
     * the run and before it writes anything it downloaded: a fault ends the run with its
     * message instead of training on what failed copies left behind. NULL where every
     * failure is returned where it happens (cpu, cpu_guard). */
    int (*status)(int wait, char *why, size_t why_len);
} qft_ops;

/* The chunk of sumsq's partial sums. */
#define QFT_OPS_SUMSQ_CHUNK 65536

#ifdef __cplusplus
}
#endif
#endif /* QFT_OPS_H */
