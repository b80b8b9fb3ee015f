/* AdamW and SGD over one flat fp32 buffer, and global-norm clipping, reproducing torch's
 * CPU arithmetic. Scalars that torch computes in Python (double) are computed in double
 * here and rounded to float exactly where torch's kernels receive them; the element-wise
 * work is the backend's (qft_ops adamw, sgd, sumsq, scale), for host memory core/cpu's
 * kernels in cpu_optim.c, built without contraction. The translation unit is compiled
 * with -std=c11, so GCC does not contract a*b+c on its own (ISO mode implies
 * -ffp-contract=off) and every rounding of the scalars is deliberate. */
#include "optim.h"

#include "cpu_optim.h"
#include "qft_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* State memory: the host allocator, or the backend's (zeroed there). */
static float *state_alloc(const qft_ops *ops, size_t n) {
    const size_t bytes = (n ? n : 1) * sizeof(float); // (n)
    if (!ops) return qft_mem_calloc(bytes, "optimizer state");
    float *p = ops->alloc(bytes, "optimizer state");
    if (p) ops->zero(p, n ? n : 1);
    return p;
}
static void state_free(const qft_ops *ops, float *p) {
    if (!p) return;
    if (ops)
        ops->free(p);
    else
        qft_mem_free(p);
}

int qft_optim_init(qft_optim *o, const qft_optim_config *cfg, size_t n, qft_err *err) {
    return qft_optim_init_on(o, cfg, n, NULL, err);
}

int qft_optim_init_on(qft_optim *o, const qft_optim_config *cfg, size_t n, const qft_ops *ops,
                      qft_err *err) {
    memset(o, 0, sizeof *o);
    if (ops && (!ops->adamw || !ops->sgd || !ops->sumsq || !ops->scale))
        return qft_err_setf(err, "optimizer: backend \"%s\" has no optimizer entries",
                            ops->name);
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
    o->ops = ops;
    int need_m = cfg->kind == QFT_OPT_ADAMW || cfg->momentum != 0.0f;
    if (need_m) {
        o->m = state_alloc(ops, n); // (n)
        if (!o->m)
            return qft_err_setf(err, "optimizer: out of %s memory for %zu floats of state",
                                ops ? ops->name : "host", n);
    }
    if (cfg->kind == QFT_OPT_ADAMW) {
        o->v = state_alloc(ops, n); // (n)
        if (!o->v) {
            state_free(ops, o->m);
            o->m = NULL;
            return qft_err_setf(err, "optimizer: out of %s memory for %zu floats of state",
                                ops ? ops->name : "host", n);
        }
    }
    return 0;
}

void qft_optim_free(qft_optim *o) {
    if (!o) return;
    state_free(o->ops, o->m);
    state_free(o->ops, o->v);
    o->m = o->v = NULL;
}

/* One moment buffer (n floats) from src's memory to dst's. */
static void state_copy(const qft_ops *dops, float *dst, const qft_ops *sops, const float *src,
                       size_t n) {
    if (!dst || !src || !n) return;
    const size_t bytes = n * sizeof(float); // (n)
    if (dops && sops)
        dops->copy(dst, src, n);
    else if (dops)
        dops->upload(dst, src, bytes);
    else if (sops)
        sops->download(dst, src, bytes);
    else
        memcpy(dst, src, bytes);
}

void qft_optim_copy_state(qft_optim *dst, const qft_optim *src) {
    const size_t n = dst->n < src->n ? dst->n : src->n;
    state_copy(dst->ops, dst->m, src->ops, src->m, n);
    state_copy(dst->ops, dst->v, src->ops, src->v, n);
    dst->step = src->step;
}

static void adamw_step(qft_optim *o, float *p, const float *g, double lr) {
    const double b1 = qft_optim_float_decimal(o->cfg.beta1);
    const double b2 = qft_optim_float_decimal(o->cfg.beta2);
    const double eps = qft_optim_float_decimal(o->cfg.eps);
    const double wd = qft_optim_float_decimal(o->cfg.weight_decay);
    const double t = (double)o->step; /* already incremented, as torch's step_t */

    /* The scalars exactly as torch forms them: Python doubles, cast to float by the kernel. */
    qft_ops_adamw_scalars sc;
    sc.decay_on = wd != 0.0;
    sc.decay = (float)(1.0 - lr * wd);
    sc.w1 = (float)(1.0 - b1); /* lerp weight */
    sc.b2 = (float)b2;
    sc.c2 = (float)(1.0 - b2);
    const double bc1 = 1.0 - pow(b1, t);
    const double bc2 = 1.0 - pow(b2, t);
    sc.neg_step = (float)(-(lr / bc1));
    sc.bc2_sqrt = (float)pow(bc2, 0.5);
    sc.eps = (float)eps;
    /* torch's lerp takes the other branch for weights >= 0.5, to stay exact at weight 1. */
    sc.small = fabsf(sc.w1) < 0.5f;
    sc.w1m = sc.w1 - 1.0f;
    if (o->ops)
        o->ops->adamw(p, g, o->m, o->v, o->n, &sc);
    else
        qft_cpu_adamw(p, g, o->m, o->v, o->n, &sc);
}

static void sgd_step(qft_optim *o, float *p, const float *g, double lr) {
    const double wd = qft_optim_float_decimal(o->cfg.weight_decay);
    const double mom = qft_optim_float_decimal(o->cfg.momentum);
    qft_ops_sgd_scalars sc;
    sc.wd_on = wd != 0.0, sc.mom_on = mom != 0.0;
    sc.wd = (float)wd, sc.mom = (float)mom, sc.neg_lr = (float)(-lr);
    sc.first = o->step == 1; /* torch's momentum buffer starts as a copy of the grad */
    if (o->ops)
        o->ops->sgd(p, g, o->m, o->n, &sc);
    else
        qft_cpu_sgd(p, g, o->m, o->n, &sc);
}

void qft_optim_step(qft_optim *o, float *params, const float *grads, float lr) {
    o->step++;
    const double lr_d = qft_optim_float_decimal(lr);
    if (o->cfg.kind == QFT_OPT_ADAMW)
        adamw_step(o, params, grads, lr_d);
    else
        sgd_step(o, params, grads, lr_d);
}

double qft_optim_grad_sumsq(const float *grads, size_t n) { return qft_cpu_sumsq(grads, n); }

float qft_optim_clip_coef(float norm, float max_norm) {
    if (!(max_norm > 0.0f)) return 1.0f;
    /* torch: max_norm / (total_norm + 1e-6) on a float32 tensor, clamped at 1; a Python
     * number divided by a tensor is evaluated as tensor.reciprocal() * number. */
    const float c = (1.0f / (norm + (float)1e-6)) * (float)qft_optim_float_decimal(max_norm);
    return c < 1.0f ? c : 1.0f;
}

void qft_optim_scale(float *grads, size_t n, float coef) { qft_cpu_scale(grads, n, coef); }

float qft_optim_clip_grad_norm(float *grads, size_t n, float max_norm) {
    return qft_optim_clip_grad_norm_on(NULL, grads, n, max_norm);
}

float qft_optim_clip_grad_norm_on(const qft_ops *ops, float *grads, size_t n, float max_norm) {
    const double ss = ops ? ops->sumsq(grads, n) : qft_cpu_sumsq(grads, n);
    const float norm = (float)sqrt(ss);
    const float coef = qft_optim_clip_coef(norm, max_norm);
    if (ops)
        ops->scale(grads, n, coef);
    else
        qft_cpu_scale(grads, n, coef);
    return norm;
}
