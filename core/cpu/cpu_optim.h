/* The optimizer kernels of the CPU backend (cpu_optim.c): torch's single-tensor AdamW and
 * SGD element updates, the clipping norm's sum of squares and the gradient scale, over
 * host memory. The op table's entries of the same name; core/train/optim.c calls them
 * directly for state in host memory. Built as their own library, qft_cpu_optim, without
 * floating-point contraction (core/cpu's other kernels are built with it), because their
 * bits are checked against torch's. */
#ifndef QFT_CPU_OPTIM_H
#define QFT_CPU_OPTIM_H

#include "qft_ops.h"

void qft_cpu_adamw(float *p, const float *g, float *m, float *v, size_t n,
                   const qft_ops_adamw_scalars *s);
void qft_cpu_sgd(float *p, const float *g, float *buf, size_t n, const qft_ops_sgd_scalars *s);
double qft_cpu_sumsq(const float *x, size_t n);
void qft_cpu_scale(float *x, size_t n, float coef);

/* The element-wise pieces adapters compose (cpu_adapt.c), in the same library for the same
 * reason: the entries of the same name in qft_ops.h. */
void qft_cpu_cols_axpby(float *dst, int64_t ldd, float beta, const float *src, int64_t lds,
                        const float *f, float fadd, int64_t N, int64_t n);
void qft_cpu_col_dot(float *acc, const float *a, int64_t lda, const float *b, int64_t ldb,
                     const float *div, int64_t N, int64_t n);
void qft_cpu_col_dot_scale(float *acc, float *g, int64_t ldg, const float *a, int64_t lda,
                           const float *b, int64_t ldb, const float *div, const float *f,
                           int64_t N, int64_t n);
/* lowrank_out's pass after the GEMM: h (N, n) = y when h is given, y *= f per column when
 * f is (y (N, ldy)). */
void qft_cpu_out_keep_scale(float *y, int64_t ldy, const float *f, float *h, int64_t N,
                            int64_t n);
void qft_cpu_div(float *out, const float *a, const float *b, size_t n);
void qft_cpu_row_norms(float *norm, const float *x, int64_t ld, int64_t n, int64_t len);
void qft_cpu_dropout(uint64_t key, double p, const float *src, int64_t N, int64_t d, float *dst,
                     int accumulate);

#endif
