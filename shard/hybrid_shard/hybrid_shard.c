/* hybrid_shard (FSDP's HYBRID_SHARD, also accepted as hybrid_full_shard): full sharding
 * within each machine, replication across machines. A unit is gathered from the ranks of
 * its own machine over the fast shared-memory link; the only traffic between machines is
 * each rank's gradient piece, summed with the ranks holding the same piece elsewhere:
 * 2 (M-1)/M * P/S floats per rank and step for P trainable floats, M machines of S ranks.
 * Every machine must hold the same number of ranks so that pieces line up across
 * machines; the plugin fails on every rank, saying so, when they do not. The machine's
 * size is the launcher's ($QFT_TRANSPORT_NODE_SIZE pretends, for tests on one machine). */
#include "qft_sdk.h"
#include "qft_transport.h"

#include <stdlib.h>

typedef struct hs_state {
    struct qft_transport *intra; /* this machine's ranks */
    struct qft_transport *inter; /* the ranks with this local index on every machine */
} hs_state;

static int hs_configure(const qft_services *svc, const config_setting_t *section, void **out,
                        qft_err *err) {
    (void)svc, (void)section;
    hs_state *s = calloc(1, sizeof *s);
    if (!s) return qft_err_setf(err, "hybrid_shard: out of memory");
    *out = s;
    return 0;
}

static int hs_param_group(void *state, const struct qft_transport *t,
                          const struct qft_transport **group,
                          const struct qft_transport **replicas, qft_err *err) {
    hs_state *s = state;
    if (qft_transport_split_machines(t, "hybrid_shard", &s->intra, &s->inter, err)) return -1;
    *group = s->intra;
    *replicas = s->inter->world > 1 ? s->inter : NULL;
    return 0;
}

static void hs_close(void *state) {
    hs_state *s = state;
    if (!s) return;
    if (s->inter) s->inter->vt->close(s->inter);
    if (s->intra) s->intra->vt->close(s->intra);
    free(s);
}

static const qft_shard_vtable k_vtable = {
    .config_keys = NULL,
    .configure = hs_configure,
    .close = hs_close,
    .param_group = hs_param_group,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_SHARD,
    .name = "hybrid_shard",
    .version = "1.0.0",
    .description = "FSDP HYBRID_SHARD: full_shard within each machine, replicated across "
                   "machines",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
