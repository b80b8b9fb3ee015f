// GEMM through cuBLASLt. A plan (the matmul descriptor, three layouts and the algorithm the
// heuristic chose) is built once per shape and kept: the heuristic query costs more than
// a small GEMM, and one algorithm per shape keeps results bit-stable across calls.
#include "cuda_internal.h"

#include <stdio.h>
#include <string.h>

namespace {

struct plan_key {
    int transA, transB, M, N, K, lda, ldb, ldc;
    int ab_type, c_type;       // cudaDataType_t of A/B and of C/D
    int compute;               // cublasComputeType_t
    int align_a, align_b, align_c; // bytes each pointer is aligned to, at most 256
    int count;                     // batched: problems (0 or 1: one)
    long long stride_a, stride_b, stride_c; // batched: elements from one problem to the next
};

// cuBLASLt's heuristic assumes 256-byte aligned operands unless told otherwise, and the
// model passes sub-tensors (a head's slice, the up half of gate|up) that are not: the
// alignment is part of the plan, so an algorithm is never used on a pointer it cannot read.
int align_of(const void *p, long long stride_bytes = 0) {
    const uintptr_t a = (uintptr_t)p | (uintptr_t)stride_bytes; // every problem's pointer
    int al = 256;
    while (al > 1 && a % (uintptr_t)al) al >>= 1;
    return al;
}

struct plan {
    plan_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc; // first (B), second (A), C: see qft_twin_gemm_map
    cublasLtMatmulAlgo_t algo;
};

const int PLAN_CAP = 256;
plan plans[PLAN_CAP];
int n_plans;

void plan_destroy(plan *p) {
    if (p->desc) CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
    if (p->la) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
    if (p->lb) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
    if (p->lc) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lc));
    memset(p, 0, sizeof *p);
}

// 0 on success; on failure the plan is left empty and the error recorded.
int plan_build(plan *p, const plan_key &k) {
    memset(p, 0, sizeof *p);
    p->key = k;
    const qft_twin_gemm_plan m =
        qft_twin_gemm_map(k.transA, k.transB, k.M, k.N, k.K, k.lda, k.ldb, k.ldc);
    const cublasOperation_t op1 = m.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op2 = m.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType_t ab = (cudaDataType_t)k.ab_type, ct = (cudaDataType_t)k.c_type;
    // fp32 compute: CUBLAS_COMPUTE_32F keeps fp32 inputs off TF32 (parity with the CPU)
    // unless qft_cuda_set_matmul_precision asked for TF32 or bf16 tensor cores, and
    // accumulates bf16 inputs in fp32.
    if (CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, (cublasComputeType_t)k.compute,
                                              CUDA_R_32F)) ||
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1,
                                                    sizeof op1)) ||
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2,
                                                    sizeof op2)) ||
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, ab, m.first_rows, m.first_cols,
                                                m.first_ld)) ||
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, ab, m.second_rows, m.second_cols,
                                                m.second_ld)) ||
        CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, ct, m.c_rows, m.c_cols, m.c_ld))) {
        plan_destroy(p);
        return -1;
    }
    // strided batches: the first layout is B's storage, the second A's (see above)
    if (k.count > 1) {
        const int32_t n = k.count;
        const int64_t s1 = k.stride_b, s2 = k.stride_a, sc = k.stride_c;
        const cublasLtMatrixLayoutAttribute_t cnt = CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT;
        const cublasLtMatrixLayoutAttribute_t off = CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET;
        if (CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->la, cnt, &n, sizeof n)) ||
            CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->la, off, &s1, sizeof s1)) ||
            CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->lb, cnt, &n, sizeof n)) ||
            CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->lb, off, &s2, sizeof s2)) ||
            CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->lc, cnt, &n, sizeof n)) ||
            CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(p->lc, off, &sc, sizeof sc))) {
            plan_destroy(p);
            return -1;
        }
    }
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    size_t ws = qft_cuda_g.lt_work_bytes;
    // cuBLASLt's A is our first operand (B's storage), its B our second (A's storage)
    const uint32_t al1 = (uint32_t)k.align_b, al2 = (uint32_t)k.align_a, alc = (uint32_t)k.align_c;
    int bad = CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref)) ||
              CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                  pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws)) ||
              CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                  pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al1, sizeof al1)) ||
              CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                  pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al2, sizeof al2)) ||
              CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                  pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alc, sizeof alc)) ||
              CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                  pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alc, sizeof alc)) ||
              CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(qft_cuda_g.lt, p->desc, p->la, p->lb,
                                                          p->lc, p->lc, pref, 1, &res, &found));
    if (pref) CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (!bad && found == 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "no algorithm for M=%d N=%d K=%d transA=%d transB=%d", k.M, k.N,
                 k.K, k.transA, k.transB);
        bad = qft_cuda_fail("cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__, msg);
    }
    if (bad) {
        plan_destroy(p);
        return -1;
    }
    p->algo = res.algo;
    return 0;
}

// The cached plan for k, built on first use; NULL on failure. A full cache replaces its
// entries in turn (batches of new sequence lengths bring new attention tile shapes, so a
// long run would otherwise fill it and plan every later call from scratch).
int next_victim;
plan *plan_get(const plan_key &k) {
    for (int i = 0; i < n_plans; i++)
        if (memcmp(&plans[i].key, &k, sizeof k) == 0) return &plans[i];
    plan *p;
    if (n_plans < PLAN_CAP) {
        p = &plans[n_plans];
    } else {
        p = &plans[next_victim];
        next_victim = (next_victim + 1) % PLAN_CAP;
        plan_destroy(p);
    }
    if (plan_build(p, k)) return NULL;
    if (p == &plans[n_plans]) n_plans++;
    return p;
}

// Batched problems: count of them, X_p = X + p * stride_x elements (count <= 1: one).
struct batching {
    int count;
    long long stride_a, stride_b, stride_c;
};

// C = alpha op(A) op(B) + beta C with any of the supported type pairs; 0 or -1 (recorded).
int gemm_any(int transA, int transB, int M, int N, int K, float alpha, const void *A, int lda,
             const void *B, int ldb, float beta, void *C, int ldc, cudaDataType_t ab,
             cudaDataType_t ct, batching bt = batching{1, 0, 0, 0}) {
    if (!qft_cuda_g.ready)
        return qft_cuda_fail("gemm", __FILE__, __LINE__, "CUDA backend not initialised");
    plan_key k;
    memset(&k, 0, sizeof k); // the key is compared bytewise
    k.transA = transA, k.transB = transB, k.M = M, k.N = N, k.K = K;
    k.lda = lda, k.ldb = ldb, k.ldc = ldc, k.ab_type = ab, k.c_type = ct;
    k.compute = CUBLAS_COMPUTE_32F;
    if (ab == CUDA_R_32F && qft_cuda_g.matmul_precision == 1)
        k.compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (ab == CUDA_R_32F && qft_cuda_g.matmul_precision == 2)
        k.compute = CUBLAS_COMPUTE_32F_FAST_16BF;
    const long long esz = ab == CUDA_R_32F ? 4 : 2, csz = ct == CUDA_R_32F ? 4 : 2;
    if (bt.count > 1) {
        k.count = bt.count;
        k.stride_a = bt.stride_a, k.stride_b = bt.stride_b, k.stride_c = bt.stride_c;
    }
    k.align_a = align_of(A, k.stride_a * esz), k.align_b = align_of(B, k.stride_b * esz);
    k.align_c = align_of(C, k.stride_c * csz);
    plan *p = plan_get(k);
    if (!p) return -1;
    // first operand is B's storage, second A's: column-major C^T = op(B)^T op(A)^T
    int bad = CUBLAS_CHECK(cublasLtMatmul(qft_cuda_g.lt, p->desc, &alpha, B, p->la, A, p->lb,
                                          &beta, C, p->lc, C, p->lc, &p->algo, qft_cuda_g.lt_work,
                                          qft_cuda_g.lt_work_bytes, 0));
    return bad ? -1 : 0;
}

// K = 0: BLAS would leave C as beta * C (and exactly 0 for beta = 0), which cuBLASLt does
// not promise, so it is done here as on the CPU backend.
__global__ void scale_c_kernel(float *C, int M, int N, int ldc, float beta) {
    const size_t total = (size_t)M * N;
    QFT_CUDA_GRID_STRIDE(e, total) {
        float *c = C + (e / N) * ldc + e % N;
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

} // namespace

void qft_cuda_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c_kernel<<<qft_cuda_grid_for((size_t)M * N), QFT_CUDA_TPB>>>(C, M, N, ldc, beta);
        CUDA_LAUNCHED();
        return;
    }
    gemm_any(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_32F,
             CUDA_R_32F);
}

int qft_cuda_gemm_batched(const qft_twin_bgemm *g) {
    if (g->M <= 0 || g->N <= 0 || g->K <= 0 || g->count <= 0)
        return qft_cuda_fail("gemm_batched", __FILE__, __LINE__, "empty batched GEMM");
    return gemm_any(g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A, (int)g->lda, g->B,
                    (int)g->ldb, g->beta, g->C, (int)g->ldc, CUDA_R_32F, CUDA_R_32F,
                    batching{g->count, g->sA, g->sB, g->sC});
}

extern "C" int qft_cuda_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha,
                                  const uint16_t *A, int lda, const uint16_t *B, int ldb,
                                  float beta, void *C, qft_dtype c_dtype, int ldc, qft_err *err) {
    if (c_dtype != QFT_DT_BF16 && c_dtype != QFT_DT_F32)
        return qft_err_setf(err, "qft_cuda_gemm_bf16: C must be bf16 or f32 (dtype %d)",
                            (int)c_dtype);
    if (M <= 0 || N <= 0 || K <= 0)
        return qft_err_setf(err, "qft_cuda_gemm_bf16: empty shape M=%d N=%d K=%d", M, N, K);
    if (gemm_any(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_16BF,
                 c_dtype == QFT_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F))
        return qft_cuda_status(err);
    return 0;
}

extern "C" void qft_cuda_set_matmul_precision(int level) {
    qft_cuda_g.matmul_precision = level >= 0 && level <= 2 ? level : 0;
}

void qft_cuda_gemm_release(void) {
    for (int i = 0; i < n_plans; i++) plan_destroy(&plans[i]);
    n_plans = 0, next_victim = 0;
}
