/* The op table's lowrank_row_norms on the CPU (qft_ops.h, ABI 6): DoRA's ||W_j + s B_j A||
 * for every row of a linear's weight, a tile of rows of W decoded at a time (the
 * `dequantize` entry's values, or the dense weight's), each element of W + s B A formed by
 * cuda_twin.h's qft_twin_lowrank_elem as the CUDA kernel forms it, and squared into a
 * double per row. Nothing of W's size beyond one tile per thread is held. In the
 * no-contraction library (core/cpu/meson.build), so the elements match the GPU's bits. */
#include "cpu_ops.h"
#include "cuda_twin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows per thread's tile: about 256 KiB of fp32, so a tile stays in L2 while it is read. */
static int64_t tile_rows(int64_t in) {
    const int64_t t = ((int64_t)1 << 16) / (in > 0 ? in : 1);
    return t < 1 ? 1 : t;
}

void qft_cpu_lowrank_row_norms(float *norm, const qft_qlayout *w, const float *w_dense,
                               int64_t out, int64_t in, const float *A, const float *B,
                               int64_t r, float scale) {
    if (out <= 0 || in <= 0) return;
    const int64_t T = tile_rows(in), tiles = (out + T - 1) / T;
#pragma omp parallel
    {
        float *tile = w ? malloc((size_t)(T * in) * sizeof *tile) : NULL; // (T, in)
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t r0 = t * T, n = out - r0 < T ? out - r0 : T;
            const float *rows = w_dense ? w_dense + r0 * in : tile; // (n, in)
            if (!w_dense) {
                if (!tile) { /* no memory for the tile: a NaN norm, loud in any loss */
                    for (int64_t i = 0; i < n; i++) norm[r0 + i] = NAN;
                    continue;
                }
                qft_cpu_dequantize(w, r0, n, tile);
            }
            for (int64_t i = 0; i < n; i++) {
                const float *Bj = B + (r0 + i) * r; // (r)
                double s = 0.0;
                for (int64_t c = 0; c < in; c++) {
                    const float v = qft_twin_lowrank_elem(rows[i * in + c], scale, Bj, A, in, c, r);
                    s += (double)v * v;
                }
                norm[r0 + i] = (float)sqrt(s);
            }
        }
        free(tile);
    }
}
