/* The CPU backend: fp32 kernels behind the qft_ops table (plugins/qft/qft_ops.h).
 * GEMM goes to OpenBLAS; everything else is plain C with OpenMP over rows, heads or
 * column blocks, split so that no two threads write the same output (no atomics, so
 * results do not depend on scheduling).
 *
 * The backend owns the process's OpenBLAS threading: on first use it sets OpenBLAS to one
 * thread (openblas_set_num_threads(1)) and splits large GEMMs over OpenMP threads itself,
 * because two spinning thread pools on a small machine cost a third of a train step.
 * OMP_NUM_THREADS therefore sets the parallelism of everything, GEMM included. */
#ifndef QFT_CPU_OPS_H
#define QFT_CPU_OPS_H

#include "qft_ops.h"

/* The CPU op table; a static constant, valid for the life of the process. */
const qft_ops *qft_cpu_ops(void);
/* The same kernels behind a memory guard (cpu_guard.c): backend memory that host code
 * outside an op cannot touch, to check device discipline without a device. */
const qft_ops *qft_cpu_guard_ops(void);
/* Bytes the guard backend holds now and held at most (what its callers asked for, not
 * the pages): the same count the CUDA backend keeps of its device memory, so a run on
 * cpu_guard shows what the model's buffers would take on a GPU, less that backend's own
 * scratch (cuBLASLt workspace, the bf16 copies of activations, attention tiles). */
size_t qft_cpu_guard_mem_peak(void);
size_t qft_cpu_guard_mem_held(void);

/* The kernels, one family per file, exported for tests and benchmarks that time a kernel
 * alone. Arguments and shapes are those of the qft_ops entries of the same name. */
void qft_cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);
void qft_cpu_add(float *out, const float *a, const float *b, size_t n);
void qft_cpu_embedding_fwd(float *out, const int32_t *ids, const float *table, int N, int C);
void qft_cpu_qmatmul(const qft_qlayout *w, int backward, const float *a, int64_t lda, int64_t N,
                     float *c, int64_t ldc, float beta, float *scratch, size_t scratch_floats);
void qft_cpu_f32_to_bf16(uint16_t *dst, const float *src, size_t n);
void qft_cpu_bf16_to_f32(float *dst, const uint16_t *src, size_t n);
void qft_cpu_embedding_fwd_bf16(float *out, const int32_t *ids, const uint16_t *table, int N,
                                int C);
void qft_cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int N, int C);
void qft_cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C,
                         float eps);
void qft_cpu_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int N, int C);
void qft_cpu_rope_table(float *cos, float *sin, int T, int hd, float theta, int rope_type,
                        float factor, float low_freq_factor, float high_freq_factor,
                        int original_max_pos);
void qft_cpu_rope_fwd(float *x, int ld, const float *cos, const float *sin, int B, int T, int nh,
                      int hd);
void qft_cpu_rope_bwd(float *dx, int ld, const float *cos, const float *sin, int B, int T, int nh,
                      int hd);
size_t qft_cpu_attention_workspace(int T, int hd);
void qft_cpu_attention_fwd(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                           int T, int H, int KV, int hd, float scale, float *work,
                           size_t work_floats);
void qft_cpu_attention_bwd(float *dqkv, const float *dout, const float *out, const float *lse,
                           const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                           int hd, float scale, float *work, size_t work_floats);
void qft_cpu_swiglu_fwd(float *h, const float *gu, int N, int inter);
void qft_cpu_swiglu_bwd(float *dgu, const float *dh, const float *gu, int N, int inter);
double qft_cpu_cross_entropy_fwd(const float *logits, const int32_t *targets, int N, int V,
                                 float *lse, float *loss, int *n_valid);
void qft_cpu_cross_entropy_bwd(float *dlogits, const float *logits, const float *lse,
                               const int32_t *targets, int N, int V, float scale);
double qft_cpu_cross_entropy_fused(float *logits, const int32_t *targets, int N, int V,
                                   float scale, float *loss, int *n_valid);
/* Packed weights (cpu_dequant.c, built without contraction in qft_cpu_optim): dst (n, in)
 * = rows [row0, row0 + n) of the weight w describes, in fp32, the quantizer plugin's
 * dequantize_rows bit for bit; NaN rows for a layout it cannot decode. has_qformat: 1 for
 * QFT_QFMT_NF4 and QFT_QFMT_HQQ. */
void qft_cpu_dequantize(const qft_qlayout *w, int64_t row0, int64_t n, float *dst);
void qft_cpu_lowrank_row_norms(float *norm, const qft_qlayout *w, const float *w_dense,
                               int64_t out, int64_t in, const float *A, const float *B,
                               int64_t r, float scale);
int qft_cpu_has_qformat(int format);
/* The op table's lowrank_out: the backend's GEMM into y, then qft_cpu_out_keep_scale. */
void qft_cpu_lowrank_out(float *y, int64_t ldy, const float *u, const float *B, int64_t k,
                         float scale, const float *f, float *h, int64_t N, int64_t out);

#endif
