/* Optimizers over one flat fp32 buffer of trainable parameters, with torch's exact update
 * formulas (torch.optim.AdamW: decoupled weight decay, bias correction; torch.optim.SGD
 * with optional momentum), and global-norm gradient clipping.
 *
 * The order of floating-point operations follows torch's single-tensor (foreach=False)
 * CPU path (torch/optim/adam.py `_single_tensor_adam`, sgd.py `_single_tensor_sgd`, torch
 * 2.x), with Python-side scalars computed in double and rounded to float where torch
 * casts them, so fp32 results agree with torch to about one ulp. */
#ifndef QFT_OPTIM_H
#define QFT_OPTIM_H

#include "qft_base.h"

struct qft_ops;

typedef enum { QFT_OPT_ADAMW = 0, QFT_OPT_SGD = 1 } qft_optim_kind;

typedef struct qft_optim_config {
    qft_optim_kind kind;
    float beta1, beta2, eps; /* AdamW; the seed uses (0.9, 0.95) and 1e-5 */
    float weight_decay;      /* decoupled for AdamW; L2 (added to the gradient) for SGD */
    float momentum;          /* SGD; dampening 0, nesterov off */
} qft_optim_config;

typedef struct qft_optim {
    qft_optim_config cfg;
    size_t n;  /* trainable floats */
    float *m;  /* (n) first moment, or SGD momentum buffer (NULL for SGD without momentum) */
    float *v;  /* (n) second moment (AdamW), NULL for SGD */
    long step; /* updates taken */
    /* The backend m and v live on, whose optimizer entries update them (with params and
     * grads there too); NULL is host memory (core/cpu's kernels, called directly). */
    const struct qft_ops *ops;
} qft_optim;

/* Checks the hyper-parameters (betas in [0, 1), eps >= 0, weight_decay >= 0, momentum >= 0)
 * and allocates zeroed state. */
int qft_optim_init(qft_optim *o, const qft_optim_config *cfg, size_t n, qft_err *err);
/* The same with the state in `ops`'s memory (NULL = host, as qft_optim_init); step then
 * takes params and grads in that memory too and runs the backend's adamw/sgd entries with
 * scalars made here, the same bits as on the host for the CPU kernels. */
int qft_optim_init_on(qft_optim *o, const qft_optim_config *cfg, size_t n,
                      const struct qft_ops *ops, qft_err *err);
/* Copies m, v and the step count from src to dst, two optimizers of the same config and n
 * on any backends (host or o->ops): download, upload or copy. For training-state
 * checkpoints, which read and write the state in host memory. */
void qft_optim_copy_state(qft_optim *dst, const qft_optim *src);
/* One update of params[0..n) from grads[0..n) at learning rate lr. grads is not changed. */
void qft_optim_step(qft_optim *o, float *params, const float *grads, float lr);
void qft_optim_free(qft_optim *o);
/* "adamw" or "sgd" (the config's train.optimizer); 0 ok, -1 unknown. */
int qft_optim_parse(const char *name, qft_optim_kind *out);

/* Global L2 norm of grads; when max_norm > 0 and the norm exceeds it, scales grads by
 * max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_ does. Returns the norm.
 * The sum of squares is accumulated in double over fixed chunks, so the result does not
 * depend on the number of threads. */
float qft_optim_clip_grad_norm(float *grads, size_t n, float max_norm);
/* The pieces of clipping, for a sharded buffer: each rank sums its squares, the ranks
 * all-reduce the sums, and every rank scales its shard by the same coefficient. */
double qft_optim_grad_sumsq(const float *grads, size_t n);
/* torch's clamped coefficient min(1, max_norm / (norm + 1e-6)) in fp32; 1 when max_norm <= 0. */
float qft_optim_clip_coef(float norm, float max_norm);
void qft_optim_scale(float *grads, size_t n, float coef);
/* qft_optim_clip_grad_norm over `ops`'s memory (NULL = host) through its sumsq and scale
 * entries: the same bits as on the host. */
float qft_optim_clip_grad_norm_on(const struct qft_ops *ops, float *grads, size_t n,
                                  float max_norm);

/* The double a user's decimal (0.9, 1e-5) means, recovered from the float that holds it:
 * the shortest decimal that rounds to f. torch gets these as Python doubles. */
double qft_optim_float_decimal(float f);

#endif
