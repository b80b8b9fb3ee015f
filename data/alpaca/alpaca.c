/* alpaca: instruction/input/output rows (Stanford Alpaca, yahma/alpaca-cleaned) with the
 * seed's two templates (fsdp_qlora train.py PROMPT_DICT).
 *
 * File: JSONL or a JSON array of {"instruction": string, "input": string, "output":
 * string}; "input" may be absent (read as ""), other fields are ignored. An empty input
 * selects the no-input template, as the seed's `ann.get("input", "") == ""` does:
 *   no input: "Below is an instruction that describes a task. Write a response that
 *              appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n
 *              ### Response:"
 *   input:    "Below is an instruction that describes a task, paired with an input that
 *              provides further context. Write a response that appropriately completes the
 *              request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n
 *              ### Response:"
 * (no spaces at the line joins above), response = output.
 *
 * Order: the seed loads yahma/alpaca-cleaned's train split and does not shuffle it, so the
 * default is file order; `shuffle = true` orders the rows as numpy
 * default_rng(data.seed).permutation(n), the order of Dataset.shuffle(seed). Split: the
 * last data.eval_holdout rows of the order are held out; data.split = "train" (default)
 * yields the first dataset_samples of the rest (all when -1), "eval" the held-out rows.
 *
 * Keys in `data`: path (required), split, shuffle; and of the core's: seed,
 * dataset_samples, eval_holdout, skip_bad_rows. */
#include "ds_set.h"

#include <string.h>

static const char *const k_keys[] = {"path", "split", "shuffle", NULL};

static const qft_ds_field k_fields[] = {
    {"instruction", 0, "the prompt's {instruction}"},
    {"input", 1, NULL},
    {"output", 0, "the response"},
};

static const char k_no_input_head[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n";
static const char k_input_head[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n";
static const char k_input_mid[] = "\n\n### Input:\n";
static const char k_tail[] = "\n\n### Response:";

static int alpaca_render(void *ctx, const char *const *cells, qft_ds_arena *arena,
                         const char **prompt, const char **response) {
    (void)ctx;
    const char *ins = cells[0], *in = cells[1];
    const int with_input = in && *in;
    const char *head = with_input ? k_input_head : k_no_input_head;
    const size_t nh = strlen(head), ni = strlen(ins), nin = with_input ? strlen(in) : 0;
    const size_t nm = with_input ? sizeof k_input_mid - 1 : 0;
    char *p = qft_ds_arena_alloc(arena, nh + ni + nm + nin + sizeof k_tail); // + NUL
    if (!p) return -1;
    char *w = p;
    memcpy(w, head, nh), w += nh;
    memcpy(w, ins, ni), w += ni;
    if (with_input) {
        memcpy(w, k_input_mid, nm), w += nm;
        memcpy(w, in, nin), w += nin;
    }
    memcpy(w, k_tail, sizeof k_tail); /* with its NUL */
    *prompt = p;
    *response = cells[2];
    return 0;
}

static int alpaca_open(const qft_services *svc, const config_setting_t *section, void **state,
                       qft_err *err) {
    const qft_ds_spec spec = {
        .plugin = "alpaca", .config_keys = k_keys, .fields = k_fields, .n_fields = 3,
        .default_shuffle = 0, .pool_rule = NULL, .render = alpaca_render, .ctx = NULL,
    };
    qft_ds_set *s;
    if (qft_ds_set_open(svc, section, &spec, &s, err)) return -1;
    *state = s;
    return 0;
}

static const qft_dataset_vtable k_vtable = {
    .config_keys = k_keys,
    .open = alpaca_open,
    .count = qft_ds_set_count,
    .get = qft_ds_set_get,
    .close = qft_ds_set_close,
    .skipped = qft_ds_set_skipped,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_DATASET,
    .name = "alpaca",
    .version = "1.0.0",
    .description = "instruction/input/output rows with the seed's two Alpaca templates",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
