/* Hugging Face Llama folders: config.json plus model.safetensors, or shards listed in
 * model.safetensors.index.json. Loading streams: each file is mapped once, and each
 * tensor goes from the mapping straight into its slot of the fp32 parameter buffer (the
 * pages it came from are then dropped), so peak memory is the fp32 model plus whatever
 * the page cache lends, never a second copy of the weights. */
#include "hf_model.h"
#include "safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ST_SINGLE "model.safetensors"
#define ST_INDEX "model.safetensors.index.json"

typedef struct {
    char name[256]; /* file name inside the model folder */
    qft_st_file f;
} source_file;

typedef struct {
    const char *dir;
    source_file *files;
    int n_files, cap;
    json_t *weight_map; /* tensor name -> file name; NULL for a single file */
} sources;

static void sources_close(sources *s) {
    for (int i = 0; i < s->n_files; i++) qft_st_close(&s->files[i].f);
    free(s->files);
    json_decref(s->weight_map);
    memset(s, 0, sizeof *s);
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int open_source(sources *s, const char *name, qft_err *err) {
    if (s->n_files == s->cap) {
        int cap = s->cap ? s->cap * 2 : 4;
        source_file *nf = realloc(s->files, (size_t)cap * sizeof *nf);
        if (!nf) return qft_err_setf(err, "%s: out of memory", s->dir);
        s->files = nf;
        s->cap = cap;
    }
    source_file *sf = &s->files[s->n_files];
    memset(sf, 0, sizeof *sf);
    snprintf(sf->name, sizeof sf->name, "%s", name);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", s->dir, name) >= (int)sizeof path)
        return qft_err_setf(err, "%s: path too long", s->dir);
    if (qft_st_open(path, &sf->f, err)) return -1;
    s->n_files++;
    return 0;
}

/* Reads the index's weight_map and opens every shard it names, once each. */
static int open_index(sources *s, const char *index_path, qft_err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return qft_err_setf(err, "%s:%d:%d: invalid JSON: %s", index_path, jerr.line,
                            jerr.column, jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(root);
        return qft_err_setf(err, "%s: missing key 'weight_map' (an object of tensor name -> "
                                 "file name)",
                            index_path);
    }
    s->weight_map = json_incref(wm);
    json_decref(root);
    const char *tname;
    json_t *fv;
    json_object_foreach(wm, tname, fv) {
        const char *fn = json_string_value(fv);
        /* shards live beside the index: refuse paths that would leave the folder */
        if (!fn || !*fn || strchr(fn, '/') || strcmp(fn, ".") == 0 || strcmp(fn, "..") == 0 ||
            strlen(fn) >= sizeof s->files[0].name)
            return qft_err_setf(err, "%s: weight_map entry '%s' must be a file name in the "
                                     "same folder",
                                index_path, tname);
        int seen = 0;
        for (int i = 0; i < s->n_files && !seen; i++) seen = strcmp(s->files[i].name, fn) == 0;
        if (!seen && open_source(s, fn, err)) return -1;
    }
    return 0;
}

/* transformers prefers the single file when both exist; so do we. */
static int open_sources(sources *s, const char *dir, qft_err *err) {
    memset(s, 0, sizeof *s);
    s->dir = dir;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, ST_SINGLE);
    if (is_file(path)) return open_source(s, ST_SINGLE, err);
    snprintf(path, sizeof path, "%s/%s", dir, ST_INDEX);
    if (is_file(path)) return open_index(s, path, err);
    return qft_err_setf(err, "%s: neither %s nor %s found", dir, ST_SINGLE, ST_INDEX);
}

/* Where tensor `name` should be: its file and entry; a message naming the folder and the
 * file it was looked for in when it is not there. */
static int locate(const sources *s, const char *name, const source_file **sf,
                  const qft_st_entry **e, qft_err *err) {
    const char *fn = ST_SINGLE;
    if (s->weight_map) {
        fn = json_string_value(json_object_get(s->weight_map, name));
        if (!fn) return qft_err_setf(err, "%s: tensor '%s' not found in %s", s->dir, name, ST_INDEX);
    }
    for (int i = 0; i < s->n_files; i++)
        if (strcmp(s->files[i].name, fn) == 0) {
            *sf = &s->files[i];
            *e = qft_st_find(&s->files[i].f, name);
            if (*e) return 0;
            if (s->weight_map)
                return qft_err_setf(err, "%s: tensor '%s' not found in %s (where %s places it)",
                                    s->dir, name, fn, ST_INDEX);
            return qft_err_setf(err, "%s: tensor '%s' not found in %s", s->dir, name, fn);
        }
    return qft_err_setf(err, "%s: tensor '%s': file %s not open", s->dir, name, fn);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* A tensor "<linear>.<anything>" of a linear the quantizer packs: its statistics in a
 * pre-quantized checkpoint ("...q_proj.weight.absmax" for bitsandbytes). */
static int quantizer_owned(const qft_llama_model *m, const char *name) {
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (e->role != QFT_ROLE_QUANTIZED) continue;
        size_t pl = strlen(e->name) - strlen(".weight"); /* "...q_proj" */
        if (strncmp(name, e->name, pl) == 0 && name[pl] == '.') return 1;
    }
    return 0;
}

/* Every tensor in the files must be a parameter of this config, or a buffer transformers
 * itself ignores. Otherwise the checkpoint is something else (biases, a Mistral or MoE
 * variant, a config.json with too few layers) and loading only the known part would
 * give a model that runs and is silently wrong. */
static int check_extras(const sources *s, const qft_llama_model *m, qft_err *err) {
    char list[1024] = "";
    size_t used = 0;
    int n_bad = 0;
    const char *first_file = NULL;
    for (int i = 0; i < s->n_files; i++) {
        const qft_st_file *f = &s->files[i].f;
        for (int j = 0; j < f->n_entries; j++) {
            const char *name = f->entries[j].name;
            if (qft_llama_find_entry(m, name)) continue;
            if (quantizer_owned(m, name)) continue;
            /* old checkpoints stored RoPE's inverse frequencies; they derive from config */
            if (ends_with(name, "rotary_emb.inv_freq")) continue;
            /* tied: the head is the embedding; transformers drops a stored copy too */
            if (m->cfg.tie_word_embeddings && strcmp(name, "lm_head.weight") == 0) continue;
            if (!first_file) first_file = s->files[i].name;
            if (n_bad++ < 4) {
                int k = snprintf(list + used, sizeof list - used, "%s'%s'", n_bad > 1 ? ", " : "",
                                 name);
                if (k > 0 && used + (size_t)k < sizeof list) used += (size_t)k;
            }
        }
    }
    if (!n_bad) return 0;
    char more[64] = "";
    if (n_bad > 4) snprintf(more, sizeof more, " and %d more", n_bad - 4);
    return qft_err_setf(err,
                        "%s: %s holds %d tensor%s that %s not part of the Llama model config.json "
                        "describes: %s%s (not a Llama checkpoint, or config.json disagrees)",
                        s->dir, first_file, n_bad, n_bad > 1 ? "s" : "", n_bad > 1 ? "are" : "is",
                        list, more);
}

static void fmt_shape(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = 0;
    used += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* The checkpoint as quantizer plugins see it (qft_tensor_source): any tensor by name,
 * whichever shard holds it. Data may be unaligned for its dtype, as in the file. */
static int source_find(void *ctx, const char *name, qft_tensor *t, qft_err *err) {
    const sources *s = ctx;
    for (int i = 0; i < s->n_files; i++) {
        const qft_st_entry *e = qft_st_find(&s->files[i].f, name);
        if (e) {
            *t = e->t;
            return 0;
        }
    }
    (void)err;
    return 1;
}

static int source_get(void *ctx, const char *name, qft_tensor *t, qft_err *err) {
    const sources *s = ctx;
    if (source_find(ctx, name, t, err) == 0) return 0;
    return qft_err_setf(err, "%s: tensor '%s' not found", s->dir, name);
}

/* The checkpoint's name for entry pe: itself, or with block expansion the same tensor of
 * the block it copies ("model.layers.5.x" -> "model.layers.4.x"). */
static const char *source_name(const qft_llama_model *m, const qft_param_entry *pe, char *buf,
                               size_t n) {
    if (!m->layer_src || pe->layer < 0) return pe->name;
    const char *rest = strchr(pe->name + strlen("model.layers."), '.'); /* ".self_attn..." */
    snprintf(buf, n, "model.layers.%d%s", m->layer_src[pe->layer], rest ? rest : "");
    return buf;
}

static int load_tensor(const sources *s, qft_llama_model *m, qft_param_entry *pe,
                       float **scratch, size_t *scratch_n, qft_err *err) {
    char srcbuf[128];
    const char *name = source_name(m, pe, srcbuf, sizeof srcbuf);
    if (pe->role == QFT_ROLE_QUANTIZED) {
        /* a pre-quantized checkpoint first: the quantizer reads its own keys */
        char prefix[96];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(strlen(name) - strlen(".weight")), name);
        qft_tensor_source src = {(void *)s, source_get, source_find, s->dir};
        int rc = m->qvt->load(m->qstate, prefix, pe->shape[0], pe->shape[1], &src, &pe->qw, err);
        if (rc <= 0) return rc;
    }
    const source_file *sf = NULL;
    const qft_st_entry *e = NULL;
    if (locate(s, name, &sf, &e, err)) return -1;
    int same = e->t.ndim == pe->ndim;
    for (int d = 0; same && d < pe->ndim; d++) same = e->t.shape[d] == pe->shape[d];
    if (!same) {
        char got[128], want[128];
        fmt_shape(e->t.shape, e->t.ndim, got, sizeof got);
        fmt_shape(pe->shape, pe->ndim, want, sizeof want);
        return qft_err_setf(err,
                            "%s/%s: tensor '%s' has shape %s but config.json implies %s "
                            "(config.json disagrees with the weights)",
                            s->dir, sf->name, pe->name, got, want);
    }
    qft_dtype dt = e->t.dtype;
    if (dt != QFT_DT_F32 && dt != QFT_DT_BF16 && dt != QFT_DT_F16)
        return qft_err_setf(err, "%s/%s: tensor '%s' has dtype %s; expected F32, BF16 or F16",
                            s->dir, sf->name, pe->name, qft_dtype_name(dt));
    if (pe->role != QFT_ROLE_QUANTIZED) {
        float *dst = m->params + pe->offset; // (numel) slot of this tensor in the flat buffer
        if (qft_st_entry_to_f32(&sf->f, e, dst, err)) return -1;
    } else {
        /* quantized as it arrives: the one dense tensor held at a time, in a scratch buffer
         * reused (grown) from tensor to tensor */
        if (*scratch_n < pe->numel) {
            qft_mem_free(*scratch);
            *scratch = qft_mem_alloc(pe->numel * sizeof(float), "load scratch");
            *scratch_n = *scratch ? pe->numel : 0;
            if (!*scratch) return qft_err_setf(err, "%s: out of memory", pe->name);
        }
        if (qft_st_entry_to_f32(&sf->f, e, *scratch, err) ||
            qft_llama_set_dense(m, pe, *scratch, err))
            return -1;
    }
    qft_st_release(&sf->f, e);
    return 0;
}

int qft_hf_model_load(const char *dir, qft_llama_model *m, qft_err *err) {
    return qft_hf_model_load_build(dir, m, NULL, err);
}

int qft_hf_model_load_build(const char *dir, qft_llama_model *m, const qft_llama_build *build,
                            qft_err *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return qft_err_setf(err, "%s: path too long", dir);
    qft_llama_config cfg;
    if (qft_hf_config_load(path, &cfg, err)) return -1;
    if (build && build->layer_src) {
        if (build->n_src_layers != cfg.num_hidden_layers)
            return qft_err_setf(err, "%s: block expansion planned for %d layers, but the "
                                     "checkpoint has %d", path, build->n_src_layers,
                                cfg.num_hidden_layers);
        cfg.num_hidden_layers = build->n_layers;
    }
    sources s;
    if (open_sources(&s, dir, err)) {
        sources_close(&s);
        return -1;
    }
    if (qft_llama_alloc_build(m, &cfg, build, err)) {
        sources_close(&s);
        return -1;
    }
    int rc = check_extras(&s, m, err);
    float *scratch = NULL;
    size_t scratch_n = 0;
    /* a unit at a time (embedding, blocks, head), each finished before the next loads, so
     * that the build's on_unit can cut it (full sharding) */
    for (int u = 0; !rc && u < m->cfg.num_hidden_layers + 2; u++) {
        for (int i = 0; !rc && i < m->n_entries; i++) {
            qft_param_entry *e = &m->entries[i];
            /* adapter tensors are not in a base checkpoint */
            if (e->layer != -2 && qft_llama_unit_of(m, e) == u)
                rc = load_tensor(&s, m, e, &scratch, &scratch_n, err);
        }
        if (!rc) rc = qft_llama_expand_unit(m, u, 0, err);
        if (!rc && build && build->on_unit) rc = build->on_unit(build->unit_ctx, m, u, err);
    }
    qft_mem_free(scratch);
    sources_close(&s);
    if (rc) qft_llama_free(m);
    return rc;
}

static const char *torch_dtype_name(qft_dtype dt) {
    switch (dt) {
    case QFT_DT_F32: return "float32";
    case QFT_DT_BF16: return "bfloat16";
    case QFT_DT_F16: return "float16";
    default: return NULL;
    }
}

static int sink_add(void *ctx, const char *name, const qft_tensor *t, qft_err *err) {
    return qft_st_writer_add((qft_st_writer *)ctx, name, t, err);
}

int qft_hf_model_save(const char *dir, const qft_llama_model *m, qft_dtype dtype, qft_err *err) {
    return qft_hf_model_save_ex(dir, m, dtype, 0, err);
}

int qft_hf_model_save_ex(const char *dir, const qft_llama_model *m, qft_dtype dtype,
                         int keep_packed, qft_err *err) {
    const char *tdn = torch_dtype_name(dtype);
    if (!tdn)
        return qft_err_setf(err, "%s: cannot save a model as %s (F32, BF16 or F16)", dir,
                            qft_dtype_name(dtype));
    if (qft_mkdir_p(dir, err)) return -1;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, ST_SINGLE) >= (int)sizeof path)
        return qft_err_setf(err, "%s: path too long", dir);
    qft_st_writer w;
    qft_st_writer_init(&w);
    qft_tensor_sink sink = {&w, sink_add};
    /* dequantized copies of packed weights must live until the file is written */
    float **dense = calloc((size_t)m->n_entries, sizeof *dense);
    if (!dense) return qft_err_setf(err, "%s: out of memory", dir);
    /* transformers marks its files so; some loaders check it */
    int rc = qft_st_writer_meta(&w, "format", "pt", err);
    /* The table holds a tied head once, as the embedding, which is how transformers saves
     * it (lm_head.weight is left out of the file). */
    for (int i = 0; !rc && i < m->n_entries; i++) {
        const qft_param_entry *pe = &m->entries[i];
        if (pe->layer == -2) continue; /* adapter tensors: qft_llama_adapter_save */
        qft_tensor t = {.dtype = QFT_DT_F32, .ndim = pe->ndim, .data = m->params + pe->offset};
        for (int d = 0; d < pe->ndim; d++) t.shape[d] = pe->shape[d];
        if (pe->role == QFT_ROLE_QUANTIZED && keep_packed) {
            char prefix[96];
            snprintf(prefix, sizeof prefix, "%.*s", (int)(strlen(pe->name) - strlen(".weight")),
                     pe->name);
            rc = m->qvt->save(pe->qw, prefix, &sink, err);
            continue;
        }
        /* packed weights are dequantized and adapters merged into their linears */
        if (pe->role == QFT_ROLE_QUANTIZED || (pe->layer >= 0 && m->n_adapted)) {
            dense[i] = malloc(pe->numel * sizeof(float));
            if (!dense[i]) {
                rc = qft_err_setf(err, "%s: out of memory dequantizing %s", dir, pe->name);
                break;
            }
            rc = qft_llama_get_merged(m, pe, dense[i], err);
            t.data = dense[i];
        }
        if (!rc) rc = qft_st_writer_add_f32(&w, pe->name, &t, dtype, err);
    }
    if (!rc) rc = qft_st_write(&w, path, err);
    qft_st_writer_free(&w);
    for (int i = 0; i < m->n_entries; i++) free(dense[i]);
    free(dense);
    if (rc) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return qft_hf_config_save(path, &m->cfg, tdn, err);
}
