/*
 * The CUDA emulator's device side: what a kernel of core/cuda needs to compile as plain
 * C++ and run on the CPU. Every .cu file of the backend is compiled a second time with this
 * header forced in (-include) after emu_rewrite.py has turned its launches
 * `k<<<grid, block, smem, stream>>>(args)` into `qft_emu::make_launcher(k, grid, block,
 * smem, stream)(args)` and its `extern __shared__ T x[];` into a pointer to the launch's
 * dynamic shared memory. The result, libqft_cuda_emu.so, is the real backend's code run by
 * the emulator's runtime, libqft_cuda_emu_rt.so (cuda_emu_sched.cc, cuda_emu_mem.cc,
 * cuda_emu_runtime.cc, cuda_emu_driver.cc, cuda_emu_lt.cc, and cuda_emu_nccl.cc for the NCCL
 * transport; docs/design-as-built.md describes it): each
 * thread of a block is a fiber, __syncthreads and the warp shuffles are barriers between
 * fibers, device memory is guarded (a host access or an access past an allocation aborts
 * with the address), and cuBLASLt is a reference GEMM. It lets the kernels' logic, their
 * launch shapes and the backend's host/device discipline run on a machine without a GPU;
 * it says nothing of their speed, and warp-level timing (lockstep) is not modelled.
 * Built once more for ThreadSanitizer (the race check: cuda_emu_sched.cc, QFT_EMU_TSAN), it
 * reports a race between a block's threads as compute-sanitizer's racecheck would.
 */
#ifndef QFT_CUDA_EMU_H
#define QFT_CUDA_EMU_H

/* Before the CUDA headers: host_defines.h keeps a __shared__ that is already defined.
 * emu_rewrite.py has turned the sources' __shared__ declarations into the block's own memory
 * (dyn_smem, static_smem); what is left (none in qft's sources) is a function-static, which
 * the blocks of a launch, run one after another, share. */
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

namespace qft_emu {

/* The running fiber's coordinates, set by the scheduler at every switch (one launch runs
 * at a time, on the thread that made it). */
extern uint3 cur_thread, cur_block;
extern dim3 cur_block_dim, cur_grid_dim;

struct launch_cfg {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};

/* Checks a launch as the driver would (block and grid limits, the kernel's
 * __launch_bounds__ when max_threads is not 0, dynamic shared memory against its opt-in);
 * 0 when it may run, else the error is recorded for cudaGetLastError and the launch is
 * dropped. */
int launch_check(const void *fn, const launch_cfg &c, unsigned max_threads);
/* Runs body(ctx) once for every thread of every block of c, block after block. */
void launch_run(const launch_cfg &c, void (*body)(void *), void *ctx);
/* A kernel argument that is a pointer must be null or point into device memory (a kernel
 * given a host pointer faults on a GPU); reports and aborts otherwise. */
void check_pointer_arg(const void *fn, int index, const void *p);

template <class T> void check_arg(const void *fn, int index, const T &v) {
    if constexpr (std::is_pointer<T>::value) check_pointer_arg(fn, index, (const void *)v);
    (void)fn, (void)index, (void)v;
}

template <class... P> struct launcher {
    void (*k)(P...);
    launch_cfg c;
    unsigned max_threads; // the kernel's __launch_bounds__, 0 for none
    /* The kernel was declared with __launch_bounds__(n) (emu_rewrite.py adds the call). */
    launcher bounded(unsigned n) const {
        launcher l = *this;
        l.max_threads = n;
        return l;
    }
    template <class... A> void operator()(A &&...a) {
        static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
        std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
        const void *fn = (const void *)k;
        int i = 0;
        std::apply([&](const auto &...v) { (check_arg(fn, i++, v), ...); }, args);
        if (launch_check(fn, c, max_threads)) return;
        struct ctx_t {
            void (*k)(P...);
            std::tuple<typename std::decay<P>::type...> *args;
        } ctx{k, &args};
        launch_run(
            c,
            [](void *p) {
                ctx_t *x = (ctx_t *)p;
                std::apply(x->k, *x->args); // each thread gets its own copy of the arguments
            },
            &ctx);
    }
};

template <class... P>
launcher<P...> make_launcher(void (*k)(P...), dim3 grid, dim3 block, size_t smem = 0,
                             cudaStream_t stream = 0) {
    return launcher<P...>{k, launch_cfg{grid, block, smem, stream}, 0};
}

/* The block's dynamic shared memory (poisoned at each block's start, as it is garbage on a
 * GPU). */
void *dyn_smem();
/* The block's place for one static __shared__ declaration (emu_rewrite.py turns each into a
 * call): `site` names the declaration (QFT_EMU_SITE, one per declaration and template
 * instance), and every thread of the block that reaches it gets the same bytes, from the
 * block's own arena (poisoned at its start). Blocks have arenas of their own, so the race
 * check, which leaves neighbouring blocks of a launch unordered, sees no sharing between
 * them that a GPU would not have. */
void *static_smem(const void *site, size_t bytes, size_t align);
#define QFT_EMU_SITE ([] { static const char site_ = 0; return &site_; }())

/* Barriers: the whole block, or the lanes of `mask` in the caller's warp (__syncwarp);
 * warp_collective is the warp barrier of a shuffle or a WMMA call, which waits for the
 * lanes as they do but, unlike the other two, orders no memory accesses among them (the
 * race check, cuda_emu_sched.cc, tells the difference). */
void sync_block();
void sync_warp(unsigned mask);
void warp_collective(unsigned mask);
/* The warp's exchange: every lane of mask offers v, then reads lane src's offer. */
uint64_t warp_exchange(unsigned mask, uint64_t v, int src);

template <class T> T shfl_from(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = warp_exchange(mask, bits, src);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

inline int lane_id() {
    const unsigned t = cur_thread.x + cur_block_dim.x * (cur_thread.y + cur_block_dim.y * cur_thread.z);
    return (int)(t & 31u);
}

[[noreturn]] void fatal(const char *msg);

/* WMMA's rules for the memory a fragment is loaded from or stored to: a 256-bit aligned
 * pointer and a leading dimension of whole 16-byte units (8 bf16, 4 floats); on a GPU a
 * break is a misaligned-address fault or silently wrong data. */
inline void wmma_check(const void *p, unsigned ldm, size_t elem, const char *call) {
    char msg[200];
    if ((uintptr_t)p % 32) {
        snprintf(msg, sizeof msg, "%s: pointer %p is not 256-bit aligned", call, p);
        fatal(msg);
    }
    if (ldm * elem % 16) {
        snprintf(msg, sizeof msg, "%s: leading dimension %u is not a multiple of %zu elements", call, ldm, 16 / elem);
        fatal(msg);
    }
}

} // namespace qft_emu

#define threadIdx (qft_emu::cur_thread)
#define blockIdx (qft_emu::cur_block)
#define blockDim (qft_emu::cur_block_dim)
#define gridDim (qft_emu::cur_grid_dim)
#ifndef warpSize
#define warpSize 32
#endif

/* cudaFuncSetAttribute on a kernel (cuda_runtime.h's template form is nvcc's only) */
template <class... P> inline cudaError_t cudaFuncSetAttribute(void (*k)(P...), cudaFuncAttribute a, int v) {
    return cudaFuncSetAttribute((const void *)k, a, v);
}

inline void __syncthreads() { qft_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { qft_emu::sync_warp(mask); }

template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = qft_emu::lane_id();
    return qft_emu::shfl_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = qft_emu::lane_id();
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return qft_emu::shfl_from(mask, v, src);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = qft_emu::lane_id();
    const int src = (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane;
    return qft_emu::shfl_from(mask, v, src);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = qft_emu::lane_id();
    const int src = (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane;
    return qft_emu::shfl_from(mask, v, src);
}

/* the bit casts: the same bits as another type */
template <class To, class From> inline To qft_emu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "a bit cast between sizes");
    To r;
    memcpy(&r, &v, sizeof r);
    return r;
}
inline float __uint_as_float(unsigned u) { return qft_emu_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return qft_emu_bits<unsigned>(f); }
inline float __int_as_float(int i) { return qft_emu_bits<float>(i); }
inline int __float_as_int(float f) { return qft_emu_bits<int>(f); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T> inline T __ldg(const T *p) { return *p; }
/* CUDA's integer min and max (device code has them in the global namespace) */
template <class A, class B, class = typename std::enable_if<std::is_integral<A>::value && std::is_integral<B>::value>::type>
inline typename std::common_type<A, B>::type min(A a, B b) { return a < b ? a : b; }
template <class A, class B, class = typename std::enable_if<std::is_integral<A>::value && std::is_integral<B>::value>::type>
inline typename std::common_type<A, B>::type max(A a, B b) { return a > b ? a : b; }

/* nvcuda::wmma for the 16x16x16 shapes the backend uses. A fragment is warp-wide on a GPU,
 * its elements spread over the lanes in an unspecified order; here every lane holds the
 * whole tile, and the collective calls (load, mma, store) are done by each lane on its own
 * copy, which gives the same result as long as the code treats fragments as opaque (as the
 * WMMA API requires) and calls them with the whole warp (checked with a warp barrier). */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct frag_dims;
template <int M, int N, int K> struct frag_dims<matrix_a, M, N, K> {
    static const int rows = M, cols = K;
};
template <int M, int N, int K> struct frag_dims<matrix_b, M, N, K> {
    static const int rows = K, cols = N;
};
template <int M, int N, int K> struct frag_dims<accumulator, M, N, K> {
    static const int rows = M, cols = N;
};

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static const int rows = frag_dims<Use, M, N, K>::rows, cols = frag_dims<Use, M, N, K>::cols;
    static const int num_elements = rows * cols;
    float x[rows * cols]; // row-major, values as float (bf16 inputs are exact in float)
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, float value) {
    for (int i = 0; i < f.num_elements; i++) f.x[i] = value;
}

/* Which lane owns element e (row-major over the tile) of a fragment: e mod 32, for every
 * fragment type and memory layout alike, as a GPU gives each lane the same elements of an
 * accumulator when it is loaded and stored the same way. Each lane loads the whole tile
 * here, but the race check (TSan, cuda_emu_sched.cc) sees a lane read only the elements it
 * owns, and a store writes each element from its owner's copy: a warp that loads an
 * accumulator and stores it back in place needs no __syncwarp between (it needs none on a
 * GPU), while a lane reading what another lane stored without one is a reported race. */
inline bool emu_owns(int e, int lane) { return (e & 31) == lane; }
/* Under the race check the tile loops are not instrumented (EMU_QUIET: a fragment is the
 * lane's own, on its fiber's stack, and the other lanes' elements are not this lane's
 * accesses), and an owned element's access goes through a call TSan does see (EMU_SEEN;
 * noipa keeps the compiler from moving the access into the quiet caller). Elsewhere all of
 * it is inline. */
#ifdef __SANITIZE_THREAD__
#define EMU_QUIET inline __attribute__((noipa, no_sanitize_thread))
#define EMU_SEEN inline __attribute__((noipa))
#else
#define EMU_QUIET inline
#define EMU_SEEN inline
#endif
template <class E> EMU_SEEN E emu_seen_load(const E *p) { return *p; }
EMU_SEEN void emu_seen_store(float *p, float v) { *p = v; }
inline float emu_to_float(float v) { return v; }
inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// dst (rows, cols) row-major <- the tile at p: element (r, c) at p[r * rs + c * cs]; lane is
// the calling lane's
template <class E>
EMU_QUIET void emu_load_tile(float *dst, const E *p, size_t rs, size_t cs, int rows, int cols, int lane) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            const E *q = p + r * rs + c * cs;
            dst[r * cols + c] = emu_to_float(emu_owns(r * cols + c, lane) ? emu_seen_load(q) : *q);
        }
}
// the owned elements of src (rows, cols) to the tile at p, laid out as emu_load_tile's
EMU_QUIET void emu_store_tile(float *p, const float *src, size_t rs, size_t cs, int rows, int cols, int lane) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            if (emu_owns(r * cols + c, lane)) emu_seen_store(p + r * rs + c * cs, src[r * cols + c]);
}
// d (M, N) = c + a (M, K) b (K, N), each sum in k order from c; d may be c
EMU_QUIET void emu_mma(float *d, const float *a, const float *b, const float *c, int M, int N, int K) {
    float out[16 * 16];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c[i * N + j];
            for (int k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            out[i * N + j] = s;
        }
    memcpy(d, out, sizeof(float) * M * N);
}

template <class Use, int M, int N, int K, class T, class L, class E>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const E *p, unsigned ldm) {
    qft_emu::wmma_check(p, ldm, sizeof(E), "wmma::load_matrix_sync");
    qft_emu::warp_collective(0xffffffffu);
    typedef fragment<Use, M, N, K, T, L> F;
    const bool rowm = std::is_same<L, row_major>::value;
    emu_load_tile(f.x, p, rowm ? ldm : 1, rowm ? 1 : ldm, F::rows, F::cols, qft_emu::lane_id());
}

// An accumulator's load names its memory layout, as store_matrix_sync does.
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm,
                             layout_t layout) {
    qft_emu::wmma_check(p, ldm, sizeof(float), "wmma::load_matrix_sync");
    qft_emu::warp_collective(0xffffffffu);
    const bool rowm = layout == mem_row_major;
    emu_load_tile(f.x, p, rowm ? ldm : 1, rowm ? 1 : ldm, M, N, qft_emu::lane_id());
}

template <int M, int N, int K, class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float> &d,
                     const fragment<matrix_a, M, N, K, TA, LA> &a,
                     const fragment<matrix_b, M, N, K, TB, LB> &b,
                     const fragment<accumulator, M, N, K, float> &c) {
    static_assert(M * N <= 16 * 16, "a fragment larger than the emulator's 16 x 16");
    qft_emu::warp_collective(0xffffffffu);
    emu_mma(d.x, a.x, b.x, c.x, M, N, K);
}

template <int M, int N, int K>
inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f,
                              unsigned ldm, layout_t layout) {
    qft_emu::wmma_check(p, ldm, sizeof(float), "wmma::store_matrix_sync");
    qft_emu::warp_collective(0xffffffffu);
    // every lane holds the same values and writes the elements it owns
    const bool rowm = layout == mem_row_major;
    emu_store_tile(p, f.x, rowm ? ldm : 1, rowm ? 1 : ldm, M, N, qft_emu::lane_id());
    qft_emu::warp_collective(0xffffffffu);
}
} // namespace wmma
} // namespace nvcuda

#endif
