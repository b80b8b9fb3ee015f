/*
 * The CUDA backend: the qft_ops table (plugins/qft/qft_ops.h) for one NVIDIA GPU, plus the
 * entry points the table has no slot for yet (bf16 GEMM, NF4 dequantization, AdamW, dtype
 * conversion) that the training path and the benchmarks call directly.
 *
 * What this first version is:
 *   - Storage in the op table is fp32, because the table is fp32 (the CPU backend is the
 *     reference and the model code passes float pointers). GEMM goes through cuBLASLt
 *     with CUBLAS_COMPUTE_32F (no TF32), so results match the CPU to about 1e-6.
 *     qft_cuda_gemm_bf16 is the bf16-storage, fp32-accumulate GEMM the issue aims at;
 *     it is used by bench/cuda_bench and tested, not yet by the model.
 *   - Every kernel is deterministic (no atomics; every sum has one owner and a fixed
 *     order), as the op table requires for activation recomputation.
 *   - All work runs on the legacy default stream, in issue order; pointers are device
 *     memory except where an entry says "host".
 *
 * Errors: the op table's entries return void, so a failing CUDA or cuBLASLt call (always
 * made through the check macros of cuda_internal.h, which record file and line) is kept
 * as the backend's first error and printed to stderr once; later calls still run.
 * qft_cuda_sync() waits for the device and reports that first error, so a caller checks
 * once per step instead of after every op.
 *
 * The backend keeps one process-wide state (device, cuBLASLt handle and workspace, GEMM
 * plan cache, scratch), set up by qft_cuda_ops(); one device per process.
 */
#ifndef QFT_CUDA_H
#define QFT_CUDA_H

#include "qft_ops.h"
#include "qft_sdk.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA op table on device `device`, or NULL with err filled: no device or driver
 * ("train.backend = \"cuda\": no CUDA device (cudaGetDeviceCount: ...)"), an index out of
 * range, a GPU older than sm_80, or a failed cuBLASLt set-up. Calling it again with the
 * same device returns the same table; another device is an error (one per process). */
const qft_ops *qft_cuda_ops(int device, qft_err *err);

/* Waits for all queued work; returns 0, or -1 with the backend's first recorded error
 * (file, line, call and CUDA's message). */
int qft_cuda_sync(qft_err *err);
/* The first recorded error without waiting (0 when none). Clears nothing. */
int qft_cuda_status(qft_err *err);
/* A one-line description of the device ("NVIDIA H200, sm_90, 132 SMs, 139.8 GiB"). */
const char *qft_cuda_device_name(void);
/* Bytes of device memory in use by the whole process (cudaMemGetInfo), for memory reports. */
size_t qft_cuda_mem_used(void);

/* Host <-> device copies (synchronous). 0 or -1 with err. */
int qft_cuda_upload(void *dst_dev, const void *src_host, size_t bytes, qft_err *err);
int qft_cuda_download(void *dst_host, const void *src_dev, size_t bytes, qft_err *err);

/* ---- bf16 ------------------------------------------------------------------------------ */
/* bf16 values are uint16_t bit patterns (torch's bfloat16), round to nearest even. */
void qft_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n); // (n) each
void qft_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n); // (n) each
/* C (M, N) = alpha * op(A) @ op(B) + beta * C as qft_ops.gemm, with A and B in bf16 and
 * fp32 accumulation; C is bf16 (c_dtype QFT_DT_BF16) or fp32 (QFT_DT_F32). Leading
 * dimensions must be multiples of 8 elements (16 bytes) for the tensor-core kernels;
 * cuBLASLt picks a slower one otherwise. Returns 0, or -1 with err (bad dtype, no plan). */
int qft_cuda_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha,
                       const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta,
                       void *C, qft_dtype c_dtype, int ldc, qft_err *err);

/* ---- bitsandbytes NF4 dequantization ------------------------------------------------------
 * The packed state of one weight as the bnb_nf4 plugin holds it (quant/bnb_nf4/nf4.h), in
 * device memory: two 4-bit codes a byte, the first element in the high nibble; one absmax
 * per block of `blocksize` consecutive elements of the row-major flattened weight, either
 * fp32 (absmax) or double-quantized (qabsmax codes into nested_map, scaled by
 * nested_absmax per 256 blocks, plus offset). */
typedef struct qft_cuda_nf4 {
    const uint8_t *packed;       // ((n + 1) / 2)
    const float *code;           // (16) the codebook
    const float *absmax;         // (n_blocks) fp32, or NULL when double-quantized
    const uint8_t *qabsmax;      // (n_blocks) codes, when double-quantized
    const float *nested_absmax;  // (ceil(n_blocks / 256)), when double-quantized
    const float *nested_map;     // (256) the signed dynamic map, when double-quantized
    float offset;                // mean of the absmax, when double-quantized
    int blocksize;               // 32..4096
    int64_t n;                   // out * in
} qft_cuda_nf4;
/* Elements [f0, f0 + count) of the flattened weight into dst (count), fp32 or bf16
 * (out_dtype QFT_DT_F32 / QFT_DT_BF16). Values are bit-identical to the plugin's
 * nf4_dequantize_range (then rounded to bf16 when asked). 0, or -1 with err. */
int qft_cuda_nf4_dequantize(const qft_cuda_nf4 *w, int64_t f0, int64_t count, void *dst,
                            qft_dtype out_dtype, qft_err *err);

/* ---- AdamW over one flat fp32 buffer -------------------------------------------------------
 * The update of core/train/optim.c (torch's single-tensor AdamW) element for element; the
 * scalars come from qft_cuda_adamw_scalars_make (cuda_twin.h), on the host, from the
 * doubles torch would hold (qft_optim_float_decimal of each hyper-parameter). */
struct qft_cuda_adamw_scalars;
/* p, m, v (n) updated in place from g (n). */
void qft_cuda_adamw(float *p, const float *g, float *m, float *v, size_t n,
                    const struct qft_cuda_adamw_scalars *s);

#ifdef __cplusplus
}
#endif
#endif /* QFT_CUDA_H */
