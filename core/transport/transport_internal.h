/* What the transport implementations share: settings from the environment, counters, the
 * watchdog's exit and error-message prefixes. Not part of any public API. */
#ifndef QFT_TRANSPORT_INTERNAL_H
#define QFT_TRANSPORT_INTERNAL_H

#include "transport.h"

#include <stdint.h>

#define QFT_TRANSPORT_DEFAULT_TIMEOUT_S 300.0
/* Large enough that per-call overhead vanishes, small enough that the reduction's scratch
 * (world * chunk) stays modest, and far below INT_MAX, MPI's count limit. */
#define QFT_TRANSPORT_DEFAULT_CHUNK_BYTES ((size_t)64 << 20)

typedef struct qft_transport_env {
    double timeout_s;   /* $QFT_COLLECTIVE_TIMEOUT: watchdog limit per collective */
    size_t chunk_bytes; /* $QFT_TRANSPORT_CHUNK_BYTES: largest piece per MPI call (tests
                         * force a few bytes to exercise the splitting) */
    int node_size;      /* $QFT_TRANSPORT_NODE_SIZE: pretend machines of k ranks; 0 = real */
} qft_transport_env;

int qft_transport_env_read(qft_transport_env *env, qft_err *err);

/* Fills err with "rank R of W (kind): " followed by the formatted text; returns -1. */
int qft_transport_errf(const qft_transport *t, qft_err *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* The watchdog's end: prints "rank R: <op> timed out after S s; a peer has probably died"
 * and exits with status 3. */
_Noreturn void qft_transport_timed_out(int rank, const char *op, double seconds);

/* The back-off between polls of an unfinished collective: spin first (a collective between
 * live peers usually completes in microseconds), then yield, then sleep up to 1 ms so that
 * oversubscribed ranks leave the cores to the peers they wait for. */
void qft_transport_backoff(double waited_s);

/* Adds one call of `c` moving n elements of elt bytes (bytes_per_rank for all_gather and
 * broadcast, with elt = 1) to t's counters, as qft_transport_stats documents, with the
 * time since t0. */
void qft_transport_count(const qft_transport *t, qft_coll c, size_t n, size_t elt, double t0);

/* Node fields of the members of a communicator from each member's machine id (ids in
 * member rank order (world)): index among the members on my machine, their count, my
 * machine's index (machines ordered by lowest member rank), the machine count. */
void qft_transport_node_fields(const int *ids, int world, int rank, int *node_rank,
                               int *node_size, int *node_index, int *nodes);

/* 1 when [a, a+an) and [b, b+bn) share a byte. */
int qft_transport_overlap(const void *a, size_t an, const void *b, size_t bn);

#endif
