/* Saving and loading in bitsandbytes' serialized form (QuantState.as_dict(packed=True)),
 * so that transformers loads what qft saves and qft loads what transformers saves:
 *   <prefix>.weight                                   packed codes, uint8 [(n+1)/2, 1]
 *   <prefix>.weight.absmax                            uint8 (double quant) or fp32 [blocks]
 *   <prefix>.weight.quant_map                         fp32 [16]
 *   <prefix>.weight.nested_absmax                     fp32 [ceil(blocks/256)]
 *   <prefix>.weight.nested_quant_map                  fp32 [256]
 *   <prefix>.weight.quant_state.bitsandbytes__nf4     uint8 bytes of a JSON object */
#include "nf4.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *dtype_torch_name(qft_dtype d) {
    switch (d) {
    case QFT_DT_BF16: return "bfloat16";
    case QFT_DT_F16: return "float16";
    case QFT_DT_U8: return "uint8";
    default: return "float32";
    }
}

static size_t dtype_size(qft_dtype d) {
    switch (d) {
    case QFT_DT_F32: case QFT_DT_I32: return 4;
    case QFT_DT_F16: case QFT_DT_BF16: case QFT_DT_I16: return 2;
    case QFT_DT_F64: case QFT_DT_I64: return 8;
    default: return 1;
    }
}

static int64_t numel(const qft_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* Python's repr of a float: the shortest digits that read back as the same double, with
 * ".0" on integral values, so the JSON bytes match json.dumps of offset.item(). */
static void py_float_repr(double v, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eni")) strncat(buf, ".0", n - strlen(buf) - 1);
}

int nf4_build_qs_json(struct qft_qweight *qw) {
    char off[64];
    int len;
    if (qw->double_quant) {
        py_float_repr((double)qw->offset, off, sizeof off);
        len = snprintf(qw->qs_json, sizeof qw->qs_json,
                       "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": "
                       "[%lld, %lld], \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", "
                       "\"nested_offset\": %s}",
                       qw->blocksize, dtype_torch_name(qw->dtype), (long long)qw->out,
                       (long long)qw->in, NF4_NESTED_BLOCK, off);
    } else {
        len = snprintf(qw->qs_json, sizeof qw->qs_json,
                       "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": "
                       "[%lld, %lld]}",
                       qw->blocksize, dtype_torch_name(qw->dtype), (long long)qw->out,
                       (long long)qw->in);
    }
    if (len < 0 || len >= (int)sizeof qw->qs_json) return -1;
    qw->qs_len = len;
    return 0;
}

static int add(const qft_tensor_sink *sink, const char *prefix, const char *suffix,
               qft_dtype dt, int ndim, int64_t d0, int64_t d1, const void *data, qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.weight%s", prefix, suffix);
    qft_tensor t = {.dtype = dt, .ndim = ndim, .shape = {d0, d1}, .data = (void *)data};
    return sink->add(sink->ctx, name, &t, err);
}

int nf4_save(const qft_qweight *qw, const char *prefix, const qft_tensor_sink *sink,
             qft_err *err) {
    const int64_t nbytes = (qw->n + 1) / 2; // packed bytes
    const size_t es = dtype_size(qw->quant_storage);
    if (nbytes % (int64_t)es)
        return qft_err_setf(err, "bnb_nf4: %s.weight: %lld packed bytes cannot be viewed as %s",
                            prefix, (long long)nbytes, dtype_torch_name(qw->quant_storage));
    const int64_t nb = qw->n_blocks;
    const int64_t nn = (nb + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;
    if (add(sink, prefix, "", qw->quant_storage, 2, nbytes / (int64_t)es, 1, qw->packed, err))
        return -1;
    if (qw->double_quant) {
        if (add(sink, prefix, ".absmax", QFT_DT_U8, 1, nb, 0, qw->qabsmax, err) ||
            add(sink, prefix, ".nested_absmax", QFT_DT_F32, 1, nn, 0, qw->nested_absmax, err) ||
            add(sink, prefix, ".nested_quant_map", QFT_DT_F32, 1, 256, 0, qw->nested_map, err))
            return -1;
    } else if (add(sink, prefix, ".absmax", QFT_DT_F32, 1, nb, 0, qw->absmax, err)) {
        return -1;
    }
    if (add(sink, prefix, ".quant_map", QFT_DT_F32, 1, 16, 0, qw->code, err)) return -1;
    return add(sink, prefix, ".quant_state.bitsandbytes__nf4", QFT_DT_U8, 1, qw->qs_len, 0,
               qw->qs_json, err);
}

/* ---- a JSON reader for the flat quant_state object ------------------------------------ */
typedef struct qs_fields {
    char quant_type[16], dtype[16], nested_dtype[16];
    long long blocksize, nested_blocksize;
    long long shape[4];
    int shape_n;
    double nested_offset;
    int has_nested_offset, has_blocksize, has_shape;
} qs_fields;

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && isspace((unsigned char)*p)) p++;
    return p;
}

static const char *read_str(const char *p, const char *e, char *out, size_t n) {
    if (p >= e || *p != '"') return NULL;
    p++;
    size_t k = 0;
    while (p < e && *p != '"') {
        if (*p == '\\') return NULL; /* no escapes occur in these keys and values */
        if (k + 1 < n) out[k++] = *p;
        p++;
    }
    if (p >= e) return NULL;
    out[k] = 0;
    return p + 1;
}

static const char *read_num(const char *p, const char *e, double *v) {
    char buf[64];
    size_t k = 0;
    while (p < e && k + 1 < sizeof buf && strchr("+-0123456789.eE", *p)) buf[k++] = *p++;
    buf[k] = 0;
    if (!k) return NULL;
    char *end;
    *v = strtod(buf, &end);
    return *end ? NULL : p;
}

static int parse_qs(const char *s, size_t len, qs_fields *f) {
    const char *p = s, *e = s + len;
    memset(f, 0, sizeof *f);
    p = skip_ws(p, e);
    if (p >= e || *p++ != '{') return -1;
    for (;;) {
        p = skip_ws(p, e);
        if (p < e && *p == '}') return 0;
        char key[64];
        if (!(p = read_str(p, e, key, sizeof key))) return -1;
        p = skip_ws(p, e);
        if (p >= e || *p++ != ':') return -1;
        p = skip_ws(p, e);
        if (p >= e) return -1;
        if (*p == '"') {
            char val[64];
            if (!(p = read_str(p, e, val, sizeof val))) return -1;
            if (!strcmp(key, "quant_type")) snprintf(f->quant_type, sizeof f->quant_type, "%s", val);
            else if (!strcmp(key, "dtype")) snprintf(f->dtype, sizeof f->dtype, "%s", val);
            else if (!strcmp(key, "nested_dtype"))
                snprintf(f->nested_dtype, sizeof f->nested_dtype, "%s", val);
        } else if (*p == '[') {
            p++;
            int n = 0;
            for (;;) {
                p = skip_ws(p, e);
                if (p < e && *p == ']') { p++; break; }
                double v;
                if (!(p = read_num(p, e, &v))) return -1;
                if (n < 4 && !strcmp(key, "shape")) f->shape[n] = (long long)v;
                n++;
                p = skip_ws(p, e);
                if (p < e && *p == ',') p++;
            }
            if (!strcmp(key, "shape")) { f->shape_n = n; f->has_shape = 1; }
        } else if (!strncmp(p, "null", 4) || !strncmp(p, "true", 4)) {
            p += 4;
        } else if (!strncmp(p, "false", 5)) {
            p += 5;
        } else {
            double v;
            if (!(p = read_num(p, e, &v))) return -1;
            if (!strcmp(key, "blocksize")) { f->blocksize = (long long)v; f->has_blocksize = 1; }
            else if (!strcmp(key, "nested_blocksize")) f->nested_blocksize = (long long)v;
            else if (!strcmp(key, "nested_offset")) { f->nested_offset = v; f->has_nested_offset = 1; }
        }
        p = skip_ws(p, e);
        if (p < e && *p == ',') { p++; continue; }
        if (p < e && *p == '}') return 0;
        return -1;
    }
}

static const char *src_file(const qft_tensor_source *src) {
    return src->file ? src->file : "<checkpoint>";
}

/* Fetches <prefix>.weight<suffix> and checks dtype and element count. */
static int get_checked(const qft_tensor_source *src, const char *prefix, const char *suffix,
                       qft_dtype want, int64_t count, qft_tensor *t, const char *what,
                       qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.weight%s", prefix, suffix);
    if (src->get(src->ctx, name, t, err)) return -1;
    if (t->dtype != want)
        return qft_err_setf(err, "%s: %s: dtype is not %s (bnb_nf4 %s)", src_file(src), name,
                            dtype_torch_name(want), what);
    if (numel(t) != count)
        return qft_err_setf(err, "%s: %s has %lld elements, but the weight's shape and block "
                            "size need %lld (%s): the statistics disagree with the shape",
                            src_file(src), name, (long long)numel(t), (long long)count, what);
    return 0;
}

int nf4_load(const void *state, const char *prefix, int64_t out, int64_t in,
             const qft_tensor_source *src, qft_qweight **qwp, qft_err *err) {
    const nf4_opts *o = state;
    const qft_services *svc = o ? o->svc : NULL;
    *qwp = NULL;
    char name[1024];
    qft_tensor t;
    snprintf(name, sizeof name, "%s.weight.quant_state.bitsandbytes__nf4", prefix);
    int rc = src->find(src->ctx, name, &t, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        snprintf(name, sizeof name, "%s.weight.quant_state.bitsandbytes__fp4", prefix);
        if (src->find(src->ctx, name, &t, err) == 0)
            return qft_err_setf(err, "%s: %s: an fp4-quantized weight; bnb_nf4 reads nf4 only",
                                src_file(src), name);
        return 1; /* a dense checkpoint */
    }
    if (t.dtype != QFT_DT_U8)
        return qft_err_setf(err, "%s: %s: expected uint8 bytes of JSON text", src_file(src), name);
    qs_fields f;
    if (parse_qs(t.data, (size_t)numel(&t), &f))
        return qft_err_setf(err, "%s: %s: not a quant_state JSON object", src_file(src), name);
    if (strcmp(f.quant_type, "nf4"))
        return qft_err_setf(err, "%s: %s: quant_type \"%s\", expected \"nf4\"", src_file(src), name,
                            f.quant_type);
    const long long bs = f.blocksize;
    if (!f.has_blocksize || bs < 32 || bs > 4096 || (bs & (bs - 1)))
        return qft_err_setf(err, "%s: %s: blocksize %lld is not supported (32..4096, a power of "
                            "two)", src_file(src), name, bs);
    if (!f.has_shape || f.shape_n != 2 || f.shape[0] != out || f.shape[1] != in)
        return qft_err_setf(err, "%s: %s: shape [%lld, %lld] (%d dims) disagrees with the model's "
                            "(%lld, %lld)", src_file(src), name, f.shape[0], f.shape[1], f.shape_n,
                            (long long)out, (long long)in);
    const int nested = f.has_nested_offset;
    if (nested && f.nested_blocksize != NF4_NESTED_BLOCK)
        return qft_err_setf(err, "%s: %s: nested_blocksize %lld, expected %d", src_file(src), name,
                            f.nested_blocksize, NF4_NESTED_BLOCK);
    if (nested && f.nested_dtype[0] && strcmp(f.nested_dtype, "float32"))
        return qft_err_setf(err, "%s: %s: nested_dtype \"%s\", expected \"float32\"", src_file(src),
                            name, f.nested_dtype);

    struct qft_qweight *qw = nf4_alloc(svc, sizeof *qw);
    if (!qw) return qft_err_setf(err, "bnb_nf4: %s: out of memory", prefix);
    memset(qw, 0, sizeof *qw);
    qw->svc = svc;
    qw->out = out;
    qw->in = in;
    qw->n = out * in;                                        // (out * in)
    qw->blocksize = (int)bs;
    qw->n_blocks = (qw->n + bs - 1) / bs;                    // ceil(n / bs)
    qw->double_quant = nested;
    qw->dtype = !strcmp(f.dtype, "float16") ? QFT_DT_F16
                : !strcmp(f.dtype, "float32") ? QFT_DT_F32 : QFT_DT_BF16;
    qw->offset = (float)f.nested_offset;
    const int64_t nbytes = (qw->n + 1) / 2;                  // packed bytes
    const int64_t nn = (qw->n_blocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;

    /* The packed codes may be stored as any dtype (bitsandbytes' quant_storage): only
     * their byte count matters. */
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (src->get(src->ctx, name, &t, err)) goto fail;
    qw->quant_storage = t.dtype;
    const int64_t have = numel(&t) * (int64_t)dtype_size(t.dtype);
    if (have != nbytes) {
        qft_err_setf(err, "%s: %s holds %lld bytes of packed codes, but a (%lld, %lld) weight in "
                     "NF4 needs %lld: the tensor is truncated or belongs to another shape",
                     src_file(src), name, (long long)have, (long long)out, (long long)in,
                     (long long)nbytes);
        goto fail;
    }
    if (!(qw->packed = nf4_alloc(svc, (size_t)nbytes))) goto oom;
    memcpy(qw->packed, t.data, (size_t)nbytes);

    if (get_checked(src, prefix, ".quant_map", QFT_DT_F32, 16, &t, "codebook", err)) goto fail;
    memcpy(qw->code, t.data, sizeof qw->code);

    if (nested) {
        if (get_checked(src, prefix, ".absmax", QFT_DT_U8, qw->n_blocks, &t,
                        "per-block absmax codes", err))
            goto fail;
        if (!(qw->qabsmax = nf4_alloc(svc, (size_t)qw->n_blocks))) goto oom;
        memcpy(qw->qabsmax, t.data, (size_t)qw->n_blocks);
        if (get_checked(src, prefix, ".nested_absmax", QFT_DT_F32, nn, &t,
                        "absmax per 256 blocks", err))
            goto fail;
        if (!(qw->nested_absmax = nf4_alloc(svc, (size_t)nn * sizeof(float)))) goto oom;
        memcpy(qw->nested_absmax, t.data, (size_t)nn * sizeof(float));
        if (get_checked(src, prefix, ".nested_quant_map", QFT_DT_F32, 256, &t, "dynamic map",
                        err))
            goto fail;
        memcpy(qw->nested_map, t.data, sizeof qw->nested_map);
    } else {
        if (get_checked(src, prefix, ".absmax", QFT_DT_F32, qw->n_blocks, &t, "per-block absmax",
                        err))
            goto fail;
        if (!(qw->absmax = nf4_alloc(svc, (size_t)qw->n_blocks * sizeof(float)))) goto oom;
        memcpy(qw->absmax, t.data, (size_t)qw->n_blocks * sizeof(float));
    }
    for (int64_t b = 0; b < qw->n_blocks; b++) {
        float a = nf4_block_absmax(qw, b);
        if (!isfinite(a)) {
            qft_err_setf(err, "%s: %s.weight.absmax: block %lld has a non-finite absmax",
                         src_file(src), prefix, (long long)b);
            goto fail;
        }
    }
    if (nf4_build_qs_json(qw)) {
        qft_err_setf(err, "%s: %s: quant_state text too long", src_file(src), prefix);
        goto fail;
    }
    *qwp = qw;
    return 0;
oom:
    qft_err_setf(err, "bnb_nf4: %s: out of memory loading the packed weight", prefix);
fail:
    nf4_weight_free(qw);
    return -1;
}
