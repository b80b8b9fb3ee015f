/* dora: PEFT's DoRA (LoraConfig use_dora = true): LoRA plus a trainable magnitude m per
 * output row, y = m / ||W + s B A|| (W x + s B A x) with the norm detached; with dropout,
 * PEFT's form y = W x + (f - 1) W d(x) + f s B A d(x). The norm never materialises W or
 * W + s B A: see adapters/common/lora_dora.c. Config keys as lora's (see
 * adapters/lora/lora_plugin.c), plus norm_tile_rows: rows of W per tile where the exact
 * norms are computed (initialisation, merging; 0 = about 1 MiB per tile). */
#include "lora_common.h"

static int dora_configure(const qft_services *svc, const config_setting_t *section, void **state,
                          qft_err *err) {
    return qft_lora_configure(svc, section, 1, state, err);
}

static const qft_adapter_vtable k_vtable = {
    .config_keys = qft_lora_config_keys,
    .configure = dora_configure,
    .targets = qft_lora_targets,
    .declare = qft_lora_declare,
    .attach = qft_lora_attach,
    .forward = qft_lora_forward,
    .backward = qft_lora_backward,
    .merge_rows = qft_lora_merge_rows,
    .peft_config = qft_lora_peft_config,
    .detach = qft_lora_detach,
    .close = qft_lora_close,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_ADAPTER,
    .name = "dora",
    .version = "1.0.0",
    .description = "DoRA as PEFT computes it (LoRA + magnitude, detached weight norm)",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
