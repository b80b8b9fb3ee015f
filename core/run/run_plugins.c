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

int qft_run_compose(const qft_run_config *rc, const qft_registry *reg, int device,
                    qft_run_data *d, qft_err *err) {
    qft_registry_set_ops(qft_cpu_ops());
    if (open_adapter(rc, reg, &d->avt, &d->astate, err) ||
        open_quantizer(rc, reg, &d->qvt, &d->qstate, err))
        return -1;
    /* One process: no_shard is the identity; the other strategies need their plugins. */
    if (strcmp(rc->shard.plugin, "no_shard") != 0 &&
        !qft_registry_find(reg, QFT_KIND_SHARD, rc->shard.plugin, err))
        return -1;
    d->ops = qft_cpu_ops();
    if (strcmp(rc->train.backend, "cuda") == 0) {
        /* the device first, so that a machine without one (or a build without nvcc) is
         * told exactly that */
        qft_err cerr = {0, ""};
        d->ops = qft_cuda_load(device, &cerr);
        if (!d->ops && device != rc->train.device)
            return qft_err_setf(err, "%s: %s (under mpirun, rank i of a machine takes GPU "
                                     "train.device + i: train.device = %d, this rank's GPU %d)",
                                rc->file, cerr.msg, rc->train.device, device);
        if (!d->ops) return qft_err_setf(err, "%s: %s", rc->file, cerr.msg);
        const char *mp = rc->train.matmul_precision;
        if (qft_cuda_loaded_set_matmul_precision(
                strcmp(mp, "high") == 0 ? 1 : strcmp(mp, "medium") == 0 ? 2 : 0, &cerr))
            return qft_err_setf(err, "%s: %s", rc->file, cerr.msg);
    } else if (strcmp(rc->train.backend, "cpu_guard") == 0) {
        d->ops = qft_cpu_guard_ops();
    } else if (strcmp(rc->train.backend, "cpu") != 0) {
        return qft_err_setf(err, "%s: train.backend = \"%s\": this build has no such backend "
                                 "(\"cpu\", \"cuda\", or \"cpu_guard\", the CPU kernels "
                                 "behind a device-memory guard)",
                            rc->file, rc->train.backend);
    }
    /* On another backend the model runs on its own copies (qft_llama_to_backend, which
     * also says when a quantizer cannot go there). Without shard.cpu_offload the optimizer
     * runs there too, and several ranks reduce and gather over that backend's memory
     * (run_shard.c: NCCL on CUDA); with it, parameters, gradients and optimizer state stay
     * in host memory (FSDP's CPU offload) and the optimizer runs on the CPU. */
    if (strcmp(rc->train.matmul_precision, "highest") != 0 &&
        strcmp(rc->train.backend, "cuda") != 0)
        return qft_err_setf(err, "%s: train.matmul_precision = \"%s\" (tensor-core GEMMs) is a "
                                 "CUDA setting; the %s backend computes in full fp32",
                            rc->file, rc->train.matmul_precision, rc->train.backend);
    if (d->ops == qft_cpu_ops() && strcmp(rc->train.frozen_dtype, "f32") != 0)
        return qft_err_setf(err, "%s: train.frozen_dtype = \"%s\" keeps frozen weights in "
                                 "another backend's memory; the cpu backend computes on the "
                                 "host's fp32 copies (remove the key, or set train.backend)",
                            rc->file, rc->train.frozen_dtype);
    if (d->ops == qft_cpu_ops() && rc->shard.cpu_offload) {
        return qft_err_setf(err, "%s: shard.cpu_offload = true: the cpu backend keeps "
                                 "everything in host memory already; remove the key",
                            rc->file);
    }
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_DATASET, rc->data.plugin, err);
    if (!p) return -1;
    d->dvt = p->desc->vtable;
    return qft_config_check_keys(rc->sec_data, d->dvt->config_keys, err);
}
