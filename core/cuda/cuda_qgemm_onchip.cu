// The quantized linear with W's tile decoded on chip: each thread block decodes the NF4 or
// HQQ codes of the W tile it is about to multiply straight into shared memory as bf16 and
// runs the tensor cores on it (WMMA, 16x16x16 bf16 fragments, fp32 accumulation), so W is
// read from device memory in its packed form only, never written out as a bf16 scratch.
// This is the other of issue 7's two designs; cuda_qlinear.cu's scratch + cuBLASLt is the
// first. Which one is faster depends on the shapes (the scratch path pays a write and a
// read of 2 bytes per weight per product but gets cuBLASLt's kernels; this one reads half a
// byte per weight per block row of X and has a plain kernel), so bench/cuda_bench measures
// both and the op table uses this one only when asked (qft_cuda_set_qmatmul_kernel,
// QFT_CUDA_QMATMUL=onchip).
//
// The decoded values are those of the scratch path: the same cuda_twin.h element code,
// rounded once to bf16. Outputs are fp32 (what qmatmul writes) with beta; the products
// differ from the scratch path's only in the order of the fp32 accumulation.
//
// Tiles: a block of 128 threads (4 warps, 2 x 2, each 32 x 32 of the output) computes a
// 64 x 64 output tile over K in steps of 32. Forward Y (N, out) = X (N, in) W^T: output
// columns are W's rows, K runs over in. Input gradient dX (N, in) = dY (N, out) W: output
// columns are W's columns, K runs over out. Out-of-range elements of a tile are zeros.
#include "cuda_internal.h"

#include <cuda_bf16.h>
#include <mma.h>
#include <string.h>
#include <type_traits>

namespace {
const int BM = 64, BN = 64, BK = 32, THREADS = 128;
const int PAD = 8;  // bf16 row padding: rows stay 32-byte aligned, banks shift
const int CPAD = 4; // fp32 row padding of the output tile

// The packed weight as the kernels take it, by value: the NF4 or HQQ view and the HQQ
// geometry (made on the host once per call).
struct packed_w {
    qft_cuda_nf4 nf4;
    qft_cuda_hqq hqq;
    qft_twin_hqq_geom g;
    int64_t out, in;
};

__device__ __forceinline__ __nv_bfloat16 bf(float v) { return __float2bfloat16_rn(v); }

// Decodes `count` consecutive elements of W's row r from column c0 into dst, bf16, zeros past
// the row or the weight. The NF4 absmax and the HQQ group's zero and scale are read again
// only when the element's block or group changes.
template <bool NF4>
__device__ void decode_run(const packed_w &w, const float *code, int64_t r, int64_t c0, int count,
                           __nv_bfloat16 *dst) {
    int64_t key = -1, block_end = -1; // NF4: elements [.., block_end) share the absmax
    float a = 0.0f, z = 0.0f, s = 0.0f;
    for (int e = 0; e < count; e++) {
        const int64_t c = c0 + e;
        if (r >= w.out || c >= w.in) {
            dst[e] = bf(0.0f);
            continue;
        }
        if (NF4) {
            const int64_t i = r * w.in + c; // NF4 blocks run over the flattened weight
            if (i >= block_end) { // the run's elements ascend: one division per block
                const int64_t b = i / w.nf4.blocksize;
                block_end = (b + 1) * w.nf4.blocksize;
                a = qft_twin_nf4_absmax(w.nf4.absmax, w.nf4.qabsmax, w.nf4.nested_absmax,
                                        w.nf4.nested_map, w.nf4.offset, b);
            }
            dst[e] = bf(qft_twin_mul(code[qft_twin_nf4_code(w.nf4.packed, i)], a));
        } else {
            // HQQ groups the flattened weight as (R, C), (out, in) only when a group is a
            // whole row: the element's place there, as dequantize finds it
            const int64_t i = r * w.in + c, gr = i / w.g.C, gc = i - gr * w.g.C;
            const int64_t gi = qft_twin_hqq_group(&w.g, gr, gc);
            if (gi != key) {
                key = gi;
                z = qft_twin_hqq_zero(w.hqq.zero, w.hqq.zero_q, w.hqq.zero_meta[0],
                                      w.hqq.zero_meta[1], gi);
                s = qft_twin_hqq_scale(w.hqq.scale, w.hqq.scale_q, w.hqq.scale_meta,
                                       w.g.n_groups, gi);
            }
            dst[e] = bf(qft_twin_hqq_value(qft_twin_hqq_code(w.hqq.packed, &w.g, gr, gc), z, s));
        }
    }
}

// rows x cols of a row-major bf16 matrix (ld) from (r0, c0) into smem (ld_s), zeros outside
// (n_rows, n_cols).
__device__ void load_act(const __nv_bfloat16 *a, int64_t lda, int64_t n_rows, int64_t n_cols,
                         int64_t r0, int64_t c0, int rows, int cols, __nv_bfloat16 *s, int ld_s) {
    for (int e = threadIdx.x; e < rows * cols; e += THREADS) {
        const int i = e / cols, j = e % cols;
        const int64_t r = r0 + i, c = c0 + j;
        s[i * ld_s + j] = r < n_rows && c < n_cols ? a[r * lda + c] : bf(0.0f);
    }
}

// The block's 64 x 64 fp32 accumulators out through shared memory: c = acc + beta c, only
// inside (n_rows, n_cols); beta 0 does not read c.
__device__ void store_tile(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>
                               (&acc)[2][2],
                           float *cs, float *c, int64_t ldc, int64_t n_rows, int64_t n_cols,
                           int64_t r0, int64_t c0, float beta) {
    const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
    for (int fi = 0; fi < 2; fi++)
        for (int fj = 0; fj < 2; fj++)
            nvcuda::wmma::store_matrix_sync(cs + (wm * 32 + fi * 16) * (BN + CPAD) + wn * 32 + fj * 16,
                                            acc[fi][fj], BN + CPAD, nvcuda::wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < BM * BN; e += THREADS) {
        const int i = e / BN, j = e % BN;
        const int64_t r = r0 + i, col = c0 + j;
        if (r >= n_rows || col >= n_cols) continue;
        const float v = cs[i * (BN + CPAD) + j];
        float *p = c + r * ldc + col;
        *p = beta == 0.0f ? v : v + beta * *p;
    }
}

// Forward (BWD false): C = Y (N, ldc)[:, 0:out] = A = X (N, lda)[:, 0:in] W^T + beta Y; K runs
// over in, and the W tile is 64 of W's rows by 32 columns, which is B = W^T column-major.
// Input gradient (BWD true): C = dX (N, ldc)[:, 0:in] = A = dY (N, lda)[:, 0:out] W + beta dX;
// K runs over out, and the W tile is 32 of W's rows by 64 columns, B row-major.
// Grid (ceil(C's columns / BN), ceil(N / BM)).
template <bool NF4, bool BWD>
__global__ void __launch_bounds__(THREADS)
    onchip_kernel(packed_w w, const __nv_bfloat16 *A, int64_t lda, int64_t N, float *C,
                  int64_t ldc, float beta) {
    using namespace nvcuda;
    using b_layout = typename std::conditional<BWD, wmma::row_major, wmma::col_major>::type;
    const int LDW = BWD ? BN + PAD : BK + PAD; // the W tile's row length in smem
    __shared__ __align__(32) __nv_bfloat16 as[BM * (BK + PAD)];
    __shared__ __align__(32) __nv_bfloat16 ws[BN * (BK + PAD)]; // holds BK * (BN + PAD) too
    __shared__ __align__(32) float cs[BM * (BN + CPAD)];
    __shared__ float code[16];
    if (NF4 && threadIdx.x < 16) code[threadIdx.x] = w.nf4.code[threadIdx.x];
    const int64_t K = BWD ? w.out : w.in, cols = BWD ? w.in : w.out;
    const int64_t n0 = (int64_t)blockIdx.y * BM, c0 = (int64_t)blockIdx.x * BN;
    const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int fi = 0; fi < 2; fi++)
        for (int fj = 0; fj < 2; fj++) wmma::fill_fragment(acc[fi][fj], 0.0f);
    __syncthreads();
    // decoding: each thread takes 16 consecutive elements of one of the tile's W rows
    const int per_row = (BWD ? BN : BK) / 16, dr = threadIdx.x / per_row;
    const int dc = (threadIdx.x % per_row) * 16;
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
        load_act(A, lda, N, K, n0, k0, BM, BK, as, BK + PAD);
        if (BWD)
            decode_run<NF4>(w, code, k0 + dr, c0 + dc, 16, ws + dr * LDW + dc);
        else
            decode_run<NF4>(w, code, c0 + dr, k0 + dc, 16, ws + dr * LDW + dc);
        __syncthreads();
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, b_layout> fb[2];
            for (int f = 0; f < 2; f++) {
                const int cb = wn * 32 + f * 16; // the fragment's first output column
                wmma::load_matrix_sync(fa[f], as + (wm * 32 + f * 16) * (BK + PAD) + kk, BK + PAD);
                wmma::load_matrix_sync(fb[f], BWD ? ws + kk * LDW + cb : ws + cb * LDW + kk, LDW);
            }
            for (int fi = 0; fi < 2; fi++)
                for (int fj = 0; fj < 2; fj++) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
        }
        __syncthreads(); // the tiles are overwritten next round
    }
    store_tile(acc, cs, C, ldc, N, cols, n0, c0, beta);
}

// w as the kernels take it, or -1 with err: NF4 or HQQ only (a dense bf16 weight goes to
// cuBLASLt directly).
int packed_of(const qft_cuda_weight *cw, packed_w *pw, const char *fn, qft_err *err) {
    memset(pw, 0, sizeof *pw);
    if ((cw->nf4 != NULL) + (cw->hqq != NULL) != 1 || cw->bf16)
        return qft_err_setf(err, "%s: the weight must be exactly one of nf4 or hqq", fn);
    if (cw->out <= 0 || cw->in <= 0)
        return qft_err_setf(err, "%s: bad weight shape (%d, %d)", fn, cw->out, cw->in);
    pw->out = cw->out, pw->in = cw->in;
    const int64_t n = (int64_t)cw->out * cw->in;
    if (cw->nf4) {
        pw->nf4 = *cw->nf4;
        if (pw->nf4.n != n || pw->nf4.blocksize <= 0 || !pw->nf4.packed || !pw->nf4.code ||
            (!pw->nf4.absmax &&
             (!pw->nf4.qabsmax || !pw->nf4.nested_absmax || !pw->nf4.nested_map)))
            return qft_err_setf(err, "%s: NF4 weight of %lld elements (blocksize %d) does not "
                                     "describe (%d, %d), or lacks its codes or absmax",
                                fn, (long long)pw->nf4.n, pw->nf4.blocksize, cw->out, cw->in);
        return 0;
    }
    pw->hqq = *cw->hqq;
    if (pw->hqq.n != n ||
        qft_twin_hqq_geom_make(&pw->g, pw->hqq.nbits, pw->hqq.group_size, pw->hqq.axis, n))
        return qft_err_setf(err, "%s: HQQ weight of %lld elements (nbits %d, group %d, axis %d) "
                                 "does not describe (%d, %d)",
                            fn, (long long)pw->hqq.n, pw->hqq.nbits, pw->hqq.group_size,
                            pw->hqq.axis, cw->out, cw->in);
    if (!pw->hqq.packed || (!pw->hqq.zero && !pw->hqq.zero_q) ||
        (!pw->hqq.scale && (!pw->hqq.scale_q || !pw->hqq.scale_meta)))
        return qft_err_setf(err, "%s: HQQ weight without its codes, zeros or scales", fn);
    if (pw->g.nbits == 3 && ((uintptr_t)pw->hqq.packed & 3))
        return qft_err_setf(err, "%s: 3-bit words must be 4-byte aligned", fn);
    return 0;
}

// One product: checks, then the kernel for the weight's format and the direction.
int launch(const qft_cuda_weight *w, bool bwd, const uint16_t *A, int lda, int N, float *C,
           int ldc, float beta, const char *fn, qft_err *err) {
    packed_w pw;
    if (packed_of(w, &pw, fn, err)) return -1;
    const int K = bwd ? w->out : w->in, cols = bwd ? w->in : w->out;
    if (N <= 0 || lda < K || ldc < cols)
        return qft_err_setf(err, "%s: N = %d, input ld %d (its width %d), output ld %d (its "
                                 "width %d)", fn, N, lda, K, ldc, cols);
    if ((N + BM - 1) / BM > 65535)
        return qft_err_setf(err, "%s: %d rows exceed the grid (at most %d)", fn, N, 65535 * BM);
    const __nv_bfloat16 *a = (const __nv_bfloat16 *)A;
    const dim3 grid((unsigned)((cols + BN - 1) / BN), (unsigned)((N + BM - 1) / BM));
    if (w->nf4 && bwd)
        onchip_kernel<true, true><<<grid, THREADS>>>(pw, a, lda, N, C, ldc, beta);
    else if (w->nf4)
        onchip_kernel<true, false><<<grid, THREADS>>>(pw, a, lda, N, C, ldc, beta);
    else if (bwd)
        onchip_kernel<false, true><<<grid, THREADS>>>(pw, a, lda, N, C, ldc, beta);
    else
        onchip_kernel<false, false><<<grid, THREADS>>>(pw, a, lda, N, C, ldc, beta);
    if (CUDA_LAUNCHED()) return qft_cuda_status(err);
    return 0;
}
} // namespace

extern "C" int qft_cuda_qgemm_onchip_fwd(const qft_cuda_weight *w, const uint16_t *X, int N,
                                         int ldx, float *Y, int ldy, float beta, qft_err *err) {
    return launch(w, false, X, ldx, N, Y, ldy, beta, "qft_cuda_qgemm_onchip_fwd", err);
}

extern "C" int qft_cuda_qgemm_onchip_bwd(const qft_cuda_weight *w, const uint16_t *dY, int ldg,
                                         int N, float *dX, int ldx, float beta, qft_err *err) {
    return launch(w, true, dY, ldg, N, dX, ldx, beta, "qft_cuda_qgemm_onchip_bwd", err);
}
