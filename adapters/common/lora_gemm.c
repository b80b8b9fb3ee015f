/* GEMM and memory for the adapter hooks. Every product goes through the op table of the
 * backend the linear lives on (qft_linear_base.ops), whose GEMM splits over the same
 * threads as the rest of the step; activations and scratch are that backend's memory,
 * while the per-linear state itself is host memory from the services. */
#include "lora_common.h"
#include "qft_ops.h"

#include <stdlib.h>

void qft_lora_gemm(const qft_ops *ops, int transA, int transB, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    ops->gemm(transA, transB, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
              (int)ldc);
}

void *qft_lora_alloc(const qft_services *svc, size_t bytes, const char *what) {
    if (svc && svc->alloc) return svc->alloc(bytes ? bytes : 1, what);
    return malloc(bytes ? bytes : 1);
}

void qft_lora_free(const qft_services *svc, void *p) {
    if (!p) return;
    if (svc && svc->free)
        svc->free(p);
    else
        free(p);
}

int qft_lora_reserve(const qft_ops *ops, float **buf, size_t *cap, size_t n, const char *what,
                     const char *name, qft_err *err) {
    if (*buf && *cap >= n) return 0;
    if (*buf) ops->free(*buf);
    *buf = NULL;
    *cap = 0;
    *buf = ops->alloc((n ? n : 1) * sizeof(float), what);
    if (!*buf) return qft_err_setf(err, "%s: out of %s memory for %s (%zu floats)", name,
                                   ops->name, what, n);
    *cap = n;
    return 0;
}

void qft_lora_scratch_release(qft_lora_scratch *sc) {
    if (!sc->ops) return;
    float **bufs[] = {&sc->in_buf, &sc->out_buf, &sc->r_buf, &sc->tile, &sc->norm_buf};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (*bufs[i]) sc->ops->free(*bufs[i]);
        *bufs[i] = NULL;
    }
    sc->cap_in = sc->cap_out = sc->cap_r = sc->cap_tile = sc->cap_norm = 0;
    sc->ops = NULL;
}

int qft_lora_scratch_reserve(qft_lora_scratch *sc, const qft_ops *ops, float **buf, size_t *cap,
                             size_t n, const char *name, qft_err *err) {
    /* the shared scratch follows the linears to whichever backend they run on */
    if (sc->ops != ops) {
        qft_lora_scratch_release(sc);
        sc->ops = ops;
    }
    return qft_lora_reserve(ops, buf, cap, n, "adapter scratch", name, err);
}
