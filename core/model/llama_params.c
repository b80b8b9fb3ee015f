/* The parameter table: every tensor of the model in one fp32 allocation, named as Hugging
 * Face names it, so that loading, saving, the optimizer and (later) sharding walk one flat
 * buffer instead of a list of tensors. */
#include "llama.h"

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

static int add_entry(qft_llama_model *m, int *cap, size_t *off, const char *name, int64_t d0,
                     int64_t d1, float **ptr) {
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
    e->offset = *off;
    *off += e->numel;
    *ptr = (float *)(uintptr_t)e->offset; /* an offset for now; rebased after allocation */
    return 0;
}

/* Lays out entries and sets the pointer table `v` relative to `base`. */
static void rebase(const qft_llama_model *m, const qft_llama_ptrs *offs, qft_llama_ptrs *v,
                   float *base) {
#define REB(field) ((float *)(base + (uintptr_t)(field)))
    int L = m->cfg.num_hidden_layers;
    v->embed = REB(offs->embed);
    v->norm = REB(offs->norm);
    v->lm_head = REB(offs->lm_head);
    for (int l = 0; l < L; l++) {
        const qft_llama_layer_ptrs *o = &offs->layers[l];
        qft_llama_layer_ptrs *d = &v->layers[l];
        d->ln1 = REB(o->ln1), d->wq = REB(o->wq), d->wk = REB(o->wk), d->wv = REB(o->wv);
        d->wo = REB(o->wo), d->ln2 = REB(o->ln2), d->wgate = REB(o->wgate);
        d->wup = REB(o->wup), d->wdown = REB(o->wdown);
    }
#undef REB
}

int qft_llama_alloc(qft_llama_model *m, const qft_llama_config *cfg, qft_err *err) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int C = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size;
    const int L = cfg->num_hidden_layers, H = cfg->num_attention_heads;
    const int KV = cfg->num_key_value_heads, hd = cfg->head_dim;
    if (C <= 0 || I <= 0 || V <= 0 || L <= 0 || H <= 0 || KV <= 0 || hd <= 0 || H % KV != 0)
        return qft_err_setf(err, "invalid Llama shape: hidden %d, intermediate %d, vocab %d, "
                                 "layers %d, heads %d, kv heads %d, head_dim %d",
                            C, I, V, L, H, KV, hd);
    qft_llama_ptrs offs = {0};
    offs.layers = calloc((size_t)L, sizeof *offs.layers);
    m->p.layers = calloc((size_t)L, sizeof *m->p.layers);
    if (!offs.layers || !m->p.layers) goto oom;
    int cap = 0;
    size_t off = 0;
    char name[96];
    if (add_entry(m, &cap, &off, "model.embed_tokens.weight", V, C, &offs.embed)) goto oom;
    for (int l = 0; l < L; l++) {
        qft_llama_layer_ptrs *o = &offs.layers[l];
        struct {
            const char *suffix;
            int64_t d0, d1;
            float **ptr;
        } t[] = {
            {"input_layernorm.weight", C, 0, &o->ln1},
            {"self_attn.q_proj.weight", (int64_t)H * hd, C, &o->wq},
            {"self_attn.k_proj.weight", (int64_t)KV * hd, C, &o->wk},
            {"self_attn.v_proj.weight", (int64_t)KV * hd, C, &o->wv},
            {"self_attn.o_proj.weight", C, (int64_t)H * hd, &o->wo},
            {"post_attention_layernorm.weight", C, 0, &o->ln2},
            {"mlp.gate_proj.weight", I, C, &o->wgate},
            {"mlp.up_proj.weight", I, C, &o->wup},
            {"mlp.down_proj.weight", C, I, &o->wdown},
        };
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, t[k].suffix);
            if (add_entry(m, &cap, &off, name, t[k].d0, t[k].d1, t[k].ptr)) goto oom;
        }
    }
    if (add_entry(m, &cap, &off, "model.norm.weight", C, 0, &offs.norm)) goto oom;
    if (cfg->tie_word_embeddings)
        offs.lm_head = offs.embed;
    else if (add_entry(m, &cap, &off, "lm_head.weight", V, C, &offs.lm_head))
        goto oom;
    m->n_params = off;
    m->params = qft_mem_calloc(off * sizeof(float), "parameters");
    if (!m->params) goto oom;
    rebase(m, &offs, &m->p, m->params);
    free(offs.layers);
    return 0;
oom:
    free(offs.layers);
    qft_llama_free(m);
    return qft_err_setf(err, "out of memory allocating Llama parameters");
}

const qft_param_entry *qft_llama_find_entry(const qft_llama_model *m, const char *name) {
    for (int i = 0; i < m->n_entries; i++)
        if (strcmp(m->entries[i].name, name) == 0) return &m->entries[i];
    return NULL;
}

void qft_llama_init_random(qft_llama_model *m, uint64_t seed) {
    qft_rng root, r;
    qft_rng_seed(&root, seed);
    qft_rng_fork(&root, "llama_init", &r);
    const float std = m->cfg.initializer_range > 0 ? m->cfg.initializer_range : 0.02f;
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        float *p = m->params + e->offset;
        if (e->ndim == 1) /* RMSNorm weights */
            for (size_t j = 0; j < e->numel; j++) p[j] = 1.0f;
        else
            for (size_t j = 0; j < e->numel; j++) p[j] = std * qft_rng_normal(&r);
    }
}

/* The gradient views mirror the parameter views: same offsets into another buffer. */
int qft_llama_alloc_grads(qft_llama_model *m, qft_err *err) {
    if (m->grads) return 0;
    m->grads = qft_mem_calloc(m->n_params * sizeof(float), "gradients");
    m->g.layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *m->g.layers);
    if (!m->grads || !m->g.layers) return qft_err_setf(err, "out of memory allocating gradients");
#define G(ptr) (m->grads + ((ptr) - m->params)) /* same offset, other buffer */
    m->g.embed = G(m->p.embed);
    m->g.norm = G(m->p.norm);
    m->g.lm_head = G(m->p.lm_head);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        const qft_llama_layer_ptrs *s = &m->p.layers[l];
        qft_llama_layer_ptrs *g = &m->g.layers[l];
        g->ln1 = G(s->ln1), g->wq = G(s->wq), g->wk = G(s->wk), g->wv = G(s->wv);
        g->wo = G(s->wo), g->ln2 = G(s->ln2), g->wgate = G(s->wgate);
        g->wup = G(s->wup), g->wdown = G(s->wdown);
    }
#undef G
    return 0;
}

void qft_llama_zero_grads(qft_llama_model *m) {
    if (m->grads) memset(m->grads, 0, m->n_params * sizeof(float));
}

void qft_llama_free(qft_llama_model *m) {
    qft_llama_acts_free(m);
    qft_mem_free(m->params);
    qft_mem_free(m->grads);
    free(m->entries);
    free(m->p.layers);
    free(m->g.layers);
    m->params = m->grads = NULL;
    m->entries = NULL;
    m->p.layers = m->g.layers = NULL;
    m->n_entries = 0;
}
