/* Adapters in PEFT's format: adapter_model.safetensors (PEFT's key names, metadata
 * {"format": "pt"}) and adapter_config.json, so PEFT and vLLM load qft's adapters as they
 * are and qft loads theirs. */
#ifndef QFT_PEFT_ADAPTER_H
#define QFT_PEFT_ADAPTER_H

#include "llama.h"

/* Writes DIR/adapter_model.safetensors (the model's adapter tensors, fp32) and
 * DIR/adapter_config.json (PEFT's LoraConfig fields: the plugin's own from its
 * peft_config, the rest as PEFT writes them), each atomically; DIR is created. */
int qft_peft_save(const char *dir, const qft_llama_model *m, const char *base_model_name,
                  qft_err *err);
/* Reads DIR/adapter_model.safetensors into the model's adapter tensors (before attach,
 * which then runs with init = 0). Every declared tensor must be there with its shape, and
 * every tensor of the file must be declared: a mismatch names the file and the tensor. */
int qft_peft_load(const char *dir, qft_llama_model *m, qft_err *err);

#endif
