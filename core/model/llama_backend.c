/* The model on another backend's memory (see qft_llama_to_backend in llama.h): the passes
 * run on the backend's copies of the parameters and gradients, while the host keeps the
 * master copy the loader, the saver and the optimizer work on. One upload of the
 * trainable floats after each optimizer step and one download of their gradients before
 * it are the traffic; frozen weights go up once, packed ones in their packed form (the
 * backend dequantizes a tile of rows at a time into one scratch the linears share). */
#include "llama_internal.h"

#include <stdlib.h>
#include <string.h>

/* The scratch for dequantized tiles: the largest packed weight, or this many bytes of
 * rows when that is larger (one tile of 64 MiB keeps cuBLASLt's GEMMs large: 4096 rows
 * of a 4096-wide weight). */
#define QFT_LLAMA_QTILE_BYTES ((size_t)64 << 20)

static void free_layout(const qft_ops *ops, qft_qlayout *ql) {
    if (!ql) return;
    for (int b = 0; b < QFT_QLAYOUT_MAX_BUFS; b++)
        if (ql->buf[b]) ops->free((void *)ql->buf[b]);
    free(ql);
}

/* Entry e's packed buffers copied to the backend, as the quantizer describes them. */
static int upload_packed(qft_llama_model *m, const qft_ops *ops, qft_param_entry *e,
                         qft_err *err) {
    if (!m->qvt->layout)
        return qft_err_setf(err, "backend \"%s\": the quantizer does not describe its packed "
                                 "weights (no `layout` entry), so they run on the cpu backend "
                                 "only",
                            ops->name);
    qft_qlayout host = {0};
    const int rc = m->qvt->layout(e->qw, &host, err);
    if (rc < 0) return -1;
    if (rc > 0 || !ops->dequantize || !ops->has_qformat || !ops->has_qformat(host.format))
        return qft_err_setf(err, "backend \"%s\": %s: the quantizer's configuration has no "
                                 "packed format this backend decodes (format %d); use the "
                                 "cpu backend",
                            ops->name, e->name, rc > 0 ? QFT_QFMT_NONE : host.format);
    if (host.out != e->shape[0] || host.in != e->shape[1])
        return qft_err_setf(err, "%s: the quantizer's layout is (%lld, %lld), the weight "
                                 "(%lld, %lld)",
                            e->name, (long long)host.out, (long long)host.in,
                            (long long)e->shape[0], (long long)e->shape[1]);
    qft_qlayout *dev = malloc(sizeof *dev);
    if (!dev) return qft_err_setf(err, "%s: out of memory", e->name);
    *dev = host;
    for (int b = 0; b < QFT_QLAYOUT_MAX_BUFS; b++) {
        dev->buf[b] = NULL;
        if (!host.buf[b] || !host.bytes[b]) continue;
        void *p = ops->alloc(host.bytes[b], "packed weights");
        if (!p) {
            free_layout(ops, dev);
            return qft_err_setf(err, "backend \"%s\": out of memory for %s's packed weight "
                                     "(%zu bytes)",
                                ops->name, e->name, host.bytes[b]);
        }
        ops->upload(p, host.buf[b], host.bytes[b]);
        dev->buf[b] = p;
    }
    e->ql = dev;
    return 0;
}

static void free_device(qft_llama_model *m, const qft_ops *ops) {
    for (int i = 0; i < m->n_entries; i++) {
        free_layout(ops, m->entries[i].ql);
        m->entries[i].ql = NULL;
    }
    if (m->qtile) ops->free(m->qtile);
    if (m->dev_params) ops->free(m->dev_params);
    if (m->dev_grads) ops->free(m->dev_grads);
    m->qtile = NULL, m->qtile_floats = 0;
    m->dev_params = m->dev_grads = NULL;
}

void qft_llama_backend_free(qft_llama_model *m) {
    if (m->ops) free_device(m, m->ops);
}

int qft_llama_to_backend(qft_llama_model *m, const qft_ops *ops, qft_err *err) {
    if (m->dev_params) return qft_err_setf(err, "the model is on a backend already");
    if (m->units)
        return qft_err_setf(err, "backend \"%s\": full sharding cuts the model in host memory "
                                 "in this version; use no_shard or shard_grad_op there",
                            ops->name);
    if (!m->grads) return qft_err_setf(err, "backend \"%s\": allocate gradients first", ops->name);
    size_t biggest = 0; /* floats of the largest packed weight */
    for (int i = 0; i < m->n_entries; i++) {
        qft_param_entry *e = &m->entries[i];
        if (e->role != QFT_ROLE_QUANTIZED) continue;
        if (upload_packed(m, ops, e, err)) goto fail;
        if (e->numel > biggest) biggest = e->numel;
    }
    if (biggest) {
        const size_t budget = QFT_LLAMA_QTILE_BYTES / sizeof(float);
        m->qtile_floats = biggest < budget ? biggest : budget;
        /* at least one row of the widest weight */
        for (int i = 0; i < m->n_entries; i++)
            if (m->entries[i].role == QFT_ROLE_QUANTIZED &&
                (size_t)m->entries[i].shape[1] > m->qtile_floats)
                m->qtile_floats = (size_t)m->entries[i].shape[1];
        m->qtile = ops->alloc(m->qtile_floats * sizeof(float), "dequantized tiles");
        if (!m->qtile) {
            qft_err_setf(err, "backend \"%s\": out of memory for a %zu-float dequantization "
                              "scratch",
                         ops->name, m->qtile_floats);
            goto fail;
        }
    }
    m->dev_params = ops->alloc((m->n_params ? m->n_params : 1) * sizeof(float), "parameters");
    m->dev_grads = ops->alloc((m->n_trainable ? m->n_trainable : 1) * sizeof(float), "gradients");
    if (!m->dev_params || !m->dev_grads) {
        qft_err_setf(err, "backend \"%s\": out of memory for %zu parameters", ops->name,
                     m->n_params);
        goto fail;
    }
    ops->upload(m->dev_params, m->params, m->n_params * sizeof(float));
    ops->zero(m->dev_grads, m->n_trainable);
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        /* adapter tensors have no view (their adapter is attached again below); packed
         * weights have none either (their linears read e->ql) */
        if (e->layer == -2 || e->role == QFT_ROLE_QUANTIZED) continue;
        *qft_llama_view_slot(&m->p, e->layer, e->field) = m->dev_params + e->offset;
        if (e->role == QFT_ROLE_TRAIN)
            *qft_llama_view_slot(&m->g, e->layer, e->field) = m->dev_grads + e->offset;
    }
    if (m->cfg.tie_word_embeddings) m->p.lm_head = m->p.embed, m->g.lm_head = m->g.embed;
    /* activations are the backend's too: the next forward allocates them there */
    qft_llama_acts_free(m);
    m->ops = ops;
    return qft_llama_adapters_rebind(m, 1, err);
fail:
    free_device(m, ops);
    return -1;
}

void qft_llama_grads_to_host(qft_llama_model *m) {
    if (m->dev_grads) m->ops->download(m->grads, m->dev_grads, m->n_trainable * sizeof(float));
}

void qft_llama_params_to_backend(qft_llama_model *m, size_t offset, size_t len) {
    if (m->dev_params)
        m->ops->upload(m->dev_params + offset, m->params + offset, len * sizeof(float));
}

void qft_llama_params_to_host(qft_llama_model *m, size_t offset, size_t len) {
    if (m->dev_params)
        m->ops->download(m->params + offset, m->dev_params + offset, len * sizeof(float));
}
