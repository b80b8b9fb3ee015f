/* hqq's `place`: for full sharding, the weight's data buffers move into one block that
 * the core hands out (one pl->alloc call), so that the core can cut it into per-rank
 * pieces and gather it back byte for byte. The block holds exactly the data bytes, with no
 * padding, fp32 arrays first so they stay 4-byte aligned on the 64-byte-aligned block
 * (each present only in its configuration; G = n_groups, mc = G / 128):
 *   scale (G) | zero (G) | scale_meta (2, mc) | packed (packed_bytes) | zero_q (G) | scale_q (G)
 * Everything else dequantize_rows, bytes and save read (shape and grouping, zero_meta,
 * and the scalar metadata tensors save hands to a sink) stays in the struct and is set at
 * quantize/load time from the options, never from the buffers, so the core may zero the
 * block and refill it with the same bytes whenever it likes. A second place is refused:
 * the first block belongs to the core, and a weight keeps no way to give it back. */
#include "hqq.h"

#include <string.h>

/* Keeps the placer's reason and says which weight needed how much. */
static int place_failed(const struct qft_qweight *qw, size_t bytes, qft_err *err) {
    char why[sizeof err->msg] = "the placer returned no memory";
    if (err && err->code && err->msg[0]) {
        memcpy(why, err->msg, sizeof why);
        why[sizeof why - 1] = 0;
    }
    return qft_err_setf(err, "hqq: placing the %zu data bytes of a (%lld, %lld) %d-bit weight: %s",
                        bytes, (long long)qw->out, (long long)qw->in, qw->nbits, why);
}

/* Moves `bytes` from *old into the block at *at, advancing *at; NULL when absent. */
static void *move(const qft_services *svc, void *old, size_t bytes, uint8_t **at) {
    if (!old) return NULL;
    void *p = *at;
    memcpy(p, old, bytes);
    hqq_free(svc, old);
    *at += bytes;
    return p;
}

int hqq_place(struct qft_qweight *qw, const qft_placer *pl, qft_err *err) {
    if (!qw || !pl || !pl->alloc)
        return qft_err_setf(err, "hqq: place needs a weight and a placer with alloc");
    if (qw->placed)
        return qft_err_setf(err, "hqq: the (%lld, %lld) weight is already placed in core memory; "
                            "place moves a weight once", (long long)qw->out, (long long)qw->in);
    const size_t G = (size_t)qw->n_groups;                            // (n_groups)
    const size_t mc = G / HQQ_META_GROUP;                             // scale groups of 128
    const size_t b_scale = qw->scale ? G * sizeof(float) : 0;         // (G) fp32
    const size_t b_zero = qw->zero ? G * sizeof(float) : 0;           // (G) fp32
    const size_t b_smeta = qw->scale_meta ? 2 * mc * sizeof(float) : 0; // (2, mc) fp32
    const size_t b_packed = qw->packed ? qw->packed_bytes : 0;
    const size_t b_zq = qw->zero_q ? G : 0;                           // (G) u8
    const size_t b_sq = qw->scale_q ? G : 0;                          // (128, mc) u8
    const size_t total = b_scale + b_zero + b_smeta + b_packed + b_zq + b_sq;
    uint8_t *block = pl->alloc(pl->ctx, total, err);
    if (!block) return place_failed(qw, total, err);

    const qft_services *svc = qw->svc;
    uint8_t *at = block;
    qw->scale = move(svc, qw->scale, b_scale, &at);
    qw->zero = move(svc, qw->zero, b_zero, &at);
    qw->scale_meta = move(svc, qw->scale_meta, b_smeta, &at);
    qw->packed = move(svc, qw->packed, b_packed, &at);
    qw->zero_q = move(svc, qw->zero_q, b_zq, &at);
    qw->scale_q = move(svc, qw->scale_q, b_sq, &at);
    qw->placed = 1;
    return 0;
}
