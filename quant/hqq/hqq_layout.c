/* hqq's `layout` entry: the weight as QFT_QFMT_HQQ (plugins/qft/qft_ops.h), so another
 * backend can hold the packed codes and decode them itself. The format is hqq's packing,
 * which is this plugin's storage: every configuration the plugin accepts (2/3/4/8 bits,
 * either axis, zero and scale in fp32 or meta-quantized) maps one to one, and the buffers
 * are the weight's own, placed or not. */
#include "hqq.h"

#include "qft_ops.h"

#include <string.h>

int hqq_layout(const struct qft_qweight *qw, struct qft_qlayout *out, qft_err *err) {
    if (!qw || !out) return qft_err_setf(err, "hqq: layout: no weight or no output given");
    const int zero_ok = qw->quant_zero ? qw->zero_q != NULL : qw->zero != NULL;
    const int scale_ok = qw->quant_scale ? qw->scale_q && qw->scale_meta : qw->scale != NULL;
    if (!qw->packed || !zero_ok || !scale_ok)
        return qft_err_setf(err, "hqq: layout: the (%lld, %lld) weight has no %s",
                            (long long)qw->out, (long long)qw->in,
                            !qw->packed ? "packed codes" : !zero_ok ? "zero points" : "scales");
    memset(out, 0, sizeof *out);
    const size_t G = (size_t)qw->n_groups;
    out->format = QFT_QFMT_HQQ;
    out->out = qw->out;
    out->in = qw->in;
    out->hqq_nbits = qw->nbits;
    out->hqq_group_size = qw->group_size;
    out->hqq_axis = qw->axis;
    out->buf[QFT_QL_HQQ_PACKED] = qw->packed;
    out->bytes[QFT_QL_HQQ_PACKED] = qw->packed_bytes; // (packed_rows, C) bytes or int32 words
    if (qw->quant_zero) {
        out->buf[QFT_QL_HQQ_ZERO_Q] = qw->zero_q;
        out->bytes[QFT_QL_HQQ_ZERO_Q] = G; // (n_groups) u8
        out->hqq_zero_meta[0] = qw->zero_meta[0];
        out->hqq_zero_meta[1] = qw->zero_meta[1];
    } else {
        out->buf[QFT_QL_HQQ_ZERO] = qw->zero;
        out->bytes[QFT_QL_HQQ_ZERO] = G * sizeof(float); // (n_groups) f32
    }
    if (qw->quant_scale) {
        out->buf[QFT_QL_HQQ_SCALE_Q] = qw->scale_q;
        out->bytes[QFT_QL_HQQ_SCALE_Q] = G; // (128, n_groups / 128) u8
        out->buf[QFT_QL_HQQ_SCALE_META] = qw->scale_meta;
        out->bytes[QFT_QL_HQQ_SCALE_META] = // (2, n_groups / 128) f32
            2 * (G / HQQ_META_GROUP) * sizeof(float);
    } else {
        out->buf[QFT_QL_HQQ_SCALE] = qw->scale;
        out->bytes[QFT_QL_HQQ_SCALE] = G * sizeof(float); // (n_groups) f32
    }
    return 0;
}
