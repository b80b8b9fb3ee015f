/* shard_grad_op (FSDP's SHARD_GRAD_OP): parameters replicated, gradients reduce-scattered
 * and optimizer state sharded, so each rank keeps AdamW's moments for about n / W floats
 * instead of n.
 *
 * Layout: with b = floor(n / W), rank r owns [r*b, (r+1)*b) and the last rank also the
 * tail [W*b, n) of fewer than W floats. That keeps every block the transport moves the
 * same size, so the reduce-scatter and the all-gather run in place on the run's own
 * buffers with no scratch copy; the tail travels by a small all-reduce and broadcast. */
#include "qft_sdk.h"
#include "qft_transport.h"

#include <stdlib.h>

typedef struct sgo_state {
    size_t n;     /* trainable floats, from plan */
    size_t block; /* floor(n / world): the equal block of every rank */
    size_t tail;  /* n - world * block (< world), owned by the last rank */
} sgo_state;

static int sgo_configure(const qft_services *svc, const config_setting_t *section, void **out,
                         qft_err *err) {
    (void)svc, (void)section;
    sgo_state *s = calloc(1, sizeof *s);
    if (!s) return qft_err_setf(err, "shard_grad_op: out of memory");
    *out = s;
    return 0;
}

static int sgo_plan(void *state, const struct qft_transport *t, size_t n, size_t *offset,
                    size_t *len, qft_err *err) {
    (void)err;
    sgo_state *s = state;
    const size_t W = (size_t)t->world, r = (size_t)t->rank;
    s->n = n;
    s->block = n / W;
    s->tail = n - W * s->block;
    *offset = r * s->block;                          // start of (block) slice r
    *len = s->block + (r == W - 1 ? s->tail : 0);    // (block) or (block + tail)
    return 0;
}

static int check_n(const sgo_state *s, size_t n, const char *op, qft_err *err) {
    if (n != s->n)
        return qft_err_setf(err, "shard_grad_op: %s got %zu floats but plan was for %zu", op, n,
                            s->n);
    return 0;
}

static int sgo_reduce_grads(void *state, const struct qft_transport *t, float *grads, size_t n,
                            qft_err *err) {
    const sgo_state *s = state;
    if (check_n(s, n, "reduce_grads", err)) return -1;
    if (t->world == 1) return 0;
    const size_t W = (size_t)t->world, r = (size_t)t->rank;
    // grads (W, block) + (tail): block r summed in place
    if (qft_transport_reduce_scatter_f32(t, grads, grads + r * s->block, s->block, err))
        return -1;
    if (s->tail == 0) return 0;
    // (tail): every rank takes part; only the last rank's optimizer reads it
    return qft_transport_all_reduce_f32(t, grads + W * s->block, s->tail, QFT_REDUCE_SUM, err);
}

static int sgo_gather_params(void *state, const struct qft_transport *t, float *params, size_t n,
                             qft_err *err) {
    const sgo_state *s = state;
    if (check_n(s, n, "gather_params", err)) return -1;
    if (t->world == 1) return 0;
    const size_t W = (size_t)t->world, r = (size_t)t->rank;
    // params (W, block): rank r's block sent from its place in the buffer
    if (qft_transport_all_gather(t, params + r * s->block, params, s->block * sizeof(float),
                                 err))
        return -1;
    if (s->tail == 0) return 0;
    // (tail) from its owner, the last rank
    return qft_transport_broadcast(t, params + W * s->block, s->tail * sizeof(float),
                                   t->world - 1, err);
}

static void sgo_close(void *state) { free(state); }

static const qft_shard_vtable k_vtable = {
    .config_keys = NULL,
    .configure = sgo_configure,
    .plan = sgo_plan,
    .reduce_grads = sgo_reduce_grads,
    .gather_params = sgo_gather_params,
    .close = sgo_close,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_SHARD,
    .name = "shard_grad_op",
    .version = "1.0.0",
    .description = "FSDP SHARD_GRAD_OP: gradients reduce-scattered, optimizer state sharded, "
                   "parameters replicated",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
