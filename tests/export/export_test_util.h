/* Helpers of the export tests (qft expand, qft merge, qft's PEFT-format adapter): the
 * qft command run as a child, a scratch folder, fixture tensors read as fp32, and the
 * adapted tiny Llama of tests/fixtures/llama/untied with a PEFT adapter fixture loaded. */
#ifndef QFT_EXPORT_TEST_UTIL_H
#define QFT_EXPORT_TEST_UTIL_H

#include "llama.h"
#include "safetensors.h"

/* $QFT_SOURCE_ROOT (the repository root), "." when unset. */
const char *et_root(void);
/* A scratch folder made once per process (mkdtemp), removed by et_cleanup. */
const char *et_tmp(void);
void et_cleanup(void);
/* Runs a shell command with stderr folded into stdout; *out (malloc'ed) holds what it
 * printed. Returns its exit status, -1 when it did not exit normally. */
int et_run(const char *cmd, char **out);

/* A tensor of an open safetensors file as fp32 (malloc'ed; numel in *n when n is set);
 * I32 entries are converted value by value. Fails the running check when absent. */
float *et_f32(const qft_st_file *f, const char *name, size_t *n);

/* The base tests/fixtures/llama/untied with the adapter plugin named by env var
 * plugin_env (configured from cfg_text, an `adapter` group) and the PEFT-format adapter
 * in adapter_dir loaded into it (attach with init = 0), gradients allocated. *state is
 * the plugin's configured state: close it with (*vt)->close after qft_llama_free. */
void et_load_adapted(qft_llama_model *m, const char *plugin_env, const char *cfg_text,
                     const char *adapter_dir, const qft_adapter_vtable **vt, void **state);

/* A batch of B*T token ids drawn from seed below vocab, no padding; labels = ids. */
void et_random_batch(qft_batch *b, int B, int T, int vocab, uint64_t seed);
void et_free_batch(qft_batch *b);
/* Logits (B, T, V) of an evaluation forward (adapters in eval mode, no dropout), copied
 * (malloc'ed). */
float *et_logits(qft_llama_model *m, const qft_batch *b);

/* max |a - b| / max |b| (the error relative to the reference's scale). */
double et_rel_err(const float *a, const float *b, size_t n);

#endif
