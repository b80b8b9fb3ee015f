/* Optimizers over one flat fp32 buffer of trainable parameters, with torch's exact update
 * formulas (torch.optim.AdamW: decoupled weight decay, bias correction; torch.optim.SGD
 * with optional momentum), and global-norm gradient clipping. */
#ifndef QFT_OPTIM_H
#define QFT_OPTIM_H

#include "qft_base.h"

typedef enum { QFT_OPT_ADAMW = 0, QFT_OPT_SGD = 1 } qft_optim_kind;

typedef struct qft_optim_config {
    qft_optim_kind kind;
    float beta1, beta2, eps; /* AdamW; the seed uses (0.9, 0.95) and 1e-5 */
    float weight_decay;      /* decoupled for AdamW; L2 (added to the gradient) for SGD */
    float momentum;          /* SGD */
} qft_optim_config;

typedef struct qft_optim {
    qft_optim_config cfg;
    size_t n;  /* trainable floats */
    float *m;  /* (n) first moment, or SGD momentum buffer */
    float *v;  /* (n) second moment (AdamW) */
    long step; /* updates taken */
} qft_optim;

int qft_optim_init(qft_optim *o, const qft_optim_config *cfg, size_t n, qft_err *err);
/* One update of params[0..n) from grads[0..n) at learning rate lr. */
void qft_optim_step(qft_optim *o, float *params, const float *grads, float lr);
void qft_optim_free(qft_optim *o);
/* Global L2 norm of grads; when max_norm > 0 and the norm exceeds it, scales grads by
 * max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_ does. Returns the norm. */
float qft_optim_clip_grad_norm(float *grads, size_t n, float max_norm);

#endif
