/* hybrid_shard_grad_op (FSDP's _HYBRID_SHARD_ZERO2): shard_grad_op within each machine,
 * DDP across machines. The ranks of one machine split the optimizer state among
 * themselves over the fast shared-memory link; only each slice's all-reduce with the
 * ranks holding the same slice on the other machines crosses the network, which moves
 * 2 (M-1)/M * n/S floats per rank instead of 2 (W-1)/W * n (M machines of S ranks).
 *
 * Layout within a machine of S ranks, as in shard_grad_op: with b = floor(n / S), local
 * rank l owns [l*b, (l+1)*b) and the last local rank also the tail [S*b, n). Every machine
 * must hold the same number of ranks, so that the ranks sharing a slice line up across
 * machines; plan fails on every rank, saying so, when they do not. */
#include "qft_sdk.h"
#include "qft_transport.h"

#include <stdlib.h>

typedef struct hsgo_state {
    size_t n;                    /* trainable floats, from plan */
    size_t block, tail;          /* floor(n / S) and n - S * block, S = ranks per machine */
    size_t offset, len;          /* this rank's slice */
    struct qft_transport *intra; /* this machine's ranks */
    struct qft_transport *inter; /* the ranks with this local index on every machine */
} hsgo_state;

static int hsgo_configure(const qft_services *svc, const config_setting_t *section, void **out,
                          qft_err *err) {
    (void)svc, (void)section;
    hsgo_state *s = calloc(1, sizeof *s);
    if (!s) return qft_err_setf(err, "hybrid_shard_grad_op: out of memory");
    *out = s;
    return 0;
}

static int hsgo_plan(void *state, const struct qft_transport *t, size_t n, size_t *offset,
                     size_t *len, qft_err *err) {
    hsgo_state *s = state;
    if (qft_transport_split_machines(t, "hybrid_shard_grad_op", &s->intra, &s->inter, err))
        return -1;
    const size_t S = (size_t)s->intra->world, l = (size_t)s->intra->rank;
    s->n = n;
    s->block = n / S;
    s->tail = n - S * s->block;
    s->offset = l * s->block;                          // start of (block) slice l
    s->len = s->block + (l == S - 1 ? s->tail : 0);    // (block) or (block + tail)
    *offset = s->offset, *len = s->len;
    return 0;
}

static int check_n(const hsgo_state *s, size_t n, const char *op, qft_err *err) {
    if (!s->intra)
        return qft_err_setf(err, "hybrid_shard_grad_op: %s before plan", op);
    if (n != s->n)
        return qft_err_setf(err, "hybrid_shard_grad_op: %s got %zu floats but plan was for %zu",
                            op, n, s->n);
    return 0;
}

static int hsgo_reduce_grads(void *state, const struct qft_transport *t, float *grads, size_t n,
                             qft_err *err) {
    (void)t;
    const hsgo_state *s = state;
    if (check_n(s, n, "reduce_grads", err)) return -1;
    const struct qft_transport *in = s->intra;
    const size_t S = (size_t)in->world, l = (size_t)in->rank;
    if (S > 1) {
        // grads (S, block) + (tail): block l summed over the machine, in place
        if (qft_transport_reduce_scatter_f32(in, grads, grads + l * s->block, s->block, err))
            return -1;
        if (s->tail &&
            qft_transport_all_reduce_f32(in, grads + S * s->block, s->tail, QFT_REDUCE_SUM, err))
            return -1;
    }
    if (s->inter->world == 1) return 0;
    // (len): this slice summed over the machines
    return qft_transport_all_reduce_f32(s->inter, grads + s->offset, s->len, QFT_REDUCE_SUM, err);
}

static int hsgo_gather_params(void *state, const struct qft_transport *t, float *params, size_t n,
                              qft_err *err) {
    (void)t;
    const hsgo_state *s = state;
    if (check_n(s, n, "gather_params", err)) return -1;
    const struct qft_transport *in = s->intra;
    const size_t S = (size_t)in->world, l = (size_t)in->rank;
    if (S == 1) return 0;
    // params (S, block): every machine gathers its own slices; they are alike across
    // machines, since each was updated from the same sum
    if (qft_transport_all_gather(in, params + l * s->block, params, s->block * sizeof(float),
                                 err))
        return -1;
    if (s->tail == 0) return 0;
    return qft_transport_broadcast(in, params + S * s->block, s->tail * sizeof(float),
                                   in->world - 1, err);
}

static void hsgo_close(void *state) {
    hsgo_state *s = state;
    if (s->inter) s->inter->vt->close(s->inter);
    if (s->intra) s->intra->vt->close(s->intra);
    free(s);
}

static const qft_shard_vtable k_vtable = {
    .config_keys = NULL,
    .configure = hsgo_configure,
    .plan = hsgo_plan,
    .reduce_grads = hsgo_reduce_grads,
    .gather_params = hsgo_gather_params,
    .close = hsgo_close,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_SHARD,
    .name = "hybrid_shard_grad_op",
    .version = "1.0.0",
    .description = "shard_grad_op within each machine, DDP across machines",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
