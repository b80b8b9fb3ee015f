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

/* Arithmetic rounded one operation at a time, on both sides: nvcc contracts a * b + c
 * into an FMA by default, which changes the last bit against the CPU code these twins
 * mirror (built with -ffp-contract=off). One home for them: cuda_twin_adapt.h uses these. */
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
QFT_TWIN float qft_twin_sub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
QFT_TWIN float qft_twin_div(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b); /* IEEE division whatever -prec-div says */
#else
    return a / b;
#endif
}
/* The same in double (nvcc contracts double a * b + c too). */
QFT_TWIN double qft_twin_dmul(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
QFT_TWIN double qft_twin_dadd(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
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

/* ---- DoRA's norms: one element of W + s B A (the op table's lowrank_row_norms) ---------- */
/* w + s * l, l = sum over k < r, in order, of Bj[k] * A[k * lda + c]; each step rounded. */
QFT_TWIN float qft_twin_lowrank_elem(float w, float s, const float *Bj, const float *A,
                                     int64_t lda, int64_t c, int64_t r) {
    float l = 0.0f;
    for (int64_t k = 0; k < r; k++) l = qft_twin_add(l, qft_twin_mul(Bj[k], A[k * lda + c]));
    return qft_twin_add(w, qft_twin_mul(s, l));
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

/* ---- SGD (core/cpu/cpu_optim.c, torch's _single_tensor_sgd) ---------------------------- */
/* One element: *p and the momentum buffer *buf (NULL-free: pass a dummy when mom_on is 0)
 * updated from gradient g, with the scalars of qft_ops_sgd_scalars passed one by one. */
QFT_TWIN void qft_twin_sgd_elem(float *p, float *buf, float g, int wd_on, float wd, int mom_on,
                                float mom, int first, float neg_lr) {
    float d = g;
    if (wd_on) d = fmaf(wd, *p, d);
    if (mom_on) {
        d = first ? d : qft_twin_add(qft_twin_mul(*buf, mom), d);
        *buf = d;
    }
    *p = fmaf(neg_lr, d, *p);
}
/* The sum of squares of x[lo, hi) in double, in index order (one chunk of sumsq). */
QFT_TWIN double qft_twin_sumsq_range(const float *x, size_t lo, size_t hi) {
    double s = 0.0;
    for (size_t i = lo; i < hi; i++)
        s = qft_twin_dadd(s, qft_twin_dmul((double)x[i], (double)x[i]));
    return s;
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

/* ---- HQQ (quant/hqq: hqq's grouping and bit packings) ---------------------------------
 * The flattened weight W (out, in) row-major is viewed as the grouped matrix (R, C): axis 1
 * (R = n / gs, C = gs), one group per row; axis 0 (R = gs, C = n / gs), one group per
 * column. The packed tensor has h = packed_rows rows of C entries, and grouped row r lives
 * in packed row r % h at slot r / h: 8 bits one byte per code; 4 bits h = R/2, slot 0 the
 * high nibble; 2 bits h = R/4, slot k at bits 6-2k; 3 bits h = ceil(R/10) little-endian
 * int32 words, slot k at bits 27-3k (the rows past R in the last word are padding). */
#define QFT_HQQ_META_GROUP 128 /* scales are meta-quantized in groups of 128 along axis 0 */

typedef struct qft_twin_hqq_geom {
    int nbits, axis;
    int64_t R, C;        /* the grouped matrix */
    int64_t n_groups;    /* axis 1: R, axis 0: C */
    int64_t packed_rows; /* h above */
} qft_twin_hqq_geom;

/* The geometry of an n-element weight, as the plugin's hqq_weight_init derives it; 0, or
 * -1 when hqq cannot hold the shape (n not a multiple of the group size, R not a multiple
 * of the rows a byte pairs, bits other than 2/3/4/8). */
QFT_TWIN int qft_twin_hqq_geom_make(qft_twin_hqq_geom *g, int nbits, int64_t group_size,
                                    int axis, int64_t n) {
    if (group_size <= 0 || n <= 0 || n % group_size || (axis != 0 && axis != 1)) return -1;
    if (nbits != 2 && nbits != 3 && nbits != 4 && nbits != 8) return -1;
    g->nbits = nbits, g->axis = axis;
    g->R = axis == 1 ? n / group_size : group_size;
    g->C = axis == 1 ? group_size : n / group_size;
    g->n_groups = axis == 1 ? g->R : g->C;
    if (nbits == 3) {
        g->packed_rows = (g->R + 9) / 10;
    } else {
        const int64_t per = nbits == 4 ? 2 : nbits == 2 ? 4 : 1; /* grouped rows a byte holds */
        if (g->R % per) return -1;
        g->packed_rows = g->R / per;
    }
    return 0;
}
/* Bytes of the packed tensor (int32 words for 3 bits). */
QFT_TWIN int64_t qft_twin_hqq_packed_bytes(const qft_twin_hqq_geom *g) {
    return g->packed_rows * g->C * (g->nbits == 3 ? 4 : 1);
}

/* A little-endian 32-bit word at p (4-byte aligned on the device, any alignment here). */
QFT_TWIN uint32_t qft_twin_load_u32(const uint8_t *p) {
#ifdef __CUDA_ARCH__
    return *(const uint32_t *)(const void *)p;
#else
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

/* The code of grouped element (r, c). */
QFT_TWIN int qft_twin_hqq_code(const uint8_t *packed, const qft_twin_hqq_geom *g, int64_t r,
                               int64_t c) {
    const int64_t h = g->packed_rows, C = g->C;
    switch (g->nbits) {
    case 8: return packed[r * C + c];
    case 4: return r < h ? packed[r * C + c] >> 4 : packed[(r - h) * C + c] & 15;
    case 2: return (packed[(r % h) * C + c] >> (6 - 2 * (int)(r / h))) & 3;
    default: return (int)((qft_twin_load_u32(packed + 4 * ((r % h) * C + c)) >>
                           (27 - 3 * (int)(r / h))) & 7u);
    }
}
/* The group of grouped element (r, c). */
QFT_TWIN int64_t qft_twin_hqq_group(const qft_twin_hqq_geom *g, int64_t r, int64_t c) {
    return g->axis == 1 ? r : c;
}
/* Group g's zero point: fp32, or (zero_q - meta zero) * meta scale with one global pair. */
QFT_TWIN float qft_twin_hqq_zero(const float *zero, const uint8_t *zero_q, float meta_scale,
                                 float meta_zero, int64_t g) {
    if (zero) return zero[g];
    return qft_twin_mul(qft_twin_sub((float)zero_q[g], meta_zero), meta_scale);
}
/* Group g's scale: fp32, or meta-quantized in the (128, n_groups / 128) view, whose
 * column g % mc has its pair in meta (2, mc): scale row, then zero row. */
QFT_TWIN float qft_twin_hqq_scale(const float *scale, const uint8_t *scale_q, const float *meta,
                                  int64_t n_groups, int64_t g) {
    if (scale) return scale[g];
    const int64_t mc = n_groups / QFT_HQQ_META_GROUP, c = g % mc;
    return qft_twin_mul(qft_twin_sub((float)scale_q[g], meta[mc + c]), meta[c]);
}
/* (code - zero) * scale, each rounded, as hqq's dequantize in fp32. */
QFT_TWIN float qft_twin_hqq_value(int code, float zero, float scale) {
    return qft_twin_mul(qft_twin_sub((float)code, zero), scale);
}

/* ---- GEMM calls as data ------------------------------------------------------------------
 * The quantized linear is a sequence of row-major GEMMs over named operands. Each call is
 * built here once; cuda_qlinear.cu runs it with device pointers (cuBLASLt), the twin test
 * with host pointers (the CPU backend's GEMM), so a wrong transpose, leading dimension,
 * offset or beta fails without a GPU.
 * C[c_off..] (M, N) = alpha op(A[a_off..]) op(B[b_off..]) + beta C, as qft_ops.gemm. */
enum {
    QFT_OPD_X = 0, /* the linear's input (N, ldx) */
    QFT_OPD_W,     /* the dequantized weight tile (rows, in) */
    QFT_OPD_Y,     /* the linear's output (N, ldy) */
    QFT_OPD_DY,    /* the output gradient (N, ldg) */
    QFT_OPD_DX,    /* the input gradient (N, ldx) */
    QFT_OPD_COUNT
};
typedef struct qft_twin_gemm_call {
    int ta, tb, M, N, K;
    float alpha, beta;
    int a, b, c;                 /* QFT_OPD_* */
    int64_t a_off, b_off, c_off; /* elements */
    int lda, ldb, ldc;
} qft_twin_gemm_call;

QFT_TWIN qft_twin_gemm_call qft_twin_call(int ta, int tb, int M, int N, int K, float alpha,
                                          int a, int64_t a_off, int lda, int b, int64_t b_off,
                                          int ldb, float beta, int c, int64_t c_off, int ldc) {
    qft_twin_gemm_call k;
    k.ta = ta, k.tb = tb, k.M = M, k.N = N, k.K = K, k.alpha = alpha, k.beta = beta;
    k.a = a, k.b = b, k.c = c, k.a_off = a_off, k.b_off = b_off, k.c_off = c_off;
    k.lda = lda, k.ldb = ldb, k.ldc = ldc;
    return k;
}

/* ---- the quantized linear: dequantize row tiles into a bf16 scratch, one GEMM each ----
 * Rows per tile: all of W when the scratch holds it (one GEMM), else the most rows that
 * fit, rounded down to a multiple of 8 so that every tile starts 16 bytes into Y's row
 * (cuBLASLt's tensor-core alignment); 0 when the scratch holds fewer than 8 rows. */
QFT_TWIN int64_t qft_twin_qlinear_tile_rows(int64_t out, int64_t in, int64_t scratch_elems) {
    if (out * in <= scratch_elems) return out;
    int64_t t = scratch_elems / in;
    return t - t % 8;
}
/* Forward, tile of rows [r0, r0 + n): Y[:, r0:r0+n] = X W_t^T + beta Y[:, r0:r0+n]; the
 * tiles own disjoint columns of Y, so each applies beta. */
QFT_TWIN qft_twin_gemm_call qft_twin_qlinear_fwd_tile(int N, int in, int64_t r0, int n, int ldx,
                                                      int ldy, float beta) {
    return qft_twin_call(0, 1, N, n, in, 1.0f, QFT_OPD_X, 0, ldx, QFT_OPD_W, 0, in, beta,
                         QFT_OPD_Y, r0, ldy);
}
/* Input gradient, tile t of rows [r0, r0 + n): dX += dY[:, r0:r0+n] W_t, the first tile
 * applying the caller's beta and the others accumulating (beta 1). */
QFT_TWIN qft_twin_gemm_call qft_twin_qlinear_bwd_tile(int N, int in, int64_t r0, int n, int ldg,
                                                      int ldx, float beta, int first) {
    return qft_twin_call(0, 0, N, in, n, 1.0f, QFT_OPD_DY, r0, ldg, QFT_OPD_W, 0, in,
                         first ? beta : 1.0f, QFT_OPD_DX, 0, ldx);
}

#endif /* QFT_CUDA_TWIN_H */
