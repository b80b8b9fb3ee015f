#include "peft_adapter.h"
#include "safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int is_adapter(const qft_param_entry *e) { return e->layer == -2; }

/* adapter_config.json: the plugin's members (r, lora_alpha, target_modules, use_dora, ...)
 * over PEFT's defaults for the rest, keys sorted and indented as PEFT's json.dumps. */
static int write_config(const char *path, const qft_llama_model *m, const char *base,
                        qft_err *err) {
    char members[8192] = "";
    if (m->avt->peft_config && m->avt->peft_config(m->astate, members, sizeof members, err))
        return -1;
    size_t n = strlen(members);
    char *text = malloc(n + 3);
    if (!text) return qft_err_setf(err, "%s: out of memory", path);
    snprintf(text, n + 3, "{%s}", members);
    json_error_t je;
    json_t *own = json_loads(text, 0, &je);
    free(text);
    if (!own)
        return qft_err_setf(err, "%s: the adapter plugin's peft_config is not JSON members: %s",
                            path, je.text);
    json_t *c = json_pack("{s:{}, s:n, s:s, s:s, s:b, s:b, s:b, s:n, s:n, s:i, s:f, s:n, s:s, "
                          "s:i, s:{}, s:n, s:n, s:s, s:b, s:b}",
                          "alpha_pattern", "auto_mapping", "base_model_name_or_path",
                          base ? base : "", "bias", "none", "fan_in_fan_out", 0,
                          "inference_mode", 1, "init_lora_weights", 1, "layers_pattern",
                          "layers_to_transform", "lora_alpha", 8, "lora_dropout", 0.0,
                          "modules_to_save", "peft_type", "LORA", "r", 8, "rank_pattern",
                          "revision", "target_modules", "task_type", "CAUSAL_LM", "use_dora", 0,
                          "use_rslora", 0);
    if (!c) {
        json_decref(own);
        return qft_err_setf(err, "%s: out of memory", path);
    }
    json_object_update(c, own);
    json_decref(own);
    char *out = json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(c);
    if (!out) return qft_err_setf(err, "%s: cannot serialise", path);
    int rc = qft_atomic_write(path, out, strlen(out), err);
    free(out);
    return rc;
}

int qft_peft_save(const char *dir, const qft_llama_model *m, const char *base_model_name,
                  qft_err *err) {
    if (!m->avt) return qft_err_setf(err, "%s: the model has no adapter to save", dir);
    if (qft_mkdir_p(dir, err)) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    qft_st_writer w;
    qft_st_writer_init(&w);
    int rc = qft_st_writer_meta(&w, "format", "pt", err);
    for (int i = 0; !rc && i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (!is_adapter(e)) continue;
        qft_tensor t = {.dtype = QFT_DT_F32, .ndim = e->ndim, .data = m->params + e->offset};
        for (int d = 0; d < e->ndim; d++) t.shape[d] = e->shape[d];
        rc = qft_st_writer_add(&w, e->name, &t, err);
    }
    if (!rc) rc = qft_st_write(&w, path, err);
    qft_st_writer_free(&w);
    if (rc) return -1;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return write_config(path, m, base_model_name, err);
}

int qft_peft_load(const char *dir, qft_llama_model *m, qft_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    qft_st_file f;
    if (qft_st_open(path, &f, err)) return -1;
    int rc = 0;
    for (int i = 0; !rc && i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (!is_adapter(e)) continue;
        const qft_st_entry *t = qft_st_find(&f, e->name);
        if (!t) {
            rc = qft_err_setf(err, "%s: tensor '%s' not found (the adapter config — rank, "
                                   "target_modules, DoRA — differs from the saved one?)",
                              path, e->name);
            break;
        }
        int same = t->t.ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = t->t.shape[d] == e->shape[d];
        if (!same) {
            rc = qft_err_setf(err, "%s: tensor '%s' has shape [%lld%s%lld] but the adapter "
                                   "declares [%lld%s%lld]", path, e->name,
                              (long long)t->t.shape[0], t->t.ndim > 1 ? ", " : "",
                              t->t.ndim > 1 ? (long long)t->t.shape[1] : 0LL,
                              (long long)e->shape[0], e->ndim > 1 ? ", " : "",
                              e->ndim > 1 ? (long long)e->shape[1] : 0LL);
            break;
        }
        rc = qft_st_entry_to_f32(&f, t, m->params + e->offset, err);
    }
    for (int j = 0; !rc && j < f.n_entries; j++) {
        const qft_param_entry *e = qft_llama_find_entry(m, f.entries[j].name);
        if (!e || !is_adapter(e))
            rc = qft_err_setf(err, "%s: tensor '%s' is not a tensor of this adapter (different "
                                   "target_modules?)", path, f.entries[j].name);
    }
    qft_st_close(&f);
    return rc;
}
