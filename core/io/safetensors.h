/* safetensors files: read (mmapped, validated) and write (atomically). Format: 8-byte
 * little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
 * optional "__metadata__", then the data. */
#ifndef QFT_SAFETENSORS_H
#define QFT_SAFETENSORS_H

#include "qft_base.h"

typedef struct qft_st_entry {
    char *name;
    qft_tensor t; /* t.data points into the mapping */
    size_t nbytes;
} qft_st_entry;

typedef struct qft_st_file {
    char path[4096];
    void *map;
    size_t map_len;
    qft_st_entry *entries;
    int n_entries;
    char **meta_keys, **meta_vals; /* __metadata__ */
    int n_meta;
} qft_st_file;

/* Opens and validates: header bounds, dtype names, shapes against byte ranges, ranges
 * inside the file. Errors name the file and the tensor. */
int qft_st_open(const char *path, qft_st_file *f, qft_err *err);
void qft_st_close(qft_st_file *f);
const qft_st_entry *qft_st_find(const qft_st_file *f, const char *name);

/* Writer: collect tensor views, then write them in one go through qft_atomic_*. */
typedef struct qft_st_writer {
    qft_st_entry *entries;
    int n_entries, cap;
    char **meta_keys, **meta_vals;
    int n_meta;
} qft_st_writer;
void qft_st_writer_init(qft_st_writer *w);
/* The tensor's data is not copied; it must stay valid until qft_st_write. */
int qft_st_writer_add(qft_st_writer *w, const char *name, const qft_tensor *t, qft_err *err);
int qft_st_writer_meta(qft_st_writer *w, const char *key, const char *val, qft_err *err);
int qft_st_write(qft_st_writer *w, const char *path, qft_err *err);
void qft_st_writer_free(qft_st_writer *w);

#endif
