#include "adapter_test_util.h"

#include "config.h"
#include "cpu_ops.h"
#include "qft_base.h"

#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const qft_adapter_vtable *at_load_plugin(const char *env) {
    const char *path = getenv(env);
    if (!path) {
        fprintf(stderr, "%s is not set: run this through meson\n", env);
        return NULL;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return NULL;
    }
    qft_plugin_entry_fn fn = (qft_plugin_entry_fn)dlsym(h, QFT_PLUGIN_ENTRY_SYMBOL);
    const qft_plugin_desc *d = fn ? fn() : NULL;
    if (!d || d->abi_version != QFT_ABI_VERSION || d->kind != QFT_KIND_ADAPTER) {
        fprintf(stderr, "%s: not an adapter plugin of ABI %d\n", path, QFT_ABI_VERSION);
        return NULL;
    }
    return d->vtable;
}

static void svc_log(int level, const char *fmt, ...) {
    (void)level;
    (void)fmt;
}

const qft_services *at_services(void) {
    static qft_services s;
    s = (qft_services){
        .abi_version = QFT_ABI_VERSION,
        .alloc = qft_mem_alloc,
        .free = qft_mem_free,
        .log = svc_log,
        .rng_seed = qft_rng_seed,
        .rng_next = qft_rng_next,
        .config_check_keys = qft_config_check_keys,
        .ops = qft_cpu_ops(),
    };
    return &s;
}

static int d_forward(void *ctx, const float *x, int64_t N, float *y, int64_t ldy, float beta,
                     qft_err *err) {
    (void)err;
    at_dense *d = ctx;
    d->fwd_calls++;
    qft_cpu_gemm(0, 1, (int)N, (int)d->out, (int)d->in, 1.0f, x, (int)d->in, d->W, (int)d->in, beta,
                 y, (int)ldy);
    return 0;
}

static int d_backward_input(void *ctx, const float *dy, int64_t ldy, int64_t N, float *dx,
                            float beta, qft_err *err) {
    (void)err;
    at_dense *d = ctx;
    d->bwd_calls++;
    qft_cpu_gemm(0, 0, (int)N, (int)d->in, (int)d->out, 1.0f, dy, (int)ldy, d->W, (int)d->in, beta,
                 dx, (int)d->in);
    return 0;
}

static int d_weight_rows(void *ctx, int64_t row0, int64_t n, float *dst, qft_err *err) {
    at_dense *d = ctx;
    if (row0 < 0 || n < 0 || row0 + n > d->out)
        return qft_err_setf(err, "weight rows [%lld, %lld) outside %lld", (long long)row0,
                            (long long)(row0 + n), (long long)d->out);
    d->row_calls++;
    if (n > d->max_rows) d->max_rows = n;
    memcpy(dst, d->W + row0 * d->in, (size_t)(n * d->in) * sizeof *dst);
    return 0;
}

void at_dense_init(at_dense *d, qft_linear_base *lin, const float *W, int64_t out, int64_t in,
                   const char *name, const char *module, int layer) {
    memset(d, 0, sizeof *d);
    d->W = W, d->out = out, d->in = in;
    *lin = (qft_linear_base){.name = name,
                             .module = module,
                             .layer = layer,
                             .out = out,
                             .in = in,
                             .ctx = d,
                             .forward = d_forward,
                             .backward_input = d_backward_input,
                             .weight_rows = d_weight_rows};
}

int at_configure(const qft_adapter_vtable *vt, const char *text, void **state, qft_err *err) {
    char path[] = "/tmp/qft_adapter_cfg_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return qft_err_setf(err, "mkstemp failed");
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(path);
        return qft_err_setf(err, "fdopen failed");
    }
    fputs(text, f);
    fclose(f);
    config_t cfg;
    config_init(&cfg);
    int rc = -1;
    if (!config_read_file(&cfg, path)) {
        qft_err_setf(err, "%s:%d: %s", path, config_error_line(&cfg), config_error_text(&cfg));
    } else {
        const config_setting_t *sec = config_lookup(&cfg, "adapter");
        rc = vt->configure(at_services(), sec, state, err);
    }
    /* the plugin copies what it keeps, so the config can go now */
    config_destroy(&cfg);
    unlink(path);
    return rc;
}

int at_declare(const qft_adapter_vtable *vt, const void *state, const qft_linear_base *lin,
               qft_adapter_param *params, int *n, qft_err *err) {
    if (vt->declare(state, lin, params, n, err)) return -1;
    for (int i = 0; i < *n; i++) {
        size_t k =
            (size_t)params[i].shape[0] * (size_t)(params[i].ndim > 1 ? params[i].shape[1] : 1);
        params[i].data = calloc(k, sizeof(float));
        params[i].grad = calloc(k, sizeof(float));
        if (!params[i].data || !params[i].grad) return qft_err_setf(err, "out of memory");
    }
    return 0;
}

void at_free_params(qft_adapter_param *params, int n) {
    for (int i = 0; i < n; i++) {
        free(params[i].data);
        free(params[i].grad);
        params[i].data = params[i].grad = NULL;
    }
}

void at_randn(float *x, size_t n, uint64_t seed) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = qft_rng_normal(&r);
}

double at_rel_err(const float *a, const float *b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
        if (fabs((double)b[i]) > s) s = fabs((double)b[i]);
    }
    return s > 0.0 ? e / s : e;
}
