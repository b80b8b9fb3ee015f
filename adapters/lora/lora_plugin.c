/* lora: PEFT's LoRA on the frozen linears of a Llama model, y = W x + s B A dropout(x).
 * Config keys of `adapter`: rank (8), alpha (8), dropout (0.0), rslora (false: s =
 * alpha / rank; true: alpha / sqrt(rank)), target_modules (a list of module names, or
 * "all" = q,k,v,gate,up,down as fsdp_qlora, "all-linear" = all seven, "default" = PEFT's
 * q,v for Llama, or any other string as a regular expression on the full module name),
 * init_lora_weights (true, false or "gaussian") and norm_tile_rows (DoRA only; ignored).
 * The code is adapters/common's, shared with dora. */
#include "lora_common.h"

static int lora_configure(const qft_services *svc, const config_setting_t *section, void **state,
                          qft_err *err) {
    return qft_lora_configure(svc, section, 0, state, err);
}

static const qft_adapter_vtable k_vtable = {
    .config_keys = qft_lora_config_keys,
    .configure = lora_configure,
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
    .name = "lora",
    .version = "1.0.0",
    .description = "LoRA as PEFT computes it (rank, alpha, dropout, rsLoRA, target_modules)",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
