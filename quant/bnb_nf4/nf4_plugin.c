/* bnb_nf4: the quantizer plugin. Config keys in `quant`: blocksize (64; a power of two
 * from 32 to 4096), double_quant (true), quant_type ("nf4"), compute_dtype ("bfloat16":
 * the dtype written as the quant_state "dtype", i.e. what bitsandbytes dequantizes to when
 * it loads our file; qft itself always dequantizes to fp32), quant_storage ("uint8"; or
 * "bfloat16", "float16", "float32": the dtype the packed bytes are viewed as in a saved
 * file, as bitsandbytes' quant_storage does for FSDP). `place` (nf4_place.c) moves the
 * packed codes and absmax statistics into one block of core memory for full sharding. */
#include "nf4.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const k_keys[] = {"blocksize", "double_quant", "quant_type",
                                     "compute_dtype", "quant_storage", NULL};

static const char *where(const config_setting_t *s, char *buf, size_t n) {
    const char *file = config_setting_source_file(s);
    unsigned line = config_setting_source_line(s);
    snprintf(buf, n, "%s:%u", file ? file : "<config>", line);
    return buf;
}

static int parse_dtype_name(const char *s, qft_dtype *out) {
    if (!strcmp(s, "bfloat16")) *out = QFT_DT_BF16;
    else if (!strcmp(s, "float16")) *out = QFT_DT_F16;
    else if (!strcmp(s, "float32")) *out = QFT_DT_F32;
    else if (!strcmp(s, "uint8")) *out = QFT_DT_U8;
    else return -1;
    return 0;
}

static int nf4_configure(const qft_services *svc, const config_setting_t *section, void **state,
                         qft_err *err) {
    *state = NULL;
    if (svc && svc->config_check_keys && section &&
        svc->config_check_keys(section, k_keys, err))
        return -1;
    nf4_opts o = {.svc = svc, .blocksize = 64, .double_quant = 1, .dtype = QFT_DT_BF16,
                  .quant_storage = QFT_DT_U8};
    char w[4200];
    const config_setting_t *s;
    if (section && (s = config_setting_get_member(section, "blocksize"))) {
        int t = config_setting_type(s);
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            return qft_err_setf(err, "%s: quant.blocksize must be an integer", where(s, w, sizeof w));
        long long v = config_setting_get_int64(s);
        if (v < 32 || v > 4096 || (v & (v - 1)))
            return qft_err_setf(err,
                                "%s: quant.blocksize = %lld is not supported by bnb_nf4 (a power "
                                "of two from 32 to 4096: 32, 64, 128, 256, 512, 1024, 2048, 4096)",
                                where(s, w, sizeof w), v);
        o.blocksize = (int)v;
    }
    if (section && (s = config_setting_get_member(section, "double_quant"))) {
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
            return qft_err_setf(err, "%s: quant.double_quant must be true or false",
                                where(s, w, sizeof w));
        o.double_quant = config_setting_get_bool(s);
    }
    if (section && (s = config_setting_get_member(section, "quant_type"))) {
        const char *v = config_setting_get_string(s);
        if (!v)
            return qft_err_setf(err, "%s: quant.quant_type must be a string", where(s, w, sizeof w));
        if (strcmp(v, "nf4"))
            return qft_err_setf(err, "%s: quant.quant_type = \"%s\" is not supported by bnb_nf4 "
                                "(only \"nf4\")", where(s, w, sizeof w), v);
    }
    if (section && (s = config_setting_get_member(section, "compute_dtype"))) {
        const char *v = config_setting_get_string(s);
        if (!v || parse_dtype_name(v, &o.dtype) || o.dtype == QFT_DT_U8)
            return qft_err_setf(err, "%s: quant.compute_dtype must be \"bfloat16\", \"float16\" "
                                "or \"float32\"", where(s, w, sizeof w));
    }
    if (section && (s = config_setting_get_member(section, "quant_storage"))) {
        const char *v = config_setting_get_string(s);
        if (!v || parse_dtype_name(v, &o.quant_storage))
            return qft_err_setf(err, "%s: quant.quant_storage must be \"uint8\", \"bfloat16\", "
                                "\"float16\" or \"float32\"", where(s, w, sizeof w));
    }
    nf4_opts *st = nf4_alloc(svc, sizeof *st);
    if (!st) return qft_err_setf(err, "bnb_nf4: out of memory for its options");
    *st = o;
    *state = st;
    return 0;
}

static void nf4_close(void *state) {
    nf4_opts *o = state;
    if (o) nf4_free(o->svc, o);
}

static int nf4_quantize(const void *state, const char *name, const float *w, int64_t out,
                        int64_t in, qft_qweight **qwp, qft_err *err) {
    const nf4_opts *o = state;
    *qwp = NULL;
    if (out <= 0 || in <= 0)
        return qft_err_setf(err, "bnb_nf4: %s: bad shape (%lld, %lld)", name ? name : "weight",
                            (long long)out, (long long)in);
    const qft_services *svc = o ? o->svc : NULL;
    struct qft_qweight *qw = nf4_alloc(svc, sizeof *qw);
    if (!qw) return qft_err_setf(err, "bnb_nf4: %s: out of memory", name ? name : "weight");
    memset(qw, 0, sizeof *qw);
    qw->svc = svc;
    qw->out = out;
    qw->in = in;
    qw->n = out * in;                                                     // (out * in)
    qw->blocksize = o ? o->blocksize : 64;
    qw->n_blocks = (qw->n + qw->blocksize - 1) / qw->blocksize;           // ceil(n / bs)
    qw->double_quant = o ? o->double_quant : 1;
    qw->dtype = o ? o->dtype : QFT_DT_BF16;
    qw->quant_storage = o ? o->quant_storage : QFT_DT_U8;
    memcpy(qw->code, qft_nf4_code, sizeof qw->code);
    qw->packed = nf4_alloc(svc, (size_t)(qw->n + 1) / 2);                 // ((n+1)/2)
    float *absmax = nf4_alloc(svc, (size_t)qw->n_blocks * sizeof(float)); // (n_blocks)
    if (!qw->packed || !absmax) {
        nf4_free(svc, absmax);
        nf4_weight_free(qw);
        return qft_err_setf(err, "bnb_nf4: %s: out of memory for %lld packed bytes",
                            name ? name : "weight", (long long)(qw->n + 1) / 2);
    }
    nf4_quantize_blocks(w, qw->n, qw->blocksize, absmax, qw->packed);
    if (!qw->double_quant) {
        qw->absmax = absmax;
    } else {
        const int64_t nb = qw->n_blocks;
        const int64_t nn = (nb + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK; // ceil(nb / 256)
        qw->qabsmax = nf4_alloc(svc, (size_t)nb);
        qw->nested_absmax = nf4_alloc(svc, (size_t)nn * sizeof(float));
        if (!qw->qabsmax || !qw->nested_absmax) {
            nf4_free(svc, absmax);
            nf4_weight_free(qw);
            return qft_err_setf(err, "bnb_nf4: %s: out of memory for the absmax statistics",
                                name ? name : "weight");
        }
        qw->offset = nf4_torch_mean(absmax, nb);
        for (int64_t b = 0; b < nb; b++) absmax[b] -= qw->offset;
        memcpy(qw->nested_map, qft_nf4_dynamic_map, sizeof qw->nested_map);
        const int rc = nf4_quantize_dynamic(absmax, nb, qw->nested_map, qw->qabsmax,
                                            qw->nested_absmax);
        nf4_free(svc, absmax);
        if (rc) {
            nf4_weight_free(qw);
            return qft_err_setf(err, "bnb_nf4: %s: out of memory for the lookup table",
                                name ? name : "weight");
        }
    }
    if (nf4_build_qs_json(qw)) {
        nf4_weight_free(qw);
        return qft_err_setf(err, "bnb_nf4: %s: quant_state text too long", name ? name : "weight");
    }
    *qwp = qw;
    return 0;
}

static int nf4_dequantize_rows(const qft_qweight *qw, int64_t row0, int64_t n_rows, float *dst,
                               qft_err *err) {
    if (!qw || row0 < 0 || n_rows < 0 || row0 + n_rows > qw->out)
        return qft_err_setf(err, "bnb_nf4: rows [%lld, %lld) outside a weight of %lld rows",
                            (long long)row0, (long long)(row0 + n_rows),
                            (long long)(qw ? qw->out : 0));
    nf4_dequantize_range(qw, row0 * qw->in, n_rows * qw->in, dst); // (n_rows, in)
    return 0;
}

static size_t nf4_bytes(const qft_qweight *qw) {
    if (!qw) return 0;
    size_t b = (size_t)(qw->n + 1) / 2; // packed codes
    if (qw->double_quant)
        b += (size_t)qw->n_blocks +
             sizeof(float) * (size_t)((qw->n_blocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK);
    else
        b += sizeof(float) * (size_t)qw->n_blocks;
    return b + sizeof *qw; /* the codebooks, offset and shape live in the struct */
}

static void nf4_free_weight(qft_qweight *qw) { nf4_weight_free(qw); }

static const char *torch_name(qft_dtype dt) {
    switch (dt) {
    case QFT_DT_BF16: return "bfloat16";
    case QFT_DT_F16: return "float16";
    case QFT_DT_F32: return "float32";
    case QFT_DT_U8: return "uint8";
    default: return "uint8";
    }
}

/* transformers' BitsAndBytesConfig as it writes it into config.json, so that a folder from
 * `qft quantize` loads with AutoModelForCausalLM.from_pretrained as a 4-bit model. */
static int nf4_hf_config(const void *state, char *buf, size_t size, qft_err *err) {
    const nf4_opts *o = state;
    int n = snprintf(buf, size,
                     "{\"_load_in_4bit\": true, \"_load_in_8bit\": false, "
                     "\"bnb_4bit_compute_dtype\": \"%s\", \"bnb_4bit_quant_storage\": \"%s\", "
                     "\"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_use_double_quant\": %s, "
                     "\"llm_int8_enable_fp32_cpu_offload\": false, "
                     "\"llm_int8_has_fp16_weight\": false, \"llm_int8_skip_modules\": null, "
                     "\"llm_int8_threshold\": 6.0, \"load_in_4bit\": true, "
                     "\"load_in_8bit\": false, \"quant_method\": \"bitsandbytes\"}",
                     torch_name(o->dtype), torch_name(o->quant_storage),
                     o->double_quant ? "true" : "false");
    if (n < 0 || (size_t)n >= size) return qft_err_setf(err, "bnb_nf4: quantization_config too long");
    return 0;
}

static const qft_quantizer_vtable k_vtable = {
    .config_keys = k_keys,
    .configure = nf4_configure,
    .quantize = nf4_quantize,
    .dequantize_rows = nf4_dequantize_rows,
    .bytes = nf4_bytes,
    .save = nf4_save,
    .load = nf4_load,
    .free_weight = nf4_free_weight,
    .close = nf4_close,
    .hf_quantization_config = nf4_hf_config,
    .place = nf4_place,
    .layout = nf4_layout,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_QUANTIZER,
    .name = "bnb_nf4",
    .version = "1.0.0",
    .description = "bitsandbytes NF4: blockwise 4-bit NormalFloat, optional double quantization",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
