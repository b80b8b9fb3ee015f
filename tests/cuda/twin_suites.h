/* The twin test's cases that live outside test_cuda_twin.c (one file per kernel family). */
#ifndef QFT_TWIN_SUITES_H
#define QFT_TWIN_SUITES_H

#include <check.h>

/* HQQ dequantization and the quantized linear's tiles (test_cuda_twin_linear.c). */
void twin_linear_add_tests(TCase *tc);
/* The adapter ops' dropout mask, column ops and row norms (test_cuda_twin_adapt.c). */
void twin_adapt_add_tests(TCase *tc);
/* The GEMM attention's schedule against the CPU backend's attention (test_cuda_twin_attg.c). */
void twin_attg_add_tests(TCase *tc);

#endif
