/*
 * The element and column math of the adapter ops (cuda_adapt.cu: cols_axpby, col_dot,
 * div, row_norms, dropout), written once for both sides as cuda_twin.h does: the kernels
 * call these from device code, tests/cuda/test_cuda_twin_adapt.c from plain C, where
 * they are checked against the CPU backend and against qft_ops.h's dropout mask.
 *
 * Products and sums go through cuda_twin.h's rounded arithmetic (qft_twin_mul, _add,
 * _div, _dmul, _dadd): nvcc would otherwise contract a * b + c into an FMA (float or
 * double), and these must round every step as the CPU loops (built with
 * -ffp-contract=off) do, so that the bits match.
 *
 * C11 and CUDA C++ both parse this header.
 */
#ifndef QFT_CUDA_TWIN_ADAPT_H
#define QFT_CUDA_TWIN_ADAPT_H

#include "cuda_twin.h"

#include <stdint.h>

/* ---- cols_axpby: dst[r][j] = beta * dst[r][j] + c_j * src[r][j] ---------------------- */
/* The column's coefficient: f[j], f[j] + fadd when fadd is nonzero, fadd alone without f. */
QFT_TWIN float qft_twin_axpby_coef(const float *f, float fadd, int64_t j) {
    if (!f) return fadd;
    return fadd == 0.0f ? f[j] : f[j] + fadd;
}
/* One element, each product rounded before the sum; beta = 0 never reads d (it may be
 * NaN: dst's old contents are ignored). */
QFT_TWIN float qft_twin_axpby(float beta, float d, float c, float s) {
    if (beta == 0.0f) return qft_twin_mul(c, s);
    return qft_twin_add(qft_twin_mul(beta, d), qft_twin_mul(c, s));
}

/* ---- col_dot: acc[j] += (float)(sum_r (double)a[r][j] * b[r][j] / div[j]) ------------
 * A column's rows are cut into QFT_COLDOT_SLICES slices, slice y holding rows y, y + S,
 * y + 2S, ...: each slice is summed in order by its own thread (so N = 2048 rows take 128
 * steps, not 2048), then the slices' sums are added in slice order, the quotient rounded
 * once to float. Every product and sum is rounded in double. A fixed order, so results
 * repeat; not the CPU's row order, so they agree with it to double rounding, not bits. */
#define QFT_COLDOT_SLICES 16
#define QFT_COLDOT_COLS 32 /* columns per block: a warp reads 32 neighbouring floats */
/* Slice y's sum of column j. a (N, lda), b (N, ldb). */
QFT_TWIN double qft_twin_col_dot_slice(const float *a, int64_t lda, const float *b, int64_t ldb,
                                       int64_t N, int64_t j, int y) {
    double s = 0.0;
    for (int64_t r = y; r < N; r += QFT_COLDOT_SLICES)
        s = qft_twin_dadd(s, qft_twin_dmul((double)a[r * lda + j], (double)b[r * ldb + j]));
    return s;
}
/* The same sum, and g[r][j] = fj * a[r][j] from the value read (col_dot_scale; g may be a
 * itself, ldg = lda). */
QFT_TWIN double qft_twin_col_dot_slice_scale(const float *a, int64_t lda, const float *b,
                                             int64_t ldb, int64_t N, int64_t j, int y, float fj,
                                             float *g, int64_t ldg) {
    double s = 0.0;
    for (int64_t r = y; r < N; r += QFT_COLDOT_SLICES) {
        const float av = a[r * lda + j];
        s = qft_twin_dadd(s, qft_twin_dmul((double)av, (double)b[r * ldb + j]));
        g[r * ldg + j] = qft_twin_mul(fj, av);
    }
    return s;
}
/* Column j's increment from its slices' sums, part (QFT_COLDOT_SLICES), in slice order. */
QFT_TWIN float qft_twin_col_dot_merge(const double *part, float div) {
    double s = 0.0;
    for (int y = 0; y < QFT_COLDOT_SLICES; y++) s = qft_twin_dadd(s, part[y]);
    return (float)(s / (double)div);
}

/* ---- lowrank_out: t = y + scale * (u B^T)[r][j], then h = t, y = f[j] t ----------------
 * The rank-k product of row r of u (k) and row j of B (k) summed in k order in float, each
 * product and sum rounded; the kernel walks k in chunks in the same order. */
QFT_TWIN float qft_twin_lowrank_dot(const float *ur, const float *Bj, int64_t k) {
    float s = 0.0f;
    for (int64_t q = 0; q < k; q++) s = qft_twin_add(s, qft_twin_mul(ur[q], Bj[q]));
    return s;
}
QFT_TWIN float qft_twin_lowrank_t(float y, float scale, float dot) {
    return qft_twin_add(y, qft_twin_mul(scale, dot));
}

/* ---- row_norms: one block of QFT_NORM_LANES lanes per row ----------------------------
 * Lane l sums the squares of columns l, l + LANES, ... in double (row of `len`); the lanes
 * then merge pairwise, l with l + off for off = LANES/2 .. 1 (a fixed tree), and the root
 * becomes (float)sqrt(sum). */
#define QFT_NORM_LANES 256
QFT_TWIN double qft_twin_row_sumsq_lane(const float *row, int64_t len, int lane) {
    double s = 0.0;
    for (int64_t k = lane; k < len; k += QFT_NORM_LANES)
        s = qft_twin_dadd(s, qft_twin_dmul((double)row[k], (double)row[k]));
    return s;
}

/* ---- dropout: the counter-based mask of qft_ops.h -------------------------------------
 * qft_ops_mix64 and qft_ops_dropout_keep are host-only C (static inline, no __device__);
 * these are their copies for the kernel and MUST stay identical to them: the CPU backend
 * and the adapters' backward draw the same mask from (key, idx). test_cuda_twin_adapt.c
 * compares the two over many keys, indices and thresholds. */
QFT_TWIN uint64_t qft_twin_mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}
QFT_TWIN int qft_twin_dropout_keep(uint64_t key, uint64_t idx, uint64_t threshold) {
    return (qft_twin_mix64(key + (idx + 1) * 0x9E3779B97F4A7C15ull) >> 40) >= threshold;
}
/* Element idx of the (N, d) input, row-major: src * scale when kept, else 0. */
QFT_TWIN float qft_twin_dropout_value(uint64_t key, uint64_t idx, uint64_t threshold, float scale,
                                      float src) {
    return qft_twin_dropout_keep(key, idx, threshold) ? qft_twin_mul(src, scale) : 0.0f;
}

#endif /* QFT_CUDA_TWIN_ADAPT_H */
