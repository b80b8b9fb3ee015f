#include "qft_base.h"

#include <stdatomic.h>

/* The level is process-wide like stderr itself. */
static _Atomic int g_level = QFT_LOG_INFO;

void qft_log_set_level(int level) { g_level = level; }

void qft_log(int level, const char *fmt, ...) {
    static const char *const tag[] = {"error", "warning", "info", "debug"};
    if (level > g_level) return;
    va_list ap;
    va_start(ap, fmt);
    if (level <= QFT_LOG_WARN) fprintf(stderr, "qft: %s: ", tag[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
