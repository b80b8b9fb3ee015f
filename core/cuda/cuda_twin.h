/*
 * The indexing and scalar math of the CUDA kernels, written once for both sides: the .cu
 * files call these from device code, and tests/cuda/test_cuda_twin.c calls them from plain
 * C to rebuild each kernel's schedule on the CPU and compare it with the CPU backend. So
 * a tile bound, a nibble order or an online-softmax merge that is wrong fails on a
 * machine without a GPU.
 *
 * C11 and CUDA C++ both parse this header; it depends on nothing but libm.
 */
#ifndef QFT_CUDA_TWIN_H
#define QFT_CUDA_TWIN_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define QFT_TWIN static inline __host__ __device__
#else
#define QFT_TWIN static inline
#endif

/* Multiply and add rounded separately, on both sides: nvcc contracts a * b + c into an
 * FMA by default, which changes the last bit against the CPU code these twins mirror. */
QFT_TWIN float qft_twin_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
QFT_TWIN float qft_twin_add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

/* ---- GEMM: row-major qft_ops.gemm as one column-major cuBLASLt call ---------------------
 * A row-major (R, C) matrix with row stride ld is a column-major (C, R) matrix with leading
 * dimension ld. So row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the
 * call multiplies B's storage by A's storage, with the same transpose flags, m = N, n = M.
 * Each layout is described by its stored (untransposed) column-major rows and cols. */
typedef struct qft_twin_gemm_plan {
    int trans_first, trans_second; /* op flags of the first (B) and second (A) operand */
    int m, n, k;                   /* column-major C^T is (m, n) = (N, M) */
    int first_rows, first_cols, first_ld;    /* B's storage as column-major */
    int second_rows, second_cols, second_ld; /* A's storage as column-major */
    int c_rows, c_cols, c_ld;                /* C's storage as column-major (N, M) */
} qft_twin_gemm_plan;

QFT_TWIN qft_twin_gemm_plan qft_twin_gemm_map(int transA, int transB, int M, int N, int K,
                                              int lda, int ldb, int ldc) {
    qft_twin_gemm_plan p;
    p.trans_first = transB, p.trans_second = transA;
    p.m = N, p.n = M, p.k = K;
    /* B is row-major (K, N) or, transposed, (N, K): column-major (N, K) or (K, N) */
    p.first_rows = transB ? K : N, p.first_cols = transB ? N : K, p.first_ld = ldb;
    /* A is row-major (M, K) or (K, M): column-major (K, M) or (M, K) */
    p.second_rows = transA ? M : K, p.second_cols = transA ? K : M, p.second_ld = lda;
    p.c_rows = N, p.c_cols = M, p.c_ld = ldc;
    return p;
}

/* ---- causal grouped-query attention, tiled ------------------------------------------------
 * Queries and keys are cut into tiles of QFT_ATT_TILE rows aligned at 0, so query tile qt
 * sees key tiles 0..qt (the diagonal tile partly), and key tile kt is seen by query tiles
 * kt..last. The forward and the dQ kernel run one block per (query tile, head); the dK/dV
 * kernel one block per (key tile, kv head), looping over its group's heads. */
#define QFT_ATT_TILE 32
#define QFT_ATT_HD_MAX 128 /* head dims the kernels' register tiles hold (Llama: 64, 128) */

QFT_TWIN int qft_twin_att_tiles(int T) { return (T + QFT_ATT_TILE - 1) / QFT_ATT_TILE; }
/* key tiles visited by query tile qt: 0..qt inclusive */
QFT_TWIN int qft_twin_att_key_tiles_for(int qt) { return qt + 1; }
/* first query tile that sees key tile kt */
QFT_TWIN int qft_twin_att_first_query_tile(int kt) { return kt; }
QFT_TWIN int qft_twin_att_kv_head(int h, int H, int KV) { return h / (H / KV); }
/* Offsets into qkv (B, T, (H+2KV)*hd) of row (b, t) for query head h, and for the key and
 * value of kv head kvh. */
QFT_TWIN size_t qft_twin_att_q(int b, int t, int h, int T, int H, int KV, int hd) {
    return ((size_t)b * T + t) * (size_t)((H + 2 * KV) * hd) + (size_t)h * hd;
}
QFT_TWIN size_t qft_twin_att_k(int b, int t, int kvh, int T, int H, int KV, int hd) {
    return ((size_t)b * T + t) * (size_t)((H + 2 * KV) * hd) + (size_t)(H + kvh) * hd;
}
QFT_TWIN size_t qft_twin_att_v(int b, int t, int kvh, int T, int H, int KV, int hd) {
    return ((size_t)b * T + t) * (size_t)((H + 2 * KV) * hd) + (size_t)(H + KV + kvh) * hd;
}
/* key j visible to query i of batch row b (mask row mb, NULL = all real) */
QFT_TWIN int qft_twin_att_visible(int i, int j, int T, const uint8_t *mb) {
    return j <= i && j < T && (!mb || mb[j]);
}
/* The factor that carries a running sum from maximum m_old to m_new (m_new >= m_old);
 * 0 while nothing has been seen (m_old = -inf). */
QFT_TWIN float qft_twin_rescale(float m_old, float m_new) {
    return m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
}
/* Probability of a score given the row's final log-sum-exp (backward recomputation). */
QFT_TWIN float qft_twin_att_prob(float s, float lse) {
    return s == -INFINITY ? 0.0f : expf(s - lse);
}

/* ---- log-sum-exp over the vocabulary, online ---------------------------------------------
 * Each of QFT_XENT_LANES threads of a row's block runs (max, sum) over the logits
 * v = lane, lane + LANES, ...; the lanes are then merged pairwise, lane l with l + off for
 * off = LANES/2, ..., 1. The result depends only on V, not on timing. */
#define QFT_XENT_LANES 256

QFT_TWIN void qft_twin_lse_push(float *m, float *s, float x) {
    if (x > *m) {
        *s = *s * qft_twin_rescale(*m, x) + 1.0f;
        *m = x;
    } else if (x != -INFINITY) {
        *s += expf(x - *m);
    }
}
QFT_TWIN void qft_twin_lse_merge(float *m, float *s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m2 > *m) {
        *s = *s * qft_twin_rescale(*m, m2) + s2;
        *m = m2;
    } else {
        *s += s2 * expf(m2 - *m);
    }
}

/* ---- bitsandbytes NF4 ------------------------------------------------------------------- */
/* The 4-bit code of flattened element i: byte i/2, high nibble for even i. */
QFT_TWIN int qft_twin_nf4_code(const uint8_t *packed, int64_t i) {
    const uint8_t byte = packed[i >> 1];
    return (i & 1) ? (byte & 15) : (byte >> 4);
}
/* The fp32 absmax of block b: stored, or undone from double quantization as the plugin's
 * nf4_block_absmax does (map[q] * nested_absmax[b / 256], then + offset). */
QFT_TWIN float qft_twin_nf4_absmax(const float *absmax, const uint8_t *qabsmax,
                                   const float *nested_absmax, const float *nested_map,
                                   float offset, int64_t b) {
    if (absmax) return absmax[b];
    return qft_twin_add(qft_twin_mul(nested_map[qabsmax[b]], nested_absmax[b / 256]), offset);
}

/* ---- AdamW (core/train/optim.c, torch's _single_tensor_adam) --------------------------- */
typedef struct qft_cuda_adamw_scalars {
    int decay_on;   /* weight decay is applied */
    float decay;    /* 1 - lr * wd */
    float w1, w1m;  /* lerp weight 1 - beta1, and w1 - 1 */
    int small;      /* |w1| < 0.5: torch's lerp branch */
    float b2, c2;   /* beta2, 1 - beta2 */
    float neg_step; /* -lr / (1 - beta1^t) */
    float bc2_sqrt; /* sqrt(1 - beta2^t) */
    float eps;
} qft_cuda_adamw_scalars;

/* From the doubles torch holds (b1, b2, eps, wd, lr) and the step t (1 for the first
 * update), rounded to float where torch's kernel casts them. Host only. */
static inline qft_cuda_adamw_scalars qft_cuda_adamw_scalars_make(double b1, double b2, double eps,
                                                                 double wd, double lr, long t) {
    qft_cuda_adamw_scalars s;
    s.decay_on = wd != 0.0;
    s.decay = (float)(1.0 - lr * wd);
    s.w1 = (float)(1.0 - b1);
    s.w1m = s.w1 - 1.0f;
    s.small = fabsf(s.w1) < 0.5f;
    s.b2 = (float)b2;
    s.c2 = (float)(1.0 - b2);
    s.neg_step = (float)(-(lr / (1.0 - pow(b1, (double)t))));
    s.bc2_sqrt = (float)pow(1.0 - pow(b2, (double)t), 0.5);
    s.eps = (float)eps;
    return s;
}

/* One element: *p, *m, *v updated from gradient g. */
QFT_TWIN void qft_twin_adamw_elem(float *p, float *m, float *v, float g,
                                  const qft_cuda_adamw_scalars *s) {
    float pi = *p;
    if (s->decay_on) pi = qft_twin_mul(pi, s->decay);
    const float mi = *m;
    const float mn = s->small ? fmaf(s->w1, g - mi, mi) : fmaf(s->w1m, g - mi, g);
    float vi = qft_twin_mul(*v, s->b2);
    vi = qft_twin_add(vi, qft_twin_mul(qft_twin_mul(s->c2, g), g));
    const float denom = qft_twin_add(sqrtf(vi) / s->bc2_sqrt, s->eps);
    *m = mn;
    *v = vi;
    *p = qft_twin_add(pi, qft_twin_mul(s->neg_step, mn) / denom);
}

/* ---- RoPE inverse frequencies (core/cpu/cpu_rope.c's formula, fp32 as transformers) ---- */
/* inv (hd/2); rope_type 0 default, 1 llama3. Host only. */
static inline void qft_twin_rope_inv_freq(float *inv, int hd, float theta, int rope_type,
                                          float factor, float low_freq_factor,
                                          float high_freq_factor, int original_max_pos) {
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)hd;
        float p = (float)pow((double)theta, (double)expo);
        inv[i] = 1.0f / p;
    }
    if (rope_type != 1) return;
    const float old_ctx = (float)original_max_pos;
    const float low_wl = old_ctx / low_freq_factor;
    const float high_wl = old_ctx / high_freq_factor;
    for (int i = 0; i < half; i++) {
        float f = inv[i];
        float wavelen = (float)(2.0 * 3.14159265358979323846) / f;
        float f_llama = wavelen > low_wl ? f / factor : f;
        float smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        float smoothed = (1.0f - smooth) * f_llama / factor + smooth * f_llama;
        int medium = !(wavelen < high_wl) && !(wavelen > low_wl);
        inv[i] = medium ? smoothed : f_llama;
    }
}
/* Table entry (t, i): the angle in fp32 as transformers forms it, cos/sin in double. */
QFT_TWIN float qft_twin_rope_angle(int t, float inv_freq) { return qft_twin_mul((float)t, inv_freq); }

#endif /* QFT_CUDA_TWIN_H */
