/* A training run composed from its config: registry, model, tokenizer, dataset plugin,
 * batches, optimizer, schedule, logging, checkpoint. */
#ifndef QFT_RUN_H
#define QFT_RUN_H

#include "config.h"
#include "llama.h"
#include "progress.h" /* qft_run_summary */

/* Builds the model the config names: a Hugging Face folder (model.path), or a random
 * model of the shape in model.config (config.json field names) initialised from seed.
 * vocab_size defaults to the tokenizer's when model.config leaves it out. */
int qft_run_build_model(const qft_run_config *rc, int tokenizer_vocab, uint64_t seed,
                        qft_llama_model *m, qft_err *err);

/* Trains as the config says. cli_plugin_dirs come first on the plugin search path. */
int qft_run_train(const qft_run_config *rc, const char *const *cli_plugin_dirs, int n_cli,
                  int quiet, qft_run_summary *summary, qft_err *err);

#endif
