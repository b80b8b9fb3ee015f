/* The model on another backend's memory (see qft_llama_to_backend in llama.h): the passes
 * run on the backend's copies of the parameters and gradients, while the host keeps the
 * master copy the loader, the saver and the optimizer work on. One upload of the
 * trainable floats after each optimizer step and one download of their gradients before
 * it are the traffic; frozen weights go up once, packed ones in their packed form (the
 * backend dequantizes a tile of rows at a time into one scratch the linears share). */
#include "cpu_ops.h"
#include "llama_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The embedding qft_llama_to_backend may leave in host memory: frozen and untied. */
static int host_embedding(const qft_llama_model *m, const qft_param_entry *e) {
    return e->layer == -1 && e->field == 0 && e->role == QFT_ROLE_FROZEN &&
           !m->cfg.tie_word_embeddings;
}

int qft_llama_embed_stays_on_host(const qft_llama_model *m) {
    const qft_param_entry *e = qft_llama_outer_entry(m, 0);
    return m->embed_on_host && e && host_embedding(m, e);
}

/* Entry e as a QFT_QFMT_BF16 layout on the backend, rounded from the host's fp32 copy; or,
 * with the unit layout, at its placed bytes in dev_packed, which full sharding gathers. */
static int upload_bf16(qft_llama_model *m, const qft_ops *ops, qft_param_entry *e,
                       qft_err *err) {
    if (!ops->has_qformat || !ops->has_qformat(QFT_QFMT_BF16) || !ops->embedding_fwd_bf16)
        return qft_err_setf(err, "backend \"%s\" does not decode bf16 weights "
                                 "(train.frozen_dtype = \"bf16\")",
                            ops->name);
    const int placed = m->units != NULL;
    uint16_t *h = placed ? NULL : malloc(e->numel * sizeof *h); // (out, in)
    qft_qlayout *dev = calloc(1, sizeof *dev);
    void *d = placed ? m->dev_packed + e->packed_at
                     : ops->alloc(e->numel * sizeof *h, "frozen weights (bf16)");
    if ((!placed && !h) || !dev || !d) {
        free(h), free(dev);
        if (d && !placed) ops->free(d);
        return qft_err_setf(err, "%s: out of memory for its bf16 copy", e->name);
    }
    if (!placed) {
        qft_cpu_f32_to_bf16(h, m->params + e->offset, e->numel); // (out, in)
        ops->upload(d, h, e->numel * sizeof *h);
        free(h);
    }
    dev->format = QFT_QFMT_BF16;
    dev->out = e->shape[0], dev->in = e->shape[1];
    dev->buf[QFT_QL_BF16_VALUES] = d;
    dev->bytes[QFT_QL_BF16_VALUES] = e->numel * sizeof *h;
    e->ql = dev;
    return 0;
}

/* The scratch for dequantized tiles: the largest packed weight, or this many bytes of
 * rows when that is larger (one tile of 64 MiB keeps cuBLASLt's GEMMs large: 4096 rows
 * of a 4096-wide weight). */
#define QFT_LLAMA_QTILE_BYTES ((size_t)64 << 20)

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

/* Whether p lies in the backend's mirror of the packed regions (the unit layout). */
static int in_dev_packed(const qft_llama_model *m, const void *p) {
    const uint8_t *b = p;
    return m->dev_packed && b >= m->dev_packed && b < m->dev_packed + m->packed_cap;
}

static void free_layout(const qft_llama_model *m, const qft_ops *ops, qft_qlayout *ql) {
    if (!ql) return;
    for (int b = 0; b < QFT_QLAYOUT_MAX_BUFS; b++)
        if (ql->buf[b] && !in_dev_packed(m, ql->buf[b])) ops->free((void *)ql->buf[b]);
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
        const uint8_t *hb = host.buf[b];
        if (m->dev_packed && hb >= m->packed && hb < m->packed + m->packed_cap) {
            /* placed in a unit's region: the same offset in the backend's mirror, which
             * full sharding fills when it gathers the unit */
            if (hb + host.bytes[b] > m->packed + m->packed_cap) {
                free_layout(m, ops, dev);
                return qft_err_setf(err, "%s: the quantizer's buffer %d runs past the packed "
                                         "regions",
                                    e->name, b);
            }
            dev->buf[b] = m->dev_packed + (hb - m->packed);
            continue;
        }
        /* outside the units' regions (a constant table of the weight's own, such as NF4's
         * codebook, or no unit layout at all): a copy of its own, whole on every rank */
        void *p = ops->alloc(host.bytes[b], "packed weights");
        if (!p) {
            free_layout(m, ops, dev);
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

/* The bytes of the backend's reservations under the unit layout (whole commit units). */
static size_t span(const qft_llama_model *m, size_t bytes) {
    return round_up(bytes ? bytes : 1, m->unit_align);
}

static void free_device(qft_llama_model *m, const qft_ops *ops) {
    for (int i = 0; i < m->n_entries; i++) {
        free_layout(m, ops, m->entries[i].ql);
        m->entries[i].ql = NULL;
    }
    if (m->qtile) ops->free(m->qtile);
    if (m->units) { /* reservations, every range decommitted by full sharding's end */
        if (m->dev_params) ops->vm_unreserve(m->dev_params, span(m, m->n_params * sizeof(float)));
        if (m->dev_grads)
            ops->vm_unreserve(m->dev_grads, span(m, m->n_trainable * sizeof(float)));
        if (m->dev_packed) ops->vm_unreserve(m->dev_packed, m->packed_cap);
    } else {
        if (m->dev_params) ops->free(m->dev_params);
        if (m->dev_grads) ops->free(m->dev_grads);
    }
    m->qtile = NULL, m->qtile_floats = 0;
    m->dev_params = m->dev_grads = NULL;
    m->dev_packed = NULL;
    m->n_dev_params = 0;
}

/* The unit layout's reservations on ops (see qft_llama_to_backend): the host's offsets,
 * no memory behind them yet. */
static int reserve_units(qft_llama_model *m, const qft_ops *ops, int frozen_bf16, qft_err *err) {
    const size_t g = ops->vm_granularity ? ops->vm_granularity() : 0;
    if (!g || !ops->vm_reserve || !ops->vm_commit || !ops->vm_decommit || !ops->vm_unreserve)
        return qft_err_setf(err, "backend \"%s\" cannot map memory behind reserved address "
                                 "space (no vm_* entries, or a device without virtual memory "
                                 "management), where full sharding keeps the model's units; "
                                 "use shard_grad_op, or the cpu backend",
                            ops->name);
    if (m->unit_align % g != 0)
        return qft_err_setf(err, "backend \"%s\": the model's units are aligned to %zu bytes, "
                                 "not a multiple of the backend's %zu-byte granularity",
                            ops->name, m->unit_align, g);
    if (!frozen_bf16 != !m->units_bf16)
        return qft_err_setf(err, "backend \"%s\": the model's units were laid out %s bf16 "
                                 "frozen weights, the backend asked %s them",
                            ops->name, m->units_bf16 ? "with" : "without",
                            frozen_bf16 ? "for" : "without");
    m->dev_params = ops->vm_reserve(span(m, m->n_params * sizeof(float)));
    m->dev_grads = ops->vm_reserve(span(m, m->n_trainable * sizeof(float)));
    m->dev_packed = m->packed_cap ? ops->vm_reserve(m->packed_cap) : NULL;
    if (!m->dev_params || !m->dev_grads || (m->packed_cap && !m->dev_packed))
        return qft_err_setf(err, "backend \"%s\": no address space left for the model's %zu "
                                 "parameters",
                            ops->name, m->n_params);
    m->n_dev_params = m->n_params;
    return 0;
}

void qft_llama_backend_free(qft_llama_model *m) {
    if (m->ops) free_device(m, m->ops);
}

int qft_llama_to_backend(qft_llama_model *m, const qft_ops *ops, int frozen_bf16, qft_err *err) {
    if (m->dev_params) return qft_err_setf(err, "the model is on a backend already");
    if (!m->grads) return qft_err_setf(err, "backend \"%s\": allocate gradients first", ops->name);
    const int units = m->units != NULL;
    if (units) {
        if (m->n_quantized && !m->packed)
            return qft_err_setf(err, "backend \"%s\": the packed weights are not placed in "
                                     "their units yet (full sharding's init places them)",
                                ops->name);
        if (reserve_units(m, ops, frozen_bf16, err)) goto fail;
    }
    /* Packed weights, and frozen dense ones kept as bf16, have no fp32 copy there: the
     * backend's flat buffer is the trainable prefix (same offsets as the host's) followed
     * by the frozen fp32 tensors, each at dev_offset. */
    int kept_on_host = 0; /* only a frozen, untied embedding stays behind */
    size_t biggest = 0;               /* floats of the largest weight the tile path serves */
    size_t n_dev = m->n_trainable;    /* floats of the backend's flat buffer */
    for (int i = 0; i < m->n_entries; i++) {
        qft_param_entry *e = &m->entries[i];
        e->dev_offset = e->offset;
        if (m->embed_on_host && host_embedding(m, e)) {
            e->dev_offset = SIZE_MAX; /* no copy there: forward gathers its rows here */
            kept_on_host = 1;
            continue;
        } else if (e->role == QFT_ROLE_QUANTIZED) {
            if (upload_packed(m, ops, e, err)) goto fail;
        } else if (units ? qft_llama_unit_bf16(m, e)
                         : frozen_bf16 && qft_llama_bf16_candidate(m, e)) {
            if (upload_bf16(m, ops, e, err)) goto fail;
        } else {
            if (e->role != QFT_ROLE_TRAIN && !units) {
                e->dev_offset = n_dev;
                n_dev += (e->numel + 15) / 16 * 16; /* 64-byte aligned starts */
            }
            continue;
        }
        if (e->numel > biggest) biggest = e->numel;
    }
    m->embed_on_host = kept_on_host;
    m->embed_host_bf16 = kept_on_host && frozen_bf16;
    if (biggest) {
        const size_t budget = QFT_LLAMA_QTILE_BYTES / sizeof(float);
        m->qtile_floats = biggest < budget ? biggest : budget;
        /* at least one row of the widest weight */
        for (int i = 0; i < m->n_entries; i++)
            if (m->entries[i].ql && (size_t)m->entries[i].shape[1] > m->qtile_floats)
                m->qtile_floats = (size_t)m->entries[i].shape[1];
        m->qtile = ops->alloc(m->qtile_floats * sizeof(float), "dequantized tiles");
        if (!m->qtile) {
            qft_err_setf(err, "backend \"%s\": out of memory for a %zu-float dequantization "
                              "scratch",
                         ops->name, m->qtile_floats);
            goto fail;
        }
    }
    if (!units) {
        m->dev_params = ops->alloc((n_dev ? n_dev : 1) * sizeof(float), "parameters");
        m->dev_grads = ops->alloc((m->n_trainable ? m->n_trainable : 1) * sizeof(float),
                                  "gradients");
        if (!m->dev_params || !m->dev_grads) {
            qft_err_setf(err, "backend \"%s\": out of memory for %zu parameters", ops->name,
                         n_dev);
            goto fail;
        }
        m->n_dev_params = n_dev;
        ops->upload(m->dev_params, m->params, m->n_trainable * sizeof(float));
        ops->zero(m->dev_grads, m->n_trainable);
    }
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (e->dev_offset == SIZE_MAX) { /* the embedding kept on the host */
            m->p.embed = NULL;
            continue;
        }
        if (e->role == QFT_ROLE_FROZEN && !e->ql && !units)
            ops->upload(m->dev_params + e->dev_offset, m->params + e->offset,
                        e->numel * sizeof(float));
        /* adapter tensors have no view (their adapter is attached again below); packed and
         * bf16 weights have none either (their linears read e->ql) */
        if (e->layer == -2 || e->role == QFT_ROLE_QUANTIZED) continue;
        *qft_llama_view_slot(&m->p, e->layer, e->field) =
            e->ql ? NULL : m->dev_params + e->dev_offset;
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
