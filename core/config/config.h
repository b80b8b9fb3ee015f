/* Run configuration: a libconfig file (or the embedded default), `--set section.key=value`
 * overrides, the train_type looked up in configs/train_types.cfg (to which the user's file
 * may add names), and every core key resolved into typed fields. Every error names the
 * file, line and key; unknown keys are errors. */
#ifndef QFT_CONFIG_H
#define QFT_CONFIG_H

#include "qft_sdk.h"

#include <libconfig.h>

typedef struct qft_run_config {
    config_t cfg;       /* the user's file with overrides applied */
    config_t types_cfg; /* train_types.cfg */
    char file[4096];    /* the user's file, or "<embedded default>" */
    char types_file[4096];

    const char *train_type; /* as written */
    const char *quant_plugin;   /* "none" or a quantizer plugin name */
    const char *adapter_plugin; /* "none" or an adapter plugin name */

    config_setting_t *sec_model, *sec_tokenizer, *sec_quant, *sec_adapter, *sec_data,
        *sec_train, *sec_shard, *sec_output, *sec_plugins; /* NULL when absent */

    struct {
        const char *path;           /* HF folder, or NULL for a random model */
        const char *dtype;          /* storage of frozen weights: "f32" or "bf16" */
        config_setting_t *shape;    /* model.config: config.json fields of a random model */
    } model;
    struct {
        const char *path; /* folder with tokenizer.json; NULL = model.path */
        int byte;         /* the project's byte tokenizer (tokenizer.kind = "byte") */
    } tokenizer;
    struct {
        const char *plugin;
        int context_length;
        long dataset_samples; /* -1 = all */
        long eval_holdout;
        long seed;
        int group_by_length;
        int pad_to_context;
        int skip_bad_rows;
    } data;
    struct {
        const char *backend;
        int device;
        const char *frozen_dtype; /* "f32" | "bf16": frozen dense weights on the backend */
        const char *matmul_precision; /* "highest" | "high" (TF32) | "medium" (bf16): the
                                       * fp32 GEMMs' tensor-core mode, cuda only */
        int batch_size, grad_accum, epochs;
        long max_steps; /* -1 = from epochs */
        const char *optimizer;
        double lr, weight_decay, beta1, beta2, eps, momentum;
        const char *schedule;
        double warmup, min_lr_ratio, grad_clip;
        int recompute;
        int loss_chunk_tokens; /* rows of logits per head-and-loss chunk; 0 = automatic */
        const char *residual_dtype; /* "f32" | "bf16": the residual stream between blocks */
        int embedding_on_host; /* another backend: a frozen untied embedding stays here */
        long seed;
        int log_every;
        const char *resume_from; /* a checkpoint-<step> folder to resume from, or NULL */
    } train;
    struct {
        const char *plugin; /* "no_shard" after alias resolution */
        int cpu_offload;
        /* with cpu_offload on another backend: the host buffers every step copies to and
         * from it are page-locked (FSDP2's CPUOffloadPolicy(pin_memory=True)); default 1 */
        int pin_memory;
        /* the transport over backend memory for several ranks without cpu_offload: "auto"
         * (nccl on cuda, staged otherwise), "nccl" or "staged" */
        const char *device_transport;
    } shard;
    struct {
        const char *dir;
        const char *save;       /* "model", "adapter" or "none" */
        const char *save_dtype; /* "bf16" or "f32" */
        int progress, jsonl;
        long save_state_every; /* training-state checkpoint every this many steps; 0 = never */
    } output;
    const char *plugin_paths[16];
    int n_plugin_paths;
} qft_run_config;

/* Loads `path` (or, when path is NULL, `embedded_text` labelled "<embedded default>"),
 * applies the `--set` strings, composes the train_type and resolves every core key. */
int qft_config_load(qft_run_config *rc, const char *path, const char *embedded_text,
                    const char *const *sets, int n_sets, qft_err *err);
void qft_config_free(qft_run_config *rc);

/* The keys the core owns in a section ("data", "quant", ...), NULL-terminated. */
const char *const *qft_config_core_keys(const char *section);
/* Every key of `section` must be a core key of that section or one of plugin_keys. */
int qft_config_check_keys(const config_setting_t *section, const char *const *plugin_keys,
                          qft_err *err);
/* "file:line: section.key" for messages; `--set` values say so. */
const char *qft_config_where(const config_setting_t *s, char *buf, size_t n);
/* Applies one "a.b.c=value" override (value parsed as a libconfig value, else a string). */
int qft_config_apply_set(config_t *cfg, const char *assignment, qft_err *err);

/* Typed lookups in a group: absent -> default; wrong type or out of range -> error
 * naming file, line and key. */
int qft_cfg_int(const config_setting_t *grp, const char *key, long def, long min, long max,
                long *out, qft_err *err);
int qft_cfg_float(const config_setting_t *grp, const char *key, double def, double min,
                  double max, double *out, qft_err *err);
int qft_cfg_bool(const config_setting_t *grp, const char *key, int def, int *out, qft_err *err);
int qft_cfg_string(const config_setting_t *grp, const char *key, const char *def,
                   const char **out, qft_err *err);
/* Like qft_cfg_string, and the value must be one of `choices` (NULL-terminated). */
int qft_cfg_choice(const config_setting_t *grp, const char *key, const char *def,
                   const char *const *choices, const char **out, qft_err *err);

#endif
