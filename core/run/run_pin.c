#include "run_pin.h"

#include <string.h>

#include "qft_ops.h"

/* One range: locked, or counted as refused with the first reason kept. */
static void pin_add(qft_run_pins *pins, void *p, size_t bytes) {
    if (!p || !bytes || pins->n == QFT_RUN_PINS_MAX) return;
    char why[sizeof pins->why] = "";
    if (pins->ops->host_pin(p, bytes, why, sizeof why) == 0) {
        pins->p[pins->n++] = p;
        pins->bytes += bytes;
        return;
    }
    if (!pins->refused) memcpy(pins->why, why, sizeof why);
    pins->refused += bytes;
}

void qft_run_pins_offload(qft_run_pins *pins, const qft_ops *ops, const qft_run_shard *sh,
                          const qft_llama_model *m) {
    memset(pins, 0, sizeof *pins);
    if (!ops || !ops->host_pin || !ops->host_unpin) return;
    pins->ops = ops;
    const qft_run_fsdp *f = &sh->fsdp;
    if (sh->full && f->offload) {
        pin_add(pins, f->shard_t, f->n_t * sizeof(float));
        pin_add(pins, f->shard_g, f->n_t * sizeof(float));
        pin_add(pins, f->shard_f, f->n_f * sizeof(float));
        pin_add(pins, f->shard_q, f->n_q);
    } else if (!sh->full) {
        /* the frozen floats went up once; the trainable prefix goes up every step */
        pin_add(pins, m->params, m->n_trainable * sizeof(float));
        pin_add(pins, m->grads, m->n_trainable * sizeof(float));
    }
}

void qft_run_pins_release(qft_run_pins *pins) {
    for (int i = 0; i < pins->n; i++) pins->ops->host_unpin(pins->p[i]);
    pins->n = 0, pins->bytes = 0;
}
