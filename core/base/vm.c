/* Address space whose physical memory comes and goes: the CPU form of what FSDP does with
 * a parameter's storage (resize to zero after use, back to full before). A region is
 * reserved once, so every pointer into it (a model's tensor views, an adapter's cached
 * pointers, a quantizer's placed buffers) stays valid; releasing a range hands its pages
 * back to the kernel and they read as zeros until written again. CUDA's virtual memory
 * API (cuMemAddressReserve / cuMemMap / cuMemUnmap) offers the same shape on a GPU. */
#include "qft_base.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t page_size(void) {
    static size_t ps;
    if (!ps) {
        long v = sysconf(_SC_PAGESIZE);
        ps = v > 0 ? (size_t)v : 4096;
    }
    return ps;
}

void *qft_vm_reserve(size_t bytes, qft_err *err) {
    if (bytes == 0) bytes = 1;
    /* NORESERVE: no swap is set aside for pages never touched, which are most of them
     * on a rank that holds only its shard */
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
        qft_err_setf(err, "cannot reserve %zu bytes of address space: %s", bytes, strerror(errno));
        return NULL;
    }
    return p;
}

void qft_vm_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : 1);
}

void qft_vm_release(void *p, size_t bytes) {
    /* only whole pages inside [p, p + bytes) go back, so a neighbour sharing a page at
     * either end keeps its contents; the bytes of partial pages are zeroed instead, so the
     * range reads as zeros afterwards either way */
    const size_t ps = page_size();
    uintptr_t a = (uintptr_t)p, e = a + bytes;
    uintptr_t a_up = (a + ps - 1) & ~(uintptr_t)(ps - 1), e_dn = e & ~(uintptr_t)(ps - 1);
    if (a_up >= e_dn) {
        memset(p, 0, bytes);
        return;
    }
    memset(p, 0, a_up - a);
    memset((void *)e_dn, 0, e - e_dn);
    madvise((void *)a_up, e_dn - a_up, MADV_DONTNEED);
}

size_t qft_vm_resident(const void *p, size_t bytes) {
    if (!p || !bytes) return 0;
    const size_t ps = page_size();
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(ps - 1), e = (uintptr_t)p + bytes;
    size_t pages = (e - a + ps - 1) / ps, resident = 0;
    unsigned char vec[4096];
    for (size_t done = 0; done < pages;) {
        size_t n = pages - done < sizeof vec ? pages - done : sizeof vec;
        if (mincore((void *)(a + done * ps), n * ps, vec) != 0) return 0;
        for (size_t i = 0; i < n; i++) resident += vec[i] & 1;
        done += n;
    }
    return resident * ps;
}

size_t qft_vm_page(void) { return page_size(); }
