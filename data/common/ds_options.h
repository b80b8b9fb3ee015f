/* The options every file dataset reads from the run's `data` section, and the rows they
 * select. Keys the core owns there and that change which rows a dataset yields:
 *   dataset_samples (-1 = all), eval_holdout (0), seed (42), skip_bad_rows (false).
 * Keys of the plugins (each plugin lists the ones it accepts): path (required),
 * split ("train" | "eval"), shuffle (bool), eval_pool (int, orca_math). */
#ifndef QFT_DS_OPTIONS_H
#define QFT_DS_OPTIONS_H

#include "ds_rows.h"

#include <stdint.h>

typedef struct qft_ds_opts {
    char path[1024];
    long dataset_samples;
    long eval_holdout;
    uint64_t seed;
    int skip_bad_rows;
    int shuffle;
    int split_eval; /* split = "eval" */
    long eval_pool; /* -1 = the plugin's rule */
} qft_ds_opts;

/* Reads the options; absent keys keep the defaults above (shuffle: default_shuffle).
 * Wrong types and out-of-range values are errors naming file, line and key. */
int qft_ds_opts_read(const config_setting_t *section, int default_shuffle, qft_ds_opts *o,
                     qft_err *err);

/* A string key of `section`: *v stays NULL when absent (an error when `required`, naming
 * the section's file); a non-string value is an error naming file, line and key. */
int qft_ds_config_string(const config_setting_t *section, const char *key, int required,
                         const char **v, qft_err *err);

/* The row order and the split of `n` rows: the order is default_rng(seed).permutation(n)
 * when shuffling, else file order; the last `pool` positions of it are the validation pool.
 * train: the first min(dataset_samples, n - pool) positions; eval: the first eval_holdout
 * positions of the pool. *idx (count) receives row numbers into the table (0-based),
 * allocated with qft_ds_mem_alloc. */
int qft_ds_select(const qft_services *svc, const qft_ds_opts *o, long n, long pool, long **idx,
                  long *count, qft_err *err);

#endif
