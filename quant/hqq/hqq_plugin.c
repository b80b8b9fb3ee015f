/* hqq: the quantizer plugin. Config keys in `quant`: nbits (4; 2, 3, 8), group_size (64),
 * axis (1, the current hqq library's default and what it serializes; the seed ran hqq
 * v0.1.8 with axis = 0), optimize (true: the proximal zero-point refinement), round_zero
 * (true for 4 bits, else false, as hqq's BaseQuantizeConfig), quant_zero and quant_scale
 * (false; the seed's v0.1.8 setting was true for both: zero points to 8 bits with one
 * global min/max, scales to 8 bits in groups of 128). qft dequantizes in fp32. `place`
 * (hqq_place.c) moves the packed codes and all statistics into one block of core memory
 * for full sharding. */
#include "hqq.h"

#include <stdlib.h>
#include <string.h>

static const char *const k_keys[] = {"nbits", "group_size", "axis", "optimize", "round_zero",
                                     "quant_zero", "quant_scale", NULL};

static const char *where(const config_setting_t *s, char *buf, size_t n) {
    const char *file = config_setting_source_file(s);
    snprintf(buf, n, "%s:%u", file ? file : "<config>", config_setting_source_line(s));
    return buf;
}

static int get_int(const config_setting_t *sec, const char *key, int *out, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 1;
    char w[4200];
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return qft_err_setf(err, "%s: quant.%s must be an integer", where(s, w, sizeof w), key);
    long long v = config_setting_get_int64(s);
    if (v < -1000000 || v > 1000000)
        return qft_err_setf(err, "%s: quant.%s = %lld is out of range", where(s, w, sizeof w), key,
                            v);
    *out = (int)v;
    return 0;
}

static int get_bool(const config_setting_t *sec, const char *key, int *out, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 1;
    char w[4200];
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return qft_err_setf(err, "%s: quant.%s must be true or false", where(s, w, sizeof w), key);
    *out = config_setting_get_bool(s);
    return 0;
}

static int hqq_configure(const qft_services *svc, const config_setting_t *section, void **state,
                         qft_err *err) {
    *state = NULL;
    if (svc && svc->config_check_keys && section &&
        svc->config_check_keys(section, k_keys, err))
        return -1;
    hqq_opts o = {.svc = svc, .nbits = 4, .group_size = 64, .axis = 1, .optimize = 1,
                  .round_zero = -1, .quant_zero = 0, .quant_scale = 0};
    char w[4200];
    int rc;
    if ((rc = get_int(section, "nbits", &o.nbits, err)) < 0) return -1;
    if (!rc && o.nbits != 2 && o.nbits != 3 && o.nbits != 4 && o.nbits != 8)
        return qft_err_setf(err, "%s: quant.nbits = %d is not supported by hqq (2, 3, 4 or 8)",
                            where(config_setting_get_member(section, "nbits"), w, sizeof w),
                            o.nbits);
    if ((rc = get_int(section, "group_size", &o.group_size, err)) < 0) return -1;
    if (!rc && (o.group_size < 8 || o.group_size % 8))
        return qft_err_setf(err, "%s: quant.group_size = %d: hqq needs a positive multiple of 8",
                            where(config_setting_get_member(section, "group_size"), w, sizeof w),
                            o.group_size);
    if ((rc = get_int(section, "axis", &o.axis, err)) < 0) return -1;
    if (!rc && o.axis != 0 && o.axis != 1)
        return qft_err_setf(err, "%s: quant.axis = %d: must be 0 or 1",
                            where(config_setting_get_member(section, "axis"), w, sizeof w), o.axis);
    if (get_bool(section, "optimize", &o.optimize, err) < 0 ||
        get_bool(section, "round_zero", &o.round_zero, err) < 0 ||
        get_bool(section, "quant_zero", &o.quant_zero, err) < 0 ||
        get_bool(section, "quant_scale", &o.quant_scale, err) < 0)
        return -1;
    if (o.round_zero < 0) o.round_zero = o.nbits == 4;
    hqq_opts *st = hqq_alloc(svc, sizeof *st);
    if (!st) return qft_err_setf(err, "hqq: out of memory for its options");
    *st = o;
    *state = st;
    return 0;
}

static void hqq_close(void *state) {
    hqq_opts *o = state;
    if (o) hqq_free(o->svc, o);
}

static int hqq_quantize(const void *state, const char *name, const float *w, int64_t out,
                        int64_t in, qft_qweight **qwp, qft_err *err) {
    const hqq_opts *o = state;
    *qwp = NULL;
    if (!o) return qft_err_setf(err, "hqq: not configured");
    if (out <= 0 || in <= 0)
        return qft_err_setf(err, "hqq: %s: bad shape (%lld, %lld)", name ? name : "weight",
                            (long long)out, (long long)in);
    struct qft_qweight *qw = hqq_alloc(o->svc, sizeof *qw);
    if (!qw) return qft_err_setf(err, "hqq: %s: out of memory", name ? name : "weight");
    memset(qw, 0, sizeof *qw);
    qw->svc = o->svc;
    if (hqq_weight_init(qw, o, out, in, name, err) || hqq_quantize_weight(qw, w, err)) {
        hqq_weight_free(qw);
        return -1;
    }
    *qwp = qw;
    return 0;
}

static int hqq_dequantize_rows(const qft_qweight *qw, int64_t row0, int64_t n_rows, float *dst,
                               qft_err *err) {
    if (!qw || row0 < 0 || n_rows < 0 || row0 + n_rows > qw->out)
        return qft_err_setf(err, "hqq: rows [%lld, %lld) outside a weight of %lld rows",
                            (long long)row0, (long long)(row0 + n_rows),
                            (long long)(qw ? qw->out : 0));
    hqq_dequantize_range(qw, row0 * qw->in, n_rows * qw->in, dst); // (n_rows, in)
    return 0;
}

static size_t hqq_bytes(const qft_qweight *qw) {
    if (!qw) return 0;
    const size_t G = (size_t)qw->n_groups;
    size_t b = qw->packed_bytes + sizeof *qw;
    b += qw->quant_zero ? G : G * sizeof(float);
    b += qw->quant_scale ? G + 2 * (G / HQQ_META_GROUP) * sizeof(float) : G * sizeof(float);
    return b;
}

static void hqq_free_weight(qft_qweight *qw) { hqq_weight_free(qw); }

static const qft_quantizer_vtable k_vtable = {
    .config_keys = k_keys,
    .configure = hqq_configure,
    .quantize = hqq_quantize,
    .dequantize_rows = hqq_dequantize_rows,
    .bytes = hqq_bytes,
    .save = hqq_save,
    .load = hqq_load,
    .free_weight = hqq_free_weight,
    .close = hqq_close,
    .place = hqq_place,
    .layout = hqq_layout,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_QUANTIZER,
    .name = "hqq",
    .version = "1.0.0",
    .description = "HQQ: half-quadratic quantization, 2/3/4/8 bits, hqq's packing",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
