/* Hugging Face Llama folders: config.json, model.safetensors or a sharded
 * model.safetensors.index.json, loaded into a qft_llama_model; and saved back. */
#ifndef QFT_HF_MODEL_H
#define QFT_HF_MODEL_H

#include "llama.h"

/* Parses DIR/config.json (or a config.json path). Errors name the file and the key. */
int qft_hf_config_load(const char *path, qft_llama_config *cfg, qft_err *err);
/* Writes config.json for cfg (torch_dtype = dtype_name) through an atomic write. */
int qft_hf_config_save(const char *path, const qft_llama_config *cfg, const char *dtype_name,
                       qft_err *err);
/* Loads config and weights (F32/BF16/F16 converted to fp32). Errors name file and tensor:
 * missing tensor, shape that disagrees with config.json, unknown dtype. */
int qft_hf_model_load(const char *dir, qft_llama_model *m, qft_err *err);
/* Writes DIR/model.safetensors and DIR/config.json in dtype (F32 or BF16), each
 * atomically; DIR is created when missing. */
int qft_hf_model_save(const char *dir, const qft_llama_model *m, qft_dtype dtype, qft_err *err);

#endif
