/* The seed's three learning-rate schedules; formulas and sources in schedule.h. */
#include "schedule.h"

#include "optim.h"

#include <math.h>
#include <string.h>

long qft_schedule_warmup_steps(const qft_schedule *s) {
    if (s->kind == QFT_SCHED_CONSTANT || s->total_steps <= 0 || !(s->warmup > 0.0f)) return 0;
    return (long)floor((double)s->total_steps * qft_optim_float_decimal(s->warmup));
}

float qft_schedule_lr(const qft_schedule *s, long step) {
    const double lr = qft_optim_float_decimal(s->lr);
    if (s->kind == QFT_SCHED_CONSTANT) return s->lr;
    const long w = qft_schedule_warmup_steps(s);
    const long total = s->total_steps;
    double f;
    if (step < w) {
        f = (double)step / (double)(w > 1 ? w : 1);
    } else if (s->kind == QFT_SCHED_LINEAR) {
        const long span = total - w > 1 ? total - w : 1;
        f = (double)(total - step) / (double)span;
        if (f < 0.0) f = 0.0;
    } else {
        const long span = total - w > 1 ? total - w : 1;
        const double progress = (double)(step - w) / (double)span;
        const double floor_ratio = qft_optim_float_decimal(s->min_lr_ratio);
        f = (cos(M_PI * progress) + 1.0) * 0.5 * (1.0 - floor_ratio) + floor_ratio;
    }
    return (float)(lr * f);
}

int qft_schedule_parse(const char *name, qft_schedule_kind *out) {
    if (!name) return -1;
    static const char *const names[] = {"constant", "linear", "cosine"};
    for (int k = 0; k < 3; k++)
        if (strcmp(name, names[k]) == 0) {
            *out = (qft_schedule_kind)k;
            return 0;
        }
    return -1;
}

const char *qft_schedule_name(qft_schedule_kind kind) {
    switch (kind) {
    case QFT_SCHED_CONSTANT: return "constant";
    case QFT_SCHED_LINEAR: return "linear";
    case QFT_SCHED_COSINE: return "cosine";
    }
    return "?";
}
