/* Quantizer benchmark: quantize and dequantize throughput of bnb_nf4 and hqq, and the fused
 * tile products (core/qlinear) against a dense fp32 OpenBLAS product of the same shape,
 * for weights 4096x4096 and 11008x4096 and token batches 1, 16, 512; then the
 * quantization error of NF4, NF4 + double quantization and HQQ 4-bit on Gaussian weights.
 * Usage: bench_quant [--quick | --small]  (plugins from the build tree, or $QFT_NF4_PLUGIN
 * and $QFT_HQQ_PLUGIN); --quick: the 4096x4096 weight only; --small: the linears of the
 * adapter-step bench (1024x512 and 512x1024, batches 1, 16 and 1024 tokens). Prints markdown tables; see bench/README.md. */
#include "qft_base.h"
#include "qlinear.h"

#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const qft_quantizer_vtable *load(const char *env, const char *built) {
    const char *p = getenv(env) ? getenv(env) : built;
    void *h = dlopen(p, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", p, dlerror());
        return NULL;
    }
    qft_plugin_entry_fn fn = (qft_plugin_entry_fn)dlsym(h, QFT_PLUGIN_ENTRY_SYMBOL);
    return fn ? fn()->vtable : NULL;
}

static void *configure(const qft_quantizer_vtable *vt, const char *text) {
    config_t cfg;
    config_init(&cfg);
    if (config_read_string(&cfg, text) != CONFIG_TRUE) return NULL;
    void *st = NULL;
    qft_err err = {0};
    if (vt->configure(NULL, config_lookup(&cfg, "quant"), &st, &err))
        fprintf(stderr, "%s\n", err.msg);
    config_destroy(&cfg);
    return st;
}

static float *randn(int64_t n, uint64_t seed, float sd) {
    float *w = malloc((size_t)n * sizeof(float));
    if (!w) return NULL;
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) w[i] = sd * qft_rng_normal(&r);
    return w;
}

/* Best of `reps` runs, seconds. */
#define TIME_BEST(reps, out, stmt)                          \
    do {                                                    \
        out = 1e30;                                         \
        for (int _r = 0; _r < (reps); _r++) {               \
            double _t0 = qft_time_now();                    \
            stmt;                                           \
            double _t = qft_time_now() - _t0;               \
            if (_t < out) out = _t;                         \
        }                                                   \
    } while (0)

int main(int argc, char **argv) {
    const int quick = argc > 1 && !strcmp(argv[1], "--quick");
    const int small = argc > 1 && !strcmp(argv[1], "--small");
    const qft_quantizer_vtable *vts[2] = {load("QFT_NF4_PLUGIN", QFT_NF4_BUILT),
                                          load("QFT_HQQ_PLUGIN", QFT_HQQ_BUILT)};
    if (!vts[0] || !vts[1]) return 1;
    const char *names[2] = {"bnb_nf4 (block 64, double quant)", "hqq (4-bit, group 64, axis 1)"};
    const char *cfgs[2] = {"quant: { blocksize = 64; double_quant = true; };",
                           "quant: { nbits = 4; group_size = 64; axis = 1; };"};
    const int64_t shapes[2][2] = {{small ? 1024 : 4096, small ? 512 : 4096},
                                  {small ? 512 : 11008, small ? 1024 : 4096}};
    const int64_t batches[3] = {1, 16, small ? 1024 : 512};
    const int64_t nmax = batches[2];
    qft_err err = {0};
    printf("## throughput (threads: %s)\n\n", getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS")
                                                                          : "default");
    printf("| quantizer | weight | quantize | dequantize | batch | dense sgemm | fused fwd | "
           "fwd / dense | dense dX | fused dX | dX / dense |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < (quick ? 1 : 2); s++) {
        const int64_t out = shapes[s][0], in = shapes[s][1];
        float *w = randn(out * in, 1, 0.02f);             // (out, in)
        float *wd = malloc((size_t)(out * in) * 4);       // (out, in)
        float *x = randn(nmax * in, 2, 1.0f);             // (nmax, in)
        float *y = malloc((size_t)(nmax * out) * 4);      // (nmax, out)
        float *dy = randn(nmax * out, 3, 1.0f);           // (nmax, out)
        float *dx = malloc((size_t)(nmax * in) * 4);      // (nmax, in)
        if (!w || !wd || !x || !y || !dy || !dx) return 1;
        for (int p = 0; p < 2; p++) {
            const qft_quantizer_vtable *vt = vts[p];
            void *st = configure(vt, cfgs[p]);
            if (!st) return 1;
            qft_qweight *qw = NULL;
            double tq, td;
            const double t0 = qft_time_now();
            if (vt->quantize(st, "w", w, out, in, &qw, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            tq = qft_time_now() - t0;
            TIME_BEST(5, td, vt->dequantize_rows(qw, 0, out, wd, &err));
            for (int b = 0; b < 3; b++) {
                const int64_t N = batches[b];
                const int reps = N == nmax ? (small ? 20 : 5) : 20;
                /* each repetition runs the four products back to back and every column keeps
                 * its fastest: on a shared machine a burst of other work then disturbs a
                 * dense and a fused figure alike, not one column of the ratio */
                double tdense = 1e30, tf = 1e30, tdb = 1e30, tb = 1e30, t;
                for (int r = 0; r < reps; r++) {
                    TIME_BEST(1, t, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N,
                                                (int)out, (int)in, 1.0f, x, (int)in, wd, (int)in,
                                                0.0f, y, (int)out));
                    tdense = t < tdense ? t : tdense;
                    TIME_BEST(1, t, qft_qlinear_forward(vt, qw, out, in, x, N, y, out, 0.0f, &err));
                    tf = t < tf ? t : tf;
                    TIME_BEST(1, t, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N,
                                                (int)in, (int)out, 1.0f, dy, (int)out, wd, (int)in,
                                                0.0f, dx, (int)in));
                    tdb = t < tdb ? t : tdb;
                    TIME_BEST(1, t, qft_qlinear_backward_input(vt, qw, out, in, dy, out, N, dx,
                                                               0.0f, &err));
                    tb = t < tb ? t : tb;
                }
                printf("| %s | %lldx%lld | %.1f Mw/s | %.0f Mw/s | %lld | %.2f ms | %.2f ms | "
                       "%.2fx | %.2f ms | %.2f ms | %.2fx |\n",
                       p ? "hqq" : "bnb_nf4", (long long)out, (long long)in,
                       (double)(out * in) / tq / 1e6, (double)(out * in) / td / 1e6, (long long)N,
                       tdense * 1e3, tf * 1e3, tf / tdense, tdb * 1e3, tb * 1e3, tb / tdb);
            }
            vt->free_weight(qw);
            vt->close(st);
        }
        free(w); free(wd); free(x); free(y); free(dy); free(dx);
    }
    if (small) return 0;
    /* quantization error on Gaussian weights */
    const int64_t out = 1024, in = 4096;
    float *w = randn(out * in, 42, 0.02f), *wd = malloc((size_t)(out * in) * 4);
    if (!w || !wd) return 1;
    const char *ecfg[3] = {"quant: { blocksize = 64; double_quant = false; };",
                           "quant: { blocksize = 64; double_quant = true; };",
                           "quant: { nbits = 4; group_size = 64; axis = 1; };"};
    const char *ename[3] = {"NF4 (block 64)", "NF4 + double quant", "HQQ 4-bit (group 64, axis 1)"};
    printf("\n## quantization error, Gaussian weights N(0, 0.02^2), %lldx%lld\n\n",
           (long long)out, (long long)in);
    printf("| method | bits/weight | mean abs error | relative Frobenius error |\n|---|---|---|---|\n");
    for (int k = 0; k < 3; k++) {
        const qft_quantizer_vtable *vt = vts[k == 2];
        void *st = configure(vt, ecfg[k]);
        qft_qweight *qw = NULL;
        if (!st || vt->quantize(st, "w", w, out, in, &qw, &err)) return 1;
        vt->dequantize_rows(qw, 0, out, wd, &err);
        double mae = 0, num = 0, den = 0;
        for (int64_t i = 0; i < out * in; i++) {
            const double d = (double)wd[i] - w[i];
            mae += fabs(d);
            num += d * d;
            den += (double)w[i] * w[i];
        }
        printf("| %s | %.3f | %.3e | %.4f |\n", ename[k],
               8.0 * (double)vt->bytes(qw) / (double)(out * in), mae / (double)(out * in),
               sqrt(num / den));
        vt->free_weight(qw);
        vt->close(st);
    }
    (void)names;
    free(w);
    free(wd);
    return 0;
}
