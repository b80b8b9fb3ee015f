/* One adapted linear's forward and backward, as a training step runs it: the base product
 * y = x W^T, the adapter's forward, the adapter's backward, then the base's input gradient
 * dx += dy' W. LoRA against DoRA at r = 64, in = out = 4096, N = 512 tokens by default
 * (argv: N in out r reps). DoRA's norm ||W + s B A|| is recomputed every step, as in
 * training (B changes at each optimizer step: here one element of B is nudged per step so
 * the cache misses), and also shown cached (several micro-batches or a recomputed forward
 * within one step). "x LoRA" compares with the LoRA row of the same kind. Threads:
 * OMP_NUM_THREADS. Prints a table. */
#include "../tests/adapters/adapter_test_util.h"
#include "qft_base.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct bench {
    const qft_adapter_vtable *vt;
    void *st;
    at_dense d;
    qft_linear_base lin;
    qft_adapter_param p[QFT_ADAPTER_MAX_PARAMS];
    int np;
    qft_adapter_linear *al;
} bench;

static int64_t g_N, g_in, g_out;
static int g_r, g_reps;
static float *g_W, *g_x, *g_y, *g_dy, *g_dyc, *g_dx;

static int bench_open(bench *b, const char *env, const char *cfg) {
    qft_err err = {0};
    memset(b, 0, sizeof *b);
    if (!env) return 0; /* the base alone */
    b->vt = at_load_plugin(env);
    if (!b->vt) return -1;
    if (at_configure(b->vt, cfg, &b->st, &err)) goto fail;
    at_dense_init(&b->d, &b->lin, g_W, g_out, g_in, "model.layers.0.self_attn.q_proj", "q_proj", 0);
    if (at_declare(b->vt, b->st, &b->lin, b->p, &b->np, &err)) goto fail;
    qft_rng rng;
    qft_rng_seed(&rng, 1);
    if (b->vt->attach(b->st, &b->lin, b->p, b->np, 1, &rng, &b->al, &err)) goto fail;
    at_randn(b->p[1].data, (size_t)(g_out * g_r), 3); /* B != 0, as after some training */
    for (int64_t i = 0; i < g_out * g_r; i++) b->p[1].data[i] *= 0.01f;
    return 0;
fail:
    fprintf(stderr, "%s\n", err.msg);
    return -1;
}

/* Seconds of one step. */
static double bench_step(bench *b, long stepno, int change_ab, int recompute, double p_train) {
    qft_err err = {0};
    qft_linear_base base;
    at_dense dd;
    at_dense_init(&dd, &base, g_W, g_out, g_in, "base", "q_proj", 0);
    qft_adapter_step s = {.seed = 1, .step = stepno, .training = p_train > 0};
    if (b->al && change_ab) b->p[1].data[stepno & 63] += 1e-4f; /* an optimizer step */
    double t0 = qft_time_now();
    if (b->al && recompute) {
        qft_adapter_step ng = s;
        ng.no_grad = 1;
        base.forward(base.ctx, g_x, g_N, g_y, g_out, 0.0f, &err);
        if (b->vt->forward(b->al, &ng, g_x, g_N, g_y, g_out, &err)) goto fail;
    }
    base.forward(base.ctx, g_x, g_N, g_y, g_out, 0.0f, &err);
    if (b->al && b->vt->forward(b->al, &s, g_x, g_N, g_y, g_out, &err)) goto fail;
    memcpy(g_dyc, g_dy, (size_t)(g_N * g_out) * sizeof *g_dyc);
    memset(g_dx, 0, (size_t)(g_N * g_in) * sizeof *g_dx);
    if (b->al && b->vt->backward(b->al, &s, g_x, g_dyc, g_out, g_N, g_dx, &err)) goto fail;
    base.backward_input(base.ctx, g_dyc, g_out, g_N, g_dx, 1.0f, &err);
    return qft_time_now() - t0;
fail:
    fprintf(stderr, "%s\n", err.msg);
    return -1;
}

static void bench_close(bench *b) {
    if (!b->vt) return;
    b->vt->detach(b->al);
    b->vt->close(b->st);
    at_free_params(b->p, b->np);
}

int main(int argc, char **argv) {
    g_N = argc > 1 ? atol(argv[1]) : 512;
    g_in = argc > 2 ? atol(argv[2]) : 4096;
    g_out = argc > 3 ? atol(argv[3]) : 4096;
    g_r = argc > 4 ? atoi(argv[4]) : 64;
    g_reps = argc > 5 ? atoi(argv[5]) : 5;
    if (g_N <= 0 || g_in <= 0 || g_out <= 0 || g_r <= 0 || g_reps <= 0) {
        fprintf(stderr, "usage: %s [N in out r reps]\n", argv[0]);
        return 2;
    }
    /* the build tree's plugins unless the environment names others */
    setenv("QFT_LORA_PLUGIN", QFT_LORA_SO, 0);
    setenv("QFT_DORA_PLUGIN", QFT_DORA_SO, 0);
    size_t nw = (size_t)(g_out * g_in), nx = (size_t)(g_N * g_in), ny = (size_t)(g_N * g_out);
    g_W = malloc(nw * sizeof(float)), g_x = malloc(nx * sizeof(float));
    g_dx = malloc(nx * sizeof(float)), g_y = malloc(ny * sizeof(float));
    g_dy = malloc(ny * sizeof(float)), g_dyc = malloc(ny * sizeof(float));
    if (!g_W || !g_x || !g_dx || !g_y || !g_dy || !g_dyc) return 1;
    at_randn(g_W, nw, 1);
    for (size_t i = 0; i < nw; i++) g_W[i] *= 0.02f;
    at_randn(g_x, nx, 2);
    at_randn(g_dy, ny, 3);
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "adapter = { rank = %d; alpha = 16; target_modules = \"all-linear\"; };", g_r);
    char cfg_drop[256];
    snprintf(
        cfg_drop, sizeof cfg_drop,
        "adapter = { rank = %d; alpha = 16; dropout = 0.1; target_modules = \"all-linear\"; };",
        g_r);
    printf("adapted linear, forward + backward: N = %lld, in = %lld, out = %lld, r = %d, "
           "%d threads, fastest of %d steps\n",
           (long long)g_N, (long long)g_in, (long long)g_out, g_r, nt, g_reps);
    printf("%-46s %10s %10s %10s\n", "", "ms/step", "x base", "x LoRA");
    bench none, lora, dora, lora_d, dora_d;
    if (bench_open(&none, NULL, NULL) || bench_open(&lora, "QFT_LORA_PLUGIN", cfg) ||
        bench_open(&dora, "QFT_DORA_PLUGIN", cfg) ||
        bench_open(&lora_d, "QFT_LORA_PLUGIN", cfg_drop) ||
        bench_open(&dora_d, "QFT_DORA_PLUGIN", cfg_drop))
        return 1;
    /* the configurations take turns, step by step, and each reports its fastest step:
     * on a shared machine the minimum is the figure least disturbed by other work */
    struct {
        const char *label;
        bench *b;
        int change_ab, recompute, ref;
        double p;
        double best;
    } c[] = {
        {"base only (x W^T, dy W)", &none, 0, 0, -1, 0, 1e30},
        {"LoRA", &lora, 1, 0, -1, 0, 1e30},
        {"DoRA, norm recomputed (A, B changed)", &dora, 1, 0, 1, 0, 1e30},
        {"DoRA, norm cached (A, B unchanged)", &dora, 0, 0, 1, 0, 1e30},
        {"LoRA, forward recomputed", &lora, 1, 1, -1, 0, 1e30},
        {"DoRA, forward recomputed (norm once)", &dora, 1, 1, 4, 0, 1e30},
        {"LoRA, dropout 0.1", &lora_d, 1, 0, -1, 0.1, 1e30},
        {"DoRA, dropout 0.1 (PEFT: base product twice)", &dora_d, 1, 0, 6, 0.1, 1e30},
    };
    const int nc = (int)(sizeof c / sizeof c[0]);
    for (int rep = -1; rep < g_reps; rep++) /* rep -1 warms up */
        for (int i = 0; i < nc; i++) {
            double t = bench_step(c[i].b, rep + 1, c[i].change_ab, c[i].recompute, c[i].p);
            if (t < 0) return 1;
            if (rep >= 0 && t < c[i].best) c[i].best = t;
        }
    for (int i = 0; i < nc; i++) {
        printf("%-46s %10.1f %10.2f", c[i].label, c[i].best * 1e3, c[i].best / c[0].best);
        if (c[i].ref >= 0) printf(" %10.2f", c[i].best / c[c[i].ref].best);
        printf("\n");
    }
    bench_close(&lora), bench_close(&dora), bench_close(&lora_d), bench_close(&dora_d);
    free(g_W), free(g_x), free(g_dx), free(g_y), free(g_dy), free(g_dyc);
    return 0;
}
