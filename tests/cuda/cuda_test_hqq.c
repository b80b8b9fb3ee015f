#include "cuda_test_hqq.h"

#include "qft_base.h"

#include <check.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

const qft_quantizer_vtable *cth_plugin(void) {
    static const qft_quantizer_vtable *vt;
    if (vt) return vt;
    const char *path = getenv("QFT_HQQ_PLUGIN");
    ck_assert_msg(path != NULL, "QFT_HQQ_PLUGIN is not set: run this test through meson (or "
                                "set it to <build>/quant/hqq/qft_hqq.so)");
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "dlopen %s: %s", path, dlerror());
    qft_plugin_entry_fn fn = (qft_plugin_entry_fn)dlsym(h, QFT_PLUGIN_ENTRY_SYMBOL);
    const qft_plugin_desc *d = fn ? fn() : NULL;
    ck_assert_msg(d && d->kind == QFT_KIND_QUANTIZER && d->abi_version == QFT_ABI_VERSION,
                  "%s is not a quantizer plugin of ABI %d", path, QFT_ABI_VERSION);
    vt = d->vtable;
    return vt;
}

struct qft_qweight *cth_quantize(const cth_case *c, uint64_t seed) {
    const qft_quantizer_vtable *vt = cth_plugin();
    char text[256];
    snprintf(text, sizeof text,
             "quant = { nbits = %d; group_size = %d; axis = %d; quant_zero = %s; "
             "quant_scale = %s; };\n",
             c->nbits, c->gs, c->axis, c->meta ? "true" : "false", c->meta ? "true" : "false");
    config_t cfg;
    config_init(&cfg);
    ck_assert_msg(config_read_string(&cfg, text) == CONFIG_TRUE, "%s", config_error_text(&cfg));
    void *state = NULL;
    qft_err err = {0, ""};
    ck_assert_msg(vt->configure(NULL, config_lookup(&cfg, "quant"), &state, &err) == 0, "%s",
                  err.msg);
    const size_t n = (size_t)(c->out * c->in);
    float *W = malloc(n * sizeof *W); // (out, in)
    ck_assert_ptr_nonnull(W);
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) W[i] = 0.02f * qft_rng_normal(&r);
    for (int64_t j = 0; j < c->in; j += 17) W[j] += 0.3f; /* outliers widen some groups */
    qft_qweight *qw = NULL;
    ck_assert_msg(vt->quantize(state, "w", W, c->out, c->in, &qw, &err) == 0, "%s", err.msg);
    vt->close(state);
    config_destroy(&cfg);
    free(W);
    return qw;
}
