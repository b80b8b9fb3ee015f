/* AdamW and SGD over one flat fp32 buffer, and global-norm clipping, reproducing torch's
 * CPU arithmetic. Scalars that torch computes in Python (double) are computed in double
 * here and rounded to float exactly where torch's kernels receive them; element-wise work
 * is float, fused multiply-add only where torch's vectorised kernels fuse (lerp, add with
 * alpha). The translation unit is compiled with -std=c11, so GCC does not contract a*b+c
 * on its own (ISO mode implies -ffp-contract=off) and every rounding here is deliberate. */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Below this many elements the OpenMP fork costs more than the loop. */
#define QFT_OPTIM_PAR_MIN 32768
/* Chunk of the norm's partial sums: fixed, so the summation order (and the result) is the
 * same whatever the thread count. */
#define QFT_OPTIM_NORM_CHUNK 65536

double qft_optim_float_decimal(float f) {
    /* torch receives the user's decimal (0.9, 1e-5) as a Python double; our config holds
     * the nearest float. The shortest decimal that rounds to the same float is what the
     * user wrote, so its double is torch's scalar to the last bit. */
    if (!isfinite(f) || f == 0.0f) return (double)f;
    char buf[48];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) return d;
    }
    return (double)f;
}

int qft_optim_parse(const char *name, qft_optim_kind *out) {
    if (!name) return -1;
    if (strcmp(name, "adamw") == 0) {
        *out = QFT_OPT_ADAMW;
        return 0;
    }
    if (strcmp(name, "sgd") == 0) {
        *out = QFT_OPT_SGD;
        return 0;
    }
    return -1;
}

int qft_optim_init(qft_optim *o, const qft_optim_config *cfg, size_t n, qft_err *err) {
    memset(o, 0, sizeof *o);
    if (cfg->kind != QFT_OPT_ADAMW && cfg->kind != QFT_OPT_SGD)
        return qft_err_setf(err, "optimizer: unknown kind %d", (int)cfg->kind);
    if (cfg->kind == QFT_OPT_ADAMW) {
        if (!(cfg->beta1 >= 0.0f && cfg->beta1 < 1.0f) || !(cfg->beta2 >= 0.0f && cfg->beta2 < 1.0f))
            return qft_err_setf(err, "optimizer adamw: train.betas = [%g, %g]: each must be in [0, 1)",
                                (double)cfg->beta1, (double)cfg->beta2);
        if (!(cfg->eps >= 0.0f))
            return qft_err_setf(err, "optimizer adamw: eps = %g must be >= 0", (double)cfg->eps);
    }
    if (!(cfg->weight_decay >= 0.0f))
        return qft_err_setf(err, "optimizer: train.weight_decay = %g must be >= 0",
                            (double)cfg->weight_decay);
    if (cfg->kind == QFT_OPT_SGD && !(cfg->momentum >= 0.0f))
        return qft_err_setf(err, "optimizer sgd: momentum = %g must be >= 0", (double)cfg->momentum);
    o->cfg = *cfg;
    o->n = n;
    size_t bytes = (n ? n : 1) * sizeof(float); // (n)
    int need_m = cfg->kind == QFT_OPT_ADAMW || cfg->momentum != 0.0f;
    if (need_m) {
        o->m = qft_mem_calloc(bytes, "optimizer state");
        if (!o->m) return qft_err_setf(err, "optimizer: out of memory for %zu floats of state", n);
    }
    if (cfg->kind == QFT_OPT_ADAMW) {
        o->v = qft_mem_calloc(bytes, "optimizer state");
        if (!o->v) {
            qft_mem_free(o->m);
            o->m = NULL;
            return qft_err_setf(err, "optimizer: out of memory for %zu floats of state", n);
        }
    }
    return 0;
}

void qft_optim_free(qft_optim *o) {
    if (!o) return;
    qft_mem_free(o->m);
    qft_mem_free(o->v);
    o->m = o->v = NULL;
}

static void adamw_step(qft_optim *o, float *p, const float *g, double lr) {
    const double b1 = qft_optim_float_decimal(o->cfg.beta1);
    const double b2 = qft_optim_float_decimal(o->cfg.beta2);
    const double eps = qft_optim_float_decimal(o->cfg.eps);
    const double wd = qft_optim_float_decimal(o->cfg.weight_decay);
    const double t = (double)o->step; /* already incremented, as torch's step_t */

    /* The scalars exactly as torch forms them: Python doubles, cast to float by the kernel. */
    const int decay_on = wd != 0.0;
    const float decay = (float)(1.0 - lr * wd);
    const float w1 = (float)(1.0 - b1); /* lerp weight */
    const float b2f = (float)b2;
    const float c2 = (float)(1.0 - b2);
    const double bc1 = 1.0 - pow(b1, t);
    const double bc2 = 1.0 - pow(b2, t);
    const float neg_step = (float)(-(lr / bc1));
    const float bc2_sqrt = (float)pow(bc2, 0.5);
    const float epsf = (float)eps;
    /* torch's lerp takes the other branch for weights >= 0.5, to stay exact at weight 1. */
    const int small = fabsf(w1) < 0.5f;
    const float w1m = w1 - 1.0f;
    float *m = o->m, *v = o->v;
    const long long n = (long long)o->n;

#pragma omp parallel for schedule(static) if (n >= QFT_OPTIM_PAR_MIN)
    for (long long i = 0; i < n; i++) {
        float pi = p[i];
        const float gi = g[i];
        if (decay_on) pi = pi * decay;
        const float mi = m[i];
        const float mn = small ? fmaf(w1, gi - mi, mi) : fmaf(w1m, gi - mi, gi);
        float vi = v[i] * b2f;
        vi = vi + c2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + epsf;
        m[i] = mn;
        v[i] = vi;
        p[i] = pi + neg_step * mn / denom;
    }
}

static void sgd_step(qft_optim *o, float *p, const float *g, double lr) {
    const double wd = qft_optim_float_decimal(o->cfg.weight_decay);
    const double mom = qft_optim_float_decimal(o->cfg.momentum);
    const int wd_on = wd != 0.0, mom_on = mom != 0.0;
    const float wdf = (float)wd, momf = (float)mom, neg_lr = (float)(-lr);
    const int first = o->step == 1; /* torch's momentum buffer starts as a copy of the grad */
    float *buf = o->m;
    const long long n = (long long)o->n;

#pragma omp parallel for schedule(static) if (n >= QFT_OPTIM_PAR_MIN)
    for (long long i = 0; i < n; i++) {
        float d = g[i];
        if (wd_on) d = fmaf(wdf, p[i], d);
        if (mom_on) {
            d = first ? d : buf[i] * momf + d;
            buf[i] = d;
        }
        p[i] = fmaf(neg_lr, d, p[i]);
    }
}

void qft_optim_step(qft_optim *o, float *params, const float *grads, float lr) {
    o->step++;
    const double lr_d = qft_optim_float_decimal(lr);
    if (o->cfg.kind == QFT_OPT_ADAMW)
        adamw_step(o, params, grads, lr_d);
    else
        sgd_step(o, params, grads, lr_d);
}

double qft_optim_grad_sumsq(const float *grads, size_t n) {
    const long long n_chunks = (long long)((n + QFT_OPTIM_NORM_CHUNK - 1) / QFT_OPTIM_NORM_CHUNK);
    if (n_chunks <= 1) {
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += (double)grads[i] * (double)grads[i];
        return s;
    }
    double *part = malloc((size_t)n_chunks * sizeof(double)); // (n_chunks)
    if (!part) {
        /* No memory for the partials: the serial sum is slower but the same kind of answer. */
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += (double)grads[i] * (double)grads[i];
        return s;
    }
#pragma omp parallel for schedule(static)
    for (long long c = 0; c < n_chunks; c++) {
        size_t lo = (size_t)c * QFT_OPTIM_NORM_CHUNK;
        size_t hi = lo + QFT_OPTIM_NORM_CHUNK < n ? lo + QFT_OPTIM_NORM_CHUNK : n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)grads[i] * (double)grads[i];
        part[c] = s;
    }
    double s = 0.0;
    for (long long c = 0; c < n_chunks; c++) s += part[c];
    free(part);
    return s;
}

float qft_optim_clip_coef(float norm, float max_norm) {
    if (!(max_norm > 0.0f)) return 1.0f;
    /* torch: max_norm / (total_norm + 1e-6) on a float32 tensor, clamped at 1; a Python
     * number divided by a tensor is evaluated as tensor.reciprocal() * number. */
    const float c = (1.0f / (norm + (float)1e-6)) * (float)qft_optim_float_decimal(max_norm);
    return c < 1.0f ? c : 1.0f;
}

void qft_optim_scale(float *grads, size_t n, float coef) {
    if (coef == 1.0f) return;
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (nn >= QFT_OPTIM_PAR_MIN)
    for (long long i = 0; i < nn; i++) grads[i] *= coef;
}

float qft_optim_clip_grad_norm(float *grads, size_t n, float max_norm) {
    const float norm = (float)sqrt(qft_optim_grad_sumsq(grads, n));
    qft_optim_scale(grads, n, qft_optim_clip_coef(norm, max_norm));
    return norm;
}
