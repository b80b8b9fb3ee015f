/* What the three file datasets share beyond reading: open = check keys, read options, read
 * rows, pick the split, render each chosen row's prompt; then count/get/close of the
 * dataset vtable. A plugin supplies its fields, its default order and pool rule, and a
 * render function. */
#ifndef QFT_DS_SET_H
#define QFT_DS_SET_H

#include "ds_options.h"

typedef struct qft_ds_spec {
    const char *plugin;              /* for messages */
    const char *const *config_keys;  /* the plugin's own keys (NULL-ended) */
    const qft_ds_field *fields;      // (n_fields)
    int n_fields;
    int default_shuffle;
    /* The validation pool size for n usable rows; NULL = eval_holdout rows. */
    long (*pool_rule)(const qft_ds_opts *o, long n);
    /* Renders row `cells` (n_fields); *response may point into cells. */
    int (*render)(void *ctx, const char *const *cells, qft_ds_arena *arena, const char **prompt,
                  const char **response);
    void *ctx;
} qft_ds_spec;

typedef struct qft_ds_set {
    const qft_services *svc;
    char plugin[64];
    qft_ds_opts opts;
    qft_ds_rows rows;
    long n;                // examples yielded
    long *row;             // (n): table row of each example
    const char **prompt;   // (n)
    const char **response; // (n)
} qft_ds_set;

int qft_ds_set_open(const qft_services *svc, const config_setting_t *section,
                    const qft_ds_spec *spec, qft_ds_set **out, qft_err *err);
long qft_ds_set_count(const void *set);
long qft_ds_set_skipped(const void *set); /* bad rows left out (data.skip_bad_rows) */
int qft_ds_set_get(const void *set, long index, const char **prompt, const char **response,
                   qft_err *err);
void qft_ds_set_close(void *set);

#endif
