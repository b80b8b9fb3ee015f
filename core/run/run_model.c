/* The model of a run: loaded from a Hugging Face folder, or random from model.config. */
#include "cpu_ops.h"
#include "hf_model.h"
#include "peft_adapter.h"
#include "qft_ops.h"
#include "run.h"

#include <stdint.h>
#include <string.h>

/* model.config uses config.json's field names so a user can paste from one to the other. */
static int shape_from_config(const config_setting_t *g, int tok_vocab, qft_llama_config *c,
                             qft_err *err) {
    static const char *const keys[] = {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "rms_norm_eps", "rope_theta", "tie_word_embeddings", "initializer_range", NULL};
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        int ok = 0;
        for (const char *const *k = keys; *k; k++) ok |= strcmp(*k, config_setting_name(s)) == 0;
        if (!ok) {
            char where[512];
            return qft_err_setf(err, "%s: unknown key (model.config takes config.json fields: "
                                     "vocab_size, hidden_size, intermediate_size, "
                                     "num_hidden_layers, num_attention_heads, "
                                     "num_key_value_heads, head_dim, max_position_embeddings, "
                                     "rms_norm_eps, rope_theta, tie_word_embeddings, "
                                     "initializer_range)",
                                qft_config_where(s, where, sizeof where));
        }
    }
    qft_llama_config_defaults(c);
    long v;
    double d;
    int b;
    struct {
        const char *key;
        int *dst;
        long def;
    } ints[] = {
        {"vocab_size", &c->vocab_size, tok_vocab},
        {"hidden_size", &c->hidden_size, -1},
        {"intermediate_size", &c->intermediate_size, -1},
        {"num_hidden_layers", &c->num_hidden_layers, -1},
        {"num_attention_heads", &c->num_attention_heads, -1},
        {"num_key_value_heads", &c->num_key_value_heads, 0},
        {"head_dim", &c->head_dim, 0},
        {"max_position_embeddings", &c->max_position_embeddings, 2048},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (qft_cfg_int(g, ints[i].key, ints[i].def, -1, 1 << 24, &v, err)) return -1;
        if (v < 0) {
            char where[512];
            return qft_err_setf(err, "%s: model.config.%s is required",
                                qft_config_where(g, where, sizeof where), ints[i].key);
        }
        *ints[i].dst = (int)v;
    }
    if (c->num_key_value_heads == 0) c->num_key_value_heads = c->num_attention_heads;
    if (c->head_dim == 0 && c->num_attention_heads > 0)
        c->head_dim = c->hidden_size / c->num_attention_heads;
    if (qft_cfg_float(g, "rms_norm_eps", 1e-6, 0, 1, &d, err)) return -1;
    c->rms_norm_eps = (float)d;
    if (qft_cfg_float(g, "rope_theta", 10000.0, 1, 1e12, &d, err)) return -1;
    c->rope_theta = (float)d;
    if (qft_cfg_float(g, "initializer_range", 0.02, 0, 10, &d, err)) return -1;
    c->initializer_range = (float)d;
    if (qft_cfg_bool(g, "tie_word_embeddings", 0, &b, err)) return -1;
    c->tie_word_embeddings = b;
    c->bos_token_id = c->eos_token_id = c->pad_token_id = -1; /* the tokenizer's decide */
    return 0;
}

/* ctx: 1 when a quantizer packs the linears, and (bit 2) when an adapter trains. */
static int run_role(void *ctx, const char *name, int is_linear) {
    (void)name;
    const int flags = (int)(intptr_t)ctx, quant = flags & 1, adapter = flags & 2;
    if (is_linear && quant) return QFT_ROLE_QUANTIZED;
    return adapter ? QFT_ROLE_FROZEN : QFT_ROLE_TRAIN;
}

int qft_run_plan_expansion(const qft_adapter_vtable *avt, const void *astate, int n_src,
                           qft_run_expansion *x, qft_llama_build *b, qft_err *err) {
    x->n_layers = x->n_src_layers = 0;
    if (!avt || !avt->expand) return 0;
    int n = 0;
    if (avt->expand(astate, n_src, x->src, x->is_new, QFT_RUN_MAX_LAYERS, &n, err)) return -1;
    x->n_layers = n, x->n_src_layers = n_src;
    b->layer_src = x->src, b->layer_new = x->is_new, b->n_layers = n, b->n_src_layers = n_src;
    qft_log(QFT_LOG_INFO, "block expansion: %d -> %d layers", n_src, n);
    return 0;
}

/* A streamed build's work as each unit completes, before full sharding cuts it. */
typedef struct unit_stream {
    const char *adapter_path; /* a saved adapter to load, or NULL: draw PEFT's init */
    uint64_t seed;
    qft_run_unit_fn cut;
    void *cut_ctx;
    int started;
} unit_stream;

static int stream_unit(void *ctx, qft_llama_model *m, int u, qft_err *err) {
    unit_stream *st = ctx;
    if (!st->started) {
        /* before the first cut: the gradients' address space, and a saved adapter's
         * tensors (small), written into every unit's ranges while they are still whole */
        st->started = 1;
        if (qft_llama_alloc_grads(m, err) ||
            (st->adapter_path && qft_peft_load(st->adapter_path, m, err)))
            return -1;
    }
    if (qft_llama_attach_unit_adapters(m, u, st->adapter_path == NULL, st->seed, err))
        return -1;
    return st->cut(st->cut_ctx, m, u, err);
}

int qft_run_build_model(const qft_run_config *rc, int tokenizer_vocab, uint64_t seed,
                        const qft_run_data *d, int unit_pad, qft_run_unit_fn cut,
                        void *cut_ctx, qft_llama_model *m, qft_err *err) {
    const intptr_t flags = (d->qvt ? 1 : 0) | (d->avt ? 2 : 0);
    const char *adapter_path = NULL;
    if (qft_cfg_string(rc->sec_adapter, "path", NULL, &adapter_path, err)) return -1;
    if (adapter_path && !d->avt)
        return qft_err_setf(err, "%s: adapter.path is set but the train_type has no adapter",
                            rc->file);
    unit_stream st = {adapter_path, seed, cut, cut_ctx, 0};
    qft_llama_build build = {.role = run_role, .ctx = (void *)flags, .qvt = d->qvt,
                             .qstate = d->qstate, .avt = d->avt, .astate = d->astate,
                             .unit_pad = unit_pad,
                             /* full sharding on another backend maps each unit there at
                              * the host's offsets: its ranges start on the backend's
                              * commit granularity (or the page, where that is larger) */
                             .unit_align = unit_pad && d->ops->vm_granularity
                                               ? d->ops->vm_granularity()
                                               : 0,
                             /* and its frozen dense weights cut as bf16 there when asked */
                             .units_bf16 = unit_pad && d->ops != qft_cpu_ops() &&
                                           strcmp(rc->train.frozen_dtype, "bf16") == 0,
                             .embed_on_host = rc->train.embedding_on_host,
                             .on_unit = unit_pad && cut ? stream_unit : NULL,
                             .unit_ctx = &st};
    static qft_run_expansion x; /* one run per process; too big for the stack */
    qft_llama_config c;
    if (rc->model.path) {
        char path[8192];
        snprintf(path, sizeof path, "%s/config.json", rc->model.path);
        if (qft_hf_config_load(path, &c, err) ||
            qft_run_plan_expansion(d->avt, d->astate, c.num_hidden_layers, &x, &build, err) ||
            qft_hf_model_load_build(rc->model.path, m, &build, err))
            return -1;
    } else {
        if (shape_from_config(rc->model.shape, tokenizer_vocab, &c, err) ||
            qft_run_plan_expansion(d->avt, d->astate, c.num_hidden_layers, &x, &build, err))
            return -1;
        if (build.layer_src) c.num_hidden_layers = build.n_layers;
        if (qft_llama_alloc_build(m, &c, &build, err)) return -1;
        /* unit by unit, as a checkpoint loads (the draws do not depend on the order) */
        for (int u = 0; u < c.num_hidden_layers + 2; u++)
            if (qft_llama_init_random_unit(m, seed, u, err) ||
                qft_llama_expand_unit(m, u, 1, err) ||
                (build.on_unit && build.on_unit(build.unit_ctx, m, u, err)))
                goto fail;
    }
    /* what a streamed build did already as its units completed is not done again */
    if (qft_llama_alloc_grads(m, err)) goto fail;
    if (adapter_path && !st.started && qft_peft_load(adapter_path, m, err)) goto fail;
    if (qft_llama_attach_adapters(m, adapter_path == NULL, seed, err)) goto fail;
    return 0;
fail:
    qft_llama_free(m);
    return -1;
}
