/* The run's metrics as JSON Lines: one object per optimizer step, written and flushed as
 * one line, so a crash keeps every step that was logged. Non-finite numbers (a diverged
 * loss) are written as null, since JSON has no NaN. */
#ifndef QFT_METRICS_H
#define QFT_METRICS_H

#include "qft_base.h"

typedef struct qft_metrics_row {
    long step;           /* 1-based optimizer step */
    double loss;         /* mean loss over the step's micro-batches */
    double lr;           /* learning rate used for this step */
    double tokens_per_s; /* trained tokens per second over this step */
    double grad_norm;    /* before clipping; negative = not computed (written as null) */
    double elapsed_s;    /* since the start of training */
} qft_metrics_row;

typedef struct qft_metrics {
    FILE *f;
    char path[4096];
} qft_metrics;

/* Opens path for writing (truncating) or, with append (a resumed run), for appending. */
int qft_metrics_open(qft_metrics *m, const char *path, int append, qft_err *err);
/* Writes {"step":..,"loss":..,"lr":..,"tokens_per_s":..,"grad_norm":..,"elapsed_s":..}\n
 * and flushes it. */
int qft_metrics_write(qft_metrics *m, const qft_metrics_row *row, qft_err *err);
/* Formats a row as its JSON line (with the newline) into buf; returns the length, or -1
 * when buf is too small. */
int qft_metrics_format(char *buf, size_t size, const qft_metrics_row *row);
int qft_metrics_close(qft_metrics *m, qft_err *err);

#endif
