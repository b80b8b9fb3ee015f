/* Private to core/cpu: the one place that talks to OpenBLAS. OpenBLAS is switched to one
 * thread before its first use (qft_cpu_blas_init) because the backend parallelises with
 * OpenMP itself, including inside attention, where each thread runs its own small GEMMs. */
#ifndef QFT_CPU_BLAS_H
#define QFT_CPU_BLAS_H

#include <cblas.h>
/* OpenBLAS's config header includes complex.h, whose macro I would eat every variable
 * named I (the intermediate size, in this code base). */
#ifdef I
#undef I
#endif

/* Idempotent and thread-safe (pthread_once). */
void qft_cpu_blas_init(void);

/* Row-major C (M, N) = alpha op(A) op(B) + beta C, in the calling thread. */
static inline void qft_cpu_sgemm(int transA, int transB, int M, int N, int K, float alpha,
                                 const float *A, int lda, const float *B, int ldb, float beta,
                                 float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif
