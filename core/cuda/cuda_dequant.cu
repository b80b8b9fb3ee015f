// The op table's `dequantize` and `has_qformat` (qft_ops.h): a packed weight described by a
// qft_qlayout whose buffers the core has copied to the device is mapped onto the NF4 and
// HQQ dequantization kernels (cuda_nf4.cu, cuda_hqq.cu), rows [row0, row0 + n) into an
// fp32 buffer. The kernels' element arithmetic is cuda_twin.h's, which the CPU backend's
// cpu_dequant.c runs too, so both backends give the plugin's dequantize_rows bits.
#include "cuda_internal.h"

#include <stdio.h>

extern "C" int qft_cuda_has_qformat(int format) {
    return format == QFT_QFMT_NF4 || format == QFT_QFMT_HQQ || format == QFT_QFMT_BF16;
}

// The entry returns void: a layout the kernels cannot take, or a failed launch, becomes the
// backend's recorded error (qft_cuda_sync reports it), and dst is left as it was.
static void bad_layout(const char *msg) { qft_cuda_fail("dequantize", __FILE__, __LINE__, msg); }

extern "C" void qft_cuda_dequantize(const qft_qlayout *w, int64_t row0, int64_t n, float *dst) {
    char msg[512];
    if (!w || !dst) return bad_layout(!w ? "no layout given" : "no output buffer given");
    if (w->out <= 0 || w->in <= 0 || row0 < 0 || n < 0 || row0 + n > w->out) {
        snprintf(msg, sizeof msg, "rows [%lld, %lld) outside a (%lld, %lld) weight",
                 (long long)row0, (long long)(row0 + n), (long long)w->out, (long long)w->in);
        return bad_layout(msg);
    }
    if (!n) return;
    const int64_t f0 = row0 * w->in, count = n * w->in; // flattened elements (n, in)
    qft_err err = {};
    int rc;
    if (w->format == QFT_QFMT_NF4) {
        qft_cuda_nf4 q = {};
        q.packed = (const uint8_t *)w->buf[QFT_QL_NF4_PACKED];        // ((n + 1) / 2)
        q.code = (const float *)w->buf[QFT_QL_NF4_CODE];              // (16)
        q.absmax = (const float *)w->buf[QFT_QL_NF4_ABSMAX];          // (n_blocks) or NULL
        q.qabsmax = (const uint8_t *)w->buf[QFT_QL_NF4_QABSMAX];      // (n_blocks)
        q.nested_absmax = (const float *)w->buf[QFT_QL_NF4_NESTED_ABSMAX]; // (ceil(n_blocks/256))
        q.nested_map = (const float *)w->buf[QFT_QL_NF4_NESTED_MAP];  // (256)
        q.offset = w->nf4_offset;
        q.blocksize = w->nf4_blocksize;
        q.n = w->out * w->in;
        if (!q.packed || !q.code) return bad_layout("NF4 layout without packed codes or codebook");
        rc = qft_cuda_nf4_dequantize(&q, f0, count, dst, QFT_DT_F32, &err);
    } else if (w->format == QFT_QFMT_HQQ) {
        qft_cuda_hqq q = {};
        q.packed = (const uint8_t *)w->buf[QFT_QL_HQQ_PACKED];        // (packed_rows, C)
        q.scale = (const float *)w->buf[QFT_QL_HQQ_SCALE];            // (n_groups) or NULL
        q.zero = (const float *)w->buf[QFT_QL_HQQ_ZERO];              // (n_groups) or NULL
        q.zero_q = (const uint8_t *)w->buf[QFT_QL_HQQ_ZERO_Q];        // (n_groups)
        q.zero_meta[0] = w->hqq_zero_meta[0];
        q.zero_meta[1] = w->hqq_zero_meta[1];
        q.scale_q = (const uint8_t *)w->buf[QFT_QL_HQQ_SCALE_Q];      // (n_groups)
        q.scale_meta = (const float *)w->buf[QFT_QL_HQQ_SCALE_META];  // (2, n_groups / 128)
        q.nbits = w->hqq_nbits;
        q.group_size = w->hqq_group_size;
        q.axis = w->hqq_axis;
        q.n = w->out * w->in;
        rc = qft_cuda_hqq_dequantize(&q, f0, count, dst, QFT_DT_F32, &err);
    } else if (w->format == QFT_QFMT_BF16) {
        const uint16_t *v = (const uint16_t *)w->buf[QFT_QL_BF16_VALUES]; // (out, in)
        if (!v) return bad_layout("bf16 layout without values");
        qft_cuda_bf16_to_f32(dst, v + f0, (size_t)count); // records a failed launch itself
        rc = 0;
    } else {
        snprintf(msg, sizeof msg, "packed format %d is not one this backend decodes", w->format);
        return bad_layout(msg);
    }
    // a launch failure is recorded already; an argument the kernel refused is not
    if (rc) bad_layout(err.msg);
}
