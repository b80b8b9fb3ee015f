/* Composition of a run's plugins: every name the config uses must resolve in the
 * registry, and every section's keys must be known to the core or to its plugin. */
#include "registry.h"
#include "run.h"

#include <string.h>

/* quant/adapter sections: "none" takes no keys besides `plugin`. The quantizer and
 * adapter vtables arrive with their own issues; until then a found plugin of those kinds
 * is refused by name rather than half-used. */
static int check_kind(const qft_registry *reg, qft_kind kind, const char *name,
                      const config_setting_t *sec, qft_err *err) {
    if (strcmp(name, "none") == 0) return qft_config_check_keys(sec, NULL, err);
    const qft_plugin *p = qft_registry_find(reg, kind, name, err);
    if (!p) return -1;
    return qft_err_setf(err, "%s plugin \"%s\" (%s) was found, but this qft cannot compose %s "
                             "plugins yet: only train_type \"full\" trains in this version",
                        qft_kind_name(kind), name, p->path, qft_kind_name(kind));
}

int qft_run_compose(const qft_run_config *rc, const qft_registry *reg,
                    const qft_dataset_vtable **dataset, qft_err *err) {
    if (check_kind(reg, QFT_KIND_QUANTIZER, rc->quant_plugin, rc->sec_quant, err) ||
        check_kind(reg, QFT_KIND_ADAPTER, rc->adapter_plugin, rc->sec_adapter, err))
        return -1;
    /* One process: no_shard is the identity; the other strategies need their plugins. */
    if (strcmp(rc->shard.plugin, "no_shard") != 0 &&
        !qft_registry_find(reg, QFT_KIND_SHARD, rc->shard.plugin, err))
        return -1;
    if (strcmp(rc->train.backend, "cpu") != 0)
        return qft_err_setf(err, "%s: train.backend = \"%s\": this build has no usable %s "
                                 "backend (only \"cpu\")", rc->file, rc->train.backend,
                            rc->train.backend);
    const qft_plugin *d = qft_registry_find(reg, QFT_KIND_DATASET, rc->data.plugin, err);
    if (!d) return -1;
    *dataset = d->desc->vtable;
    return qft_config_check_keys(rc->sec_data, (*dataset)->config_keys, err);
}
