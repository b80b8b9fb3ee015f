/* The shared open/count/get/close of ds_set.h. */
#include "ds_set.h"

#include <string.h>

int qft_ds_set_open(const qft_services *svc, const config_setting_t *section,
                    const qft_ds_spec *spec, qft_ds_set **out, qft_err *err) {
    *out = NULL;
    if (svc && svc->config_check_keys && section &&
        svc->config_check_keys(section, spec->config_keys, err) != 0)
        return -1;
    qft_ds_set *s = qft_ds_mem_alloc(svc, sizeof *s);
    if (!s) return qft_err_setf(err, "%s: out of memory", spec->plugin);
    memset(s, 0, sizeof *s);
    s->svc = svc;
    s->rows.arena.svc = svc;
    snprintf(s->plugin, sizeof s->plugin, "%s", spec->plugin);
    if (qft_ds_opts_read(section, spec->default_shuffle, &s->opts, err) ||
        qft_ds_rows_read(svc, s->opts.path, spec->fields, spec->n_fields, s->opts.skip_bad_rows,
                         &s->rows, err)) {
        qft_ds_set_close(s);
        return -1;
    }
    const qft_ds_rows *r = &s->rows;
    if (r->n_bad > 0 && svc && svc->log)
        svc->log(QFT_LOG_WARN, "%s: %s: skipped %ld bad rows of %ld (data.skip_bad_rows = true); "
                               "the first: %s",
                 spec->plugin, r->path, r->n_bad, r->n_seen, r->first_bad);
    const long pool = spec->pool_rule ? spec->pool_rule(&s->opts, r->n) : s->opts.eval_holdout;
    if (qft_ds_select(svc, &s->opts, r->n, pool, &s->row, &s->n, err)) {
        qft_ds_set_close(s);
        return -1;
    }
    if (!s->opts.split_eval && s->opts.dataset_samples > s->n && svc && svc->log)
        svc->log(QFT_LOG_WARN, "%s: data.dataset_samples = %ld but only %ld rows are left for "
                               "training (%ld held out for validation)",
                 r->path, s->opts.dataset_samples, s->n, pool);
    s->prompt = qft_ds_mem_alloc(svc, (size_t)(s->n ? s->n : 1) * sizeof *s->prompt);     // (n)
    s->response = qft_ds_mem_alloc(svc, (size_t)(s->n ? s->n : 1) * sizeof *s->response); // (n)
    if (!s->prompt || !s->response) {
        qft_ds_set_close(s);
        return qft_err_setf(err, "%s: out of memory for %ld examples", spec->plugin, s->n);
    }
    for (long i = 0; i < s->n; i++) {
        const char *const *cells = r->cells + (size_t)s->row[i] * (size_t)r->n_fields; // (F)
        if (spec->render(spec->ctx, cells, &s->rows.arena, &s->prompt[i], &s->response[i])) {
            qft_ds_set_close(s);
            return qft_err_setf(err, "%s: out of memory rendering row %ld", r->path,
                                r->row_no[s->row[i]]);
        }
    }
    if (svc && svc->log)
        svc->log(QFT_LOG_INFO, "%s: %s: %ld rows (%s)%s; %s split: %ld examples (validation pool: "
                               "last %ld of the order)",
                 spec->plugin, r->path, r->n, r->format == QFT_DS_JSON_ARRAY ? "JSON array" : "JSONL",
                 s->opts.shuffle ? ", shuffled as numpy default_rng(seed).permutation" : ", file order",
                 s->opts.split_eval ? "eval" : "train", s->n, pool);
    *out = s;
    return 0;
}

long qft_ds_set_count(const void *set) { return ((const qft_ds_set *)set)->n; }

long qft_ds_set_skipped(const void *set) { return ((const qft_ds_set *)set)->rows.n_bad; }

int qft_ds_set_get(const void *set, long index, const char **prompt, const char **response,
                   qft_err *err) {
    const qft_ds_set *s = set;
    if (index < 0 || index >= s->n)
        return qft_err_setf(err, "%s: example %ld out of range (the %s split has %ld)", s->plugin,
                            index, s->opts.split_eval ? "eval" : "train", s->n);
    *prompt = s->prompt[index];
    *response = s->response[index];
    return 0;
}

void qft_ds_set_close(void *set) {
    qft_ds_set *s = set;
    if (!s) return;
    const qft_services *svc = s->svc;
    qft_ds_rows_free(&s->rows);
    qft_ds_mem_free(svc, s->row);
    qft_ds_mem_free(svc, (void *)s->prompt);
    qft_ds_mem_free(svc, (void *)s->response);
    qft_ds_mem_free(svc, s);
}
