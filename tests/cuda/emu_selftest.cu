// Kernels and calls that break a GPU's rules, for tests/cuda/test_cuda_emu_self.c: each
// extern "C" function below does one thing wrong (or right, as its control), and the test
// checks that the CUDA emulator (core/cuda/emu) reports it as it says it does. Built only
// for the emulator (through emu_rewrite.py, like the backend's .cu files).
#include <cublasLt.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <string.h>
#include <sys/mman.h>

namespace {
__global__ void write_at(float *x, int i) {
    if (threadIdx.x == 0 && blockIdx.x == 0) x[i] = 1.0f;
}

// a WMMA load from shared memory `offset` bf16 past an aligned base, leading dimension ldm
__global__ void wmma_load(float *out, int offset, int ldm) {
    __shared__ __align__(32) __nv_bfloat16 tile[16 * 32 + 16];
    for (int i = threadIdx.x; i < 16 * 32 + 16; i += 32) tile[i] = __float2bfloat16(1.0f);
    __syncwarp();
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> a;
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::col_major> b;
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c;
    nvcuda::wmma::load_matrix_sync(a, tile + offset, ldm);
    nvcuda::wmma::load_matrix_sync(b, tile, 16);
    nvcuda::wmma::fill_fragment(c, 0.0f);
    nvcuda::wmma::mma_sync(c, a, b, c);
    nvcuda::wmma::store_matrix_sync(out, c, 16, nvcuda::wmma::mem_row_major);
}

struct box {
    float *p;
};
__global__ void write_boxed(box b, int i) {
    if (threadIdx.x == 0 && blockIdx.x == 0) b.p[i] = 1.0f;
}

// thread 0 waits at __syncthreads while its warp's other lanes wait in a shuffle: neither
// barrier can fill
__global__ void split_barrier(float *out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 0)
        __syncthreads();
    else
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// each thread reads its neighbour's shared slot; with `barrier` false nothing orders the
// neighbour's write before the read (a race)
__global__ void neighbour(int *out, bool barrier) {
    __shared__ int sh[64];
    sh[threadIdx.x] = (int)(blockIdx.x * 64 + threadIdx.x);
    if (barrier) __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = sh[(threadIdx.x + 1) % 64];
}

__global__ void dynamic_smem(float *out) {
    extern __shared__ float sm[];
    sm[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = sm[blockDim.x - 1 - threadIdx.x];
}

__global__ void __launch_bounds__(64) bounded_kernel(float *out) { out[threadIdx.x] = 1.0f; }

// a lane reads a shuffle from a lane that has returned
__global__ void shuffle_from_returned(float *out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, threadIdx.x + 16);
}
} // namespace

extern "C" {

// a kernel writes x[100 + past] of a 100-float allocation
void emu_st_out_of_bounds(int past) {
    float *x = NULL;
    cudaMalloc((void **)&x, 100 * sizeof(float));
    write_at<<<1, 32>>>(x, 100 + past);
}

void emu_st_deadlock(void) {
    float *out = NULL;
    cudaMalloc((void **)&out, 32 * sizeof(float));
    split_barrier<<<1, 32>>>(out);
}

void emu_st_host_pointer_arg(void) {
    static float host[32];
    write_at<<<1, 32>>>(host, 0);
}

// Device 0's allocation given to a kernel launched on device 1 (no peer access).
void emu_st_other_device_arg(void) {
    float *x = NULL;
    cudaSetDevice(0);
    cudaMalloc((void **)&x, 32 * sizeof(float));
    cudaSetDevice(1);
    write_at<<<1, 32>>>(x, 0);
}

// WMMA from a misaligned pointer (offset 8 bf16 = 16 bytes) or with a leading dimension
// that is not whole 16-byte units (12 bf16); offset 0, ldm 16 is the control (16 x 16 of
// ones times ones: every element 16).
float emu_st_wmma(int offset, int ldm) {
    float *out = NULL, host[256];
    cudaMalloc((void **)&out, sizeof host);
    wmma_load<<<1, 32>>>(out, offset, ldm);
    cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost);
    cudaFree(out);
    for (int i = 1; i < 256; i++)
        if (host[i] != host[0]) return -1.0f;
    return host[0];
}

void emu_st_host_touch(void) {
    float *x = NULL;
    cudaMalloc((void **)&x, 64 * sizeof(float));
    x[7] = 1.0f; // a host write to device memory
}

void emu_st_use_after_free(void) {
    float *x = NULL;
    cudaMalloc((void **)&x, 64 * sizeof(float));
    cudaFree(x);
    write_at<<<1, 32>>>(x, 0);
}

static void *driver_entry(const char *name) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q);
    return fn;
}

// a 4 MiB reservation with its first 2 MiB committed (and opened to the device when
// `access`); a kernel writes float `index` of it
void emu_st_reservation(long index, int access) {
    typedef CUresult (*reserve_fn)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    typedef CUresult (*create_fn)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                                  unsigned long long);
    typedef CUresult (*map_fn)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
    const size_t mib2 = (size_t)2 << 20;
    CUdeviceptr p = 0;
    ((reserve_fn)driver_entry("cuMemAddressReserve"))(&p, 2 * mib2, 0, 0, 0);
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    CUmemGenericAllocationHandle hd;
    ((create_fn)driver_entry("cuMemCreate"))(&hd, mib2, &prop, 0);
    ((map_fn)driver_entry("cuMemMap"))(p, mib2, 0, hd, 0);
    if (access) {
        typedef CUresult (*access_fn)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
        CUmemAccessDesc acc;
        memset(&acc, 0, sizeof acc);
        acc.location = prop.location;
        acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        ((access_fn)driver_entry("cuMemSetAccess"))(p, mib2, &acc, 1);
    }
    // in a struct, which the check of kernel arguments does not look into: without
    // access it would refuse the pointer before the kernel ran
    write_boxed<<<1, 32>>>(box{(float *)(uintptr_t)p}, (int)index);
    cudaDeviceSynchronize();
}

// the error cudaGetLastError gives after launching dynamic_smem with `threads` threads and
// `smem` bytes of dynamic shared memory (after opting the kernel into `opt_in` bytes, if
// nonzero); the output's check value through *ok (1: out[0] == threads - 1)
int emu_st_launch(int threads, size_t smem, int opt_in, int *ok) {
    float *out = NULL;
    cudaMalloc((void **)&out, 2048 * sizeof(float));
    if (opt_in) cudaFuncSetAttribute(dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, opt_in);
    cudaGetLastError();
    dynamic_smem<<<1, threads, smem>>>(out);
    const int e = (int)cudaGetLastError();
    float first = -1.0f;
    cudaMemcpy(&first, out, sizeof first, cudaMemcpyDeviceToHost);
    *ok = first == (float)(threads - 1);
    cudaFree(out);
    return e;
}

// the error cudaGetLastError gives after launching a kernel declared with
// __launch_bounds__(64) with `threads` threads
int emu_st_bounded(int threads) {
    float *out = NULL;
    cudaMalloc((void **)&out, 128 * sizeof(float));
    cudaGetLastError();
    bounded_kernel<<<1, threads>>>(out);
    const int e = (int)cudaGetLastError();
    cudaFree(out);
    return e;
}

// neighbour over 4 blocks: how many of the 256 outputs differ from the race-free answer
int emu_st_neighbour(int barrier) {
    int *out = NULL, host[256];
    cudaMalloc((void **)&out, sizeof host);
    neighbour<<<4, 64>>>(out, barrier != 0);
    cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost);
    cudaFree(out);
    int bad = 0;
    for (int b = 0; b < 4; b++)
        for (int t = 0; t < 64; t++) bad += host[b * 64 + t] != b * 64 + (t + 1) % 64;
    return bad;
}

// the bits of a shuffle from a returned lane (all ones: NaN)
unsigned emu_st_shuffle_from_returned(void) {
    float *out = NULL, v = 0.0f;
    cudaMalloc((void **)&out, 16 * sizeof(float));
    shuffle_from_returned<<<1, 32>>>(out);
    cudaMemcpy(&v, out, sizeof v, cudaMemcpyDeviceToHost);
    cudaFree(out);
    unsigned u;
    memcpy(&u, &v, sizeof u);
    return u;
}

// 1 when a new allocation reads as 0xff bytes
int emu_st_poisoned(void) {
    unsigned char *d = NULL, h[64];
    cudaMalloc((void **)&d, sizeof h);
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    cudaFree(d);
    for (size_t i = 0; i < sizeof h; i++)
        if (h[i] != 0xff) return 0;
    return 1;
}

// cudaMemcpy's result for a host-to-device copy between two host buffers
int emu_st_copy_wrong_kind(void) {
    static char a[64], b[64];
    return (int)cudaMemcpy(a, b, sizeof a, cudaMemcpyHostToDevice);
}

// cudaHostRegister's bookkeeping, one scenario each; the result of the call under test:
//   0: two buffers that share a page, registered and unregistered apart (the control);
//   1: a range overlapping a registered one; 2: unregistering a pointer inside a range;
//   3: unregistering memory never registered; 4: a PROT_NONE mapping; 5: device memory;
//   6: a mapping unmapped before it is unregistered.
int emu_st_host_register(int scenario) {
    const size_t page = 4096;
    char *m = (char *)mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    int r = -1;
    switch (scenario) {
    case 0:
        r = (int)cudaHostRegister(m, 80, cudaHostRegisterDefault);
        if (!r) r = (int)cudaHostRegister(m + 80, 20, cudaHostRegisterDefault);
        if (!r) r = (int)cudaHostUnregister(m);
        if (!r) r = (int)cudaHostUnregister(m + 80);
        break;
    case 1:
        cudaHostRegister(m, 100, cudaHostRegisterDefault);
        r = (int)cudaHostRegister(m + 50, 100, cudaHostRegisterDefault);
        cudaHostUnregister(m);
        break;
    case 2:
        cudaHostRegister(m, 100, cudaHostRegisterDefault);
        r = (int)cudaHostUnregister(m + 8);
        cudaHostUnregister(m);
        break;
    case 3: r = (int)cudaHostUnregister(m); break;
    case 4:
        mprotect(m + page, page, PROT_NONE);
        r = (int)cudaHostRegister(m, 2 * page, cudaHostRegisterDefault);
        break;
    case 5: {
        void *d = NULL;
        cudaMalloc(&d, 256);
        r = (int)cudaHostRegister(d, 256, cudaHostRegisterDefault);
        cudaFree(d);
        break;
    }
    case 6:
        cudaHostRegister(m, 2 * page, cudaHostRegisterDefault);
        munmap(m, 2 * page);
        r = (int)cudaHostUnregister(m);
        cudaGetLastError();
        return r;
    }
    cudaGetLastError(); // each scenario leaves no error behind for the next
    munmap(m, 2 * page);
    return r;
}

// cublasLtMatmul's status for a 4x4x4 fp32 GEMM whose algorithm was chosen for 16-byte
// aligned operands, run with A at `a_offset` floats from an aligned buffer
int emu_st_lt_alignment(int a_offset) {
    float *A = NULL, *B = NULL, *C = NULL;
    cudaMalloc((void **)&A, 64 * sizeof(float));
    cudaMalloc((void **)&B, 16 * sizeof(float));
    cudaMalloc((void **)&C, 16 * sizeof(float));
    cudaMemset(A, 0, 64 * sizeof(float));
    cudaMemset(B, 0, 16 * sizeof(float));
    cublasLtHandle_t h;
    cublasLtCreate(&h);
    cublasLtMatmulDesc_t d;
    cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, 4, 4, 4);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, 4, 4, 4);
    cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, 4, 4, 4);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    const uint32_t al = 16;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(h, d, la, lb, lc, lc, pref, 1, &res, &found);
    const float alpha = 1.0f, beta = 0.0f;
    const cublasStatus_t st = cublasLtMatmul(h, d, &alpha, A + a_offset, la, B, lb, &beta, C, lc, C,
                                             lc, &res.algo, NULL, 0, 0);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(d);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    return (int)st;
}

} // extern "C"
