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
 * inside the file. Errors name the file and the tensor. Entries are sorted by name.
 * t.data may be unaligned for its dtype (the format only fixes byte offsets): never cast
 * it to a wider pointer; read through memcpy or qft_st_entry_to_f32. */
int qft_st_open(const char *path, qft_st_file *f, qft_err *err);
void qft_st_close(qft_st_file *f);
const qft_st_entry *qft_st_find(const qft_st_file *f, const char *name);
/* The __metadata__ value for key, or NULL. */
const char *qft_st_meta(const qft_st_file *f, const char *key);
/* product(shape); 1 for a 0-d tensor. */
size_t qft_st_numel(const qft_tensor *t);
/* Converts a F32/BF16/F16/F64 entry to fp32 into dst (numel floats), whatever the
 * alignment of its bytes in the file. Errors name the file and the tensor. */
int qft_st_entry_to_f32(const qft_st_file *f, const qft_st_entry *e, float *dst, qft_err *err);
/* Drops the entry's pages from the process's resident set once it has been consumed (the
 * mapping stays valid; pages fault back in from the file if read again). */
void qft_st_release(const qft_st_file *f, const qft_st_entry *e);

/* Writer: collect tensor views, then write them in one go through qft_atomic_*. The file
 * matches what Python's safetensors writes for the same tensors: tensors ordered by dtype
 * (widest first, so every tensor stays aligned) then by name, "__metadata__" first in the
 * header, the header padded with spaces to a multiple of 8 bytes. */
typedef struct qft_st_writer {
    qft_st_entry *entries;   /* t.dtype is the dtype written to the file */
    qft_dtype *src_dtype;    /* [cap] dtype of the memory at entries[i].t.data */
    int n_entries, cap;
    char **meta_keys, **meta_vals;
    int n_meta;
} qft_st_writer;
void qft_st_writer_init(qft_st_writer *w);
/* The tensor's data is not copied; it must stay valid until qft_st_write. */
int qft_st_writer_add(qft_st_writer *w, const char *name, const qft_tensor *t, qft_err *err);
/* Adds an F32 tensor to be written as out_dtype (F32, BF16 or F16), converted in small
 * chunks while writing so no converted copy of the tensor is ever held. */
int qft_st_writer_add_f32(qft_st_writer *w, const char *name, const qft_tensor *t,
                          qft_dtype out_dtype, qft_err *err);
int qft_st_writer_meta(qft_st_writer *w, const char *key, const char *val, qft_err *err);
int qft_st_write(qft_st_writer *w, const char *path, qft_err *err);
void qft_st_writer_free(qft_st_writer *w);

#endif
