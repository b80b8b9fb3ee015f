/* The run's transport and shard plugin (see run_shard.h). */
#include "run_shard.h"

#include "optim.h"
#include "transport.h"

#include <math.h>
#include <string.h>

int qft_run_shard_open_transport(qft_run_shard *sh, qft_err *err) {
    memset(sh, 0, sizeof *sh);
    return qft_transport_open("auto", &sh->t, err);
}

int qft_run_shard_configure(qft_run_shard *sh, const qft_run_config *rc, const qft_registry *reg,
                            qft_err *err) {
    sh->name = rc->shard.plugin;
    if (rc->shard.cpu_offload)
        return qft_err_setf(err, "%s: shard.cpu_offload = true: CPU offload is not implemented "
                                 "in this version (the CPU backend keeps everything in host "
                                 "memory already); remove the key",
                            rc->file);
    const int identity_ok = strcmp(rc->shard.plugin, "no_shard") == 0 && sh->t->world == 1;
    const qft_plugin *p = qft_registry_find(reg, QFT_KIND_SHARD, rc->shard.plugin,
                                            identity_ok ? NULL : err);
    if (!p) {
        /* One process without the no_shard module (an install that left it out): nothing
         * would cross a wire anyway. */
        if (identity_ok) return 0;
        return -1;
    }
    const qft_shard_vtable *vt = p->desc->vtable;
    if (qft_config_check_keys(rc->sec_shard, vt->config_keys, err) ||
        vt->configure(qft_registry_services(), rc->sec_shard, &sh->state, err))
        return -1;
    sh->vt = vt;
    return 0;
}

int qft_run_shard_plan(qft_run_shard *sh, size_t n, qft_err *err) {
    sh->n = n;
    sh->offset = 0, sh->len = n;
    if (!sh->vt) return 0;
    if (sh->vt->plan(sh->state, sh->t, n, &sh->offset, &sh->len, err)) return -1;
    if (sh->offset > n || sh->len > n - sh->offset)
        return qft_err_setf(err, "shard plugin \"%s\": rank %d's slice [%zu, %zu) is outside "
                                 "the %zu trainable floats",
                            sh->name, sh->t->rank, sh->offset, sh->offset + sh->len, n);
    return 0;
}

int qft_run_shard_reduce_grads(qft_run_shard *sh, float *grads, qft_err *err) {
    if (!sh->vt) return 0;
    return sh->vt->reduce_grads(sh->state, sh->t, grads, sh->n, err);
}

int qft_run_shard_clip(qft_run_shard *sh, float *grads, float max_norm, float *norm,
                       qft_err *err) {
    if (sh->len == sh->n) {
        /* the whole sum is here (no_shard, or one rank): the one-process code path, bits
         * and all */
        *norm = qft_optim_clip_grad_norm(grads, sh->n, max_norm);
        return 0;
    }
    float *slice = grads + sh->offset; // (len)
    /* (2): squares and floats of the slices. A hybrid strategy holds each slice on several
     * machines alike; the floats summed over ranks say how many times, to count it once. */
    double v[2] = {qft_optim_grad_sumsq(slice, sh->len), (double)sh->len};
    if (qft_transport_all_reduce_f64(sh->t, v, 2, QFT_REDUCE_SUM, err)) return -1;
    const double copies = sh->n ? v[1] / (double)sh->n : 1.0;
    if (copies < 1.0 || copies != floor(copies))
        return qft_err_setf(err, "shard plugin \"%s\": the ranks' slices hold %.0f floats, not "
                                 "a whole number of copies of the %zu trainable ones",
                            sh->name, v[1], sh->n);
    *norm = (float)sqrt(v[0] / copies);
    qft_optim_scale(slice, sh->len, qft_optim_clip_coef(*norm, max_norm));
    return 0;
}

int qft_run_shard_gather_params(qft_run_shard *sh, float *params, qft_err *err) {
    if (!sh->vt) return 0;
    return sh->vt->gather_params(sh->state, sh->t, params, sh->n, err);
}

int qft_run_shard_sum_f64(qft_run_shard *sh, double *v, size_t n, qft_err *err) {
    if (sh->t->world == 1) return 0;
    return qft_transport_all_reduce_f64(sh->t, v, n, QFT_REDUCE_SUM, err);
}

void qft_run_shard_close(qft_run_shard *sh, int failed, const char *why) {
    if (failed && sh->t && sh->t->world > 1) sh->t->vt->abort(sh->t, 1, why);
    if (sh->vt && sh->state) sh->vt->close(sh->state);
    if (sh->t) sh->t->vt->close(sh->t);
    memset(sh, 0, sizeof *sh);
}
