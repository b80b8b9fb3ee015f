/* no_shard (the seed's `ddp`): parameters, gradients and optimizer state replicated on
 * every rank. Each rank's optimizer updates the whole buffer from the gradient summed over
 * ranks, so the replicas stay identical without ever sending parameters: every rank starts
 * from the same seed and applies the same bits. */
#include "qft_sdk.h"
#include "qft_transport.h"

#include <stdlib.h>

typedef struct ns_state {
    size_t n; /* trainable floats, from plan */
} ns_state;

static int ns_configure(const qft_services *svc, const config_setting_t *section, void **out,
                        qft_err *err) {
    (void)svc, (void)section;
    ns_state *s = calloc(1, sizeof *s);
    if (!s) return qft_err_setf(err, "no_shard: out of memory");
    *out = s;
    return 0;
}

static int ns_plan(void *state, const struct qft_transport *t, size_t n, size_t *offset,
                   size_t *len, qft_err *err) {
    (void)t, (void)err;
    ((ns_state *)state)->n = n;
    *offset = 0;
    *len = n;
    return 0;
}

static int check_n(const ns_state *s, size_t n, const char *op, qft_err *err) {
    if (n != s->n)
        return qft_err_setf(err, "no_shard: %s got %zu floats but plan was for %zu", op, n, s->n);
    return 0;
}

static int ns_reduce_grads(void *state, const struct qft_transport *t, float *grads, size_t n,
                           qft_err *err) {
    if (check_n(state, n, "reduce_grads", err)) return -1;
    if (t->world == 1) return 0;
    return qft_transport_all_reduce_f32(t, grads, n, QFT_REDUCE_SUM, err); // (n)
}

static int ns_gather_params(void *state, const struct qft_transport *t, float *params, size_t n,
                            qft_err *err) {
    (void)t, (void)params;
    return check_n(state, n, "gather_params", err);
}

static void ns_close(void *state) { free(state); }

static const qft_shard_vtable k_vtable = {
    .config_keys = NULL,
    .configure = ns_configure,
    .plan = ns_plan,
    .reduce_grads = ns_reduce_grads,
    .gather_params = ns_gather_params,
    .close = ns_close,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_SHARD,
    .name = "no_shard",
    .version = "1.0.0",
    .description = "DDP: replicated parameters and optimizer state, gradients all-reduced",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
