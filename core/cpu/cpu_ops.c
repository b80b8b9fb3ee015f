/* The CPU op table, plus the ops too small for a file of their own: memory, GEMM,
 * elementwise add and the embedding gather/scatter. */
#include "cpu_ops.h"
#include "cpu_optim.h"

#include "qft_base.h"

#include "cpu_blas.h"
#include <pthread.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void cpu_zero(float *x, size_t n) { memset(x, 0, n * sizeof *x); }
static void cpu_copy(float *dst, const float *src, size_t n) {
    if (dst != src) memcpy(dst, src, n * sizeof *dst);
}

/* One thread pool, not two: OpenBLAS's own threads and OpenMP's spin-wait against each
 * other on a small machine (measured: 30% of a train step lost on 2 cores), so OpenBLAS
 * runs single-threaded and the GEMM is split into column (or row) blocks over OpenMP
 * threads, each block one sgemm call. The split depends only on the shape and the
 * thread count, so results are reproducible. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void) { openblas_set_num_threads(1); }
void qft_cpu_blas_init(void) { pthread_once(&blas_once, blas_single_thread); }
#define sgemm qft_cpu_sgemm

void qft_cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* BLAS leaves C untouched for K = 0 only when beta = 1 */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    qft_cpu_blas_init();
    int nt = 1;
#ifdef _OPENMP
    nt = omp_in_parallel() ? 1 : omp_get_max_threads();
#endif
    if (nt <= 1 || (double)M * N * K < 262144.0) {
        sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const int split_n = N >= M; /* cut the longer side of C */
    const int len = split_n ? N : M;
    int chunk = (len + nt - 1) / nt;
    chunk = (chunk + 15) / 16 * 16; /* whole micro-tiles for the kernel */
    const int nchunks = (len + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int c = 0; c < nchunks; c++) {
        const int o = c * chunk, n = o + chunk < len ? chunk : len - o;
        if (split_n) /* columns o..o+n of C and of op(B) */
            sgemm(transA, transB, M, n, K, alpha, A, lda, transB ? B + (size_t)o * ldb : B + o,
                  ldb, beta, C + o, ldc);
        else /* rows o..o+n of C and of op(A) */
            sgemm(transA, transB, n, N, K, alpha, transA ? A + o : A + (size_t)o * lda, lda, B,
                  ldb, beta, C + (size_t)o * ldc, ldc);
    }
}

void qft_cpu_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void qft_cpu_embedding_fwd(float *out, const int32_t *ids, const float *table, int N, int C) {
#pragma omp parallel for schedule(static) if (N > 64)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C * sizeof *out); // (C)
}

void qft_cpu_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) dst[i] = qft_f32_to_bf16(src[i]);
}

void qft_cpu_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) dst[i] = qft_bf16_to_f32(src[i]);
}

void qft_cpu_embedding_fwd_bf16(float *out, const int32_t *ids, const uint16_t *table, int N,
                                int C) {
#pragma omp parallel for schedule(static) if (N > 64)
    for (int n = 0; n < N; n++) {
        const uint16_t *row = table + (size_t)ids[n] * C; // (C)
        float *o = out + (size_t)n * C;                   // (C)
        for (int c = 0; c < C; c++) o[c] = qft_bf16_to_f32(row[c]); /* exact widening */
    }
}

/* Threads split the columns, not the rows: a token id repeats across rows, and column
 * ownership keeps each sum in row order whatever the thread count. */
void qft_cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
#pragma omp parallel
    {
        int nt = 1, tid = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(), tid = omp_get_thread_num();
#endif
        int per = (C + nt - 1) / nt;
        int c0 = tid * per, c1 = c0 + per < C ? c0 + per : C;
        for (int n = 0; n < N; n++) {
            float *d = dtable + (size_t)ids[n] * C;    // (C) row of (V, C)
            const float *s = dout + (size_t)n * C;     // (C) row of (N, C)
#pragma omp simd
            for (int c = c0; c < c1; c++) d[c] += s[c];
        }
    }
}

void qft_cpu_lowrank_out(float *y, int64_t ldy, const float *u, const float *B, int64_t k,
                         float scale, const float *f, float *h, int64_t N, int64_t out) {
    if (N <= 0 || out <= 0) return;
    /* the GEMM the adapters ran before, then one pass for the copy and the scale */
    qft_cpu_gemm(0, 1, (int)N, (int)out, (int)k, scale, u, (int)k, B, (int)k, 1.0f, y, (int)ldy);
    if (f || h) qft_cpu_out_keep_scale(y, ldy, f, h, N, out);
}

static void *cpu_alloc(size_t bytes, const char *what) { return qft_mem_alloc(bytes, what); }
static void cpu_free(void *p) { qft_mem_free(p); }

static void cpu_move(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

static const qft_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .gemm = qft_cpu_gemm,
    .add = qft_cpu_add,
    .embedding_fwd = qft_cpu_embedding_fwd,
    .embedding_bwd = qft_cpu_embedding_bwd,
    .rmsnorm_fwd = qft_cpu_rmsnorm_fwd,
    .rmsnorm_bwd = qft_cpu_rmsnorm_bwd,
    .rope_table = qft_cpu_rope_table,
    .rope_fwd = qft_cpu_rope_fwd,
    .rope_bwd = qft_cpu_rope_bwd,
    .attention_workspace = qft_cpu_attention_workspace,
    .attention_fwd = qft_cpu_attention_fwd,
    .attention_bwd = qft_cpu_attention_bwd,
    .swiglu_fwd = qft_cpu_swiglu_fwd,
    .swiglu_bwd = qft_cpu_swiglu_bwd,
    .cross_entropy_fwd = qft_cpu_cross_entropy_fwd,
    .cross_entropy_bwd = qft_cpu_cross_entropy_bwd,
    .cross_entropy_fused = qft_cpu_cross_entropy_fused,
    .upload = cpu_move,
    .download = cpu_move,
    .adamw = qft_cpu_adamw,
    .sgd = qft_cpu_sgd,
    .sumsq = qft_cpu_sumsq,
    .scale = qft_cpu_scale,
    .host_memory = 1,
    .dequantize = qft_cpu_dequantize,
    .has_qformat = qft_cpu_has_qformat,
    .cols_axpby = qft_cpu_cols_axpby,
    .col_dot = qft_cpu_col_dot,
    .div = qft_cpu_div,
    .row_norms = qft_cpu_row_norms,
    .dropout = qft_cpu_dropout,
    .embedding_fwd_bf16 = qft_cpu_embedding_fwd_bf16,
    .f32_to_bf16 = qft_cpu_f32_to_bf16,
    .bf16_to_f32 = qft_cpu_bf16_to_f32,
    .qmatmul = qft_cpu_qmatmul,
    .lowrank_row_norms = qft_cpu_lowrank_row_norms,
    .lowrank_out = qft_cpu_lowrank_out,
    .col_dot_scale = qft_cpu_col_dot_scale,
};

const qft_ops *qft_cpu_ops(void) { return &cpu_ops; }
