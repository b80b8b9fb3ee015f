/* The model on another backend's memory (see qft_llama_to_backend in llama.h): the passes
 * run on the backend's copies of the parameters and gradients, while the host keeps the
 * master copy the loader, the saver and the optimizer work on. One upload of the
 * trainable floats after each optimizer step and one download of their gradients before
 * it are the traffic; frozen weights go up once. */
#include "llama_internal.h"

#include <string.h>

int qft_llama_to_backend(qft_llama_model *m, const qft_ops *ops, qft_err *err) {
    if (m->dev_params) return qft_err_setf(err, "the model is on a backend already");
    if (m->units)
        return qft_err_setf(err, "backend \"%s\": full sharding cuts the model in host memory "
                                 "in this version; use no_shard or shard_grad_op there",
                            ops->name);
    if (m->n_quantized || m->n_adapted)
        return qft_err_setf(err, "backend \"%s\": this version runs only dense models there "
                                 "(this one has %s); quantized weights and per-linear adapters "
                                 "run on the cpu backend",
                            ops->name, m->n_quantized ? "quantized weights" : "adapters");
    if (!m->grads) return qft_err_setf(err, "backend \"%s\": allocate gradients first", ops->name);
    m->dev_params = ops->alloc((m->n_params ? m->n_params : 1) * sizeof(float), "parameters");
    m->dev_grads = ops->alloc((m->n_trainable ? m->n_trainable : 1) * sizeof(float), "gradients");
    if (!m->dev_params || !m->dev_grads) {
        if (m->dev_params) ops->free(m->dev_params);
        if (m->dev_grads) ops->free(m->dev_grads);
        m->dev_params = m->dev_grads = NULL;
        return qft_err_setf(err, "backend \"%s\": out of memory for %zu parameters", ops->name,
                            m->n_params);
    }
    ops->upload(m->dev_params, m->params, m->n_params * sizeof(float));
    ops->zero(m->dev_grads, m->n_trainable);
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        *qft_llama_view_slot(&m->p, e->layer, e->field) = m->dev_params + e->offset;
        if (e->role == QFT_ROLE_TRAIN)
            *qft_llama_view_slot(&m->g, e->layer, e->field) = m->dev_grads + e->offset;
    }
    if (m->cfg.tie_word_embeddings) m->p.lm_head = m->p.embed, m->g.lm_head = m->g.embed;
    /* activations are the backend's too: the next forward allocates them there */
    qft_llama_acts_free(m);
    m->ops = ops;
    return 0;
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
