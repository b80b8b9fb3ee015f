/* Hugging Face Llama folders: config.json, model.safetensors or a sharded
 * model.safetensors.index.json, loaded into a qft_llama_model; and saved back. */
#ifndef QFT_HF_MODEL_H
#define QFT_HF_MODEL_H

#include "llama.h"

/* Parses DIR/config.json (or a config.json path). Accepts transformers 4 and 5 spellings
 * (rope_theta/rope_scaling or rope_parameters; torch_dtype or dtype); refuses another
 * model_type, biases, a non-silu activation, RoPE scalings other than default/llama3.
 * Errors name the file and the key. */
int qft_hf_config_load(const char *path, qft_llama_config *cfg, qft_err *err);
/* Writes config.json for cfg (torch_dtype = dtype_name, or cfg->torch_dtype when NULL)
 * through an atomic write; path is the file or its folder. */
int qft_hf_config_save(const char *path, const qft_llama_config *cfg, const char *dtype_name,
                       qft_err *err);
/* Loads config and weights (F32/BF16/F16 converted to fp32) from model.safetensors, or
 * when absent from the shards model.safetensors.index.json lists (transformers' order of
 * preference). Errors name file and tensor: missing tensor, shape that disagrees with
 * config.json, unknown dtype, a tensor that is not a Llama parameter (rotary inv_freq
 * buffers, and lm_head.weight of a tied model, are ignored as transformers does). On
 * error m holds nothing to free. */
int qft_hf_model_load(const char *dir, qft_llama_model *m, qft_err *err);
/* The same with tensor roles and a quantizer: frozen linears the build quantizes are read
 * from the quantizer's own keys when the checkpoint is pre-quantized, else converted one
 * at a time and quantized as they arrive (peak: the packed model plus one dense tensor). */
int qft_hf_model_load_build(const char *dir, qft_llama_model *m, const qft_llama_build *build,
                            qft_err *err);
/* Writes DIR/model.safetensors (metadata {"format": "pt"}) and DIR/config.json in dtype
 * (F32, BF16 or F16), each atomically; DIR is created when missing. A tied head is written
 * once, as model.embed_tokens.weight, as transformers does. */
int qft_hf_model_save(const char *dir, const qft_llama_model *m, qft_dtype dtype, qft_err *err);
/* keep_packed: quantized linears are written in their quantizer's format (the peer
 * library's key names, through qft_quantizer_vtable.save) instead of dequantized, and
 * adapters are left out; otherwise packed linears are dequantized and attached adapters
 * merged, giving a dense checkpoint that computes what the adapted model computes. */
int qft_hf_model_save_ex(const char *dir, const qft_llama_model *m, qft_dtype dtype,
                         int keep_packed, qft_err *err);

/* Sets key `key` of the JSON object in `path` (a config.json) to the JSON value `json`,
 * rewriting the file atomically; used for transformers' quantization_config. */
int qft_hf_config_set_json(const char *path, const char *key, const char *json, qft_err *err);

#endif
