/* The parameter table: every tensor of the model named as Hugging Face names it, the dense
 * ones in one fp32 allocation (trainable first, then frozen) with a pointer table, the
 * quantized ones packed by their quantizer. Loading, saving, the optimizer and (later)
 * sharding walk the table and the flat buffer instead of a list of tensors. */
#include "llama_internal.h"

#include <stdlib.h>
#include <string.h>

void qft_llama_config_defaults(qft_llama_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    /* transformers' LlamaConfig defaults (the 7B shape) */
    cfg->vocab_size = 32000;
    cfg->hidden_size = 4096;
    cfg->intermediate_size = 11008;
    cfg->num_hidden_layers = 32;
    cfg->num_attention_heads = 32;
    cfg->num_key_value_heads = 0; /* 0 = same as heads, resolved by the loader */
    cfg->head_dim = 0;            /* 0 = hidden / heads, resolved by the loader */
    cfg->max_position_embeddings = 2048;
    cfg->rms_norm_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->rope_type = QFT_ROPE_DEFAULT;
    cfg->bos_token_id = 1;
    cfg->eos_token_id = 2;
    cfg->pad_token_id = -1;
    cfg->initializer_range = 0.02f;
}

/* The adapter tensor an entry of layer -2 stands for (field encodes layer, linear, index). */
static qft_adapter_param *adapter_param(qft_llama_model *m, const qft_param_entry *e) {
    const int i = e->field % QFT_ADAPTER_MAX_PARAMS, lk = e->field / QFT_ADAPTER_MAX_PARAMS;
    return &m->adapted[lk / QFT_LIN_COUNT][lk % QFT_LIN_COUNT]->params[i];
}

float **qft_llama_view_slot(qft_llama_ptrs *v, int layer, int field) {
    if (layer < 0) return field == 0 ? &v->embed : field == 1 ? &v->norm : &v->lm_head;
    qft_llama_layer_ptrs *y = &v->layers[layer];
    float **f[] = {&y->ln1, &y->wq,    &y->wk,  &y->wv,   &y->wo,
                   &y->ln2, &y->wgate, &y->wup, &y->wdown};
    return f[field];
}

static int add_entry(qft_llama_model *m, int *cap, const char *name, int64_t d0, int64_t d1,
                     int layer, int field) {
    if (m->n_entries == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        qft_param_entry *ne = realloc(m->entries, (size_t)*cap * sizeof *ne);
        if (!ne) return -1;
        m->entries = ne;
    }
    qft_param_entry *e = &m->entries[m->n_entries++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->ndim = d1 > 0 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1 > 0 ? d1 : 0;
    e->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    e->layer = layer;
    e->field = field;
    return 0;
}

/* Field index of each block linear in qft_llama_layer_ptrs. */
static const int k_lin_field[QFT_LIN_COUNT] = {1, 2, 3, 4, 6, 7, 8};

static int make_entries(qft_llama_model *m, int *capp, qft_err *err) {
    const qft_llama_config *c = &m->cfg;
    const int C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    const int L = c->num_hidden_layers, H = c->num_attention_heads;
    const int KV = c->num_key_value_heads, hd = c->head_dim;
    int cap = 0;
    int rc = -1;
    char name[96];
    if (add_entry(m, &cap, "model.embed_tokens.weight", V, C, -1, 0)) goto oom;
    for (int l = 0; l < L; l++) {
        static const char *const suffix[9] = {
            "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
            "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
        const int64_t shape[9][2] = {{C, 0},  {(int64_t)H * hd, C}, {(int64_t)KV * hd, C},
                                     {(int64_t)KV * hd, C}, {C, (int64_t)H * hd}, {C, 0},
                                     {I, C},  {I, C},        {C, I}};
        for (int k = 0; k < 9; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix[k]);
            if (add_entry(m, &cap, name, shape[k][0], shape[k][1], l, k)) goto oom;
        }
        for (int k = 0; k < QFT_LIN_COUNT; k++)
            m->lin_entry[l][k] = m->n_entries - 9 + k_lin_field[k];
    }
    if (add_entry(m, &cap, "model.norm.weight", C, 0, -1, 1)) goto oom;
    if (!c->tie_word_embeddings && add_entry(m, &cap, "lm_head.weight", V, C, -1, 2)) goto oom;
    rc = 0;
oom:
    *capp = cap;
    if (rc) qft_err_setf(err, "out of memory allocating the Llama parameter table");
    return rc;
}

static const char *const k_lin_module[QFT_LIN_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"};

/* The adapter's tensors for every linear it targets, as trainable entries named as PEFT
 * saves them. The adapted records are filled here; their base callbacks at attach. */
static int declare_adapters(qft_llama_model *m, int *cap, qft_err *err) {
    const int L = m->cfg.num_hidden_layers;
    m->adapted = calloc((size_t)L, sizeof *m->adapted);
    if (!m->adapted) return qft_err_setf(err, "out of memory");
    for (int l = 0; l < L; l++)
        for (int k = 0; k < QFT_LIN_COUNT; k++) {
            const qft_param_entry *e = &m->entries[m->lin_entry[l][k]];
            qft_llama_adapted *ad = calloc(1, sizeof *ad);
            if (!ad) return qft_err_setf(err, "out of memory");
            snprintf(ad->name, sizeof ad->name, "%.*s", (int)(strlen(e->name) - strlen(".weight")),
                     e->name);
            ad->m = m, ad->layer = l, ad->k = k;
            ad->base.name = ad->name;
            ad->base.module = k_lin_module[k];
            ad->base.layer = l;
            ad->base.out = e->shape[0], ad->base.in = e->shape[1];
            ad->base.ctx = ad;
            if (!m->avt->targets(m->astate, &ad->base)) {
                free(ad);
                continue;
            }
            if (m->avt->declare(m->astate, &ad->base, ad->params, &ad->n_params, err)) {
                free(ad);
                return -1;
            }
            if (ad->n_params < 0 || ad->n_params > QFT_ADAPTER_MAX_PARAMS) {
                int n = ad->n_params;
                free(ad);
                return qft_err_setf(err, "%s: adapter declared %d tensors (at most %d)",
                                    e->name, n, QFT_ADAPTER_MAX_PARAMS);
            }
            for (int i = 0; i < ad->n_params; i++)
                ad->row_scaled |= ad->params[i].ndim == 1 && ad->params[i].shape[0] == ad->base.out;
            m->adapted[l][k] = ad;
            m->n_adapted++;
            ad->first_entry = m->n_entries;
            for (int i = 0; i < ad->n_params; i++) {
                const qft_adapter_param *pp = &ad->params[i];
                char name[96 + 64];
                snprintf(name, sizeof name, "base_model.model.%s.%s", ad->name, pp->suffix);
                if (strlen(name) >= sizeof m->entries[0].name)
                    return qft_err_setf(err, "%s: adapter tensor name too long", name);
                if (pp->ndim < 1 || pp->ndim > 2 || pp->shape[0] <= 0 ||
                    (pp->ndim == 2 && pp->shape[1] <= 0))
                    return qft_err_setf(err, "%s: adapter declared an invalid shape", name);
                if (add_entry(m, cap, name, pp->shape[0], pp->ndim == 2 ? pp->shape[1] : 0, -2,
                              (l * QFT_LIN_COUNT + k) * QFT_ADAPTER_MAX_PARAMS + i))
                    return qft_err_setf(err, "out of memory");
            }
        }
    return 0;
}

static int is_linear(const qft_param_entry *e) {
    return e->layer >= 0 && e->field != 0 && e->field != 5;
}

int qft_llama_alloc_build(qft_llama_model *m, const qft_llama_config *cfg,
                          const qft_llama_build *build, qft_err *err) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int C = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size;
    const int L = cfg->num_hidden_layers, H = cfg->num_attention_heads;
    const int KV = cfg->num_key_value_heads, hd = cfg->head_dim;
    if (C <= 0 || I <= 0 || V <= 0 || L <= 0 || H <= 0 || KV <= 0 || hd <= 0 || H % KV != 0)
        return qft_err_setf(err, "invalid Llama shape: hidden %d, intermediate %d, vocab %d, "
                                 "layers %d, heads %d, kv heads %d, head_dim %d",
                            C, I, V, L, H, KV, hd);
    m->p.layers = calloc((size_t)L, sizeof *m->p.layers);
    m->lin_entry = calloc((size_t)L, sizeof *m->lin_entry);
    if (!m->p.layers || !m->lin_entry) {
        qft_llama_free(m);
        return qft_err_setf(err, "out of memory allocating the Llama parameter table");
    }
    int cap = 0;
    if (build) m->qvt = build->qvt, m->qstate = build->qstate;
    if (build) m->avt = build->avt, m->astate = build->astate;
    if (make_entries(m, &cap, err) || (m->avt && declare_adapters(m, &cap, err))) {
        qft_llama_free(m);
        return -1;
    }
    if (build && build->layer_src) {
        m->layer_src = malloc((size_t)L * sizeof(int));
        m->layer_new = malloc((size_t)L * sizeof(int));
        if (!m->layer_src || !m->layer_new) {
            qft_llama_free(m);
            return qft_err_setf(err, "out of memory");
        }
        memcpy(m->layer_src, build->layer_src, (size_t)L * sizeof(int));
        memcpy(m->layer_new, build->layer_new, (size_t)L * sizeof(int));
    }
    /* roles, then offsets: trainable tensors first so they form one prefix */
    for (int i = 0; i < m->n_entries; i++) {
        qft_param_entry *e = &m->entries[i];
        e->role = e->layer == -2 ? QFT_ROLE_TRAIN /* adapter tensors train */
                  : e->layer >= 0 && m->layer_new && m->layer_new[e->layer]
                      ? QFT_ROLE_TRAIN /* inserted blocks train, dense */
                  : build && build->role ? build->role(build->ctx, e->name, is_linear(e))
                                         : QFT_ROLE_TRAIN;
        if (e->role == QFT_ROLE_QUANTIZED && (!is_linear(e) || !m->qvt)) {
            int lin = is_linear(e);
            qft_llama_free(m);
            return qft_err_setf(err, "%s: only a block's linear weights can be quantized, and "
                                     "only with a quantizer (%s)",
                                e->name, lin ? "none given" : "not a block linear");
        }
    }
    if (build && build->unit_pad > 0) {
        m->embed_on_host = build->embed_on_host; /* which entries units_bf16 takes */
        if (qft_llama_units_layout(m, build->unit_pad, build->unit_align,
                                   build->units_bf16, err)) {
            qft_llama_free(m);
            return -1;
        }
    } else {
        size_t off = 0;
        for (int pass = QFT_ROLE_TRAIN; pass <= QFT_ROLE_FROZEN; pass++) {
            for (int i = 0; i < m->n_entries; i++) {
                qft_param_entry *e = &m->entries[i];
                if (e->role != pass) continue;
                e->offset = off;
                off += e->numel;
            }
            if (pass == QFT_ROLE_TRAIN) m->n_trainable = off;
        }
        m->n_params = off;
    }
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i].role == QFT_ROLE_QUANTIZED) m->n_quantized += m->entries[i].numel;
    const size_t off = m->n_params;
    m->params = m->units ? qft_vm_reserve(off * sizeof(float), err)
                         : qft_mem_calloc((off ? off : 1) * sizeof(float), "parameters");
    if (!m->params) {
        qft_llama_free(m);
        return qft_err_setf(err, "out of memory allocating %zu Llama parameters", off);
    }
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (e->layer == -2)
            adapter_param(m, e)->data = m->params + e->offset;
        else
            *qft_llama_view_slot(&m->p, e->layer, e->field) =
                e->role == QFT_ROLE_QUANTIZED ? NULL : m->params + e->offset;
    }
    if (cfg->tie_word_embeddings) m->p.lm_head = m->p.embed;
    return 0;
}

int qft_llama_alloc(qft_llama_model *m, const qft_llama_config *cfg, qft_err *err) {
    return qft_llama_alloc_build(m, cfg, NULL, err);
}

const qft_param_entry *qft_llama_find_entry(const qft_llama_model *m, const char *name) {
    for (int i = 0; i < m->n_entries; i++)
        if (strcmp(m->entries[i].name, name) == 0) return &m->entries[i];
    return NULL;
}

int qft_llama_set_dense(qft_llama_model *m, qft_param_entry *e, const float *w, qft_err *err) {
    if (e->role != QFT_ROLE_QUANTIZED) {
        memcpy(m->params + e->offset, w, e->numel * sizeof(float));
        return 0;
    }
    if (e->qw) m->qvt->free_weight(e->qw);
    e->qw = NULL;
    return m->qvt->quantize(m->qstate, e->name, w, e->shape[0], e->shape[1], &e->qw, err);
}

int qft_llama_get_dense(const qft_llama_model *m, const qft_param_entry *e, float *dst,
                        qft_err *err) {
    if (e->role != QFT_ROLE_QUANTIZED) {
        memcpy(dst, m->params + e->offset, e->numel * sizeof(float));
        return 0;
    }
    if (!e->qw) return qft_err_setf(err, "%s: quantized weight not set", e->name);
    return m->qvt->dequantize_rows(e->qw, 0, e->shape[0], dst, err);
}

int qft_llama_get_merged(const qft_llama_model *m, const qft_param_entry *e, float *dst,
                         qft_err *err) {
    if (e->layer >= 0 && m->adapted) {
        for (int k = 0; k < QFT_LIN_COUNT; k++) {
            const qft_llama_adapted *ad = m->adapted[e->layer][k];
            if (ad && ad->al && &m->entries[m->lin_entry[e->layer][k]] == e)
                return m->avt->merge_rows(ad->al, 0, e->shape[0], dst, err);
        }
    }
    return qft_llama_get_dense(m, e, dst, err);
}

/* The block an inserted block copies: the first original block with its source layer. */
static int expand_from(const qft_llama_model *m, int l) {
    for (int j = 0; j < m->cfg.num_hidden_layers; j++)
        if (!m->layer_new[j] && m->layer_src[j] == m->layer_src[l]) return j;
    return -1;
}

int qft_llama_expand_unit(qft_llama_model *m, int u, int copy, qft_err *err) {
    const int L = m->cfg.num_hidden_layers, j = u - 1;
    if (!m->layer_new || j < 0 || j >= L) return 0;
    if (!m->layer_new[j]) {
        if (!copy) return 0;
        /* an original block, complete: the inserted blocks that copy it take its tensors
         * now, while it is whole (a streamed load cuts it next) */
        for (int l = j + 1; l < L; l++) {
            if (!m->layer_new[l] || expand_from(m, l) != j) continue;
            for (int i = 0; i < m->n_entries; i++) {
                const qft_param_entry *d = &m->entries[i];
                if (d->layer != l) continue;
                for (int k = 0; k < m->n_entries; k++) {
                    const qft_param_entry *sE = &m->entries[k];
                    if (sE->layer == j && sE->field == d->field &&
                        qft_llama_get_dense(m, sE, m->params + d->offset, err))
                        return -1;
                }
            }
        }
        return 0;
    }
    if (copy) { /* it took its source's tensors when that unit was complete */
        const int from = expand_from(m, j);
        if (from < 0) return qft_err_setf(err, "block %d: its source block is missing", j);
        if (from > j)
            return qft_err_setf(err, "block %d: its source block %d comes after it (inserted "
                                     "blocks follow the blocks they copy)", j, from);
    }
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (e->layer == j && (e->field == 4 || e->field == 8)) /* o_proj, down_proj */
            memset(m->params + e->offset, 0, e->numel * sizeof(float));
    }
    return 0;
}

/* Elements per stream of the random init: each chunk of a tensor draws from its own stream
 * (forked from the tensor's by the chunk's index), so chunks fill in parallel and the
 * values depend on neither the thread count nor the order tensors are visited in. An
 * 8B-shaped model draws 8e9 normals: one thread takes minutes for it. */
#define QFT_LLAMA_INIT_CHUNK ((size_t)1 << 20)

static void fill_normal(const qft_rng *tensor, float *p, size_t n, float std) {
    const long long chunks = (long long)((n + QFT_LLAMA_INIT_CHUNK - 1) / QFT_LLAMA_INIT_CHUNK);
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
    for (long long c = 0; c < chunks; c++) {
        char key[32];
        snprintf(key, sizeof key, "chunk %lld", c);
        qft_rng r;
        qft_rng_fork(tensor, key, &r);
        const size_t lo = (size_t)c * QFT_LLAMA_INIT_CHUNK;
        const size_t hi = lo + QFT_LLAMA_INIT_CHUNK < n ? lo + QFT_LLAMA_INIT_CHUNK : n;
        size_t j = lo;
        for (; j + 1 < hi; j += 2) {
            float a, b;
            qft_rng_normal_pair(&r, &a, &b);
            p[j] = std * a, p[j + 1] = std * b;
        }
        if (j < hi) p[j] = std * qft_rng_normal(&r);
    }
}

int qft_llama_init_random_unit(qft_llama_model *m, uint64_t seed, int u, qft_err *err) {
    qft_rng root, r;
    qft_rng_seed(&root, seed);
    qft_rng_fork(&root, "llama_init", &r);
    const float std = m->cfg.initializer_range > 0 ? m->cfg.initializer_range : 0.02f;
    float *tmp = NULL; /* one dense tensor at a time for quantized entries */
    int rc = 0;
    for (int i = 0; !rc && i < m->n_entries; i++) {
        qft_param_entry *e = &m->entries[i];
        float *p = m->params + e->offset;
        if (e->layer == -2) continue; /* adapter tensors: the adapter's init, at attach */
        /* an inserted block copies its source block (qft_llama_expand_unit) */
        if (e->layer >= 0 && m->layer_new && m->layer_new[e->layer]) continue;
        if (qft_llama_unit_of(m, e) != u) continue;
        if (e->role == QFT_ROLE_QUANTIZED) {
            free(tmp);
            tmp = malloc(e->numel * sizeof(float));
            if (!tmp) return qft_err_setf(err, "%s: out of memory", e->name);
            p = tmp;
        }
        if (e->ndim == 1) /* RMSNorm weights */
            for (size_t j = 0; j < e->numel; j++) p[j] = 1.0f;
        else {
            qft_rng t; /* the tensor's own stream, by its name */
            qft_rng_fork(&r, e->name, &t);
            fill_normal(&t, p, e->numel, std);
        }
        if (e->role == QFT_ROLE_QUANTIZED) rc = qft_llama_set_dense(m, e, tmp, err);
    }
    free(tmp);
    return rc;
}

int qft_llama_init_random(qft_llama_model *m, uint64_t seed, qft_err *err) {
    for (int u = 0; u < m->cfg.num_hidden_layers + 2; u++)
        if (qft_llama_init_random_unit(m, seed, u, err)) return -1;
    return 0;
}

size_t qft_llama_weight_bytes(const qft_llama_model *m) {
    size_t b = m->n_params * sizeof(float);
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i].qw) b += m->qvt->bytes(m->entries[i].qw);
    return b;
}

/* The gradient views mirror the parameter views of trainable tensors: same offsets into a
 * buffer of n_trainable floats; frozen and packed tensors have none. */
int qft_llama_alloc_grads(qft_llama_model *m, qft_err *err) {
    if (m->grads) return 0;
    m->grads = m->units ? qft_vm_reserve(m->n_trainable * sizeof(float), err)
                        : qft_mem_calloc((m->n_trainable ? m->n_trainable : 1) * sizeof(float),
                                         "gradients");
    m->g.layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *m->g.layers);
    if (!m->grads || !m->g.layers) return qft_err_setf(err, "out of memory allocating gradients");
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (e->layer == -2)
            adapter_param(m, e)->grad = m->grads + e->offset;
        else
            *qft_llama_view_slot(&m->g, e->layer, e->field) =
                e->role == QFT_ROLE_TRAIN ? m->grads + e->offset : NULL;
    }
    if (m->cfg.tie_word_embeddings) m->g.lm_head = m->g.embed;
    return 0;
}

void qft_llama_zero_grads(qft_llama_model *m) {
    /* releasing zeroes too, and leaves untouched pages untouched (a sharded run's grads
     * are resident only while a unit's backward fills them) */
    if (m->dev_grads && m->units)
        return; /* full sharding decommitted each unit's range after reducing it */
    if (m->dev_grads)
        m->ops->zero(m->dev_grads, m->n_trainable);
    else if (m->grads && m->units)
        qft_vm_release(m->grads, m->n_trainable * sizeof(float));
    else if (m->grads)
        memset(m->grads, 0, m->n_trainable * sizeof(float));
}

void qft_llama_free(qft_llama_model *m) {
    qft_llama_acts_free(m);
    if (m->adapted) {
        for (int l = 0; l < m->cfg.num_hidden_layers; l++)
            for (int k = 0; k < QFT_LIN_COUNT; k++) {
                qft_llama_adapted *ad = m->adapted[l][k];
                if (ad && ad->al) m->avt->detach(ad->al);
                free(ad);
            }
        free(m->adapted);
        m->adapted = NULL;
    }
    /* after the adapters, whose buffers may be the backend's too */
    qft_llama_backend_free(m);
    m->ops = NULL;
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i].qw) m->qvt->free_weight(m->entries[i].qw);
    if (m->units) {
        qft_vm_free(m->params, m->n_params * sizeof(float));
        qft_vm_free(m->grads, m->n_trainable * sizeof(float));
        qft_vm_free(m->packed, m->packed_cap);
    } else {
        qft_mem_free(m->params);
        qft_mem_free(m->grads);
    }
    free(m->units);
    m->units = NULL, m->packed = NULL, m->n_units = 0;
    free(m->entries);
    free(m->lin_entry);
    free(m->layer_src);
    free(m->layer_new);
    m->layer_src = m->layer_new = NULL;
    free(m->p.layers);
    free(m->g.layers);
    m->params = m->grads = NULL;
    m->entries = NULL;
    m->lin_entry = NULL;
    m->p.layers = m->g.layers = NULL;
    m->n_entries = 0;
}
