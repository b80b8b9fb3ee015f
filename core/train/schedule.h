/* Learning-rate schedules as the seed's train.py defines them (AnswerDotAI/fsdp_qlora,
 * train.py: `num_warmup_steps = int(num_scheduler_steps * 0.1)`, then
 * transformers.get_linear_schedule_with_warmup, get_cosine_one_cycle_scheduler with
 * min_lr_fraction 0.1, or transformers.get_constant_schedule).
 *
 * With W = floor(total_steps * warmup) and s the 0-based optimizer step (torch's LambdaLR
 * gives step s the factor f(s); the seed calls scheduler.step() after optimizer.step()):
 *   constant: f = 1 (no warm-up, as get_constant_schedule)
 *   linear:   f = s / max(1, W)                                 for s < W
 *             f = max(0, (total - s) / max(1, total - W))       otherwise
 *   cosine:   f = s / max(1, W)                                 for s < W
 *             p = (s - W) / max(1, total - W)
 *             f = (cos(pi p) + 1) / 2 * (1 - min_lr_ratio) + min_lr_ratio  otherwise
 * and lr(s) = lr * f(s), computed in double. The cosine formula equals transformers'
 * get_cosine_with_min_lr_schedule_with_warmup(num_cycles=0.5, min_lr_rate=min_lr_ratio).
 * Like the seed, a step past total_steps is not clamped (linear stays at 0, cosine turns
 * back up); the training loop never asks for one. Note that step 0 of a warm-up runs at
 * lr 0, as in the seed. */
#ifndef QFT_SCHEDULE_H
#define QFT_SCHEDULE_H

typedef enum { QFT_SCHED_CONSTANT = 0, QFT_SCHED_LINEAR, QFT_SCHED_COSINE } qft_schedule_kind;

typedef struct qft_schedule {
    qft_schedule_kind kind;
    float lr;           /* peak learning rate */
    float warmup;       /* fraction of total steps, 0..1 (the seed: 0.1) */
    float min_lr_ratio; /* cosine floor (the seed: 0.1) */
    long total_steps;
} qft_schedule;

/* Learning rate for optimizer step `step` (0-based). */
float qft_schedule_lr(const qft_schedule *s, long step);
/* W above: floor(total_steps * warmup), with warmup read as the decimal it was written as
 * (0.1, not 0.100000001), so W matches Python's int(total * 0.1). 0 for constant. */
long qft_schedule_warmup_steps(const qft_schedule *s);
int qft_schedule_parse(const char *name, qft_schedule_kind *out); /* 0 ok, -1 unknown */
const char *qft_schedule_name(qft_schedule_kind kind);

#endif
