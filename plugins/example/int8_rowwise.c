/* An example third-party quantizer plugin: int8 row-wise absmax. Each output row of W
 * (out, in) keeps one fp32 scale s = max|w| / 127 and int8 codes q = round(w / s), so
 * w ~ q * s. It is built against the installed qft SDK only (see Makefile beside it):
 *
 *   cc -shared -fPIC -o qft_int8_rowwise.so int8_rowwise.c $(pkg-config --cflags --libs qft)
 *
 * and used from a config by name:
 *
 *   train_types = { int8_full = { quant = "int8_rowwise"; adapter = "none"; }; };
 *   train_type = "int8_full";
 *   quant: { plugin = "int8_rowwise"; };
 *
 * Saved as "<prefix>.weight" (I8, (out, in)) and "<prefix>.weight_scale" (F32, (out)).
 *
 * `place` (for full sharding) copies scales then codes into one block the core hands out,
 * exactly bytes() long, and frees the plugin's copies; from then on free_weight leaves the
 * block to the core. The weight keeps nothing derived from its data, so the core may zero
 * the block and refill it with the same bytes. A second place is refused. */
#include <qft_sdk.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Packed weights are allocated through the engine's services, so its memory report and
 * its loading-peak accounting see them. */
struct qft_qweight {
    const qft_services *svc;
    int64_t out, in;
    int8_t *q;    /* (out, in) codes */
    float *scale; /* (out) */
    int placed;   /* q and scale live in the core's memory: not ours to free */
};

typedef struct {
    const qft_services *svc;
} int8_state;

static const char *const k_keys[] = {NULL}; /* no options besides `plugin` */

static int int8_configure(const qft_services *svc, const config_setting_t *section,
                          void **state, qft_err *err) {
    if (svc->config_check_keys(section, k_keys, err)) return -1;
    int8_state *s = calloc(1, sizeof *s);
    if (!s) return qft_err_setf(err, "int8_rowwise: out of memory");
    s->svc = svc;
    *state = s;
    return 0;
}

static void int8_free_weight(qft_qweight *w) {
    if (!w) return;
    if (!w->placed) w->svc->free(w->q), w->svc->free(w->scale);
    free(w);
}

static struct qft_qweight *new_weight(const qft_services *svc, int64_t out, int64_t in) {
    struct qft_qweight *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->svc = svc, w->out = out, w->in = in;
    w->q = svc->alloc((size_t)(out * in), "int8_rowwise codes");
    w->scale = svc->alloc((size_t)out * sizeof(float), "int8_rowwise scales");
    if (!w->q || !w->scale) {
        int8_free_weight(w);
        return NULL;
    }
    return w;
}

static int int8_quantize(const void *state, const char *name, const float *w, int64_t out,
                         int64_t in, qft_qweight **qw, qft_err *err) {
    struct qft_qweight *r = new_weight(((const int8_state *)state)->svc, out, in);
    if (!r) return qft_err_setf(err, "int8_rowwise: %s: out of memory", name);
    for (int64_t o = 0; o < out; o++) {
        const float *row = w + o * in; // (in)
        float amax = 0.0f;
        for (int64_t i = 0; i < in; i++) amax = fmaxf(amax, fabsf(row[i]));
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f; /* an all-zero row stays zero */
        r->scale[o] = s;
        for (int64_t i = 0; i < in; i++) r->q[o * in + i] = (int8_t)lrintf(row[i] / s);
    }
    *qw = r;
    return 0;
}

static int int8_dequantize_rows(const qft_qweight *w, int64_t row0, int64_t n_rows, float *dst,
                                qft_err *err) {
    if (row0 < 0 || n_rows < 0 || row0 + n_rows > w->out)
        return qft_err_setf(err, "int8_rowwise: rows [%lld, %lld) outside (%lld, %lld)",
                            (long long)row0, (long long)(row0 + n_rows), (long long)w->out,
                            (long long)w->in);
    for (int64_t o = 0; o < n_rows; o++) {
        const float s = w->scale[row0 + o];
        const int8_t *q = w->q + (row0 + o) * w->in;
        for (int64_t i = 0; i < w->in; i++) dst[o * w->in + i] = (float)q[i] * s;
    }
    return 0;
}

static size_t int8_bytes(const qft_qweight *w) {
    return (size_t)(w->out * w->in) + (size_t)w->out * sizeof(float);
}

static int int8_save(const qft_qweight *w, const char *prefix, const qft_tensor_sink *sink,
                     qft_err *err) {
    char name[512];
    qft_tensor q = {.dtype = QFT_DT_I8, .ndim = 2, .shape = {w->out, w->in}, .data = w->q};
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (sink->add(sink->ctx, name, &q, err)) return -1;
    qft_tensor s = {.dtype = QFT_DT_F32, .ndim = 1, .shape = {w->out}, .data = w->scale};
    snprintf(name, sizeof name, "%s.weight_scale", prefix);
    return sink->add(sink->ctx, name, &s, err);
}

static int int8_load(const void *state, const char *prefix, int64_t out, int64_t in,
                     const qft_tensor_source *src, qft_qweight **qw, qft_err *err) {
    char name[512];
    qft_tensor q, s;
    snprintf(name, sizeof name, "%s.weight_scale", prefix);
    int rc = src->find(src->ctx, name, &s, err);
    if (rc) return rc; /* 1: no scale, so a dense checkpoint */
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (src->get(src->ctx, name, &q, err)) return -1;
    if (q.dtype != QFT_DT_I8 || q.ndim != 2 || q.shape[0] != out || q.shape[1] != in)
        return qft_err_setf(err, "%s: %s: expected I8 (%lld, %lld) codes", src->file, name,
                            (long long)out, (long long)in);
    if (s.dtype != QFT_DT_F32 || s.ndim != 1 || s.shape[0] != out)
        return qft_err_setf(err, "%s: %s.weight_scale: expected F32 (%lld) scales, one per row",
                            src->file, prefix, (long long)out);
    struct qft_qweight *r = new_weight(((const int8_state *)state)->svc, out, in);
    if (!r) return qft_err_setf(err, "int8_rowwise: %s: out of memory", prefix);
    memcpy(r->q, q.data, (size_t)(out * in)); /* memcpy: file data may be unaligned */
    memcpy(r->scale, s.data, (size_t)out * sizeof(float));
    *qw = r;
    return 0;
}

static int int8_place(qft_qweight *w, const qft_placer *pl, qft_err *err) {
    if (w->placed)
        return qft_err_setf(err, "int8_rowwise: the (%lld, %lld) weight is already placed",
                            (long long)w->out, (long long)w->in);
    const size_t b_scale = (size_t)w->out * sizeof(float); // (out) fp32, first: stays aligned
    const size_t b_q = (size_t)(w->out * w->in);            // (out, in) int8
    unsigned char *block = pl->alloc(pl->ctx, b_scale + b_q, err);
    if (!block) {
        char why[sizeof err->msg] = "the placer returned no memory";
        if (err && err->code && err->msg[0]) memcpy(why, err->msg, sizeof why - 1);
        return qft_err_setf(err, "int8_rowwise: placing the %zu bytes of a (%lld, %lld) weight: %s",
                            b_scale + b_q, (long long)w->out, (long long)w->in, why);
    }
    memcpy(block, w->scale, b_scale);
    memcpy(block + b_scale, w->q, b_q);
    w->svc->free(w->scale), w->svc->free(w->q);
    w->scale = (float *)block;
    w->q = (int8_t *)(block + b_scale);
    w->placed = 1;
    return 0;
}

static void int8_close(void *state) { free(state); }

static const qft_quantizer_vtable k_vtable = {
    .config_keys = k_keys,
    .configure = int8_configure,
    .quantize = int8_quantize,
    .dequantize_rows = int8_dequantize_rows,
    .bytes = int8_bytes,
    .save = int8_save,
    .load = int8_load,
    .free_weight = int8_free_weight,
    .close = int8_close,
    .place = int8_place,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_QUANTIZER,
    .name = "int8_rowwise",
    .version = "1.0.0",
    .description = "int8 row-wise absmax quantizer (example third-party plugin)",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
