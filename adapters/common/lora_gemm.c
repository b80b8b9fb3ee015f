/* GEMM and memory for the adapter hooks. The backend's op table is the normal path: its
 * GEMM splits over the same OpenMP threads as the rest of the step (the CPU backend keeps
 * OpenBLAS single-threaded). Without one, OpenBLAS is called here, split the same way. */
#include "lora_common.h"
#include "qft_ops.h"

#include <cblas.h>
#include <stdlib.h>
#ifdef I
#undef I /* complex.h, pulled in by some cblas.h */
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

static void sgemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void qft_lora_gemm(const qft_services *svc, int transA, int transB, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (svc && svc->ops && svc->ops->gemm) {
        svc->ops->gemm(transA, transB, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb,
                       beta, C, (int)ldc);
        return;
    }
    if (K <= 0) { /* BLAS would leave C as it is; the product is empty */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
    int nt = 1;
#ifdef _OPENMP
    nt = omp_in_parallel() ? 1 : omp_get_max_threads();
#endif
    if (nt <= 1 || (double)M * N * K < 262144.0) {
        sgemm(transA, transB, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
              (int)ldc);
        return;
    }
    /* blocks of the longer side of C, one sgemm each; the split depends only on the shape
     * and the thread count, so results repeat */
    const int split_n = N >= M;
    const int64_t len = split_n ? N : M;
    int64_t chunk = (len + nt - 1) / nt;
    chunk = (chunk + 15) / 16 * 16;
    const int64_t nchunks = (len + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t o = c * chunk, n = o + chunk < len ? chunk : len - o;
        if (split_n)
            sgemm(transA, transB, (int)M, (int)n, (int)K, alpha, A, (int)lda,
                  transB ? B + o * ldb : B + o, (int)ldb, beta, C + o, (int)ldc);
        else
            sgemm(transA, transB, (int)n, (int)N, (int)K, alpha, transA ? A + o : A + o * lda,
                  (int)lda, B, (int)ldb, beta, C + o * ldc, (int)ldc);
    }
}

void *qft_lora_alloc(const qft_services *svc, size_t bytes, const char *what) {
    if (svc && svc->alloc) return svc->alloc(bytes ? bytes : 1, what);
    return malloc(bytes ? bytes : 1);
}

void qft_lora_free(const qft_services *svc, void *p) {
    if (!p) return;
    if (svc && svc->free)
        svc->free(p);
    else
        free(p);
}

int qft_lora_reserve(const qft_services *svc, float **buf, size_t *cap, size_t n, const char *what,
                     const char *name, qft_err *err) {
    if (*buf && *cap >= n) return 0;
    qft_lora_free(svc, *buf);
    *cap = 0;
    *buf = qft_lora_alloc(svc, n * sizeof(float), what);
    if (!*buf) return qft_err_setf(err, "%s: out of memory for %s (%zu floats)", name, what, n);
    *cap = n;
    return 0;
}
