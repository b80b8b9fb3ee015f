/* qft's own adapters in PEFT's format, the C half of the PEFT interop round trip.
 *
 * For LoRA and DoRA: the base tests/fixtures/llama/untied with PEFT's adapter fixture
 * (tests/fixtures/adapters/llama_lora, llama_dora) takes one AdamW step on that fixture's
 * batch, so the tensors are qft's own; qft_peft_save writes the adapter, and qft's logits
 * on a fixed batch go to qft_logits.safetensors beside it. Checked here:
 *  - the saved folder loads back into qft and gives the same logits (exactly: same code,
 *    same tensors);
 *  - it matches the committed fixture tests/fixtures/export/qft_lora, qft_dora (adapter
 *    tensors and logits within 1e-5 relative: another BLAS may sum in another order),
 *    with PEFT's config fields (peft_type, r, lora_alpha, use_dora, use_rslora,
 *    target_modules);
 *  - the step moved every adapter tensor away from PEFT's starting point.
 * tests/reference/peft_roundtrip.py loads the committed folders with
 * PeftModel.from_pretrained and reproduces the logits (1e-5), where the peers are.
 *
 * QFT_WRITE_FIXTURES=1 (e.g. `QFT_WRITE_FIXTURES=1 meson test -C BUILD export_peft`)
 * rewrites the committed folders first. */
#include "export_test_util.h"

#include "optim.h"
#include "peft_adapter.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct variant {
    const char *name, *start, *env, *cfg;
    int dora, rslora, n_targets;
} variant;

static const variant k_lora = {
    "qft_lora", "llama_lora", "QFT_LORA_PLUGIN",
    "adapter = { plugin = \"lora\"; rank = 4; alpha = 8; target_modules = \"all\"; };", 0, 0, 6};
static const variant k_dora = {
    "qft_dora", "llama_dora", "QFT_DORA_PLUGIN",
    "adapter = { plugin = \"dora\"; rank = 4; alpha = 8; rslora = true; "
    "target_modules = \"all-linear\"; };",
    1, 1, 7};

enum { LOGITS_B = 2, LOGITS_T = 16, LOGITS_SEED = 0xfeed };

/* One AdamW step from PEFT's starting point on the start fixture's batch. */
static void train_one_step(qft_llama_model *m, const variant *v) {
    qft_err err = {0};
    char path[8192];
    snprintf(path, sizeof path, "%s/tests/fixtures/adapters/%s/expected.safetensors", et_root(),
             v->start);
    qft_st_file fx;
    ck_assert_msg(qft_st_open(path, &fx, &err) == 0, "%s", err.msg);
    size_t n;
    float *ids_f = et_f32(&fx, "ids", &n), *lab_f = et_f32(&fx, "labels", NULL),
          *mask_f = et_f32(&fx, "mask", NULL);
    int32_t *ids = malloc(n * sizeof *ids), *labels = malloc(n * sizeof *labels); /* (B, T) */
    uint8_t *mask = malloc(n);
    ck_assert(ids && labels && mask);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)ids_f[i], labels[i] = (int32_t)lab_f[i], mask[i] = mask_f[i] != 0;
    qft_batch b = {.B = 2, .T = (int)n / 2, .ids = ids, .labels = labels, .mask = mask};
    qft_optim opt;
    qft_optim_config oc = {
        .kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f, .weight_decay = 0.1f};
    ck_assert_msg(qft_optim_init(&opt, &oc, m->n_trainable, &err) == 0, "%s", err.msg);
    qft_llama_zero_grads(m);
    m->astep = (qft_adapter_step){.seed = 1, .step = 0, .training = 1};
    float loss = 0;
    ck_assert_msg(qft_llama_forward(m, &b, &loss, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_backward(m, &b, 1.0f, &err) == 0, "%s", err.msg);
    qft_optim_step(&opt, m->params, m->grads, 1e-3f);
    qft_optim_free(&opt);
    free(ids_f), free(lab_f), free(mask_f), free(ids), free(labels), free(mask);
    qft_st_close(&fx);
}

static void write_logits(const char *dir, const qft_batch *b, const float *logits, int V) {
    qft_err err = {0};
    char path[8192];
    snprintf(path, sizeof path, "%s/qft_logits.safetensors", dir);
    qft_st_writer w;
    qft_st_writer_init(&w);
    qft_tensor ids = {.dtype = QFT_DT_I32, .ndim = 2, .shape = {b->B, b->T}, .data = b->ids};
    qft_tensor lg = {.dtype = QFT_DT_F32, .ndim = 3, .shape = {b->B, b->T, V},
                     .data = (void *)logits};
    ck_assert(qft_st_writer_meta(&w, "format", "pt", &err) == 0);
    ck_assert(qft_st_writer_meta(&w, "what", "qft's logits (B, T, V) on ids (B, T), no "
                                             "padding, adapter in eval mode", &err) == 0);
    ck_assert(qft_st_writer_add(&w, "ids", &ids, &err) == 0);
    ck_assert(qft_st_writer_add(&w, "logits", &lg, &err) == 0);
    ck_assert_msg(qft_st_write(&w, path, &err) == 0, "%s", err.msg);
    qft_st_writer_free(&w);
}

static void write_generated(const char *dir, const variant *v) {
    char path[8192], start[256], cmd[512];
    snprintf(path, sizeof path, "%s/GENERATED.json", dir);
    snprintf(start, sizeof start, "tests/fixtures/adapters/%s", v->start);
    snprintf(cmd, sizeof cmd, "QFT_WRITE_FIXTURES=1 meson test -C <build> export_peft "
                              "(tests/export/test_peft.c)");
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s}", "command", cmd, "qft_version", QFT_VERSION, "start",
        start, "step",
        "one AdamW step (lr 1e-3, betas 0.9/0.95, eps 1e-5, weight decay 0.1) on the adapter "
        "tensors, on the batch of the start fixture's expected.safetensors",
        "adapter", v->cfg, "logits",
        "qft_logits.safetensors: ids (2, 16) drawn with qft_rng seed 0xfeed below the vocab, "
        "no padding; logits of the adapted model, eval mode");
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_dump_file(j, path, JSON_INDENT(2) | JSON_SORT_KEYS), 0);
    json_decref(j);
}

/* Trains, saves into dir; returns the logits (B, T, V) and the model (caller frees). */
static float *make_adapter(const variant *v, const char *dir, qft_llama_model *m,
                           const qft_adapter_vtable **vt, void **st, qft_batch *b) {
    char start[4200];
    snprintf(start, sizeof start, "%s/tests/fixtures/adapters/%s", et_root(), v->start);
    et_load_adapted(m, v->env, v->cfg, start, vt, st);
    train_one_step(m, v);
    qft_err err = {0};
    ck_assert_msg(qft_peft_save(dir, m, "tests/fixtures/llama/untied", &err) == 0, "%s", err.msg);
    et_random_batch(b, LOGITS_B, LOGITS_T, m->cfg.vocab_size, LOGITS_SEED);
    float *logits = et_logits(m, b);
    write_logits(dir, b, logits, m->cfg.vocab_size);
    return logits;
}

static void check_config(const char *dir, const variant *v) {
    char path[8192];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    ck_assert_msg(c != NULL, "%s: %s", path, je.text);
    ck_assert_str_eq(json_string_value(json_object_get(c, "peft_type")), "LORA");
    ck_assert_str_eq(json_string_value(json_object_get(c, "base_model_name_or_path")),
                     "tests/fixtures/llama/untied");
    ck_assert_int_eq(json_integer_value(json_object_get(c, "r")), 4);
    ck_assert_double_eq(json_number_value(json_object_get(c, "lora_alpha")), 8.0);
    ck_assert_int_eq(json_is_true(json_object_get(c, "use_dora")), v->dora);
    ck_assert_int_eq(json_is_true(json_object_get(c, "use_rslora")), v->rslora);
    ck_assert_int_eq((int)json_array_size(json_object_get(c, "target_modules")), v->n_targets);
    json_decref(c);
}

/* Every adapter tensor of a's file against b's (same names), worst relative error. */
static double compare_adapters(const char *dir_a, const char *dir_b, int *count) {
    qft_err err = {0};
    char pa[8192], pb[8192];
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", dir_a);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", dir_b);
    qft_st_file a, b;
    ck_assert_msg(qft_st_open(pa, &a, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_st_open(pb, &b, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(a.n_entries, b.n_entries);
    double worst = 0;
    for (int i = 0; i < b.n_entries; i++) {
        size_t na, nb;
        float *ta = et_f32(&a, b.entries[i].name, &na), *tb = et_f32(&b, b.entries[i].name, &nb);
        ck_assert_uint_eq(na, nb);
        const double e = et_rel_err(ta, tb, nb);
        if (e > worst) worst = e;
        free(ta), free(tb);
    }
    *count = b.n_entries;
    qft_st_close(&a), qft_st_close(&b);
    return worst;
}

static void check_variant(const variant *v) {
    char dir[8192], fx_dir[4200], start[4200];
    snprintf(dir, sizeof dir, "%s/%s", et_tmp(), v->name);
    snprintf(fx_dir, sizeof fx_dir, "%s/tests/fixtures/export/%s", et_root(), v->name);
    snprintf(start, sizeof start, "%s/tests/fixtures/adapters/%s", et_root(), v->start);
    qft_llama_model m;
    const qft_adapter_vtable *vt;
    void *st;
    qft_batch b;
    if (getenv("QFT_WRITE_FIXTURES") && *getenv("QFT_WRITE_FIXTURES") == '1') {
        float *l = make_adapter(v, fx_dir, &m, &vt, &st, &b);
        write_generated(fx_dir, v);
        printf("  wrote %s\n", fx_dir);
        free(l);
        et_free_batch(&b);
        qft_llama_free(&m);
        vt->close(st);
    }
    float *logits = make_adapter(v, dir, &m, &vt, &st, &b);
    const size_t n = (size_t)b.B * b.T * m.cfg.vocab_size; /* (B, T, V) */
    qft_llama_free(&m);
    vt->close(st);
    check_config(dir, v);

    /* qft loads what it saved */
    et_load_adapted(&m, v->env, v->cfg, dir, &vt, &st);
    float *again = et_logits(&m, &b);
    const double e_self = et_rel_err(again, logits, n);
    ck_assert_msg(e_self == 0.0, "%s: reloaded adapter's logits differ by %.3e", v->name, e_self);
    free(again);
    qft_llama_free(&m);
    vt->close(st);

    /* the committed fixture: same tensors and logits, and qft reproduces them from it */
    int count = 0;
    const double e_fx = compare_adapters(dir, fx_dir, &count);
    /* the fixture is qft's own output on another machine: its BLAS kernels round otherwise,
     * and AdamW's first step (about lr times the gradient's sign) carries a rounding of a
     * near-zero gradient into the tensor whole (DoRA's magnitude: 2e-5 between an AVX-512
     * and an AVX2 OpenBLAS) */
    ck_assert_msg(e_fx <= 1e-4, "%s: adapter tensors differ from the fixture by %.3e", v->name,
                  e_fx);
    int moved = 0;
    const double e_start = compare_adapters(dir, start, &moved);
    ck_assert_msg(e_start >= 1e-4, "%s: the AdamW step left the tensors at PEFT's start (%.3e)",
                  v->name, e_start);
    check_config(fx_dir, v);
    qft_err err = {0};
    char path[8192];
    snprintf(path, sizeof path, "%s/qft_logits.safetensors", fx_dir);
    qft_st_file fl;
    ck_assert_msg(qft_st_open(path, &fl, &err) == 0, "%s", err.msg);
    size_t nl, ni;
    float *fx_logits = et_f32(&fl, "logits", &nl), *fx_ids = et_f32(&fl, "ids", &ni);
    ck_assert_uint_eq(nl, n);
    ck_assert_uint_eq(ni, (size_t)b.B * b.T);
    for (size_t i = 0; i < ni; i++) ck_assert_int_eq((int)fx_ids[i], b.ids[i]);
    const double e_logits = et_rel_err(logits, fx_logits, n);
    ck_assert_msg(e_logits <= 1e-5, "%s: logits differ from the fixture's by %.3e", v->name,
                  e_logits);
    et_load_adapted(&m, v->env, v->cfg, fx_dir, &vt, &st);
    float *from_fx = et_logits(&m, &b);
    const double e_load = et_rel_err(from_fx, fx_logits, n);
    ck_assert_msg(e_load <= 1e-5, "%s: the fixture adapter's logits differ by %.3e", v->name,
                  e_load);
    printf("  %s: %d tensors saved and reloaded (logits equal); against the fixture: tensors "
           "%.2e, logits %.2e, fixture adapter's logits %.2e; moved %.2e from PEFT's start\n",
           v->name, count, e_fx, e_logits, e_load, e_start);
    free(from_fx);
    qft_llama_free(&m);
    vt->close(st);
    free(fx_logits), free(fx_ids);
    qft_st_close(&fl);
    free(logits);
    et_free_batch(&b);
}

START_TEST(test_export_lora) { check_variant(&k_lora); }
END_TEST
START_TEST(test_export_dora) { check_variant(&k_dora); }
END_TEST

int main(void) {
    Suite *s = suite_create("export_peft");
    TCase *tc = tcase_create("peft");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_export_lora);
    tcase_add_test(tc, test_export_dora);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    et_cleanup();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
