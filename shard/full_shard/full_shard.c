/* full_shard (FSDP's FULL_SHARD): parameters, gradients and optimizer state all cut over
 * every rank of the job. The plugin only names the group: the core keeps this rank's
 * piece of each unit of the model, gathers a unit over the group right before it runs
 * (forward, and again in backward), frees it after, and reduce-scatters its gradients
 * (see `param_group` in qft_sdk.h). Per rank that holds 1/W of the parameters plus the
 * unit in use, and moves per step about 3 (W-1)/W of the model in all-gathers and
 * reduce-scatters (parameters in forward and backward, trainable gradients once). */
#include "qft_sdk.h"
#include "qft_transport.h"

#include <stdlib.h>

static int fs_configure(const qft_services *svc, const config_setting_t *section, void **out,
                        qft_err *err) {
    (void)svc, (void)section, (void)err;
    *out = NULL; /* no state: the group is the run's transport */
    return 0;
}

static int fs_param_group(void *state, const struct qft_transport *t,
                          const struct qft_transport **group,
                          const struct qft_transport **replicas, qft_err *err) {
    (void)state, (void)err;
    *group = t;
    *replicas = NULL;
    return 0;
}

static void fs_close(void *state) { (void)state; }

static const qft_shard_vtable k_vtable = {
    .config_keys = NULL,
    .configure = fs_configure,
    .close = fs_close,
    .param_group = fs_param_group,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_SHARD,
    .name = "full_shard",
    .version = "1.0.0",
    .description = "FSDP FULL_SHARD: parameters, gradients and optimizer state sharded; each "
                   "unit gathered for its use",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
