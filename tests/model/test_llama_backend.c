/* The model on another backend's memory with its frozen dense weights kept there as bf16
 * (qft_llama_to_backend with frozen_bf16), on the memory-guarded cpu_guard backend: every
 * frozen linear, the untied head and a frozen embedding become bf16 layouts with no fp32 copy there, the
 * backend's flat buffer shrinks to the trainable prefix plus the frozen fp32 tensors, and
 * for weights that are bf16 to begin with (as Hugging Face checkpoints are) the loss and
 * the gradients equal the cpu backend's fp32 run. */
#include "cpu_ops.h"
#include "llama.h"
#include "qft_base.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* block linears and the head frozen, and the embedding when *ctx is set; the rest (the
 * norms) trains */
static int role_frozen(void *ctx, const char *name, int is_linear) {
    const int embed = *(const int *)ctx && strcmp(name, "model.embed_tokens.weight") == 0;
    return is_linear || embed || strcmp(name, "lm_head.weight") == 0 ? QFT_ROLE_FROZEN
                                                                      : QFT_ROLE_TRAIN;
}

static void build(qft_llama_model *m, int freeze_embed) {
    qft_err err = {0};
    qft_llama_config c;
    qft_llama_config_defaults(&c);
    c.vocab_size = 101, c.hidden_size = 48, c.intermediate_size = 112;
    c.num_hidden_layers = 2, c.num_attention_heads = 4, c.num_key_value_heads = 2;
    c.head_dim = 12, c.max_position_embeddings = 64, c.tie_word_embeddings = 0;
    qft_llama_build b = {.role = role_frozen, .ctx = &freeze_embed};
    ck_assert_msg(qft_llama_alloc_build(m, &c, &b, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_init_random(m, 17, &err) == 0, "%s", err.msg);
    /* frozen weights as a bf16 checkpoint would hold them */
    for (int i = 0; i < m->n_entries; i++) {
        const qft_param_entry *e = &m->entries[i];
        if (e->role != QFT_ROLE_FROZEN) continue;
        float *p = m->params + e->offset; // (numel)
        for (size_t j = 0; j < e->numel; j++) p[j] = qft_bf16_to_f32(qft_f32_to_bf16(p[j]));
    }
    ck_assert_msg(qft_llama_alloc_grads(m, &err) == 0, "%s", err.msg);
}

START_TEST(test_frozen_bf16_on_backend) {
    qft_err err = {0};
    qft_llama_model a, b;
    const int freeze_embed = _i;
    build(&a, freeze_embed);
    build(&b, freeze_embed);
    ck_assert_msg(qft_llama_to_backend(&b, qft_cpu_guard_ops(), 1, &err) == 0, "%s", err.msg);

    /* what went where: bf16 layouts for the 2-D frozen tensors, fp32 for the rest */
    size_t want_dev = b.n_trainable, n_bf16 = 0;
    for (int i = 0; i < b.n_entries; i++) {
        const qft_param_entry *e = &b.entries[i];
        if (e->role == QFT_ROLE_FROZEN && e->ndim == 2) {
            ck_assert_msg(e->ql != NULL, "%s has no bf16 copy", e->name);
            ck_assert_int_eq(e->ql->format, QFT_QFMT_BF16);
            ck_assert_uint_eq(e->ql->bytes[QFT_QL_BF16_VALUES], e->numel * 2);
            n_bf16++;
        } else {
            ck_assert_msg(e->ql == NULL, "%s: unexpected layout", e->name);
            if (e->role == QFT_ROLE_FROZEN) want_dev += (e->numel + 15) / 16 * 16;
        }
    }
    /* 7 linears a block, the head, and the embedding when it is frozen */
    ck_assert_uint_eq(n_bf16, 2 * 7 + 1 + (size_t)freeze_embed);
    if (freeze_embed) ck_assert_ptr_null(b.p.embed);
    ck_assert_uint_eq(b.n_dev_params, want_dev);
    ck_assert_uint_lt(b.n_dev_params, b.n_params / 2);
    ck_assert_ptr_null(b.p.lm_head);
    ck_assert_ptr_null(b.p.layers[1].wdown);

    /* one forward and backward each: the same loss and gradients */
    int32_t ids[24], labels[24];
    uint8_t mask[24];
    qft_rng r;
    qft_rng_seed(&r, 5);
    for (int i = 0; i < 24; i++) {
        ids[i] = (int32_t)(qft_rng_next(&r) % 101);
        labels[i] = i % 5 == 2 ? -100 : ids[i];
        mask[i] = i < 21;
        if (!mask[i]) labels[i] = -100;
    }
    qft_batch batch = {2, 12, ids, labels, mask};
    float la = NAN, lb = NAN;
    ck_assert_msg(qft_llama_forward(&a, &batch, &la, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_backward(&a, &batch, 1.0f, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_forward(&b, &batch, &lb, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_backward(&b, &batch, 1.0f, &err) == 0, "%s", err.msg);
    qft_llama_grads_to_host(&b);
    ck_assert_msg(fabsf(la - lb) <= 1e-6f * fabsf(la), "loss %.9g (cpu) vs %.9g (bf16 there)",
                  (double)la, (double)lb);
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < a.n_trainable; i++) {
        const double d = fabs((double)a.grads[i] - b.grads[i]);
        worst = d > worst ? d : worst;
        gmax = fabs((double)a.grads[i]) > gmax ? fabs((double)a.grads[i]) : gmax;
    }
    ck_assert_msg(gmax > 0, "all gradients are zero");
    ck_assert_uint_gt(a.n_trainable, 0);
    ck_assert_msg(worst <= 1e-6 * gmax, "gradients differ by %.3g (largest %.3g)", worst, gmax);
    printf("frozen bf16 on cpu_guard (embedding %s): %zu of %zu floats there in fp32, loss %.9g vs %.9g, "
           "gradients within %.3g of %.3g\n",
           freeze_embed ? "frozen, bf16" : "trains", b.n_dev_params, b.n_params, (double)la, (double)lb, worst, gmax);
    qft_llama_free(&a);
    qft_llama_free(&b);
}
END_TEST

/* The frozen embedding left in host memory (m->embed_on_host): no copy of it on the
 * backend, fp32 or bf16, and forward's rows gathered on the host give the same loss and
 * gradients, bit for bit, as the backend's own lookup; with frozen_bf16 (_i = 1, 3) the
 * rows are rounded as the bf16 copy would have held them (the table is made not
 * bf16-exact first, so the rounding shows), and with the residual stream kept as bf16 too
 * (_i = 3) they go up as bf16 into block 0's kept input. A trainable embedding stays on
 * the backend. */
START_TEST(test_embedding_on_host) {
    qft_err err = {0};
    const int bf16 = _i & 1, resid = _i >> 1;
    qft_llama_model a, b, t;
    build(&a, 1);
    build(&b, 1);
    build(&t, 0);
    for (int k = 0; k < 2; k++) {
        qft_llama_model *m = k ? &b : &a;
        float *table = m->p.embed; // (V, C) on the host
        for (size_t j = 0; j < (size_t)m->cfg.vocab_size * m->cfg.hidden_size; j++)
            table[j] *= 1.0f + 1e-3f * (float)(j % 7);
    }
    b.embed_on_host = 1, t.embed_on_host = 1;
    a.residual_bf16 = b.residual_bf16 = resid;
    const size_t held0 = qft_cpu_guard_mem_held();
    ck_assert_msg(qft_llama_to_backend(&a, qft_cpu_guard_ops(), bf16, &err) == 0, "%s", err.msg);
    const size_t held_a = qft_cpu_guard_mem_held() - held0;
    ck_assert_msg(qft_llama_to_backend(&b, qft_cpu_guard_ops(), bf16, &err) == 0, "%s", err.msg);
    const size_t held_b = qft_cpu_guard_mem_held() - held0 - held_a;
    ck_assert_uint_ge(qft_cpu_guard_mem_peak(), held0 + held_a + held_b);
    ck_assert_msg(qft_llama_to_backend(&t, qft_cpu_guard_ops(), bf16, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(b.embed_on_host, 1);
    ck_assert_int_eq(b.embed_host_bf16, bf16);
    ck_assert_int_eq(t.embed_on_host, 0); /* it trains: its gradient is the backend's */
    ck_assert_ptr_nonnull(t.p.embed);
    ck_assert_ptr_null(b.p.embed);
    const size_t VC = (size_t)b.cfg.vocab_size * b.cfg.hidden_size;
    for (int i = 0; i < b.n_entries; i++)
        if (b.entries[i].layer == -1 && b.entries[i].field == 0) {
            ck_assert_ptr_null(b.entries[i].ql);
            ck_assert_uint_eq(b.entries[i].numel, VC);
        }
    /* what the backend no longer holds: the table's fp32 floats, or its bf16 layout */
    if (!bf16) ck_assert_uint_eq(a.n_dev_params - b.n_dev_params, (VC + 15) / 16 * 16);
    else ck_assert_uint_eq(a.n_dev_params, b.n_dev_params);
    ck_assert_uint_eq(held_a - held_b, bf16 ? VC * 2 : (VC + 15) / 16 * 16 * sizeof(float));

    int32_t ids[24], labels[24];
    for (int i = 0; i < 24; i++) ids[i] = (int32_t)((i * 37 + 11) % 101), labels[i] = ids[i];
    qft_batch batch = {2, 12, ids, labels, NULL};
    float la = NAN, lb = NAN;
    ck_assert_msg(qft_llama_forward(&a, &batch, &la, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_backward(&a, &batch, 1.0f, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_forward(&b, &batch, &lb, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_backward(&b, &batch, 1.0f, &err) == 0, "%s", err.msg);
    qft_llama_grads_to_host(&a);
    qft_llama_grads_to_host(&b);
    ck_assert_msg(la == lb, "loss %.9g (table on the backend) vs %.9g (on the host)", (double)la,
                  (double)lb);
    ck_assert_uint_gt(a.n_trainable, 0);
    ck_assert_int_eq(memcmp(a.grads, b.grads, a.n_trainable * sizeof(float)), 0);
    /* the rounding matters here: a run without it differs (with the residual stream kept
     * as bf16, block 0's input is rounded anyway) */
    if (bf16 && !resid) {
        float lc = NAN;
        b.embed_host_bf16 = 0;
        ck_assert_msg(qft_llama_forward(&b, &batch, &lc, &err) == 0, "%s", err.msg);
        ck_assert_msg(lc != lb, "unrounded rows gave the same loss %.9g", (double)lc);
    }
    printf("embedding on the host (%s there otherwise%s): loss %.9g both ways\n",
           bf16 ? "bf16" : "fp32", resid ? ", residual stream bf16" : "", (double)lb);
    /* a model the cpu backend runs itself reads its table in place: the flag changes
     * nothing there, not even the activations' bytes */
    qft_llama_model h, h2;
    build(&h, 1);
    build(&h2, 1);
    h.embed_on_host = 1;
    float lh = NAN, lh2 = NAN;
    ck_assert_msg(qft_llama_forward(&h, &batch, &lh, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_forward(&h2, &batch, &lh2, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(qft_llama_acts_bytes(&h), qft_llama_acts_bytes(&h2));
    ck_assert(lh == lh2);
    qft_llama_free(&h);
    qft_llama_free(&h2);
    qft_llama_free(&a);
    qft_llama_free(&b);
    qft_llama_free(&t);
}
END_TEST

/* A backend that does not decode bf16 weights is refused with a message, and the model
 * is left on the host. */
static int no_formats(int format) {
    (void)format;
    return 0;
}

START_TEST(test_frozen_bf16_refused) {
    qft_err err = {0};
    qft_llama_model m;
    build(&m, 0);
    qft_ops ops = *qft_cpu_guard_ops();
    ops.name = "without bf16";
    ops.has_qformat = no_formats;
    ck_assert_int_ne(qft_llama_to_backend(&m, &ops, 1, &err), 0);
    ck_assert_msg(strstr(err.msg, "does not decode bf16 weights") != NULL, "%s", err.msg);
    ck_assert_ptr_null(m.dev_params);
    qft_llama_free(&m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model_backend");
    TCase *tc = tcase_create("model_backend");
    tcase_add_loop_test(tc, test_frozen_bf16_on_backend, 0, 2);
    tcase_add_test(tc, test_frozen_bf16_refused);
    tcase_add_loop_test(tc, test_embedding_on_host, 0, 4);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
