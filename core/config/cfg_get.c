/* Typed lookups and key checking for libconfig groups. libconfig keeps each setting's
 * source file and line, so every message can point at the exact place to fix. */
#include "config.h"

#include <math.h>
#include <string.h>

/* Core-owned keys per section; a plugin named in that section adds its own. */
static const char *const k_top[] = {"train_type", "model", "tokenizer", "quant", "adapter",
                                    "data", "train", "shard", "output", "plugins",
                                    "train_types", NULL};
static const char *const k_model[] = {"path", "dtype", "config", NULL};
static const char *const k_tokenizer[] = {"path", "kind", NULL};
static const char *const k_quant[] = {"plugin", NULL};
static const char *const k_adapter[] = {"plugin", "path", NULL};
static const char *const k_data[] = {"plugin", "context_length", "dataset_samples",
                                     "eval_holdout", "seed", "group_by_length",
                                     "pad_to_context", "skip_bad_rows", NULL};
static const char *const k_train[] = {"backend", "device", "frozen_dtype", "matmul_precision", "batch_size", "grad_accum",
                                      "epochs", "max_steps", "optimizer", "lr",
                                      "weight_decay", "betas", "eps", "momentum", "schedule",
                                      "warmup", "min_lr_ratio", "grad_clip", "recompute",
                                      "loss_chunk_tokens", "residual_dtype", "embedding_on_host", "seed", "log_every", "resume_from", NULL};
static const char *const k_shard[] = {"plugin", "cpu_offload", "pin_memory", "device_transport",
                                      NULL};
static const char *const k_output[] = {"dir", "save", "save_dtype", "log",
                                       "save_state_every", NULL};
static const char *const k_plugins[] = {"path", NULL};

const char *const *qft_config_core_keys(const char *section) {
    static const struct {
        const char *name;
        const char *const *keys;
    } t[] = {{"", k_top},           {"model", k_model},   {"tokenizer", k_tokenizer},
             {"quant", k_quant},    {"adapter", k_adapter}, {"data", k_data},
             {"train", k_train},    {"shard", k_shard},   {"output", k_output},
             {"plugins", k_plugins}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(section ? section : "", t[i].name) == 0) return t[i].keys;
    return NULL;
}

/* Dotted path of a setting, e.g. "train.lr" (libconfig has no such call). */
static void setting_path(const config_setting_t *s, char *buf, size_t n) {
    const char *parts[16];
    int np = 0;
    for (const config_setting_t *p = s; p && config_setting_name(p) && np < 16;
         p = config_setting_parent(p))
        parts[np++] = config_setting_name(p);
    buf[0] = 0;
    size_t used = 0;
    for (int i = np - 1; i >= 0 && used < n; i--)
        used += (size_t)snprintf(buf + used, n - used, "%s%s", parts[i], i ? "." : "");
}

const char *qft_config_where(const config_setting_t *s, char *buf, size_t n) {
    char path[256];
    setting_path(s, path, sizeof path);
    const char *file = config_setting_source_file(s);
    unsigned line = config_setting_source_line(s);
    if (file && line)
        snprintf(buf, n, "%s:%u: %s", file, line, path);
    else if (line)
        snprintf(buf, n, "line %u: %s", line, path);
    else /* settings created by --set carry no source */
        snprintf(buf, n, "--set %s", path);
    return buf;
}

static int in_list(const char *name, const char *const *list) {
    for (; list && *list; list++)
        if (strcmp(name, *list) == 0) return 1;
    return 0;
}

int qft_config_check_keys(const config_setting_t *section, const char *const *plugin_keys,
                          qft_err *err) {
    if (!section) return 0;
    const char *sname = config_setting_name(section);
    const char *const *core = qft_config_core_keys(sname);
    int n = config_setting_length(section);
    for (int i = 0; i < n; i++) {
        const config_setting_t *c = config_setting_get_elem(section, (unsigned)i);
        const char *name = config_setting_name(c);
        if (!name || in_list(name, core) || in_list(name, plugin_keys)) continue;
        char where[512], known[1024] = "";
        size_t used = 0;
        for (const char *const *l = core; l && *l && used < sizeof known; l++)
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s",
                                     used ? ", " : "", *l);
        for (const char *const *l = plugin_keys; l && *l && used < sizeof known; l++)
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s",
                                     used ? ", " : "", *l);
        return qft_err_setf(err, "%s: unknown key (known keys here: %s)",
                            qft_config_where(c, where, sizeof where), known);
    }
    return 0;
}

static const char *type_name(int t) {
    switch (t) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: return "an integer";
    case CONFIG_TYPE_FLOAT: return "a number";
    case CONFIG_TYPE_STRING: return "a string";
    case CONFIG_TYPE_BOOL: return "a boolean";
    case CONFIG_TYPE_ARRAY: return "an array";
    case CONFIG_TYPE_LIST: return "a list";
    case CONFIG_TYPE_GROUP: return "a group";
    default: return "a value";
    }
}

static int mistyped(const config_setting_t *s, const char *want, qft_err *err) {
    char where[512];
    return qft_err_setf(err, "%s: expected %s, got %s", qft_config_where(s, where, sizeof where),
                        want, type_name(config_setting_type(s)));
}

int qft_cfg_int(const config_setting_t *grp, const char *key, long def, long min, long max,
                long *out, qft_err *err) {
    const config_setting_t *s = grp ? config_setting_get_member(grp, key) : NULL;
    if (!s) {
        *out = def;
        return 0;
    }
    int t = config_setting_type(s);
    long v;
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        v = (long)config_setting_get_int64(s);
    else if (t == CONFIG_TYPE_FLOAT && floor(config_setting_get_float(s)) ==
                                           config_setting_get_float(s)) /* 1e4 is fine */
        v = (long)config_setting_get_float(s);
    else
        return mistyped(s, "an integer", err);
    if (v < min || v > max) {
        char where[512];
        return qft_err_setf(err, "%s: %ld is out of range [%ld, %ld]",
                            qft_config_where(s, where, sizeof where), v, min, max);
    }
    *out = v;
    return 0;
}

int qft_cfg_float(const config_setting_t *grp, const char *key, double def, double min,
                  double max, double *out, qft_err *err) {
    const config_setting_t *s = grp ? config_setting_get_member(grp, key) : NULL;
    if (!s) {
        *out = def;
        return 0;
    }
    int t = config_setting_type(s);
    double v;
    if (t == CONFIG_TYPE_FLOAT)
        v = config_setting_get_float(s);
    else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        v = (double)config_setting_get_int64(s);
    else
        return mistyped(s, "a number", err);
    if (!(v >= min && v <= max)) {
        char where[512];
        return qft_err_setf(err, "%s: %g is out of range [%g, %g]",
                            qft_config_where(s, where, sizeof where), v, min, max);
    }
    *out = v;
    return 0;
}

int qft_cfg_bool(const config_setting_t *grp, const char *key, int def, int *out, qft_err *err) {
    const config_setting_t *s = grp ? config_setting_get_member(grp, key) : NULL;
    if (!s) {
        *out = def;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) return mistyped(s, "true or false", err);
    *out = config_setting_get_bool(s);
    return 0;
}

int qft_cfg_string(const config_setting_t *grp, const char *key, const char *def,
                   const char **out, qft_err *err) {
    const config_setting_t *s = grp ? config_setting_get_member(grp, key) : NULL;
    if (!s) {
        *out = def;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING) return mistyped(s, "a string", err);
    *out = config_setting_get_string(s);
    return 0;
}

int qft_cfg_choice(const config_setting_t *grp, const char *key, const char *def,
                   const char *const *choices, const char **out, qft_err *err) {
    if (qft_cfg_string(grp, key, def, out, err)) return -1;
    if (!*out || in_list(*out, choices)) return 0;
    const config_setting_t *s = config_setting_get_member(grp, key);
    char where[512], list[512] = "";
    size_t used = 0;
    for (const char *const *c = choices; *c && used < sizeof list; c++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s\"%s\"", used ? ", " : "", *c);
    return qft_err_setf(err, "%s: \"%s\" is not one of %s",
                        qft_config_where(s, where, sizeof where), *out, list);
}
