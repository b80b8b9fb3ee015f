/* The code the lora and dora plugins share: DoRA is LoRA plus a trainable magnitude per
 * output row, so one configuration, one per-linear state and one pair of hooks serve both,
 * switched by `dora`. Linked as a static library into each plugin (a plugin may include
 * only the SDK headers, so this cannot live in core/).
 *
 * Notation: a linear has W (out, in); the adapter adds s B A with A (r, in), B (out, r),
 * s = alpha / r (rsLoRA: alpha / sqrt(r)); N rows of input per call. */
#ifndef QFT_LORA_COMMON_H
#define QFT_LORA_COMMON_H

#include "qft_ops.h"
#include "qft_sdk.h"

#include <regex.h>

/* The seven linears of a Llama block, in the order qft lists them. */
enum {
    QFT_LORA_Q = 0, QFT_LORA_K, QFT_LORA_V, QFT_LORA_O, QFT_LORA_GATE, QFT_LORA_UP,
    QFT_LORA_DOWN, QFT_LORA_N_MODULES
};
extern const char *const qft_lora_module_names[QFT_LORA_N_MODULES];

/* init_lora_weights: true (kaiming-uniform A, zero B), "gaussian" (A ~ N(0, 1/r), zero B),
 * false (both as nn.Linear initialises them, so the adapter starts non-zero). */
enum { QFT_LORA_INIT_DEFAULT = 0, QFT_LORA_INIT_GAUSSIAN, QFT_LORA_INIT_NONE };

/* Buffers that live only inside one hook call, shared by every linear of one configured
 * adapter so that their size is one linear's, not the model's. The hooks of one state
 * therefore must not run concurrently (the engine runs linears one at a time). They are
 * memory of the backend `ops`, the one the linears last ran on. */
typedef struct qft_lora_scratch {
    const qft_ops *ops;
    float *in_buf;   // (cap_in) x_d or an input gradient, (N, in)
    float *out_buf;  // (cap_out) a product of output width, (N, out)
    float *r_buf;    // (cap_r) du, (N, r)
    float *tile;     // (cap_tile) rows of W (+ s B A) for DoRA's norms, (tile_rows, in)
    float *norm_buf; // (cap_norm) DoRA's norm products: A W^T (r, out), B G (out, r), G (r, r)
    size_t cap_in, cap_out, cap_r, cap_tile, cap_norm; /* floats */
} qft_lora_scratch;

typedef struct qft_lora_config {
    const qft_services *svc;
    int dora;
    int r;
    double alpha;
    double dropout;      /* p in [0, 1) */
    int rslora;
    int init;            /* QFT_LORA_INIT_* */
    float scale;         /* s */
    unsigned target_mask; /* bit per QFT_LORA_* module when targets are names */
    char **target_list;  /* the list as given (PEFT matches name or ".name" suffix) */
    int n_targets;
    char *target_regex;  /* a string that is not a keyword: PEFT's full-match regex */
    regex_t re;
    int has_re;
    int tile_rows;       /* rows per tile of DoRA's exact norms; 0 = about 1 MiB per tile */
    qft_lora_scratch *scratch;
} qft_lora_config;

/* Per-linear state. */
struct qft_adapter_linear {
    const qft_lora_config *cfg;
    qft_linear_base base;  /* a copy; name points at name_buf */
    char name_buf[160];
    int64_t out, in;
    int r;
    float scale;
    float *A, *B, *m;      // (r, in), (out, r), (out) DoRA only
    float *dA, *dB, *dm;   // gradients, same shapes
    /* kept from forward to the backward that consumes them (then freed) */
    float *u;              // (N, r) = x_d A^T
    float *h;              // (N, out) DoRA: W x_d + s B A x_d
    size_t cap_u, cap_h;   /* floats */
    int64_t saved_N;       /* rows of the saved activations, -1 when none */
    qft_adapter_step saved_step;
    /* DoRA: ||W + s B A|| per row and f = m / norm (backend memory). With host memory the
     * norm is recomputed only when A or B changed (norm_key, a hash of them), by an
     * expansion that needs ||W||^2 per row (wsq, host memory, once at attach: W is frozen);
     * on other backends it is recomputed exactly once per non-zero params_version of the
     * step (norm_version), at every forward when that is 0 (lora_dora.c says why). */
    float *norm, *f;       // (out), (out)
    double *wsq;           // (out) host memory only
    uint64_t norm_key;     /* host memory: the hash of A and B the norm is of */
    uint64_t norm_version; /* other backends: the params_version the norm is of */
    int norm_valid;        /* 0 until the first norm, and after attach or prepare */
    long norm_computes;    /* norms computed since attach (a count for tests and benches) */
};

/* ---- configuration (lora_config.c) --------------------------------------------------- */
extern const char *const qft_lora_config_keys[];
int qft_lora_configure(const qft_services *svc, const config_setting_t *section, int dora,
                       void **state, qft_err *err);
int qft_lora_targets(const void *state, const qft_linear_base *lin);
int qft_lora_declare(const void *state, const qft_linear_base *lin, qft_adapter_param *params,
                     int *n, qft_err *err);
int qft_lora_peft_config(const void *state, char *buf, size_t size, qft_err *err);
void qft_lora_close(void *state);

/* ---- per-linear hooks (lora_linear.c) ------------------------------------------------- */
int qft_lora_attach(const void *state, const qft_linear_base *lin, qft_adapter_param *params,
                    int n, int init, qft_rng *rng, qft_adapter_linear **al, qft_err *err);
int qft_lora_forward(qft_adapter_linear *al, const qft_adapter_step *st, const float *x,
                     int64_t N, float *y, int64_t ldy, qft_err *err);
int qft_lora_backward(qft_adapter_linear *al, const qft_adapter_step *st, const float *x,
                      float *dy, int64_t ldy, int64_t N, float *dx, qft_err *err);
void qft_lora_detach(qft_adapter_linear *al);

/* ---- DoRA's norm and merging (lora_dora.c) ------------------------------------------- */
/* norm (out) = ||W + s B A|| per row, exactly: the base's lowrank_row_norms when it has
 * one, else from tiles of rows of W + s B A. */
int qft_lora_row_norms(qft_adapter_linear *al, float *norm, qft_err *err);
/* al->wsq (out) = ||W||^2 per row, tile by tile. */
int qft_lora_dora_prepare(qft_adapter_linear *al, qft_err *err);
/* Refreshes al->norm unless A and B are unchanged since last time (host memory: their
 * hash; other backends: st's non-zero params_version), then al->f = m / norm. st may be
 * NULL (version 0). */
int qft_lora_dora_refresh(qft_adapter_linear *al, const qft_adapter_step *st, qft_err *err);
int qft_lora_merge_rows(qft_adapter_linear *al, int64_t row0, int64_t n, float *dst,
                        qft_err *err);

/* ---- dropout (lora_dropout.c) --------------------------------------------------------- */
/* The per-call key of the counter-based mask (qft_ops.h's dropout entry applies it): a hash
 * of (seed, step, micro, layer, name). */
uint64_t qft_lora_dropout_key(const qft_adapter_step *st, int layer, const char *name);

/* ---- GEMM and memory (lora_gemm.c) ------------------------------------------------------ */
/* C (M, N) = alpha op(A) op(B) + beta C, row-major: ops->gemm, skipping empty products. */
void qft_lora_gemm(const qft_ops *ops, int transA, int transB, int64_t M, int64_t N,
                   int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                   int64_t ldb, float beta, float *C, int64_t ldc);
/* Host memory for the adapter's own state (the services' accounted allocator). */
void *qft_lora_alloc(const qft_services *svc, size_t bytes, const char *what);
void qft_lora_free(const qft_services *svc, void *p);
/* Grows *buf, memory of backend ops, to hold at least n floats (contents lost); *cap in
 * floats. */
int qft_lora_reserve(const qft_ops *ops, float **buf, size_t *cap, size_t n, const char *what,
                     const char *name, qft_err *err);
/* qft_lora_reserve for one of the shared scratch buffers, which first moves the whole
 * scratch to backend ops when it lives on another one. */
int qft_lora_scratch_reserve(qft_lora_scratch *sc, const qft_ops *ops, float **buf, size_t *cap,
                             size_t n, const char *name, qft_err *err);
/* Frees every scratch buffer (with the backend that allocated them). */
void qft_lora_scratch_release(qft_lora_scratch *sc);

#endif
