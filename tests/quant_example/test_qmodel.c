/* A model whose block linears are packed by a quantizer plugin (the example int8 one,
 * loaded with dlopen as qft loads any plugin): forward and backward must equal those of
 * the dense model built from the dequantized weights, only the dense tensors train, and
 * a packed checkpoint saved by qft loads back without quantizing again. */
#include "cpu_ops.h"
#include "hf_model.h"
#include "llama.h"
#include "optim.h"
#include "registry.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const qft_quantizer_vtable *g_vt;
static void *g_state;

static int role_q(void *ctx, const char *name, int is_linear) {
    (void)ctx, (void)name;
    return is_linear ? QFT_ROLE_QUANTIZED : QFT_ROLE_TRAIN;
}

static qft_llama_config tiny_config(void) {
    qft_llama_config c;
    qft_llama_config_defaults(&c);
    c.vocab_size = 97, c.hidden_size = 48, c.intermediate_size = 112;
    c.num_hidden_layers = 2, c.num_attention_heads = 4, c.num_key_value_heads = 2;
    c.head_dim = 12, c.max_position_embeddings = 64;
    return c;
}

static void make_batch(qft_batch *b, int32_t *ids, int32_t *labels, uint8_t *mask) {
    qft_rng r;
    qft_rng_seed(&r, 99);
    b->B = 2, b->T = 10, b->ids = ids, b->labels = labels, b->mask = mask;
    for (int i = 0; i < 20; i++) {
        ids[i] = (int32_t)(qft_rng_next(&r) % 97);
        labels[i] = i % 7 == 3 ? -100 : ids[i];
        mask[i] = !(i >= 17); /* the second row ends in padding */
        if (!mask[i]) labels[i] = -100;
    }
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) d += (a[i] - b[i]) * (double)(a[i] - b[i]), s += (double)b[i] * b[i];
    return sqrt(d / (s > 0 ? s : 1));
}

START_TEST(test_packed_equals_dense_of_dequantized) {
    qft_err err = {0};
    qft_llama_config c = tiny_config();
    qft_llama_build build = {.role = role_q, .qvt = g_vt, .qstate = g_state};
    qft_llama_model q, d;
    ck_assert_msg(qft_llama_alloc_build(&q, &c, &build, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_init_random(&q, 5, &err) == 0, "%s", err.msg);
    /* only embeddings, norms and the head are in the flat buffer, all trainable */
    ck_assert_uint_eq(q.n_trainable, q.n_params);
    ck_assert_uint_eq(q.n_params, 97 * 48 * 2 + 48 * 5);
    ck_assert_uint_gt(q.n_quantized, 0);
    ck_assert_ptr_null(q.p.layers[0].wq);
    /* the dense twin: every weight dequantized */
    ck_assert(qft_llama_alloc(&d, &c, &err) == 0);
    for (int i = 0; i < q.n_entries; i++) {
        float *w = malloc(q.entries[i].numel * sizeof(float));
        ck_assert(qft_llama_get_dense(&q, &q.entries[i], w, &err) == 0);
        ck_assert(qft_llama_set_dense(&d, &d.entries[i], w, &err) == 0);
        free(w);
    }
    ck_assert(qft_llama_alloc_grads(&q, &err) == 0 && qft_llama_alloc_grads(&d, &err) == 0);
    int32_t ids[20], labels[20];
    uint8_t mask[20];
    qft_batch b;
    make_batch(&b, ids, labels, mask);
    float lq, ld;
    ck_assert_msg(qft_llama_forward(&q, &b, &lq, &err) == 0, "%s", err.msg);
    ck_assert(qft_llama_forward(&d, &b, &ld, &err) == 0);
    /* fp32 with tile-by-tile GEMMs in another order: agreement to rounding */
    ck_assert_msg(fabsf(lq - ld) <= 1e-5f * fabsf(ld), "loss %g vs %g", lq, ld);
    ck_assert_double_lt(rel_l2(qft_llama_logits(&q), qft_llama_logits(&d), 20 * 97), 1e-5);
    ck_assert(qft_llama_backward(&q, &b, 1.0f, &err) == 0);
    ck_assert(qft_llama_backward(&d, &b, 1.0f, &err) == 0);
    /* the gradients of the tensors that train in both */
    const char *names[] = {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                           "model.layers.1.post_attention_layernorm.weight", "model.norm.weight",
                           "lm_head.weight"};
    for (size_t k = 0; k < 5; k++) {
        const qft_param_entry *eq = qft_llama_find_entry(&q, names[k]);
        const qft_param_entry *ed = qft_llama_find_entry(&d, names[k]);
        double e = rel_l2(q.grads + eq->offset, d.grads + ed->offset, eq->numel);
        ck_assert_msg(e < 1e-4, "%s: gradient rel L2 %g", names[k], e);
    }
    /* a step moves only trainable tensors; the packed weights stay bit-identical */
    float before[48];
    float *w0 = malloc(q.entries[2].numel * sizeof(float));
    ck_assert(qft_llama_get_dense(&q, &q.entries[2], w0, &err) == 0);
    memcpy(before, q.p.norm, sizeof before);
    qft_optim o;
    qft_optim_config oc = {.kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f};
    ck_assert(qft_optim_init(&o, &oc, q.n_trainable, &err) == 0);
    qft_optim_step(&o, q.params, q.grads, 1e-2f);
    ck_assert(memcmp(before, q.p.norm, sizeof before) != 0);
    float *w1 = malloc(q.entries[2].numel * sizeof(float));
    ck_assert(qft_llama_get_dense(&q, &q.entries[2], w1, &err) == 0);
    ck_assert(memcmp(w0, w1, q.entries[2].numel * sizeof(float)) == 0);
    free(w0), free(w1);
    qft_optim_free(&o);
    qft_llama_free(&q);
    qft_llama_free(&d);
}
END_TEST

START_TEST(test_packed_checkpoint_round_trip) {
    qft_err err = {0};
    qft_llama_config c = tiny_config();
    qft_llama_build build = {.role = role_q, .qvt = g_vt, .qstate = g_state};
    qft_llama_model q, r, dense;
    ck_assert(qft_llama_alloc_build(&q, &c, &build, &err) == 0);
    ck_assert(qft_llama_init_random(&q, 11, &err) == 0);
    char dir[] = "/tmp/qft-qmodel-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char packed[4096], plain[4096];
    snprintf(packed, sizeof packed, "%s/packed", dir);
    snprintf(plain, sizeof plain, "%s/plain", dir);
    ck_assert_msg(qft_hf_model_save_ex(packed, &q, QFT_DT_F32, 1, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_hf_model_save_ex(plain, &q, QFT_DT_F32, 0, &err) == 0, "%s", err.msg);
    /* the packed folder loads without quantizing again: same codes, same values */
    ck_assert_msg(qft_hf_model_load_build(packed, &r, &build, &err) == 0, "%s", err.msg);
    for (int i = 0; i < q.n_entries; i++) {
        size_t n = q.entries[i].numel;
        float *a = malloc(n * sizeof(float)), *b2 = malloc(n * sizeof(float));
        ck_assert(qft_llama_get_dense(&q, &q.entries[i], a, &err) == 0);
        ck_assert(qft_llama_get_dense(&r, &r.entries[i], b2, &err) == 0);
        ck_assert_msg(memcmp(a, b2, n * sizeof(float)) == 0, "%s differs", q.entries[i].name);
        free(a), free(b2);
    }
    /* the dequantized folder is a plain dense checkpoint */
    ck_assert_msg(qft_hf_model_load(plain, &dense, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(dense.n_quantized, 0);
    /* and a packed folder without the quantizer is refused, naming a tensor */
    qft_llama_model bad;
    ck_assert_int_ne(qft_hf_model_load(packed, &bad, &err), 0);
    ck_assert_msg(strstr(err.msg, "weight_scale") || strstr(err.msg, "dtype I8"), "%s", err.msg);
    qft_llama_free(&q), qft_llama_free(&r), qft_llama_free(&dense);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_streaming_load_peak) {
    /* Loading a dense checkpoint with quantization holds the packed model, the dense
     * tensors that stay dense, and one dense linear at a time: never the whole model. */
    qft_err err = {0};
    qft_llama_config c = tiny_config();
    c.hidden_size = 128, c.intermediate_size = 384, c.head_dim = 32, c.num_hidden_layers = 3;
    qft_llama_model d, q;
    ck_assert(qft_llama_alloc(&d, &c, &err) == 0);
    ck_assert(qft_llama_init_random(&d, 3, &err) == 0);
    char dir[] = "/tmp/qft-qpeak-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(qft_hf_model_save(dir, &d, QFT_DT_F32, &err) == 0, "%s", err.msg);
    const size_t dense_bytes = d.n_params * sizeof(float);
    qft_llama_free(&d);

    qft_llama_build build = {.role = role_q, .qvt = g_vt, .qstate = g_state};
    const size_t base = qft_mem_current();
    qft_mem_reset_peak();
    ck_assert_msg(qft_hf_model_load_build(dir, &q, &build, &err) == 0, "%s", err.msg);
    const size_t peak = qft_mem_peak() - base;
    size_t largest = 0;
    for (int i = 0; i < q.n_entries; i++)
        if (q.entries[i].role == QFT_ROLE_QUANTIZED && q.entries[i].numel > largest)
            largest = q.entries[i].numel;
    const size_t expected = qft_llama_weight_bytes(&q) + largest * sizeof(float);
    printf("load peak %zu bytes: packed model %zu + largest dense linear %zu = %zu; "
           "the dense model is %zu\n", peak, qft_llama_weight_bytes(&q), largest * sizeof(float),
           expected, dense_bytes);
    ck_assert_uint_le(peak, expected);
    ck_assert_uint_ge(peak, qft_llama_weight_bytes(&q)); /* the accounting sees the plugin */
    ck_assert_uint_lt(peak, dense_bytes);
    qft_llama_free(&q);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A quantizer without the `layout` entry (this example) keeps its weights on the cpu
 * backend: moving the model elsewhere is refused with a message naming why, and the model
 * stays usable where it was. */
START_TEST(test_no_layout_refused_on_backend) {
    qft_err err = {0};
    qft_llama_config c = tiny_config();
    qft_llama_build build = {.role = role_q, .qvt = g_vt, .qstate = g_state};
    qft_llama_model q;
    ck_assert_msg(qft_llama_alloc_build(&q, &c, &build, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_init_random(&q, 5, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_alloc_grads(&q, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(g_vt->layout);
    ck_assert_int_ne(qft_llama_to_backend(&q, qft_cpu_guard_ops(), 0, &err), 0);
    ck_assert_msg(strstr(err.msg, "does not describe its packed weights") != NULL, "%s",
                  err.msg);
    ck_assert_ptr_null(q.dev_params);
    ck_assert_ptr_null(q.ops);
    qft_llama_free(&q);
}
END_TEST

int main(void) {
    const char *so = getenv("QFT_EXAMPLE_PLUGIN");
    qft_registry reg = {0};
    qft_err err = {0};
    if (!so || qft_registry_add_file(&reg, so, &err)) {
        fprintf(stderr, "cannot load the example plugin: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    const qft_plugin *p = qft_registry_find(&reg, QFT_KIND_QUANTIZER, "int8_rowwise", &err);
    if (!p) return EXIT_FAILURE;
    g_vt = p->desc->vtable;
    if (g_vt->configure(qft_registry_services(), NULL, &g_state, &err)) return EXIT_FAILURE;
    Suite *s = suite_create("quant_model");
    TCase *tc = tcase_create("quant_model");
    tcase_add_test(tc, test_packed_equals_dense_of_dequantized);
    tcase_add_test(tc, test_packed_checkpoint_round_trip);
    tcase_add_test(tc, test_streaming_load_peak);
    tcase_add_test(tc, test_no_layout_refused_on_backend);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    g_vt->close(g_state);
    qft_registry_free(&reg);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
