/* safetensors writer. The layout copies what Python's safetensors (0.8) writes, so a file
 * qft saves is byte-for-byte the file torch would save for the same tensors and metadata:
 *  - data ordered by dtype, widest kind first (the library's Dtype enum, descending), then
 *    by name: with the header padded to 8 bytes this keeps every tensor aligned for its
 *    element size, so readers can use the data in place;
 *  - the header lists tensors in data order, "__metadata__" first;
 *  - the header is padded with spaces to a multiple of 8 bytes.
 * The file goes through qft_atomic_* so a crash never leaves half a checkpoint. */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Position in safetensors' Dtype enum (BOOL, ..., U8, I8, ..., I16, U16, F16, BF16, I32,
 * U32, F32, C64, F64, I64, U64) restricted to qft's dtypes; only the order matters. */
static int dtype_rank(qft_dtype dt) {
    switch (dt) {
    case QFT_DT_BOOL: return 0;
    case QFT_DT_U8: return 1;
    case QFT_DT_I8: return 2;
    case QFT_DT_I16: return 3;
    case QFT_DT_F16: return 4;
    case QFT_DT_BF16: return 5;
    case QFT_DT_I32: return 6;
    case QFT_DT_F32: return 7;
    case QFT_DT_F64: return 8;
    case QFT_DT_I64: return 9;
    default: return -1;
    }
}

void qft_st_writer_init(qft_st_writer *w) { memset(w, 0, sizeof *w); }

void qft_st_writer_free(qft_st_writer *w) {
    for (int i = 0; i < w->n_entries; i++) free(w->entries[i].name);
    free(w->entries);
    free(w->src_dtype);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->meta_keys);
    free(w->meta_vals);
    memset(w, 0, sizeof *w);
}

static int add_entry(qft_st_writer *w, const char *name, const qft_tensor *t, qft_dtype src_dt,
                     qft_dtype out_dt, qft_err *err) {
    if (!name || !*name) return qft_err_setf(err, "safetensors writer: empty tensor name");
    if (strcmp(name, "__metadata__") == 0)
        return qft_err_setf(err, "safetensors writer: '__metadata__' is reserved, not a tensor name");
    if (dtype_rank(out_dt) < 0)
        return qft_err_setf(err, "safetensors writer: tensor '%s': invalid dtype %d", name,
                            (int)out_dt);
    if (t->ndim < 0 || t->ndim > QFT_MAX_DIMS)
        return qft_err_setf(err, "safetensors writer: tensor '%s': %d dimensions", name, t->ndim);
    size_t numel = 1; // product(shape)
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return qft_err_setf(err, "safetensors writer: tensor '%s': negative dimension %lld",
                                name, (long long)t->shape[i]);
        numel *= (size_t)t->shape[i];
    }
    if (numel && !t->data)
        return qft_err_setf(err, "safetensors writer: tensor '%s': no data", name);
    for (int i = 0; i < w->n_entries; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return qft_err_setf(err, "safetensors writer: tensor '%s' added twice", name);
    if (w->n_entries == w->cap) {
        int cap = w->cap ? w->cap * 2 : 32;
        qft_st_entry *ne = realloc(w->entries, (size_t)cap * sizeof *ne);
        if (!ne) return qft_err_setf(err, "safetensors writer: out of memory");
        w->entries = ne;
        qft_dtype *nd = realloc(w->src_dtype, (size_t)cap * sizeof *nd);
        if (!nd) return qft_err_setf(err, "safetensors writer: out of memory");
        w->src_dtype = nd;
        w->cap = cap;
    }
    qft_st_entry *e = &w->entries[w->n_entries];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return qft_err_setf(err, "safetensors writer: out of memory");
    e->t = *t;
    e->t.dtype = out_dt;
    e->nbytes = numel * qft_dtype_size(out_dt); // numel * sizeof(out dtype)
    w->src_dtype[w->n_entries] = src_dt;
    w->n_entries++;
    return 0;
}

int qft_st_writer_add(qft_st_writer *w, const char *name, const qft_tensor *t, qft_err *err) {
    return add_entry(w, name, t, t->dtype, t->dtype, err);
}

int qft_st_writer_add_f32(qft_st_writer *w, const char *name, const qft_tensor *t,
                          qft_dtype out_dtype, qft_err *err) {
    if (t->dtype != QFT_DT_F32)
        return qft_err_setf(err, "safetensors writer: tensor '%s': source must be F32, is %s",
                            name, qft_dtype_name(t->dtype));
    if (out_dtype != QFT_DT_F32 && out_dtype != QFT_DT_BF16 && out_dtype != QFT_DT_F16)
        return qft_err_setf(err, "safetensors writer: tensor '%s': cannot write F32 as %s",
                            name, qft_dtype_name(out_dtype));
    return add_entry(w, name, t, QFT_DT_F32, out_dtype, err);
}

int qft_st_writer_meta(qft_st_writer *w, const char *key, const char *val, qft_err *err) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            char *v = strdup(val);
            if (!v) return qft_err_setf(err, "safetensors writer: out of memory");
            free(w->meta_vals[i]);
            w->meta_vals[i] = v;
            return 0;
        }
    char **nk = realloc(w->meta_keys, (size_t)(w->n_meta + 1) * sizeof *nk);
    if (!nk) return qft_err_setf(err, "safetensors writer: out of memory");
    w->meta_keys = nk;
    char **nv = realloc(w->meta_vals, (size_t)(w->n_meta + 1) * sizeof *nv);
    if (!nv) return qft_err_setf(err, "safetensors writer: out of memory");
    w->meta_vals = nv;
    char *k = strdup(key), *v = strdup(val);
    if (!k || !v) {
        free(k);
        free(v);
        return qft_err_setf(err, "safetensors writer: out of memory");
    }
    w->meta_keys[w->n_meta] = k;
    w->meta_vals[w->n_meta] = v;
    w->n_meta++;
    return 0;
}

/* The write order, keeping each entry's index so its source dtype can be found. */
typedef struct {
    const qft_st_entry *e;
    int idx;
} order_item;

static int cmp_order(const void *pa, const void *pb) {
    const order_item *a = pa, *b = pb;
    int ra = dtype_rank(a->e->t.dtype), rb = dtype_rank(b->e->t.dtype);
    if (ra != rb) return rb - ra; /* widest dtype kind first */
    return strcmp(a->e->name, b->e->name);
}

/* Builds the header JSON (without padding) for the entries in `order`. */
static char *build_header(const qft_st_writer *w, const order_item *order) {
    json_t *root = json_object();
    if (!root) return NULL;
    int bad = 0;
    if (w->n_meta) {
        json_t *meta = json_object();
        bad |= !meta || json_object_set_new(root, "__metadata__", meta) != 0;
        for (int i = 0; !bad && i < w->n_meta; i++)
            bad |= json_object_set_new(meta, w->meta_keys[i], json_string(w->meta_vals[i])) != 0;
    }
    uint64_t off = 0;
    for (int i = 0; !bad && i < w->n_entries; i++) {
        const qft_st_entry *e = order[i].e;
        json_t *rec = json_object(), *shape = json_array(), *offs = json_array();
        bad |= !rec || !shape || !offs;
        if (bad) {
            json_decref(rec);
            json_decref(shape);
            json_decref(offs);
            break;
        }
        for (int d = 0; d < e->t.ndim; d++)
            bad |= json_array_append_new(shape, json_integer((json_int_t)e->t.shape[d])) != 0;
        bad |= json_array_append_new(offs, json_integer((json_int_t)off)) != 0;
        bad |= json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes))) != 0;
        bad |= json_object_set_new(rec, "dtype", json_string(qft_dtype_name(e->t.dtype))) != 0;
        bad |= json_object_set_new(rec, "shape", shape) != 0;
        bad |= json_object_set_new(rec, "data_offsets", offs) != 0;
        bad |= json_object_set_new(root, e->name, rec) != 0;
        off += e->nbytes;
    }
    char *s = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

static int write_converted(FILE *fp, const qft_st_entry *e, qft_err *err) {
    enum { CHUNK = 16384 };
    uint16_t buf[CHUNK]; /* (CHUNK) converted 2-byte elements */
    const float *src = e->t.data;
    size_t n = e->nbytes / qft_dtype_size(e->t.dtype);
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        if (qft_convert_from_f32(buf, e->t.dtype, src + i, k, err)) return -1;
        if (fwrite(buf, 2, k, fp) != k) return -1;
    }
    return 0;
}

int qft_st_write(qft_st_writer *w, const char *path, qft_err *err) {
    order_item *order = malloc((size_t)(w->n_entries ? w->n_entries : 1) * sizeof *order);
    if (!order) return qft_err_setf(err, "%s: out of memory", path);
    for (int i = 0; i < w->n_entries; i++) order[i] = (order_item){&w->entries[i], i};
    qsort(order, (size_t)w->n_entries, sizeof *order, cmp_order);
    char *hdr = build_header(w, order);
    if (!hdr) {
        free(order);
        return qft_err_setf(err, "%s: out of memory building the header", path);
    }
    size_t hlen = strlen(hdr);
    size_t padded = (hlen + 7) / 8 * 8; /* the data then starts 8-byte aligned */
    qft_atomic_file af;
    if (qft_atomic_open(&af, path, err)) {
        free(hdr);
        free(order);
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int bad = fwrite(len8, 1, 8, af.f) != 8 || fwrite(hdr, 1, hlen, af.f) != hlen;
    for (size_t i = hlen; !bad && i < padded; i++) bad = fputc(' ', af.f) == EOF;
    free(hdr);
    for (int i = 0; !bad && i < w->n_entries; i++) {
        const qft_st_entry *e = order[i].e;
        qft_dtype src_dt = w->src_dtype[order[i].idx];
        if (!e->nbytes) continue;
        if (src_dt == e->t.dtype)
            bad = fwrite(e->t.data, 1, e->nbytes, af.f) != e->nbytes;
        else
            bad = write_converted(af.f, e, err) != 0;
    }
    free(order);
    if (bad) {
        int saved = errno;
        qft_atomic_abort(&af);
        return qft_err_setf(err, "%s: write failed: %s", path, strerror(saved));
    }
    return qft_atomic_commit(&af, err);
}
