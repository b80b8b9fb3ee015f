// The quantized linear on the GPU: rows of a packed W (NF4 or HQQ) are dequantized into a
// bf16 scratch and multiplied by cuBLASLt in bf16 with fp32 accumulation, one GEMM per
// tile. The op table's qmatmul runs the model's packed and bf16 linears through it under
// bf16 matmul precision (cuda_dequant.cu). The tile schedule and each GEMM's arguments come from cuda_twin.h
// (qft_twin_qlinear_*), which tests/cuda/test_cuda_twin.c replays on the CPU.
//
// Why a scratch and not a dequantizing GEMM kernel: cuBLASLt's bf16 kernels are near the
// tensor cores' peak and the dequantization is a bandwidth-bound pass over out * in
// elements (read 0.5-1 byte, write 2), small next to the GEMM at training batch sizes
// (bench/cuda_bench measures the pair against the plain bf16 GEMM). The kernel that decodes
// into shared memory inside the GEMM's main loop is cuda_qgemm_onchip.cu; the bench times
// both, and qmatmul takes it when asked (qft_cuda_set_qmatmul_kernel).
#include "cuda_internal.h"

#include <cuda_bf16.h>

namespace {
// Bytes of one element of a GEMM output dtype.
size_t dt_bytes(qft_dtype dt) { return dt == QFT_DT_BF16 ? 2 : 4; }

int weight_check(const qft_cuda_weight *w, const char *fn, qft_err *err) {
    const int kinds = (w->nf4 != NULL) + (w->hqq != NULL) + (w->bf16 != NULL);
    if (kinds != 1)
        return qft_err_setf(err, "%s: the weight must be exactly one of nf4, hqq or bf16 "
                                 "(%d given)", fn, kinds);
    if (w->out <= 0 || w->in <= 0)
        return qft_err_setf(err, "%s: bad weight shape (%d, %d)", fn, w->out, w->in);
    const int64_t n = (int64_t)w->out * w->in;
    const int64_t held = w->nf4 ? w->nf4->n : w->hqq ? w->hqq->n : n;
    if (held != n)
        return qft_err_setf(err, "%s: the packed weight holds %lld elements, not out * in = "
                                 "%d * %d", fn, (long long)held, w->out, w->in);
    return 0;
}

// Runs one call of the quantized linear: X/dY and the scratch tile in bf16, C in c_dtype.
int run_call(const qft_twin_gemm_call &k, const uint16_t *a, const uint16_t *w_tile, void *c,
             qft_dtype c_dtype, qft_err *err) {
    char *cb = (char *)c + (size_t)k.c_off * dt_bytes(c_dtype);
    return qft_cuda_gemm_bf16(k.ta, k.tb, k.M, k.N, k.K, k.alpha, a + k.a_off, k.lda,
                              w_tile + k.b_off, k.ldb, k.beta, cb, c_dtype, k.ldc, err);
}
} // namespace

extern "C" int qft_cuda_weight_rows(const qft_cuda_weight *w, int64_t row0, int64_t n, void *dst,
                                    qft_dtype dt, qft_err *err) {
    if (weight_check(w, "qft_cuda_weight_rows", err)) return -1;
    if (row0 < 0 || n < 0 || row0 + n > w->out)
        return qft_err_setf(err, "qft_cuda_weight_rows: rows [%lld, %lld) outside %d rows",
                            (long long)row0, (long long)(row0 + n), w->out);
    if (dt != QFT_DT_F32 && dt != QFT_DT_BF16)
        return qft_err_setf(err, "qft_cuda_weight_rows: output must be f32 or bf16 (dtype %d)",
                            (int)dt);
    const int64_t f0 = row0 * w->in, count = n * w->in; // rows (n, in) of the flat weight
    if (w->nf4) return qft_cuda_nf4_dequantize(w->nf4, f0, count, dst, dt, err);
    if (w->hqq) return qft_cuda_hqq_dequantize(w->hqq, f0, count, dst, dt, err);
    if (dt == QFT_DT_F32) {
        qft_cuda_bf16_to_f32((float *)dst, w->bf16 + f0, (size_t)count); // records a failure
    } else if (count && CUDA_CHECK(cudaMemcpyAsync(dst, w->bf16 + f0, (size_t)count * 2,
                                                   cudaMemcpyDeviceToDevice, 0))) {
        return qft_cuda_status(err);
    }
    return 0;
}

// The shared shape of fwd and bwd: the rows per tile, or -1 with err.
static int64_t plan_tiles(const qft_cuda_weight *w, const uint16_t *scratch, int64_t scratch_elems,
                          const char *fn, qft_err *err) {
    if (w->bf16) return w->out; // dense: the weight itself is the one tile
    const int64_t t = qft_twin_qlinear_tile_rows(w->out, w->in, scratch ? scratch_elems : 0);
    if (t <= 0)
        return qft_err_setf(err, "%s: a bf16 scratch of %lld elements holds fewer than 8 rows "
                                 "of %d (give at least %lld)", fn, (long long)scratch_elems,
                            w->in, (long long)8 * w->in);
    return t;
}

extern "C" int qft_cuda_qlinear_fwd(const qft_cuda_weight *w, const uint16_t *X, int N, int ldx,
                                    void *Y, qft_dtype y_dtype, int ldy, float beta,
                                    uint16_t *scratch, int64_t scratch_elems, qft_err *err) {
    const char *fn = "qft_cuda_qlinear_fwd";
    if (weight_check(w, fn, err)) return -1;
    if (y_dtype != QFT_DT_F32 && y_dtype != QFT_DT_BF16)
        return qft_err_setf(err, "%s: Y must be f32 or bf16 (dtype %d)", fn, (int)y_dtype);
    if (N <= 0 || ldx < w->in || ldy < w->out)
        return qft_err_setf(err, "%s: N = %d, ldx = %d (in %d), ldy = %d (out %d)", fn, N, ldx,
                            w->in, ldy, w->out);
    const int64_t T = plan_tiles(w, scratch, scratch_elems, fn, err);
    if (T < 0) return -1;
    for (int64_t r0 = 0; r0 < w->out; r0 += T) {
        const int n = (int)(r0 + T < w->out ? T : w->out - r0);
        const uint16_t *tile = w->bf16 ? w->bf16 + r0 * w->in : scratch; // (n, in)
        if (!w->bf16 && qft_cuda_weight_rows(w, r0, n, scratch, QFT_DT_BF16, err)) return -1;
        if (run_call(qft_twin_qlinear_fwd_tile(N, w->in, r0, n, ldx, ldy, beta), X, tile, Y,
                     y_dtype, err))
            return -1;
    }
    return 0;
}

extern "C" int qft_cuda_qlinear_bwd_input(const qft_cuda_weight *w, const uint16_t *dY, int ldg,
                                          int N, void *dX, qft_dtype dx_dtype, int ldx, float beta,
                                          uint16_t *scratch, int64_t scratch_elems, qft_err *err) {
    const char *fn = "qft_cuda_qlinear_bwd_input";
    if (weight_check(w, fn, err)) return -1;
    if (dx_dtype != QFT_DT_F32 && dx_dtype != QFT_DT_BF16)
        return qft_err_setf(err, "%s: dX must be f32 or bf16 (dtype %d)", fn, (int)dx_dtype);
    if (N <= 0 || ldg < w->out || ldx < w->in)
        return qft_err_setf(err, "%s: N = %d, ldg = %d (out %d), ldx = %d (in %d)", fn, N, ldg,
                            w->out, ldx, w->in);
    const int64_t T = plan_tiles(w, scratch, scratch_elems, fn, err);
    if (T < 0) return -1;
    if (T < w->out && dx_dtype == QFT_DT_BF16)
        return qft_err_setf(err, "%s: a bf16 dX needs a scratch of all %lld elements of W (%lld "
                                 "given): row tiles would round each partial sum to bf16",
                            fn, (long long)w->out * w->in, (long long)scratch_elems);
    for (int64_t r0 = 0; r0 < w->out; r0 += T) {
        const int n = (int)(r0 + T < w->out ? T : w->out - r0);
        const uint16_t *tile = w->bf16 ? w->bf16 + r0 * w->in : scratch; // (n, in)
        if (!w->bf16 && qft_cuda_weight_rows(w, r0, n, scratch, QFT_DT_BF16, err)) return -1;
        if (run_call(qft_twin_qlinear_bwd_tile(N, w->in, r0, n, ldg, ldx, beta, r0 == 0), dY, tile,
                     dX, dx_dtype, err))
            return -1;
    }
    return 0;
}
