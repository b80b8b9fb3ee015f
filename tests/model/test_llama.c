/* The Llama forward and backward against transformers (fixtures written by
 * tests/reference/llama_reference.py: fp32, eager attention, a right-padded batch with
 * ignored labels), and the properties the training loop relies on: recomputation is
 * bit-identical, gradients accumulate, loss_scale scales, AdamW follows torch's path.
 *
 * Measures (both fp32 CPU vs fp32 torch, so only summation order differs):
 *   logits: max |ours - ref| / max |ref| over the whole (B, T, V) tensor < 1e-5;
 *   loss:   |ours - ref| / |ref| < 1e-5;
 *   each parameter gradient: relative L2, ||ours - ref||_2 / ||ref||_2 < 1e-4;
 *   AdamW losses after k steps: |ours - ref| / |ref| < 1e-5 for each k. */
#include "hf_model.h"
#include "llama.h"
#include "optim.h"
#include "safetensors.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *variants[] = {"untied", "tied_llama3"};

typedef struct fixture {
    qft_llama_model m;
    qft_st_file exp;
    qft_batch batch;
    int32_t *ids, *labels;
    uint8_t *mask;
} fixture;

static void fixture_dir(char *buf, size_t n, const char *variant) {
    const char *root = getenv("QFT_SOURCE_ROOT");
    snprintf(buf, n, "%s/tests/fixtures/llama/%s", root ? root : ".", variant);
}

static const qft_st_entry *need(const qft_st_file *f, const char *name) {
    const qft_st_entry *e = qft_st_find(f, name);
    ck_assert_msg(e != NULL, "%s: no tensor %s", f->path, name);
    return e;
}

static size_t numel(const qft_st_entry *e) {
    size_t n = 1;
    for (int d = 0; d < e->t.ndim; d++) n *= (size_t)e->t.shape[d];
    return n;
}

static void fixture_open(fixture *fx, const char *variant, int recompute) {
    char dir[4096], path[4200];
    qft_err err = {0};
    memset(fx, 0, sizeof *fx);
    fixture_dir(dir, sizeof dir, variant);
    ck_assert_msg(qft_hf_model_load(dir, &fx->m, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_alloc_grads(&fx->m, &err) == 0, "%s", err.msg);
    fx->m.recompute = recompute;
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    ck_assert_msg(qft_st_open(path, &fx->exp, &err) == 0, "%s", err.msg);
    const qft_st_entry *ids = need(&fx->exp, "ids"), *lab = need(&fx->exp, "labels");
    const qft_st_entry *msk = need(&fx->exp, "mask");
    ck_assert_int_eq(ids->t.dtype, QFT_DT_I32);
    ck_assert_int_eq(ids->t.ndim, 2);
    int B = (int)ids->t.shape[0], T = (int)ids->t.shape[1];
    fx->ids = malloc((size_t)B * T * sizeof *fx->ids);
    fx->labels = malloc((size_t)B * T * sizeof *fx->labels);
    fx->mask = malloc((size_t)B * T);
    ck_assert(fx->ids && fx->labels && fx->mask);
    memcpy(fx->ids, ids->t.data, (size_t)B * T * sizeof(int32_t));
    memcpy(fx->labels, lab->t.data, (size_t)B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++) fx->mask[i] = ((const int32_t *)msk->t.data)[i] != 0;
    fx->batch = (qft_batch){B, T, fx->ids, fx->labels, fx->mask};
}

static void fixture_close(fixture *fx) {
    qft_llama_free(&fx->m);
    qft_st_close(&fx->exp);
    free(fx->ids), free(fx->labels), free(fx->mask);
}

static float run_step(fixture *fx, float scale) {
    qft_err err = {0};
    float loss = NAN;
    ck_assert_msg(qft_llama_forward(&fx->m, &fx->batch, &loss, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_backward(&fx->m, &fx->batch, scale, &err) == 0, "%s", err.msg);
    return loss;
}

START_TEST(test_parity_with_transformers) {
    const char *variant = variants[_i];
    fixture fx;
    fixture_open(&fx, variant, 0);
    qft_err err = {0};
    float loss = NAN;
    ck_assert_msg(qft_llama_forward(&fx.m, &fx.batch, &loss, &err) == 0, "%s", err.msg);
    const int V = fx.m.cfg.vocab_size, N = fx.batch.B * fx.batch.T;

    const qft_st_entry *lg = need(&fx.exp, "logits");
    ck_assert_uint_eq(numel(lg), (size_t)N * V);
    const float *ref = lg->t.data, *got = qft_llama_logits(&fx.m);
    ck_assert_ptr_nonnull(got);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)N * V; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= num)) num = e;
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    ck_assert_msg(num / den < 1e-5, "%s: logits max err / max |ref| = %g", variant, num / den);
    const float rloss = ((const float *)need(&fx.exp, "loss")->t.data)[0];
    ck_assert_msg(fabs(loss - rloss) < 1e-5 * fabs(rloss), "%s: loss %.8f vs transformers %.8f",
                  variant, loss, rloss);

    ck_assert_msg(qft_llama_backward(&fx.m, &fx.batch, 1.0f, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(qft_llama_logits(&fx.m)); /* consumed by backward */
    int n_grads = 0;
    for (int k = 0; k < fx.exp.n_entries; k++) n_grads += strncmp(fx.exp.entries[k].name, "grad.", 5) == 0;
    ck_assert_int_eq(n_grads, fx.m.n_entries); /* tied: neither side has lm_head.weight */
    double worst = 0;
    for (int i = 0; i < fx.m.n_entries; i++) {
        const qft_param_entry *pe = &fx.m.entries[i];
        char name[128];
        snprintf(name, sizeof name, "grad.%s", pe->name);
        const qft_st_entry *ge = need(&fx.exp, name);
        ck_assert_uint_eq(numel(ge), pe->numel);
        const float *r = ge->t.data, *g = fx.m.grads + pe->offset;
        double d2 = 0, r2 = 0;
        for (size_t j = 0; j < pe->numel; j++) {
            d2 += ((double)g[j] - r[j]) * ((double)g[j] - r[j]);
            r2 += (double)r[j] * r[j];
        }
        ck_assert_msg(r2 > 0, "%s: reference gradient is zero, the test would prove nothing", name);
        double rel = sqrt(d2 / r2);
        if (rel > worst) worst = rel;
        ck_assert_msg(rel < 1e-4, "%s: %s relative L2 error %g", variant, name, rel);
    }
    fprintf(stderr, "%s: loss %.7f (ref %.7f), logits rel max err %.2e, worst grad rel L2 %.2e\n",
            variant, loss, rloss, num / den, worst);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_recompute_bit_identical) {
    const char *variant = variants[_i];
    fixture a, b;
    fixture_open(&a, variant, 0);
    fixture_open(&b, variant, 1);
    qft_err err = {0};
    float la, lb;
    ck_assert_msg(qft_llama_forward(&a.m, &a.batch, &la, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_llama_forward(&b.m, &b.batch, &lb, &err) == 0, "%s", err.msg);
    ck_assert_mem_eq(&la, &lb, sizeof la);
    size_t nl = (size_t)a.batch.B * a.batch.T * a.m.cfg.vocab_size;
    ck_assert_mem_eq(qft_llama_logits(&a.m), qft_llama_logits(&b.m), nl * sizeof(float));
    ck_assert_msg(qft_llama_backward(&a.m, &a.batch, 1.0f, &err) == 0, "%s", err.msg);
    b.m.recompute = 0; /* too late to matter: backward follows its forward's mode */
    ck_assert_msg(qft_llama_backward(&b.m, &b.batch, 1.0f, &err) == 0, "%s", err.msg);
    ck_assert_mem_eq(a.m.grads, b.m.grads, a.m.n_params * sizeof(float));
    b.m.recompute = 1;
    /* and recompute keeps less: one block's activations instead of L */
    ck_assert_uint_lt(qft_llama_acts_bytes(&b.m), qft_llama_acts_bytes(&a.m));
    fixture_close(&a);
    fixture_close(&b);
}
END_TEST

/* The head and the loss in chunks of 5 rows (m->logit_rows; the batch's rows are not a
 * multiple of 5, so the last chunk is short): the same loss and gradients as one chunk, up
 * to summation order (the head's gradient and the loss add chunk by chunk), no logits kept,
 * and a logits buffer of 5 rows instead of B*T. */
START_TEST(test_chunked_loss) {
    const char *variant = variants[_i];
    fixture a, b;
    fixture_open(&a, variant, 0);
    fixture_open(&b, variant, 1);
    b.m.logit_rows = 5;
    const int N = a.batch.B * a.batch.T;
    ck_assert_int_ne(N % 5, 0);
    const float la = run_step(&a, 1.0f);
    qft_err err = {0};
    float lb = NAN;
    ck_assert_msg(qft_llama_forward(&b.m, &b.batch, &lb, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(qft_llama_logits(&b.m)); /* never all held at once */
    ck_assert_msg(qft_llama_backward(&b.m, &b.batch, 1.0f, &err) == 0, "%s", err.msg);
    ck_assert_msg(fabsf(la - lb) <= 1e-6f * fabsf(la), "%s: loss %.9g chunked, %.9g whole",
                  variant, lb, la);
    double d2 = 0, r2 = 0;
    for (size_t i = 0; i < a.m.n_params; i++) {
        const double d = (double)b.m.grads[i] - a.m.grads[i];
        d2 += d * d, r2 += (double)a.m.grads[i] * a.m.grads[i];
    }
    ck_assert_msg(r2 > 0 && sqrt(d2 / r2) < 1e-6, "%s: chunked gradients off by %g (rel L2)",
                  variant, sqrt(d2 / r2));
    /* the second model keeps 5 rows of logits, not N (both also differ by recompute, so
     * compare against a third model: recompute, whole logits) */
    fixture c;
    fixture_open(&c, variant, 1);
    ck_assert_msg(qft_llama_acts_reserve(&c.m, c.batch.B, c.batch.T, &err) == 0, "%s",
                  err.msg);
    ck_assert_uint_eq(qft_llama_acts_bytes(&c.m) - qft_llama_acts_bytes(&b.m),
                      (size_t)(N - 5) * c.m.cfg.vocab_size * sizeof(float));
    /* changing logit_rows re-sizes the buffer at the next forward: whole again */
    b.m.logit_rows = 0;
    ck_assert_msg(qft_llama_forward(&b.m, &b.batch, &lb, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(qft_llama_logits(&b.m));
    ck_assert_uint_eq(qft_llama_acts_bytes(&b.m), qft_llama_acts_bytes(&c.m));
    fixture_close(&a);
    fixture_close(&b);
    fixture_close(&c);
}
END_TEST

/* The residual stream kept as bf16 (m->residual_bf16): recomputation still repeats the
 * forward exactly (both passes read the same rounded block inputs), so with and without it
 * the gradients are bit-identical; against fp32 the loss moves by bf16 rounding, not more;
 * and the (L+1, N, C) fp32 buffer becomes bf16 plus two fp32 working copies. */
START_TEST(test_residual_bf16) {
    const char *variant = variants[_i];
    fixture f32, a, b;
    fixture_open(&f32, variant, 1);
    fixture_open(&a, variant, 1);
    fixture_open(&b, variant, 0);
    a.m.residual_bf16 = b.m.residual_bf16 = 1;
    const float l32 = run_step(&f32, 1.0f), la = run_step(&a, 1.0f), lb = run_step(&b, 1.0f);
    ck_assert_mem_eq(&la, &lb, sizeof la);
    ck_assert_mem_eq(a.m.grads, b.m.grads, a.m.n_params * sizeof(float));
    /* bf16 keeps 8 bits of mantissa: relative rounding <= 2^-9 per element */
    ck_assert_msg(fabsf(la - l32) <= 4e-3f * fabsf(l32), "%s: loss %.7f with bf16 residuals, "
                  "%.7f with fp32", variant, la, l32);
    double d2 = 0, r2 = 0;
    size_t ndiff = 0;
    for (size_t i = 0; i < a.m.n_params; i++) {
        const double d = (double)a.m.grads[i] - f32.m.grads[i];
        d2 += d * d, r2 += (double)f32.m.grads[i] * f32.m.grads[i];
        ndiff += d != 0.0;
    }
    ck_assert_msg(sqrt(d2 / r2) < 2e-2, "%s: gradients off by %g (rel L2)", variant,
                  sqrt(d2 / r2));
    ck_assert_msg(ndiff > a.m.n_params / 2, "%s: only %zu of %zu gradients changed: the "
                  "rounding did not happen", variant, ndiff, a.m.n_params);
    const size_t L = (size_t)a.m.cfg.num_hidden_layers, C = (size_t)a.m.cfg.hidden_size;
    const size_t N = (size_t)a.batch.B * a.batch.T;
    ck_assert_uint_eq(qft_llama_acts_bytes(&a.m) + (L + 1) * N * C * 4,
                      qft_llama_acts_bytes(&f32.m) + (L + 1) * N * C * 2 + 2 * N * C * 4);
    fprintf(stderr, "%s: loss %.7f with bf16 residuals, %.7f with fp32; gradients %.2e rel L2\n",
            variant, la, l32, sqrt(d2 / r2));
    fixture_close(&f32);
    fixture_close(&a);
    fixture_close(&b);
}
END_TEST

START_TEST(test_logit_rows_auto) {
    /* Llama-3: 128256 tokens of fp32 are 501 KiB a row, 130 rows fit 64 MiB: 128 */
    const size_t dev = (size_t)64 << 20, host = (size_t)1 << 30;
    ck_assert_int_eq(qft_llama_logit_rows_auto(128256, dev), 128);
    ck_assert_int_eq(qft_llama_logit_rows_auto(32000, dev), 512); /* Llama-2: 524 fit */
    ck_assert_int_eq(qft_llama_logit_rows_auto(1 << 20, dev), 128); /* at least one GEMM tile */
    ck_assert_int_eq(qft_llama_logit_rows_auto(97, dev), 172928);   /* tiny models: whole batches */
    /* on the host: 2092 rows of Llama-3's fit 1 GiB, so 2048 tokens run as one chunk */
    ck_assert_int_eq(qft_llama_logit_rows_auto(128256, host), 2048);
}
END_TEST

START_TEST(test_accumulation_and_scale) {
    fixture fx;
    fixture_open(&fx, variants[_i], _i); /* untied without recompute, tied with */
    const size_t n = fx.m.n_params;
    float *once = malloc(n * sizeof *once);
    ck_assert_ptr_nonnull(once);
    run_step(&fx, 1.0f);
    memcpy(once, fx.m.grads, n * sizeof *once);
    run_step(&fx, 1.0f); /* a second micro-batch accumulates */
    /* Untied, each gradient is one sum per step, so x + x is exactly 2x. Tied, the
     * embedding takes two sums per step (head, then lookup), ((h + e) + h) + e, which may
     * round differently from 2(h + e): there, one ulp of the largest gradient. */
    float gmax = 0;
    for (size_t i = 0; i < n; i++) gmax = fmaxf(gmax, fabsf(once[i]));
    const float tol = fx.m.cfg.tie_word_embeddings ? 2.4e-7f * gmax : 0.0f;
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabsf(fx.m.grads[i] - 2.0f * once[i]) <= tol,
                      "grad[%zu]: %g after two steps, %g after one", i, fx.m.grads[i], once[i]);
    qft_llama_zero_grads(&fx.m);
    run_step(&fx, 0.5f); /* scaling by a power of two is exact through every linear op */
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fx.m.grads[i] == 0.5f * once[i], "grad[%zu]: %g with scale 0.5, %g with 1",
                      i, fx.m.grads[i], once[i]);
    free(once);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_adamw_trajectory) {
    const char *variant = variants[_i];
    fixture fx;
    fixture_open(&fx, variant, 1);
    const qft_st_entry *le = need(&fx.exp, "adamw_losses");
    const float *ref = le->t.data;
    const int steps = (int)numel(le) - 1; /* losses before each update, then after the last */
    qft_err err = {0};
    /* the fixture's torch.optim.AdamW settings (see expected.safetensors' metadata) */
    qft_optim_config oc = {.kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f,
                           .weight_decay = 0.1f};
    qft_optim opt;
    ck_assert_msg(qft_optim_init(&opt, &oc, fx.m.n_params, &err) == 0, "%s", err.msg);
    for (int k = 0; k <= steps; k++) {
        float loss;
        ck_assert_msg(qft_llama_forward(&fx.m, &fx.batch, &loss, &err) == 0, "%s", err.msg);
        ck_assert_msg(fabs(loss - ref[k]) < 1e-5 * fabs(ref[k]),
                      "%s: loss after %d AdamW steps %.8f, torch %.8f", variant, k, loss, ref[k]);
        if (k == steps) break;
        qft_llama_zero_grads(&fx.m);
        ck_assert_msg(qft_llama_backward(&fx.m, &fx.batch, 1.0f, &err) == 0, "%s", err.msg);
        qft_optim_step(&opt, fx.m.params, fx.m.grads, 1e-3f);
    }
    qft_optim_free(&opt);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_batch_rows_independent) {
    /* the first row alone gives that row's logits of the two-row batch: no leak between
     * rows, and the activations regrow correctly between shapes */
    fixture fx;
    fixture_open(&fx, "untied", 0);
    qft_err err = {0};
    const int T = fx.batch.T, V = fx.m.cfg.vocab_size;
    float l2;
    ck_assert_msg(qft_llama_forward(&fx.m, &fx.batch, &l2, &err) == 0, "%s", err.msg);
    float *both = malloc((size_t)2 * T * V * sizeof *both);
    ck_assert_ptr_nonnull(both);
    memcpy(both, qft_llama_logits(&fx.m), (size_t)2 * T * V * sizeof *both);
    qft_batch one = {1, T, fx.ids, fx.labels, fx.mask};
    float l1;
    ck_assert_msg(qft_llama_forward(&fx.m, &one, &l1, &err) == 0, "%s", err.msg);
    const float *row = qft_llama_logits(&fx.m);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        num = fmax(num, fabs((double)row[i] - both[i]));
        den = fmax(den, fabs((double)both[i]));
    }
    ck_assert_msg(num / den < 1e-6, "row 0 alone vs in a batch: %g", num / den);
    /* a longer batch than any before (T+5, padded) still runs and agrees on the prefix */
    const int T2 = T + 5;
    int32_t *ids2 = malloc((size_t)T2 * sizeof *ids2), *lab2 = malloc((size_t)T2 * sizeof *lab2);
    uint8_t *m2 = malloc((size_t)T2);
    ck_assert(ids2 && lab2 && m2);
    for (int t = 0; t < T2; t++) {
        ids2[t] = t < T ? fx.ids[t] : 0;
        lab2[t] = t < T ? fx.labels[t] : -100;
        m2[t] = t < T;
    }
    qft_batch longer = {1, T2, ids2, lab2, m2};
    float l3;
    ck_assert_msg(qft_llama_forward(&fx.m, &longer, &l3, &err) == 0, "%s", err.msg);
    row = qft_llama_logits(&fx.m);
    num = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) num = fmax(num, fabs((double)row[i] - both[i]));
    ck_assert_msg(num / den < 1e-6, "padded longer row vs original: %g", num / den);
    /* the loss of row 0 alone differs from the batch's: it averages other positions */
    ck_assert(fabsf(l1 - l2) > 1e-4f);
    ck_assert_msg(fabsf(l3 - l1) < 1e-5f * fabsf(l1), "padding changed the loss: %g vs %g", l3, l1);
    free(both), free(ids2), free(lab2), free(m2);
    fixture_close(&fx);
}
END_TEST

START_TEST(test_errors_and_empty_loss) {
    fixture fx;
    fixture_open(&fx, "untied", 0);
    qft_err err = {0};
    float loss;
    /* backward before any forward */
    ck_assert_int_ne(qft_llama_backward(&fx.m, &fx.batch, 1.0f, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "forward"));
    /* a token id outside the vocabulary names its position */
    int32_t save = fx.ids[1 * fx.batch.T + 4];
    fx.ids[1 * fx.batch.T + 4] = fx.m.cfg.vocab_size;
    memset(&err, 0, sizeof err);
    ck_assert_int_ne(qft_llama_forward(&fx.m, &fx.batch, &loss, &err), 0);
    ck_assert_msg(strstr(err.msg, "ids[1][4]") != NULL, "message: %s", err.msg);
    fx.ids[1 * fx.batch.T + 4] = save;
    save = fx.labels[5];
    fx.labels[5] = -7;
    memset(&err, 0, sizeof err);
    ck_assert_int_ne(qft_llama_forward(&fx.m, &fx.batch, &loss, &err), 0);
    ck_assert_msg(strstr(err.msg, "labels[0][5]") != NULL, "message: %s", err.msg);
    fx.labels[5] = save;
    /* every label ignored: loss 0 and no gradient */
    int32_t *none = malloc((size_t)fx.batch.B * fx.batch.T * sizeof *none);
    ck_assert_ptr_nonnull(none);
    for (int i = 0; i < fx.batch.B * fx.batch.T; i++) none[i] = -100;
    qft_batch nb = fx.batch;
    nb.labels = none;
    ck_assert_msg(qft_llama_forward(&fx.m, &nb, &loss, &err) == 0, "%s", err.msg);
    ck_assert(loss == 0.0f);
    ck_assert_msg(qft_llama_backward(&fx.m, &nb, 1.0f, &err) == 0, "%s", err.msg);
    for (size_t i = 0; i < fx.m.n_params; i++) ck_assert(fx.m.grads[i] == 0.0f);
    /* a backward whose batch shape is not the forward's */
    ck_assert_msg(qft_llama_forward(&fx.m, &fx.batch, &loss, &err) == 0, "%s", err.msg);
    qft_batch wrong = fx.batch;
    wrong.B = 1;
    memset(&err, 0, sizeof err);
    ck_assert_int_ne(qft_llama_backward(&fx.m, &wrong, 1.0f, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "last forward"));
    free(none);
    fixture_close(&fx);
}
END_TEST

int main(void) {
    char probe[4200];
    fixture_dir(probe, sizeof probe, "untied");
    strcat(probe, "/expected.safetensors");
    FILE *f = fopen(probe, "rb");
    if (!f) {
        printf("SKIP: llama fixtures not found at %s (set QFT_SOURCE_ROOT)\n", probe);
        return EXIT_SUCCESS;
    }
    fclose(f);
    Suite *s = suite_create("model_llama");
    TCase *tc = tcase_create("llama");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_parity_with_transformers, 0, 2);
    tcase_add_loop_test(tc, test_recompute_bit_identical, 0, 2);
    tcase_add_loop_test(tc, test_chunked_loss, 0, 2);
    tcase_add_test(tc, test_logit_rows_auto);
    tcase_add_loop_test(tc, test_residual_bf16, 0, 2);
    tcase_add_loop_test(tc, test_accumulation_and_scale, 0, 2);
    tcase_add_loop_test(tc, test_adamw_trajectory, 0, 2);
    tcase_add_test(tc, test_batch_rows_independent);
    tcase_add_test(tc, test_errors_and_empty_loss);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
