/* `qft merge` against the adapted model it folds: the base tests/fixtures/llama/untied
 * with a PEFT-saved adapter (tests/fixtures/adapters/llama_lora, llama_dora) gives logits
 * on a fixed batch; `qft merge --dtype f32` writes a dense folder, which loaded as a plain
 * model (no adapter, no plugin) must give the same logits within 1e-5 relative to their
 * largest magnitude (fp32 both ways; only the order of the sums differs: W x + s B (A x)
 * against (W + s B A) x). A bf16 merge must hold the f32 merge's weights rounded to bf16
 * (round to nearest even, as torch's .to(torch.bfloat16)), bit for bit; its logits are
 * only reported (this random model, init range 0.2, amplifies bf16's 2^-9 rounding to a
 * few percent of the largest logit). tests/reference/peft_roundtrip.py
 * compares the merged folder with PEFT's merge_and_unload in transformers. */
#include "export_test_util.h"

#include "hf_model.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *k_lora_cfg =
    "adapter = { plugin = \"lora\"; rank = 4; alpha = 8; target_modules = \"all\"; };";
static const char *k_dora_cfg =
    "adapter = { plugin = \"dora\"; rank = 4; alpha = 8; rslora = true; "
    "target_modules = \"all-linear\"; };";

/* merged_<variant>_bf16 holds merged_<variant>_f32 rounded to bf16, tensor for tensor. */
static void check_bf16_rounding(const char *variant) {
    qft_err err = {0};
    char p32[8192], p16[8192];
    snprintf(p32, sizeof p32, "%s/merged_%s_f32/model.safetensors", et_tmp(), variant);
    snprintf(p16, sizeof p16, "%s/merged_%s_bf16/model.safetensors", et_tmp(), variant);
    qft_st_file a, b;
    ck_assert_msg(qft_st_open(p32, &a, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_st_open(p16, &b, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(a.n_entries, b.n_entries);
    size_t total = 0;
    for (int i = 0; i < a.n_entries; i++) {
        const qft_st_entry *e32 = &a.entries[i], *e16 = qft_st_find(&b, e32->name);
        ck_assert_msg(e16 != NULL, "%s: %s missing in the bf16 merge", variant, e32->name);
        ck_assert_int_eq(e32->t.dtype, QFT_DT_F32);
        ck_assert_int_eq(e16->t.dtype, QFT_DT_BF16);
        const size_t n = qft_st_numel(&e32->t); /* (out, in) or (C) */
        ck_assert_uint_eq(qft_st_numel(&e16->t), n);
        for (size_t j = 0; j < n; j++) {
            float f;
            uint16_t h;
            memcpy(&f, (const char *)e32->t.data + 4 * j, 4);
            memcpy(&h, (const char *)e16->t.data + 2 * j, 2);
            ck_assert_msg(h == qft_f32_to_bf16(f), "%s: %s[%zu] = 0x%04x, bf16(%.9g) = 0x%04x",
                          variant, e32->name, j, h, (double)f, qft_f32_to_bf16(f));
        }
        total += n;
    }
    printf("  %s merged (bf16): %zu weights = the f32 merge rounded to bf16, bit for bit\n",
           variant, total);
    qft_st_close(&a), qft_st_close(&b);
}

static void check_merge(const char *variant, const char *env, const char *cfg) {
    char adapter[4200], out_dir[8192], cmd[16384];
    snprintf(adapter, sizeof adapter, "%s/tests/fixtures/adapters/%s", et_root(), variant);
    qft_llama_model m;
    const qft_adapter_vtable *vt;
    void *st;
    et_load_adapted(&m, env, cfg, adapter, &vt, &st);
    qft_batch b;
    et_random_batch(&b, 2, 16, m.cfg.vocab_size, 0x5eed);
    float *ref = et_logits(&m, &b); /* (B, T, V) */
    const size_t n = (size_t)b.B * b.T * m.cfg.vocab_size; /* (B, T, V) */
    const int n_adapted = m.n_adapted;
    qft_llama_free(&m);
    vt->close(st);

    const char *dtypes[] = {"f32", "bf16"};
    const double tol[] = {1e-5, 1.0}; /* bf16: only a bound against garbage (see above) */
    for (int k = 0; k < 2; k++) {
        snprintf(out_dir, sizeof out_dir, "%s/merged_%s_%s", et_tmp(), variant, dtypes[k]);
        snprintf(cmd, sizeof cmd, "'%s' merge --base '%s/tests/fixtures/llama/untied' "
                                  "--adapter '%s' -o '%s' --dtype %s",
                 getenv("QFT_BIN"), et_root(), adapter, out_dir, dtypes[k]);
        char *out;
        int code = et_run(cmd, &out);
        ck_assert_msg(code == 0, "%s failed (%d): %s", cmd, code, out);
        char msg[64];
        snprintf(msg, sizeof msg, "%d adapted linears", n_adapted);
        ck_assert_msg(strstr(out, msg), "expected \"%s\" in: %s", msg, out);
        free(out);

        /* a plain dense checkpoint: loads with no build, every tensor a model tensor */
        qft_err err = {0};
        qft_llama_model d;
        ck_assert_msg(qft_hf_model_load(out_dir, &d, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(d.n_adapted, 0);
        float *got = et_logits(&d, &b);
        const double e = et_rel_err(got, ref, n);
        printf("  %s merged (%s): logits rel err %.2e against the adapted model%s\n",
               variant, dtypes[k], e, k == 0 ? " (tol 1e-5)" : " (reported, not checked)");
        if (k == 1) check_bf16_rounding(variant);
        ck_assert_double_le(e, tol[k]);
        /* the merge changed the weights: the base alone is far from the adapted model */
        if (k == 0) {
            qft_llama_model base;
            char base_dir[4200];
            snprintf(base_dir, sizeof base_dir, "%s/tests/fixtures/llama/untied", et_root());
            ck_assert_msg(qft_hf_model_load(base_dir, &base, &err) == 0, "%s", err.msg);
            float *plain = et_logits(&base, &b);
            const double eb = et_rel_err(plain, ref, n);
            printf("  %s: base without the adapter differs by %.2e\n", variant, eb);
            ck_assert_double_ge(eb, 1e-3);
            free(plain);
            qft_llama_free(&base);
        }
        snprintf(cmd, sizeof cmd, "%s/config.json", out_dir);
        json_t *c = json_load_file(cmd, 0, NULL);
        ck_assert_ptr_nonnull(c);
        ck_assert_str_eq(json_string_value(json_object_get(c, "torch_dtype"))
                             ? json_string_value(json_object_get(c, "torch_dtype"))
                             : json_string_value(json_object_get(c, "dtype")),
                         k == 0 ? "float32" : "bfloat16");
        json_decref(c);
        free(got);
        qft_llama_free(&d);
    }
    free(ref);
    et_free_batch(&b);
}

START_TEST(test_merge_lora) { check_merge("llama_lora", "QFT_LORA_PLUGIN", k_lora_cfg); }
END_TEST
START_TEST(test_merge_dora) { check_merge("llama_dora", "QFT_DORA_PLUGIN", k_dora_cfg); }
END_TEST

int main(void) {
    if (!getenv("QFT_BIN")) {
        fprintf(stderr, "QFT_BIN is not set: run this through meson\n");
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("export_merge");
    TCase *tc = tcase_create("merge");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_merge_lora);
    tcase_add_test(tc, test_merge_dora);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    et_cleanup();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
