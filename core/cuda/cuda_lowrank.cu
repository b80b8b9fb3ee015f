// The op table's lowrank_row_norms (qft_ops.h, ABI 6): DoRA's ||W_j + s B_j A|| for every
// row of a linear's weight in one read of W, as it is stored (NF4, HQQ, bf16, or dense
// fp32), with neither W nor W + s B A written out. The generic path (dequantize fp32 tiles,
// a GEMM adding s B A into them, row_norms) moves about 16 bytes per weight; this one moves
// the packed half byte, and A from L2.
//
// A block takes ROWS rows of W and their rows of B (in shared memory); each thread walks
// columns, forms l = B_j A[:, c] for the block's rows with A's column read once, then each
// element W_jc + s l exactly as cuda_twin.h's qft_twin_lowrank_elem forms it (the CPU's
// bits), and sums the squares in double. The row sums are reduced in a fixed tree.
#include "cuda_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

namespace {
const int ROWS = 16, THREADS = 256, WARPS = THREADS / 32;

// W as the kernel reads it: one of dense fp32, bf16 bits, NF4 or HQQ.
struct lr_weight {
    const float *f32;     // (out, in) or NULL
    const uint16_t *bf16; // (out, in) or NULL
    qft_cuda_nf4 nf4;     // when nf4_on
    qft_cuda_hqq hqq;     // when hqq_on
    qft_twin_hqq_geom g;
    int nf4_on, hqq_on;
    int64_t out, in;
};

// W[r][c] as `dequantize` gives it (the same twin arithmetic).
__device__ float lr_elem(const lr_weight &w, int64_t r, int64_t c) {
    const int64_t i = r * w.in + c;
    if (w.f32) return w.f32[i];
    if (w.bf16) return __uint_as_float((uint32_t)w.bf16[i] << 16);
    if (w.nf4_on) {
        const float a = qft_twin_nf4_absmax(w.nf4.absmax, w.nf4.qabsmax, w.nf4.nested_absmax,
                                            w.nf4.nested_map, w.nf4.offset, i / w.nf4.blocksize);
        return qft_twin_mul(w.nf4.code[qft_twin_nf4_code(w.nf4.packed, i)], a);
    }
    // HQQ groups the flattened weight as (R, C), which is (out, in) only when a group is a
    // whole row: the element's place there, as dequantize finds it
    const int64_t gr = i / w.g.C, gc = i - gr * w.g.C;
    const int64_t gi = qft_twin_hqq_group(&w.g, gr, gc);
    const float z = qft_twin_hqq_zero(w.hqq.zero, w.hqq.zero_q, w.hqq.zero_meta[0],
                                      w.hqq.zero_meta[1], gi);
    const float s = qft_twin_hqq_scale(w.hqq.scale, w.hqq.scale_q, w.hqq.scale_meta,
                                       w.g.n_groups, gi);
    return qft_twin_hqq_value(qft_twin_hqq_code(w.hqq.packed, &w.g, gr, gc), z, s);
}

// norm (out); A (r, in), B (out, r). Dynamic shared memory: ROWS * r floats of B.
__global__ void __launch_bounds__(THREADS)
    lowrank_norms_kernel(float *norm, lr_weight w, const float *A, const float *B, int64_t r,
                         float scale) {
    extern __shared__ float bs[]; // (ROWS, r)
    __shared__ double part[WARPS][ROWS];
    const int64_t j0 = (int64_t)blockIdx.x * ROWS;
    const int rows = (int)(w.out - j0 < ROWS ? w.out - j0 : ROWS);
    for (int64_t e = threadIdx.x; e < (int64_t)ROWS * r; e += THREADS) // rows past out: 0
        bs[e] = e < (int64_t)rows * r ? B[j0 * r + e] : 0.0f;
    __syncthreads();
    // acc and l stay in registers only if every loop over their index is unrolled: a loop
    // left rolled indexes them at run time, which puts both in local memory (ptxas: a
    // 192-byte stack frame, a load and a store of l[i] for every product)
    double acc[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; i++) acc[i] = 0.0;
    for (int64_t c = threadIdx.x; c < w.in; c += THREADS) {
        float l[ROWS];
#pragma unroll
        for (int i = 0; i < ROWS; i++) l[i] = 0.0f;
        for (int64_t k = 0; k < r; k++) { // A's column read once for the block's rows
            const float a = A[k * w.in + c];
#pragma unroll
            for (int i = 0; i < ROWS; i++) l[i] = qft_twin_add(l[i], qft_twin_mul(bs[i * r + k], a));
        }
#pragma unroll
        for (int i = 0; i < ROWS; i++) {
            if (i >= rows) continue;
            const float v = qft_twin_add(lr_elem(w, j0 + i, c), qft_twin_mul(scale, l[i]));
            acc[i] = qft_twin_dadd(acc[i], qft_twin_dmul((double)v, (double)v));
        }
    }
    // each row's sum: lanes by a fixed shuffle tree, then the warps in order
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
        double v = acc[i];
        for (int off = 16; off > 0; off >>= 1) v = qft_twin_dadd(v, __shfl_down_sync(0xffffffffu, v, off));
        if (lane == 0) part[warp][i] = v;
    }
    __syncthreads();
    if (threadIdx.x < rows) {
        double s = 0.0;
        for (int k = 0; k < WARPS; k++) s = qft_twin_dadd(s, part[k][threadIdx.x]);
        norm[j0 + threadIdx.x] = (float)sqrt(s);
    }
}

void lr_fail(const char *msg) { qft_cuda_fail("lowrank_row_norms", __FILE__, __LINE__, msg); }

int use_tiles; // qft_cuda_set_lowrank_tiles

// The generic path, for a run told not to trust the kernel above: fp32 tiles of W in the
// backend's result scratch (64 MiB), s B A added by the GEMM, then row_norms.
void lowrank_by_tiles(float *norm, const qft_qlayout *w, const float *w_dense, int64_t out,
                      int64_t in, const float *A, const float *B, int64_t r, float scale) {
    int64_t T = ((int64_t)16 << 20) / in;
    T = T < 1 ? 1 : T < out ? T : out;
    float *tile = (float *)qft_cuda_scratch((size_t)(T * in) * sizeof(float)); // (T, in)
    if (!tile) return; // recorded
    for (int64_t r0 = 0; r0 < out; r0 += T) {
        const int64_t n = out - r0 < T ? out - r0 : T;
        if (w) {
            qft_cuda_dequantize(w, r0, n, tile);
        } else if (CUDA_CHECK(cudaMemcpyAsync(tile, w_dense + r0 * in, (size_t)(n * in) * 4,
                                              cudaMemcpyDeviceToDevice, 0))) {
            return;
        }
        qft_cuda_gemm(0, 0, (int)n, (int)in, (int)r, scale, B + r0 * r, (int)r, A, (int)in, 1.0f,
                      tile, (int)in);
        qft_cuda_row_norms(norm + r0, tile, in, n, in);
    }
}
} // namespace

extern "C" void qft_cuda_set_lowrank_tiles(int tiles) { use_tiles = tiles != 0; }

// The entry returns void: a layout the kernel cannot read, or a rank whose rows of B do not
// fit the block's shared memory, becomes the backend's recorded error (norm untouched).
extern "C" void qft_cuda_lowrank_row_norms(float *norm, const qft_qlayout *w, const float *w_dense,
                                           int64_t out, int64_t in, const float *A,
                                           const float *B, int64_t r, float scale) {
    char msg[512];
    if (out <= 0 || in <= 0) return;
    if (use_tiles) return lowrank_by_tiles(norm, w, w_dense, out, in, A, B, r, scale);
    if (r < 0 || (size_t)ROWS * (size_t)r * sizeof(float) > (size_t)48 << 10) {
        snprintf(msg, sizeof msg, "rank %lld: at most %d rows of B fit a block", (long long)r,
                 (int)((48 << 10) / (ROWS * sizeof(float))));
        return lr_fail(msg);
    }
    lr_weight lw;
    memset(&lw, 0, sizeof lw);
    lw.out = out, lw.in = in;
    if (!w) {
        if (!w_dense) return lr_fail("neither a layout nor a dense weight given");
        lw.f32 = w_dense;
    } else {
        if (w->out != out || w->in != in) {
            snprintf(msg, sizeof msg, "the layout is (%lld, %lld), the call says (%lld, %lld)",
                     (long long)w->out, (long long)w->in, (long long)out, (long long)in);
            return lr_fail(msg);
        }
        qft_cuda_nf4 nf4;
        qft_cuda_hqq hqq;
        qft_cuda_weight cw;
        if (qft_cuda_weight_of(w, &nf4, &hqq, &cw, msg, sizeof msg)) return lr_fail(msg);
        if (cw.bf16) {
            lw.bf16 = cw.bf16;
        } else if (cw.nf4) {
            lw.nf4 = nf4, lw.nf4_on = 1;
            if (!nf4.absmax && (!nf4.qabsmax || !nf4.nested_absmax || !nf4.nested_map))
                return lr_fail("NF4 layout without its absmax");
        } else {
            lw.hqq = hqq, lw.hqq_on = 1;
            if (hqq.n != out * in ||
                qft_twin_hqq_geom_make(&lw.g, hqq.nbits, hqq.group_size, hqq.axis, hqq.n))
                return lr_fail("an HQQ layout whose geometry does not hold the weight");
        }
    }
    const unsigned blocks = (unsigned)((out + ROWS - 1) / ROWS);
    lowrank_norms_kernel<<<blocks, THREADS, (size_t)ROWS * (size_t)r * sizeof(float)>>>(
        norm, lw, A, B, r, scale);
    CUDA_LAUNCHED();
}
