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

#endif
