/*
 * The CUDA backend: the qft_ops table (plugins/qft/qft_ops.h) for one NVIDIA GPU, plus the
 * entry points the table has no slot for yet (bf16 GEMM, NF4 and HQQ dequantization, the
 * quantized linear, AdamW, dtype conversion) that the training path and the benchmarks
 * call directly.
 *
 * Status: everything here is compiled (nvcc 13, sm_80 and sm_90) and linked, but was
 * written on a machine without a GPU: no kernel has run on a GPU yet. What has run is
 * each kernel's CPU twin (cuda_twin.h, cuda_twin_adapt.h, tests/cuda/test_cuda_twin*.c)
 * against the CPU backend and the plugins it must reproduce (bnb_nf4, hqq);
 * tests/cuda/test_cuda_ops*.c and bench/cuda_bench are waiting for scripts/gpu-check.sh
 * on a GPU. LoRA and DoRA (and QLoRA, QDoRA) have no entry points of their own: the
 * adapter plugins compute only through the op table, whose generic entries here
 * (cols_axpby, col_dot, div, row_norms, dropout: cuda_adapt.cu; dequantize for a packed
 * base: cuda_dequant.cu) run them on the GPU. The quantized linear dequantizes into a
 * bf16 scratch feeding cuBLASLt; the alternative the design names (a GEMM that
 * dequantizes its tiles on chip) is not written, so the comparison between the two is not
 * made. The model does not call the quantized-linear entry points yet: its packed
 * weights reach its GEMMs through the table's dequantize.
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
/* QFT_ABI_VERSION this library was built with: the loader refuses a library whose op table
 * has another layout. */
int qft_cuda_abi_version(void);
/* A one-line description of the device ("NVIDIA H200, sm_90, 132 SMs, 139.8 GiB"). */
const char *qft_cuda_device_name(void);
/* Bytes of device memory in use by the whole process (cudaMemGetInfo), for memory reports. */
size_t qft_cuda_mem_used(void);
/* The most bytes this library held at once through cudaMalloc (the op table's buffers,
 * scratch, cuBLASLt workspace): the run's device peak, like PyTorch's
 * max_memory_allocated it leaves out the CUDA context and cuBLASLt's own allocations. */
size_t qft_cuda_mem_peak(void);
/* The bytes it holds now through cudaMalloc. */
size_t qft_cuda_mem_held(void);
/* The tensor-core mode of the fp32 GEMMs (the op table's gemm), as
 * torch.set_float32_matmul_precision: 0 "highest" (the default), full fp32, the CPU's
 * results to about 1e-6; 1 "high", TF32 (cuBLASLt's CUBLAS_COMPUTE_32F_FAST_TF32: inputs
 * rounded to 10 mantissa bits); 2 "medium", bf16 (CUBLAS_COMPUTE_32F_FAST_16BF: 7 bits).
 * Accumulation stays fp32. Applies to GEMMs planned after the call. */
void qft_cuda_set_matmul_precision(int level);
/* Which attention the op table's attention entries run: 0 (the default) cuBLASLt GEMMs
 * over tiles of query rows with fp32 row kernels between them (cuda_attention_gemm.cu, at
 * the matmul precision above), 1 the flash kernels (fp32 on the CUDA cores, no scratch),
 * 2 flash-style kernels on bf16 tensor cores (cuda_attention_tc.cu; backward needs B H T
 * floats of scratch, else it runs the GEMM path): only at matmul precision 2 (bf16) and
 * head dims a multiple of 16 up to 128, else the GEMM path. None keeps anything of size (T, T); the GEMM path also
 * falls back to the flash kernels when its scratch cannot hold 16 query rows. */
void qft_cuda_set_attention_kernel(int kernel);

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

/* ---- HQQ dequantization -------------------------------------------------------------------
 * The packed state of one weight as the hqq plugin holds it (quant/hqq/hqq.h), in device
 * memory. The flattened weight (n = out * in) is grouped as hqq does (cuda_twin.h, "HQQ"):
 * axis 1, one group per run of group_size consecutive elements; axis 0, one group per
 * column of the (group_size, n / group_size) view. Codes are packed as hqq packs them
 * (8/4/2 bits in bytes, 3 bits ten to a little-endian int32 word). Scale (hqq's stored
 * 1/s) and zero are fp32 per group, or meta-quantized to 8 bits: the zero with one global
 * (scale, zero) pair, the scale in groups of 128 along axis 0 of (128, n_groups / 128). */
typedef struct qft_cuda_hqq {
    const uint8_t *packed;    // (packed_rows, C) bytes, or int32 words for 3 bits (4-aligned)
    const float *scale;       // (n_groups) fp32, or NULL when meta-quantized
    const float *zero;        // (n_groups) fp32, or NULL when meta-quantized
    const uint8_t *zero_q;    // (n_groups) when zero is NULL
    float zero_meta[2];       // host values: the zero codes' scale, then their zero
    const uint8_t *scale_q;   // (n_groups) when scale is NULL
    const float *scale_meta;  // (2, n_groups / 128) when scale is NULL: scale row, zero row
    int nbits;                // 2, 3, 4 or 8
    int group_size;
    int axis;                 // 0 or 1
    int64_t n;                // out * in
} qft_cuda_hqq;
/* Elements [f0, f0 + count) of the flattened weight into dst (count), fp32 or bf16. Values
 * are bit-identical to the plugin's hqq_dequantize_range (then rounded to bf16 when asked).
 * 0, or -1 with err (a geometry hqq cannot hold, a range outside the weight, missing
 * buffers). */
int qft_cuda_hqq_dequantize(const qft_cuda_hqq *w, int64_t f0, int64_t count, void *dst,
                            qft_dtype out_dtype, qft_err *err);

/* ---- a frozen base weight W (out, in) on the device ----------------------------------------
 * Exactly one of nf4, hqq (packed, dequantized tile by tile) or bf16 (dense, row-major). */
typedef struct qft_cuda_weight {
    const qft_cuda_nf4 *nf4;
    const qft_cuda_hqq *hqq;
    const uint16_t *bf16;     // (out, in)
    int out, in;
} qft_cuda_weight;
/* Rows [row0, row0 + n) of W into dst (n, in), fp32 or bf16 (a dense bf16 weight is
 * converted or copied). 0, or -1 with err. */
int qft_cuda_weight_rows(const qft_cuda_weight *w, int64_t row0, int64_t n, void *dst,
                         qft_dtype dt, qft_err *err);

/* ---- the quantized linear --------------------------------------------------------------------
 * Y = X W^T and dX = dY W for a packed W: a tile of W's rows is dequantized into the
 * caller's bf16 scratch (the whole weight when scratch_elems >= out * in, else the most
 * rows that fit, a multiple of 8: qft_twin_qlinear_tile_rows), then one cuBLASLt bf16 GEMM
 * with fp32 accumulation per tile (cuda_twin.h's qft_twin_qlinear_*_tile calls). A dense
 * bf16 W needs no scratch (one GEMM). One scratch serves every linear of the model, as
 * the linears run one at a time; its contents are dead between calls. Leading dimensions
 * and `in` should be multiples of 8 (tensor-core alignment; cuBLASLt falls back otherwise).
 *
 * Y (N, ldy)[:, 0:out] = X (N, ldx)[:, 0:in] W^T + beta Y; Y bf16 or fp32. */
int qft_cuda_qlinear_fwd(const qft_cuda_weight *w, const uint16_t *X, int N, int ldx, void *Y,
                         qft_dtype y_dtype, int ldy, float beta, uint16_t *scratch,
                         int64_t scratch_elems, qft_err *err);
/* dX (N, ldx)[:, 0:in] = dY (N, ldg)[:, 0:out] W + beta dX. The tiles' partial products
 * accumulate in dX, so a bf16 dX needs a scratch holding all of W (one GEMM): tiles would
 * round each partial sum to bf16, and that is refused with err. */
int qft_cuda_qlinear_bwd_input(const qft_cuda_weight *w, const uint16_t *dY, int ldg, int N,
                               void *dX, qft_dtype dx_dtype, int ldx, float beta,
                               uint16_t *scratch, int64_t scratch_elems, qft_err *err);

/* The same two products with W's tile decoded on chip (cuda_qgemm_onchip.cu): NF4 or HQQ
 * codes straight into shared memory as bf16, tensor-core fragments, fp32 outputs with
 * beta; no scratch. X / dY bf16. 0, or -1 with err. */
int qft_cuda_qgemm_onchip_fwd(const qft_cuda_weight *w, const uint16_t *X, int N, int ldx,
                              float *Y, int ldy, float beta, qft_err *err);
int qft_cuda_qgemm_onchip_bwd(const qft_cuda_weight *w, const uint16_t *dY, int ldg, int N,
                              float *dX, int ldx, float beta, qft_err *err);
/* Which of the two the op table's qmatmul runs for NF4 and HQQ weights under bf16 matmul
 * precision: 0 (the default) the bf16 scratch and cuBLASLt, 1 the on-chip kernels
 * (also QFT_CUDA_QMATMUL=onchip at start-up). bench/cuda_bench measures both. */
void qft_cuda_set_qmatmul_kernel(int onchip);
/* 1: the op table's lowrank_row_norms (DoRA's norms) goes the generic way, fp32 tiles of W,
 * a GEMM adding s B A and row_norms, instead of its one-pass kernel (also
 * QFT_CUDA_LOWRANK=tiles at start-up; the GPU check's fallback should the kernel fail). */
void qft_cuda_set_lowrank_tiles(int tiles);
/* 1: the op table's lowrank_out runs as the GEMM, a copy and a scale it replaces instead of
 * its fused kernel (also QFT_CUDA_LOWRANK_OUT=gemm at start-up; the GPU check's fallback
 * should the kernel fail). */
void qft_cuda_set_lowrank_out_unfused(int unfused);

/* ---- AdamW over one flat fp32 buffer -------------------------------------------------------
 * The update of core/train/optim.c (torch's single-tensor AdamW) element for element; the
 * scalars come from qft_cuda_adamw_scalars_make (cuda_twin.h), on the host, from the
 * doubles torch would hold (qft_optim_float_decimal of each hyper-parameter). */
struct qft_cuda_adamw_scalars;
/* p, m, v (n) updated in place from g (n). */
void qft_cuda_adamw(float *p, const float *g, float *m, float *v, size_t n,
                    const struct qft_cuda_adamw_scalars *s);
/* The op table's optimizer entries (qft_ops.h): SGD, the deterministic sum of squares
 * (fixed chunks summed in order, the CPU's bits) and the in-place scale of clipping. */
struct qft_ops_sgd_scalars;
void qft_cuda_sgd(float *p, const float *g, float *buf, size_t n,
                  const struct qft_ops_sgd_scalars *s);
double qft_cuda_sumsq(const float *x, size_t n);
void qft_cuda_scale(float *x, size_t n, float coef);

/* ---- the pieces adapters compose (qft_ops.h, ABI 4; cuda_adapt.cu) -------------------------
 * The op table's entries of the same names, arguments as documented there, on device
 * pointers. Deterministic (no atomics): cols_axpby, div and dropout give the CPU
 * backend's bits (each product and sum rounded as its loops do, no FMA contraction);
 * col_dot sums each column in double over QFT_COLDOT_SLICES row slices merged in order,
 * and row_norms each row's squares over a fixed tree of QFT_NORM_LANES lanes (both agree
 * with the CPU's sums to rounding, not bits). */
void qft_cuda_cols_axpby(float *dst, int64_t ldd, float beta, const float *src, int64_t lds,
                         const float *f, float fadd, int64_t N, int64_t n); // dst, src (N, n)
void qft_cuda_col_dot(float *acc, const float *a, int64_t lda, const float *b, int64_t ldb,
                      const float *div, int64_t N, int64_t n); // acc, div (n); a, b (N, n)
void qft_cuda_div(float *out, const float *a, const float *b, size_t n); // (n) each
void qft_cuda_row_norms(float *norm, const float *x, int64_t ld, int64_t n,
                        int64_t len); // norm (n); x (n, len), row stride ld
/* dst (N, d) = src (N, d) * mask / (1 - p), or += that with accumulate; the mask is
 * qft_ops_dropout_keep's for (key, p), element index r * d + c. */
void qft_cuda_dropout(uint64_t key, double p, const float *src, int64_t N, int64_t d, float *dst,
                      int accumulate);
/* ABI 7, DoRA's fused steps (qft_ops.h): lowrank_out's rank-k sums in k order in float
 * (cuda_twin_adapt.h's qft_twin_lowrank_dot, not the CPU's GEMM order, so they agree with
 * the CPU backend to float rounding); col_dot_scale's sums are col_dot's and its g the CPU's
 * bits. */
void qft_cuda_lowrank_out(float *y, int64_t ldy, const float *u, const float *B, int64_t k,
                          float scale, const float *f, float *h, int64_t N, int64_t out);
void qft_cuda_col_dot_scale(float *acc, float *g, int64_t ldg, const float *a, int64_t lda,
                            const float *b, int64_t ldb, const float *div, const float *f,
                            int64_t N, int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* QFT_CUDA_H */
