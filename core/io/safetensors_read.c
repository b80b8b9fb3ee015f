/* safetensors reader. The file is mapped read-only and every tensor is a view into the
 * mapping, so opening a 100 GB checkpoint costs only its header; tensors are paged in when
 * a loader converts them. Validation is strict because a bad header otherwise turns into
 * an out-of-bounds read far from the cause: every message names the file and the tensor.
 *
 * Alignment: the format only promises byte offsets. A tensor may start at an address that
 * is not a multiple of its element size (a header length that is not a multiple of 8, or a
 * writer that does not sort by dtype), so readers must never cast t.data to a wider
 * pointer and dereference it. qft_st_entry_to_f32 below copies unaligned tensors through
 * an aligned bounce buffer; use it rather than qft_convert_to_f32 on a raw view. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A real header is a few hundred bytes per tensor; 100 MB means a corrupt length field,
 * and trusting it would make us parse (or allocate) garbage. */
#define QFT_ST_MAX_HEADER (100u * 1000u * 1000u)

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const qft_st_entry *)a)->name, ((const qft_st_entry *)b)->name);
}

/* Renders a JSON value for an error message, e.g. "abc" with its quotes, or 3.5. */
static void json_repr(const json_t *v, char *buf, size_t n) {
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(buf, n, "%s", s ? s : "(missing)");
    if (strlen(buf) + 1 == n && n > 4) memcpy(buf + n - 4, "...", 4);
    free(s);
}

static int parse_metadata(qft_st_file *f, json_t *meta, qft_err *err) {
    if (!json_is_object(meta))
        return qft_err_setf(err, "%s: __metadata__ must be an object of strings", f->path);
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals) return qft_err_setf(err, "%s: out of memory", f->path);
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val)) {
            char repr[64];
            json_repr(val, repr, sizeof repr);
            return qft_err_setf(err, "%s: __metadata__ key '%s' must be a string, got %s",
                                f->path, key, repr);
        }
        f->meta_keys[f->n_meta] = strdup(key);
        f->meta_vals[f->n_meta] = strdup(json_string_value(val));
        if (!f->meta_keys[f->n_meta] || !f->meta_vals[f->n_meta]) {
            f->n_meta++; /* so close frees whichever half was allocated */
            return qft_err_setf(err, "%s: out of memory", f->path);
        }
        f->n_meta++;
    }
    return 0;
}

/* Validates one tensor record and fills e (whose name is already set). data_size is the
 * number of bytes after the header; data points at its start. */
static int parse_tensor(const qft_st_file *f, const char *name, json_t *rec, uint8_t *data,
                        size_t data_size, qft_st_entry *e, qft_err *err) {
    char repr[128];
    if (!json_is_object(rec)) {
        json_repr(rec, repr, sizeof repr);
        return qft_err_setf(err, "%s: tensor '%s': record must be an object, got %s", f->path,
                            name, repr);
    }
    json_t *jd = json_object_get(rec, "dtype");
    if (!json_is_string(jd)) {
        json_repr(jd, repr, sizeof repr);
        return qft_err_setf(err, "%s: tensor '%s': 'dtype' must be a string, got %s", f->path,
                            name, repr);
    }
    if (qft_dtype_from_name(json_string_value(jd), &e->t.dtype) != 0)
        return qft_err_setf(err,
                            "%s: tensor '%s': unknown or unsupported dtype \"%s\" (qft reads "
                            "F32, F16, BF16, F64, I8, U8, I16, I32, I64, BOOL)",
                            f->path, name, json_string_value(jd));

    json_t *js = json_object_get(rec, "shape");
    if (!json_is_array(js)) {
        json_repr(js, repr, sizeof repr);
        return qft_err_setf(err, "%s: tensor '%s': 'shape' must be an array, got %s", f->path,
                            name, repr);
    }
    size_t nd = json_array_size(js);
    if (nd > QFT_MAX_DIMS)
        return qft_err_setf(err, "%s: tensor '%s': %zu dimensions, at most %d supported",
                            f->path, name, nd, QFT_MAX_DIMS);
    e->t.ndim = (int)nd;
    /* numel = product(shape); a 0-d tensor (shape []) holds one element */
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            json_repr(js, repr, sizeof repr);
            return qft_err_setf(err,
                                "%s: tensor '%s': shape entries must be non-negative "
                                "integers, got %s",
                                f->path, name, repr);
        }
        e->t.shape[i] = (int64_t)json_integer_value(d);
        uint64_t dim = (uint64_t)e->t.shape[i];
        if (dim && numel > UINT64_MAX / dim) overflow = 1;
        numel *= dim;
    }
    size_t esize = qft_dtype_size(e->t.dtype);
    if (overflow || (esize && numel > UINT64_MAX / esize)) {
        json_repr(js, repr, sizeof repr);
        return qft_err_setf(err, "%s: tensor '%s': shape %s overflows a byte count", f->path,
                            name, repr);
    }

    json_t *jo = json_object_get(rec, "data_offsets");
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(jb) ||
        !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < json_integer_value(jb)) {
        json_repr(jo, repr, sizeof repr);
        return qft_err_setf(err,
                            "%s: tensor '%s': 'data_offsets' must be [begin, end] with "
                            "0 <= begin <= end, got %s",
                            f->path, name, repr);
    }
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    if (end > data_size)
        return qft_err_setf(err,
                            "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of "
                            "the data section (%zu bytes; file truncated?)",
                            f->path, name, (unsigned long long)begin, (unsigned long long)end,
                            data_size);
    uint64_t want = numel * esize; // numel * sizeof(dtype)
    if (end - begin != want) {
        json_repr(js, repr, sizeof repr);
        return qft_err_setf(err,
                            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but "
                            "shape %s of %s needs %llu",
                            f->path, name, (unsigned long long)begin, (unsigned long long)end,
                            (unsigned long long)(end - begin), repr,
                            json_string_value(jd), (unsigned long long)want);
    }
    e->nbytes = (size_t)want;
    e->t.data = data + begin;
    return 0;
}

int qft_st_open(const char *path, qft_st_file *f, qft_err *err) {
    memset(f, 0, sizeof *f);
    if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path)
        return qft_err_setf(err, "%s: path too long", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qft_err_setf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qft_err_setf(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qft_err_setf(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return qft_err_setf(err,
                            "%s: file is %zu bytes, shorter than the 8-byte header length "
                            "(not a safetensors file, or truncated)",
                            path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return qft_err_setf(err, "%s: cannot mmap: %s", path, strerror(map_errno));
    f->map = map;
    f->map_len = size;

    const uint8_t *b = map;
    uint64_t hlen = 0; // little-endian u64, read bytewise: the format fixes the byte order
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    json_t *root = NULL;
    if (hlen > QFT_ST_MAX_HEADER) {
        qft_err_setf(err,
                     "%s: header length %llu is absurd (over %u bytes; not a safetensors "
                     "file?)",
                     path, (unsigned long long)hlen, QFT_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > size - 8) {
        qft_err_setf(err,
                     "%s: header length %llu runs past the end of the file (%zu bytes; "
                     "truncated?)",
                     path, (unsigned long long)hlen, size);
        goto fail;
    }
    json_error_t jerr;
    root = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        qft_err_setf(err, "%s: header is not valid JSON (line %d, column %d): %s", path,
                     jerr.line, jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        qft_err_setf(err, "%s: header must be a JSON object", path);
        goto fail;
    }
    uint8_t *data = (uint8_t *)map + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    size_t n = json_object_size(root);
    f->entries = calloc(n ? n : 1, sizeof *f->entries);
    if (!f->entries) {
        qft_err_setf(err, "%s: out of memory", path);
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (parse_metadata(f, val, err)) goto fail;
            continue;
        }
        qft_st_entry *e = &f->entries[f->n_entries];
        e->name = strdup(key);
        if (!e->name) {
            qft_err_setf(err, "%s: out of memory", path);
            goto fail;
        }
        f->n_entries++;
        if (parse_tensor(f, key, val, data, data_size, e, err)) goto fail;
    }
    json_decref(root);
    /* sorted by name so that qft_st_find is a binary search */
    qsort(f->entries, (size_t)f->n_entries, sizeof *f->entries, cmp_entry_name);
    return 0;
fail:
    json_decref(root);
    qft_st_close(f);
    return -1;
}

void qft_st_close(qft_st_file *f) {
    if (f->map) munmap(f->map, f->map_len);
    for (int i = 0; i < f->n_entries; i++) free(f->entries[i].name);
    free(f->entries);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    f->map = NULL;
    f->map_len = 0;
    f->entries = NULL;
    f->n_entries = 0;
    f->meta_keys = f->meta_vals = NULL;
    f->n_meta = 0;
}

const qft_st_entry *qft_st_find(const qft_st_file *f, const char *name) {
    if (!f->n_entries) return NULL;
    qft_st_entry key = {.name = (char *)name};
    return bsearch(&key, f->entries, (size_t)f->n_entries, sizeof *f->entries, cmp_entry_name);
}

const char *qft_st_meta(const qft_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

size_t qft_st_numel(const qft_tensor *t) {
    size_t n = 1; // product(shape); 1 for a 0-d tensor
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

int qft_st_entry_to_f32(const qft_st_file *f, const qft_st_entry *e, float *dst, qft_err *err) {
    qft_dtype dt = e->t.dtype;
    size_t esize = qft_dtype_size(dt);
    size_t n = qft_st_numel(&e->t);
    if (dt != QFT_DT_F32 && dt != QFT_DT_BF16 && dt != QFT_DT_F16 && dt != QFT_DT_F64)
        return qft_err_setf(err, "%s: tensor '%s': dtype %s is not a float type", f->path,
                            e->name, qft_dtype_name(dt));
    if ((uintptr_t)e->t.data % esize == 0) {
        if (qft_convert_to_f32(dst, e->t.data, dt, n, err))
            return qft_err_setf(err, "%s: tensor '%s': cannot convert %s to F32", f->path,
                                e->name, qft_dtype_name(dt));
        return 0;
    }
    /* Unaligned view: bounce through an aligned buffer a chunk at a time, so no wide load
     * ever touches the unaligned address and no full-size copy is made. */
    enum { CHUNK = 4096 };
    double bounce[CHUNK]; /* (CHUNK) elements of at most 8 bytes, 8-byte aligned */
    const uint8_t *src = e->t.data;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        memcpy(bounce, src + i * esize, k * esize);
        if (qft_convert_to_f32(dst + i, bounce, dt, k, err))
            return qft_err_setf(err, "%s: tensor '%s': cannot convert %s to F32", f->path,
                                e->name, qft_dtype_name(dt));
    }
    return 0;
}

void qft_st_release(const qft_st_file *f, const qft_st_entry *e) {
    /* Only pages wholly inside the tensor: a page shared with a neighbour may still be
     * needed. They are clean file pages, so dropping them frees resident memory and a
     * later read faults them back in from the file. */
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !e->nbytes) return;
    uintptr_t base = (uintptr_t)f->map;
    uintptr_t lo = (uintptr_t)e->t.data, hi = lo + e->nbytes;
    lo = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    hi &= ~((uintptr_t)page - 1);
    if (hi > lo && lo >= base) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
