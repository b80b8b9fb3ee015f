/* The live progress line of a run, and its one-line end summary.
 *
 * On a terminal the line is redrawn in place with \r at every update; anywhere else (a
 * log file, CI) it is printed as a plain line every `every` steps and at the last step,
 * so logs stay readable. */
#ifndef QFT_PROGRESS_H
#define QFT_PROGRESS_H

#include "qft_base.h"

typedef enum {
    QFT_PROGRESS_AUTO = 0, /* redraw when the stream is a terminal (and TERM is not "dumb") */
    QFT_PROGRESS_TTY,      /* always redraw with \r */
    QFT_PROGRESS_PLAIN     /* always plain lines */
} qft_progress_mode;

typedef struct qft_progress {
    FILE *out;
    int tty;        /* redraw mode chosen at init */
    long total;     /* optimizer steps in the run */
    long every;     /* plain mode: print every this many steps */
    long step0;     /* steps already done when timing started (a resumed run) */
    double t_start; /* qft_time_now() at init */
    int line_open;  /* a redrawn line is on screen without its newline */
    int last_len;   /* its length, to blank leftovers of a longer previous line */
} qft_progress;

void qft_progress_init(qft_progress *p, FILE *out, long total_steps, long every,
                       qft_progress_mode mode);
/* After optimizer step `step` (1-based). */
void qft_progress_update(qft_progress *p, long step, double loss, double lr, double tokens_per_s);
/* Ends a redrawn line with its newline; call before printing anything else. */
void qft_progress_finish(qft_progress *p);
/* The line's text without \r or newline:
 * "step 12/100 | loss 2.3456 | lr 1.000e-05 | 1.23k tok/s | 0:12 elapsed | eta 1:30".
 * eta_s < 0 prints "eta ?". Returns the length, or -1 when buf is too small. */
int qft_progress_format(char *buf, size_t size, long step, long total, double loss, double lr,
                        double tokens_per_s, double elapsed_s, double eta_s);

/* What the end summary reports. */
typedef struct qft_run_summary {
    long steps;
    double first_loss, last_loss;
    double tokens_per_s; /* over the whole run */
    double elapsed_s;
    size_t peak_mem; /* qft_mem_peak(): bytes held through qft_mem_alloc at the worst moment */
    size_t peak_rss; /* qft_mem_peak_rss(): the process's peak resident set */
} qft_run_summary;

/* Fills peak_mem and peak_rss from the allocator and the kernel. */
void qft_progress_summary_memory(qft_run_summary *s);
/* "done: 100 steps in 1:02:03 | loss 2.3456 -> 1.2345 | 1.23k tok/s | peak mem 1.50 GiB
 * (rss 2.00 GiB)". Returns the length, or -1 when buf is too small. */
int qft_progress_summary_format(char *buf, size_t size, const qft_run_summary *s);

#endif
