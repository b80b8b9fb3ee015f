/* Progress line and end summary; see progress.h. */
#include "progress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fmt_duration(char *buf, size_t size, double s) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, size, "?");
        return;
    }
    unsigned long t = (unsigned long)(s + 0.5);
    unsigned long h = t / 3600, m = (t / 60) % 60, sec = t % 60;
    if (h > 0)
        snprintf(buf, size, "%lu:%02lu:%02lu", h, m, sec);
    else
        snprintf(buf, size, "%lu:%02lu", m, sec);
}

/* 950, 1.23k, 45.6k, 1.23M: a rate readable at a glance. */
static void fmt_rate(char *buf, size_t size, double x) {
    if (!isfinite(x) || x < 0)
        snprintf(buf, size, "?");
    else if (x < 1e3)
        snprintf(buf, size, "%.0f", x);
    else if (x < 1e6)
        snprintf(buf, size, "%.3gk", x / 1e3);
    else
        snprintf(buf, size, "%.3gM", x / 1e6);
}

static void fmt_bytes(char *buf, size_t size, size_t b) {
    const double x = (double)b;
    if (x >= 1024.0 * 1024.0 * 1024.0)
        snprintf(buf, size, "%.2f GiB", x / (1024.0 * 1024.0 * 1024.0));
    else if (x >= 1024.0 * 1024.0)
        snprintf(buf, size, "%.1f MiB", x / (1024.0 * 1024.0));
    else
        snprintf(buf, size, "%.1f KiB", x / 1024.0);
}

void qft_progress_init(qft_progress *p, FILE *out, long total_steps, long every,
                       qft_progress_mode mode) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->total = total_steps;
    p->every = every > 0 ? every : 1;
    p->t_start = qft_time_now();
    if (mode == QFT_PROGRESS_TTY) {
        p->tty = 1;
    } else if (mode == QFT_PROGRESS_AUTO && out) {
        const char *term = getenv("TERM");
        p->tty = isatty(fileno(out)) && !(term && strcmp(term, "dumb") == 0);
    }
}

int qft_progress_format(char *buf, size_t size, long step, long total, double loss, double lr,
                        double tokens_per_s, double elapsed_s, double eta_s) {
    char tps[32], el[32], eta[32];
    fmt_rate(tps, sizeof tps, tokens_per_s);
    fmt_duration(el, sizeof el, elapsed_s);
    fmt_duration(eta, sizeof eta, eta_s);
    int len = snprintf(buf, size, "step %ld/%ld | loss %.4f | lr %.3e | %s tok/s | %s elapsed | eta %s",
                       step, total, loss, lr, tps, el, eta);
    if (len < 0 || (size_t)len >= size) return -1;
    return len;
}

void qft_progress_update(qft_progress *p, long step, double loss, double lr, double tokens_per_s) {
    if (!p->out) return;
    const int last = p->total > 0 && step >= p->total; /* total <= 0: unknown length */
    if (!p->tty && step % p->every != 0 && !last) return;
    const double elapsed = qft_time_now() - p->t_start;
    const long done = step - p->step0;
    /* The average rate since the start, not the last step's: one slow step (a checkpoint
     * save) should not swing the estimate. */
    const double eta = done > 0 && p->total > 0 ? elapsed / (double)done * (double)(p->total - step)
                                                : -1.0;
    char line[256];
    int len = qft_progress_format(line, sizeof line, step, p->total, loss, lr, tokens_per_s,
                                  elapsed, eta);
    if (len < 0) return;
    if (p->tty) {
        /* Blank what a longer previous line left behind. */
        int pad = p->last_len > len ? p->last_len - len : 0;
        fprintf(p->out, "\r%s%*s", line, pad, "");
        p->line_open = 1;
        p->last_len = len;
        if (last) qft_progress_finish(p);
    } else {
        fprintf(p->out, "%s\n", line);
    }
    fflush(p->out);
}

void qft_progress_finish(qft_progress *p) {
    if (p->out && p->line_open) {
        fputc('\n', p->out);
        fflush(p->out);
    }
    p->line_open = 0;
    p->last_len = 0;
}

void qft_progress_summary_memory(qft_run_summary *s) {
    s->peak_mem = qft_mem_peak();
    s->peak_rss = qft_mem_peak_rss();
}

int qft_progress_summary_format(char *buf, size_t size, const qft_run_summary *s) {
    char el[32], tps[32], mem[32], rss[32];
    fmt_duration(el, sizeof el, s->elapsed_s);
    fmt_rate(tps, sizeof tps, s->tokens_per_s);
    fmt_bytes(mem, sizeof mem, s->peak_mem);
    fmt_bytes(rss, sizeof rss, s->peak_rss);
    int len = snprintf(buf, size,
                       "done: %ld steps in %s | loss %.4f -> %.4f | %s tok/s | peak mem %s (rss %s)",
                       s->steps, el, s->first_loss, s->last_loss, tps, mem, rss);
    if (len < 0 || (size_t)len >= size) return -1;
    return len;
}
