/*
 * Private to core/cuda (CUDA C++): the backend's state, the check macros that carry the
 * call site, and the kernel entry points each .cu file exports to the op table.
 */
#ifndef QFT_CUDA_INTERNAL_H
#define QFT_CUDA_INTERNAL_H

#include "qft_cuda.h"
#include "cuda_twin.h"
#include "cuda_twin_attg.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

/* Records the first failure (call text, file, line, message) and prints every failure to
 * stderr; returns nonzero when `ok` is false, so callers can bail out. */
int qft_cuda_fail(const char *call, const char *file, int line, const char *msg);

/* Every CUDA runtime and cuBLASLt call goes through one of these (llm.c's habit): a dropped
 * return code is how a kernel bug turns into wrong numbers three ops later. Each evaluates
 * to 0 on success and nonzero (after recording) on failure. */
#define CUDA_CHECK(call)                                                                      \
    ([&]() -> int {                                                                          \
        cudaError_t e_ = (call);                                                             \
        return e_ == cudaSuccess ? 0                                                         \
                                 : qft_cuda_fail(#call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
    }())
#define CUBLAS_CHECK(call)                                                                    \
    ([&]() -> int {                                                                          \
        cublasStatus_t s_ = (call);                                                          \
        return s_ == CUBLAS_STATUS_SUCCESS                                                   \
                   ? 0                                                                       \
                   : qft_cuda_fail(#call, __FILE__, __LINE__, cublasLtGetStatusString(s_));  \
    }())
/* After a kernel launch: a bad configuration shows up here, a fault at the next sync. */
#define CUDA_LAUNCHED() CUDA_CHECK(cudaGetLastError())

/* Grid size for n items at `per_block` per block, clamped to the 1-D grid limit (kernels
 * using it loop with a grid stride). */
static inline unsigned qft_cuda_blocks(size_t n, unsigned per_block) {
    size_t b = (n + per_block - 1) / per_block;
    if (b == 0) b = 1;
    return b > 0x7fffffffu ? 0x7fffffffu : (unsigned)b;
}

/* ---- state (cuda_state.cu) ------------------------------------------------------------ */
struct qft_cuda_state {
    int ready, device;
    int sm_count;
    size_t smem_optin;              /* max dynamic shared memory a block may opt into */
    cublasLtHandle_t lt;
    void *lt_work;                  /* cuBLASLt workspace */
    size_t lt_work_bytes;
    int matmul_precision;           /* qft_cuda_set_matmul_precision's level */
    int pooled;                     /* the op table's alloc/free go through the device's
                                     * stream-ordered pool (cudaMallocAsync) */
    void *scratch;                  /* device scratch for host-visible results */
    size_t scratch_bytes;
    char name[160];
};
extern struct qft_cuda_state qft_cuda_g;
/* The held/peak count of the backend's device memory (qft_cuda_mem_held): every buffer,
 * or committed range, this library makes live, and its end. */
void qft_cuda_mem_note_alloc(void *p, size_t bytes);
void qft_cuda_mem_note_free(void *p);

/* ---- virtual memory management (cuda_vm.cu): qft_ops's vm_* entries ------------------ */
size_t qft_cuda_vm_granularity(void);
void *qft_cuda_vm_reserve(size_t bytes);
int qft_cuda_vm_commit(void *p, size_t bytes, const char *what);
void qft_cuda_vm_decommit(void *p, size_t bytes);
void qft_cuda_vm_unreserve(void *p, size_t bytes);

/* ---- element-wise launches --------------------------------------------------------------
 * Threads per block of the one-thread-per-element kernels, the grid that launches them
 * (enough blocks to fill the device several times over, never more: the loop strides the
 * rest, so any n fits one launch) and that loop, e over [0, n). */
#define QFT_CUDA_TPB 256u
static inline unsigned qft_cuda_grid_for(size_t n) {
    unsigned b = qft_cuda_blocks(n, QFT_CUDA_TPB);
    unsigned cap = (unsigned)(qft_cuda_g.sm_count > 0 ? qft_cuda_g.sm_count : 1) * 32u;
    return b < cap ? b : cap;
}
#define QFT_CUDA_GRID_STRIDE(e, n)                                                            \
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (n);                  \
         e += (size_t)gridDim.x * blockDim.x)
/* Device scratch of at least `bytes`, grown (after a sync) when needed; NULL on failure. */
void *qft_cuda_scratch(size_t bytes);

/* ---- kernels, one family per file (arguments as the qft_ops entries) ------------------- */
void qft_cuda_zero(float *x, size_t n);
void qft_cuda_copy(float *dst, const float *src, size_t n);
void qft_cuda_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc);
void qft_cuda_gemm_release(void);
/* fp32 strided-batched GEMM (one cuBLASLt call, the same precision as qft_cuda_gemm); 0 or
 * -1 recorded. */
int qft_cuda_gemm_batched(const qft_twin_bgemm *g);
void qft_cuda_add(float *out, const float *a, const float *b, size_t n);
void qft_cuda_embedding_fwd(float *out, const int32_t *ids, const float *table, int N, int C);
void qft_cuda_embedding_fwd_bf16(float *out, const int32_t *ids, const uint16_t *table, int N,
                                 int C);
void qft_cuda_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int N, int C);
void qft_cuda_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C,
                          float eps);
void qft_cuda_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x,
                          const float *w, const float *rstd, int N, int C);
void qft_cuda_rope_table(float *cos, float *sin, int T, int hd, float theta, int rope_type,
                         float factor, float low_freq_factor, float high_freq_factor,
                         int original_max_pos);
void qft_cuda_rope_fwd(float *x, int ld, const float *cos, const float *sin, int B, int T, int nh,
                       int hd);
void qft_cuda_rope_bwd(float *dx, int ld, const float *cos, const float *sin, int B, int T,
                       int nh, int hd);
size_t qft_cuda_attention_workspace(int T, int hd);
void qft_cuda_attention_fwd(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                            int T, int H, int KV, int hd, float scale, float *work,
                            size_t work_floats);
void qft_cuda_attention_bwd(float *dqkv, const float *dout, const float *out, const float *lse,
                            const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                            int hd, float scale, float *work, size_t work_floats);
int qft_cuda_attention_setup(void); /* opts the kernels into their shared memory */
/* cuda_attention_tc.cu: attention on bf16 tensor cores (WMMA), for head dims that are a
 * multiple of 16 up to 128 (supports); setup opts its kernels into their shared memory.
 * Backward needs bwd_floats(B, T, H) floats of scratch at D. */
int qft_cuda_attn_tc_supports(int hd);
int qft_cuda_attn_tc_setup(void);
void qft_cuda_attn_tc_forward(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                              int T, int H, int KV, int hd, float scale);
size_t qft_cuda_attn_tc_bwd_floats(int B, int T, int H);
void qft_cuda_attn_tc_backward(float *dqkv, const float *dout, const float *out, const float *lse,
                               const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                               int hd, float scale, float *D);
/* cuda_attention_gemm.cu: attention as cuBLASLt GEMMs and row kernels over tiles of `rows`
 * query rows (cuda_twin_attg.h); the entries above use it unless the flash kernels were
 * chosen (qft_cuda_set_attention_kernel) or rows is 0. 0 or -1 recorded. */
int qft_cuda_attg_forward(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                          int T, int H, int KV, int hd, float scale, float *work, int rows);
int qft_cuda_attg_backward(float *dqkv, const float *dout, const float *out, const float *lse,
                           const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                           int hd, float scale, float *work, int rows);
void qft_cuda_swiglu_fwd(float *h, const float *gu, int N, int inter);
void qft_cuda_swiglu_bwd(float *dgu, const float *dh, const float *gu, int N, int inter);
double qft_cuda_cross_entropy_fwd(const float *logits, const int32_t *targets, int N, int V,
                                  float *lse, float *loss, int *n_valid);
void qft_cuda_cross_entropy_bwd(float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, int N, int V, float scale);
double qft_cuda_cross_entropy_fused(float *logits, const int32_t *targets, int N, int V,
                                    float scale, float *loss, int *n_valid);
/* cuda_dequant.cu: the packed-weight entries, over a layout whose buffers are on the device */
extern "C" void qft_cuda_dequantize(const qft_qlayout *w, int64_t row0, int64_t n, float *dst);
extern "C" int qft_cuda_has_qformat(int format);
/* The kernels' view of a layout: w's NF4 or HQQ buffers into *nf4 / *hqq, or its bf16
 * values, as one qft_cuda_weight (cuda_dequant.cu); 0, or -1 with msg filled. */
int qft_cuda_weight_of(const qft_qlayout *w, qft_cuda_nf4 *nf4, qft_cuda_hqq *hqq,
                       qft_cuda_weight *cw, char *msg, size_t msg_size);
extern "C" void qft_cuda_lowrank_row_norms(float *norm, const qft_qlayout *w,
                                           const float *w_dense, int64_t out, int64_t in,
                                           const float *A, const float *B, int64_t r,
                                           float scale);
extern "C" void qft_cuda_qmatmul(const qft_qlayout *w, int backward, const float *a, int64_t lda,
                                 int64_t N, float *c, int64_t ldc, float beta, float *scratch,
                                 size_t scratch_floats);

#endif
