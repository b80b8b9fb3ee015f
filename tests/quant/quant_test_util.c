#include "quant_test_util.h"

#include <check.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const qft_quantizer_vtable *qt_load_plugin(const char *env) {
    const char *path = getenv(env);
    if (!path) {
        fprintf(stderr, "%s is not set: run this test through meson\n", env);
        return NULL;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return NULL;
    }
    qft_plugin_entry_fn fn = (qft_plugin_entry_fn)dlsym(h, QFT_PLUGIN_ENTRY_SYMBOL);
    if (!fn) return NULL;
    const qft_plugin_desc *d = fn();
    if (!d || d->abi_version != QFT_ABI_VERSION || d->kind != QFT_KIND_QUANTIZER) return NULL;
    return d->vtable;
}

static int in_list(const char *s, const char *const *l) {
    for (; l && *l; l++)
        if (!strcmp(s, *l)) return 1;
    return 0;
}

/* The core's rule, reduced to the quant section: `plugin` plus the plugin's keys. */
static int check_keys(const config_setting_t *section, const char *const *keys, qft_err *err) {
    static const char *const core[] = {"plugin", NULL};
    int n = config_setting_length(section);
    for (int i = 0; i < n; i++) {
        const config_setting_t *c = config_setting_get_elem(section, (unsigned)i);
        const char *name = config_setting_name(c);
        if (in_list(name, core) || in_list(name, keys)) continue;
        return qft_err_setf(err, "%s:%u: quant.%s: unknown key",
                            config_setting_source_file(c) ? config_setting_source_file(c) : "?",
                            config_setting_source_line(c), name);
    }
    return 0;
}

static void svc_log(int level, const char *fmt, ...) { (void)level; (void)fmt; }

static const qft_services k_svc = {
    .abi_version = QFT_ABI_VERSION,
    .alloc = qft_mem_alloc,
    .free = qft_mem_free,
    .log = svc_log,
    .rng_seed = qft_rng_seed,
    .rng_next = qft_rng_next,
    .config_check_keys = check_keys,
};

const qft_services *qt_services(void) { return &k_svc; }

config_setting_t *qt_cfg(config_t *cfg, const char *text, char *path, size_t n) {
    snprintf(path, n, "/tmp/qft_quant_cfg_%d_XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    config_init(cfg);
    ck_assert_msg(config_read_file(cfg, path) == CONFIG_TRUE, "config: %s line %d",
                  config_error_text(cfg), config_error_line(cfg));
    return config_lookup(cfg, "quant");
}

void qt_cfg_free(config_t *cfg, const char *path) {
    config_destroy(cfg);
    unlink(path);
}

void *qt_configure(const qft_quantizer_vtable *vt, const char *plugin, const char *body) {
    char text[1024], path[256];
    const int len = snprintf(text, sizeof text, "quant: {\n  plugin = \"%s\";\n%s\n};\n", plugin,
                             body);
    ck_assert_msg(len > 0 && (size_t)len < sizeof text, "quant section of %d bytes", len);
    config_t cfg;
    config_setting_t *s = qt_cfg(&cfg, text, path, sizeof path);
    void *st = NULL;
    qft_err err = {0};
    ck_assert_msg(vt->configure(qt_services(), s, &st, &err) == 0, "%s", err.msg);
    qt_cfg_free(&cfg, path);
    return st;
}

void *qt_nf4_open(const qft_quantizer_vtable *vt, const qt_nf4_case *c, char *what, size_t n) {
    char body[128];
    snprintf(body, sizeof body, "  blocksize = %d;\n  double_quant = %s;", c->bs,
             c->dq ? "true" : "false");
    snprintf(what, n, "bnb_nf4 (%lld, %lld) bs %d dq %d", (long long)c->out, (long long)c->in,
             c->bs, c->dq);
    return qt_configure(vt, "bnb_nf4", body);
}

void *qt_hqq_open(const qft_quantizer_vtable *vt, const qt_hqq_case *c, char *what, size_t n) {
    char body[256];
    snprintf(body, sizeof body,
             "  nbits = %d;\n  group_size = %d;\n  axis = %d;\n  quant_zero = %s;\n"
             "  quant_scale = %s;", c->nbits, c->gs, c->axis, c->qz ? "true" : "false",
             c->qs ? "true" : "false");
    snprintf(what, n, "hqq (%lld, %lld) %d-bit gs %d axis %d qz %d qs %d", (long long)c->out,
             (long long)c->in, c->nbits, c->gs, c->axis, c->qz, c->qs);
    return qt_configure(vt, "hqq", body);
}

size_t qt_nf4_data_bytes(const qt_nf4_case *c) {
    const size_t n = (size_t)(c->out * c->in), nb = (n + (size_t)c->bs - 1) / (size_t)c->bs;
    return (n + 1) / 2 + (c->dq ? nb + 4 * ((nb + 255) / 256) : 4 * nb);
}

size_t qt_hqq_data_bytes(const qt_hqq_case *c) {
    const size_t n = (size_t)(c->out * c->in);
    // the grouped matrix (R, C) and its group count, as hqq groups the flattened weight
    const size_t R = c->axis == 1 ? n / (size_t)c->gs : (size_t)c->gs, C = n / R;
    const size_t G = c->axis == 1 ? R : C;
    const size_t packed = c->nbits == 8   ? R * C
                          : c->nbits == 4 ? R / 2 * C
                          : c->nbits == 2 ? R / 4 * C
                                          : (R + 9) / 10 * C * 4; // 3 bits: int32 words
    return packed + (c->qz ? G : 4 * G) + (c->qs ? G + 8 * (G / 128) : 4 * G);
}

static int mem_add(void *ctx, const char *name, const qft_tensor *t, qft_err *err) {
    qt_mem *m = ctx;
    if (m->n >= 64) return qft_err_setf(err, "mem sink full");
    snprintf(m->e[m->n].name, sizeof m->e[m->n].name, "%s", name);
    m->e[m->n].t = *t;
    m->n++;
    return 0;
}

qft_tensor_sink qt_mem_sink(qt_mem *m) { return (qft_tensor_sink){.ctx = m, .add = mem_add}; }

const qft_tensor *qt_mem_find(const qt_mem *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->e[i].name, name)) return &m->e[i].t;
    return NULL;
}

static int mem_find(void *ctx, const char *name, qft_tensor *t, qft_err *err) {
    (void)err;
    const qft_tensor *x = qt_mem_find(ctx, name);
    if (!x) return 1;
    *t = *x;
    return 0;
}

static int mem_get(void *ctx, const char *name, qft_tensor *t, qft_err *err) {
    int rc = mem_find(ctx, name, t, err);
    if (rc == 1) return qft_err_setf(err, "<memory>: no tensor %s", name);
    return rc;
}

qft_tensor_source qt_mem_source(qt_mem *m) {
    return (qft_tensor_source){.ctx = m, .get = mem_get, .find = mem_find, .file = "<memory>"};
}

static int st_find(void *ctx, const char *name, qft_tensor *t, qft_err *err) {
    (void)err;
    const qft_st_entry *e = qft_st_find(ctx, name);
    if (!e) return 1;
    *t = e->t;
    return 0;
}

static int st_get(void *ctx, const char *name, qft_tensor *t, qft_err *err) {
    qft_st_file *f = ctx;
    int rc = st_find(ctx, name, t, err);
    if (rc == 1) return qft_err_setf(err, "%s: no tensor %s", f->path, name);
    return rc;
}

qft_tensor_source qt_st_source(qft_st_file *f) {
    return (qft_tensor_source){.ctx = f, .get = st_get, .find = st_find, .file = f->path};
}

size_t qt_numel(const qft_tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

size_t qt_dtype_size(qft_dtype d) {
    switch (d) {
    case QFT_DT_F32: case QFT_DT_I32: return 4;
    case QFT_DT_F16: case QFT_DT_BF16: case QFT_DT_I16: return 2;
    case QFT_DT_F64: case QFT_DT_I64: return 8;
    default: return 1;
    }
}

const char *qt_fixture_dir(void) {
    static char buf[4096];
    const char *root = getenv("QFT_SOURCE_ROOT");
    snprintf(buf, sizeof buf, "%s/tests/fixtures/quant", root ? root : ".");
    return buf;
}

const qft_st_entry *qt_need(const qft_st_file *f, const char *name) {
    const qft_st_entry *e = qft_st_find(f, name);
    ck_assert_msg(e != NULL, "fixture %s lacks %s", f->path, name);
    return e;
}

float *qt_f32(const qft_st_file *f, const char *name, size_t *n) {
    const qft_st_entry *e = qt_need(f, name);
    size_t k = qft_st_numel(&e->t);
    float *d = malloc(k * sizeof(float) + 4);
    ck_assert_ptr_nonnull(d);
    qft_err err = {0};
    ck_assert_msg(qft_st_entry_to_f32(f, e, d, &err) == 0, "%s", err.msg);
    if (n) *n = k;
    return d;
}
