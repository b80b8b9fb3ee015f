/* A training run composed from its config: registry, model, tokenizer, dataset plugin,
 * batches, optimizer, schedule, logging, checkpoint. */
#ifndef QFT_RUN_H
#define QFT_RUN_H

#include "config.h"
#include "llama.h"
#include "batch.h"
#include "progress.h" /* qft_run_summary */
#include "registry.h"
#include "tokenizer.h"

/* Builds the model the config names: a Hugging Face folder (model.path), or a random
 * model of the shape in model.config (config.json field names) initialised from seed.
 * vocab_size defaults to the tokenizer's when model.config leaves it out. Roles: with an
 * adapter, only its tensors train and the block linears are packed by the quantizer (or
 * frozen dense); with a quantizer alone, the linears are packed and the tensors it leaves
 * dense (embeddings, norms, head) train; with neither, every tensor trains. The adapter
 * is attached (initialised, or loaded from adapter.path) and gradients are allocated.
 * unit_pad > 0 builds the unit layout of full sharding (qft_llama_build.unit_pad); with
 * it, cut (if not NULL) takes each unit as it completes, adapters attached, in ascending
 * order (qft_run_shard_cut_unit), so that the whole model never is in memory at once. */
struct qft_run_data;
typedef int (*qft_run_unit_fn)(void *ctx, qft_llama_model *m, int u, qft_err *err);
int qft_run_build_model(const qft_run_config *rc, int tokenizer_vocab, uint64_t seed,
                        const struct qft_run_data *d, int unit_pad, qft_run_unit_fn cut,
                        void *cut_ctx, qft_llama_model *m, qft_err *err);

/* Block expansion (Llama-Pro): an adapter plugin with an `expand` hook plans the expanded
 * block list from a checkpoint's n_src blocks, and the plan is set on the build (its
 * layer_src, layer_new, n_layers, n_src_layers point into x, which must outlive the
 * load). Without such a plugin (avt NULL or no hook) nothing changes and x->n_layers is 0.
 * Shared by runs and `qft expand`, so both insert blocks by the one rule. */
#define QFT_RUN_MAX_LAYERS 4096
typedef struct qft_run_expansion {
    int src[QFT_RUN_MAX_LAYERS];    /* (n_layers) checkpoint block each block copies */
    int is_new[QFT_RUN_MAX_LAYERS]; /* (n_layers) 1 for an inserted block */
    int n_layers, n_src_layers;
} qft_run_expansion;
int qft_run_plan_expansion(const qft_adapter_vtable *avt, const void *astate, int n_src,
                           qft_run_expansion *x, qft_llama_build *b, qft_err *err);

/* The data half of a run: plugins composed, tokenizer loaded, the dataset plugin's rows
 * tokenized once into examples (truncated to context_length, prompt labels masked). */
typedef struct qft_run_data {
    qft_registry reg;
    qft_tokenizer *tok;
    const qft_dataset_vtable *dvt;
    void *dstate;
    long rows;            /* rows the plugin yields */
    long skipped;         /* bad rows it left out (data.skip_bad_rows) */
    const qft_quantizer_vtable *qvt; /* the quantizer plugin, NULL when none */
    void *qstate;                    /* its configured options */
    const qft_adapter_vtable *avt;   /* the adapter plugin, NULL when none */
    void *astate;
    const struct qft_ops *ops;       /* the backend train.backend names */
    qft_data_examples ex; /* the first ex.count of them, tokenized */
} qft_run_data;

/* Scans plugins (cli_plugin_dirs first), checks the composition, loads the tokenizer and
 * tokenizes the dataset: dataset_samples caps it, and like the seed it is cut so its
 * length divides batch_size * grad_accum. */
int qft_run_data_open(const qft_run_config *rc, const char *const *cli_plugin_dirs, int n_cli,
                      qft_run_data *d, qft_err *err);
/* The same for a run of `world` ranks: the examples are cut so that their count divides
 * world * batch_size * grad_accum, as one process with grad_accum world * grad_accum; the
 * cuda backend opens on `device` (this rank's GPU). */
int qft_run_data_open_world(const qft_run_config *rc, const char *const *cli_plugin_dirs,
                            int n_cli, int world, int device, qft_run_data *d, qft_err *err);
void qft_run_data_close(qft_run_data *d);

/* Trains as the config says. cli_plugin_dirs come first on the plugin search path. */
int qft_run_train(const qft_run_config *rc, const char *const *cli_plugin_dirs, int n_cli,
                  int quiet, qft_run_summary *summary, qft_err *err);

/* Copies the tokenizer files of a Hugging Face folder (those present) into another,
 * each atomically, so a saved model folder loads with its tokenizer. */
int qft_run_copy_tokenizer(const char *src_dir, const char *dst_dir, qft_err *err);
/* The run's model as a Hugging Face folder in output.dir/model (dequantized, in
 * output.save_dtype) with its tokenizer files. */
int qft_run_save_model(const qft_run_config *rc, const qft_llama_model *m, qft_err *err);
/* The run's adapter in PEFT's format in output.dir/adapter. */
int qft_run_save_adapter(const qft_run_config *rc, const qft_llama_model *m, qft_err *err);

#endif
