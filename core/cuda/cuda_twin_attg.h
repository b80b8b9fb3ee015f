/*
 * Attention as GEMMs, the schedule written once for both sides. The CUDA backend runs
 * causal grouped-query attention either with its flash kernels (cuda_attention.cu: fp32 on
 * the CUDA cores, nothing but registers and shared memory) or, by default, as the CPU
 * backend does (core/cpu/cpu_attention.c): for a tile of query rows, the scores against
 * every key the rows can see are one GEMM into a (rows, keys) block per head, softmaxed in
 * place by a row kernel and multiplied by V in a second GEMM; backward recomputes the block
 * from the saved log-sum-exp. The products then run in cuBLASLt on the tensor cores (TF32 or
 * bf16 under train.matmul_precision) instead of scalar FMAs, at the price of the score
 * blocks' traffic through memory. Nothing of size (T, T) exists: a tile holds `rows` query
 * rows of every head.
 *
 * Each GEMM is batched over the kv heads (stride hd through qkv's keys and values), and
 * called once per member j of a head group: query head h = kvh * g + j sits g * hd floats
 * after the previous kv head's, so the strides are uniform only within one j. The score
 * block of a tile is (H, nq, nk), head h at h * nq * nk, so the row kernels see H * nq
 * rows of nk scores: row r is head r / nq, query i0 + r % nq.
 *
 * Backward walks the tiles from the last to the first: the last tile sees every key, so its
 * first dK and dV products (j = 0) write all T rows with beta = 0 and the rest accumulate
 * without a separate zeroing pass. dQ of a tile is written once per head.
 *
 * The schedule calls its primitives through qft_twin_attg_prims: the CUDA backend passes
 * cuBLASLt and its row kernels, tests/cuda/test_cuda_twin_attg.c passes plain loops and
 * compares the result with the CPU backend's attention on the CPU.
 *
 * C11 and CUDA C++ both parse this header.
 */
#ifndef QFT_CUDA_TWIN_ATTG_H
#define QFT_CUDA_TWIN_ATTG_H

#include "cuda_twin.h"

/* Query rows per tile are a multiple of this (and at least this, unless T is smaller). */
#define QFT_ATTG_ROW_STEP 16

/* C_p = alpha op(A_p) op(B_p) + beta C_p for p < count, row-major as qft_ops.gemm, with
 * X_p = X + p * sX. */
typedef struct qft_twin_bgemm {
    int ta, tb, M, N, K, count;
    float alpha, beta;
    const float *A;
    int64_t lda, sA;
    const float *B;
    int64_t ldb, sB;
    float *C;
    int64_t ldc, sC;
} qft_twin_bgemm;

/* One tile: batch row b, query rows [i0, i0 + nq), keys [0, nk = i0 + nq). */
typedef struct qft_twin_attg_tile {
    int b, i0, nq, nk;
} qft_twin_attg_tile;

/* The shapes and tensors of one call, as the qft_ops attention entries take them. */
typedef struct qft_twin_attg_args {
    int B, T, H, KV, hd;
    float scale;
    const float *qkv;    // (B, T, W) W = (H + 2KV) hd
    const uint8_t *mask; // (B, T) or NULL
    float *out;          // (B, T, H hd) forward's output; read by backward
    float *lse;          // (B, H, T)
    const float *dout;   // (B, T, H hd) backward only
    float *dqkv;         // (B, T, W) backward only
    float *s, *ds;       // (H, rows, T) score blocks: probabilities, and their gradient
    int rows;            // query rows per tile
} qft_twin_attg_args;

typedef struct qft_twin_attg_prims {
    void *ctx;
    /* each returns 0, or nonzero to stop the schedule */
    int (*bgemm)(void *ctx, const qft_twin_bgemm *g);
    /* Forward rows: S (H nq rows of nk scaled scores) -> probabilities in place, and the
     * rows' log-sum-exp into lse; invisible keys get 0, a row with none gets lse = -inf. */
    int (*softmax)(void *ctx, const qft_twin_attg_args *a, const qft_twin_attg_tile *t);
    /* Backward rows: S (scores) -> probabilities from lse in place, and ds (dP = dO V^T on
     * entry) -> scale * P * (dP - rowsum(dO * O)). */
    int (*dscores)(void *ctx, const qft_twin_attg_args *a, const qft_twin_attg_tile *t);
} qft_twin_attg_prims;

/* Query rows per tile that work_floats of scratch holds (two (H, rows, T) blocks), a
 * multiple of QFT_ATTG_ROW_STEP capped at T; 0 when not even one step fits. */
QFT_TWIN int qft_twin_attg_rows(size_t work_floats, int T, int H) {
    const size_t per_row = (size_t)2 * H * T; // s and ds
    size_t rows = work_floats / per_row;
    if (rows >= (size_t)T) return T;
    rows -= rows % QFT_ATTG_ROW_STEP;
    return (int)rows;
}

/* Row r of a tile's score block: its head and its query position, where its log-sum-exp
 * lives in lse (B, H, T), and where its output row starts in out / dout (B, T, H hd). The
 * row kernels and the CPU replay both index through these. */
QFT_TWIN int qft_twin_attg_row_head(int r, int nq) { return r / nq; }
QFT_TWIN int qft_twin_attg_row_query(int r, int nq, int i0) { return i0 + r % nq; }
QFT_TWIN size_t qft_twin_attg_row_lse(int r, int b, int nq, int i0, int H, int T) {
    return ((size_t)b * H + (size_t)qft_twin_attg_row_head(r, nq)) * (size_t)T +
           (size_t)qft_twin_attg_row_query(r, nq, i0);
}
QFT_TWIN size_t qft_twin_attg_row_out(int r, int b, int nq, int i0, int H, int T, int hd) {
    return ((size_t)b * T + (size_t)qft_twin_attg_row_query(r, nq, i0)) * (size_t)H * hd +
           (size_t)qft_twin_attg_row_head(r, nq) * hd;
}

/* qkv's row width, and the start of batch row b's rows. */
QFT_TWIN int qft_twin_attg_width(const qft_twin_attg_args *a) {
    return (a->H + 2 * a->KV) * a->hd;
}

/* One batched call from its operands: (pointer, leading dimension, batch stride) each. */
static inline qft_twin_bgemm qft_twin_bgemm_of(int ta, int tb, int M, int N, int K, int count,
                                               float alpha, const float *A, int64_t lda,
                                               int64_t sA, const float *B, int64_t ldb,
                                               int64_t sB, float beta, float *C, int64_t ldc,
                                               int64_t sC) {
    qft_twin_bgemm c;
    c.ta = ta, c.tb = tb, c.M = M, c.N = N, c.K = K, c.count = count;
    c.alpha = alpha, c.beta = beta;
    c.A = A, c.lda = lda, c.sA = sA, c.B = B, c.ldb = ldb, c.sB = sB;
    c.C = C, c.ldc = ldc, c.sC = sC;
    return c;
}

/* The operands the GEMMs of a tile share, for group member j (query heads kvh * g + j,
 * batched over kvh): rows i0.. of those query heads in qkv, dqkv and out/dout (batch stride
 * g * hd), the keys and values of batch row b (stride hd), and j's slice of a score block
 * (stride g * nq * nk). */
typedef struct qft_twin_attg_where {
    int64_t W, od, sq, sblk, blk;
    size_t q, k, v, o; /* offsets: queries at row i0, keys and values at row 0, out at row i0 */
} qft_twin_attg_where;

static inline qft_twin_attg_where qft_twin_attg_where_of(const qft_twin_attg_args *a,
                                                     const qft_twin_attg_tile *t, int j) {
    qft_twin_attg_where p;
    const int64_t g = a->H / a->KV;
    p.W = qft_twin_attg_width(a), p.od = (int64_t)a->H * a->hd, p.sq = g * a->hd;
    p.blk = (int64_t)j * t->nq * t->nk, p.sblk = g * t->nq * t->nk;
    const size_t row0 = (size_t)t->b * a->T; // batch row b's first token
    p.q = (row0 + t->i0) * (size_t)p.W + (size_t)j * a->hd;
    p.k = row0 * (size_t)p.W + (size_t)a->H * a->hd;
    p.v = row0 * (size_t)p.W + (size_t)(a->H + a->KV) * a->hd;
    p.o = (row0 + t->i0) * (size_t)p.od + (size_t)j * a->hd;
    return p;
}

/* X_h = scale Q_h K^T, (nq, nk) into block X (s or ds) */
static inline qft_twin_bgemm qft_twin_attg_scores(const qft_twin_attg_args *a,
                                                  const qft_twin_attg_tile *t, int j, float *X) {
    const qft_twin_attg_where p = qft_twin_attg_where_of(a, t, j);
    return qft_twin_bgemm_of(0, 1, t->nq, t->nk, a->hd, a->KV, a->scale, a->qkv + p.q, p.W, p.sq,
                             a->qkv + p.k, p.W, a->hd, 0.0f, X + p.blk, t->nk, p.sblk);
}

/* out_h rows of the tile = P_h V, (nq, hd) */
static inline qft_twin_bgemm qft_twin_attg_pv(const qft_twin_attg_args *a,
                                              const qft_twin_attg_tile *t, int j) {
    const qft_twin_attg_where p = qft_twin_attg_where_of(a, t, j);
    return qft_twin_bgemm_of(0, 0, t->nq, a->hd, t->nk, a->KV, 1.0f, a->s + p.blk, t->nk, p.sblk,
                             a->qkv + p.v, p.W, a->hd, 0.0f, a->out + p.o, p.od, p.sq);
}

/* dP_h = dO_h V^T, (nq, nk) into ds */
static inline qft_twin_bgemm qft_twin_attg_dp(const qft_twin_attg_args *a,
                                              const qft_twin_attg_tile *t, int j) {
    const qft_twin_attg_where p = qft_twin_attg_where_of(a, t, j);
    return qft_twin_bgemm_of(0, 1, t->nq, t->nk, a->hd, a->KV, 1.0f, a->dout + p.o, p.od, p.sq,
                             a->qkv + p.v, p.W, a->hd, 0.0f, a->ds + p.blk, t->nk, p.sblk);
}

/* dV_kvh (+)= P_h^T dO_h, (nk, hd) into dqkv's values */
static inline qft_twin_bgemm qft_twin_attg_dv(const qft_twin_attg_args *a,
                                              const qft_twin_attg_tile *t, int j, float beta) {
    const qft_twin_attg_where p = qft_twin_attg_where_of(a, t, j);
    return qft_twin_bgemm_of(1, 0, t->nk, a->hd, t->nq, a->KV, 1.0f, a->s + p.blk, t->nk, p.sblk,
                             a->dout + p.o, p.od, p.sq, beta, a->dqkv + p.v, p.W, a->hd);
}

/* dQ_h rows of the tile = dS_h K, (nq, hd) into dqkv's queries */
static inline qft_twin_bgemm qft_twin_attg_dq(const qft_twin_attg_args *a,
                                              const qft_twin_attg_tile *t, int j) {
    const qft_twin_attg_where p = qft_twin_attg_where_of(a, t, j);
    return qft_twin_bgemm_of(0, 0, t->nq, a->hd, t->nk, a->KV, 1.0f, a->ds + p.blk, t->nk,
                             p.sblk, a->qkv + p.k, p.W, a->hd, 0.0f, a->dqkv + p.q, p.W, p.sq);
}

/* dK_kvh (+)= dS_h^T Q_h, (nk, hd) into dqkv's keys */
static inline qft_twin_bgemm qft_twin_attg_dk(const qft_twin_attg_args *a,
                                              const qft_twin_attg_tile *t, int j, float beta) {
    const qft_twin_attg_where p = qft_twin_attg_where_of(a, t, j);
    return qft_twin_bgemm_of(1, 0, t->nk, a->hd, t->nq, a->KV, 1.0f, a->ds + p.blk, t->nk,
                             p.sblk, a->qkv + p.q, p.W, p.sq, beta, a->dqkv + p.k, p.W, a->hd);
}

static inline qft_twin_attg_tile qft_twin_attg_tile_at(const qft_twin_attg_args *a, int b,
                                                       int i0) {
    qft_twin_attg_tile t;
    t.b = b, t.i0 = i0, t.nq = a->T - i0 < a->rows ? a->T - i0 : a->rows, t.nk = i0 + t.nq;
    return t;
}

/* Forward: out and lse from qkv (a->s is the scratch block). 0, or the failing prim's. */
static inline int qft_twin_attg_forward(const qft_twin_attg_args *a,
                                        const qft_twin_attg_prims *p) {
    const int g = a->H / a->KV;
    int rc = 0;
    for (int b = 0; b < a->B && !rc; b++)
        for (int i0 = 0; i0 < a->T && !rc; i0 += a->rows) {
            const qft_twin_attg_tile t = qft_twin_attg_tile_at(a, b, i0);
            for (int j = 0; j < g && !rc; j++) {
                const qft_twin_bgemm c = qft_twin_attg_scores(a, &t, j, a->s);
                rc = p->bgemm(p->ctx, &c);
            }
            if (!rc) rc = p->softmax(p->ctx, a, &t);
            for (int j = 0; j < g && !rc; j++) {
                const qft_twin_bgemm c = qft_twin_attg_pv(a, &t, j);
                rc = p->bgemm(p->ctx, &c);
            }
        }
    return rc;
}

/* Backward: dqkv (overwritten) from dout, out, lse and qkv. */
static inline int qft_twin_attg_backward(const qft_twin_attg_args *a,
                                         const qft_twin_attg_prims *p) {
    const int g = a->H / a->KV;
    const int last = (a->T - 1) / a->rows * a->rows; // i0 of the last tile, which sees all keys
    int rc = 0;
    for (int b = 0; b < a->B && !rc; b++)
        for (int i0 = last; i0 >= 0 && !rc; i0 -= a->rows) {
            const qft_twin_attg_tile t = qft_twin_attg_tile_at(a, b, i0);
            for (int j = 0; j < g && !rc; j++) {
                const qft_twin_bgemm s = qft_twin_attg_scores(a, &t, j, a->s);
                const qft_twin_bgemm dp = qft_twin_attg_dp(a, &t, j);
                rc = p->bgemm(p->ctx, &s) || p->bgemm(p->ctx, &dp);
            }
            if (!rc) rc = p->dscores(p->ctx, a, &t);
            for (int j = 0; j < g && !rc; j++) {
                const float beta = i0 == last && j == 0 ? 0.0f : 1.0f;
                const qft_twin_bgemm dv = qft_twin_attg_dv(a, &t, j, beta);
                const qft_twin_bgemm dq = qft_twin_attg_dq(a, &t, j);
                const qft_twin_bgemm dk = qft_twin_attg_dk(a, &t, j, beta);
                rc = p->bgemm(p->ctx, &dv) || p->bgemm(p->ctx, &dq) || p->bgemm(p->ctx, &dk);
            }
        }
    return rc;
}

#endif
