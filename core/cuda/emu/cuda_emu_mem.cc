// The emulator's device memory, guarded as compute-sanitizer's memcheck guards a GPU's:
// every allocation is its own mapping, ending (to 256 bytes) at a guard page, and all of
// device memory is PROT_NONE while host code runs. A kernel, a copy or a GEMM runs between
// device_enter and device_leave; its first touch of an allocation faults, and the handler
// opens that allocation (read/write) until device_leave closes it again. So:
//   - host code that reads or writes device memory (on a GPU, a crash or garbage) aborts
//     with the address and a backtrace;
//   - a kernel that runs past an allocation's end (into its guard page), before its start,
//     into an uncommitted range of a virtual reservation, or into freed memory aborts with
//     what it hit;
//   - new memory is 0xff bytes (NaN as floats and bf16), so a kernel that reads what was
//     never written shows it in its results, as it would with a GPU's leftover memory.
#include "cuda_emu_internal.h"

#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <map>

namespace qft_emu {
namespace {

enum region_kind { ALLOC, VM };

// A committed range of a reservation: memory behind it (cuMemMap), and whether the device
// may access it yet (cuMemSetAccess; without it a GPU faults).
struct chunk {
    size_t bytes;
    int device;        // where its physical memory is (cuMemCreate's location)
    unsigned access;   // the devices that may access it, a bit each (cuMemSetAccess)
};

struct region {
    region_kind kind;
    uintptr_t map_start;  // the whole mapping (ALLOC: data pages, then the guard page)
    size_t map_len;
    uintptr_t base;       // ALLOC: the pointer handed out; VM: the aligned reservation
    size_t bytes;         // ALLOC: as asked; VM: the reservation's size
    size_t data_pages;    // ALLOC: bytes of the data pages (before the guard)
    int device;           // ALLOC: the device current at cudaMalloc
    std::map<uintptr_t, chunk> *chunks; // VM: committed ranges, by start (chunk_at)
};

typedef std::pair<const uintptr_t, chunk> chunk_entry;

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; // the region table's writers
std::map<uintptr_t, region> regions;               // by map_start
size_t live_bytes[MAX_DEVICES]; // per device
size_t page;

// Ranges opened during the current device section, closed by device_leave. The handler
// appends under a spin lock (a copy on another host thread may fault at the same time as a
// kernel); no allocation in it.
const int OPEN_CAP = 1 << 16;
struct open_range {
    uintptr_t start;
    size_t len;
} opened[OPEN_CAP];
int n_opened;
std::atomic_flag open_lock = ATOMIC_FLAG_INIT;
std::atomic<int> in_device(0);
struct sigaction previous;
pthread_once_t once = PTHREAD_ONCE_INIT;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

void say(const char *msg) {
    const ssize_t r = write(2, msg, strlen(msg));
    (void)r;
}

[[noreturn]] void report(const char *msg) {
    say("qft cuda emulator: ");
    say(msg);
    say("\n");
    void *frames[48];
    const int n = backtrace(frames, 48);
    backtrace_symbols_fd(frames, n, 2);
    signal(SIGABRT, SIG_DFL);
    abort();
}

// The region holding addr, or NULL (no lock: writers never run while a kernel does).
const region *find(uintptr_t addr) {
    auto it = regions.upper_bound(addr);
    if (it == regions.begin()) return NULL;
    --it;
    const region &r = it->second;
    return addr < r.map_start + r.map_len ? &r : NULL;
}

// The committed chunk of VM region r holding addr, or NULL.
chunk_entry *chunk_at(const region *r, uintptr_t addr) {
    auto it = r->chunks->upper_bound(addr);
    if (it == r->chunks->begin()) return NULL;
    --it;
    return addr < it->first + it->second.bytes ? &*it : NULL;
}

// Whether [a, a + bytes) of VM region r is whole committed chunks, back to back.
bool whole_chunks(const region *r, uintptr_t a, size_t bytes) {
    uintptr_t at = a;
    for (auto it = r->chunks->find(a); at < a + bytes && it != r->chunks->end() && it->first == at; ++it)
        at += it->second.bytes;
    return at == a + bytes;
}

void open_push(uintptr_t start, size_t len) {
    while (open_lock.test_and_set(std::memory_order_acquire)) {
    }
    if (n_opened == OPEN_CAP) {
        open_lock.clear(std::memory_order_release);
        report("more than 65536 device ranges touched in one kernel");
    }
    opened[n_opened++] = open_range{start, len};
    open_lock.clear(std::memory_order_release);
}

void on_fault(int sig, siginfo_t *si, void *uc) {
    const uintptr_t a = (uintptr_t)si->si_addr;
    const region *r = find(a);
    char msg[512];
    if (!r) {
        if (in_device.load()) {
            snprintf(msg, sizeof msg,
                     "a kernel, copy or GEMM faulted at %p, outside any live device "
                     "allocation (a host pointer, or device memory already freed)",
                     (void *)a);
            report(msg);
        }
        // not ours: the fault goes to whoever handled it before
        sigaction(SIGSEGV, &previous, NULL);
        (void)sig, (void)uc;
        return;
    }
    if (!in_device.load()) {
        if (r->kind == ALLOC)
            snprintf(msg, sizeof msg,
                     "host code touched device memory at %p (byte %lld of a %zu-byte "
                     "allocation at %p): on a GPU this is a crash",
                     (void *)a, (long long)(a - r->base), r->bytes, (void *)r->base);
        else
            snprintf(msg, sizeof msg,
                     "host code touched device virtual memory at %p (byte %lld of a %zu-byte "
                     "reservation at %p): on a GPU this is a crash",
                     (void *)a, (long long)(a - r->base), r->bytes, (void *)r->base);
        report(msg);
    }
    if (r->kind == ALLOC) {
        if (a >= r->map_start + r->data_pages) {
            snprintf(msg, sizeof msg,
                     "device access out of bounds at %p: %lld bytes past the end of a "
                     "%zu-byte allocation at %p",
                     (void *)a, (long long)(a - (r->base + r->bytes)), r->bytes, (void *)r->base);
            report(msg);
        }
        if (a < r->base) {
            snprintf(msg, sizeof msg,
                     "device access out of bounds at %p: %lld bytes before the start of a "
                     "%zu-byte allocation at %p",
                     (void *)a, (long long)(r->base - a), r->bytes, (void *)r->base);
            report(msg);
        }
        mprotect((void *)r->map_start, r->data_pages, PROT_READ | PROT_WRITE);
        open_push(r->map_start, r->data_pages);
        return;
    }
    if (const chunk_entry *ch = chunk_at(r, a)) {
        if (ch->second.access) { // which device touches it is checked at the launch
            mprotect((void *)ch->first, ch->second.bytes, PROT_READ | PROT_WRITE);
            open_push(ch->first, ch->second.bytes);
            return;
        }
        snprintf(msg, sizeof msg,
                 "device access at %p, byte %lld of a %zu-byte virtual reservation at %p: "
                 "memory is mapped there but the device was given no access "
                 "(cuMemSetAccess)",
                 (void *)a, (long long)(a - r->base), r->bytes, (void *)r->base);
        report(msg);
    }
    snprintf(msg, sizeof msg,
             "device access at %p, byte %lld of a %zu-byte virtual reservation at %p, where "
             "no memory is committed (cuMemMap)",
             (void *)a, (long long)(a - r->base), r->bytes, (void *)r->base);
    report(msg);
}

void install(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous);
}

void ready() { pthread_once(&once, install); }

size_t env_total() {
    const char *e = getenv("QFT_CUDA_EMU_MEM_GIB");
    const long gib = e && *e ? atol(e) : 16;
    return (size_t)(gib > 0 ? gib : 16) << 30;
}

// Fills fresh memory with the poison, opening it for the moment.
void poison(uintptr_t start, size_t len) {
    mprotect((void *)start, len, PROT_READ | PROT_WRITE);
    memset((void *)start, 0xff, len);
    mprotect((void *)start, len, PROT_NONE);
}

} // namespace

void device_enter() {
    ready();
    in_device.fetch_add(1);
}

void device_leave() {
    if (in_device.fetch_sub(1) != 1) return;
    for (int i = 0; i < n_opened; i++)
        mprotect((void *)opened[i].start, opened[i].len, PROT_NONE);
    n_opened = 0;
}

size_t mem_total_bytes() { return env_total(); }

size_t mem_live_bytes(int device) {
    pthread_mutex_lock(&lock);
    const size_t b = live_bytes[device];
    pthread_mutex_unlock(&lock);
    return b;
}

void *mem_alloc(size_t bytes, int device) {
    ready();
    const size_t data = round_up(bytes ? bytes : 1, 256);
    pthread_mutex_lock(&lock);
    if (live_bytes[device] + bytes > env_total()) {
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    const size_t pages = round_up(data, page);
    void *m = mmap(NULL, pages + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) {
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    region r;
    memset(&r, 0, sizeof r);
    r.kind = ALLOC;
    r.map_start = (uintptr_t)m;
    r.map_len = pages + page;
    r.data_pages = pages;
    r.base = r.map_start + pages - data;
    r.bytes = bytes;
    r.device = device;
    regions[r.map_start] = r;
    live_bytes[device] += bytes;
    pthread_mutex_unlock(&lock);
    poison(r.map_start, pages);
    return (void *)r.base;
}

int mem_free(void *p) {
    pthread_mutex_lock(&lock);
    const region *r = find((uintptr_t)p);
    if (!r || r->kind != ALLOC || r->base != (uintptr_t)p) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    munmap((void *)r->map_start, r->map_len);
    live_bytes[r->device] -= r->bytes;
    regions.erase(r->map_start);
    pthread_mutex_unlock(&lock);
    return 0;
}

// The device of [p, p + bytes) (an allocation's, or a committed chunk's physical
// location), and through *access the devices that may touch it; -1 when the range is not
// wholly in one allocation or one committed chunk open to some device.
int mem_where(const void *p, size_t bytes, unsigned *access) {
    const uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    const region *r = find(a);
    int dev = -1;
    unsigned acc = 0;
    if (r && r->kind == ALLOC) {
        if (a >= r->base && a + bytes <= r->base + r->bytes) dev = r->device, acc = 1u << r->device;
    } else if (r) {
        const chunk_entry *ch = chunk_at(r, a);
        if (ch && ch->second.access && a + bytes <= ch->first + ch->second.bytes)
            dev = ch->second.device, acc = ch->second.access;
    }
    pthread_mutex_unlock(&lock);
    if (access) *access = acc;
    return dev;
}

bool mem_is_device(const void *p, size_t bytes) { return mem_where(p, bytes, NULL) >= 0; }

bool mem_on(const void *p, size_t bytes, int device) {
    unsigned acc = 0;
    return mem_where(p, bytes, &acc) >= 0 && (acc >> device & 1u);
}

size_t vm_granularity() { return (size_t)2 << 20; } // an H100's minimum granularity

void *vm_reserve(size_t bytes) {
    ready();
    const size_t g = vm_granularity();
    bytes = round_up(bytes, g);
    void *m = mmap(NULL, bytes + g, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return NULL;
    region r;
    memset(&r, 0, sizeof r);
    r.kind = VM;
    r.map_start = (uintptr_t)m;
    r.map_len = bytes + g;
    r.base = round_up(r.map_start, g);
    r.bytes = bytes;
    r.chunks = new std::map<uintptr_t, chunk>();
    pthread_mutex_lock(&lock);
    regions[r.map_start] = r;
    pthread_mutex_unlock(&lock);
    return (void *)r.base;
}

int vm_free(void *p, size_t bytes) {
    pthread_mutex_lock(&lock);
    const region *r = find((uintptr_t)p);
    if (!r || r->kind != VM || r->base != (uintptr_t)p || round_up(bytes, vm_granularity()) != r->bytes ||
        !r->chunks->empty()) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    munmap((void *)r->map_start, r->map_len);
    delete r->chunks;
    regions.erase(r->map_start);
    pthread_mutex_unlock(&lock);
    return 0;
}

int vm_map(void *p, size_t bytes, int device) {
    const uintptr_t a = (uintptr_t)p;
    const size_t g = vm_granularity();
    pthread_mutex_lock(&lock);
    const region *r = find(a);
    int bad = !r || r->kind != VM || a % g || bytes % g || !bytes || a < r->base ||
              a + bytes > r->base + r->bytes || live_bytes[device] + bytes > env_total();
    if (!bad) {
        auto it = r->chunks->lower_bound(a);
        if (it != r->chunks->end() && it->first < a + bytes) bad = 1;
        if (it != r->chunks->begin() && (--it, it->first + it->second.bytes > a)) bad = 1;
    }
    if (bad) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    (*r->chunks)[a] = chunk{bytes, device, 0};
    live_bytes[device] += bytes;
    pthread_mutex_unlock(&lock);
    poison(a, bytes);
    return 0;
}

int vm_set_access(void *p, size_t bytes, unsigned devices) {
    const uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    const region *r = find(a);
    const bool bad = !r || r->kind != VM || !whole_chunks(r, a, bytes);
    if (!bad)
        for (auto it = r->chunks->find(a); it != r->chunks->end() && it->first < a + bytes; ++it)
            it->second.access |= devices;
    pthread_mutex_unlock(&lock);
    return bad ? -1 : 0;
}

int vm_unmap(void *p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    const region *r = find(a);
    if (!r || r->kind != VM || !whole_chunks(r, a, bytes)) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    for (auto it = r->chunks->find(a); it != r->chunks->end() && it->first < a + bytes;) {
        live_bytes[it->second.device] -= it->second.bytes;
        it = r->chunks->erase(it);
    }
    // fresh pages: the memory is gone, and its contents with it
    mmap(p, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    pthread_mutex_unlock(&lock);
    return 0;
}

} // namespace qft_emu
