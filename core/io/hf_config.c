/* Hugging Face config.json <-> qft_llama_config. Reading accepts what transformers 4 and 5
 * write (rope_theta + rope_scaling, or 5's rope_parameters; torch_dtype or dtype) and
 * refuses anything the Llama code here would silently compute wrongly: another
 * model_type, biases, another activation, an unknown RoPE scaling. Every message starts
 * with the file and names the key. */
#include "hf_model.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *file;
    qft_err *err;
} ctx;

static void repr(const json_t *v, char *buf, size_t n) {
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, n, "%s", s ? s : "?");
    free(s);
}

static int check_int(const ctx *c, json_t *v, const char *shown, int min, int *out) {
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > INT_MAX) {
        char r[96];
        repr(v, r, sizeof r);
        return qft_err_setf(c->err, "%s: key '%s' must be a %s integer, got %s", c->file, shown,
                            min > 0 ? "positive" : "non-negative", r);
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* 1 = absent or null (caller keeps its default), 0 = read, -1 = error. min is 1 for sizes
 * ("positive integer") and 0 for token ids ("non-negative integer"). */
static int get_int(const ctx *c, json_t *obj, const char *key, const char *shown, int required,
                   int min, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || (json_is_null(v) && !required)) {
        if (required) return qft_err_setf(c->err, "%s: missing key '%s'", c->file, shown);
        return 1;
    }
    return check_int(c, v, shown, min, out);
}

/* A positive number, integer or real (config writers differ: 10000 vs 10000.0). */
static int get_pos_num(const ctx *c, json_t *obj, const char *key, const char *shown,
                       int required, float *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || (json_is_null(v) && !required)) {
        if (required) return qft_err_setf(c->err, "%s: missing key '%s'", c->file, shown);
        return 1;
    }
    double d = json_is_number(v) ? json_number_value(v) : -1.0;
    if (!json_is_number(v) || !(d > 0.0) || !isfinite((float)d)) {
        char r[96];
        repr(v, r, sizeof r);
        return qft_err_setf(c->err, "%s: key '%s' must be a positive number, got %s", c->file,
                            shown, r);
    }
    *out = (float)d;
    return 0;
}

static int get_bool(const ctx *c, json_t *obj, const char *key, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_boolean(v)) {
        char r[96];
        repr(v, r, sizeof r);
        return qft_err_setf(c->err, "%s: key '%s' must be true or false, got %s", c->file, key, r);
    }
    *out = json_is_true(v);
    return 0;
}

/* bos/eos/pad: an integer, null (none: -1), or a list. */
static int get_token_id(const ctx *c, json_t *obj, const char *key, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 1;
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (json_is_array(v)) {
        /* Llama 3 instruct models list several stop tokens (eos_token_id: [128001, 128009]).
         * qft_llama_config holds one id, the one appended to training examples; the first
         * entry is the tokenizer's own eos, which is what transformers appends too. */
        if (json_array_size(v) == 0) {
            *out = -1;
            return 0;
        }
        char shown[64];
        snprintf(shown, sizeof shown, "%s[0]", key);
        return check_int(c, json_array_get(v, 0), shown, 0, out);
    }
    return check_int(c, v, key, 0, out);
}

/* A RoPE description: transformers 4's rope_scaling or 5's rope_parameters (which also
 * carries rope_theta). `where` is the key, for messages. */
static int parse_rope(const ctx *c, json_t *r, const char *where, qft_llama_config *cfg) {
    char shown[96], rr[96];
    if (!json_is_object(r)) {
        repr(r, rr, sizeof rr);
        return qft_err_setf(c->err, "%s: key '%s' must be an object or null, got %s", c->file,
                            where, rr);
    }
    if (strcmp(where, "rope_parameters") == 0) {
        snprintf(shown, sizeof shown, "%s.rope_theta", where);
        if (get_pos_num(c, r, "rope_theta", shown, 0, &cfg->rope_theta) < 0) return -1;
    }
    /* transformers 4.43+ writes rope_type; older files and some conversions write type */
    const char *tkey = json_object_get(r, "rope_type") ? "rope_type" : "type";
    json_t *t = json_object_get(r, tkey);
    snprintf(shown, sizeof shown, "%s.%s", where, tkey);
    if (!t && strcmp(where, "rope_parameters") == 0) {
        cfg->rope_type = QFT_ROPE_DEFAULT;
        return 0;
    }
    if (!json_is_string(t)) {
        repr(t ? t : json_null(), rr, sizeof rr);
        return qft_err_setf(c->err, "%s: key '%s' must be a string, got %s", c->file, shown, rr);
    }
    const char *type = json_string_value(t);
    if (strcmp(type, "default") == 0) {
        cfg->rope_type = QFT_ROPE_DEFAULT;
        return 0;
    }
    if (strcmp(type, "llama3") != 0)
        return qft_err_setf(c->err,
                            "%s: key '%s' has unsupported value \"%s\" (qft supports "
                            "\"default\" and \"llama3\")",
                            c->file, shown, type);
    cfg->rope_type = QFT_ROPE_LLAMA3;
    /* transformers requires all four for llama3; so do we, rather than guess */
    snprintf(shown, sizeof shown, "%s.factor", where);
    if (get_pos_num(c, r, "factor", shown, 1, &cfg->rope_factor)) return -1;
    snprintf(shown, sizeof shown, "%s.low_freq_factor", where);
    if (get_pos_num(c, r, "low_freq_factor", shown, 1, &cfg->rope_low_freq_factor)) return -1;
    snprintf(shown, sizeof shown, "%s.high_freq_factor", where);
    if (get_pos_num(c, r, "high_freq_factor", shown, 1, &cfg->rope_high_freq_factor)) return -1;
    snprintf(shown, sizeof shown, "%s.original_max_position_embeddings", where);
    if (get_int(c, r, "original_max_position_embeddings", shown, 1, 1,
                &cfg->rope_original_max_position_embeddings))
        return -1;
    if (cfg->rope_high_freq_factor == cfg->rope_low_freq_factor)
        return qft_err_setf(c->err, "%s: key '%s': high_freq_factor equals low_freq_factor "
                                    "(the llama3 interpolation divides by their difference)",
                            c->file, where);
    return 0;
}

static int parse_config(const ctx *c, json_t *root, qft_llama_config *cfg) {
    char rr[96];
    if (!json_is_object(root)) return qft_err_setf(c->err, "%s: not a JSON object", c->file);
    json_t *mt = json_object_get(root, "model_type");
    if (!mt) return qft_err_setf(c->err, "%s: missing key 'model_type'", c->file);
    if (!json_is_string(mt) || strcmp(json_string_value(mt), "llama") != 0) {
        repr(mt, rr, sizeof rr);
        return qft_err_setf(c->err, "%s: key 'model_type' is %s; only \"llama\" is supported",
                            c->file, rr);
    }
    if (get_int(c, root, "vocab_size", "vocab_size", 1, 1, &cfg->vocab_size) ||
        get_int(c, root, "hidden_size", "hidden_size", 1, 1, &cfg->hidden_size) ||
        get_int(c, root, "intermediate_size", "intermediate_size", 1, 1,
                &cfg->intermediate_size) ||
        get_int(c, root, "num_hidden_layers", "num_hidden_layers", 1, 1,
                &cfg->num_hidden_layers) ||
        get_int(c, root, "num_attention_heads", "num_attention_heads", 1, 1,
                &cfg->num_attention_heads))
        return -1;
    cfg->num_key_value_heads = cfg->num_attention_heads;
    /* transformers: head_dim = hidden_size // num_attention_heads when absent */
    cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    if (get_int(c, root, "num_key_value_heads", "num_key_value_heads", 0, 1,
                &cfg->num_key_value_heads) < 0 ||
        get_int(c, root, "head_dim", "head_dim", 0, 1, &cfg->head_dim) < 0 ||
        get_int(c, root, "max_position_embeddings", "max_position_embeddings", 0, 1,
                &cfg->max_position_embeddings) < 0)
        return -1;
    if (cfg->head_dim <= 0)
        return qft_err_setf(c->err, "%s: hidden_size %d is smaller than num_attention_heads %d",
                            c->file, cfg->hidden_size, cfg->num_attention_heads);
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return qft_err_setf(c->err,
                            "%s: num_attention_heads %d is not a multiple of "
                            "num_key_value_heads %d",
                            c->file, cfg->num_attention_heads, cfg->num_key_value_heads);
    if (get_pos_num(c, root, "rms_norm_eps", "rms_norm_eps", 0, &cfg->rms_norm_eps) < 0 ||
        get_pos_num(c, root, "rope_theta", "rope_theta", 0, &cfg->rope_theta) < 0 ||
        get_pos_num(c, root, "initializer_range", "initializer_range", 0,
                    &cfg->initializer_range) < 0)
        return -1;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs) && parse_rope(c, rs, "rope_scaling", cfg)) return -1;
    /* transformers 5 folds rope_theta and the scaling into rope_parameters; when a file
     * carries both spellings the newer one is what transformers 5 itself would use. */
    json_t *rp = json_object_get(root, "rope_parameters");
    if (rp && !json_is_null(rp) && parse_rope(c, rp, "rope_parameters", cfg)) return -1;

    if (get_bool(c, root, "tie_word_embeddings", &cfg->tie_word_embeddings) < 0) return -1;
    static const char *const bias_keys[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        int b = 0;
        if (get_bool(c, root, bias_keys[i], &b) < 0) return -1;
        if (b)
            return qft_err_setf(c->err,
                                "%s: key '%s' is true: Llama linears with biases are not "
                                "supported",
                                c->file, bias_keys[i]);
    }
    json_t *act = json_object_get(root, "hidden_act");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0)) {
        repr(act, rr, sizeof rr);
        return qft_err_setf(c->err, "%s: key 'hidden_act' is %s; only \"silu\" is supported",
                            c->file, rr);
    }
    if (get_token_id(c, root, "bos_token_id", &cfg->bos_token_id) < 0 ||
        get_token_id(c, root, "eos_token_id", &cfg->eos_token_id) < 0 ||
        get_token_id(c, root, "pad_token_id", &cfg->pad_token_id) < 0)
        return -1;
    /* transformers 5 writes "dtype", 4 wrote "torch_dtype" */
    const char *dkey = json_object_get(root, "dtype") ? "dtype" : "torch_dtype";
    json_t *dt = json_object_get(root, dkey);
    if (dt && !json_is_null(dt)) {
        if (!json_is_string(dt) || strlen(json_string_value(dt)) >= sizeof cfg->torch_dtype) {
            repr(dt, rr, sizeof rr);
            return qft_err_setf(c->err, "%s: key '%s' must be a dtype name such as "
                                        "\"bfloat16\", got %s",
                                c->file, dkey, rr);
        }
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_string_value(dt));
    }
    return 0;
}

/* DIR -> DIR/config.json; a file path stays as it is. */
static void config_path(const char *path, char *out, size_t n) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, n, "%s/config.json", path);
    else
        snprintf(out, n, "%s", path);
}

int qft_hf_config_load(const char *path, qft_llama_config *cfg, qft_err *err) {
    char file[4096];
    config_path(path, file, sizeof file);
    qft_llama_config_defaults(cfg);
    char *text = NULL;
    size_t len = 0;
    if (qft_file_read_all(file, &text, &len, err)) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return qft_err_setf(err, "%s:%d:%d: invalid JSON: %s", file, jerr.line, jerr.column,
                            jerr.text);
    ctx c = {file, err};
    int rc = parse_config(&c, root, cfg);
    json_decref(root);
    return rc;
}

/* ---- writing ------------------------------------------------------------------------ */

/* The shortest decimal that reads back as the same float, spelled the way Python's repr
 * spells the equal double (1e-06, 0.02, 500000.0), so config.json looks like
 * transformers' own and reads back bit-exactly. */
static void fmt_float(float v, char *buf, size_t n) {
    int p = 1;
    char tmp[64];
    for (; p < 9; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, (double)v);
        if (strtof(tmp, NULL) == v) break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", p - 1, (double)v);
    int exp10 = atoi(strchr(tmp, 'e') + 1);
    if (exp10 < -4 || exp10 >= 16) {
        snprintf(buf, n, "%s", tmp);
        return;
    }
    int decimals = p - 1 - exp10;
    if (decimals < 1) decimals = 1;
    snprintf(buf, n, "%.*f", decimals, (double)v);
}

static void put_int_or_null(FILE *f, const char *key, int v) {
    if (v < 0)
        fprintf(f, "  \"%s\": null,\n", key);
    else
        fprintf(f, "  \"%s\": %d,\n", key, v);
}

int qft_hf_config_save(const char *path, const qft_llama_config *cfg, const char *dtype_name,
                       qft_err *err) {
    char file[4096];
    config_path(path, file, sizeof file);
    const char *dtn = dtype_name && *dtype_name ? dtype_name : cfg->torch_dtype;
    for (const char *s = dtn; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20)
            return qft_err_setf(err, "%s: invalid dtype name \"%s\"", file, dtn);
    int kv = cfg->num_key_value_heads > 0 ? cfg->num_key_value_heads : cfg->num_attention_heads;
    int hd = cfg->head_dim > 0 ? cfg->head_dim
                               : cfg->hidden_size / (cfg->num_attention_heads > 0
                                                         ? cfg->num_attention_heads
                                                         : 1);
    char eps[32], theta[32], init[32];
    fmt_float(cfg->rms_norm_eps, eps, sizeof eps);
    fmt_float(cfg->rope_theta, theta, sizeof theta);
    fmt_float(cfg->initializer_range, init, sizeof init);

    qft_atomic_file af;
    if (qft_atomic_open(&af, file, err)) return -1;
    FILE *f = af.f;
    /* Keys sorted as transformers writes them (json.dumps(sort_keys=True, indent=2)).
     * Both dtype spellings: transformers 5 reads "dtype" and warns on "torch_dtype" alone,
     * transformers 4 and vLLM read "torch_dtype". rope_theta/rope_scaling rather than 5's
     * rope_parameters: every reader accepts them, and transformers 5 converts them. */
    fprintf(f, "{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n");
    fprintf(f, "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n");
    put_int_or_null(f, "bos_token_id", cfg->bos_token_id);
    if (*dtn) fprintf(f, "  \"dtype\": \"%s\",\n", dtn);
    put_int_or_null(f, "eos_token_id", cfg->eos_token_id);
    fprintf(f, "  \"head_dim\": %d,\n  \"hidden_act\": \"silu\",\n", hd);
    fprintf(f, "  \"hidden_size\": %d,\n  \"initializer_range\": %s,\n", cfg->hidden_size, init);
    fprintf(f, "  \"intermediate_size\": %d,\n", cfg->intermediate_size);
    fprintf(f, "  \"max_position_embeddings\": %d,\n", cfg->max_position_embeddings);
    fprintf(f, "  \"mlp_bias\": false,\n  \"model_type\": \"llama\",\n");
    fprintf(f, "  \"num_attention_heads\": %d,\n", cfg->num_attention_heads);
    fprintf(f, "  \"num_hidden_layers\": %d,\n", cfg->num_hidden_layers);
    fprintf(f, "  \"num_key_value_heads\": %d,\n", kv);
    put_int_or_null(f, "pad_token_id", cfg->pad_token_id);
    fprintf(f, "  \"rms_norm_eps\": %s,\n", eps);
    if (cfg->rope_type == QFT_ROPE_LLAMA3) {
        char fa[32], hi[32], lo[32];
        fmt_float(cfg->rope_factor, fa, sizeof fa);
        fmt_float(cfg->rope_high_freq_factor, hi, sizeof hi);
        fmt_float(cfg->rope_low_freq_factor, lo, sizeof lo);
        fprintf(f,
                "  \"rope_scaling\": {\n    \"factor\": %s,\n    \"high_freq_factor\": %s,\n"
                "    \"low_freq_factor\": %s,\n    \"original_max_position_embeddings\": %d,\n"
                "    \"rope_type\": \"llama3\"\n  },\n",
                fa, hi, lo, cfg->rope_original_max_position_embeddings);
    } else {
        fprintf(f, "  \"rope_scaling\": null,\n");
    }
    fprintf(f, "  \"rope_theta\": %s,\n", theta);
    fprintf(f, "  \"tie_word_embeddings\": %s,\n", cfg->tie_word_embeddings ? "true" : "false");
    if (*dtn) fprintf(f, "  \"torch_dtype\": \"%s\",\n", dtn);
    fprintf(f, "  \"use_cache\": true,\n  \"vocab_size\": %d\n}\n", cfg->vocab_size);
    if (ferror(f)) {
        int saved = errno;
        qft_atomic_abort(&af);
        return qft_err_setf(err, "%s: write failed: %s", file, strerror(saved));
    }
    return qft_atomic_commit(&af, err);
}

int qft_hf_config_set_json(const char *path, const char *key, const char *json, qft_err *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return qft_err_setf(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    json_t *val = json_loads(json, JSON_DECODE_ANY, &je);
    if (!val) {
        json_decref(root);
        return qft_err_setf(err, "%s: value for '%s' is not JSON: %s", path, key, je.text);
    }
    json_object_set_new(root, key, val);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (!text) return qft_err_setf(err, "%s: cannot serialise", path);
    size_t n = strlen(text);
    char *line = realloc(text, n + 2); /* with the final newline */
    if (!line) {
        free(text);
        return qft_err_setf(err, "%s: out of memory", path);
    }
    line[n] = '\n', line[n + 1] = 0;
    int rc = qft_atomic_write(path, line, n + 1, err);
    free(line);
    return rc;
}
