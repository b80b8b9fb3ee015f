// The CUDA backend's state and op table: device selection, the first-error record that
// stands in for return codes the op table's void entries cannot carry, memory, copies.
#include "cuda_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qft_cuda_state qft_cuda_g;

// The first failure wins: later ones are usually its consequences.
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static int fail_set;
static char fail_msg[1024];

int qft_cuda_fail(const char *call, const char *file, int line, const char *msg) {
    pthread_mutex_lock(&fail_lock);
    // printed: the first, and a word that the rest are not (after a fault every call fails,
    // the teardown's frees too: a hundred lines that would bury the cause)
    const int n = fail_set;
    if (fail_set < 2) fail_set++;
    if (!n) snprintf(fail_msg, sizeof fail_msg, "%s:%d: %s: %s", file, line, call, msg);
    pthread_mutex_unlock(&fail_lock);
    if (!n) fprintf(stderr, "qft cuda: %s:%d: %s: %s\n", file, line, call, msg);
    if (n == 1)
        fprintf(stderr, "qft cuda: %s:%d: %s: %s (and any later CUDA failure: not printed, "
                        "usually consequences of the first)\n", file, line, call, msg);
    return 1;
}

extern "C" int qft_cuda_status(qft_err *err) {
    pthread_mutex_lock(&fail_lock);
    int bad = fail_set;
    if (bad) qft_err_setf(err, "CUDA backend: %s", fail_msg);
    pthread_mutex_unlock(&fail_lock);
    return bad ? -1 : 0;
}

extern "C" int qft_cuda_sync(qft_err *err) {
    CUDA_CHECK(cudaDeviceSynchronize());
    return qft_cuda_status(err);
}

extern "C" const char *qft_cuda_device_name(void) {
    return qft_cuda_g.ready ? qft_cuda_g.name : "no CUDA device";
}

extern "C" size_t qft_cuda_mem_used(void) {
    size_t free_b = 0, total_b = 0;
    if (CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b))) return 0;
    return total_b - free_b;
}

extern "C" int qft_cuda_upload(void *dst, const void *src, size_t bytes, qft_err *err) {
    if (bytes && CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice)))
        return qft_cuda_status(err);
    return 0;
}

extern "C" int qft_cuda_download(void *dst, const void *src, size_t bytes, qft_err *err) {
    if (bytes && CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)))
        return qft_cuda_status(err);
    return 0;
}

// The bytes this library holds through cudaMalloc (op table, scratch, cuBLASLt workspace)
// and their high-water mark, for the run's "device peak" beside PyTorch's
// max_memory_allocated (both without the CUDA context). cudaFree does not say a buffer's
// size, so the live buffers are kept here: a few thousand at most (the packed weights'
// buffers), allocated and freed rarely, so a linear table is enough.
static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mem_rec { void *p; size_t bytes; } *mem_tab;
static size_t mem_n, mem_cap, mem_held, mem_peak;

void qft_cuda_mem_note_alloc(void *p, size_t bytes) {
    pthread_mutex_lock(&mem_lock);
    if (mem_n == mem_cap) {
        size_t cap = mem_cap ? 2 * mem_cap : 1024;
        void *t = realloc(mem_tab, cap * sizeof *mem_tab);
        if (t) mem_tab = (struct mem_rec *)t, mem_cap = cap;
    }
    // a full table (realloc failed) still counts the bytes: the peak stays a lower bound
    if (mem_n < mem_cap) mem_tab[mem_n].p = p, mem_tab[mem_n].bytes = bytes, mem_n++;
    mem_held += bytes;
    if (mem_held > mem_peak) mem_peak = mem_held;
    pthread_mutex_unlock(&mem_lock);
}

void qft_cuda_mem_note_free(void *p) {
    pthread_mutex_lock(&mem_lock);
    for (size_t i = mem_n; i-- > 0;) // the newest first: scratch and activations
        if (mem_tab[i].p == p) {
            mem_held -= mem_tab[i].bytes;
            mem_tab[i] = mem_tab[--mem_n];
            break;
        }
    pthread_mutex_unlock(&mem_lock);
}

extern "C" int qft_cuda_abi_version(void) { return QFT_ABI_VERSION; }

extern "C" size_t qft_cuda_mem_peak(void) {
    pthread_mutex_lock(&mem_lock);
    size_t peak = mem_peak;
    pthread_mutex_unlock(&mem_lock);
    return peak;
}

extern "C" size_t qft_cuda_mem_held(void) {
    pthread_mutex_lock(&mem_lock);
    size_t held = mem_held;
    pthread_mutex_unlock(&mem_lock);
    return held;
}

void *qft_cuda_scratch(size_t bytes) {
    if (bytes <= qft_cuda_g.scratch_bytes) return qft_cuda_g.scratch;
    // queued kernels may still read the old buffer
    if (CUDA_CHECK(cudaDeviceSynchronize())) return NULL;
    if (qft_cuda_g.scratch) {
        qft_cuda_mem_note_free(qft_cuda_g.scratch);
        CUDA_CHECK(cudaFree(qft_cuda_g.scratch));
    }
    qft_cuda_g.scratch = NULL, qft_cuda_g.scratch_bytes = 0;
    size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
    if (CUDA_CHECK(cudaMalloc(&qft_cuda_g.scratch, want))) return NULL;
    qft_cuda_mem_note_alloc(qft_cuda_g.scratch, want);
    qft_cuda_g.scratch_bytes = want;
    return qft_cuda_g.scratch;
}

// cudaMalloc aligns to 256 bytes, which covers the table's 64 (the pool's allocations too).
// `what` names the buffer in the error when the device is full.
//
// Where the device has memory pools, the op table allocates from the device's default pool
// in stream order (cudaMallocAsync / cudaFreeAsync on the stream every op runs on), with
// the pool told to keep what is freed: the adapters free and allocate their saved
// activations layer by layer at every step, and cudaFree would wait for the device each
// time, so the host could no longer queue kernels ahead of the GPU. This is the role of
// PyTorch's caching allocator; the held/peak counts below stay those of live buffers.
static void *cuda_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e = qft_cuda_g.pooled ? cudaMallocAsync(&p, bytes ? bytes : 1, 0)
                                      : cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s (%zu bytes for %s)", cudaGetErrorString(e), bytes,
                 what ? what : "?");
        qft_cuda_fail("cudaMalloc", __FILE__, __LINE__, msg);
        return NULL;
    }
    qft_cuda_mem_note_alloc(p, bytes ? bytes : 1);
    return p;
}

static void cuda_free(void *p) {
    if (!p) return;
    qft_cuda_mem_note_free(p);
    if (qft_cuda_g.pooled)
        CUDA_CHECK(cudaFreeAsync(p, 0));
    else
        CUDA_CHECK(cudaFree(p));
}

void qft_cuda_zero(float *x, size_t n) {
    if (n) CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof *x, 0));
}

void qft_cuda_copy(float *dst, const float *src, size_t n) {
    if (n && dst != src)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, 0));
}

static void cuda_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

static void cuda_download(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

// Page-locking goes around CUDA_CHECK: a refusal (a driver or sandbox without it, a range
// that overlaps one locked before) is the caller's to report and leaves the backend usable,
// so the runtime's last error is cleared for the next launch's check.
static int cuda_host_pin(void *p, size_t bytes, char *why, size_t why_len) {
    const cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterDefault);
    if (e == cudaSuccess) return 0;
    cudaGetLastError();
    snprintf(why, why_len, "cudaHostRegister: %s", cudaGetErrorString(e));
    // anything but a refusal (an earlier fault's sticky error, say) is the backend's failure
    if (e != cudaErrorNotSupported && e != cudaErrorNotPermitted && e != cudaErrorInvalidValue &&
        e != cudaErrorMemoryAllocation && e != cudaErrorHostMemoryAlreadyRegistered)
        qft_cuda_fail("cudaHostRegister", __FILE__, __LINE__, cudaGetErrorString(e));
    return -1;
}

// Copies are synchronous (upload and download), so nothing queued still reads the range.
static void cuda_host_unpin(void *p) { CUDA_CHECK(cudaHostUnregister(p)); }

static int cuda_status(int wait, char *why, size_t why_len) {
    if (wait) CUDA_CHECK(cudaDeviceSynchronize()); // a queued kernel's fault surfaces here
    qft_err e = {0, ""};
    if (!qft_cuda_status(&e)) return 0;
    snprintf(why, why_len, "%s", e.msg);
    return -1;
}

// qft_ops's AdamW scalars are cuda_twin.h's, field for field.
static void cuda_adamw(float *p, const float *g, float *m, float *v, size_t n,
                       const qft_ops_adamw_scalars *s) {
    qft_cuda_adamw_scalars c;
    c.decay_on = s->decay_on, c.decay = s->decay, c.w1 = s->w1, c.w1m = s->w1m;
    c.small = s->small, c.b2 = s->b2, c.c2 = s->c2, c.neg_step = s->neg_step;
    c.bc2_sqrt = s->bc2_sqrt, c.eps = s->eps;
    qft_cuda_adamw(p, g, m, v, n, &c);
}

// Positional (C++17 has no designated initializers): the order of qft_ops's fields.
static const qft_ops cuda_ops = {
    "cuda",
    cuda_alloc,
    cuda_free,
    qft_cuda_zero,
    qft_cuda_copy,
    qft_cuda_gemm,
    qft_cuda_add,
    qft_cuda_embedding_fwd,
    qft_cuda_embedding_bwd,
    qft_cuda_rmsnorm_fwd,
    qft_cuda_rmsnorm_bwd,
    qft_cuda_rope_table,
    qft_cuda_rope_fwd,
    qft_cuda_rope_bwd,
    qft_cuda_attention_workspace,
    qft_cuda_attention_fwd,
    qft_cuda_attention_bwd,
    qft_cuda_swiglu_fwd,
    qft_cuda_swiglu_bwd,
    qft_cuda_cross_entropy_fwd,
    qft_cuda_cross_entropy_bwd,
    qft_cuda_cross_entropy_fused,
    cuda_upload,
    cuda_download,
    cuda_adamw,
    qft_cuda_sgd,
    qft_cuda_sumsq,
    qft_cuda_scale,
    0, // host_memory: device pointers, reached only through the ops
    qft_cuda_dequantize,
    qft_cuda_has_qformat,
    qft_cuda_cols_axpby,
    qft_cuda_col_dot,
    qft_cuda_div,
    qft_cuda_row_norms,
    qft_cuda_dropout,
    qft_cuda_embedding_fwd_bf16,
    qft_cuda_f32_to_bf16,
    qft_cuda_bf16_to_f32,
    qft_cuda_qmatmul,
    qft_cuda_lowrank_row_norms,
    qft_cuda_lowrank_out,
    qft_cuda_col_dot_scale,
    qft_cuda_vm_granularity,
    qft_cuda_vm_reserve,
    qft_cuda_vm_commit,
    qft_cuda_vm_decommit,
    qft_cuda_vm_unreserve,
    cuda_host_pin,
    cuda_host_unpin,
    cuda_status,
};

static const size_t LT_WORKSPACE = (size_t)32 << 20; // cuBLASLt's recommendation for sm_90

extern "C" const qft_ops *qft_cuda_ops(int device, qft_err *err) {
    struct qft_cuda_state *g = &qft_cuda_g;
    if (g->ready) {
        if (device == g->device) return &cuda_ops;
        qft_err_setf(err, "train.device = %d: the CUDA backend is already running on device %d "
                          "(one device per process)", device, g->device);
        return NULL;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        qft_err_setf(err, "train.backend = \"cuda\": no CUDA device (cudaGetDeviceCount: %s)",
                     e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return NULL;
    }
    if (device < 0 || device >= count) {
        qft_err_setf(err, "train.device = %d: this machine has %d CUDA device%s (0..%d)", device,
                     count, count == 1 ? "" : "s", count - 1);
        return NULL;
    }
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
        (e = cudaSetDevice(device)) != cudaSuccess) {
        qft_err_setf(err, "train.backend = \"cuda\": device %d: %s", device, cudaGetErrorString(e));
        return NULL;
    }
    if (prop.major < 8) {
        qft_err_setf(err, "train.backend = \"cuda\": device %d (%s) is sm_%d%d; the CUDA backend "
                          "needs sm_80 or newer (bf16 tensor cores)", device, prop.name,
                     prop.major, prop.minor);
        return NULL;
    }
    g->device = device;
    g->sm_count = prop.multiProcessorCount;
    g->smem_optin = prop.sharedMemPerBlockOptin;
    snprintf(g->name, sizeof g->name, "%s, sm_%d%d, %d SMs, %.1f GiB", prop.name, prop.major,
             prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1 << 30));
    if (CUBLAS_CHECK(cublasLtCreate(&g->lt)) ||
        CUDA_CHECK(cudaMalloc(&g->lt_work, LT_WORKSPACE)) || qft_cuda_attention_setup()) {
        qft_err first = {0, ""};
        qft_cuda_status(&first);
        qft_err_setf(err, "train.backend = \"cuda\": setting up device %d (%s): %s", device,
                     prop.name, first.msg);
        return NULL;
    }
    g->lt_work_bytes = LT_WORKSPACE;
    qft_cuda_mem_note_alloc(g->lt_work, LT_WORKSPACE);
    int pools = 0;
    cudaMemPool_t pool;
    uint64_t keep_all = UINT64_MAX; // never hand freed pool memory back to the driver
    if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) == cudaSuccess &&
        pools && cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess &&
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all) == cudaSuccess)
        g->pooled = 1;
    cudaGetLastError(); // a device without pools leaves plain cudaMalloc, not an error
    /* QFT_CUDA_ATTENTION=flash: the flash kernels instead of the GEMM path, =tc: the
     * tensor-core kernels (at bf16 matmul precision), =gemm: the GEMM path, for a run (the
     * GPU check's comparisons and choice) without rebuilding */
    const char *att = getenv("QFT_CUDA_ATTENTION");
    if (att && strcmp(att, "flash") == 0) qft_cuda_set_attention_kernel(1);
    if (att && strcmp(att, "tc") == 0) qft_cuda_set_attention_kernel(2);
    if (att && strcmp(att, "gemm") == 0) qft_cuda_set_attention_kernel(0);
    /* QFT_CUDA_QMATMUL=onchip: packed weights decoded inside the GEMM kernel instead of
     * into a bf16 scratch for cuBLASLt (bf16 matmul precision only) */
    const char *qmm = getenv("QFT_CUDA_QMATMUL");
    if (qmm && strcmp(qmm, "onchip") == 0) qft_cuda_set_qmatmul_kernel(1);
    /* QFT_CUDA_LOWRANK=tiles: DoRA's norms the generic way (cuda_lowrank.cu) */
    const char *lr = getenv("QFT_CUDA_LOWRANK");
    if (lr && strcmp(lr, "tiles") == 0) qft_cuda_set_lowrank_tiles(1);
    /* QFT_CUDA_LOWRANK_OUT=gemm: DoRA's output as a GEMM, a copy and a scale (cuda_adapt.cu)
     * instead of the fused kernel */
    const char *lo = getenv("QFT_CUDA_LOWRANK_OUT");
    if (lo && strcmp(lo, "gemm") == 0) qft_cuda_set_lowrank_out_unfused(1);
    g->ready = 1;
    return &cuda_ops;
}
