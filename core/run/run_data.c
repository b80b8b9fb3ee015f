/* The data half of a run, shared by `qft train` and `qft data`. */
#include "run.h"

#include <string.h>

int qft_run_compose(const qft_run_config *rc, const qft_registry *reg, int device,
                    qft_run_data *d, qft_err *err);

int qft_run_data_open(const qft_run_config *rc, const char *const *cli_plugin_dirs, int n_cli,
                      qft_run_data *d, qft_err *err) {
    return qft_run_data_open_world(rc, cli_plugin_dirs, n_cli, 1, rc->train.device, d, err);
}

int qft_run_data_open_world(const qft_run_config *rc, const char *const *cli_plugin_dirs,
                            int n_cli, int world, int device, qft_run_data *d,
                            qft_err *err) {
    memset(d, 0, sizeof *d);
    char dirs[32][4096];
    int nd = qft_registry_search_path(cli_plugin_dirs, n_cli, rc->plugin_paths,
                                      rc->n_plugin_paths, dirs, 32);
    if (qft_registry_scan(&d->reg, dirs, nd, err) || qft_run_compose(rc, &d->reg, device, d, err))
        return -1;
    if (rc->tokenizer.byte) {
        d->tok = qft_tokenizer_byte_new();
        if (!d->tok) return qft_err_setf(err, "out of memory");
    } else if (qft_tokenizer_load(rc->tokenizer.path, &d->tok, err)) {
        d->tok = NULL;
        return -1;
    }
    if (d->dvt->open(qft_registry_services(), rc->sec_data, &d->dstate, err)) {
        d->dstate = NULL;
        return -1;
    }
    d->rows = d->dvt->count(d->dstate);
    d->skipped = d->dvt->skipped ? d->dvt->skipped(d->dstate) : 0;
    long n = d->rows;
    if (rc->data.dataset_samples >= 0 && n > rc->data.dataset_samples) n = rc->data.dataset_samples;
    /* the global batch: every rank's micro-batches of one optimizer step */
    const long global = (long)world * rc->train.batch_size * rc->train.grad_accum;
    if (n >= global) n -= n % global;
    if (n <= 0)
        return qft_err_setf(err, "%s: dataset plugin \"%s\" yielded no examples", rc->file,
                            rc->data.plugin);
    return qft_data_examples_build(&d->ex, d->tok, d->dvt->get, d->dstate, NULL, n,
                                   rc->data.context_length, err);
}

void qft_run_data_close(qft_run_data *d) {
    qft_data_examples_free(&d->ex);
    if (d->dstate) d->dvt->close(d->dstate);
    if (d->tok) qft_tokenizer_free(d->tok);
    if (d->qstate) d->qvt->close(d->qstate);
    if (d->astate) d->avt->close(d->astate);
    qft_registry_free(&d->reg);
    memset(d, 0, sizeof *d);
}
