/* Accounted aligned allocation. A small header before each block records its size, so
 * the run's memory report (current, peak) comes from the allocator itself rather than
 * from guesses. Counters are atomics: OpenMP regions allocate too. */
#include "qft_base.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define QFT_ALIGN 64

/* Process-wide counters are the one piece of global state besides the plugin registry:
 * memory is a process-wide resource and the report must see every allocation. */
static _Atomic size_t g_current, g_peak;

typedef struct {
    size_t bytes;
    size_t pad[7]; /* keep the user pointer 64-byte aligned */
} mem_header;

void *qft_mem_alloc(size_t bytes, const char *what) {
    (void)what;
    void *raw = NULL;
    if (posix_memalign(&raw, QFT_ALIGN, sizeof(mem_header) + bytes) != 0) return NULL;
    mem_header *h = raw;
    h->bytes = bytes;
    size_t now = atomic_fetch_add(&g_current, bytes) + bytes;
    size_t peak = atomic_load(&g_peak);
    while (now > peak && !atomic_compare_exchange_weak(&g_peak, &peak, now)) {
    }
    return (char *)raw + sizeof(mem_header);
}

void *qft_mem_calloc(size_t bytes, const char *what) {
    void *p = qft_mem_alloc(bytes, what);
    if (p) memset(p, 0, bytes);
    return p;
}

void qft_mem_free(void *p) {
    if (!p) return;
    mem_header *h = (mem_header *)((char *)p - sizeof(mem_header));
    atomic_fetch_sub(&g_current, h->bytes);
    free(h);
}

size_t qft_mem_current(void) { return atomic_load(&g_current); }
size_t qft_mem_peak(void) { return atomic_load(&g_peak); }
void qft_mem_reset_peak(void) { atomic_store(&g_peak, atomic_load(&g_current)); }

size_t qft_mem_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}
