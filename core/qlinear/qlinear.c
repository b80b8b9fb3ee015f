/* Fused products of a frozen packed weight. Per tile of W's rows: every OpenMP thread
 * dequantizes its own slice of the tile's rows (the vtable allows disjoint tiles in
 * parallel), then one BLAS GEMM, itself multi-threaded, consumes the whole tile. The
 * tile is sized to the GEMM's appetite: small enough to stay in cache for a few rows of
 * input (where the product is bound by dequantization and memory), large enough for a
 * wide batch that BLAS's repacking of X per call stays a small fraction of the work. */
#include "qlinear.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

int64_t qft_qlinear_tile_rows(int64_t out, int64_t in, int64_t N) {
    const int64_t target = N >= 64 ? (int64_t)8 << 20 : (int64_t)1 << 20; // bytes of fp32 tile
    int64_t r = target / ((in > 0 ? in : 1) * (int64_t)sizeof(float));
    if (r < 8) r = 8;
    r = (r + 7) / 8 * 8;
    return r < out ? r : out;
}

/* Rows [r0, r0 + tr) of W into tile (tr, in), split over the threads. */
static int dequant_tile(const qft_quantizer_vtable *vt, const qft_qweight *qw, int64_t r0,
                        int64_t tr, int64_t in, float *tile, qft_err *err) {
    int bad = 0;
    qft_err first = {0};
#pragma omp parallel reduction(| : bad)
    {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t per = (tr + nt - 1) / nt;
        const int64_t a = per * t, b = a + per < tr ? a + per : tr; // this thread's rows
        if (a < b) {
            qft_err e = {0};
            if (vt->dequantize_rows(qw, r0 + a, b - a, tile + a * in, &e)) { // (b - a, in)
                bad = 1;
#pragma omp critical(qft_qlinear_err)
                if (!first.code) first = e;
            }
        }
    }
    if (bad) {
        if (err) *err = first;
        return -1;
    }
    return 0;
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
                        int64_t in, const float *X, int64_t N, float *Y, float beta,
                        qft_err *err) {
    if (check_args(vt, qw, out, in, N, err)) return -1;
    if (N == 0) return 0;
    const int64_t tr = qft_qlinear_tile_rows(out, in, N);
    float *tile = malloc((size_t)(tr * in) * sizeof(float)); // (tr, in)
    if (!tile)
        return qft_err_setf(err, "qlinear: out of memory for a %lld x %lld tile", (long long)tr,
                            (long long)in);
    int rc = 0;
    for (int64_t r0 = 0; r0 < out && !rc; r0 += tr) {
        const int64_t n = out - r0 < tr ? out - r0 : tr;
        rc = dequant_tile(vt, qw, r0, n, in, tile, err);
        /* Y[:, r0:r0+n] (N, n) = X (N, in) · tile (n, in)ᵀ + beta · Y[:, r0:r0+n] */
        if (!rc)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)n, (int)in, 1.0f, X,
                        (int)in, tile, (int)in, beta, Y + r0, (int)out);
    }
    free(tile);
    return rc;
}

int qft_qlinear_backward_input(const qft_quantizer_vtable *vt, const qft_qweight *qw,
                               int64_t out, int64_t in, const float *dY, int64_t N, float *dX,
                               float beta, qft_err *err) {
    if (check_args(vt, qw, out, in, N, err)) return -1;
    if (N == 0) return 0;
    const int64_t tr = qft_qlinear_tile_rows(out, in, N);
    float *tile = malloc((size_t)(tr * in) * sizeof(float)); // (tr, in)
    if (!tile)
        return qft_err_setf(err, "qlinear: out of memory for a %lld x %lld tile", (long long)tr,
                            (long long)in);
    int rc = 0;
    for (int64_t r0 = 0; r0 < out && !rc; r0 += tr) {
        const int64_t n = out - r0 < tr ? out - r0 : tr;
        rc = dequant_tile(vt, qw, r0, n, in, tile, err);
        /* dX (N, in) = dY[:, r0:r0+n] (N, n) · tile (n, in) + (first tile ? beta : 1) · dX */
        if (!rc)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)in, (int)n, 1.0f,
                        dY + r0, (int)out, tile, (int)in, r0 ? 1.0f : beta, dX, (int)in);
    }
    free(tile);
    return rc;
}
