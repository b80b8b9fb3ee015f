// The emulator's page-locked host memory: cudaHostRegister and cudaHostUnregister with the
// checks the driver makes, and one it cannot make. Nothing is locked (copies here are
// memmove whatever the memory), so what is emulated is the bookkeeping a GPU run would
// trip over:
//   - ranges are the caller's bytes, not whole pages (the driver lets two buffers that share
//     a page register apart), and one that overlaps a registered range is refused with
//     cudaErrorHostMemoryAlreadyRegistered;
//   - the range must be mapped and writable now (the driver pins its pages; a PROT_NONE
//     reservation or an unmapped gap is refused), and not device memory;
//   - unregistering a pointer inside a range is cudaErrorInvalidValue, one outside every
//     range cudaErrorHostMemoryNotRegistered;
//   - stricter than the driver: a range that is no longer mapped writable when it is
//     unregistered was freed first, which on a GPU leaves its pages locked and the next
//     registration of that address refused; that is an error here.
// $QFT_CUDA_EMU_HOST_REGISTER=0 makes every registration fail with cudaErrorNotSupported,
// as on a device or sandbox without it, for the callers' fallback.
#include "cuda_emu_internal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>

namespace qft_emu {
namespace {
pthread_mutex_t host_lock = PTHREAD_MUTEX_INITIALIZER;
std::map<uintptr_t, uintptr_t> registered; // start -> end (exclusive)

// Whether every byte of [p, p + bytes) lies in mappings of this process that are readable
// and writable, by /proc/self/maps (sorted by address).
bool mapped_writable(uintptr_t p, size_t bytes) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return true; // nothing to check against: the driver's own check is the GPU's
    uintptr_t at = p;
    const uintptr_t end = p + bytes;
    char line[512];
    while (at < end && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
        if (hi <= at) continue;
        if (lo > at || perms[0] != 'r' || perms[1] != 'w') break; // a gap, or not writable
        at = hi;
    }
    fclose(f);
    return at >= end;
}

bool registration_off() {
    const char *e = getenv("QFT_CUDA_EMU_HOST_REGISTER");
    return e && strcmp(e, "0") == 0;
}
} // namespace
} // namespace qft_emu

using namespace qft_emu;

extern "C" {

cudaError_t cudaHostRegister(void *ptr, size_t size, unsigned int flags) {
    const char *call = "cudaHostRegister";
    if (context_broken()) return broken_context_error();
    const unsigned known = cudaHostRegisterPortable | cudaHostRegisterMapped |
                           cudaHostRegisterIoMemory | cudaHostRegisterReadOnly;
    if (!ptr || !size) return runtime_fail(cudaErrorInvalidValue, call, "a null or empty range");
    if (flags & ~known) return runtime_fail(cudaErrorInvalidValue, call, "unknown flags");
    if (registration_off())
        return runtime_fail(cudaErrorNotSupported, call,
                            "host registration is off (QFT_CUDA_EMU_HOST_REGISTER=0), as on a "
                            "device or sandbox without it");
    if (mem_is_device(ptr, 1) || mem_is_device((const char *)ptr + size - 1, 1))
        return runtime_fail(cudaErrorInvalidValue, call, "the range is device memory");
    const uintptr_t lo = (uintptr_t)ptr, hi = lo + size;
    if (!mapped_writable(lo, size)) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "[%p, +%zu) is not all mapped, readable and writable host memory", ptr, size);
        return runtime_fail(cudaErrorInvalidValue, call, msg);
    }
    pthread_mutex_lock(&host_lock);
    auto next = registered.lower_bound(lo); // the first range starting at or after lo
    const bool overlaps = (next != registered.end() && next->first < hi) ||
                          (next != registered.begin() && std::prev(next)->second > lo);
    if (!overlaps) registered[lo] = hi;
    pthread_mutex_unlock(&host_lock);
    if (overlaps) {
        char msg[200];
        snprintf(msg, sizeof msg, "[%p, +%zu) overlaps a range registered before", ptr, size);
        return runtime_fail(cudaErrorHostMemoryAlreadyRegistered, call, msg);
    }
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *ptr) {
    const char *call = "cudaHostUnregister";
    if (context_broken()) return broken_context_error();
    const uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&host_lock);
    auto it = registered.upper_bound(p); // the first range starting after p
    const bool inside = it != registered.begin() && std::prev(it)->second > p;
    const bool start = inside && std::prev(it)->first == p;
    uintptr_t end = 0;
    if (start) end = std::prev(it)->second, registered.erase(std::prev(it));
    pthread_mutex_unlock(&host_lock);
    if (!inside)
        return runtime_fail(cudaErrorHostMemoryNotRegistered, call, "not in a registered range");
    if (!start)
        return runtime_fail(cudaErrorInvalidValue, call, "inside a registered range, not its start");
    if (!mapped_writable(p, end - p)) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "[%p, +%zu) was unmapped while registered (freed before cudaHostUnregister: "
                 "on a GPU its pages stay locked)", ptr, (size_t)(end - p));
        return runtime_fail(cudaErrorInvalidValue, call, msg);
    }
    return cudaSuccess;
}

} // extern "C"
