// The emulator's CUDA runtime: the cudart calls the backend makes, with their real
// signatures (from cuda_runtime_api.h), over the guarded device memory of cuda_emu_mem.cc.
// $QFT_CUDA_EMU_DEVICES alike devices (default 1), "qft CUDA emulator", reporting sm_90's
// limits; the current device is per host thread, and each device's memory its own (a
// kernel given another device's allocation is reported: no peer access). Everything is synchronous, so
// streams and the stream-ordered pool are the plain calls. The checks a GPU's runtime
// makes are made here too: a copy's direction must match where its pointers are, a free
// must be of an allocation's start, a launch must fit the limits.
#include "cuda_emu_internal.h"

#include <cuda.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <map>

#undef warpSize // cudaDeviceProp's field, not the device constant

namespace qft_emu {
namespace {
pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
cudaError_t last_error = cudaSuccess;
std::map<const void *, size_t> smem_attr; // kernel -> dynamic shared memory opt-in
thread_local int this_thread_device; // the CUDA runtime's current device is per thread
const size_t SMEM_DEFAULT = 48 << 10, SMEM_OPTIN = 232448;
const int SM_COUNT = 2; // small grids: the element-wise kernels launch 32 blocks an SM

cudaError_t fail(cudaError_t e, const char *call, const char *why) {
    fprintf(stderr, "qft cuda emulator: %s: %s\n", call, why);
    pthread_mutex_lock(&lock);
    if (last_error == cudaSuccess) last_error = e;
    pthread_mutex_unlock(&lock);
    return e;
}
} // namespace

size_t smem_limit(const void *fn) {
    pthread_mutex_lock(&lock);
    auto it = smem_attr.find(fn);
    const size_t v = it == smem_attr.end() ? SMEM_DEFAULT : it->second;
    pthread_mutex_unlock(&lock);
    return v;
}

void record_launch_error(cudaError_t e, const char *msg) { fail(e, "kernel launch", msg); }

cudaError_t runtime_fail(cudaError_t e, const char *call, const char *why) { return fail(e, call, why); }

// $QFT_CUDA_EMU_FAULT_AT_SYNC=N: the Nth synchronizing call (a copy to the host, a device or
// stream synchronize) fails with cudaErrorIllegalAddress, as a kernel's fault on a GPU is
// first seen by the host at its next synchronization; for the callers' error paths. Later
// calls succeed (a real context stays broken; what matters here is that the first failure
// is not lost). $QFT_CUDA_EMU_COUNT_SYNCS=1 prints the process's count of them at exit, so
// a test can aim at the last ones.
static long syncs_seen;
static std::atomic<bool> broken; // QFT_CUDA_EMU_FAULT_STICKY's broken context

bool context_broken() { return broken.load(); }

cudaError_t broken_context_error() {
    pthread_mutex_lock(&lock);
    last_error = cudaErrorIllegalAddress;
    pthread_mutex_unlock(&lock);
    return cudaErrorIllegalAddress;
}
#define STICKY_GUARD()                                                                        \
    do {                                                                                      \
        if (context_broken()) return broken_context_error();                                  \
    } while (0)

static void print_syncs(void) {
    fprintf(stderr, "qft cuda emulator: %ld synchronizing calls\n", syncs_seen);
}

static cudaError_t sync_point(const char *call) {
    static long at = -1;
    pthread_mutex_lock(&lock);
    if (at < 0) {
        const char *e = getenv("QFT_CUDA_EMU_FAULT_AT_SYNC");
        at = e && *e ? atol(e) : 0;
        const char *c = getenv("QFT_CUDA_EMU_COUNT_SYNCS");
        if (c && strcmp(c, "1") == 0) atexit(print_syncs);
    }
    const bool hit = ++syncs_seen == at;
    pthread_mutex_unlock(&lock);
    if (hit) {
        const char *st = getenv("QFT_CUDA_EMU_FAULT_STICKY");
        if (st && strcmp(st, "1") == 0) broken = true;
    }
    return hit ? fail(cudaErrorIllegalAddress, call,
                      "an illegal memory access was reported here (QFT_CUDA_EMU_FAULT_AT_SYNC)")
               : cudaSuccess;
}

int device_count() {
    static int n = 0;
    if (!n) {
        const char *e = getenv("QFT_CUDA_EMU_DEVICES");
        const int v = e && *e ? atoi(e) : 1;
        n = v >= 1 && v <= MAX_DEVICES ? v : 1;
    }
    return n;
}

int current_device() { return this_thread_device; }

void check_pointer_arg(const void *fn, int index, const void *p) {
    if (!p || mem_on(p, 1, current_device())) return;
    char msg[240];
    const int where = mem_where(p, 1, NULL);
    if (where >= 0)
        snprintf(msg, sizeof msg,
                 "kernel %p launched on device %d given device %d's memory as its argument %d: "
                 "%p (no peer access: on a GPU an illegal address)",
                 fn, current_device(), where, index, p);
    else
        snprintf(msg, sizeof msg,
                 "kernel %p given a pointer that is not device memory as its argument %d: %p",
                 fn, index, p);
    fatal(msg);
}

} // namespace qft_emu

using namespace qft_emu;

extern "C" {

static bool bad_device(int device) { return device < 0 || device >= device_count(); }

cudaError_t cudaGetDeviceCount(int *count) {
    *count = device_count();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    if (bad_device(device))
        return fail(cudaErrorInvalidDevice, "cudaSetDevice", "no such device (QFT_CUDA_EMU_DEVICES)");
    this_thread_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    *device = this_thread_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    if (bad_device(device)) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties", "no such device");
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "qft CUDA emulator (CPU; sm_90 limits)");
    prop->totalGlobalMem = mem_total_bytes();
    prop->sharedMemPerBlock = SMEM_DEFAULT;
    prop->sharedMemPerBlockOptin = SMEM_OPTIN;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024, prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff, prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->major = 9, prop->minor = 0;
    prop->multiProcessorCount = SM_COUNT;
    prop->memoryPoolsSupported = 1;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    if (bad_device(device)) return fail(cudaErrorInvalidDevice, "cudaDeviceGetAttribute", "no such device");
    switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = SM_COUNT; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)SMEM_OPTIN; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)SMEM_DEFAULT; break;
    case cudaDevAttrMemoryPoolsSupported: *value = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    default: return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute", "an attribute the emulator does not model");
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device) {
    if (bad_device(device)) return fail(cudaErrorInvalidDevice, "cudaDeviceGetDefaultMemPool", "no such device");
    static int pools[MAX_DEVICES];
    *pool = (cudaMemPool_t)&pools[device];
    return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, enum cudaMemPoolAttr, void *) { return cudaSuccess; }

// Streams: work completes inside each call, so a stream is only a handle, checked at every
// use (the legacy default stream is 0).
static std::map<cudaStream_t, int> streams; // created and not destroyed, -> device
static std::map<cudaStream_t, bool> busy;   // work queued since the last query

} // extern "C"

void qft_emu::stream_enqueued(cudaStream_t s) {
    if (!s) return;
    pthread_mutex_lock(&lock);
    if (streams.count(s)) busy[s] = true;
    pthread_mutex_unlock(&lock);
}

extern "C" {

static cudaError_t check_stream(cudaStream_t s, const char *call) {
    if (!s) return cudaSuccess;
    pthread_mutex_lock(&lock);
    const bool ok = streams.count(s) > 0;
    pthread_mutex_unlock(&lock);
    return ok ? cudaSuccess : fail(cudaErrorInvalidResourceHandle, call, "not a live stream");
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    STICKY_GUARD();
    if (flags != cudaStreamDefault && flags != cudaStreamNonBlocking)
        return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags", "unknown flags");
    *s = (cudaStream_t) new int(0);
    pthread_mutex_lock(&lock);
    streams[*s] = this_thread_device;
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    pthread_mutex_lock(&lock);
    const bool ok = s && streams.erase(s) > 0;
    busy.erase(s);
    pthread_mutex_unlock(&lock);
    if (!ok) return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy", "not a live stream");
    delete (int *)s;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    STICKY_GUARD();
    *p = mem_alloc(bytes, this_thread_device);
    if (!*p) return fail(cudaErrorMemoryAllocation, "cudaMalloc", "the emulated device is full (QFT_CUDA_EMU_MEM_GIB)");
    return cudaSuccess;
}

cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }

cudaError_t cudaFree(void *p) {
    STICKY_GUARD();
    if (!p) return cudaSuccess;
    if (mem_free(p)) return fail(cudaErrorInvalidValue, "cudaFree", "not the start of a live device allocation");
    return cudaSuccess;
}

cudaError_t cudaFreeAsync(void *p, cudaStream_t) { return cudaFree(p); }

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    STICKY_GUARD();
    *total_b = mem_total_bytes();
    *free_b = *total_b - mem_live_bytes(this_thread_device);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    STICKY_GUARD();
    if (!n) return cudaSuccess;
    const bool dd = mem_is_device(dst, n), sd = mem_is_device(src, n);
    const bool ok = kind == cudaMemcpyHostToDevice   ? dd && !sd
                    : kind == cudaMemcpyDeviceToHost ? sd && !dd
                    : kind == cudaMemcpyDeviceToDevice ? dd && sd
                    : kind == cudaMemcpyHostToHost     ? !dd && !sd
                                                       : true; // cudaMemcpyDefault: any
    if (!ok) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "kind %d does not match the pointers (dst %p %s, src %p %s, %zu bytes)", (int)kind,
                 dst, dd ? "device" : "not device (or not whole)", src,
                 sd ? "device" : "not device (or not whole)", n);
        return fail(cudaErrorInvalidValue, "cudaMemcpy", msg);
    }
    if (kind == cudaMemcpyDeviceToHost || (kind == cudaMemcpyDefault && sd && !dd)) {
        const cudaError_t e = sync_point("cudaMemcpy");
        if (e != cudaSuccess) return e;
    }
    device_enter();
    memmove(dst, src, n);
    device_leave();
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
    const cudaError_t e = check_stream(s, "cudaMemcpyAsync");
    if (e == cudaSuccess) stream_enqueued(s);
    return e != cudaSuccess ? e : cudaMemcpy(dst, src, n, kind);
}

cudaError_t cudaMemset(void *p, int value, size_t n) {
    STICKY_GUARD();
    if (!n) return cudaSuccess;
    if (!mem_is_device(p, n)) return fail(cudaErrorInvalidValue, "cudaMemset", "not device memory (or not all of it)");
    device_enter();
    memset(p, value, n);
    device_leave();
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t s) {
    const cudaError_t e = check_stream(s, "cudaMemsetAsync");
    if (e == cudaSuccess) stream_enqueued(s);
    return e != cudaSuccess ? e : cudaMemset(p, value, n);
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
    STICKY_GUARD();
    const cudaError_t e = check_stream(s, "cudaStreamQuery");
    if (e != cudaSuccess || !s) return e;
    pthread_mutex_lock(&lock);
    const bool was = busy.erase(s) > 0;
    if (was && last_error == cudaSuccess) last_error = cudaErrorNotReady; // quietly: no failure
    pthread_mutex_unlock(&lock);
    return was ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    STICKY_GUARD();
    return sync_point("cudaDeviceSynchronize");
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    STICKY_GUARD();
    const cudaError_t e = check_stream(s, "cudaStreamSynchronize");
    return e != cudaSuccess ? e : sync_point("cudaStreamSynchronize");
}

cudaError_t cudaGetLastError(void) {
    STICKY_GUARD(); // a broken context's error is not cleared
    pthread_mutex_lock(&lock);
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    pthread_mutex_unlock(&lock);
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    STICKY_GUARD();
    pthread_mutex_lock(&lock);
    const cudaError_t e = last_error;
    pthread_mutex_unlock(&lock);
    return e;
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorNotReady: return "device not ready";
    default: return "an error of the CUDA emulator";
    }
}

const char *cudaGetErrorName(cudaError_t e) { return cudaGetErrorString(e); }

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
    if (value < 0 || (size_t)value > SMEM_OPTIN)
        return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute", "more dynamic shared memory than the device's opt-in maximum");
    pthread_mutex_lock(&lock);
    smem_attr[func] = (size_t)value;
    pthread_mutex_unlock(&lock);
    return cudaSuccess;
}

} // extern "C"
