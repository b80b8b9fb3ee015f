/* JSONL metrics writer; see metrics.h. */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* %.9g keeps a float's value exactly and a double's to nine digits: enough to plot and to
 * compare runs, short enough to read. */
static int fmt_num(char *buf, size_t size, double x) {
    if (!isfinite(x)) return snprintf(buf, size, "null");
    return snprintf(buf, size, "%.9g", x);
}

int qft_metrics_format(char *buf, size_t size, const qft_metrics_row *row) {
    char loss[40], lr[40], tps[40], gn[40], el[40];
    fmt_num(loss, sizeof loss, row->loss);
    fmt_num(lr, sizeof lr, row->lr);
    fmt_num(tps, sizeof tps, row->tokens_per_s);
    if (row->grad_norm < 0.0)
        snprintf(gn, sizeof gn, "null");
    else
        fmt_num(gn, sizeof gn, row->grad_norm);
    fmt_num(el, sizeof el, row->elapsed_s);
    int len = snprintf(buf, size,
                       "{\"step\": %ld, \"loss\": %s, \"lr\": %s, \"tokens_per_s\": %s, "
                       "\"grad_norm\": %s, \"elapsed_s\": %s}\n",
                       row->step, loss, lr, tps, gn, el);
    if (len < 0 || (size_t)len >= size) return -1;
    return len;
}

int qft_metrics_open(qft_metrics *m, const char *path, int append, qft_err *err) {
    memset(m, 0, sizeof *m);
    if (strlen(path) >= sizeof m->path)
        return qft_err_setf(err, "metrics: path too long: %s", path);
    snprintf(m->path, sizeof m->path, "%s", path);
    m->f = fopen(path, append ? "a" : "w");
    if (!m->f) return qft_err_setf(err, "metrics: cannot open %s: %s", path, strerror(errno));
    return 0;
}

int qft_metrics_write(qft_metrics *m, const qft_metrics_row *row, qft_err *err) {
    if (!m->f) return qft_err_setf(err, "metrics: %s is not open", m->path);
    char line[512];
    int len = qft_metrics_format(line, sizeof line, row);
    if (len < 0) return qft_err_setf(err, "metrics: line for step %ld too long", row->step);
    if (fwrite(line, 1, (size_t)len, m->f) != (size_t)len || fflush(m->f) != 0)
        return qft_err_setf(err, "metrics: write to %s failed: %s", m->path, strerror(errno));
    return 0;
}

int qft_metrics_close(qft_metrics *m, qft_err *err) {
    if (!m->f) return 0;
    int rc = fclose(m->f);
    m->f = NULL;
    if (rc != 0) return qft_err_setf(err, "metrics: closing %s failed: %s", m->path, strerror(errno));
    return 0;
}
