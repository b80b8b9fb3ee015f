/* Fused products of a frozen packed weight, inside one OpenMP team and with OpenBLAS held
 * to one thread for the duration: two thread pools taking turns on the same cores (an
 * OpenMP team dequantizing, then OpenBLAS's workers multiplying) spend much of their time
 * spinning against each other, so here the team does both.
 * Forward: each thread takes whole tiles of W's rows into its own scratch tile, then
 * multiplies them into its own (disjoint) columns of Y, with no barrier between tiles.
 * Backward: dX sums over all rows of W, so the team dequantizes each tile together and
 * then splits dX's columns; its tiles are large so that there are few barriers.
 * Tile sizes (bench/README.md, "Quantizers", has the measurements): every single-threaded
 * GEMM call repacks its whole X (N, in) operand, so a forward tile of n rows costs an extra
 * pass over X per n rows of W; at 128 rows (2 MiB, a tile that stays in L2) that was 17%
 * over dense at batch 512, at 512 rows (8 MiB) 5-8%, while spilling the dequantized tile
 * to memory and reading it back costs less than that. The backward's GEMMs have K = n, and
 * short K means dX is read and written once per tile. */
#include "qlinear.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#define QFT_QLINEAR_TILE_MAX ((int64_t)8 << 20)   // bytes per thread in the forward
#define QFT_QLINEAR_SCRATCH ((int64_t)64 << 20)   // forward bytes, all threads together
#define QFT_QLINEAR_BWD_TILE ((int64_t)16 << 20)  // bytes of the backward's shared tile
#define QFT_QLINEAR_SMALL_TILE ((int64_t)1 << 20) // bytes of either tile when N is small

/* Rows a multiple of 16 (whole vectors of floats), at most out. */
static int64_t round_rows(int64_t r, int64_t out) {
    r = r < 16 ? 16 : (r + 15) / 16 * 16;
    return r < out ? r : out;
}

/* A product of few rows of X is bound by memory traffic, not by the multiply: there a tile
 * that stays in the core's L2 saves writing the dequantized weight out and reading it back
 * (about twice dense's traffic otherwise), and repacking a small X costs little. */
#define QFT_QLINEAR_SMALL_N 128

int64_t qft_qlinear_tile_rows(int64_t out, int64_t in, int64_t N) {
    const int64_t nt = omp_get_max_threads();
    int64_t bytes;
    if (N < QFT_QLINEAR_SMALL_N) {
        bytes = QFT_QLINEAR_SMALL_TILE;
    } else {
        /* many threads share the scratch budget, but a tile never shrinks below 2 MiB */
        bytes = QFT_QLINEAR_SCRATCH / nt;
        if (bytes > QFT_QLINEAR_TILE_MAX) bytes = QFT_QLINEAR_TILE_MAX;
        if (bytes < ((int64_t)2 << 20)) bytes = (int64_t)2 << 20;
    }
    int64_t r = bytes / ((in > 0 ? in : 1) * (int64_t)sizeof(float));
    /* at least one tile per thread, or a small weight leaves threads idle */
    const int64_t share = (out + nt - 1) / nt;
    return round_rows(r < share ? r : share, out);
}

static int64_t bwd_tile_rows(int64_t out, int64_t in, int64_t N) {
    const int64_t bytes = N < QFT_QLINEAR_SMALL_N ? QFT_QLINEAR_SMALL_TILE : QFT_QLINEAR_BWD_TILE;
    return round_rows(bytes / ((in > 0 ? in : 1) * (int64_t)sizeof(float)), out);
}

static int check_args(const qft_quantizer_vtable *vt, const qft_qweight *qw, int64_t out,
                      int64_t in, int64_t N, qft_err *err) {
    if (!vt || !vt->dequantize_rows || !qw)
        return qft_err_setf(err, "qlinear: no quantizer or no packed weight");
    if (out <= 0 || in <= 0 || N < 0)
        return qft_err_setf(err, "qlinear: bad shape out=%lld in=%lld N=%lld", (long long)out,
                            (long long)in, (long long)N);
    return 0;
}

int qft_qlinear_forward(const qft_quantizer_vtable *vt, const qft_qweight *qw, int64_t out,
                        int64_t in, const float *X, int64_t N, float *Y, int64_t ldy,
                        float beta, qft_err *err) {
    if (check_args(vt, qw, out, in, N, err)) return -1;
    if (ldy < out) return qft_err_setf(err, "qlinear: ldy %lld < out %lld", (long long)ldy,
                                       (long long)out);
    if (N == 0) return 0;
    const int64_t tr = qft_qlinear_tile_rows(out, in, N);
    const int64_t n_tiles = (out + tr - 1) / tr;
    const int nth = n_tiles < omp_get_max_threads() ? (int)n_tiles : omp_get_max_threads();
    float *scratch = malloc((size_t)(nth * tr * in) * sizeof(float)); // (nth, tr, in)
    if (!scratch)
        return qft_err_setf(err, "qlinear: out of memory for %d tiles of %lld x %lld", nth,
                            (long long)tr, (long long)in);
    const int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    int bad = 0;
    qft_err first = {0};
#pragma omp parallel num_threads(nth)
    {
        float *tile = scratch + (size_t)omp_get_thread_num() * (size_t)(tr * in); // (tr, in)
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; t++) {
            const int64_t r0 = t * tr, n = out - r0 < tr ? out - r0 : tr;
            qft_err e = {0};
            if (vt->dequantize_rows(qw, r0, n, tile, &e)) {
#pragma omp critical(qft_qlinear_err)
                {
                    bad = 1;
                    if (!first.code) first = e;
                }
                continue;
            }
            /* Y[:, r0:r0+n] (N, n) = X (N, in) · tile (n, in)ᵀ + beta · Y[:, r0:r0+n] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)n, (int)in, 1.0f,
                        X, (int)in, tile, (int)in, beta, Y + r0, (int)ldy);
        }
    }
    openblas_set_num_threads(blas_threads);
    free(scratch);
    if (bad) {
        if (err) *err = first;
        return -1;
    }
    return 0;
}

int qft_qlinear_backward_input(const qft_quantizer_vtable *vt, const qft_qweight *qw,
                               int64_t out, int64_t in, const float *dY, int64_t ldy, int64_t N,
                               float *dX, float beta, qft_err *err) {
    if (check_args(vt, qw, out, in, N, err)) return -1;
    if (ldy < out) return qft_err_setf(err, "qlinear: ldy %lld < out %lld", (long long)ldy,
                                       (long long)out);
    if (N == 0) return 0;
    const int64_t tr = bwd_tile_rows(out, in, N);
    float *tile = malloc((size_t)(tr * in) * sizeof(float)); // (tr, in) shared by the team
    if (!tile)
        return qft_err_setf(err, "qlinear: out of memory for a %lld x %lld tile", (long long)tr,
                            (long long)in);
    const int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    int bad = 0;
    qft_err first = {0};
#pragma omp parallel
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        /* this thread's columns of dX, a multiple of 16 floats wide */
        const int64_t cw = ((in + nt - 1) / nt + 15) / 16 * 16;
        const int64_t c0 = cw * id < in ? cw * id : in, c1 = c0 + cw < in ? c0 + cw : in;
        for (int64_t r0 = 0; r0 < out; r0 += tr) {
            const int64_t n = out - r0 < tr ? out - r0 : tr;
            const int64_t per = (n + nt - 1) / nt;
            const int64_t a = per * id < n ? per * id : n, b = a + per < n ? a + per : n;
            if (a < b) {
                qft_err e = {0};
                if (vt->dequantize_rows(qw, r0 + a, b - a, tile + a * in, &e)) { // (b - a, in)
#pragma omp critical(qft_qlinear_err)
                    {
                        bad = 1;
                        if (!first.code) first = e;
                    }
                }
            }
#pragma omp barrier
            int stop;
#pragma omp atomic read
            stop = bad;
            if (stop) break; /* every thread sees the same flag after the barrier */
            /* dX[:, c0:c1] (N, c1-c0) = dY[:, r0:r0+n] (N, n) · tile[:, c0:c1] (n, c1-c0)
             *                           + (first tile ? beta : 1) · dX[:, c0:c1] */
            if (c0 < c1)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)(c1 - c0),
                            (int)n, 1.0f, dY + r0, (int)ldy, tile + c0, (int)in,
                            r0 ? 1.0f : beta, dX + c0, (int)in);
#pragma omp barrier
        }
    }
    openblas_set_num_threads(blas_threads);
    free(tile);
    if (bad) {
        if (err) *err = first;
        return -1;
    }
    return 0;
}
