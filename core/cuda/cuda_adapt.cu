// The pieces adapters compose (qft_ops.h, ABI 4): column scaling, column dot products,
// division, row norms and the counter-based dropout; and (ABI 7) DoRA's fused steps:
// lowrank_out (a rank-k term added to the base product, kept and rescaled in one pass) and
// col_dot_scale (col_dot that also writes f a). The arithmetic is cuda_twin_adapt.h's,
// shared with the CPU twin test; every output has one owner and a fixed summation order
// (no atomics), so results are deterministic and, except row_norms' lane tree, the CPU
// backend's bits.
#include "cuda_internal.h"
#include "cuda_twin_adapt.h"

// (Kernels are static, not in an anonymous namespace, as cuda_elementwise.cu's: nvcc's
// launch stubs did not resolve inside one.)

// dst (N, ldd)[:, 0:n] from src (N, lds)[:, 0:n]; in place when dst == src (each element
// is read, then written, by one thread).
static __global__ void cols_axpby_kernel(float *dst, int64_t ldd, float beta, const float *src,
                                         int64_t lds, const float *f, float fadd, int64_t N,
                                         int64_t n) {
    const size_t total = (size_t)N * (size_t)n; // (N, n)
    QFT_CUDA_GRID_STRIDE(e, total) {
        const int64_t r = (int64_t)(e / (size_t)n), j = (int64_t)(e % (size_t)n);
        const float c = qft_twin_axpby_coef(f, fadd, j);
        float *d = dst + r * ldd + j;
        *d = qft_twin_axpby(beta, beta == 0.0f ? 0.0f : *d, c, src[r * lds + j]);
    }
}

// acc, div (n); a (N, lda), b (N, ldb). A block of (QFT_COLDOT_COLS, QFT_COLDOT_SLICES)
// threads takes QFT_COLDOT_COLS columns: thread (x, y) sums slice y of column x (cuda_twin_
// adapt.h), reading with its warp 32 neighbouring floats of a row, and thread (x, 0) adds
// the slices in order.
static __global__ void col_dot_kernel(float *acc, const float *a, int64_t lda, const float *b,
                                      int64_t ldb, const float *div, int64_t N, int64_t n) {
    __shared__ double part[QFT_COLDOT_COLS][QFT_COLDOT_SLICES];
    const int x = threadIdx.x, y = threadIdx.y;
    const int64_t j = (int64_t)blockIdx.x * QFT_COLDOT_COLS + x;
    part[x][y] = j < n ? qft_twin_col_dot_slice(a, lda, b, ldb, N, j, y) : 0.0;
    __syncthreads();
    if (y == 0 && j < n) acc[j] = qft_twin_add(acc[j], qft_twin_col_dot_merge(part[x], div[j]));
}

// col_dot_kernel's sums, and g = f a from the same read (cuda_twin_adapt.h): every element
// of a is read and then written (when g is a) by the one thread that owns its slice.
static __global__ void col_dot_scale_kernel(float *acc, float *g, int64_t ldg, const float *a,
                                            int64_t lda, const float *b, int64_t ldb,
                                            const float *div, const float *f, int64_t N,
                                            int64_t n) {
    __shared__ double part[QFT_COLDOT_COLS][QFT_COLDOT_SLICES];
    const int x = threadIdx.x, y = threadIdx.y;
    const int64_t j = (int64_t)blockIdx.x * QFT_COLDOT_COLS + x;
    part[x][y] = j < n ? qft_twin_col_dot_slice_scale(a, lda, b, ldb, N, j, y, f[j], g, ldg)
                       : 0.0;
    __syncthreads();
    if (y == 0 && j < n) acc[j] = qft_twin_add(acc[j], qft_twin_col_dot_merge(part[x], div[j]));
}

// lowrank_out over a tile of LR_ROWS rows and LR_COLS columns of y per block of (LR_COLS,
// LR_ROWS / LR_PER) threads: thread (x, t) owns column x and rows t, t + LR_ROWS / LR_PER,
// ...; the rank-k sums walk k in chunks of LR_KC, staged in shared memory (B's rows padded
// by one float, so a warp's 32 columns hit 32 banks; u's row is a broadcast), in k order
// as qft_twin_lowrank_dot. One read and one write of y, one write of h.
#define LR_COLS 64
#define LR_ROWS 16
#define LR_PER 4
#define LR_KC 32
// The block size is declared (undeclared, ptxas took 66 registers on sm_80, too many for a
// block of 1024), with 3 blocks an SM: 85 registers at most, within which ptxas fits it
// without spilling (56 on sm_80 and sm_90; the size alone gave sm_90 64 and a spill).
static __global__ void __launch_bounds__(LR_COLS * (LR_ROWS / LR_PER), 3)
    lowrank_out_kernel(float *y, int64_t ldy, const float *u, const float *B, int64_t k,
                       float scale, const float *f, float *h, int64_t N, int64_t out) {
    __shared__ float Bs[LR_COLS][LR_KC + 1];
    __shared__ float Us[LR_ROWS][LR_KC];
    const int x = threadIdx.x, t = threadIdx.y, tid = t * LR_COLS + x;
    const int nthreads = LR_COLS * (LR_ROWS / LR_PER);
    const int64_t j0 = (int64_t)blockIdx.x * LR_COLS, r0 = (int64_t)blockIdx.y * LR_ROWS;
    float acc[LR_PER];
    for (int i = 0; i < LR_PER; i++) acc[i] = 0.0f;
    for (int64_t k0 = 0; k0 < k; k0 += LR_KC) {
        const int kc = k - k0 < LR_KC ? (int)(k - k0) : LR_KC;
        for (int e = tid; e < LR_COLS * LR_KC; e += nthreads) {
            const int jj = e / LR_KC, q = e % LR_KC;
            Bs[jj][q] = j0 + jj < out && q < kc ? B[(j0 + jj) * k + k0 + q] : 0.0f;
        }
        for (int e = tid; e < LR_ROWS * LR_KC; e += nthreads) {
            const int rr = e / LR_KC, q = e % LR_KC;
            Us[rr][q] = r0 + rr < N && q < kc ? u[(r0 + rr) * k + k0 + q] : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < LR_PER; i++) {
            const int rr = t + i * (LR_ROWS / LR_PER);
            float a = acc[i];
            for (int q = 0; q < kc; q++) a = qft_twin_add(a, qft_twin_mul(Us[rr][q], Bs[x][q]));
            acc[i] = a;
        }
        __syncthreads(); // the tiles are refilled by the next chunk
    }
    const int64_t j = j0 + x;
    if (j >= out) return;
    for (int i = 0; i < LR_PER; i++) {
        const int64_t r = r0 + t + i * (LR_ROWS / LR_PER);
        if (r >= N) break;
        float *yp = y + r * ldy + j;
        const float v = qft_twin_lowrank_t(*yp, scale, acc[i]);
        if (h) h[r * out + j] = v;
        *yp = f ? qft_twin_mul(f[j], v) : v;
    }
}

// out, a, b (n)
static __global__ void div_kernel(float *out, const float *a, const float *b, size_t n) {
    QFT_CUDA_GRID_STRIDE(e, n) out[e] = qft_twin_div(a[e], b[e]);
}

// One block of QFT_NORM_LANES threads per row of x (n, ld), rows strided by the grid:
// lane sums in double, merged pairwise in shared memory, the root's sqrt rounded once.
static __global__ void row_norms_kernel(float *norm, const float *x, int64_t ld, int64_t n,
                                        int64_t len) {
    __shared__ double part[QFT_NORM_LANES];
    const int lane = threadIdx.x;
    for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
        part[lane] = qft_twin_row_sumsq_lane(x + row * ld, len, lane);
        __syncthreads();
        for (int off = QFT_NORM_LANES / 2; off > 0; off >>= 1) {
            if (lane < off) part[lane] = qft_twin_dadd(part[lane], part[lane + off]);
            __syncthreads();
        }
        if (lane == 0) norm[row] = (float)sqrt(part[0]);
        __syncthreads(); // part is refilled by the next row
    }
}

// src, dst (N, d), contiguous: element e is mask index e (row-major).
static __global__ void dropout_kernel(uint64_t key, uint64_t threshold, float scale,
                                      const float *src, size_t total, float *dst,
                                      int accumulate) {
    QFT_CUDA_GRID_STRIDE(e, total) {
        const float v = qft_twin_dropout_value(key, (uint64_t)e, threshold, scale, src[e]);
        dst[e] = accumulate ? qft_twin_add(dst[e], v) : v;
    }
}

extern "C" void qft_cuda_cols_axpby(float *dst, int64_t ldd, float beta, const float *src,
                                    int64_t lds, const float *f, float fadd, int64_t N,
                                    int64_t n) {
    if (N <= 0 || n <= 0) return;
    const size_t total = (size_t)N * (size_t)n; // (N, n)
    cols_axpby_kernel<<<qft_cuda_grid_for(total), QFT_CUDA_TPB>>>(dst, ldd, beta, src, lds, f,
                                                                  fadd, N, n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_col_dot(float *acc, const float *a, int64_t lda, const float *b,
                                 int64_t ldb, const float *div, int64_t N, int64_t n) {
    // N = 0 still adds (float)(0 / div[j]), as the CPU loop does
    if (n <= 0 || N < 0) return;
    const dim3 threads(QFT_COLDOT_COLS, QFT_COLDOT_SLICES);
    col_dot_kernel<<<qft_cuda_blocks((size_t)n, QFT_COLDOT_COLS), threads>>>(acc, a, lda, b, ldb,
                                                                             div, N, n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_col_dot_scale(float *acc, float *g, int64_t ldg, const float *a,
                                       int64_t lda, const float *b, int64_t ldb,
                                       const float *div, const float *f, int64_t N, int64_t n) {
    if (n <= 0 || N < 0) return;
    const dim3 threads(QFT_COLDOT_COLS, QFT_COLDOT_SLICES);
    col_dot_scale_kernel<<<qft_cuda_blocks((size_t)n, QFT_COLDOT_COLS), threads>>>(
        acc, g, ldg, a, lda, b, ldb, div, f, N, n);
    CUDA_LAUNCHED();
}

static int lowrank_out_unfused; // qft_cuda_set_lowrank_out_unfused

extern "C" void qft_cuda_set_lowrank_out_unfused(int unfused) {
    lowrank_out_unfused = unfused != 0;
}

extern "C" void qft_cuda_lowrank_out(float *y, int64_t ldy, const float *u, const float *B,
                                     int64_t k, float scale, const float *f, float *h,
                                     int64_t N, int64_t out) {
    if (N <= 0 || out <= 0) return;
    if (lowrank_out_unfused) {
        // the steps DoRA took before the fused kernel: the GEMM, a copy, a scale
        qft_cuda_gemm(0, 1, (int)N, (int)out, (int)k, scale, u, (int)k, B, (int)k, 1.0f, y,
                      (int)ldy);
        if (h) qft_cuda_cols_axpby(h, out, 0.0f, y, ldy, NULL, 1.0f, N, out);
        if (f) qft_cuda_cols_axpby(y, ldy, 0.0f, y, ldy, f, 0.0f, N, out);
        return;
    }
    const dim3 threads(LR_COLS, LR_ROWS / LR_PER);
    const int64_t max_rows = (int64_t)65535 * LR_ROWS; // gridDim.y's limit
    for (int64_t r0 = 0; r0 < N; r0 += max_rows) {
        const int64_t n = N - r0 < max_rows ? N - r0 : max_rows;
        const dim3 grid((unsigned)((out + LR_COLS - 1) / LR_COLS),
                        (unsigned)((n + LR_ROWS - 1) / LR_ROWS));
        lowrank_out_kernel<<<grid, threads>>>(y + r0 * ldy, ldy, u + r0 * k, B, k, scale, f,
                                              h ? h + r0 * out : NULL, n, out);
        CUDA_LAUNCHED();
    }
}

extern "C" void qft_cuda_div(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    div_kernel<<<qft_cuda_grid_for(n), QFT_CUDA_TPB>>>(out, a, b, n);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_row_norms(float *norm, const float *x, int64_t ld, int64_t n,
                                   int64_t len) {
    if (n <= 0) return;
    row_norms_kernel<<<qft_cuda_blocks((size_t)n, 1), QFT_NORM_LANES>>>(norm, x, ld, n, len);
    CUDA_LAUNCHED();
}

extern "C" void qft_cuda_dropout(uint64_t key, double p, const float *src, int64_t N, int64_t d,
                                 float *dst, int accumulate) {
    if (N <= 0 || d <= 0) return;
    const size_t total = (size_t)N * (size_t)d; // (N, d)
    // both on the host in double, as qft_ops.h defines them
    const uint64_t threshold = qft_ops_dropout_threshold(p);
    const float scale = (float)(1.0 / (1.0 - p));
    dropout_kernel<<<qft_cuda_grid_for(total), QFT_CUDA_TPB>>>(key, threshold, scale, src, total,
                                                               dst, accumulate);
    CUDA_LAUNCHED();
}
