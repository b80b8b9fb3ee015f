// The op table's vm_* entries (qft_ops.h, ABI 8) on CUDA's virtual memory management: a
// reservation is cuMemAddressReserve'd address space, a commit one cuMemCreate'd physical
// allocation mapped behind a range of it with read/write access for this device, a
// decommit its unmap (the physical allocation goes with its last mapping). Full sharding
// keeps a unit's tensors at fixed device addresses this way while their memory exists only
// between a gather and a release, as the host's qft_vm_* do with pages.
//
// The driver's entry points come through the runtime (cudaGetDriverEntryPointByVersion),
// so the library links libcudart alone, as the rest of the backend does. Every commit is
// counted in the backend's held/peak bytes like a cudaMalloc.
#include "cuda_internal.h"

#include <cuda.h>
#include <pthread.h>
#include <string.h>

typedef CUresult (*pfn_reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
typedef CUresult (*pfn_addr_free)(CUdeviceptr, size_t);
typedef CUresult (*pfn_create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                               unsigned long long);
typedef CUresult (*pfn_release)(CUmemGenericAllocationHandle);
typedef CUresult (*pfn_map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                            unsigned long long);
typedef CUresult (*pfn_unmap)(CUdeviceptr, size_t);
typedef CUresult (*pfn_set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
typedef CUresult (*pfn_device_get)(CUdevice *, int);
typedef CUresult (*pfn_attribute)(int *, CUdevice_attribute, CUdevice);
typedef CUresult (*pfn_granularity)(size_t *, const CUmemAllocationProp *,
                                    CUmemAllocationGranularity_flags);

static struct {
    pthread_once_t once;
    int ok; // every entry point found and the device supports VMM
    pfn_reserve reserve;
    pfn_addr_free addr_free;
    pfn_create create;
    pfn_release release;
    pfn_map map;
    pfn_unmap unmap;
    pfn_set_access set_access;
    pfn_granularity granularity;
    size_t gran;
} vm = {PTHREAD_ONCE_INIT};

static void *entry(const char *name) {
    void *f = NULL;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    // 12.0: the first version with every call used here in its current form
    if (cudaGetDriverEntryPointByVersion(name, &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
        cudaGetLastError(); // a missing entry means no VMM, not a failure for the next check
        return NULL;
    }
    return f;
}

// The allocation every commit makes: device memory of the backend's device.
static CUmemAllocationProp prop_of(int device) {
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = device;
    return p;
}

static void vm_init(void) {
    vm.reserve = (pfn_reserve)entry("cuMemAddressReserve");
    vm.addr_free = (pfn_addr_free)entry("cuMemAddressFree");
    vm.create = (pfn_create)entry("cuMemCreate");
    vm.release = (pfn_release)entry("cuMemRelease");
    vm.map = (pfn_map)entry("cuMemMap");
    vm.unmap = (pfn_unmap)entry("cuMemUnmap");
    vm.set_access = (pfn_set_access)entry("cuMemSetAccess");
    vm.granularity = (pfn_granularity)entry("cuMemGetAllocationGranularity");
    pfn_device_get device_get = (pfn_device_get)entry("cuDeviceGet");
    pfn_attribute attribute = (pfn_attribute)entry("cuDeviceGetAttribute");
    CUdevice dev;
    int supported = 0;
    if (!device_get || !attribute || device_get(&dev, qft_cuda_g.device) != CUDA_SUCCESS ||
        attribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev) !=
            CUDA_SUCCESS)
        supported = 0;
    if (!supported || !vm.reserve || !vm.addr_free || !vm.create || !vm.release || !vm.map ||
        !vm.unmap || !vm.set_access || !vm.granularity)
        return;
    const CUmemAllocationProp p = prop_of(qft_cuda_g.device);
    size_t g = 0;
    if (vm.granularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || !g) return;
    vm.gran = g;
    vm.ok = 1;
}

static int vm_ready(void) {
    pthread_once(&vm.once, vm_init);
    return vm.ok;
}

static void vm_fail(const char *call, CUresult r, size_t bytes, const char *what) {
    const char *name = r == CUDA_ERROR_OUT_OF_MEMORY     ? "out of memory"
                       : r == CUDA_ERROR_INVALID_VALUE   ? "invalid value"
                       : r == CUDA_ERROR_NOT_SUPPORTED   ? "not supported"
                       : r == CUDA_ERROR_NOT_PERMITTED   ? "not permitted"
                       : r == CUDA_ERROR_ILLEGAL_ADDRESS ? "illegal address"
                                                         : "a driver error";
    char msg[256];
    snprintf(msg, sizeof msg, "%s, CUresult %d (%zu bytes for %s)", name, (int)r, bytes,
             what ? what : "?");
    qft_cuda_fail(call, __FILE__, __LINE__, msg);
}

// 0 where the device or the driver has no virtual memory management: the core then says
// that full sharding cannot keep the model on this device.
size_t qft_cuda_vm_granularity(void) { return vm_ready() ? vm.gran : 0; }

void *qft_cuda_vm_reserve(size_t bytes) {
    if (!vm_ready()) return NULL;
    CUdeviceptr p = 0;
    const CUresult r = vm.reserve(&p, bytes ? bytes : vm.gran, 0, 0, 0);
    if (r != CUDA_SUCCESS) {
        vm_fail("cuMemAddressReserve", r, bytes, "a reservation");
        return NULL;
    }
    return (void *)(uintptr_t)p;
}

int qft_cuda_vm_commit(void *ptr, size_t bytes, const char *what) {
    if (!vm_ready() || !bytes) return -1;
    const CUdeviceptr p = (CUdeviceptr)(uintptr_t)ptr;
    const CUmemAllocationProp prop = prop_of(qft_cuda_g.device);
    CUmemGenericAllocationHandle h;
    CUresult r = vm.create(&h, bytes, &prop, 0);
    if (r != CUDA_SUCCESS) return vm_fail("cuMemCreate", r, bytes, what), -1;
    r = vm.map(p, bytes, 0, h, 0);
    // the mapping keeps the physical memory alive; it goes when the range is unmapped
    vm.release(h);
    if (r != CUDA_SUCCESS) return vm_fail("cuMemMap", r, bytes, what), -1;
    CUmemAccessDesc acc;
    memset(&acc, 0, sizeof acc);
    acc.location = prop.location;
    acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    r = vm.set_access(p, bytes, &acc, 1);
    if (r != CUDA_SUCCESS) {
        vm.unmap(p, bytes);
        return vm_fail("cuMemSetAccess", r, bytes, what), -1;
    }
    // zero-filled, as the entry promises: in stream order, before any op that reads it
    if (CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, 0))) {
        vm.unmap(p, bytes);
        return -1;
    }
    qft_cuda_mem_note_alloc(ptr, bytes);
    return 0;
}

void qft_cuda_vm_decommit(void *ptr, size_t bytes) {
    if (!ptr || !vm_ready()) return;
    // kernels queued on the range (the last ops that read the unit) finish first
    CUDA_CHECK(cudaStreamSynchronize(0));
    const CUresult r = vm.unmap((CUdeviceptr)(uintptr_t)ptr, bytes);
    if (r != CUDA_SUCCESS) vm_fail("cuMemUnmap", r, bytes, "a decommit");
    qft_cuda_mem_note_free(ptr);
}

void qft_cuda_vm_unreserve(void *ptr, size_t bytes) {
    if (!ptr || !vm_ready()) return;
    const CUresult r = vm.addr_free((CUdeviceptr)(uintptr_t)ptr, bytes ? bytes : vm.gran);
    if (r != CUDA_SUCCESS) vm_fail("cuMemAddressFree", r, bytes, "a reservation");
}
