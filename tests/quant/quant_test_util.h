/* Shared pieces of the quantizer tests: loading a plugin .so by its build-tree path, a
 * services table, config sections from text, an in-memory tensor sink and sources over
 * it or over a safetensors file. */
#ifndef QFT_QUANT_TEST_UTIL_H
#define QFT_QUANT_TEST_UTIL_H

#include "qft_base.h"
#include "safetensors.h"

#include <libconfig.h>

/* The vtable of the quantizer at the path in environment variable `env`; NULL (and a
 * message on stderr) when it cannot be loaded. */
const qft_quantizer_vtable *qt_load_plugin(const char *env);
const qft_services *qt_services(void);

/* Parses `text` (written to a temporary file, so settings carry a file and line) and
 * returns its `quant` group; qt_cfg_free releases it. path receives the file's name. */
config_setting_t *qt_cfg(config_t *cfg, const char *text, char *path, size_t n);
void qt_cfg_free(config_t *cfg, const char *path);

/* In-memory sink: the tensors handed to add (views, not copies). */
typedef struct qt_mem_entry {
    char name[256];
    qft_tensor t;
} qt_mem_entry;
typedef struct qt_mem {
    qt_mem_entry e[64];
    int n;
} qt_mem;
qft_tensor_sink qt_mem_sink(qt_mem *m);
const qft_tensor *qt_mem_find(const qt_mem *m, const char *name);
/* A source over a qt_mem. */
qft_tensor_source qt_mem_source(qt_mem *m);
/* A source over an open safetensors file. */
qft_tensor_source qt_st_source(qft_st_file *f);

size_t qt_numel(const qft_tensor *t);
size_t qt_dtype_size(qft_dtype d);
/* The fixture directory tests/fixtures/quant under QFT_SOURCE_ROOT (or the source tree). */
const char *qt_fixture_dir(void);
/* A fixture tensor by name (fails the test when missing). */
const qft_st_entry *qt_need(const qft_st_file *f, const char *name);
/* Reads a F32/BF16 tensor as fp32 into a fresh malloc'd buffer. */
float *qt_f32(const qft_st_file *f, const char *name, size_t *n);

#endif
