// The op table's `dequantize` and `has_qformat` (qft_ops.h): a packed weight described by a
// qft_qlayout whose buffers the core has copied to the device is mapped onto the NF4 and
// HQQ dequantization kernels (cuda_nf4.cu, cuda_hqq.cu), rows [row0, row0 + n) into an
// fp32 buffer. The kernels' element arithmetic is cuda_twin.h's, which the CPU backend's
// cpu_dequant.c runs too, so both backends give the plugin's dequantize_rows bits.
#include "cuda_internal.h"

#include <cuda_bf16.h>
#include <stdio.h>
#include <string.h>

extern "C" int qft_cuda_has_qformat(int format) {
    return format == QFT_QFMT_NF4 || format == QFT_QFMT_HQQ || format == QFT_QFMT_BF16;
}

// The entry returns void: a layout the kernels cannot take, or a failed launch, becomes the
// backend's recorded error (qft_cuda_sync reports it), and dst is left as it was.
static void bad_layout(const char *msg) { qft_cuda_fail("dequantize", __FILE__, __LINE__, msg); }

int qft_cuda_weight_of(const qft_qlayout *w, qft_cuda_nf4 *nf4, qft_cuda_hqq *hqq,
                       qft_cuda_weight *cw, char *msg, size_t msg_size) {
    memset(cw, 0, sizeof *cw);
    cw->out = (int)w->out, cw->in = (int)w->in;
    if (w->format == QFT_QFMT_NF4) {
        memset(nf4, 0, sizeof *nf4);
        nf4->packed = (const uint8_t *)w->buf[QFT_QL_NF4_PACKED];        // ((n + 1) / 2)
        nf4->code = (const float *)w->buf[QFT_QL_NF4_CODE];              // (16)
        nf4->absmax = (const float *)w->buf[QFT_QL_NF4_ABSMAX];          // (n_blocks) or NULL
        nf4->qabsmax = (const uint8_t *)w->buf[QFT_QL_NF4_QABSMAX];      // (n_blocks)
        nf4->nested_absmax = (const float *)w->buf[QFT_QL_NF4_NESTED_ABSMAX]; // (ceil(n_blocks/256))
        nf4->nested_map = (const float *)w->buf[QFT_QL_NF4_NESTED_MAP];  // (256)
        nf4->offset = w->nf4_offset;
        nf4->blocksize = w->nf4_blocksize;
        nf4->n = w->out * w->in;
        if (!nf4->packed || !nf4->code) {
            snprintf(msg, msg_size, "NF4 layout without packed codes or codebook");
            return -1;
        }
        cw->nf4 = nf4;
    } else if (w->format == QFT_QFMT_HQQ) {
        memset(hqq, 0, sizeof *hqq);
        hqq->packed = (const uint8_t *)w->buf[QFT_QL_HQQ_PACKED];        // (packed_rows, C)
        hqq->scale = (const float *)w->buf[QFT_QL_HQQ_SCALE];            // (n_groups) or NULL
        hqq->zero = (const float *)w->buf[QFT_QL_HQQ_ZERO];              // (n_groups) or NULL
        hqq->zero_q = (const uint8_t *)w->buf[QFT_QL_HQQ_ZERO_Q];        // (n_groups)
        hqq->zero_meta[0] = w->hqq_zero_meta[0];
        hqq->zero_meta[1] = w->hqq_zero_meta[1];
        hqq->scale_q = (const uint8_t *)w->buf[QFT_QL_HQQ_SCALE_Q];      // (n_groups)
        hqq->scale_meta = (const float *)w->buf[QFT_QL_HQQ_SCALE_META];  // (2, n_groups / 128)
        hqq->nbits = w->hqq_nbits;
        hqq->group_size = w->hqq_group_size;
        hqq->axis = w->hqq_axis;
        hqq->n = w->out * w->in;
        cw->hqq = hqq;
    } else if (w->format == QFT_QFMT_BF16) {
        cw->bf16 = (const uint16_t *)w->buf[QFT_QL_BF16_VALUES]; // (out, in)
        if (!cw->bf16) {
            snprintf(msg, msg_size, "bf16 layout without values");
            return -1;
        }
    } else {
        snprintf(msg, msg_size, "packed format %d is not one this backend decodes", w->format);
        return -1;
    }
    return 0;
}

extern "C" void qft_cuda_dequantize(const qft_qlayout *w, int64_t row0, int64_t n, float *dst) {
    char msg[512];
    if (!w || !dst) return bad_layout(!w ? "no layout given" : "no output buffer given");
    if (w->out <= 0 || w->in <= 0 || row0 < 0 || n < 0 || row0 + n > w->out) {
        snprintf(msg, sizeof msg, "rows [%lld, %lld) outside a (%lld, %lld) weight",
                 (long long)row0, (long long)(row0 + n), (long long)w->out, (long long)w->in);
        return bad_layout(msg);
    }
    if (!n) return;
    qft_cuda_nf4 nf4;
    qft_cuda_hqq hqq;
    qft_cuda_weight cw;
    if (qft_cuda_weight_of(w, &nf4, &hqq, &cw, msg, sizeof msg)) return bad_layout(msg);
    qft_err err = {};
    // a launch failure is recorded already; an argument the kernel refused is not
    if (qft_cuda_weight_rows(&cw, row0, n, dst, QFT_DT_F32, &err)) bad_layout(err.msg);
}

namespace {
// dst (N, K) bf16 = src (N, lds)[:, 0:K] rounded to bf16
__global__ void rows_to_bf16_kernel(uint16_t *dst, const float *src, int64_t lds, int64_t N,
                                    int64_t K) {
    const size_t total = (size_t)N * K;
    QFT_CUDA_GRID_STRIDE(e, total) {
        const __nv_bfloat16 v = __float2bfloat16(src[(e / K) * lds + e % K]);
        dst[e] = *(const uint16_t *)&v;
    }
}

int use_onchip; // qft_cuda_set_qmatmul_kernel
} // namespace

extern "C" void qft_cuda_set_qmatmul_kernel(int onchip) { use_onchip = onchip != 0; }

extern "C" void qft_cuda_qmatmul(const qft_qlayout *w, int backward, const float *a, int64_t lda,
                                 int64_t N, float *c, int64_t ldc, float beta, float *scratch,
                                 size_t scratch_floats) {
    char msg[512];
    if (!w || w->out <= 0 || w->in <= 0) return bad_layout("qmatmul: no weight");
    if (N <= 0) return;
    const int64_t in = w->in, out = w->out, K = backward ? out : in;
    if (qft_cuda_g.matmul_precision != 2) {
        // fp32 (or TF32) GEMMs on fp32 tiles: the CPU backend's schedule
        // the op's contract: the scratch holds a row at least
        if (scratch_floats < (size_t)in) return bad_layout("qmatmul: the scratch is shorter than a row");
        int64_t tr = (int64_t)(scratch_floats / (size_t)in);
        tr = tr < out ? tr : out;
        for (int64_t r0 = 0; r0 < out; r0 += tr) {
            const int64_t n = out - r0 < tr ? out - r0 : tr;
            qft_cuda_dequantize(w, r0, n, scratch); // (n, in)
            if (!backward)
                qft_cuda_gemm(0, 1, (int)N, (int)n, (int)in, 1.0f, a, (int)lda, scratch, (int)in,
                              beta, c + r0, (int)ldc);
            else
                qft_cuda_gemm(0, 0, (int)N, (int)in, (int)n, 1.0f, a + r0, (int)lda, scratch,
                              (int)in, r0 ? 1.0f : beta, c, (int)ldc);
        }
        return;
    }
    // bf16 matmul precision: a's bf16 copy in the backend's scratch, W's rows dequantized to
    // bf16 in the caller's (twice the rows of an fp32 tile), bf16 GEMMs with fp32 accumulation
    qft_cuda_nf4 nf4;
    qft_cuda_hqq hqq;
    qft_cuda_weight cw;
    if (qft_cuda_weight_of(w, &nf4, &hqq, &cw, msg, sizeof msg)) return bad_layout(msg);
    uint16_t *ab = (uint16_t *)qft_cuda_scratch((size_t)N * K * sizeof(uint16_t)); // (N, K)
    if (!ab) return; // recorded
    rows_to_bf16_kernel<<<qft_cuda_grid_for((size_t)N * K), QFT_CUDA_TPB>>>(ab, a, lda, N, K);
    if (CUDA_LAUNCHED()) return;
    qft_err err = {};
    if (use_onchip && !cw.bf16) { /* W decoded on chip: no scratch */
        const int rc = backward ? qft_cuda_qgemm_onchip_bwd(&cw, ab, (int)out, (int)N, c,
                                                            (int)ldc, beta, &err)
                                : qft_cuda_qgemm_onchip_fwd(&cw, ab, (int)N, (int)in, c,
                                                            (int)ldc, beta, &err);
        if (rc) bad_layout(err.msg);
        return;
    }
    const int rc = backward ? qft_cuda_qlinear_bwd_input(&cw, ab, (int)out, (int)N, c, QFT_DT_F32,
                                                         (int)ldc, beta, (uint16_t *)scratch,
                                                         (int64_t)scratch_floats * 2, &err)
                            : qft_cuda_qlinear_fwd(&cw, ab, (int)N, (int)in, c, QFT_DT_F32,
                                                   (int)ldc, beta, (uint16_t *)scratch,
                                                   (int64_t)scratch_floats * 2, &err);
    if (rc) bad_layout(err.msg);
}
