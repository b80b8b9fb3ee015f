/* The "cpu_guard" backend: the CPU kernels, with backend memory that host code cannot
 * touch. Every allocation is its own mapping, kept PROT_NONE except while an op of this
 * table runs; so any read or write of a backend buffer from outside an op — what would
 * be a host dereference of GPU memory on the CUDA backend — stops the process with
 * SIGSEGV at the faulting line. A run on it computes the very bits the CPU backend does;
 * tests train on both and compare, which checks the engine's device discipline on a
 * machine without a GPU. Slow (two mprotect calls per live buffer and op): a check, not a
 * way to train. */
#include "cpu_ops.h"
#include "cpu_optim.h"

#include "qft_base.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define GUARD_MAX 4096

static struct {
    void *p[GUARD_MAX];
    size_t n[GUARD_MAX], asked[GUARD_MAX];
    int vm[GUARD_MAX]; /* 1: a commit inside a reservation (vm_commit), not a mapping */
    int count;
    size_t held, peak; /* bytes asked for (not the pages), live and at most: the CUDA
                          backend's count of its cudaMalloc bytes, for the same run */
} g_guard;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void set_all(int prot) {
    for (int i = 0; i < g_guard.count; i++) mprotect(g_guard.p[i], g_guard.n[i], prot);
}
/* the op's window: every backend buffer readable and writable, then none again */
#define OPEN() set_all(PROT_READ | PROT_WRITE)
#define CLOSE() set_all(PROT_NONE)

static void *guard_alloc(size_t bytes, const char *what) {
    (void)what;
    const size_t page = qft_vm_page(), n = (bytes + page - 1) / page * page;
    void *p = mmap(NULL, n ? n : page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    pthread_mutex_lock(&g_lock);
    if (g_guard.count == GUARD_MAX) {
        pthread_mutex_unlock(&g_lock);
        munmap(p, n ? n : page);
        return NULL;
    }
    g_guard.p[g_guard.count] = p, g_guard.n[g_guard.count] = n ? n : page;
    g_guard.asked[g_guard.count] = bytes;
    g_guard.vm[g_guard.count] = 0;
    g_guard.count++;
    g_guard.held += bytes;
    if (g_guard.held > g_guard.peak) g_guard.peak = g_guard.held;
    pthread_mutex_unlock(&g_lock);
    return p;
}

/* Drops entry i from the table (the caller holds the lock). */
static void forget(int i) {
    g_guard.held -= g_guard.asked[i];
    const int last = g_guard.count - 1;
    g_guard.p[i] = g_guard.p[last], g_guard.n[i] = g_guard.n[last];
    g_guard.asked[i] = g_guard.asked[last], g_guard.vm[i] = g_guard.vm[last];
    g_guard.count--;
}

static void guard_free(void *p) {
    if (!p) return;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_guard.count; i++)
        if (g_guard.p[i] == p && !g_guard.vm[i]) {
            munmap(p, g_guard.n[i]);
            forget(i);
            break;
        }
    pthread_mutex_unlock(&g_lock);
}

/* ---- address space with memory behind parts of it (ABI 8's vm_* entries) --------------
 * A reservation is a PROT_NONE mapping outside the table, so the op windows never open it:
 * only its committed ranges, which are table entries like allocations, become accessible
 * during an op, and a kernel touching an uncommitted range faults as it would on a GPU.
 * Decommitting drops the pages, so the next commit of the range reads zeros. 8 KiB, not
 * the 2 MiB of a GPU, keeps the tiny test models' padding small while still testing that
 * the core aligns its commits to what the backend says (twice a 4 KiB page). */
#define GUARD_VM_GRANULARITY ((size_t)8 << 10)

static size_t guard_vm_granularity(void) { return GUARD_VM_GRANULARITY; }

static void *guard_vm_reserve(size_t bytes) {
    void *p = mmap(NULL, bytes ? bytes : GUARD_VM_GRANULARITY, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int guard_vm_commit(void *p, size_t bytes, const char *what) {
    (void)what;
    pthread_mutex_lock(&g_lock);
    if (g_guard.count == GUARD_MAX) {
        pthread_mutex_unlock(&g_lock);
        return -1;
    }
    const int i = g_guard.count++;
    g_guard.p[i] = p, g_guard.n[i] = bytes, g_guard.asked[i] = bytes, g_guard.vm[i] = 1;
    g_guard.held += bytes;
    if (g_guard.held > g_guard.peak) g_guard.peak = g_guard.held;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

static void guard_vm_decommit(void *p, size_t bytes) {
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_guard.count; i++)
        if (g_guard.p[i] == p && g_guard.vm[i] && g_guard.n[i] == bytes) {
            /* outside an op the range is PROT_NONE already; dropping its pages makes a
             * later commit read zeros, as vm_commit promises */
            madvise(p, bytes, MADV_DONTNEED);
            forget(i);
            break;
        }
    pthread_mutex_unlock(&g_lock);
}

static void guard_vm_unreserve(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : GUARD_VM_GRANULARITY);
}

size_t qft_cpu_guard_mem_peak(void) {
    pthread_mutex_lock(&g_lock);
    const size_t peak = g_guard.peak;
    pthread_mutex_unlock(&g_lock);
    return peak;
}

size_t qft_cpu_guard_mem_held(void) {
    pthread_mutex_lock(&g_lock);
    const size_t held = g_guard.held;
    pthread_mutex_unlock(&g_lock);
    return held;
}

static void guard_zero(float *x, size_t n) {
    OPEN();
    memset(x, 0, n * sizeof *x);
    CLOSE();
}
static void guard_copy(float *dst, const float *src, size_t n) {
    OPEN();
    if (n && dst != src) memmove(dst, src, n * sizeof *dst);
    CLOSE();
}
static void guard_move(void *dst, const void *src, size_t bytes) {
    OPEN();
    if (bytes && dst != src) memcpy(dst, src, bytes);
    CLOSE();
}
static void guard_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    OPEN();
    qft_cpu_gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    CLOSE();
}
static void guard_add(float *out, const float *a, const float *b, size_t n) {
    OPEN();
    qft_cpu_add(out, a, b, n);
    CLOSE();
}
static void guard_embedding_fwd(float *out, const int32_t *ids, const float *table, int N, int C) {
    OPEN();
    qft_cpu_embedding_fwd(out, ids, table, N, C);
    CLOSE();
}
static void guard_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int N,
                                int C) {
    OPEN();
    qft_cpu_embedding_bwd(dtable, dout, ids, N, C);
    CLOSE();
}
static void guard_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N,
                              int C, float eps) {
    OPEN();
    qft_cpu_rmsnorm_fwd(out, rstd, x, w, N, C, eps);
    CLOSE();
}
static void guard_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x,
                              const float *w, const float *rstd, int N, int C) {
    OPEN();
    qft_cpu_rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, C);
    CLOSE();
}
static void guard_rope_table(float *cos, float *sin, int T, int hd, float theta, int rope_type,
                             float factor, float lo, float hi, int orig) {
    OPEN();
    qft_cpu_rope_table(cos, sin, T, hd, theta, rope_type, factor, lo, hi, orig);
    CLOSE();
}
static void guard_rope_fwd(float *x, int ld, const float *cos, const float *sin, int B, int T,
                           int nh, int hd) {
    OPEN();
    qft_cpu_rope_fwd(x, ld, cos, sin, B, T, nh, hd);
    CLOSE();
}
static void guard_rope_bwd(float *dx, int ld, const float *cos, const float *sin, int B, int T,
                           int nh, int hd) {
    OPEN();
    qft_cpu_rope_bwd(dx, ld, cos, sin, B, T, nh, hd);
    CLOSE();
}
static void guard_attention_fwd(float *out, float *lse, const float *qkv, const uint8_t *mask,
                                int B, int T, int H, int KV, int hd, float scale, float *work,
                                size_t work_floats) {
    OPEN();
    qft_cpu_attention_fwd(out, lse, qkv, mask, B, T, H, KV, hd, scale, work, work_floats);
    CLOSE();
}
static void guard_attention_bwd(float *dqkv, const float *dout, const float *out,
                                const float *lse, const float *qkv, const uint8_t *mask, int B,
                                int T, int H, int KV, int hd, float scale, float *work,
                                size_t work_floats) {
    OPEN();
    qft_cpu_attention_bwd(dqkv, dout, out, lse, qkv, mask, B, T, H, KV, hd, scale, work,
                          work_floats);
    CLOSE();
}
static void guard_swiglu_fwd(float *h, const float *gu, int N, int inter) {
    OPEN();
    qft_cpu_swiglu_fwd(h, gu, N, inter);
    CLOSE();
}
static void guard_swiglu_bwd(float *dgu, const float *dh, const float *gu, int N, int inter) {
    OPEN();
    qft_cpu_swiglu_bwd(dgu, dh, gu, N, inter);
    CLOSE();
}
static double guard_xent_fwd(const float *logits, const int32_t *targets, int N, int V,
                             float *lse, float *loss, int *n_valid) {
    OPEN();
    double r = qft_cpu_cross_entropy_fwd(logits, targets, N, V, lse, loss, n_valid);
    CLOSE();
    return r;
}
static void guard_xent_bwd(float *dlogits, const float *logits, const float *lse,
                           const int32_t *targets, int N, int V, float scale) {
    OPEN();
    qft_cpu_cross_entropy_bwd(dlogits, logits, lse, targets, N, V, scale);
    CLOSE();
}
static double guard_xent_fused(float *logits, const int32_t *targets, int N, int V, float scale,
                               float *loss, int *n_valid) {
    OPEN();
    double r = qft_cpu_cross_entropy_fused(logits, targets, N, V, scale, loss, n_valid);
    CLOSE();
    return r;
}
static void guard_adamw(float *p, const float *g, float *m, float *v, size_t n,
                        const qft_ops_adamw_scalars *s) {
    OPEN();
    qft_cpu_adamw(p, g, m, v, n, s);
    CLOSE();
}
static void guard_sgd(float *p, const float *g, float *buf, size_t n,
                      const qft_ops_sgd_scalars *s) {
    OPEN();
    qft_cpu_sgd(p, g, buf, n, s);
    CLOSE();
}
static double guard_sumsq(const float *x, size_t n) {
    OPEN();
    double r = qft_cpu_sumsq(x, n);
    CLOSE();
    return r;
}
static void guard_scale(float *x, size_t n, float coef) {
    OPEN();
    qft_cpu_scale(x, n, coef);
    CLOSE();
}

static void guard_cols_axpby(float *dst, int64_t ldd, float beta, const float *src,
                             int64_t lds, const float *f, float fadd, int64_t N, int64_t n) {
    OPEN();
    qft_cpu_cols_axpby(dst, ldd, beta, src, lds, f, fadd, N, n);
    CLOSE();
}
static void guard_col_dot(float *acc, const float *a, int64_t lda, const float *b, int64_t ldb,
                          const float *div, int64_t N, int64_t n) {
    OPEN();
    qft_cpu_col_dot(acc, a, lda, b, ldb, div, N, n);
    CLOSE();
}
static void guard_col_dot_scale(float *acc, float *g, int64_t ldg, const float *a, int64_t lda,
                                const float *b, int64_t ldb, const float *div, const float *f,
                                int64_t N, int64_t n) {
    OPEN();
    qft_cpu_col_dot_scale(acc, g, ldg, a, lda, b, ldb, div, f, N, n);
    CLOSE();
}
static void guard_lowrank_out(float *y, int64_t ldy, const float *u, const float *B, int64_t k,
                              float scale, const float *f, float *h, int64_t N, int64_t out) {
    OPEN();
    qft_cpu_lowrank_out(y, ldy, u, B, k, scale, f, h, N, out);
    CLOSE();
}
static void guard_div(float *out, const float *a, const float *b, size_t n) {
    OPEN();
    qft_cpu_div(out, a, b, n);
    CLOSE();
}
static void guard_row_norms(float *norm, const float *x, int64_t ld, int64_t n, int64_t len) {
    OPEN();
    qft_cpu_row_norms(norm, x, ld, n, len);
    CLOSE();
}
static void guard_dropout(uint64_t key, double p, const float *src, int64_t N, int64_t d,
                          float *dst, int accumulate) {
    OPEN();
    qft_cpu_dropout(key, p, src, N, d, dst, accumulate);
    CLOSE();
}
/* the layout struct is host memory; only its buffers and dst are backend memory */
static void guard_dequantize(const qft_qlayout *w, int64_t row0, int64_t n, float *dst) {
    OPEN();
    qft_cpu_dequantize(w, row0, n, dst);
    CLOSE();
}

static void guard_embedding_fwd_bf16(float *out, const int32_t *ids, const uint16_t *table,
                                     int N, int C) {
    OPEN();
    qft_cpu_embedding_fwd_bf16(out, ids, table, N, C);
    CLOSE();
}

static void guard_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
    OPEN();
    qft_cpu_f32_to_bf16(dst, src, n);
    CLOSE();
}

static void guard_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    OPEN();
    qft_cpu_bf16_to_f32(dst, src, n);
    CLOSE();
}

/* the layout struct is host memory; its buffers, a, c and the scratch are backend memory */
static void guard_qmatmul(const qft_qlayout *w, int backward, const float *a, int64_t lda,
                          int64_t N, float *c, int64_t ldc, float beta, float *scratch,
                          size_t scratch_floats) {
    OPEN();
    qft_cpu_qmatmul(w, backward, a, lda, N, c, ldc, beta, scratch, scratch_floats);
    CLOSE();
}

static void guard_lowrank_row_norms(float *norm, const qft_qlayout *w, const float *w_dense,
                                    int64_t out, int64_t in, const float *A, const float *B,
                                    int64_t r, float scale) {
    OPEN();
    qft_cpu_lowrank_row_norms(norm, w, w_dense, out, in, A, B, r, scale);
    CLOSE();
}

static const qft_ops guard_ops = {
    .name = "cpu_guard",
    .alloc = guard_alloc,
    .free = guard_free,
    .zero = guard_zero,
    .copy = guard_copy,
    .gemm = guard_gemm,
    .add = guard_add,
    .embedding_fwd = guard_embedding_fwd,
    .embedding_bwd = guard_embedding_bwd,
    .rmsnorm_fwd = guard_rmsnorm_fwd,
    .rmsnorm_bwd = guard_rmsnorm_bwd,
    .rope_table = guard_rope_table,
    .rope_fwd = guard_rope_fwd,
    .rope_bwd = guard_rope_bwd,
    .attention_workspace = qft_cpu_attention_workspace, /* a size: touches no memory */
    .attention_fwd = guard_attention_fwd,
    .attention_bwd = guard_attention_bwd,
    .swiglu_fwd = guard_swiglu_fwd,
    .swiglu_bwd = guard_swiglu_bwd,
    .cross_entropy_fwd = guard_xent_fwd,
    .cross_entropy_bwd = guard_xent_bwd,
    .cross_entropy_fused = guard_xent_fused,
    .upload = guard_move,
    .download = guard_move,
    .adamw = guard_adamw,
    .sgd = guard_sgd,
    .sumsq = guard_sumsq,
    .scale = guard_scale,
    .host_memory = 0,
    .dequantize = guard_dequantize,
    .has_qformat = qft_cpu_has_qformat, /* a table look-up: touches no memory */
    .cols_axpby = guard_cols_axpby,
    .col_dot = guard_col_dot,
    .div = guard_div,
    .row_norms = guard_row_norms,
    .dropout = guard_dropout,
    .embedding_fwd_bf16 = guard_embedding_fwd_bf16,
    .f32_to_bf16 = guard_f32_to_bf16,
    .bf16_to_f32 = guard_bf16_to_f32,
    .qmatmul = guard_qmatmul,
    .lowrank_row_norms = guard_lowrank_row_norms,
    .lowrank_out = guard_lowrank_out,
    .col_dot_scale = guard_col_dot_scale,
    .vm_granularity = guard_vm_granularity,
    .vm_reserve = guard_vm_reserve,
    .vm_commit = guard_vm_commit,
    .vm_decommit = guard_vm_decommit,
    .vm_unreserve = guard_vm_unreserve,
};

const qft_ops *qft_cpu_guard_ops(void) { return &guard_ops; }
