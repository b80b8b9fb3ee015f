/* orca_math: question/answer rows (microsoft/orca-math-word-problems-200k, or any file with
 * that schema such as GSM8K's train.jsonl) with the seed's prompt and split.
 *
 * File: JSONL or a JSON array of {"question": string, "answer": string}; other fields are
 * ignored. Prompt "###Question:\n{question}\n###Answer:\n", response = answer.
 *
 * Order and split (fsdp_qlora train.py and evaluate.py): the usable rows are shuffled as
 * `Dataset.shuffle(seed)`, i.e. numpy default_rng(seed).permutation(n), seed = data.seed
 * (default 42, the seed's fixed value). The last P rows of that order are the validation
 * pool; its first data.eval_holdout rows are the ones scored.
 *   P = data.eval_pool when set; else 0 when eval_holdout = 0; else 5000 when the file has
 *   at least 50,000 usable rows and eval_holdout <= 5000 (the seed's rule on the 200,035-row
 *   Orca-Math: "the last 5,000 are the validation pool, its first 500 are scored"); else
 *   eval_holdout (a small file such as GSM8K's 7,473 rows holds out only the rows it scores).
 * data.split = "train" (default) yields the first dataset_samples rows of the order (all
 * when -1), never reaching into the pool; "eval" yields the eval_holdout scored rows.
 * The seed trains on the first dataset_samples rows of the same order, so for any
 * dataset_samples <= n - P both pick the same rows.
 *
 * Keys in `data`: path (required), split, eval_pool; and of the core's: seed,
 * dataset_samples, eval_holdout, skip_bad_rows (bad rows skipped and counted; with
 * skip_bad_rows the shuffle runs over the good rows only). */
#include "ds_set.h"

#include <string.h>

#define ORCA_SEED_POOL 5000L      /* evaluate.py: dataset.select(range(len - 5000, len)) */
#define ORCA_SEED_MIN_ROWS 50000L /* below this a 5,000-row pool would starve training */

static const char *const k_keys[] = {"path", "split", "eval_pool", NULL};

static const qft_ds_field k_fields[] = {
    {"question", 0, "the prompt's {question}"},
    {"answer", 0, "the response"},
};

static long orca_pool(const qft_ds_opts *o, long n) {
    if (o->eval_pool >= 0) return o->eval_pool;
    if (o->eval_holdout == 0) return 0;
    if (n >= ORCA_SEED_MIN_ROWS && o->eval_holdout <= ORCA_SEED_POOL) return ORCA_SEED_POOL;
    return o->eval_holdout;
}

static int orca_render(void *ctx, const char *const *cells, qft_ds_arena *arena,
                       const char **prompt, const char **response) {
    (void)ctx;
    static const char head[] = "###Question:\n", tail[] = "\n###Answer:\n";
    const size_t q = strlen(cells[0]);
    char *p = qft_ds_arena_alloc(arena, sizeof head - 1 + q + sizeof tail); // head + q + tail + NUL
    if (!p) return -1;
    memcpy(p, head, sizeof head - 1);
    memcpy(p + sizeof head - 1, cells[0], q);
    memcpy(p + sizeof head - 1 + q, tail, sizeof tail); /* with its NUL */
    *prompt = p;
    *response = cells[1];
    return 0;
}

static int orca_open(const qft_services *svc, const config_setting_t *section, void **state,
                     qft_err *err) {
    const qft_ds_spec spec = {
        .plugin = "orca_math", .config_keys = k_keys, .fields = k_fields, .n_fields = 2,
        .default_shuffle = 1, .pool_rule = orca_pool, .render = orca_render, .ctx = NULL,
    };
    qft_ds_set *s;
    if (qft_ds_set_open(svc, section, &spec, &s, err)) return -1;
    *state = s;
    return 0;
}

static const qft_dataset_vtable k_vtable = {
    .config_keys = k_keys,
    .open = orca_open,
    .count = qft_ds_set_count,
    .get = qft_ds_set_get,
    .close = qft_ds_set_close,
    .skipped = qft_ds_set_skipped,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_DATASET,
    .name = "orca_math",
    .version = "1.0.0",
    .description = "question/answer rows with the seed's Orca-Math prompt, shuffle (seed 42) and "
                   "validation pool",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
