// Kernels for tests/cuda/test_cuda_emu_racecheck.c: each case either shares memory between
// a block's threads with nothing ordering the accesses (a race the emulator's race check,
// built for ThreadSanitizer, must report) or with what orders them in CUDA's memory model
// (its control, which must run clean). Built only for the race check's emulator.
#include <cuda_runtime.h>
#include <mma.h>

#include <string.h>

namespace {
namespace wmma = nvcuda::wmma;

// thread i reads thread i+1's shared slot: ordered by __syncthreads, or not at all
__global__ void neighbour(int *out, bool barrier) {
    __shared__ int sh[64];
    sh[threadIdx.x] = (int)threadIdx.x;
    if (barrier) __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = sh[(threadIdx.x + 1) % 64];
}

// the same through global memory
__global__ void neighbour_global(int *buf, bool barrier) {
    buf[threadIdx.x] = (int)threadIdx.x;
    if (barrier) __syncthreads();
    buf[64 + threadIdx.x] = buf[(threadIdx.x + 1) % 64];
}

// within one warp: a shuffle waits for the lanes but orders no memory; __syncwarp does
__global__ void warp_neighbour(int *out, bool syncwarp) {
    __shared__ int sh[32];
    sh[threadIdx.x] = (int)threadIdx.x;
    int v = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    if (syncwarp) __syncwarp();
    out[threadIdx.x] = sh[threadIdx.x ^ 1] + v;
}

// an accumulator stored to shared memory by the warp, then read element-wise by lanes that
// did not store those elements: __syncwarp between, or nothing
__global__ void wmma_store_read(float *out, bool syncwarp) {
    __shared__ __align__(32) float tile[256];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 2.0f);
    wmma::store_matrix_sync(tile, c, 16, wmma::mem_row_major);
    if (syncwarp) __syncwarp();
    for (int i = threadIdx.x; i < 256; i += 32) out[i] = tile[255 - i];
}

// an accumulator kept in shared memory: each round loads it, adds to it and stores it back
// in place, which needs no barrier (each lane stores the elements it loaded); the tile is
// zeroed lane by lane first, then a __syncwarp
__global__ void wmma_in_place(float *out, int rounds) {
    __shared__ __align__(32) float tile[2][16 * 24];
    float *t = tile[threadIdx.x / 32];
    for (int i = threadIdx.x % 32; i < 16 * 24; i += 32) t[i] = 0.0f;
    __syncwarp();
    for (int k = 0; k < rounds; k++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        wmma::load_matrix_sync(c, t + 8, 24, wmma::mem_row_major);
        for (int e = 0; e < c.num_elements; e++) c.x[e] += 1.0f;
        wmma::store_matrix_sync(t + 8, c, 24, wmma::mem_row_major);
    }
    __syncwarp();
    for (int i = threadIdx.x % 32; i < 256; i += 32) out[threadIdx.x / 32 * 256 + i] = t[8 + i / 16 * 24 + i % 16];
}

// many barriers: after each, thread 0 writes the slot and thread 1 reads it before the next
// (racy), or only after it (clean). A race check that let one barrier's release reach a
// thread still leaving the previous barrier would miss the racy form whenever thread 0 runs
// first.
__global__ void after_barrier(int *out, bool racy) {
    __shared__ int slot;
    int acc = 0;
    for (int round = 0; round < 4; round++) {
        __syncthreads();
        if (threadIdx.x == 0) slot = round;
        if (racy && threadIdx.x == 1) acc += slot;
        __syncthreads();
        if (!racy && threadIdx.x == 1) acc += slot;
    }
    out[threadIdx.x] = acc;
}

// every block writes the same static shared array and its own output, then reads back its
// own slots after a barrier: nothing is shared between blocks
__global__ void per_block(int *out) {
    __shared__ int sh[64];
    sh[threadIdx.x] = (int)(blockIdx.x * 64 + threadIdx.x);
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = sh[63 - threadIdx.x];
}

// the same with dynamic shared memory
__global__ void per_block_dyn(int *out) {
    extern __shared__ int dsh[];
    dsh[threadIdx.x] = (int)(blockIdx.x * 64 + threadIdx.x);
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = dsh[63 - threadIdx.x] + 1;
}

// blocks of one launch sharing global memory, which nothing orders on a GPU: every block
// writes the same elements (write), or each block reads what the block before it wrote
// (read)
__global__ void blocks_write(int *out) { out[threadIdx.x] = (int)blockIdx.x; }
__global__ void blocks_read(int *buf) {
    buf[blockIdx.x * 64 + threadIdx.x] = (int)blockIdx.x;
    if (blockIdx.x > 0) buf[256 + blockIdx.x * 64 + threadIdx.x] = buf[(blockIdx.x - 1) * 64 + threadIdx.x];
}

// reads what the previous launch wrote (launches on a stream are ordered)
__global__ void reverse(int *dst, const int *src, int n) {
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) dst[i] = src[n - 1 - i];
}

int *dev_ints(size_t n) {
    int *p = NULL;
    cudaMalloc((void **)&p, n * sizeof(int));
    cudaMemset(p, 0, n * sizeof(int));
    return p;
}
} // namespace

extern "C" {

// Runs the named case; returns 0 when it ran and its results are what the kernel computes
// (a race report, when there is one, comes from TSan before this returns), -1 for an
// unknown name or wrong results.
int emu_rc_run(const char *name) {
    int host[256];
    int *a = dev_ints(256), *b = dev_ints(256);
    float *f = NULL;
    cudaMalloc((void **)&f, 512 * sizeof(float));
    int ok = 0;
    const bool racy = strstr(name, "_racy") != NULL;
    if (!strncmp(name, "shared_", 7)) {
        neighbour<<<2, 64>>>(a, !racy);
        cudaMemcpy(host, a, 128 * sizeof(int), cudaMemcpyDeviceToHost);
        ok = racy || (host[0] == 1 && host[63] == 0 && host[64] == 1);
    } else if (!strncmp(name, "global_", 7)) {
        neighbour_global<<<1, 64>>>(a, !racy);
        cudaMemcpy(host, a, 128 * sizeof(int), cudaMemcpyDeviceToHost);
        ok = racy || (host[64] == 1 && host[127] == 0);
    } else if (!strncmp(name, "warp_", 5)) {
        warp_neighbour<<<1, 32>>>(a, !racy);
        cudaMemcpy(host, a, 32 * sizeof(int), cudaMemcpyDeviceToHost);
        ok = racy || (host[0] == 2 && host[1] == 0);
    } else if (!strncmp(name, "wmma_", 5)) {
        float hf[256];
        wmma_store_read<<<1, 32>>>(f, !racy);
        cudaMemcpy(hf, f, sizeof hf, cudaMemcpyDeviceToHost);
        ok = racy || (hf[0] == 2.0f && hf[255] == 2.0f);
    } else if (!strncmp(name, "barriers_", 9)) {
        after_barrier<<<1, 64>>>(a, racy);
        cudaMemcpy(host, a, 64 * sizeof(int), cudaMemcpyDeviceToHost);
        ok = racy || host[1] == 0 + 1 + 2 + 3;
    } else if (!strcmp(name, "wmma_in_place_clean")) {
        float hf[512];
        wmma_in_place<<<3, 64>>>(f, 3);
        cudaMemcpy(hf, f, sizeof hf, cudaMemcpyDeviceToHost);
        ok = hf[0] == 3.0f && hf[511] == 3.0f;
    } else if (!strcmp(name, "blocks_clean")) {
        per_block<<<4, 64>>>(a);
        reverse<<<2, 128>>>(b, a, 256);
        cudaMemcpy(host, b, sizeof host, cudaMemcpyDeviceToHost);
        ok = host[0] == 255 - 63 && host[255] == 63;
        per_block_dyn<<<4, 64, 64 * sizeof(int)>>>(a);
        cudaMemcpy(host, a, sizeof host, cudaMemcpyDeviceToHost);
        ok = ok && host[0] == 64 && host[255] == 193;
    } else if (!strcmp(name, "blocks_write_racy")) {
        blocks_write<<<2, 64>>>(a);
        ok = 1;
    } else if (!strcmp(name, "blocks_read_racy")) {
        int *buf = dev_ints(512);
        blocks_read<<<4, 64>>>(buf);
        cudaFree(buf);
        ok = 1;
    }
    cudaFree(a), cudaFree(b), cudaFree(f);
    return ok && cudaDeviceSynchronize() == cudaSuccess ? 0 : -1;
}
}
