/* The per-linear hooks of LoRA and DoRA (PEFT's semantics):
 *   LoRA: y = W x + s B A d(x), d = dropout (the identity in evaluation or at p = 0);
 *   DoRA: f = m / sg(||W + s B A||) per output row (sg: no gradient), and
 *         without dropout y = f (W x + s B A x),
 *         with dropout    y = W x + (f - 1) W d(x) + f s B A d(x)
 *         (PEFT computes the base product a second time, on the dropped input).
 * The core has put W x into y before forward and adds dy' W into dx after backward, where
 * dy' is dy as backward leaves it: DoRA without dropout scales it by f in place (the base
 * term is f W x), with dropout it stays (the base term W x is unscaled and the (f - 1)
 * part is handled here, through the base's own input-gradient product). */
#include "lora_common.h"

#include <math.h>
#include <string.h>

#define ACT_WHAT "adapter activations"

static double drop_p(const qft_adapter_linear *al, const qft_adapter_step *st) {
    return st && st->training && al->cfg->dropout > 0.0 ? al->cfg->dropout : 0.0;
}

static void free_saved(qft_adapter_linear *al) {
    const qft_ops *ops = al->base.ops;
    if (al->u) ops->free(al->u);
    if (al->h) ops->free(al->h);
    al->u = al->h = NULL;
    al->cap_u = al->cap_h = 0;
    al->saved_N = -1;
}

/* U(-bound, bound) from the top 24 bits of the stream, so a float holds it exactly */
static float uniform(const qft_services *svc, qft_rng *rng, float bound) {
    const double u = (double)(svc->rng_next(rng) >> 40) * (1.0 / 16777216.0);
    return (float)((2.0 * u - 1.0) * bound);
}

static float normal(const qft_services *svc, qft_rng *rng) {
    double u1 = ((double)(svc->rng_next(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(svc->rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* PEFT's init: kaiming_uniform_(a = sqrt(5)) is U(+-1/sqrt(fan_in)); B = 0. With
 * init_lora_weights = false both keep nn.Linear's own init (the same law, fan_in = r for
 * B). torch's generator cannot be reproduced, only the law. */
static int init_weights(qft_adapter_linear *al, qft_rng *rng, qft_err *err) {
    const qft_lora_config *c = al->cfg;
    const qft_services *svc = c->svc;
    if (!svc || !svc->rng_next)
        return qft_err_setf(err, "%s: adapter init needs the services' random numbers",
                            al->base.name);
    if (!al->base.ops->host_memory)
        return qft_err_setf(err, "%s: adapter init writes its tensors from the host; attach "
                                 "with init on the cpu backend, then move the model",
                            al->base.name);
    const size_t nA = (size_t)(al->r * al->in), nB = (size_t)(al->out * al->r);
    if (c->init == QFT_LORA_INIT_GAUSSIAN) {
        for (size_t i = 0; i < nA; i++) al->A[i] = normal(svc, rng) / (float)al->r;
    } else {
        const float bound = (float)(1.0 / sqrt((double)al->in));
        for (size_t i = 0; i < nA; i++) al->A[i] = uniform(svc, rng, bound);
    }
    if (c->init == QFT_LORA_INIT_NONE) {
        const float bound = (float)(1.0 / sqrt((double)al->r));
        for (size_t i = 0; i < nB; i++) al->B[i] = uniform(svc, rng, bound);
    } else {
        memset(al->B, 0, nB * sizeof *al->B);
    }
    /* DoRA: m = ||W + s B A|| per row, which is ||W|| when B = 0 */
    if (al->m && qft_lora_row_norms(al, al->m, err)) return -1;
    return 0;
}

static int check_param(const qft_adapter_param *p, const char *suffix, int ndim, int64_t d0,
                       int64_t d1, const char *name, qft_err *err) {
    if (strcmp(p->suffix, suffix) || p->ndim != ndim || p->shape[0] != d0 ||
        (ndim > 1 && p->shape[1] != d1) || !p->data) {
        char shape[64];
        if (ndim > 1)
            snprintf(shape, sizeof shape, "(%lld, %lld)", (long long)d0, (long long)d1);
        else
            snprintf(shape, sizeof shape, "(%lld)", (long long)d0);
        return qft_err_setf(err, "%s.%s: expected the declared tensor %s of shape %s", name,
                            p->suffix, suffix, shape);
    }
    return 0;
}

int qft_lora_attach(const void *state, const qft_linear_base *lin, qft_adapter_param *params, int n,
                    int init, qft_rng *rng, qft_adapter_linear **out, qft_err *err) {
    const qft_lora_config *c = state;
    *out = NULL;
    const int want = c->dora ? 3 : 2;
    if (n != want)
        return qft_err_setf(err, "%s: attach got %d adapter tensors, %d were declared", lin->name,
                            n, want);
    if (check_param(&params[0], "lora_A.weight", 2, c->r, lin->in, lin->name, err) ||
        check_param(&params[1], "lora_B.weight", 2, lin->out, c->r, lin->name, err) ||
        (c->dora &&
         check_param(&params[2], "lora_magnitude_vector", 1, lin->out, 0, lin->name, err)))
        return -1;
    if (c->dora && (!lin->weight_rows || !lin->forward))
        return qft_err_setf(err, "%s: DoRA needs the base's weight rows and product", lin->name);
    const qft_ops *ops = lin->ops ? lin->ops : c->svc ? c->svc->ops : NULL;
    if (!ops)
        return qft_err_setf(err, "%s: attach needs the op table of the linear's backend",
                            lin->name);
    qft_adapter_linear *al = qft_lora_alloc(c->svc, sizeof *al, "adapter state");
    if (!al) return qft_err_setf(err, "%s: out of memory", lin->name);
    memset(al, 0, sizeof *al);
    al->cfg = c;
    al->base = *lin;
    al->base.ops = ops;
    snprintf(al->name_buf, sizeof al->name_buf, "%s", lin->name ? lin->name : "?");
    al->base.name = al->name_buf;
    al->out = lin->out, al->in = lin->in, al->r = c->r, al->scale = c->scale;
    al->A = params[0].data, al->dA = params[0].grad;
    al->B = params[1].data, al->dB = params[1].grad;
    if (c->dora) {
        al->m = params[2].data, al->dm = params[2].grad;
        al->norm = ops->alloc((size_t)al->out * sizeof(float), "adapter state");
        al->f = ops->alloc((size_t)al->out * sizeof(float), "adapter state");
        if (ops->host_memory)
            al->wsq = qft_lora_alloc(c->svc, (size_t)al->out * sizeof(double), "adapter state");
        if (!al->norm || !al->f || (ops->host_memory && !al->wsq)) {
            qft_lora_detach(al);
            return qft_err_setf(err, "%s: out of memory", lin->name);
        }
        if (ops->host_memory && qft_lora_dora_prepare(al, err)) {
            qft_lora_detach(al);
            return -1;
        }
    }
    al->saved_N = -1;
    if (init && init_weights(al, rng, err)) {
        qft_lora_detach(al);
        return -1;
    }
    *out = al;
    return 0;
}

/* DoRA's output from y = W x and u = x_d A^T (lora_linear.c's header has the formulas);
 * h = W x_d + s B A x_d, which backward's dm needs, is kept in al->h when keep is set. */
static int dora_forward(qft_adapter_linear *al, const qft_adapter_step *st, const float *xd,
                        const float *u, int keep, int64_t N, float *y, int64_t ldy,
                        qft_err *err) {
    const qft_ops *ops = al->base.ops;
    qft_lora_scratch *sc = al->cfg->scratch;
    const char *name = al->base.name;
    const int64_t out = al->out, r = al->r;
    if (qft_lora_dora_refresh(al, st, err)) return -1;
    if (keep && qft_lora_reserve(ops, &al->h, &al->cap_h, (size_t)(N * out), ACT_WHAT, name, err))
        return -1;
    if (drop_p(al, st) == 0.0) {
        /* without dropout in place, y = f (W x + s B A x) in one op (h = W x + s B A x
         * kept on the way): a pass that keeps nothing (the first forward under
         * recomputation) needs no (N, out) buffer, and a pass that keeps h does the same
         * arithmetic, so recomputation rebuilds the same outputs */
        ops->lowrank_out(y, ldy, u, al->B, r, al->scale, al->f, keep ? al->h : NULL, N, out);
        return 0;
    }
    float *h = al->h; // (N, out)
    if (!keep) {
        if (qft_lora_scratch_reserve(sc, ops, &sc->out_buf, &sc->cap_out, (size_t)(N * out), name,
                                     err))
            return -1;
        h = sc->out_buf;
    }
    /* with dropout y = W x + (f - 1) W x_d + f s B A x_d: the base product again, on x_d */
    if (al->base.forward(al->base.ctx, xd, N, h, out, 0.0f, err)) return -1;
    ops->cols_axpby(y, ldy, 1.0f, h, out, NULL, -1.0f, N, out); // y -= h
    qft_lora_gemm(ops, 0, 1, N, out, r, al->scale, u, r, al->B, r, 1.0f, h, out);
    ops->cols_axpby(y, ldy, 1.0f, h, out, al->f, 0.0f, N, out); // y += f h
    return 0;
}

int qft_lora_forward(qft_adapter_linear *al, const qft_adapter_step *st, const float *x, int64_t N,
                     float *y, int64_t ldy, qft_err *err) {
    const qft_lora_config *c = al->cfg;
    const qft_ops *ops = al->base.ops;
    qft_lora_scratch *sc = c->scratch;
    const char *name = al->base.name;
    const int keep = !(st && st->no_grad);
    const double p = drop_p(al, st);
    const int64_t out = al->out, in = al->in, r = al->r;
    if (N <= 0) return 0;

    const float *xd = x; // (N, in)
    if (p > 0.0) {
        if (qft_lora_scratch_reserve(sc, ops, &sc->in_buf, &sc->cap_in, (size_t)(N * in), name,
                                     err))
            return -1;
        ops->dropout(qft_lora_dropout_key(st, al->base.layer, name), p, x, N, in, sc->in_buf, 0);
        xd = sc->in_buf;
    }
    /* what backward needs is kept per linear; a forward without backward uses scratch */
    float *u; // (N, r) = x_d A^T
    if (keep) {
        if (qft_lora_reserve(ops, &al->u, &al->cap_u, (size_t)(N * r), ACT_WHAT, name, err))
            return -1;
        u = al->u;
    } else {
        if (qft_lora_scratch_reserve(sc, ops, &sc->r_buf, &sc->cap_r, (size_t)(N * r), name, err))
            return -1;
        u = sc->r_buf;
    }
    qft_lora_gemm(ops, 0, 1, N, r, in, 1.0f, xd, in, al->A, in, 0.0f, u, r);

    if (!c->dora)
        qft_lora_gemm(ops, 0, 1, N, out, r, al->scale, u, r, al->B, r, 1.0f, y, ldy);
    else if (dora_forward(al, st, xd, u, keep, N, y, ldy, err))
        return -1;
    if (keep) {
        al->saved_N = N;
        al->saved_step = st ? *st : (qft_adapter_step){0};
    }
    return 0;
}

int qft_lora_backward(qft_adapter_linear *al, const qft_adapter_step *st, const float *x, float *dy,
                      int64_t ldy, int64_t N, float *dx, qft_err *err) {
    const qft_lora_config *c = al->cfg;
    const qft_ops *ops = al->base.ops;
    qft_lora_scratch *sc = c->scratch;
    const char *name = al->base.name;
    const int64_t out = al->out, in = al->in, r = al->r;
    (void)st; /* the forward's step is the one whose mask was drawn */
    if (N <= 0) return 0;
    if (al->saved_N != N || !al->u || (c->dora && !al->h))
        return qft_err_setf(err,
                            "%s: adapter backward over %lld rows without a forward that "
                            "kept its activations (saved: %lld rows)",
                            name, (long long)N, (long long)al->saved_N);
    if (!al->dA || !al->dB || (c->dora && !al->dm))
        return qft_err_setf(err, "%s: adapter backward without gradient buffers", name);
    const qft_adapter_step *fs = &al->saved_step;
    const double p = drop_p(al, fs);
    const uint64_t key = p > 0.0 ? qft_lora_dropout_key(fs, al->base.layer, name) : 0;

    /* g (N, ldg): the gradient of the LoRA branch's output, s B A x_d */
    const float *g = dy;
    int64_t ldg = ldy;
    if (c->dora) {
        float *gd = dy;
        if (p > 0.0) { /* dy itself still feeds the unscaled base term */
            if (qft_lora_scratch_reserve(sc, ops, &sc->out_buf, &sc->cap_out, (size_t)(N * out),
                                         name, err))
                return -1;
            gd = sc->out_buf, ldg = out;
        }
        /* dm (out) += sum over rows of dy * h / norm, each column's sum in the backend's
         * fixed order, and gd = f dy from the same read of dy (in place without dropout) */
        ops->col_dot_scale(al->dm, gd, ldg, dy, ldy, al->h, out, al->norm, al->f, N, out);
        g = gd;
    }
    if (qft_lora_scratch_reserve(sc, ops, &sc->r_buf, &sc->cap_r, (size_t)(N * r), name, err))
        return -1;
    float *du = sc->r_buf; // (N, r) = s g B
    qft_lora_gemm(ops, 1, 0, out, r, N, al->scale, g, ldg, al->u, r, 1.0f, al->dB, r);
    qft_lora_gemm(ops, 0, 0, N, r, out, al->scale, g, ldg, al->B, r, 0.0f, du, r);

    if (p == 0.0) {
        qft_lora_gemm(ops, 1, 0, r, in, N, 1.0f, du, r, x, in, 1.0f, al->dA, in);
        qft_lora_gemm(ops, 0, 0, N, in, r, 1.0f, du, r, al->A, in, 1.0f, dx, in);
    } else {
        if (qft_lora_scratch_reserve(sc, ops, &sc->in_buf, &sc->cap_in, (size_t)(N * in), name,
                                     err))
            return -1;
        float *t = sc->in_buf; // (N, in): x_d, then the gradient of x_d
        ops->dropout(key, p, x, N, in, t, 0);
        qft_lora_gemm(ops, 1, 0, r, in, N, 1.0f, du, r, t, in, 1.0f, al->dA, in);
        float beta = 0.0f;
        if (c->dora) {
            /* the (f - 1) W x_d term: its input gradient through the base's product */
            float *gm = sc->out_buf; // (N, out), free again: g was used above
            ops->cols_axpby(gm, out, 0.0f, dy, ldy, al->f, -1.0f, N, out); // (f - 1) dy
            if (al->base.backward_input(al->base.ctx, gm, out, N, t, 0.0f, err)) return -1;
            beta = 1.0f;
        }
        qft_lora_gemm(ops, 0, 0, N, in, r, 1.0f, du, r, al->A, in, beta, t, in);
        ops->dropout(key, p, t, N, in, dx, 1);
    }
    free_saved(al);
    return 0;
}

void qft_lora_detach(qft_adapter_linear *al) {
    if (!al) return;
    const qft_services *svc = al->cfg->svc;
    const qft_ops *ops = al->base.ops;
    free_saved(al);
    if (al->norm) ops->free(al->norm);
    if (al->f) ops->free(al->f);
    qft_lora_free(svc, al->wsq);
    qft_lora_free(svc, al);
}
