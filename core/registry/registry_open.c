/* Opening a configured plugin: the one sequence every user of a quantizer, adapter or
 * shard plugin runs (find it, check its section's keys, let it read its options). The
 * three vtables start alike (config_keys, configure), which is what this reads. */
#include "config.h"
#include "registry.h"

int qft_registry_open(const qft_registry *r, qft_kind kind, const char *name,
                      const config_setting_t *section, int check_keys, const qft_plugin **out,
                      void **state, qft_err *err) {
    *state = NULL;
    const qft_plugin *p = qft_registry_find(r, kind, name, err);
    if (!p) return -1;
    const char *const *keys;
    int (*configure)(const qft_services *, const config_setting_t *, void **, qft_err *);
    switch (kind) {
    case QFT_KIND_QUANTIZER: {
        const qft_quantizer_vtable *vt = p->desc->vtable;
        keys = vt->config_keys, configure = vt->configure;
        break;
    }
    case QFT_KIND_ADAPTER: {
        const qft_adapter_vtable *vt = p->desc->vtable;
        keys = vt->config_keys, configure = vt->configure;
        break;
    }
    case QFT_KIND_SHARD: {
        const qft_shard_vtable *vt = p->desc->vtable;
        keys = vt->config_keys, configure = vt->configure;
        break;
    }
    default:
        return qft_err_setf(err, "%s plugin \"%s\": opened by its own code, not here",
                            qft_kind_name(kind), name);
    }
    if (check_keys && qft_config_check_keys(section, keys, err)) return -1;
    if (configure(qft_registry_services(), section, state, err)) return -1;
    *out = p;
    return 0;
}
