/* Loading a run's config: read, override, compose the train_type, resolve core keys. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef QFT_TRAIN_TYPES_PATHS
#define QFT_TRAIN_TYPES_PATHS ""
#endif

static int read_error(const config_t *c, const char *label, qft_err *err) {
    const char *f = config_error_file(c);
    return qft_err_setf(err, "%s:%d: %s", f ? f : label, config_error_line(c),
                        config_error_text(c));
}

/* train_types.cfg: $QFT_TRAIN_TYPES, then the source tree's and the installed copy. */
static int load_types(qft_run_config *rc, qft_err *err) {
    char paths[8192];
    const char *env = getenv("QFT_TRAIN_TYPES");
    snprintf(paths, sizeof paths, "%s%s%s", env ? env : "", env ? ":" : "",
             QFT_TRAIN_TYPES_PATHS);
    char *save = NULL;
    for (char *p = strtok_r(paths, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
        if (access(p, R_OK) != 0) continue;
        snprintf(rc->types_file, sizeof rc->types_file, "%s", p);
        if (config_read_file(&rc->types_cfg, p) != CONFIG_TRUE)
            return read_error(&rc->types_cfg, p, err);
        return 0;
    }
    return qft_err_setf(err, "train_types.cfg not found (looked in $QFT_TRAIN_TYPES and %s)",
                        QFT_TRAIN_TYPES_PATHS);
}

/* Finds a train_type by name: the user's `train_types` group first, then the file's;
 * a string entry is an alias. */
static const config_setting_t *find_type(qft_run_config *rc, const char *name, int depth,
                                         qft_err *err) {
    if (depth > 8) {
        qft_err_setf(err, "train_type \"%s\": alias loop", name);
        return NULL;
    }
    const config_setting_t *s = NULL;
    const config_setting_t *user = config_lookup(&rc->cfg, "train_types");
    if (user) s = config_setting_get_member(user, name);
    if (!s) {
        const config_setting_t *base = config_lookup(&rc->types_cfg, "train_types");
        if (base) s = config_setting_get_member(base, name);
    }
    if (!s) {
        char list[2048] = "";
        size_t used = 0;
        const config_setting_t *groups[2] = {user, config_lookup(&rc->types_cfg, "train_types")};
        for (int g = 0; g < 2; g++)
            for (int i = 0; groups[g] && i < config_setting_length(groups[g]) && used < sizeof list; i++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "",
                                         config_setting_name(config_setting_get_elem(groups[g], (unsigned)i)));
        qft_err_setf(err, "train_type \"%s\" is not defined in %s or the config's train_types "
                          "(defined: %s)", name, rc->types_file, list);
        return NULL;
    }
    if (config_setting_type(s) == CONFIG_TYPE_STRING)
        return find_type(rc, config_setting_get_string(s), depth + 1, err);
    if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
        char where[512];
        qft_err_setf(err, "%s: a train_type is a group { quant = ...; adapter = ...; } or an "
                          "alias string", qft_config_where(s, where, sizeof where));
        return NULL;
    }
    return s;
}

static int compose_type(qft_run_config *rc, qft_err *err) {
    if (qft_cfg_string(config_root_setting(&rc->cfg), "train_type", "full", &rc->train_type, err))
        return -1;
    const config_setting_t *t = find_type(rc, rc->train_type, 0, err);
    if (!t) return -1;
    static const char *const type_keys[] = {"quant", "adapter", "description", NULL};
    for (int i = 0; i < config_setting_length(t); i++) {
        const config_setting_t *c = config_setting_get_elem(t, (unsigned)i);
        int ok = 0;
        for (const char *const *k = type_keys; *k; k++) ok |= strcmp(*k, config_setting_name(c)) == 0;
        if (!ok) {
            char where[512];
            return qft_err_setf(err, "%s: unknown key in a train_type (known: quant, adapter, "
                                     "description)", qft_config_where(c, where, sizeof where));
        }
    }
    const char *q, *a;
    if (qft_cfg_string(t, "quant", "none", &q, err) || qft_cfg_string(t, "adapter", "none", &a, err))
        return -1;
    /* The user's own sections may name another plugin than the train_type's default. */
    if (qft_cfg_string(rc->sec_quant, "plugin", q, &rc->quant_plugin, err) ||
        qft_cfg_string(rc->sec_adapter, "plugin", a, &rc->adapter_plugin, err))
        return -1;
    return 0;
}

static config_setting_t *section(qft_run_config *rc, const char *name, qft_err *err, int *bad) {
    config_setting_t *s = config_setting_get_member(config_root_setting(&rc->cfg), name);
    if (s && config_setting_type(s) != CONFIG_TYPE_GROUP) {
        char where[512];
        qft_err_setf(err, "%s: expected a group { ... }", qft_config_where(s, where, sizeof where));
        *bad = 1;
    }
    return s;
}

static int resolve_core(qft_run_config *rc, qft_err *err) {
    long v;
    double d;
    int b;
    /* model */
    static const char *const dtypes[] = {"f32", "bf16", NULL};
    if (qft_cfg_string(rc->sec_model, "path", NULL, &rc->model.path, err) ||
        qft_cfg_choice(rc->sec_model, "dtype", "f32", dtypes, &rc->model.dtype, err))
        return -1;
    rc->model.shape = rc->sec_model ? config_setting_get_member(rc->sec_model, "config") : NULL;
    if (!rc->model.path && !rc->model.shape)
        return qft_err_setf(err, "%s: model.path (a Hugging Face folder) or model.config (the "
                                 "shape of a random model) is required", rc->file);
    if (rc->model.shape && config_setting_type(rc->model.shape) != CONFIG_TYPE_GROUP) {
        char where[512];
        return qft_err_setf(err, "%s: expected a group of config.json fields",
                            qft_config_where(rc->model.shape, where, sizeof where));
    }
    /* tokenizer */
    static const char *const kinds[] = {"hf", "byte", NULL};
    const char *kind;
    if (qft_cfg_string(rc->sec_tokenizer, "path", rc->model.path, &rc->tokenizer.path, err) ||
        qft_cfg_choice(rc->sec_tokenizer, "kind", "hf", kinds, &kind, err))
        return -1;
    rc->tokenizer.byte = strcmp(kind, "byte") == 0;
    if (!rc->tokenizer.byte && !rc->tokenizer.path)
        return qft_err_setf(err, "%s: tokenizer.path is required when the model has no path "
                                 "(or set tokenizer.kind = \"byte\")", rc->file);
    /* data */
    config_setting_t *ds = rc->sec_data;
    if (qft_cfg_string(ds, "plugin", NULL, &rc->data.plugin, err)) return -1;
    if (!rc->data.plugin) return qft_err_setf(err, "%s: data.plugin is required", rc->file);
    if (qft_cfg_int(ds, "context_length", 512, 2, 1 << 20, &v, err)) return -1;
    rc->data.context_length = (int)v;
    if (qft_cfg_int(ds, "dataset_samples", -1, -1, 1L << 40, &rc->data.dataset_samples, err) ||
        qft_cfg_int(ds, "eval_holdout", 0, 0, 1L << 40, &rc->data.eval_holdout, err) ||
        qft_cfg_int(ds, "seed", 42, 0, 1L << 62, &rc->data.seed, err) ||
        qft_cfg_bool(ds, "group_by_length", 0, &rc->data.group_by_length, err) ||
        qft_cfg_bool(ds, "pad_to_context", 0, &rc->data.pad_to_context, err) ||
        qft_cfg_bool(ds, "skip_bad_rows", 0, &rc->data.skip_bad_rows, err))
        return -1;
    /* train */
    config_setting_t *ts = rc->sec_train;
    static const char *const backends[] = {"cpu", "cuda", "cpu_guard", NULL};
    static const char *const optims[] = {"adamw", "sgd", NULL};
    static const char *const scheds[] = {"constant", "linear", "cosine", NULL};
    if (qft_cfg_choice(ts, "backend", "cpu", backends, &rc->train.backend, err)) return -1;
    if (qft_cfg_int(ts, "device", 0, 0, 1024, &v, err)) return -1;
    rc->train.device = (int)v;
    static const char *const frozen[] = {"f32", "bf16", NULL};
    if (qft_cfg_choice(ts, "frozen_dtype", "f32", frozen, &rc->train.frozen_dtype, err))
        return -1;
    static const char *const precisions[] = {"highest", "high", "medium", NULL};
    if (qft_cfg_choice(ts, "matmul_precision", "highest", precisions,
                       &rc->train.matmul_precision, err))
        return -1;
    if (qft_cfg_int(ts, "batch_size", 1, 1, 1 << 20, &v, err)) return -1;
    rc->train.batch_size = (int)v;
    if (qft_cfg_int(ts, "grad_accum", 1, 1, 1 << 20, &v, err)) return -1;
    rc->train.grad_accum = (int)v;
    if (qft_cfg_int(ts, "epochs", 1, 1, 1 << 20, &v, err)) return -1;
    rc->train.epochs = (int)v;
    if (qft_cfg_int(ts, "max_steps", -1, -1, 1L << 40, &rc->train.max_steps, err) ||
        qft_cfg_choice(ts, "optimizer", "adamw", optims, &rc->train.optimizer, err) ||
        qft_cfg_float(ts, "lr", 1e-5, 0, 1e3, &rc->train.lr, err) ||
        qft_cfg_float(ts, "weight_decay", 0.0, 0, 1e3, &rc->train.weight_decay, err) ||
        qft_cfg_float(ts, "eps", 1e-5, 0, 1, &rc->train.eps, err) ||
        qft_cfg_float(ts, "momentum", 0.0, 0, 1, &rc->train.momentum, err) ||
        qft_cfg_choice(ts, "schedule", "constant", scheds, &rc->train.schedule, err) ||
        qft_cfg_float(ts, "warmup", 0.1, 0, 1, &rc->train.warmup, err) ||
        qft_cfg_float(ts, "min_lr_ratio", 0.1, 0, 1, &rc->train.min_lr_ratio, err) ||
        qft_cfg_float(ts, "grad_clip", 0.0, 0, 1e9, &rc->train.grad_clip, err) ||
        qft_cfg_bool(ts, "recompute", 0, &rc->train.recompute, err) ||
        qft_cfg_int(ts, "seed", 42, 0, 1L << 62, &rc->train.seed, err))
        return -1;
    static const char *const residuals[] = {"f32", "bf16", NULL};
    if (qft_cfg_choice(ts, "residual_dtype", "f32", residuals, &rc->train.residual_dtype, err) ||
        qft_cfg_bool(ts, "embedding_on_host", 1, &rc->train.embedding_on_host, err))
        return -1;
    if (qft_cfg_int(ts, "loss_chunk_tokens", 0, 0, 1 << 30, &v, err)) return -1;
    rc->train.loss_chunk_tokens = (int)v;
    if (qft_cfg_int(ts, "log_every", 1, 1, 1 << 30, &v, err)) return -1;
    rc->train.log_every = (int)v;
    if (qft_cfg_string(ts, "resume_from", NULL, &rc->train.resume_from, err)) return -1;
    rc->train.beta1 = 0.9, rc->train.beta2 = 0.95; /* the seed's AdamW betas */
    const config_setting_t *betas = ts ? config_setting_get_member(ts, "betas") : NULL;
    if (betas) {
        char where[512];
        int t = config_setting_type(betas);
        if ((t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) || config_setting_length(betas) != 2)
            return qft_err_setf(err, "%s: expected [beta1, beta2]",
                                qft_config_where(betas, where, sizeof where));
        for (int i = 0; i < 2; i++) {
            const config_setting_t *e = config_setting_get_elem(betas, (unsigned)i);
            int et = config_setting_type(e);
            d = et == CONFIG_TYPE_FLOAT ? config_setting_get_float(e)
                : (et == CONFIG_TYPE_INT ? config_setting_get_int(e) : -1);
            if (!(d >= 0 && d < 1))
                return qft_err_setf(err, "%s: each beta must be a number in [0, 1)",
                                    qft_config_where(betas, where, sizeof where));
            *(i ? &rc->train.beta2 : &rc->train.beta1) = d;
        }
    }
    /* shard: any shard plugin by name (the registry lists the ones it has when the name
     * is not among them); the seed's names are aliases */
    static const char *const dev_transports[] = {"auto", "nccl", "staged", NULL};
    if (qft_cfg_string(rc->sec_shard, "plugin", "no_shard", &rc->shard.plugin, err) ||
        qft_cfg_bool(rc->sec_shard, "cpu_offload", 0, &rc->shard.cpu_offload, err) ||
        qft_cfg_bool(rc->sec_shard, "pin_memory", 1, &rc->shard.pin_memory, err) ||
        qft_cfg_choice(rc->sec_shard, "device_transport", "auto", dev_transports,
                       &rc->shard.device_transport, err))
        return -1;
    if (strcmp(rc->shard.plugin, "ddp") == 0) rc->shard.plugin = "no_shard";
    if (strcmp(rc->shard.plugin, "hybrid_full_shard") == 0) rc->shard.plugin = "hybrid_shard";
    /* output */
    static const char *const saves[] = {"model", "adapter", "none", NULL};
    if (qft_cfg_string(rc->sec_output, "dir", "runs/latest", &rc->output.dir, err) ||
        qft_cfg_choice(rc->sec_output, "save", "model", saves, &rc->output.save, err) ||
        qft_cfg_choice(rc->sec_output, "save_dtype", "bf16", dtypes, &rc->output.save_dtype, err) ||
        qft_cfg_int(rc->sec_output, "save_state_every", 0, 0, 1L << 40,
                    &rc->output.save_state_every, err))
        return -1;
    rc->output.progress = rc->output.jsonl = 1;
    const config_setting_t *log = rc->sec_output ? config_setting_get_member(rc->sec_output, "log") : NULL;
    if (log) {
        char where[512];
        rc->output.progress = rc->output.jsonl = 0;
        int t = config_setting_type(log);
        if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
            return qft_err_setf(err, "%s: expected a list such as [\"progress\", \"jsonl\"]",
                                qft_config_where(log, where, sizeof where));
        for (int i = 0; i < config_setting_length(log); i++) {
            const char *s = config_setting_get_string_elem(log, i);
            if (s && strcmp(s, "progress") == 0) rc->output.progress = 1;
            else if (s && strcmp(s, "jsonl") == 0) rc->output.jsonl = 1;
            else
                return qft_err_setf(err, "%s: element %d must be \"progress\" or \"jsonl\"",
                                    qft_config_where(log, where, sizeof where), i);
        }
    }
    /* plugins.path */
    const config_setting_t *pp = rc->sec_plugins ? config_setting_get_member(rc->sec_plugins, "path") : NULL;
    if (pp) {
        char where[512];
        int t = config_setting_type(pp);
        if (t == CONFIG_TYPE_STRING) {
            rc->plugin_paths[rc->n_plugin_paths++] = config_setting_get_string(pp);
        } else if (t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) {
            for (int i = 0; i < config_setting_length(pp) && rc->n_plugin_paths < 16; i++) {
                const char *s = config_setting_get_string_elem(pp, i);
                if (!s)
                    return qft_err_setf(err, "%s: element %d must be a string",
                                        qft_config_where(pp, where, sizeof where), i);
                rc->plugin_paths[rc->n_plugin_paths++] = s;
            }
        } else {
            return qft_err_setf(err, "%s: expected a folder or a list of folders",
                                qft_config_where(pp, where, sizeof where));
        }
    }
    (void)b;
    return 0;
}

int qft_config_load(qft_run_config *rc, const char *path, const char *embedded_text,
                    const char *const *sets, int n_sets, qft_err *err) {
    memset(rc, 0, sizeof *rc);
    config_init(&rc->cfg);
    config_init(&rc->types_cfg);
    if (path) {
        snprintf(rc->file, sizeof rc->file, "%s", path);
        if (config_read_file(&rc->cfg, path) != CONFIG_TRUE) return read_error(&rc->cfg, path, err);
    } else {
        snprintf(rc->file, sizeof rc->file, "<embedded default>");
        if (config_read_string(&rc->cfg, embedded_text) != CONFIG_TRUE)
            return read_error(&rc->cfg, rc->file, err);
    }
    for (int i = 0; i < n_sets; i++)
        if (qft_config_apply_set(&rc->cfg, sets[i], err)) return -1;
    if (qft_config_check_keys(config_root_setting(&rc->cfg), NULL, err)) return -1;
    int bad = 0;
    rc->sec_model = section(rc, "model", err, &bad);
    rc->sec_tokenizer = section(rc, "tokenizer", err, &bad);
    rc->sec_quant = section(rc, "quant", err, &bad);
    rc->sec_adapter = section(rc, "adapter", err, &bad);
    rc->sec_data = section(rc, "data", err, &bad);
    rc->sec_train = section(rc, "train", err, &bad);
    rc->sec_shard = section(rc, "shard", err, &bad);
    rc->sec_output = section(rc, "output", err, &bad);
    rc->sec_plugins = section(rc, "plugins", err, &bad);
    if (bad) return -1;
    /* Sections whose every key is the core's are checked here; data, quant and adapter
     * are checked once their plugin is known (it adds keys). */
    const config_setting_t *core_only[] = {rc->sec_model, rc->sec_tokenizer, rc->sec_train,
                                           rc->sec_shard, rc->sec_output, rc->sec_plugins};
    for (size_t i = 0; i < sizeof core_only / sizeof core_only[0]; i++)
        if (qft_config_check_keys(core_only[i], NULL, err)) return -1;
    if (load_types(rc, err) || compose_type(rc, err) || resolve_core(rc, err)) return -1;
    return 0;
}

void qft_config_free(qft_run_config *rc) {
    config_destroy(&rc->cfg);
    config_destroy(&rc->types_cfg);
}
