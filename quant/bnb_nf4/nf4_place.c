/* bnb_nf4's `place`: for full sharding, the weight's data buffers move into one block
 * that the core hands out (one pl->alloc call), so that the core can cut it into per-rank
 * pieces and gather it back byte for byte. The block holds exactly the data bytes, with no
 * padding, fp32 arrays first so they stay 4-byte aligned on the 64-byte-aligned block:
 *   no double quant:  absmax fp32 (n_blocks) | packed ((n + 1) / 2)
 *   double quant:     nested_absmax fp32 (ceil(n_blocks / 256)) | packed | qabsmax (n_blocks)
 * Everything else dequantize_rows, bytes and save read (codebook, dynamic map, offset,
 * shape, and the quant_state JSON, which is built from those header fields, never from
 * the buffers) stays in the struct, so the core may zero the block and refill it with the
 * same bytes whenever it likes. A second place is refused: the first block belongs to the
 * core, and a weight keeps no way to give it back. */
#include "nf4.h"

#include <string.h>

/* Keeps the placer's reason and says which weight needed how much. */
static int place_failed(const struct qft_qweight *qw, size_t bytes, qft_err *err) {
    char why[sizeof err->msg] = "the placer returned no memory";
    if (err && err->code && err->msg[0]) {
        memcpy(why, err->msg, sizeof why);
        why[sizeof why - 1] = 0;
    }
    return qft_err_setf(err, "bnb_nf4: placing the %zu data bytes of a (%lld, %lld) weight: %s",
                        bytes, (long long)qw->out, (long long)qw->in, why);
}

int nf4_place(struct qft_qweight *qw, const qft_placer *pl, qft_err *err) {
    if (!qw || !pl || !pl->alloc)
        return qft_err_setf(err, "bnb_nf4: place needs a weight and a placer with alloc");
    if (qw->placed)
        return qft_err_setf(err, "bnb_nf4: the (%lld, %lld) weight is already placed in core "
                            "memory; place moves a weight once", (long long)qw->out,
                            (long long)qw->in);
    const size_t n_packed = (size_t)(qw->n + 1) / 2;                          // ((n+1)/2)
    const size_t nb = (size_t)qw->n_blocks;                                   // (n_blocks)
    const size_t nn = (nb + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;         // ceil(nb/256)
    const size_t n_floats = qw->double_quant ? nn : nb; // nested_absmax or absmax
    const size_t total = n_floats * sizeof(float) + n_packed + (qw->double_quant ? nb : 0);
    uint8_t *block = pl->alloc(pl->ctx, total, err);
    if (!block) return place_failed(qw, total, err);

    float *stats = (float *)block;                         // (n_floats)
    uint8_t *packed = block + n_floats * sizeof(float);    // (n_packed)
    uint8_t *qabsmax = packed + n_packed;                  // (nb) when double_quant
    memcpy(stats, qw->double_quant ? qw->nested_absmax : qw->absmax, n_floats * sizeof(float));
    memcpy(packed, qw->packed, n_packed);
    if (qw->double_quant) memcpy(qabsmax, qw->qabsmax, nb);

    const qft_services *svc = qw->svc;
    nf4_free(svc, qw->packed);
    nf4_free(svc, qw->absmax);
    nf4_free(svc, qw->qabsmax);
    nf4_free(svc, qw->nested_absmax);
    qw->packed = packed;
    qw->absmax = qw->double_quant ? NULL : stats;
    qw->nested_absmax = qw->double_quant ? stats : NULL;
    qw->qabsmax = qw->double_quant ? qabsmax : NULL;
    qw->placed = 1;
    return 0;
}
