/* The stateless helpers every transport uses: settings from the environment, messages,
 * the watchdog's end, the polling back-off, node fields. Compiled into the core and, as a
 * private copy, into each dlopened transport library (see transport_plugin.h): nothing here
 * may hold process-wide state. */
#include "transport_internal.h"

#include "qft_base.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int env_double(const char *name, double dflt, double *out, qft_err *err) {
    const char *s = getenv(name);
    *out = dflt;
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v > 0)) {
        return qft_err_setf(err, "%s=\"%s\": expected a number of seconds > 0", name, s);
    }
    *out = v;
    return 0;
}

static int env_size(const char *name, size_t dflt, size_t max, size_t *out, qft_err *err) {
    const char *s = getenv(name);
    *out = dflt;
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0 || v > max || s[0] == '-') {
        return qft_err_setf(err, "%s=\"%s\": expected an integer from 1 to %zu", name, s, max);
    }
    *out = (size_t)v;
    return 0;
}

int qft_transport_env_read(qft_transport_env *env, qft_err *err) {
    size_t node_size = 0;
    if (env_double("QFT_COLLECTIVE_TIMEOUT", QFT_TRANSPORT_DEFAULT_TIMEOUT_S, &env->timeout_s,
                   err) ||
        env_size("QFT_TRANSPORT_CHUNK_BYTES", QFT_TRANSPORT_DEFAULT_CHUNK_BYTES, INT_MAX,
                 &env->chunk_bytes, err) ||
        env_size("QFT_TRANSPORT_NODE_SIZE", 0, INT_MAX, &node_size, err)) {
        return -1;
    }
    env->node_size = (int)node_size;
    return 0;
}

int qft_transport_errf(const qft_transport *t, qft_err *err, const char *fmt, ...) {
    if (!err) return -1;
    int n = snprintf(err->msg, sizeof err->msg, "rank %d of %d (%s): ", t->rank, t->world,
                     t->kind);
    if (n < 0 || (size_t)n >= sizeof err->msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg + n, sizeof err->msg - (size_t)n, fmt, ap);
    va_end(ap);
    err->code = -1;
    return -1;
}

_Noreturn void qft_transport_timed_out(int rank, const char *op, double seconds) {
    fprintf(stderr, "rank %d: %s timed out after %g s; a peer has probably died\n", rank, op,
            seconds);
    fflush(stdout);
    fflush(stderr);
    exit(3);
}

void qft_transport_backoff(double waited_s) {
    if (waited_s < 2e-4) return;
    if (waited_s < 2e-2) {
        sched_yield();
        return;
    }
    /* A hundredth of the time waited so far, at most 1 ms: a slow peer costs little extra
     * latency, an idle rank little CPU. */
    double s = waited_s * 0.01;
    if (s > 1e-3) s = 1e-3;
    struct timespec ts = {0, (long)(s * 1e9)};
    nanosleep(&ts, NULL);
}

void qft_transport_node_fields(const int *ids, int world, int rank, int *node_rank,
                               int *node_size, int *node_index, int *nodes) {
    int nr = 0, ns = 0, ni = 0, nn = 0;
    for (int j = 0; j < world; j++) {
        int first = 1; /* is j the lowest rank of its machine? */
        for (int i = 0; i < j && first; i++) first = ids[i] != ids[j];
        if (first) {
            if (ids[j] == ids[rank]) ni = nn;
            nn++;
        }
        if (ids[j] == ids[rank]) {
            if (j < rank) nr++;
            ns++;
        }
    }
    *node_rank = nr;
    *node_size = ns;
    *node_index = ni;
    *nodes = nn;
}

int qft_transport_overlap(const void *a, size_t an, const void *b, size_t bn) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return an && bn && pa < pb + bn && pb < pa + an;
}
