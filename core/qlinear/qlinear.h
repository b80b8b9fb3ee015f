/* The products a frozen quantized linear needs in training, computed tile by tile from the
 * packed weight: a tile of W's rows is dequantized by the quantizer plugin and handed to
 * the BLAS GEMM, so the dense weight never exists whole (peak extra memory: the forward's
 * tile per thread, at most 8 MiB each and 64 MiB together, or the backward's one shared
 * 16 MiB tile; 1 MiB tiles below 128 rows of input). W is (out, in), row-major, as the
 * quantizer holds it. */
#ifndef QFT_QLINEAR_H
#define QFT_QLINEAR_H

#include "qft_sdk.h"

/* Y (N, ldy)[:, 0:out] = X (N, in) · Wᵀ + beta · Y; ldy >= out (the row stride of Y, so
 * a linear can write its columns of a wider buffer, as q/k/v do into one qkv row). */
int qft_qlinear_forward(const qft_quantizer_vtable *vt, const qft_qweight *qw, int64_t out,
                        int64_t in, const float *X, int64_t N, float *Y, int64_t ldy,
                        float beta, qft_err *err);
/* dX (N, in) = dY (N, ldy)[:, 0:out] · W + beta · dX. */
int qft_qlinear_backward_input(const qft_quantizer_vtable *vt, const qft_qweight *qw,
                               int64_t out, int64_t in, const float *dY, int64_t ldy, int64_t N,
                               float *dX, float beta, qft_err *err);
/* Rows of W in one forward tile for a product with N rows of input, with the team size
 * omp_get_max_threads() gives (exposed for tests/benchmarks). */
int64_t qft_qlinear_tile_rows(int64_t out, int64_t in, int64_t N);

#endif
