/* LoRA and DoRA on the whole tiny transformers Llama (tests/fixtures/llama/untied) against
 * PEFT (tests/fixtures/adapters/llama_lora, llama_dora, from peft_reference.py): the
 * adapter PEFT saved is loaded through the engine's PEFT loader, then logits, every
 * adapter gradient, and five AdamW steps on the adapter tensors are compared.
 *
 * Tolerances (fp32 against fp32 torch, relative to each tensor's largest magnitude):
 * logits 1e-5, adapter gradients 1e-4 (a gradient sums over every position and layer
 * above it), losses over five AdamW steps 1e-5 and the tensors after them 1e-4. */
#include "adapter_test_util.h"
#include "hf_model.h"
#include "llama.h"
#include "llama_internal.h"
#include "lora_common.h"
#include "optim.h"
#include "peft_adapter.h"
#include "qft_base.h"
#include "safetensors.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static char g_root[4096];

static int frozen_role(void *ctx, const char *name, int is_linear) {
    (void)ctx, (void)name, (void)is_linear;
    return QFT_ROLE_FROZEN;
}

static float *fx_f32(const qft_st_file *f, const char *name, size_t *n) {
    const qft_st_entry *e = qft_st_find(f, name);
    ck_assert_msg(e != NULL, "%s has no %s", f->path, name);
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

/* Returns the first backward's gradients (n_trainable floats, malloc'd; *n their count),
 * for the two modes of recomputation to be compared bit for bit. */
static float *run_variant(const char *variant, const char *env, const char *cfg, int recompute,
                          size_t *n_grads) {
    const qft_adapter_vtable *vt = at_load_plugin(env);
    ck_assert_ptr_nonnull(vt);
    void *st = NULL;
    qft_err err = {0};
    ck_assert_msg(at_configure(vt, cfg, &st, &err) == 0, "%s", err.msg);
    char base_dir[4200], fx_dir[4200], path[4300];
    snprintf(base_dir, sizeof base_dir, "%s/tests/fixtures/llama/untied", g_root);
    snprintf(fx_dir, sizeof fx_dir, "%s/tests/fixtures/adapters/%s", g_root, variant);
    qft_llama_build build = {.role = frozen_role, .avt = vt, .astate = st};
    qft_llama_model m;
    ck_assert_msg(qft_hf_model_load_build(base_dir, &m, &build, &err) == 0, "%s", err.msg);
    m.recompute = recompute;
    ck_assert_msg(qft_llama_alloc_grads(&m, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_peft_load(fx_dir, &m, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_attach_adapters(&m, 0, 1, &err) == 0, "%s", err.msg);

    qft_st_file fx;
    snprintf(path, sizeof path, "%s/expected.safetensors", fx_dir);
    ck_assert_msg(qft_st_open(path, &fx, &err) == 0, "%s", err.msg);
    size_t nids;
    float *ids_f = fx_f32(&fx, "ids", &nids), *lab_f = fx_f32(&fx, "labels", NULL),
          *mask_f = fx_f32(&fx, "mask", NULL);
    const int B = 2, T = (int)nids / 2;
    int32_t *ids = malloc(nids * sizeof *ids), *labels = malloc(nids * sizeof *labels);
    uint8_t *mask = malloc(nids);
    ck_assert(ids && labels && mask);
    for (size_t i = 0; i < nids; i++)
        ids[i] = (int32_t)ids_f[i], labels[i] = (int32_t)lab_f[i], mask[i] = mask_f[i] != 0;
    qft_batch b = {.B = B, .T = T, .ids = ids, .labels = labels, .mask = mask};

    /* forward: logits and loss */
    m.astep = (qft_adapter_step){.seed = 1, .step = 0, .micro = 0, .training = 1};
    float loss = 0;
    ck_assert_msg(qft_llama_forward(&m, &b, &loss, &err) == 0, "%s", err.msg);
    size_t nlog;
    float *logits = fx_f32(&fx, "logits", &nlog), *loss_ref = fx_f32(&fx, "loss", NULL);
    double e = at_rel_err(qft_llama_logits(&m), logits, nlog);
    printf("  %s%s: logits rel err %.2e, loss %.7f vs %.7f\n", variant,
           recompute ? " (recompute)" : "", e, loss, loss_ref[0]);
    ck_assert_double_le(e, 1e-5);
    ck_assert_double_le(fabs(loss - loss_ref[0]) / fabs(loss_ref[0]), 1e-5);
    if (recompute) {
        /* what the no-grad pass left for backward: LoRA's down_proj keeps its (N, r)
         * product (recomputation does not repeat down_proj); DoRA keeps nothing, since its
         * (N, out) product per layer is why backward's recomputation repeats down_proj */
        const int dora = strstr(variant, "dora") != NULL;
        int kept = 0, adapted = 0;
        for (int l = 0; l < m.cfg.num_hidden_layers; l++)
            for (int k = 0; k < QFT_LIN_COUNT; k++) {
                const qft_llama_adapted *ad = m.adapted[l][k];
                if (!ad) continue;
                adapted++;
                ck_assert_int_eq(ad->row_scaled, dora);
                const int want = !dora && k == QFT_LIN_DOWN;
                ck_assert_msg((ad->al->saved_N == B * T) == want, "%s: saved %lld rows",
                              ad->name, (long long)ad->al->saved_N);
                kept += ad->al->saved_N == B * T;
            }
        ck_assert_int_eq(kept, dora ? 0 : m.cfg.num_hidden_layers);
        ck_assert_int_gt(adapted, m.cfg.num_hidden_layers);
    }

    /* backward: every adapter tensor's gradient */
    ck_assert_msg(qft_llama_backward(&m, &b, 1.0f, &err) == 0, "%s", err.msg);
    int n_adapter = 0;
    double worst = 0;
    for (int i = 0; i < m.n_entries; i++) {
        const qft_param_entry *en = &m.entries[i];
        if (en->layer != -2) continue;
        char key[160];
        snprintf(key, sizeof key, "grad.%s", en->name);
        size_t n;
        float *g = fx_f32(&fx, key, &n);
        ck_assert_uint_eq(n, en->numel);
        double ge = at_rel_err(m.grads + en->offset, g, n);
        ck_assert_msg(ge <= 1e-4, "%s: gradient relative error %.3e", en->name, ge);
        if (ge > worst) worst = ge;
        free(g);
        n_adapter++;
    }
    float *grads = malloc(m.n_trainable * sizeof *grads);
    ck_assert_ptr_nonnull(grads);
    memcpy(grads, m.grads, m.n_trainable * sizeof *grads);
    *n_grads = m.n_trainable;
    printf("  %s%s: %d adapter gradients, worst rel err %.2e\n", variant,
           recompute ? " (recompute)" : "", n_adapter, worst);
    ck_assert_int_eq(n_adapter, (int)(fx.n_entries - 6) / 2); /* grad.* and final.* each */

    /* five AdamW steps on the adapter tensors, as torch.optim.AdamW */
    qft_optim opt;
    qft_optim_config oc = {
        .kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f, .weight_decay = 0.1f};
    ck_assert(qft_optim_init(&opt, &oc, m.n_trainable, &err) == 0);
    float *losses = fx_f32(&fx, "adamw_losses", NULL);
    for (int k = 0; k <= 5; k++) {
        qft_llama_zero_grads(&m);
        m.astep = (qft_adapter_step){.seed = 1, .step = k, .training = 1, .no_grad = k == 5};
        ck_assert_msg(qft_llama_forward(&m, &b, &loss, &err) == 0, "%s", err.msg);
        ck_assert_msg(fabs(loss - losses[k]) / fabs(losses[k]) <= 1e-5,
                      "step %d: loss %.7f vs %.7f", k, loss, losses[k]);
        if (k == 5) break;
        ck_assert_msg(qft_llama_backward(&m, &b, 1.0f, &err) == 0, "%s", err.msg);
        qft_optim_step(&opt, m.params, m.grads, 1e-3f);
    }
    worst = 0;
    for (int i = 0; i < m.n_entries; i++) {
        const qft_param_entry *en = &m.entries[i];
        if (en->layer != -2) continue;
        char key[160];
        snprintf(key, sizeof key, "final.%s", en->name);
        float *w = fx_f32(&fx, key, NULL);
        double we = at_rel_err(m.params + en->offset, w, en->numel);
        ck_assert_msg(we <= 1e-4, "%s after 5 steps: relative error %.3e", en->name, we);
        if (we > worst) worst = we;
        free(w);
    }
    printf("  %s%s: 5 AdamW steps, losses within 1e-5, tensors worst rel err %.2e\n", variant,
           recompute ? " (recompute)" : "", worst);
    qft_optim_free(&opt);
    free(losses), free(logits), free(loss_ref), free(ids_f), free(lab_f), free(mask_f), free(ids),
        free(labels), free(mask);
    qft_st_close(&fx);
    qft_llama_free(&m);
    vt->close(st);
    return grads;
}

/* Both modes of recomputation: the same gradients, bit for bit (recomputation runs the
 * same ops on the same inputs, down_proj included where its adapter is row-scaled). */
static void run_both(const char *variant, const char *env, const char *cfg) {
    size_t n0 = 0, n1 = 0;
    float *g0 = run_variant(variant, env, cfg, 0, &n0), *g1 = run_variant(variant, env, cfg, 1, &n1);
    ck_assert_uint_eq(n0, n1);
    ck_assert_uint_gt(n0, 0);
    ck_assert_msg(memcmp(g0, g1, n0 * sizeof *g0) == 0, "%s: recomputation changed the gradients",
                  variant);
    free(g0), free(g1);
}

static const char *k_lora_cfg =
    "adapter = { plugin = \"lora\"; rank = 4; alpha = 8; target_modules = \"all\"; };";
static const char *k_dora_cfg =
    "adapter = { plugin = \"dora\"; rank = 4; alpha = 8; rslora = true; "
    "target_modules = \"all-linear\"; };";

START_TEST(test_llama_lora) {
    run_both("llama_lora", "QFT_LORA_PLUGIN", k_lora_cfg);
}
END_TEST

START_TEST(test_llama_dora) {
    run_both("llama_dora", "QFT_DORA_PLUGIN", k_dora_cfg);
}
END_TEST

int main(void) {
    const char *root = getenv("QFT_SOURCE_ROOT");
    snprintf(g_root, sizeof g_root, "%s", root ? root : ".");
    Suite *s = suite_create("adapters_llama");
    TCase *tc = tcase_create("peft");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_llama_lora);
    tcase_add_test(tc, test_llama_dora);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
