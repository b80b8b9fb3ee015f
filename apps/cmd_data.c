/* `qft data RUN.cfg [--show N]`: what the model will be trained on. Counts (rows,
 * examples, tokens, truncated, no target) and the first N examples as the tokenizer
 * sees them, with the masked prompt part (labels -100, no loss) apart from the trained
 * part. Each part is decoded from the token ids, so what is shown is what trains. */
#include "cli.h"
#include "config.h"
#include "run.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints ids[0..n) decoded, as a JSON string (so newlines and tabs are visible). */
static int print_decoded(const qft_tokenizer *tok, const int32_t *ids, int n, qft_err *err) {
    char *text = NULL;
    if (qft_tokenizer_decode(tok, ids, (size_t)n, 0, &text, err)) return -1;
    json_t *s = json_string(text);
    char *q = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    printf("%s", q ? q : "(not valid UTF-8)");
    free(q);
    json_decref(s);
    free(text);
    return 0;
}

int qft_cmd_data(int argc, char **argv) {
    qft_cli_opts o;
    if (qft_cli_parse(argc, argv, &o)) return 2;
    long show = 3;
    const char *cfg_path = NULL;
    for (int i = 0; i < o.n_args; i++) {
        if (strcmp(o.args[i], "--show") == 0 && i + 1 < o.n_args) {
            char *end;
            show = strtol(o.args[++i], &end, 10);
            if (*end || show < 0) {
                fprintf(stderr, "qft data: --show takes a count, got \"%s\"\n", o.args[i]);
                return 2;
            }
        } else if (!cfg_path) {
            cfg_path = o.args[i];
        } else {
            fprintf(stderr, "qft data: unexpected argument \"%s\"\n", o.args[i]);
            return 2;
        }
    }
    qft_run_config rc;
    qft_err err = {0};
    qft_run_data d;
    memset(&d, 0, sizeof d);
    int status = 1;
    if (qft_config_load(&rc, cfg_path, qft_default_config, o.sets, o.n_sets, &err) ||
        qft_run_data_open(&rc, o.plugin_dirs, o.n_plugin_dirs, &d, &err)) {
        fprintf(stderr, "qft: %s\n", err.msg);
        goto out;
    }
    const qft_data_examples *ex = &d.ex;
    printf("dataset: plugin %s, %ld rows (%ld bad rows skipped); %ld examples used "
           "(dataset_samples %ld, cut to a multiple of batch_size x grad_accum = %d)\n",
           rc.data.plugin, d.rows, d.skipped, ex->count, rc.data.dataset_samples,
           rc.train.batch_size * rc.train.grad_accum);
    printf("tokens: %ld (%ld trained, %ld masked), longest example %d, context_length %d\n",
           ex->n_tokens, ex->n_target_tokens, ex->n_tokens - ex->n_target_tokens, ex->max_len,
           ex->context_length);
    printf("truncated: %ld examples longer than the context; no target: %ld examples whose "
           "prompt fills the context\n", ex->n_truncated, ex->n_no_target);
    for (long i = 0; i < show && i < ex->count; i++) {
        const qft_example *e = &ex->ex[i];
        int masked = 0;
        while (masked < e->n && e->labels[masked] == -100) masked++;
        printf("\n--- example %ld: %d tokens (%d masked, %d trained)%s ---\n", i, e->n, masked,
               e->n - masked, e->n_full > e->n ? ", truncated" : "");
        printf("masked:  ");
        if (print_decoded(d.tok, e->ids, masked, &err)) goto fail;
        printf("\ntrained: ");
        if (print_decoded(d.tok, e->ids + masked, e->n - masked, &err)) goto fail;
        printf("\n");
    }
    status = 0;
    goto out;
fail:
    fprintf(stderr, "qft: %s\n", err.msg);
out:
    qft_run_data_close(&d);
    qft_config_free(&rc);
    return status;
}
