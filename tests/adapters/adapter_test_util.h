/* Helpers of the adapter plugin tests and the adapter benchmark: the plugins loaded by
 * their build-tree paths, services backed by the core's own functions (CPU op table,
 * accounted memory, the real config key check), and a qft_linear_base over a dense fp32
 * weight, which is all a quantized base is to an adapter (its dequantized rows). */
#ifndef QFT_ADAPTER_TEST_UTIL_H
#define QFT_ADAPTER_TEST_UTIL_H

#include "qft_sdk.h"

/* The vtable of the adapter plugin whose path is in env var `env`, or NULL (message). */
const qft_adapter_vtable *at_load_plugin(const char *env);
const qft_services *at_services(void);

/* A dense base W (out, in), row-major, not owned. Counts its weight_rows calls and the
 * largest tile asked for, so a test can check DoRA never asks for all rows at once. */
typedef struct at_dense {
    const float *W;
    int64_t out, in;
    long row_calls;
    int64_t max_rows;
    long fwd_calls, bwd_calls;
} at_dense;

void at_dense_init(at_dense *d, qft_linear_base *lin, const float *W, int64_t out, int64_t in,
                   const char *name, const char *module, int layer);

/* A configured adapter from config text holding an `adapter` group; the text is written to
 * a file so that errors carry a file name and line. Returns 0 or -1 with err. */
int at_configure(const qft_adapter_vtable *vt, const char *text, void **state, qft_err *err);

/* Declared tensors with zeroed data and grad (owned by the caller: at_free_params). */
int at_declare(const qft_adapter_vtable *vt, const void *state, const qft_linear_base *lin,
               qft_adapter_param *params, int *n, qft_err *err);
void at_free_params(qft_adapter_param *params, int n);

/* Fills x (n) from a fixed-seed N(0, 1) stream. */
void at_randn(float *x, size_t n, uint64_t seed);

/* max |a - b| / max |b|: the error relative to the reference's scale (so that elements
 * near zero, which any GEMM order changes in their last bits, do not dominate). */
double at_rel_err(const float *a, const float *b, size_t n);

#endif
