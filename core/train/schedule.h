/* Learning-rate schedules as the seed's train.py defines them: constant; linear and cosine
 * with warm-up over the first `warmup` fraction of steps; cosine decays to a floor of
 * min_lr_ratio * lr (0.1 in the seed). */
#ifndef QFT_SCHEDULE_H
#define QFT_SCHEDULE_H

typedef enum { QFT_SCHED_CONSTANT = 0, QFT_SCHED_LINEAR, QFT_SCHED_COSINE } qft_schedule_kind;

typedef struct qft_schedule {
    qft_schedule_kind kind;
    float lr;           /* peak learning rate */
    float warmup;       /* fraction of total steps, 0..1 */
    float min_lr_ratio; /* cosine floor */
    long total_steps;
} qft_schedule;

/* Learning rate for optimizer step `step` (0-based). */
float qft_schedule_lr(const qft_schedule *s, long step);
int qft_schedule_parse(const char *name, qft_schedule_kind *out); /* 0 ok, -1 unknown */

#endif
