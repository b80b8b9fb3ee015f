/* The GPU test's cases that live outside test_cuda_ops.c (one file per kernel family). */
#ifndef QFT_OPS_SUITES_H
#define QFT_OPS_SUITES_H

#include "qft_ops.h"

#include <check.h>
#include <stddef.h>

/* HQQ dequantization and the quantized linear (test_cuda_ops_linear.c), on the CUDA
 * table `gpu`. Added before the error test, whose recorded error is sticky. */
void ops_linear_add_tests(TCase *tc, const qft_ops *gpu);
/* The adapter ops: cols_axpby, col_dot, div, row_norms, dropout (test_cuda_ops_adapt.c). */
void ops_adapt_add_tests(TCase *tc, const qft_ops *gpu);

/* Device helpers over the CUDA table (test_cuda_ops.c), failing the test on error: a device
 * copy of host bytes, a copy back, and a wait for queued work that reports the backend's
 * first recorded error. */
void *ops_dup(const void *h, size_t bytes);
void ops_get(void *h, const void *d, size_t bytes);
void ops_synced(void);

#endif
