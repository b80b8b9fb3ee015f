// LoRA and DoRA on one linear, as adapters/common computes them without dropout: the GEMM
// sequences are cuda_twin.h's (qft_twin_lora_*_calls, qft_twin_dora_norm_tile_call), run
// here through the op table's fp32 GEMM; the kernels below are DoRA's per-row scaling,
// its magnitude gradient and its exact row norm, deterministic (no atomics: every sum has
// one owner and a fixed order).
#include "cuda_internal.h"

namespace {
const unsigned TPB = 256;

// Runs n calls over the operand table (device pointers indexed by QFT_OPD_*).
void run_calls(const qft_twin_gemm_call *k, int n, float *const opd[QFT_OPD_COUNT]) {
    for (int i = 0; i < n; i++)
        qft_cuda_gemm(k[i].ta, k[i].tb, k[i].M, k[i].N, k[i].K, k[i].alpha, opd[k[i].a] + k[i].a_off,
                      k[i].lda, opd[k[i].b] + k[i].b_off, k[i].ldb, k[i].beta,
                      opd[k[i].c] + k[i].c_off, k[i].ldc);
}

__global__ void dora_f_kernel(float *f, const float *m, const float *norm, int out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < out) f[j] = qft_twin_dora_f(m[j], norm[j]);
}

// dst (N, ldd)[:, 0:out] = f * src (N, lds) per column; dst may be src (in place).
__global__ void dora_scale_kernel(float *dst, int ldd, const float *src, int lds, const float *f,
                                  int N, int out) {
    const size_t total = (size_t)N * out;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t n = e / out, j = e % out;
        dst[n * ldd + j] = qft_twin_dora_scale(f[j], src[n * lds + j]);
    }
}

// One thread per column walks the rows in order, as the CPU's dora_dm: bit-identical.
__global__ void dora_dm_kernel(float *dm, const float *dy, int ldg, const float *h, int out, int N,
                               const float *norm) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < out) dm[j] += qft_twin_dora_dm(dy, ldg, h, out, N, j, norm[j]);
}

// One block of QFT_NORM_LANES threads per row of the tile (n, in): lane sums in double,
// merged pairwise in shared memory, then the square root rounded once to fp32.
__global__ void row_norm_kernel(float *norm, const float *tile, int in) {
    __shared__ double part[QFT_NORM_LANES];
    const int row = blockIdx.x, lane = threadIdx.x;
    part[lane] = qft_twin_sumsq_lane(tile + (size_t)row * in, in, lane);
    __syncthreads();
    for (int off = QFT_NORM_LANES / 2; off > 0; off >>= 1) {
        if (lane < off) part[lane] += part[lane + off];
        __syncthreads();
    }
    if (lane == 0) norm[row] = (float)sqrt(part[0]);
}

int lora_check(const qft_cuda_lora *l, const char *fn, qft_err *err) {
    if (!l->A || !l->B || l->out <= 0 || l->in <= 0 || l->r <= 0)
        return qft_err_setf(err, "%s: A, B and a positive (out %d, in %d, r %d) are required", fn,
                            l->out, l->in, l->r);
    if (l->m && (!l->norm || !l->f))
        return qft_err_setf(err, "%s: DoRA (m given) needs norm and f", fn);
    return 0;
}
} // namespace

extern "C" int qft_cuda_lora_fwd(const qft_cuda_lora *l, const float *x, int N, float *u, float *h,
                                 float *y, int ldy, qft_err *err) {
    const char *fn = "qft_cuda_lora_fwd";
    if (lora_check(l, fn, err)) return -1;
    const int dora = l->m != NULL, out = l->out;
    if (N <= 0 || ldy < out || !x || !u || !y || (dora && !h))
        return qft_err_setf(err, "%s: N = %d, ldy = %d (out %d), x, u, y%s required", fn, N, ldy,
                            out, dora ? " and h" : "");
    qft_twin_gemm_call k[2];
    const int nk = qft_twin_lora_fwd_calls(k, dora, N, out, l->in, l->r, l->scale, ldy);
    float *opd[QFT_OPD_COUNT] = {};
    opd[QFT_OPD_X] = const_cast<float *>(x);
    opd[QFT_OPD_A] = const_cast<float *>(l->A);
    opd[QFT_OPD_B] = const_cast<float *>(l->B);
    opd[QFT_OPD_U] = u, opd[QFT_OPD_Y] = y, opd[QFT_OPD_H] = h;
    if (dora) {
        dora_f_kernel<<<qft_cuda_blocks((size_t)out, TPB), TPB>>>(l->f, l->m, l->norm, out);
        CUDA_LAUNCHED();
        // h (N, out) = y (N, ldy)[:, 0:out]: the base product, before the LoRA term joins it
        CUDA_CHECK(cudaMemcpy2DAsync(h, (size_t)out * 4, y, (size_t)ldy * 4, (size_t)out * 4,
                                     (size_t)N, cudaMemcpyDeviceToDevice, 0));
    }
    run_calls(k, nk, opd);
    if (dora) {
        dora_scale_kernel<<<qft_cuda_blocks((size_t)N * out, TPB), TPB>>>(y, ldy, h, out, l->f, N,
                                                                          out);
        CUDA_LAUNCHED();
    }
    return qft_cuda_status(err);
}

extern "C" int qft_cuda_lora_bwd(const qft_cuda_lora *l, const float *x, const float *u,
                                 const float *h, int N, float *dy, int ldg, float *du, float *dx,
                                 qft_err *err) {
    const char *fn = "qft_cuda_lora_bwd";
    if (lora_check(l, fn, err)) return -1;
    const int dora = l->m != NULL, out = l->out;
    if (N <= 0 || ldg < out || !x || !u || !dy || !du || !dx || !l->dA || !l->dB ||
        (dora && (!h || !l->dm)))
        return qft_err_setf(err, "%s: N = %d, ldg = %d (out %d); x, u, dy, du, dx, dA, dB%s "
                                 "required", fn, N, ldg, out, dora ? ", h and dm" : "");
    if (dora) {
        // dm reads dy before it is scaled; then dy becomes the base product's gradient f dy
        dora_dm_kernel<<<qft_cuda_blocks((size_t)out, TPB), TPB>>>(l->dm, dy, ldg, h, out, N,
                                                                    l->norm);
        CUDA_LAUNCHED();
        dora_scale_kernel<<<qft_cuda_blocks((size_t)N * out, TPB), TPB>>>(dy, ldg, dy, ldg, l->f, N,
                                                                          out);
        CUDA_LAUNCHED();
    }
    qft_twin_gemm_call k[4];
    const int nk = qft_twin_lora_bwd_calls(k, N, out, l->in, l->r, l->scale, ldg);
    float *opd[QFT_OPD_COUNT] = {};
    opd[QFT_OPD_X] = const_cast<float *>(x);
    opd[QFT_OPD_A] = const_cast<float *>(l->A);
    opd[QFT_OPD_B] = const_cast<float *>(l->B);
    opd[QFT_OPD_U] = const_cast<float *>(u);
    opd[QFT_OPD_DY] = dy, opd[QFT_OPD_DU] = du, opd[QFT_OPD_DA] = l->dA, opd[QFT_OPD_DB] = l->dB;
    opd[QFT_OPD_DX] = dx;
    run_calls(k, nk, opd);
    return qft_cuda_status(err);
}

extern "C" int qft_cuda_dora_norm(const qft_cuda_lora *l, const qft_cuda_weight *w, float *tile,
                                  int64_t tile_elems, float *norm, qft_err *err) {
    const char *fn = "qft_cuda_dora_norm";
    if (lora_check(l, fn, err)) return -1;
    if (w->out != l->out || w->in != l->in)
        return qft_err_setf(err, "%s: weight (%d, %d) and adapter (%d, %d) differ", fn, w->out,
                            w->in, l->out, l->in);
    if (!tile || !norm || tile_elems < l->in)
        return qft_err_setf(err, "%s: the fp32 tile (%lld floats) must hold a row of %d", fn,
                            (long long)tile_elems, l->in);
    const int64_t T = tile_elems / l->in < l->out ? tile_elems / l->in : l->out;
    float *opd[QFT_OPD_COUNT] = {};
    opd[QFT_OPD_A] = const_cast<float *>(l->A);
    opd[QFT_OPD_B] = const_cast<float *>(l->B);
    opd[QFT_OPD_W] = tile;
    for (int64_t r0 = 0; r0 < l->out; r0 += T) {
        const int n = (int)(r0 + T < l->out ? T : l->out - r0);
        if (qft_cuda_weight_rows(w, r0, n, tile, QFT_DT_F32, err)) return -1; // (n, in)
        const qft_twin_gemm_call k = qft_twin_dora_norm_tile_call(r0, n, l->in, l->r, l->scale);
        run_calls(&k, 1, opd);
        row_norm_kernel<<<n, QFT_NORM_LANES>>>(norm + r0, tile, l->in);
        CUDA_LAUNCHED();
    }
    return qft_cuda_status(err);
}
