#include "export_test_util.h"

#include "../adapters/adapter_test_util.h"
#include "hf_model.h"
#include "peft_adapter.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char g_tmp[4096];

const char *et_root(void) {
    const char *r = getenv("QFT_SOURCE_ROOT");
    return r ? r : ".";
}

const char *et_tmp(void) {
    if (!g_tmp[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(g_tmp, sizeof g_tmp, "%s/qft_export_XXXXXX", t ? t : "/tmp");
        ck_assert_msg(mkdtemp(g_tmp) != NULL, "mkdtemp %s failed", g_tmp);
    }
    return g_tmp;
}

void et_cleanup(void) {
    if (!g_tmp[0]) return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    g_tmp[0] = 0;
}

int et_run(const char *cmd, char **out) {
    char full[16384];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_msg(p != NULL, "popen %s failed", cmd);
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 >= cap) {
            buf = realloc(buf, cap *= 2);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[n] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

float *et_f32(const qft_st_file *f, const char *name, size_t *n) {
    const qft_st_entry *e = qft_st_find(f, name);
    ck_assert_msg(e != NULL, "%s has no tensor %s", f->path, name);
    size_t k = qft_st_numel(&e->t);
    float *p = malloc(k * sizeof *p);
    ck_assert_ptr_nonnull(p);
    if (e->t.dtype == QFT_DT_I32) {
        for (size_t i = 0; i < k; i++) {
            int32_t v;
            memcpy(&v, (const char *)e->t.data + i * 4, 4);
            p[i] = (float)v;
        }
    } else {
        qft_err err = {0};
        ck_assert_msg(qft_st_entry_to_f32(f, e, p, &err) == 0, "%s", err.msg);
    }
    if (n) *n = k;
    return p;
}

static int frozen_role(void *ctx, const char *name, int is_linear) {
    (void)ctx, (void)name, (void)is_linear;
    return QFT_ROLE_FROZEN;
}

void et_load_adapted(qft_llama_model *m, const char *plugin_env, const char *cfg_text,
                     const char *adapter_dir, const qft_adapter_vtable **vt, void **state) {
    qft_err err = {0};
    *vt = at_load_plugin(plugin_env);
    ck_assert_msg(*vt != NULL, "cannot load the plugin named by %s", plugin_env);
    ck_assert_msg(at_configure(*vt, cfg_text, state, &err) == 0, "%s", err.msg);
    char base[4200];
    snprintf(base, sizeof base, "%s/tests/fixtures/llama/untied", et_root());
    qft_llama_build build = {.role = frozen_role, .avt = *vt, .astate = *state};
    ck_assert_msg(qft_hf_model_load_build(base, m, &build, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_alloc_grads(m, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_peft_load(adapter_dir, m, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_attach_adapters(m, 0, 1, &err) == 0, "%s", err.msg);
}

void et_random_batch(qft_batch *b, int B, int T, int vocab, uint64_t seed) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    int32_t *ids = malloc((size_t)B * T * sizeof *ids); /* (B, T) */
    ck_assert_ptr_nonnull(ids);
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(qft_rng_next(&r) % (uint64_t)vocab);
    *b = (qft_batch){.B = B, .T = T, .ids = ids, .labels = ids, .mask = NULL};
}

void et_free_batch(qft_batch *b) {
    if (b->labels != b->ids) free(b->labels);
    free(b->ids);
    free(b->mask);
    memset(b, 0, sizeof *b);
}

float *et_logits(qft_llama_model *m, const qft_batch *b) {
    qft_err err = {0};
    float loss = 0;
    m->astep = (qft_adapter_step){.seed = 1, .step = 0, .training = 0, .no_grad = 1};
    ck_assert_msg(qft_llama_forward(m, b, &loss, &err) == 0, "%s", err.msg);
    const size_t n = (size_t)b->B * b->T * m->cfg.vocab_size; /* (B, T, V) */
    float *out = malloc(n * sizeof *out);
    ck_assert_ptr_nonnull(out);
    memcpy(out, qft_llama_logits(m), n * sizeof *out);
    return out;
}

double et_rel_err(const float *a, const float *b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
        if (fabs((double)b[i]) > s) s = fabs((double)b[i]);
    }
    return s > 0.0 ? e / s : e;
}
