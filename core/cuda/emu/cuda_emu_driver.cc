// The driver entry points the backend takes through cudaGetDriverEntryPointByVersion (its
// virtual memory management: cuda_vm.cu), emulated over cuda_emu_mem.cc's reservations. A
// physical allocation (cuMemCreate) is a size; mapping it commits that range of the
// reservation with fresh, poisoned pages, and unmapping drops them. The emulator maps a
// handle once only (what the backend does), and refuses what the driver refuses: ranges
// off the granularity, a mapping over a mapped range, a reservation freed while mapped;
// mapped memory is the device's to touch only after cuMemSetAccess, as on a GPU.
#include "cuda_emu_internal.h"

#include <cuda.h>

#include <pthread.h>
#include <string.h>

#include <map>

using namespace qft_emu;

namespace {
struct phys {
    size_t bytes;
    int device; // its location
    bool mapped, released;
};
pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
std::map<CUmemGenericAllocationHandle, phys> handles;
std::map<uintptr_t, CUmemGenericAllocationHandle> mapped_at; // mapping start -> handle
CUmemGenericAllocationHandle next_handle = 1;

CUresult emu_reserve(CUdeviceptr *p, size_t size, size_t alignment, CUdeviceptr addr,
                     unsigned long long flags) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    if (!size || size % vm_granularity() || (alignment && alignment > vm_granularity()) || addr || flags)
        return CUDA_ERROR_INVALID_VALUE;
    void *r = vm_reserve(size);
    if (!r) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = (CUdeviceptr)(uintptr_t)r;
    return CUDA_SUCCESS;
}

CUresult emu_addr_free(CUdeviceptr p, size_t size) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    return vm_free((void *)(uintptr_t)p, size) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult emu_create(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                    unsigned long long flags) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    if (!size || size % vm_granularity() || flags || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        prop->location.id < 0 || prop->location.id >= device_count())
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    *h = next_handle++;
    handles[*h] = phys{size, prop->location.id, false, false};
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

CUresult emu_release(CUmemGenericAllocationHandle h) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    pthread_mutex_lock(&lock);
    auto it = handles.find(h);
    if (it == handles.end() || it->second.released) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    it->second.released = true;
    if (!it->second.mapped) handles.erase(it); // else its mapping keeps it
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

CUresult emu_map(CUdeviceptr p, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                 unsigned long long flags) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    pthread_mutex_lock(&lock);
    auto it = handles.find(h);
    CUresult r = CUDA_SUCCESS;
    if (it == handles.end() || it->second.released || offset || flags || size != it->second.bytes)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (it->second.mapped)
        r = CUDA_ERROR_NOT_SUPPORTED; // the emulator maps a handle once
    else if (vm_map((void *)(uintptr_t)p, size, it->second.device))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) it->second.mapped = true, mapped_at[(uintptr_t)p] = h;
    pthread_mutex_unlock(&lock);
    return r;
}

CUresult emu_unmap(CUdeviceptr p, size_t size) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    pthread_mutex_lock(&lock);
    if (vm_unmap((void *)(uintptr_t)p, size)) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    // the handles mapped in the range lose their mapping (and go, if released)
    for (auto it = mapped_at.lower_bound((uintptr_t)p); it != mapped_at.end() && it->first < (uintptr_t)p + size;) {
        auto h = handles.find(it->second);
        if (h != handles.end()) {
            h->second.mapped = false;
            if (h->second.released) handles.erase(h);
        }
        it = mapped_at.erase(it);
    }
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

// Each descriptor opens the range to one device (read/write only: what the backend asks).
CUresult emu_set_access(CUdeviceptr p, size_t size, const CUmemAccessDesc *desc, size_t count) {
    if (context_broken()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    unsigned devices = 0;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id < 0 ||
            desc[i].location.id >= device_count() || desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            return CUDA_ERROR_INVALID_VALUE;
        devices |= 1u << desc[i].location.id;
    }
    if (!devices) return CUDA_ERROR_INVALID_VALUE;
    return vm_set_access((void *)(uintptr_t)p, size, devices) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult emu_device_get(CUdevice *d, int ordinal) {
    if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

CUresult emu_attribute(int *v, CUdevice_attribute a, CUdevice d) {
    if (d < 0 || d >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    if (a != CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED) return CUDA_ERROR_INVALID_VALUE;
    *v = 1;
    return CUDA_SUCCESS;
}

CUresult emu_granularity(size_t *g, const CUmemAllocationProp *, CUmemAllocationGranularity_flags) {
    *g = vm_granularity();
    return CUDA_SUCCESS;
}

struct entry {
    const char *name;
    void *fn;
};
const entry entries[] = {
    {"cuMemAddressReserve", (void *)emu_reserve}, {"cuMemAddressFree", (void *)emu_addr_free},
    {"cuMemCreate", (void *)emu_create},          {"cuMemRelease", (void *)emu_release},
    {"cuMemMap", (void *)emu_map},                {"cuMemUnmap", (void *)emu_unmap},
    {"cuMemSetAccess", (void *)emu_set_access},   {"cuDeviceGet", (void *)emu_device_get},
    {"cuDeviceGetAttribute", (void *)emu_attribute},
    {"cuMemGetAllocationGranularity", (void *)emu_granularity},
};
} // namespace

extern "C" cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn,
                                                        unsigned int version,
                                                        unsigned long long flags,
                                                        cudaDriverEntryPointQueryResult *status) {
    (void)version, (void)flags;
    for (const entry &e : entries)
        if (strcmp(e.name, symbol) == 0) {
            *fn = e.fn;
            if (status) *status = cudaDriverEntryPointSuccess;
            return cudaSuccess;
        }
    *fn = NULL;
    if (status) *status = cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
