/* The lora and dora plugins against PEFT (tests/fixtures/adapters/peft_linear.safetensors,
 * made by tests/reference/peft_reference.py), and their dropout, initialisation, merging,
 * configuration and PEFT config text.
 *
 * Tolerance: fp32 here against fp32 torch, compared as max |ours - PEFT| / max |PEFT| per
 * tensor (the GEMMs sum in other orders, so elements near zero differ in relative terms
 * by more than the tensor's scale does); the bound is 1e-5. */
#include "adapter_test_util.h"
#include "cpu_ops.h"
#include "lora_common.h"
#include "qft_base.h"
#include "safetensors.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-5

static const qft_adapter_vtable *g_lora, *g_dora;
static qft_st_file g_fx;
static int g_fx_ok;

static float *fx_get(const char *cas, const char *what, size_t *n) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", cas, what);
    const qft_st_entry *e = qft_st_find(&g_fx, name);
    ck_assert_msg(e != NULL, "fixture has no %s", name);
    size_t k = qft_st_numel(&e->t);
    float *p = malloc(k * sizeof *p);
    ck_assert_ptr_nonnull(p);
    qft_err err = {0};
    ck_assert_msg(qft_st_entry_to_f32(&g_fx, e, p, &err) == 0, "%s", err.msg);
    if (n) *n = k;
    return p;
}

static void check_close(const char *cas, const char *what, const float *got, const float *ref,
                        size_t n) {
    double e = at_rel_err(got, ref, n);
    printf("  %-10s %-7s rel err %.2e\n", cas, what, e);
    ck_assert_msg(e <= TOL, "%s.%s: relative error %.3e > %.0e", cas, what, e, TOL);
}

/* ---- parity with PEFT, case by case --------------------------------------------------- */

typedef struct fx_case {
    char name[32];
    int in, out, r, N, dora, rslora;
    double alpha, dropout, scale;
    uint64_t seed;
    long step;
    int micro, layer;
    char module_name[96];
} fx_case;

static int load_cases(fx_case *cases, int max) {
    const char *text = qft_st_meta(&g_fx, "cases");
    ck_assert_ptr_nonnull(text);
    json_error_t je;
    json_t *a = json_loads(text, 0, &je);
    ck_assert_msg(a && json_is_array(a), "cases metadata: %s", je.text);
    int n = (int)json_array_size(a);
    ck_assert_int_le(n, max);
    for (int i = 0; i < n; i++) {
        json_t *o = json_array_get(a, (size_t)i);
        fx_case *c = &cases[i];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", json_string_value(json_object_get(o, "name")));
        c->in = (int)json_integer_value(json_object_get(o, "in"));
        c->out = (int)json_integer_value(json_object_get(o, "out"));
        c->r = (int)json_integer_value(json_object_get(o, "r"));
        c->N = (int)json_integer_value(json_object_get(o, "N"));
        c->dora = json_is_true(json_object_get(o, "dora"));
        c->rslora = json_is_true(json_object_get(o, "rslora"));
        c->alpha = json_number_value(json_object_get(o, "alpha"));
        c->dropout = json_number_value(json_object_get(o, "dropout"));
        c->scale = json_number_value(json_object_get(o, "scale"));
        if (c->dropout > 0) {
            c->seed = (uint64_t)json_integer_value(json_object_get(o, "seed"));
            c->step = (long)json_integer_value(json_object_get(o, "step"));
            c->micro = (int)json_integer_value(json_object_get(o, "micro"));
            c->layer = (int)json_integer_value(json_object_get(o, "layer"));
            snprintf(c->module_name, sizeof c->module_name, "%s",
                     json_string_value(json_object_get(o, "module_name")));
        } else {
            snprintf(c->module_name, sizeof c->module_name, "model.layers.0.self_attn.q_proj");
        }
    }
    json_decref(a);
    return n;
}

/* One case through the plugin as the engine drives it: y = x W^T then forward; dx = 0,
 * backward, then dx += dy' W; gradients and the merged weight against PEFT. `recompute`
 * repeats the forward first with no_grad, then again keeping activations. */
static void run_case(const fx_case *c, int recompute) {
    const qft_adapter_vtable *vt = c->dora ? g_dora : g_lora;
    char text[512];
    /* tiles of 5 rows: several tiles and a partial last one over 29 or 67 rows */
    snprintf(text, sizeof text,
             "adapter = { plugin = \"%s\"; rank = %d; alpha = %.17g; dropout = %.17g; "
             "rslora = %s; target_modules = \"all-linear\"; norm_tile_rows = 5; };\n",
             c->dora ? "dora" : "lora", c->r, c->alpha, c->dropout, c->rslora ? "true" : "false");
    void *st = NULL;
    qft_err err = {0};
    ck_assert_msg(at_configure(vt, text, &st, &err) == 0, "%s", err.msg);
    const int64_t in = c->in, out = c->out, N = c->N;
    float *W = fx_get(c->name, "W", NULL);
    at_dense d;
    qft_linear_base lin;
    at_dense_init(&d, &lin, W, out, in, c->module_name, "q_proj", c->layer);
    ck_assert_int_eq(vt->targets(st, &lin), 1);
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np = 0;
    ck_assert_msg(at_declare(vt, st, &lin, p, &np, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(np, c->dora ? 3 : 2);
    ck_assert_str_eq(p[0].suffix, "lora_A.weight");
    ck_assert_str_eq(p[1].suffix, "lora_B.weight");
    float *A = fx_get(c->name, "A", NULL), *B = fx_get(c->name, "B", NULL);
    memcpy(p[0].data, A, (size_t)(c->r * in) * sizeof(float));
    memcpy(p[1].data, B, (size_t)(out * c->r) * sizeof(float));
    if (c->dora) {
        ck_assert_str_eq(p[2].suffix, "lora_magnitude_vector");
        float *m = fx_get(c->name, "m", NULL);
        memcpy(p[2].data, m, (size_t)out * sizeof(float));
        free(m);
    }
    qft_adapter_linear *al = NULL;
    ck_assert_msg(vt->attach(st, &lin, p, np, 0, NULL, &al, &err) == 0, "%s", err.msg);

    float *x = fx_get(c->name, "x", NULL), *dy_ref = fx_get(c->name, "dy", NULL);
    qft_adapter_step step = {.seed = c->seed, .step = c->step, .micro = c->micro, .training = 1};
    if (c->dropout > 0) { /* the mask PEFT was handed is the one the plugin draws */
        float *mask = fx_get(c->name, "mask", NULL);
        uint64_t key = qft_lora_dropout_key(&step, c->layer, c->module_name);
        uint64_t thr = qft_ops_dropout_threshold(c->dropout);
        long dropped = 0;
        for (int64_t i = 0; i < N * in; i++) {
            int k = qft_ops_dropout_keep(key, (uint64_t)i, thr);
            ck_assert_msg(k == (mask[i] != 0.0f), "%s: mask element %lld differs", c->name,
                          (long long)i);
            dropped += !k;
        }
        ck_assert_int_gt(dropped, 0);
        free(mask);
    }
    float *y = malloc((size_t)(N * out) * sizeof *y);
    float *y2 = malloc((size_t)(N * out) * sizeof *y2);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(y2);
    if (recompute) { /* a first pass that keeps nothing, as recomputation's is */
        qft_adapter_step ng = step;
        ng.no_grad = 1;
        lin.forward(lin.ctx, x, N, y2, out, 0.0f, &err);
        ck_assert_msg(vt->forward(al, &ng, x, N, y2, out, &err) == 0, "%s", err.msg);
        /* DoRA without dropout works in place there: no (N, out) scratch */
        if (c->dora && c->dropout == 0)
            ck_assert_uint_eq(((const qft_lora_config *)st)->scratch->cap_out, 0);
    }
    lin.forward(lin.ctx, x, N, y, out, 0.0f, &err);
    ck_assert_msg(vt->forward(al, &step, x, N, y, out, &err) == 0, "%s", err.msg);
    float *y_ref = fx_get(c->name, "y", NULL);
    check_close(c->name, "y", y, y_ref, (size_t)(N * out));
    if (recompute) /* the same computation, bit for bit */
        ck_assert_int_eq(memcmp(y, y2, (size_t)(N * out) * sizeof *y), 0);

    float *dx = calloc((size_t)(N * in), sizeof *dx);
    float *dy = malloc((size_t)(N * out) * sizeof *dy);
    ck_assert_ptr_nonnull(dx);
    ck_assert_ptr_nonnull(dy);
    memcpy(dy, dy_ref, (size_t)(N * out) * sizeof *dy);
    ck_assert_msg(vt->backward(al, &step, x, dy, out, N, dx, &err) == 0, "%s", err.msg);
    lin.backward_input(lin.ctx, dy, out, N, dx, 1.0f, &err);
    float *dx_ref = fx_get(c->name, "dx", NULL), *dA = fx_get(c->name, "dA", NULL),
          *dB = fx_get(c->name, "dB", NULL);
    check_close(c->name, "dx", dx, dx_ref, (size_t)(N * in));
    check_close(c->name, "dA", p[0].grad, dA, (size_t)(c->r * in));
    check_close(c->name, "dB", p[1].grad, dB, (size_t)(out * c->r));
    if (c->dora) {
        float *dm = fx_get(c->name, "dm", NULL);
        check_close(c->name, "dm", p[2].grad, dm, (size_t)out);
        free(dm);
        /* the norm came in tiles of at most 5 rows, never the whole weight */
        ck_assert_int_le(d.max_rows, 5);
        ck_assert_int_ge(d.row_calls, (out + 4) / 5);
    }
    /* backward consumed the activations: a second one must fail, naming the linear */
    memcpy(dy, dy_ref, (size_t)(N * out) * sizeof *dy);
    ck_assert_int_ne(vt->backward(al, &step, x, dy, out, N, dx, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, c->module_name));

    /* merged weight, whole and in two pieces */
    float *merged_ref = fx_get(c->name, "merged", NULL);
    float *mw = malloc((size_t)(out * in) * sizeof *mw);
    ck_assert_ptr_nonnull(mw);
    ck_assert_msg(vt->merge_rows(al, 0, out, mw, &err) == 0, "%s", err.msg);
    check_close(c->name, "merged", mw, merged_ref, (size_t)(out * in));
    memset(mw, 0, (size_t)(out * in) * sizeof *mw);
    ck_assert(vt->merge_rows(al, 0, 10, mw, &err) == 0);
    ck_assert(vt->merge_rows(al, 10, out - 10, mw + 10 * in, &err) == 0);
    ck_assert_double_le(at_rel_err(mw, merged_ref, (size_t)(out * in)), TOL);
    ck_assert_int_ne(vt->merge_rows(al, out - 1, 2, mw, &err), 0);

    vt->detach(al);
    vt->close(st);
    at_free_params(p, np);
    free(W), free(A), free(B), free(x), free(dy_ref), free(y), free(y2), free(y_ref), free(dx),
        free(dy), free(dx_ref), free(dA), free(dB), free(merged_ref), free(mw);
}

START_TEST(test_parity) {
    if (!g_fx_ok) return;
    fx_case cases[16];
    int n = load_cases(cases, 16);
    ck_assert_int_ge(n, 7);
    for (int i = 0; i < n; i++) {
        run_case(&cases[i], 0);
        run_case(&cases[i], 1);
    }
}
END_TEST

/* ---- dropout ---------------------------------------------------------------------------- */

START_TEST(test_dropout_mask) {
    const int64_t N = 128, d = 256;
    const double p = 0.25;
    qft_adapter_step st = {.seed = 42, .step = 3, .micro = 1, .training = 1};
    const char *nm = "model.layers.2.mlp.up_proj";
    uint64_t k1 = qft_lora_dropout_key(&st, 2, nm);
    ck_assert_uint_eq(k1, qft_lora_dropout_key(&st, 2, nm));
    qft_adapter_step st2 = st;
    st2.step = 4;
    uint64_t k2 = qft_lora_dropout_key(&st2, 2, nm);
    st2 = st;
    st2.micro = 2;
    uint64_t k3 = qft_lora_dropout_key(&st2, 2, nm);
    uint64_t k4 = qft_lora_dropout_key(&st, 2, "model.layers.2.mlp.gate_proj");
    uint64_t k5 = qft_lora_dropout_key(&st, 3, nm);
    const uint64_t thr = qft_ops_dropout_threshold(p);
    const uint64_t others[] = {k2, k3, k4, k5};
    long kept = 0, diff[4] = {0}, pair_kk = 0;
    for (int64_t i = 0; i < N * d; i++) {
        int a = qft_ops_dropout_keep(k1, (uint64_t)i, thr);
        kept += a;
        for (int j = 0; j < 4; j++)
            diff[j] += a != qft_ops_dropout_keep(others[j], (uint64_t)i, thr);
        if (i + 1 < N * d) pair_kk += a && qft_ops_dropout_keep(k1, (uint64_t)(i + 1), thr);
    }
    const double n = (double)(N * d), q = 1.0 - p;
    const double sd = sqrt(n * p * q);
    /* E[keep] = 1 - p, within 5 standard deviations */
    ck_assert_double_lt(fabs((double)kept - n * q), 5 * sd);
    /* independent masks disagree with probability 2 p (1 - p) */
    for (int j = 0; j < 4; j++) {
        const double e = n * 2 * p * q, s = sqrt(n * 2 * p * q * (1 - 2 * p * q));
        ck_assert_msg(fabs((double)diff[j] - e) < 5 * s, "mask %d: %ld differ, expected %.0f", j,
                      diff[j], e);
    }
    /* neighbours are independent: P(keep, keep) = (1 - p)^2 */
    {
        const double e = (n - 1) * q * q, s = sqrt((n - 1) * q * q * (1 - q * q)) * 2;
        ck_assert_double_lt(fabs((double)pair_kk - e), 5 * s);
    }
    /* the applied values: kept ones scaled by 1 / (1 - p), the rest 0; mean preserved */
    float *x = malloc((size_t)(N * d) * sizeof *x), *o = malloc((size_t)(N * d) * sizeof *o);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(o);
    for (int64_t i = 0; i < N * d; i++) x[i] = 1.0f + (float)(i % 7);
    qft_cpu_ops()->dropout(k1, p, x, N, d, o, 0);
    double sum_x = 0, sum_o = 0;
    for (int64_t i = 0; i < N * d; i++) {
        int a = qft_ops_dropout_keep(k1, (uint64_t)i, thr);
        ck_assert(o[i] == (a ? x[i] * (float)(1.0 / q) : 0.0f));
        sum_x += x[i], sum_o += o[i];
    }
    ck_assert_double_lt(fabs(sum_o / sum_x - 1.0), 0.02);
    free(x), free(o);
}
END_TEST

/* The plugin's forward under dropout: the same (step, micro) twice gives the same output,
 * another step another one, evaluation none; backward reproduces the forward's mask (the
 * gradient check of the fixture covers that), here on a larger random case against a
 * reference computed in the test from the mask. */
START_TEST(test_dropout_forward) {
    const int64_t in = 48, out = 40, N = 9;
    const int r = 4;
    void *st = NULL;
    qft_err err = {0};
    ck_assert_msg(at_configure(g_dora,
                               "adapter = { plugin = \"dora\"; rank = 4; alpha = 16; "
                               "dropout = 0.4; target_modules = [\"up_proj\"]; };",
                               &st, &err) == 0,
                  "%s", err.msg);
    float *W = malloc((size_t)(out * in) * sizeof *W), *x = malloc((size_t)(N * in) * sizeof *x);
    ck_assert_ptr_nonnull(W);
    ck_assert_ptr_nonnull(x);
    at_randn(W, (size_t)(out * in), 11);
    at_randn(x, (size_t)(N * in), 12);
    at_dense d;
    qft_linear_base lin;
    const char *nm = "model.layers.1.mlp.up_proj";
    at_dense_init(&d, &lin, W, out, in, nm, "up_proj", 1);
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np;
    ck_assert(at_declare(g_dora, st, &lin, p, &np, &err) == 0);
    qft_rng rng;
    qft_rng_seed(&rng, 5);
    qft_adapter_linear *al;
    ck_assert_msg(g_dora->attach(st, &lin, p, np, 1, &rng, &al, &err) == 0, "%s", err.msg);
    at_randn(p[1].data, (size_t)(out * r), 13); /* B != 0 */
    for (int64_t j = 0; j < out; j++) p[2].data[j] *= 1.0f + 0.05f * (float)(j % 5);

    float *y1 = malloc((size_t)(N * out) * sizeof *y1),
          *y2 = malloc((size_t)(N * out) * sizeof *y2);
    float *y3 = malloc((size_t)(N * out) * sizeof *y3),
          *ye = malloc((size_t)(N * out) * sizeof *ye);
    ck_assert(y1 && y2 && y3 && ye);
    qft_adapter_step s1 = {.seed = 9, .step = 2, .micro = 0, .training = 1, .no_grad = 1};
    qft_adapter_step s2 = s1;
    s2.step = 3;
    qft_adapter_step se = s1;
    se.training = 0;
    float *ys[] = {y1, y2, y3, ye};
    const qft_adapter_step *ss[] = {&s1, &s1, &s2, &se};
    for (int k = 0; k < 4; k++) {
        lin.forward(lin.ctx, x, N, ys[k], out, 0.0f, &err);
        ck_assert_msg(g_dora->forward(al, ss[k], x, N, ys[k], out, &err) == 0, "%s", err.msg);
    }
    ck_assert_int_eq(memcmp(y1, y2, (size_t)(N * out) * sizeof *y1), 0);
    ck_assert_int_ne(memcmp(y1, y3, (size_t)(N * out) * sizeof *y1), 0);

    /* reference in double: W x + (f - 1) W x_d + f s B A x_d, and eval f (W x + s B A x) */
    const double s = 16.0 / 4.0;
    const uint64_t key = qft_lora_dropout_key(&s1, 1, nm), thr = qft_ops_dropout_threshold(0.4);
    double *norm = malloc((size_t)out * sizeof *norm);
    ck_assert_ptr_nonnull(norm);
    for (int64_t j = 0; j < out; j++) {
        double q = 0;
        for (int64_t i = 0; i < in; i++) {
            double w = W[j * in + i];
            for (int k = 0; k < r; k++) w += s * p[1].data[j * r + k] * p[0].data[k * in + i];
            q += w * w;
        }
        norm[j] = sqrt(q);
    }
    double e_drop = 0, e_eval = 0, scale = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < out; j++) {
            double wx = 0, wxd = 0, bax = 0, baxd = 0;
            for (int64_t i = 0; i < in; i++) {
                const double xi = x[n * in + i];
                const double xd =
                    qft_ops_dropout_keep(key, (uint64_t)(n * in + i), thr) ? xi / 0.6 : 0.0;
                double ba = 0;
                for (int k = 0; k < r; k++) ba += p[1].data[j * r + k] * p[0].data[k * in + i];
                wx += W[j * in + i] * xi, wxd += W[j * in + i] * xd;
                bax += ba * xi, baxd += ba * xd;
            }
            const double f = p[2].data[j] / norm[j];
            const double yd = wx + (f - 1) * wxd + f * s * baxd, yev = f * (wx + s * bax);
            e_drop = fmax(e_drop, fabs(yd - y1[n * out + j]));
            e_eval = fmax(e_eval, fabs(yev - ye[n * out + j]));
            scale = fmax(scale, fabs(yd));
        }
    printf("  dora dropout forward vs double reference: %.2e, eval: %.2e (scale %.2f)\n",
           e_drop / scale, e_eval / scale, scale);
    ck_assert_double_le(e_drop / scale, TOL);
    ck_assert_double_le(e_eval / scale, TOL);
    /* with dropout the base product ran twice per forward (PEFT's form), in eval once,
     * plus once over the r rows of A for the norm, which A and B kept valid after */
    ck_assert_int_eq(d.fwd_calls, 4 + 3 + 1);
    g_dora->detach(al);
    g_dora->close(st);
    at_free_params(p, np);
    free(W), free(x), free(y1), free(y2), free(y3), free(ye), free(norm);
}
END_TEST

/* DoRA's norm where W + s B A nearly cancels in some rows: the expansion from ||W||^2 would
 * lose those rows to rounding, so they must come from the exact path. */
START_TEST(test_dora_norm_cancel) {
    const int64_t in = 40, out = 12, N = 5;
    const int r = 2;
    void *st;
    qft_err err = {0};
    ck_assert(at_configure(g_dora, "adapter = { rank = 2; alpha = 4; };", &st, &err) == 0);
    float *W = malloc((size_t)(out * in) * sizeof *W), *x = malloc((size_t)(N * in) * sizeof *x);
    float *y = malloc((size_t)(N * out) * sizeof *y);
    ck_assert(W && x && y);
    at_randn(W, (size_t)(out * in), 41);
    at_randn(x, (size_t)(N * in), 42);
    at_dense d;
    qft_linear_base lin;
    at_dense_init(&d, &lin, W, out, in, "model.layers.0.self_attn.q_proj", "q_proj", 0);
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np;
    ck_assert(at_declare(g_dora, st, &lin, p, &np, &err) == 0);
    at_randn(p[0].data, (size_t)(r * in), 43);
    at_randn(p[1].data, (size_t)(out * r), 44);
    const double s = 4.0 / 2.0;
    /* rows 0..2: W_j = -s (B A)_j + 1e-3 noise, so ||W_j + s B_j A|| ~ 1e-3 ||W_j|| */
    for (int64_t j = 0; j < 3; j++)
        for (int64_t i = 0; i < in; i++) {
            double ba = 0;
            for (int k = 0; k < r; k++) ba += p[1].data[j * r + k] * p[0].data[k * in + i];
            W[j * in + i] = (float)(-s * ba) + 1e-3f * W[j * in + i];
        }
    for (int64_t j = 0; j < out; j++) p[2].data[j] = 1.0f + 0.1f * (float)j;
    qft_adapter_linear *al;
    ck_assert(g_dora->attach(st, &lin, p, np, 0, NULL, &al, &err) == 0);
    const long calls = d.row_calls;
    lin.forward(lin.ctx, x, N, y, out, 0.0f, &err);
    qft_adapter_step ev = {.no_grad = 1};
    ck_assert(g_dora->forward(al, &ev, x, N, y, out, &err) == 0);
    ck_assert_int_eq(d.row_calls - calls, 3); /* the three cancelling rows, one by one */
    /* the norms themselves (the plugin's state; y in those rows is ill-conditioned for any
     * fp32 computation, PEFT's included, as W x and s B A x cancel too) */
    double e = 0;
    for (int64_t j = 0; j < out; j++) {
        double q = 0;
        for (int64_t i = 0; i < in; i++) {
            double w = W[j * in + i];
            for (int k = 0; k < r; k++) w += s * p[1].data[j * r + k] * p[0].data[k * in + i];
            q += w * w;
        }
        /* fp32 W + s B A itself rounds at eps ||W_j|| ~ 1e-4 of these norms, in PEFT too */
        const double ej = fabs(al->norm[j] - sqrt(q)) / sqrt(q);
        if (j < 3) {
            ck_assert_double_lt(sqrt(q), 1e-2 * sqrt(al->wsq[j]));
            ck_assert_double_le(ej, 1e-4);
        } else {
            e = fmax(e, ej);
        }
    }
    ck_assert_double_le(e, 1e-5);
    g_dora->detach(al);
    g_dora->close(st);
    at_free_params(p, np);
    free(W), free(x), free(y);
}
END_TEST

/* ---- initialisation ------------------------------------------------------------------- */

START_TEST(test_init) {
    const int64_t in = 300, out = 70;
    const int r = 16;
    float *W = malloc((size_t)(out * in) * sizeof *W), *x = malloc((size_t)(7 * in) * sizeof *x);
    ck_assert(W && x);
    at_randn(W, (size_t)(out * in), 21);
    at_randn(x, (size_t)(7 * in), 22);
    for (int dora = 0; dora < 2; dora++) {
        const qft_adapter_vtable *vt = dora ? g_dora : g_lora;
        void *st;
        qft_err err = {0};
        ck_assert(at_configure(vt,
                               "adapter = { rank = 16; alpha = 32; target_modules = \"all\"; };",
                               &st, &err) == 0);
        at_dense d;
        qft_linear_base lin;
        at_dense_init(&d, &lin, W, out, in, "model.layers.0.mlp.down_proj", "down_proj", 0);
        qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS], p2[QFT_ADAPTER_MAX_PARAMS];
        int np, np2;
        ck_assert(at_declare(vt, st, &lin, p, &np, &err) == 0);
        ck_assert(at_declare(vt, st, &lin, p2, &np2, &err) == 0);
        qft_rng rng, rng2;
        qft_rng_seed(&rng, 77);
        qft_rng_seed(&rng2, 77);
        qft_adapter_linear *al, *al2;
        ck_assert_msg(vt->attach(st, &lin, p, np, 1, &rng, &al, &err) == 0, "%s", err.msg);
        ck_assert(vt->attach(st, &lin, p2, np2, 1, &rng2, &al2, &err) == 0);
        /* A ~ U(-1/sqrt(in), 1/sqrt(in)): bounded, mean 0, variance bound^2 / 3 */
        const double bound = 1.0 / sqrt((double)in);
        double sum = 0, sq = 0, mx = 0;
        for (int64_t i = 0; i < r * in; i++) {
            sum += p[0].data[i], sq += (double)p[0].data[i] * p[0].data[i];
            mx = fmax(mx, fabs(p[0].data[i]));
        }
        const double n = (double)(r * in), var = bound * bound / 3;
        ck_assert_double_le(mx, bound);
        ck_assert_double_gt(mx, 0.99 * bound);
        ck_assert_double_lt(fabs(sum / n), 5 * sqrt(var / n));
        ck_assert_double_lt(fabs(sq / n / var - 1.0), 0.05);
        for (int64_t i = 0; i < out * r; i++) ck_assert(p[1].data[i] == 0.0f);
        /* the same stream gives the same tensors */
        ck_assert_int_eq(memcmp(p[0].data, p2[0].data, (size_t)(r * in) * sizeof(float)), 0);
        if (dora) { /* m = ||W|| per row, computed in tiles */
            for (int64_t j = 0; j < out; j++) {
                double q = 0;
                for (int64_t i = 0; i < in; i++) q += (double)W[j * in + i] * W[j * in + i];
                ck_assert_double_le(fabs(p[2].data[j] - sqrt(q)) / sqrt(q), 1e-6);
            }
        }
        /* B = 0: the adapted linear computes the base exactly (DoRA: f = 1 up to rounding) */
        float *y = malloc((size_t)(7 * out) * sizeof *y),
              *yb = malloc((size_t)(7 * out) * sizeof *yb);
        ck_assert(y && yb);
        lin.forward(lin.ctx, x, 7, yb, out, 0.0f, &err);
        memcpy(y, yb, (size_t)(7 * out) * sizeof *y);
        qft_adapter_step s = {.seed = 1, .training = 1, .no_grad = 1};
        ck_assert(vt->forward(al, &s, x, 7, y, out, &err) == 0);
        ck_assert_double_le(at_rel_err(y, yb, (size_t)(7 * out)), dora ? 1e-6 : 0.0);
        free(y), free(yb);
        vt->detach(al), vt->detach(al2);
        vt->close(st);
        at_free_params(p, np), at_free_params(p2, np2);
    }
    free(W), free(x);
}
END_TEST

/* Activations are sized for each call's N: a small call, a larger one, and backward. */
START_TEST(test_growing_n) {
    const int64_t in = 33, out = 21;
    float *W = malloc((size_t)(out * in) * sizeof *W), *x = malloc((size_t)(40 * in) * sizeof *x);
    float *y = malloc((size_t)(40 * out) * sizeof *y), *dx = calloc((size_t)(40 * in), sizeof *dx);
    ck_assert(W && x && y && dx);
    at_randn(W, (size_t)(out * in), 31);
    at_randn(x, (size_t)(40 * in), 32);
    void *st;
    qft_err err = {0};
    ck_assert(at_configure(g_dora, "adapter = { rank = 3; dropout = 0.1; };", &st, &err) == 0);
    at_dense d;
    qft_linear_base lin;
    at_dense_init(&d, &lin, W, out, in, "model.layers.0.self_attn.v_proj", "v_proj", 0);
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np;
    ck_assert(at_declare(g_dora, st, &lin, p, &np, &err) == 0);
    qft_rng rng;
    qft_rng_seed(&rng, 1);
    qft_adapter_linear *al;
    ck_assert(g_dora->attach(st, &lin, p, np, 1, &rng, &al, &err) == 0);
    qft_adapter_step s = {.seed = 1, .training = 1};
    const int64_t ns[] = {3, 40, 17};
    for (int k = 0; k < 3; k++) {
        lin.forward(lin.ctx, x, ns[k], y, out, 0.0f, &err);
        ck_assert_msg(g_dora->forward(al, &s, x, ns[k], y, out, &err) == 0, "%s", err.msg);
        /* a backward over another N than the forward kept is refused */
        ck_assert_int_ne(g_dora->backward(al, &s, x, y, out, ns[k] + 1, dx, &err), 0);
        ck_assert_msg(g_dora->backward(al, &s, x, y, out, ns[k], dx, &err) == 0, "%s", err.msg);
    }
    double g = 0;
    for (int64_t i = 0; i < out; i++) g += fabs(p[2].grad[i]);
    ck_assert_double_gt(g, 0.0);
    g_dora->detach(al);
    g_dora->close(st);
    at_free_params(p, np);
    free(W), free(x), free(y), free(dx);
}
END_TEST

/* ---- targets, config errors, PEFT config text ----------------------------------------- */

static int targets(const qft_adapter_vtable *vt, const char *text, const char *name,
                   const char *module) {
    void *st;
    qft_err err = {0};
    ck_assert_msg(at_configure(vt, text, &st, &err) == 0, "%s", err.msg);
    qft_linear_base lin = {.name = name, .module = module, .layer = 1, .out = 8, .in = 8};
    int t = vt->targets(st, &lin);
    vt->close(st);
    return t;
}

START_TEST(test_targets) {
    const char *all = "adapter = { target_modules = \"all\"; };";
    const char *lin = "adapter = { target_modules = \"all-linear\"; };";
    const char *def = "adapter = { rank = 4; };";
    const char *lst = "adapter = { target_modules = [\"k_proj\", \"mlp.up_proj\"]; };";
    const char *rex = "adapter = { target_modules = \".*layers\\\\.1\\\\..*(q|k)_proj\"; };";
    ck_assert_int_eq(targets(g_lora, all, "model.layers.1.self_attn.o_proj", "o_proj"), 0);
    ck_assert_int_eq(targets(g_lora, all, "model.layers.1.mlp.gate_proj", "gate_proj"), 1);
    ck_assert_int_eq(targets(g_lora, all, "model.layers.1.self_attn.k_proj", "k_proj"), 1);
    ck_assert_int_eq(targets(g_lora, lin, "model.layers.1.self_attn.o_proj", "o_proj"), 1);
    ck_assert_int_eq(targets(g_lora, def, "model.layers.1.self_attn.q_proj", "q_proj"), 1);
    ck_assert_int_eq(targets(g_lora, def, "model.layers.1.self_attn.v_proj", "v_proj"), 1);
    ck_assert_int_eq(targets(g_lora, def, "model.layers.1.self_attn.k_proj", "k_proj"), 0);
    ck_assert_int_eq(targets(g_dora, lst, "model.layers.1.self_attn.k_proj", "k_proj"), 1);
    ck_assert_int_eq(targets(g_dora, lst, "model.layers.1.mlp.up_proj", "up_proj"), 1);
    ck_assert_int_eq(targets(g_dora, lst, "model.layers.1.mlp.down_proj", "down_proj"), 0);
    ck_assert_int_eq(targets(g_lora, rex, "model.layers.1.self_attn.q_proj", "q_proj"), 1);
    ck_assert_int_eq(targets(g_lora, rex, "model.layers.11.self_attn.q_proj", "q_proj"), 0);
    ck_assert_int_eq(targets(g_lora, rex, "model.layers.1.self_attn.v_proj", "v_proj"), 0);
}
END_TEST

static void expect_error(const char *text, const char *needle, int line) {
    void *st = NULL;
    qft_err err = {0};
    ck_assert_int_ne(at_configure(g_lora, text, &st, &err), 0);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err.msg, needle), "error \"%s\" lacks \"%s\"", err.msg, needle);
    if (line > 0) {
        char where[32];
        snprintf(where, sizeof where, ":%d:", line);
        ck_assert_msg(strstr(err.msg, where), "error \"%s\" lacks line %d", err.msg, line);
    }
}

START_TEST(test_config_errors) {
    expect_error("adapter = {\n rank = 0;\n};", "adapter.rank", 2);
    expect_error("adapter = {\n  plugin = \"lora\";\n  dropout = 1.0;\n};", "adapter.dropout", 3);
    expect_error("adapter = { alpha = \"big\"; };", "expected a number", 1);
    expect_error("adapter = {\n\n target_modules = [\"q_proj\", \"qproj\"];\n};", "qproj", 3);
    expect_error("adapter = { target_modules = \"(\"; };", "regular expression", 1);
    expect_error("adapter = { init_lora_weights = \"xavier\"; };", "gaussian", 1);
    expect_error("adapter = { rslora = 1; };", "true or false", 1);
    expect_error("adapter = {\n ranks = 8;\n};", "ranks", 2); /* unknown key, core's check */
}
END_TEST

static json_t *peft_json(const qft_adapter_vtable *vt, const char *text) {
    void *st;
    qft_err err = {0};
    ck_assert_msg(at_configure(vt, text, &st, &err) == 0, "%s", err.msg);
    char buf[2048], wrapped[2100];
    ck_assert_msg(vt->peft_config(st, buf, sizeof buf, &err) == 0, "%s", err.msg);
    ck_assert_int_ne(vt->peft_config(st, buf, 20, &err), 0); /* too small: an error */
    ck_assert_msg(vt->peft_config(st, buf, sizeof buf, &err) == 0, "%s", err.msg);
    vt->close(st);
    snprintf(wrapped, sizeof wrapped, "{%s}", buf);
    json_error_t je;
    json_t *o = json_loads(wrapped, 0, &je);
    ck_assert_msg(o != NULL, "not JSON members: %s (%s)", buf, je.text);
    return o;
}

START_TEST(test_peft_config) {
    json_t *o =
        peft_json(g_dora, "adapter = { rank = 64; alpha = 16; dropout = 0.1; rslora = true; "
                          "target_modules = \"all\"; };");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "r")), 64);
    ck_assert(json_is_integer(json_object_get(o, "lora_alpha")));
    ck_assert_int_eq(json_integer_value(json_object_get(o, "lora_alpha")), 16);
    ck_assert(json_real_value(json_object_get(o, "lora_dropout")) == 0.1);
    ck_assert(json_is_true(json_object_get(o, "use_dora")));
    ck_assert(json_is_true(json_object_get(o, "use_rslora")));
    ck_assert(json_is_true(json_object_get(o, "init_lora_weights")));
    json_t *t = json_object_get(o, "target_modules");
    ck_assert(json_is_array(t));
    ck_assert_int_eq(json_array_size(t), 6);
    const char *want[] = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"};
    for (int i = 0; i < 6; i++)
        ck_assert_str_eq(json_string_value(json_array_get(t, (size_t)i)), want[i]);
    json_decref(o);

    o = peft_json(g_lora, "adapter = { alpha = 16.5; init_lora_weights = \"gaussian\"; "
                          "target_modules = [\"self_attn.q_proj\", \"down_proj\"]; };");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "r")), 8);
    ck_assert(json_real_value(json_object_get(o, "lora_alpha")) == 16.5);
    ck_assert(json_number_value(json_object_get(o, "lora_dropout")) == 0.0);
    ck_assert(json_is_false(json_object_get(o, "use_dora")));
    ck_assert(json_is_false(json_object_get(o, "use_rslora")));
    ck_assert_str_eq(json_string_value(json_object_get(o, "init_lora_weights")), "gaussian");
    t = json_object_get(o, "target_modules");
    ck_assert_int_eq(json_array_size(t), 2);
    ck_assert_str_eq(json_string_value(json_array_get(t, 0)), "self_attn.q_proj");
    json_decref(o);

    o = peft_json(g_lora, "adapter = { target_modules = \".*\\\\.(q|v)_proj\"; };");
    ck_assert_str_eq(json_string_value(json_object_get(o, "target_modules")), ".*\\.(q|v)_proj");
    json_decref(o);
    o = peft_json(g_lora, "adapter = { };");
    t = json_object_get(o, "target_modules");
    ck_assert_int_eq(json_array_size(t), 2);
    ck_assert_str_eq(json_string_value(json_array_get(t, 0)), "q_proj");
    ck_assert_str_eq(json_string_value(json_array_get(t, 1)), "v_proj");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "lora_alpha")), 8);
    json_decref(o);
}
END_TEST

int main(void) {
    g_lora = at_load_plugin("QFT_LORA_PLUGIN");
    g_dora = at_load_plugin("QFT_DORA_PLUGIN");
    if (!g_lora || !g_dora) return EXIT_FAILURE;
    const char *root = getenv("QFT_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/adapters/peft_linear.safetensors",
             root ? root : ".");
    qft_err err = {0};
    if (qft_st_open(path, &g_fx, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return EXIT_FAILURE; /* a committed fixture: its absence is a failure */
    }
    g_fx_ok = 1;
    Suite *s = suite_create("adapters");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_parity);
    tcase_add_test(tc, test_dropout_mask);
    tcase_add_test(tc, test_dropout_forward);
    tcase_add_test(tc, test_dora_norm_cancel);
    tcase_add_test(tc, test_init);
    tcase_add_test(tc, test_growing_n);
    tcase_add_test(tc, test_targets);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_peft_config);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    qft_st_close(&g_fx);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
