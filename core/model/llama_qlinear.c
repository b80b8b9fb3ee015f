/* Products of a frozen packed weight, tile by tile: rows [r0, r0 + tr) of W are
 * dequantized by the quantizer plugin into a scratch tile (the rows split over threads,
 * which the vtable allows for disjoint tiles), then one backend GEMM consumes the tile.
 * The dense weight never exists whole: peak extra memory is one tile. */
#include "llama_internal.h"

#include <stdlib.h>

/* About 1 MiB of fp32 per tile: big enough for the GEMM to run near peak, small enough to
 * stay in the last-level cache while it is consumed. */
static int tile_rows(int out, int in) {
    int r = (1 << 18) / (in > 0 ? in : 1);
    if (r < 16) r = 16;
    return r < out ? r : out;
}

static int dequant_tile(const qft_quantizer_vtable *vt, const struct qft_qweight *qw, int r0,
                        int tr, int in, float *tile, qft_err *err) {
    int bad = 0;
    qft_err local = {0};
#pragma omp parallel for schedule(static) reduction(| : bad)
    for (int t = 0; t < tr; t += 4) {
        int n = tr - t < 4 ? tr - t : 4;
        qft_err e = {0};
        if (vt->dequantize_rows(qw, r0 + t, n, tile + (size_t)t * in, &e)) {
            bad |= 1;
#pragma omp critical
            local = e;
        }
    }
    if (bad) {
        if (err) *err = local;
        return -1;
    }
    return 0;
}

int qft_llama_qlin_fwd(const qft_ops *o, const qft_quantizer_vtable *vt, const struct qft_qweight *qw, int out,
                       int in, const float *x, int N, float *y, int ldy, float beta,
                       qft_err *err) {
    const int tr = tile_rows(out, in);
    float *tile = malloc((size_t)tr * in * sizeof(float)); // (tr, in)
    if (!tile) return qft_err_setf(err, "out of memory for a %d x %d dequantization tile", tr, in);
    int rc = 0;
    for (int r0 = 0; r0 < out && !rc; r0 += tr) {
        const int n = out - r0 < tr ? out - r0 : tr;
        rc = dequant_tile(vt, qw, r0, n, in, tile, err);
        if (!rc) o->gemm(0, 1, N, n, in, 1.0f, x, in, tile, in, beta, y + r0, ldy); // (N, n)
    }
    free(tile);
    return rc;
}

int qft_llama_qlin_bwd_x(const qft_ops *o, const qft_quantizer_vtable *vt, const struct qft_qweight *qw, int out,
                         int in, const float *dy, int ldy, int N, float *dx, float beta,
                         qft_err *err) {
    const int tr = tile_rows(out, in);
    float *tile = malloc((size_t)tr * in * sizeof(float)); // (tr, in)
    if (!tile) return qft_err_setf(err, "out of memory for a %d x %d dequantization tile", tr, in);
    int rc = 0;
    for (int r0 = 0; r0 < out && !rc; r0 += tr) {
        const int n = out - r0 < tr ? out - r0 : tr;
        rc = dequant_tile(vt, qw, r0, n, in, tile, err);
        /* dx (N, in) += dy[:, r0:r0+n] (N, n) tile (n, in); the first tile applies beta */
        if (!rc) o->gemm(0, 0, N, in, n, 1.0f, dy + r0, ldy, tile, in, r0 ? 1.0f : beta, dx, in);
    }
    free(tile);
    return rc;
}
