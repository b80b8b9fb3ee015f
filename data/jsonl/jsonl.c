/* jsonl: any JSONL file (or JSON array) of objects, rendered with a prompt template from
 * the config; the response is one field.
 *
 * Keys in `data`:
 *   path             the file (required)
 *   prompt_template  text with {field} placeholders, e.g. "Q: {question}\nA: " (required);
 *                    {{ and }} are literal braces; placeholders are plain field names
 *   response_field   the field whose text is the response (required)
 *   shuffle          false (default): file order; true: numpy default_rng(data.seed)
 *                    .permutation(n), the order of Dataset.shuffle(seed)
 *   split            "train" (default) or "eval"
 * and of the core's: seed, dataset_samples, eval_holdout, skip_bad_rows. Every field the
 * template names and the response field must be a string in every row: a missing or
 * non-string one is a bad row, named with its file, line and row number. Split: the last
 * eval_holdout rows of the order are held out; "train" yields the first dataset_samples
 * of the rest (all when -1), "eval" the held-out rows. */
#include "ds_set.h"
#include "ds_template.h"

#include <stdio.h>
#include <string.h>

static const char *const k_keys[] = {"path", "prompt_template", "response_field", "shuffle",
                                     "split", NULL};

typedef struct jsonl_ctx {
    qft_ds_template tmpl;
    int response; /* field index of the response */
} jsonl_ctx;

static int jsonl_render(void *ctx, const char *const *cells, qft_ds_arena *arena,
                        const char **prompt, const char **response) {
    const jsonl_ctx *c = ctx;
    /* The template's names are fields 0..n_names-1, in the order the template uses them. */
    char *p = qft_ds_template_render(&c->tmpl, cells, arena);
    if (!p) return -1;
    *prompt = p;
    *response = cells[c->response];
    return 0;
}

static int jsonl_open(const qft_services *svc, const config_setting_t *section, void **state,
                      qft_err *err) {
    if (svc && svc->config_check_keys && section &&
        svc->config_check_keys(section, k_keys, err) != 0)
        return -1;
    const char *tmpl, *resp;
    if (qft_ds_config_string(section, "prompt_template", 1, &tmpl, err) ||
        qft_ds_config_string(section, "response_field", 1, &resp, err))
        return -1;
    char what[1200];
    const config_setting_t *ts = config_setting_get_member(section, "prompt_template");
    snprintf(what, sizeof what, "%s:%u: data.prompt_template",
             config_setting_source_file(ts) ? config_setting_source_file(ts) : "<config>",
             config_setting_source_line(ts));
    jsonl_ctx c;
    if (qft_ds_template_parse(tmpl, what, &c.tmpl, err)) return -1;
    qft_ds_field fields[QFT_DS_TEMPLATE_MAX_PARTS + 1];
    int nf = 0;
    c.response = -1;
    for (int k = 0; k < c.tmpl.n_names; k++) {
        fields[nf++] = (qft_ds_field){c.tmpl.names[k], 0, "named in data.prompt_template"};
        if (strcmp(c.tmpl.names[k], resp) == 0) c.response = k;
    }
    if (c.response < 0) {
        c.response = nf;
        fields[nf++] = (qft_ds_field){resp, 0, "data.response_field"};
    }
    const qft_ds_spec spec = {
        .plugin = "jsonl", .config_keys = k_keys, .fields = fields, .n_fields = nf,
        .default_shuffle = 0, .pool_rule = NULL, .render = jsonl_render, .ctx = &c,
    };
    qft_ds_set *s;
    const int rc = qft_ds_set_open(svc, section, &spec, &s, err);
    qft_ds_template_free(&c.tmpl); /* every prompt is rendered by now */
    if (rc) return -1;
    *state = s;
    return 0;
}

static const qft_dataset_vtable k_vtable = {
    .config_keys = k_keys,
    .open = jsonl_open,
    .count = qft_ds_set_count,
    .get = qft_ds_set_get,
    .close = qft_ds_set_close,
    .skipped = qft_ds_set_skipped,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_DATASET,
    .name = "jsonl",
    .version = "1.0.0",
    .description = "any JSONL/JSON file: a {field} prompt template and a response field from the "
                   "config",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
