/* Saving and loading with the keys of hqq's HQQLinear.state_dict (encoded for
 * safetensors: scalars as 0-d int32/uint8 tensors, strings as uint8 character codes):
 *   <prefix>.W_q  <prefix>.scale  <prefix>.zero  <prefix>.nbits  <prefix>.group_size
 *   <prefix>.shape  <prefix>.axis  <prefix>.packing  <prefix>.unpack_view_dtype ...
 * hqq itself refuses to serialize meta-quantized zero/scale; for those qft writes its own
 * keys beside the same metadata: <prefix>.zero_q, <prefix>.meta_zero.scale,
 * <prefix>.meta_zero.zero, <prefix>.scale_q, <prefix>.meta_scale.scale,
 * <prefix>.meta_scale.zero. */
#include "hqq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t numel(const qft_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static size_t dtype_size(qft_dtype d) {
    switch (d) {
    case QFT_DT_F32: case QFT_DT_I32: return 4;
    case QFT_DT_F16: case QFT_DT_BF16: case QFT_DT_I16: return 2;
    case QFT_DT_F64: case QFT_DT_I64: return 8;
    default: return 1;
    }
}

static int put(const qft_tensor_sink *sink, const char *prefix, const char *key, qft_dtype dt,
               int ndim, int64_t d0, int64_t d1, const void *data, qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", prefix, key);
    qft_tensor t = {.dtype = dt, .ndim = ndim, .shape = {d0, d1}, .data = (void *)data};
    return sink->add(sink->ctx, name, &t, err);
}

static int put_str(const qft_tensor_sink *sink, const char *prefix, const char *key,
                   const char *s, qft_err *err) {
    return put(sink, prefix, key, QFT_DT_U8, 1, (int64_t)strlen(s), 0, s, err);
}

int hqq_save(const qft_qweight *qw, const char *prefix, const qft_tensor_sink *sink,
             qft_err *err) {
    const int64_t G = qw->n_groups;
    const int64_t s0 = qw->axis == 1 ? G : 1, s1 = qw->axis == 1 ? 1 : G; // hqq's meta shape
    static const char *const packing[9] = {[2] = "2bit_u8", [3] = "3bit_32", [4] = "4bit_u8",
                                           [8] = "8bit_u8"};
    if (put(sink, prefix, "W_q", qw->nbits == 3 ? QFT_DT_I32 : QFT_DT_U8, 2, qw->packed_rows,
            qw->C, qw->packed, err) ||
        put(sink, prefix, "nbits", QFT_DT_I32, 0, 0, 0, &qw->s_nbits, err) ||
        put(sink, prefix, "group_size", QFT_DT_I32, 0, 0, 0, &qw->s_group_size, err) ||
        put(sink, prefix, "axis", QFT_DT_I32, 0, 0, 0, &qw->s_axis, err) ||
        put(sink, prefix, "shape", QFT_DT_I64, 1, 2, 0, qw->s_shape, err) ||
        put_str(sink, prefix, "packing", packing[qw->nbits], err) ||
        put_str(sink, prefix, "unpack_view_dtype", qw->nbits == 3 ? "torch.int32" : "torch.uint8",
                err) ||
        put_str(sink, prefix, "compute_dtype", "torch.float32", err) ||
        put(sink, prefix, "view_as_float", QFT_DT_U8, 0, 0, 0, &qw->s_zero, err) ||
        put(sink, prefix, "offload_meta", QFT_DT_U8, 0, 0, 0, &qw->s_zero, err) ||
        put(sink, prefix, "encoded_state_dict", QFT_DT_U8, 0, 0, 0, &qw->s_one, err) ||
        put(sink, prefix, "stores_quant_config", QFT_DT_U8, 0, 0, 0, &qw->s_one, err) ||
        put(sink, prefix, "channel_wise", QFT_DT_U8, 0, 0, 0, &qw->s_one, err) ||
        put(sink, prefix, "optimize", QFT_DT_U8, 0, 0, 0, &qw->s_optimize, err) ||
        put(sink, prefix, "round_zero", QFT_DT_U8, 0, 0, 0, &qw->s_round_zero, err) ||
        put(sink, prefix, "quant_zero", QFT_DT_U8, 0, 0, 0, &qw->s_quant_zero, err) ||
        put(sink, prefix, "quant_scale", QFT_DT_U8, 0, 0, 0, &qw->s_quant_scale, err))
        return -1;
    if (qw->quant_zero) {
        if (put(sink, prefix, "zero_q", QFT_DT_U8, 2, s0, s1, qw->zero_q, err) ||
            put(sink, prefix, "meta_zero.scale", QFT_DT_F32, 1, 1, 0, &qw->zero_meta[0], err) ||
            put(sink, prefix, "meta_zero.zero", QFT_DT_F32, 1, 1, 0, &qw->zero_meta[1], err))
            return -1;
    } else if (put(sink, prefix, "zero", QFT_DT_F32, 2, s0, s1, qw->zero, err)) {
        return -1;
    }
    if (qw->quant_scale) {
        const int64_t mc = G / HQQ_META_GROUP;
        if (put(sink, prefix, "scale_q", QFT_DT_U8, 2, HQQ_META_GROUP, mc, qw->scale_q, err) ||
            put(sink, prefix, "meta_scale.scale", QFT_DT_F32, 1, mc, 0, qw->scale_meta, err) ||
            put(sink, prefix, "meta_scale.zero", QFT_DT_F32, 1, mc, 0, qw->scale_meta + mc, err))
            return -1;
    } else if (put(sink, prefix, "scale", QFT_DT_F32, 2, s0, s1, qw->scale, err)) {
        return -1;
    }
    return 0;
}

/* ---- loading ---------------------------------------------------------------------- */
static const char *src_file(const qft_tensor_source *src) {
    return src->file ? src->file : "<checkpoint>";
}

static float half_to_f32(uint16_t h, int bf16) {
    if (bf16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                       : ldexpf((float)(m | 1024), e - 25);
    return sign ? -v : v;
}

/* A scalar integer of the metadata (any integer dtype). */
static int get_scalar(const qft_tensor_source *src, const char *prefix, const char *key,
                      long long *v, qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", prefix, key);
    qft_tensor t;
    if (src->get(src->ctx, name, &t, err)) return -1;
    if (numel(&t) != 1)
        return qft_err_setf(err, "%s: %s: expected one value, found %lld", src_file(src), name,
                            (long long)numel(&t));
    switch (t.dtype) {
    case QFT_DT_U8: case QFT_DT_BOOL: *v = *(const uint8_t *)t.data; break;
    case QFT_DT_I32: { int32_t x; memcpy(&x, t.data, 4); *v = x; break; }
    case QFT_DT_I64: { int64_t x; memcpy(&x, t.data, 8); *v = x; break; }
    default: return qft_err_setf(err, "%s: %s: expected an integer", src_file(src), name);
    }
    return 0;
}

static int get_flag(const qft_tensor_source *src, const char *prefix, const char *key, int *v,
                    qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", prefix, key);
    qft_tensor t;
    int rc = src->find(src->ctx, name, &t, err);
    if (rc < 0) return -1;
    if (rc == 1) { *v = 0; return 0; }
    long long x;
    if (get_scalar(src, prefix, key, &x, err)) return -1;
    *v = x != 0;
    return 0;
}

/* A float vector of `count` values (f32, f16 or bf16) into a fresh buffer. */
static float *get_floats(const qft_tensor_source *src, const char *prefix, const char *key,
                         int64_t count, const qft_services *svc, qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", prefix, key);
    qft_tensor t;
    if (src->get(src->ctx, name, &t, err)) return NULL;
    if (numel(&t) != count) {
        qft_err_setf(err, "%s: %s has %lld values, but the weight's shape and group size need "
                     "%lld: the statistics disagree with the shape", src_file(src), name,
                     (long long)numel(&t), (long long)count);
        return NULL;
    }
    if (t.dtype != QFT_DT_F32 && t.dtype != QFT_DT_F16 && t.dtype != QFT_DT_BF16) {
        qft_err_setf(err, "%s: %s: expected float32, float16 or bfloat16", src_file(src), name);
        return NULL;
    }
    float *d = hqq_alloc(svc, (size_t)count * sizeof(float));
    if (!d) {
        qft_err_setf(err, "hqq: out of memory loading %s", name);
        return NULL;
    }
    const uint8_t *p = t.data;
    for (int64_t i = 0; i < count; i++) {
        if (t.dtype == QFT_DT_F32) {
            memcpy(&d[i], p + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            d[i] = half_to_f32(h, t.dtype == QFT_DT_BF16);
        }
    }
    return d;
}

static uint8_t *get_bytes(const qft_tensor_source *src, const char *prefix, const char *key,
                          int64_t count, const qft_services *svc, qft_err *err) {
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", prefix, key);
    qft_tensor t;
    if (src->get(src->ctx, name, &t, err)) return NULL;
    if (t.dtype != QFT_DT_U8 || numel(&t) != count) {
        qft_err_setf(err, "%s: %s: expected %lld uint8 codes, found %lld of another size or type: "
                     "the statistics disagree with the shape", src_file(src), name,
                     (long long)count, (long long)numel(&t));
        return NULL;
    }
    uint8_t *d = hqq_alloc(svc, (size_t)count);
    if (!d) {
        qft_err_setf(err, "hqq: out of memory loading %s", name);
        return NULL;
    }
    memcpy(d, t.data, (size_t)count);
    return d;
}

int hqq_load(const void *state, const char *prefix, int64_t out, int64_t in,
             const qft_tensor_source *src, qft_qweight **qwp, qft_err *err) {
    const hqq_opts *o = state;
    const qft_services *svc = o ? o->svc : NULL;
    *qwp = NULL;
    char name[1024];
    qft_tensor wq;
    snprintf(name, sizeof name, "%s.W_q", prefix);
    int rc = src->find(src->ctx, name, &wq, err);
    if (rc) return rc < 0 ? -1 : 1; /* no W_q: a dense tensor, not ours */
    long long nbits, gs, axis;
    if (get_scalar(src, prefix, "nbits", &nbits, err) ||
        get_scalar(src, prefix, "group_size", &gs, err) ||
        get_scalar(src, prefix, "axis", &axis, err))
        return -1;
    if (nbits != 2 && nbits != 3 && nbits != 4 && nbits != 8)
        return qft_err_setf(err, "%s: %s.nbits = %lld is not supported (2, 3, 4 or 8)",
                            src_file(src), prefix, nbits);
    if (axis != 0 && axis != 1)
        return qft_err_setf(err, "%s: %s.axis = %lld", src_file(src), prefix, axis);
    if (gs <= 0)
        return qft_err_setf(err, "%s: %s.group_size = %lld", src_file(src), prefix, gs);
    snprintf(name, sizeof name, "%s.shape", prefix);
    qft_tensor sh;
    if (src->get(src->ctx, name, &sh, err)) return -1;
    int64_t shape[2] = {0, 0};
    if (sh.dtype == QFT_DT_I64 && numel(&sh) == 2) {
        memcpy(shape, sh.data, 16);
    } else if (sh.dtype == QFT_DT_I32 && numel(&sh) == 2) {
        int32_t s32[2];
        memcpy(s32, sh.data, 8);
        shape[0] = s32[0];
        shape[1] = s32[1];
    }
    if (shape[0] != out || shape[1] != in)
        return qft_err_setf(err, "%s: %s: shape [%lld, %lld] disagrees with the model's (%lld, "
                            "%lld)", src_file(src), name, (long long)shape[0], (long long)shape[1],
                            (long long)out, (long long)in);
    hqq_opts lo = {.svc = svc, .nbits = (int)nbits, .group_size = (int)gs, .axis = (int)axis};
    if (get_flag(src, prefix, "optimize", &lo.optimize, err) ||
        get_flag(src, prefix, "round_zero", &lo.round_zero, err) ||
        get_flag(src, prefix, "quant_zero", &lo.quant_zero, err) ||
        get_flag(src, prefix, "quant_scale", &lo.quant_scale, err))
        return -1;
    struct qft_qweight *qw = hqq_alloc(svc, sizeof *qw);
    if (!qw) return qft_err_setf(err, "hqq: %s: out of memory", prefix);
    memset(qw, 0, sizeof *qw);
    qw->svc = svc;
    if (hqq_weight_init(qw, &lo, out, in, prefix, err)) goto fail;
    /* W_q may be viewed as a float dtype (hqq's view_as_float): only its bytes count */
    const int64_t have = numel(&wq) * (int64_t)dtype_size(wq.dtype);
    if (have != (int64_t)qw->packed_bytes) {
        qft_err_setf(err, "%s: %s.W_q holds %lld bytes, but a (%lld, %lld) weight at %lld bits in "
                     "groups of %lld needs %zu: the tensor is truncated or belongs to another "
                     "shape", src_file(src), prefix, (long long)have, (long long)out,
                     (long long)in, nbits, gs, qw->packed_bytes);
        goto fail;
    }
    if (!(qw->packed = hqq_alloc(svc, qw->packed_bytes))) {
        qft_err_setf(err, "hqq: %s: out of memory", prefix);
        goto fail;
    }
    memcpy(qw->packed, wq.data, qw->packed_bytes);
    const int64_t G = qw->n_groups;
    if (qw->quant_zero) {
        float *m;
        if (!(qw->zero_q = get_bytes(src, prefix, "zero_q", G, svc, err))) goto fail;
        if (!(m = get_floats(src, prefix, "meta_zero.scale", 1, svc, err))) goto fail;
        qw->zero_meta[0] = m[0];
        hqq_free(svc, m);
        if (!(m = get_floats(src, prefix, "meta_zero.zero", 1, svc, err))) goto fail;
        qw->zero_meta[1] = m[0];
        hqq_free(svc, m);
    } else if (!(qw->zero = get_floats(src, prefix, "zero", G, svc, err))) {
        goto fail;
    }
    if (qw->quant_scale) {
        const int64_t mc = G / HQQ_META_GROUP;
        float *a, *b;
        if (!(qw->scale_q = get_bytes(src, prefix, "scale_q", G, svc, err))) goto fail;
        if (!(a = get_floats(src, prefix, "meta_scale.scale", mc, svc, err))) goto fail;
        if (!(b = get_floats(src, prefix, "meta_scale.zero", mc, svc, err))) {
            hqq_free(svc, a);
            goto fail;
        }
        if (!(qw->scale_meta = hqq_alloc(svc, (size_t)(2 * mc) * sizeof(float)))) {
            hqq_free(svc, a);
            hqq_free(svc, b);
            qft_err_setf(err, "hqq: out of memory");
            goto fail;
        }
        memcpy(qw->scale_meta, a, (size_t)mc * sizeof(float));
        memcpy(qw->scale_meta + mc, b, (size_t)mc * sizeof(float));
        hqq_free(svc, a);
        hqq_free(svc, b);
    } else if (!(qw->scale = get_floats(src, prefix, "scale", G, svc, err))) {
        goto fail;
    }
    *qwp = qw;
    return 0;
fail:
    hqq_weight_free(qw);
    return -1;
}
