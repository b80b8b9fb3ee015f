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
/* The state of quantizer vt configured from a `quant` section naming `plugin`, whose
 * other settings are the lines of `body`; fails the test when configure refuses them. */
void *qt_configure(const qft_quantizer_vtable *vt, const char *plugin, const char *body);

/* A weight shape and the plugin settings of one bnb_nf4 or hqq test case. */
typedef struct qt_nf4_case {
    int64_t out, in;
    int bs, dq; /* blocksize, double_quant */
} qt_nf4_case;
typedef struct qt_hqq_case {
    int64_t out, in;
    int nbits, gs, axis, qz, qs; /* group_size, quant_zero, quant_scale */
} qt_hqq_case;
/* The plugin's state for the case (qt_configure), and the case described in what (n). */
void *qt_nf4_open(const qft_quantizer_vtable *vt, const qt_nf4_case *c, char *what, size_t n);
void *qt_hqq_open(const qft_quantizer_vtable *vt, const qt_hqq_case *c, char *what, size_t n);
/* Bytes of the case's weight data as the format defines it: codes and statistics, no
 * header and no codebook (NF4: packed codes, then the fp32 absmax or, double-quantized,
 * one byte a block and an fp32 nested absmax per 256 blocks; HQQ: packed codes, then zero
 * and scale, fp32 per group or 8-bit codes, the scale's with a (2, groups / 128) fp32
 * meta table). */
size_t qt_nf4_data_bytes(const qt_nf4_case *c);
size_t qt_hqq_data_bytes(const qt_hqq_case *c);

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
