/* Composition of a run's plugins: every name the config uses must resolve in the
 * registry, and every section's keys must be known to the core or to its plugin. */
#include "cpu_ops.h"
#include "cuda_backend.h"
#include "registry.h"
#include "run.h"

#include <string.h>

/* The adapter and the quantizer: found, their sections' keys checked and their options
 * read by the plugins; "none" takes no keys. */
static int open_adapter(const qft_run_config *rc, const qft_registry *reg,
                        const qft_adapter_vtable **avt, void **astate, qft_err *err) {
    *avt = NULL, *astate = NULL;
    if (strcmp(rc->adapter_plugin, "none") == 0)
        return qft_config_check_keys(rc->sec_adapter, NULL, err);
    const qft_plugin *p;
    if (qft_registry_open(reg, QFT_KIND_ADAPTER, rc->adapter_plugin, rc->sec_adapter, 1, &p,
                          astate, err))
        return -1;
    *avt = p->desc->vtable;
    return 0;
}

static int open_quantizer(const qft_run_config *rc, const qft_registry *reg,
                          const qft_quantizer_vtable **qvt, void **qstate, qft_err *err) {
    *qvt = NULL, *qstate = NULL;
    if (strcmp(rc->quant_plugin, "none") == 0) return qft_config_check_keys(rc->sec_quant, NULL, err);
    const qft_plugin *p;
    if (qft_registry_open(reg, QFT_KIND_QUANTIZER, rc->quant_plugin, rc->sec_quant, 1, &p,
                          qstate, err))
        return -1;
    *qvt = p->desc->vtable;
    return 0;
}

int qft_run_compose(const qft_run_config *rc, const qft_registry *reg, qft_run_data *d,
                    qft_err *err) {
    qft_registry_set_ops(qft_cpu_ops());
    if (open_adapter(rc, reg, &d->avt, &d->astate, err) ||
        open_quantizer(rc, reg, &d->qvt, &d->qstate, err))
        return -1;
    /* One process: no_shard is the identity; the other strategies need their plugins. */
    if (strcmp(rc->shard.plugin, "no_shard") != 0 &&
        !qft_registry_find(reg, QFT_KIND_SHARD, rc->shard.plugin, err))
        return -1;
    if (strcmp(rc->train.backend, "cuda") == 0) {
        /* The device is looked for first, so that a machine without one (or a build
         * without nvcc) is told exactly that; core/cuda's op table is built and tested,
         * but the model still keeps its tensors in host memory, so a usable device is
         * refused too, with the reason, rather than training on the CPU behind the
         * user's back. */
        qft_err cerr = {0, ""};
        if (!qft_cuda_load(rc->train.device, &cerr))
            return qft_err_setf(err, "%s: %s", rc->file, cerr.msg);
        return qft_err_setf(err, "%s: train.backend = \"cuda\": device %d is usable, but this "
                                 "version trains on the CPU backend only (the CUDA op table "
                                 "is built and tested, the model does not run on device "
                                 "memory yet); use train.backend = \"cpu\"", rc->file,
                            rc->train.device);
    }
    if (strcmp(rc->train.backend, "cpu") != 0)
        return qft_err_setf(err, "%s: train.backend = \"%s\": this build has no usable %s "
                                 "backend (\"cpu\" or \"cuda\")", rc->file, rc->train.backend,
                            rc->train.backend);
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_DATASET, rc->data.plugin, err);
    if (!p) return -1;
    d->dvt = p->desc->vtable;
    return qft_config_check_keys(rc->sec_data, d->dvt->config_keys, err);
}
