/* bnb_nf4's `layout` entry: the weight as QFT_QFMT_NF4 (plugins/qft/qft_ops.h), so another
 * backend can hold the packed codes and decode them itself. The format is bitsandbytes'
 * own, which is also this plugin's storage, so every configuration the plugin accepts
 * (any blocksize, with or without double quantization, any length) maps one to one and
 * the buffers are the weight's own, placed or not. The codebook and the nested map live
 * inside the weight struct, which lives as long as the weight. */
#include "nf4.h"

#include "qft_ops.h"

#include <string.h>

int nf4_layout(const struct qft_qweight *qw, struct qft_qlayout *out, qft_err *err) {
    if (!qw || !out) return qft_err_setf(err, "bnb_nf4: layout: no weight or no output given");
    if (!qw->packed || (qw->double_quant ? !qw->qabsmax || !qw->nested_absmax : !qw->absmax))
        return qft_err_setf(err, "bnb_nf4: layout: the (%lld, %lld) weight has no %s",
                            (long long)qw->out, (long long)qw->in,
                            !qw->packed ? "packed codes" : "absmax statistics");
    memset(out, 0, sizeof *out);
    out->format = QFT_QFMT_NF4;
    out->out = qw->out;
    out->in = qw->in;
    out->nf4_blocksize = qw->blocksize;
    out->buf[QFT_QL_NF4_PACKED] = qw->packed;
    out->bytes[QFT_QL_NF4_PACKED] = (size_t)(qw->n + 1) / 2; // two codes a byte
    out->buf[QFT_QL_NF4_CODE] = qw->code;
    out->bytes[QFT_QL_NF4_CODE] = sizeof qw->code; // (16) f32
    if (!qw->double_quant) {
        out->buf[QFT_QL_NF4_ABSMAX] = qw->absmax;
        out->bytes[QFT_QL_NF4_ABSMAX] = (size_t)qw->n_blocks * sizeof(float); // (n_blocks)
        return 0;
    }
    out->nf4_offset = qw->offset;
    out->buf[QFT_QL_NF4_QABSMAX] = qw->qabsmax;
    out->bytes[QFT_QL_NF4_QABSMAX] = (size_t)qw->n_blocks; // (n_blocks) u8
    out->buf[QFT_QL_NF4_NESTED_ABSMAX] = qw->nested_absmax;
    out->bytes[QFT_QL_NF4_NESTED_ABSMAX] = // (ceil(n_blocks / 256)) f32
        (size_t)((qw->n_blocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK) * sizeof(float);
    out->buf[QFT_QL_NF4_NESTED_MAP] = qw->nested_map;
    out->bytes[QFT_QL_NF4_NESTED_MAP] = sizeof qw->nested_map; // (256) f32
    return 0;
}
