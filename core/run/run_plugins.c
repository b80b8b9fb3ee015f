/* Composition of a run's plugins: every name the config uses must resolve in the
 * registry, and every section's keys must be known to the core or to its plugin. */
#include "registry.h"
#include "run.h"

#include <string.h>

/* The adapter vtable arrives with its own issue; until then a found adapter plugin is
 * refused by name rather than half-used. "none" takes no keys besides `plugin`. */
static int check_adapter(const qft_registry *reg, const char *name,
                         const config_setting_t *sec, qft_err *err) {
    if (strcmp(name, "none") == 0) return qft_config_check_keys(sec, NULL, err);
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_ADAPTER, name, err);
    if (!p) return -1;
    return qft_err_setf(err, "adapter plugin \"%s\" (%s) was found, but this qft cannot "
                             "compose adapter plugins yet (LoRA, DoRA and Llama-Pro are not "
                             "written); use an adapter-free train_type", name, p->path);
}

/* The quantizer: found, its section's keys checked and its options read by the plugin. */
static int open_quantizer(const qft_run_config *rc, const qft_registry *reg,
                          const qft_quantizer_vtable **qvt, void **qstate, qft_err *err) {
    *qvt = NULL, *qstate = NULL;
    if (strcmp(rc->quant_plugin, "none") == 0) return qft_config_check_keys(rc->sec_quant, NULL, err);
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_QUANTIZER, rc->quant_plugin, err);
    if (!p) return -1;
    const qft_quantizer_vtable *vt = p->desc->vtable;
    if (qft_config_check_keys(rc->sec_quant, vt->config_keys, err) ||
        vt->configure(qft_registry_services(), rc->sec_quant, qstate, err))
        return -1;
    *qvt = vt;
    return 0;
}

int qft_run_compose(const qft_run_config *rc, const qft_registry *reg,
                    const qft_dataset_vtable **dataset, const qft_quantizer_vtable **qvt,
                    void **qstate, qft_err *err) {
    if (check_adapter(reg, rc->adapter_plugin, rc->sec_adapter, err) ||
        open_quantizer(rc, reg, qvt, qstate, err))
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
