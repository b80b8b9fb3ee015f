// Causal grouped-query attention, flash-style (the op table's entries run the GEMM path of
// cuda_attention_gemm.cu instead unless qft_cuda_set_attention_kernel(1) chose these
// kernels or the scratch is too small for it): queries and keys in tiles of QFT_ATT_TILE
// (cuda_twin.h), scores of one tile pair in registers, an online softmax over key tiles,
// the log-sum-exp saved; nothing of size (T, T) exists. fp32 throughout (the op table is
// fp32). The entries here also dispatch to the bf16 tensor-core kernels
// (cuda_attention_tc.cu) when they were chosen.
//
// Forward and dQ: one block per (query tile, head, batch row), warp w owning 8 query rows,
// lane = key within the key tile. dK and dV: one block per (key tile, kv head, batch row),
// warp w owning 8 keys, lane = query within the query tile, looping over the kv head's
// group of query heads. Each output element has one owner that sums in a fixed order, so
// there are no atomics and the results are deterministic; the price is that backward
// computes the probabilities twice (once per kernel).
#include "cuda_internal.h"

#include <stdio.h>

namespace {
const int TILE = QFT_ATT_TILE;       // rows of a query or key tile; = warp size
const int WARPS = 4;                 // threads per block = 128
const int ROWS = TILE / WARPS;       // query rows (forward, dQ) or keys (dK/dV) per warp
const unsigned FULL = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// An odd row stride for tiles whose rows are read one per lane, so that the 32 lanes hit
// 32 different banks.
__host__ __device__ int odd_stride(int hd) { return hd | 1; }

// dst (TILE, stride) <- rows [0, nvalid) of src (row stride ld, hd wide); rows past
// nvalid become 0 so partial tiles compute harmlessly.
__device__ void load_tile(float *dst, int stride, const float *src, size_t ld, int nvalid,
                          int hd) {
    for (int e = threadIdx.x; e < TILE * hd; e += WARPS * 32) {
        const int r = e / hd, d = e % hd;
        dst[r * stride + d] = r < nvalid ? src[(size_t)r * ld + d] : 0.0f;
    }
}

struct att_args {
    const float *qkv;    // (B, T, (H+2KV)*hd)
    const uint8_t *mask; // (B, T) or NULL
    int T, H, KV, hd;
    float scale;
};

template <int ND> // ND = ceil(hd / 32) dims per lane
__global__ void __launch_bounds__(WARPS * 32)
    att_fwd_kernel(float *out, float *lse, att_args a) {
    extern __shared__ float sm[];
    const int hd = a.hd, ks = odd_stride(hd);
    float *Qs = sm;                 // (TILE, hd)
    float *Ks = Qs + TILE * hd;     // (TILE, ks)
    float *Vs = Ks + TILE * ks;     // (TILE, hd)
    const int nqt = qft_twin_att_tiles(a.T);
    const int qt = nqt - 1 - blockIdx.x; // long (late) tiles first: causal load balance
    const int h = blockIdx.y, b = blockIdx.z;
    const int kvh = qft_twin_att_kv_head(h, a.H, a.KV);
    const int ld = (a.H + 2 * a.KV) * hd;
    const int i0 = qt * TILE, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.T : NULL; // (T)

    load_tile(Qs, hd, a.qkv + qft_twin_att_q(b, i0, h, a.T, a.H, a.KV, hd), ld,
              min(TILE, a.T - i0), hd);
    float m[ROWS], l[ROWS], acc[ROWS][ND];
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
        for (int k = 0; k < ND; k++) acc[r][k] = 0.0f;
    }
    const int nkt = qft_twin_att_key_tiles_for(qt);
    for (int kt = 0; kt < nkt; kt++) {
        const int j0 = kt * TILE, nk = min(TILE, a.T - j0);
        __syncthreads(); // the previous tile is no longer read
        load_tile(Ks, ks, a.qkv + qft_twin_att_k(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
        load_tile(Vs, hd, a.qkv + qft_twin_att_v(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
        __syncthreads();
        float s[ROWS];
        for (int r = 0; r < ROWS; r++) s[r] = 0.0f;
        for (int d = 0; d < hd; d++) {
            const float kd = Ks[lane * ks + d];
            for (int r = 0; r < ROWS; r++) s[r] += Qs[(warp * ROWS + r) * hd + d] * kd;
        }
        const int j = j0 + lane;
        float p[ROWS];
        for (int r = 0; r < ROWS; r++) {
            const int i = i0 + warp * ROWS + r;
            const float sc = qft_twin_att_visible(i, j, a.T, mb) && i < a.T ? s[r] * a.scale
                                                                            : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(sc));
            p[r] = 0.0f;
            if (m_new == -INFINITY) continue; // nothing visible yet in this row
            p[r] = sc == -INFINITY ? 0.0f : expf(sc - m_new);
            const float alpha = qft_twin_rescale(m[r], m_new);
            l[r] = l[r] * alpha + warp_sum(p[r]);
            for (int k = 0; k < ND; k++) acc[r][k] *= alpha;
            m[r] = m_new;
        }
        for (int c = 0; c < TILE; c++)
            for (int r = 0; r < ROWS; r++) {
                const float pc = __shfl_sync(FULL, p[r], c);
                for (int k = 0; k < ND; k++) {
                    const int d = lane + 32 * k;
                    if (d < hd) acc[r][k] += pc * Vs[c * hd + d];
                }
            }
    }
    for (int r = 0; r < ROWS; r++) {
        const int i = i0 + warp * ROWS + r;
        if (i >= a.T) continue;
        const bool none = l[r] == 0.0f; // no visible key: out 0, lse -inf
        float *o = out + ((size_t)b * a.T + i) * (size_t)(a.H * hd) + (size_t)h * hd; // (hd)
        for (int k = 0; k < ND; k++) {
            const int d = lane + 32 * k;
            if (d < hd) o[d] = none ? 0.0f : acc[r][k] / l[r];
        }
        if (lane == 0) lse[((size_t)b * a.H + h) * a.T + i] = none ? -INFINITY : m[r] + logf(l[r]);
    }
}

struct att_grad_args {
    att_args f;
    const float *dout; // (B, T, H*hd)
    const float *out;  // (B, T, H*hd)
    const float *lse;  // (B, H, T)
    float *dqkv;       // (B, T, (H+2KV)*hd)
};

// D = rowwise dO . O for the 8 rows of this warp, from dO in shared memory (TILE, hd) and
// O in global memory; every lane gets every row's value.
__device__ void rows_dot(float *D, const float *dOs, const float *O, size_t od, int row0,
                         int nvalid, int hd) {
    const int lane = threadIdx.x % 32;
    for (int r = 0; r < ROWS; r++) {
        const int rr = row0 + r;
        float part = 0.0f;
        if (rr < nvalid)
            for (int d = lane; d < hd; d += 32) part += dOs[rr * hd + d] * O[(size_t)rr * od + d];
        D[r] = warp_sum(part);
    }
}

template <int ND>
__global__ void __launch_bounds__(WARPS * 32) att_bwd_dq_kernel(att_grad_args g) {
    extern __shared__ float sm[];
    const att_args &a = g.f;
    const int hd = a.hd, ks = odd_stride(hd);
    float *Qs = sm;               // (TILE, hd)
    float *dOs = Qs + TILE * hd;  // (TILE, hd)
    float *Ks = dOs + TILE * hd;  // (TILE, ks)
    float *Vs = Ks + TILE * ks;   // (TILE, ks)
    const int nqt = qft_twin_att_tiles(a.T);
    const int qt = nqt - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = qft_twin_att_kv_head(h, a.H, a.KV);
    const int ld = (a.H + 2 * a.KV) * hd;
    const size_t od = (size_t)a.H * hd;
    const int i0 = qt * TILE, nq = min(TILE, a.T - i0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.T : NULL; // (T)
    const size_t orow = ((size_t)b * a.T + i0) * od + (size_t)h * hd;

    load_tile(Qs, hd, a.qkv + qft_twin_att_q(b, i0, h, a.T, a.H, a.KV, hd), ld, nq, hd);
    load_tile(dOs, hd, g.dout + orow, od, nq, hd);
    __syncthreads();
    float D[ROWS], L[ROWS], acc[ROWS][ND];
    rows_dot(D, dOs, g.out + orow, od, warp * ROWS, nq, hd);
    for (int r = 0; r < ROWS; r++) {
        const int i = i0 + warp * ROWS + r;
        L[r] = i < a.T ? g.lse[((size_t)b * a.H + h) * a.T + i] : -INFINITY;
        for (int k = 0; k < ND; k++) acc[r][k] = 0.0f;
    }
    const int nkt = qft_twin_att_key_tiles_for(qt);
    for (int kt = 0; kt < nkt; kt++) {
        const int j0 = kt * TILE, nk = min(TILE, a.T - j0);
        __syncthreads();
        load_tile(Ks, ks, a.qkv + qft_twin_att_k(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
        load_tile(Vs, ks, a.qkv + qft_twin_att_v(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
        __syncthreads();
        float s[ROWS], dp[ROWS];
        for (int r = 0; r < ROWS; r++) s[r] = dp[r] = 0.0f;
        for (int d = 0; d < hd; d++) {
            const float kd = Ks[lane * ks + d], vd = Vs[lane * ks + d];
            for (int r = 0; r < ROWS; r++) {
                s[r] += Qs[(warp * ROWS + r) * hd + d] * kd;
                dp[r] += dOs[(warp * ROWS + r) * hd + d] * vd;
            }
        }
        const int j = j0 + lane;
        float ds[ROWS];
        for (int r = 0; r < ROWS; r++) {
            const int i = i0 + warp * ROWS + r;
            const bool vis = i < a.T && L[r] != -INFINITY && qft_twin_att_visible(i, j, a.T, mb);
            const float p = vis ? qft_twin_att_prob(s[r] * a.scale, L[r]) : 0.0f;
            ds[r] = p * (dp[r] - D[r]) * a.scale;
        }
        for (int c = 0; c < TILE; c++)
            for (int r = 0; r < ROWS; r++) {
                const float dc = __shfl_sync(FULL, ds[r], c);
                for (int k = 0; k < ND; k++) {
                    const int d = lane + 32 * k;
                    if (d < hd) acc[r][k] += dc * Ks[c * ks + d];
                }
            }
    }
    for (int r = 0; r < ROWS; r++) {
        const int i = i0 + warp * ROWS + r;
        if (i >= a.T) continue;
        float *dq = g.dqkv + qft_twin_att_q(b, i, h, a.T, a.H, a.KV, hd); // (hd)
        for (int k = 0; k < ND; k++) {
            const int d = lane + 32 * k;
            if (d < hd) dq[d] = acc[r][k];
        }
    }
}

template <int ND>
__global__ void __launch_bounds__(WARPS * 32) att_bwd_dkv_kernel(att_grad_args g) {
    extern __shared__ float sm[];
    const att_args &a = g.f;
    const int hd = a.hd, ks = odd_stride(hd);
    float *Ks = sm;               // (TILE, hd) read by broadcast
    float *Vs = Ks + TILE * hd;   // (TILE, hd)
    float *Qs = Vs + TILE * hd;   // (TILE, ks) read one row per lane
    float *dOs = Qs + TILE * ks;  // (TILE, ks)
    float *Ls = dOs + TILE * ks;  // (TILE) lse of the query rows
    float *Ds = Ls + TILE;        // (TILE) dO . O of the query rows
    const int nt = qft_twin_att_tiles(a.T);
    const int kt = nt - 1 - blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int group = a.H / a.KV;
    const int ld = (a.H + 2 * a.KV) * hd;
    const size_t od = (size_t)a.H * hd;
    const int j0 = kt * TILE, nk = min(TILE, a.T - j0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.T : NULL; // (T)

    load_tile(Ks, hd, a.qkv + qft_twin_att_k(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
    load_tile(Vs, hd, a.qkv + qft_twin_att_v(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
    float dK[ROWS][ND], dV[ROWS][ND];
    for (int r = 0; r < ROWS; r++)
        for (int k = 0; k < ND; k++) dK[r][k] = dV[r][k] = 0.0f;
    for (int gi = 0; gi < group; gi++) {
        const int h = kvh * group + gi;
        for (int qt = qft_twin_att_first_query_tile(kt); qt < nt; qt++) {
            const int i0 = qt * TILE, nq = min(TILE, a.T - i0);
            const size_t orow = ((size_t)b * a.T + i0) * od + (size_t)h * hd;
            __syncthreads(); // the previous query tile is no longer read
            load_tile(Qs, ks, a.qkv + qft_twin_att_q(b, i0, h, a.T, a.H, a.KV, hd), ld, nq, hd);
            load_tile(dOs, ks, g.dout + orow, od, nq, hd);
            if (threadIdx.x < TILE) {
                const int i = i0 + threadIdx.x;
                Ls[threadIdx.x] = i < a.T ? g.lse[((size_t)b * a.H + h) * a.T + i] : -INFINITY;
            }
            __syncthreads();
            { // D for rows warp*8..+8; dOs has stride ks here
                for (int r = 0; r < ROWS; r++) {
                    const int rr = warp * ROWS + r;
                    float part = 0.0f;
                    if (rr < nq)
                        for (int d = lane; d < hd; d += 32)
                            part += dOs[rr * ks + d] * g.out[orow + (size_t)rr * od + d];
                    part = warp_sum(part);
                    if (lane == 0) Ds[rr] = part;
                }
            }
            __syncthreads();
            float s[ROWS], dp[ROWS];
            for (int r = 0; r < ROWS; r++) s[r] = dp[r] = 0.0f;
            for (int d = 0; d < hd; d++) {
                const float qd = Qs[lane * ks + d], od_ = dOs[lane * ks + d];
                for (int r = 0; r < ROWS; r++) {
                    s[r] += qd * Ks[(warp * ROWS + r) * hd + d];
                    dp[r] += od_ * Vs[(warp * ROWS + r) * hd + d];
                }
            }
            const int i = i0 + lane;
            const float Li = Ls[lane], Di = Ds[lane];
            float p[ROWS], ds[ROWS];
            for (int r = 0; r < ROWS; r++) {
                const int j = j0 + warp * ROWS + r;
                const bool vis = i < a.T && Li != -INFINITY && qft_twin_att_visible(i, j, a.T, mb);
                p[r] = vis ? qft_twin_att_prob(s[r] * a.scale, Li) : 0.0f;
                ds[r] = p[r] * (dp[r] - Di) * a.scale;
            }
            for (int c = 0; c < TILE; c++)
                for (int r = 0; r < ROWS; r++) {
                    const float pc = __shfl_sync(FULL, p[r], c), dc = __shfl_sync(FULL, ds[r], c);
                    for (int k = 0; k < ND; k++) {
                        const int d = lane + 32 * k;
                        if (d < hd) {
                            dV[r][k] += pc * dOs[c * ks + d];
                            dK[r][k] += dc * Qs[c * ks + d];
                        }
                    }
                }
        }
    }
    for (int r = 0; r < ROWS; r++) {
        const int j = j0 + warp * ROWS + r;
        if (j >= a.T) continue;
        float *dk = g.dqkv + qft_twin_att_k(b, j, kvh, a.T, a.H, a.KV, hd); // (hd)
        float *dv = g.dqkv + qft_twin_att_v(b, j, kvh, a.T, a.H, a.KV, hd); // (hd)
        for (int k = 0; k < ND; k++) {
            const int d = lane + 32 * k;
            if (d < hd) dk[d] = dK[r][k], dv[d] = dV[r][k];
        }
    }
}

size_t fwd_smem(int hd) { return sizeof(float) * (size_t)TILE * (2 * hd + odd_stride(hd)); }
size_t dq_smem(int hd) { return sizeof(float) * (size_t)TILE * (2 * hd + 2 * odd_stride(hd)); }
size_t dkv_smem(int hd) { return dq_smem(hd) + sizeof(float) * 2 * TILE; }

template <int ND> int setup_nd() {
    const int hd = ND * 32; // the largest head dim this instance serves
    return CUDA_CHECK(cudaFuncSetAttribute(att_fwd_kernel<ND>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)fwd_smem(hd))) ||
           CUDA_CHECK(cudaFuncSetAttribute(att_bwd_dq_kernel<ND>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)dq_smem(hd))) ||
           CUDA_CHECK(cudaFuncSetAttribute(att_bwd_dkv_kernel<ND>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)dkv_smem(hd)));
}

// hd outside (0, QFT_ATT_HD_MAX], or a GQA group that does not divide: recorded.
int check_shape(const char *op, int H, int KV, int hd) {
    if (hd <= 0 || hd > QFT_ATT_HD_MAX || KV <= 0 || H % KV) {
        char msg[160];
        snprintf(msg, sizeof msg, "unsupported shape H=%d KV=%d head_dim=%d (head_dim <= %d, "
                                  "H a multiple of KV)", H, KV, hd, QFT_ATT_HD_MAX);
        return qft_cuda_fail(op, __FILE__, __LINE__, msg);
    }
    return 0;
}
} // namespace

int qft_cuda_attention_setup(void) {
    if (dkv_smem(QFT_ATT_HD_MAX) > qft_cuda_g.smem_optin)
        return qft_cuda_fail("attention_setup", __FILE__, __LINE__,
                             "the device's shared memory per block is too small for head_dim 128");
    return setup_nd<1>() || setup_nd<2>() || setup_nd<3>() || setup_nd<4>() ||
           (qft_cuda_attn_tc_supports(QFT_ATT_HD_MAX) && qft_cuda_attn_tc_setup());
}

// The GEMM path's score blocks (two (H, rows, T) blocks, cuda_twin_attg.h): room for whole
// sequences of up to 64 heads, at most 128 MiB (Llama-3-8B at T = 2048: 256 query rows
// per tile). The flash kernels need none.
size_t qft_cuda_attention_workspace(int T, int hd) {
    (void)hd;
    const size_t whole = (size_t)2 * 64 * (size_t)T * (size_t)T, cap = (size_t)32 << 20;
    return whole < cap ? (whole > 32 ? whole : 32) : cap;
}

namespace {
int use_kernel; // qft_cuda_set_attention_kernel: 0 GEMM path, 1 flash, 2 tensor cores
} // namespace

extern "C" void qft_cuda_set_attention_kernel(int kernel) {
    use_kernel = kernel >= 0 && kernel <= 2 ? kernel : 0;
}

// The tensor-core kernels round q, k, v and the probabilities to bf16, which only the bf16
// matmul precision asks for (a backward on the GEMM path after their forward then rounds
// its scores alike); at the others a choice of them falls back to the GEMM path.
static bool use_tc(int hd) {
    return use_kernel == 2 && qft_cuda_g.matmul_precision == 2 && qft_cuda_attn_tc_supports(hd);
}

// Query rows per tile the GEMM path gets from this scratch; 0 sends the call to the flash
// kernels (chosen, or too little scratch for one step of rows).
static int gemm_rows(size_t work_floats, int T, int H) {
    return use_kernel == 1 ? 0 : qft_twin_attg_rows(work_floats, T, H);
}

void qft_cuda_attention_fwd(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                            int T, int H, int KV, int hd, float scale, float *work,
                            size_t work_floats) {
    if (B <= 0 || T <= 0 || H <= 0 || check_shape("attention_fwd", H, KV, hd)) return;
    if (use_tc(hd)) {
        qft_cuda_attn_tc_forward(out, lse, qkv, mask, B, T, H, KV, hd, scale);
        return;
    }
    const int rows = gemm_rows(work_floats, T, H);
    if (rows > 0) {
        qft_cuda_attg_forward(out, lse, qkv, mask, B, T, H, KV, hd, scale, work, rows);
        return;
    }
    const att_args a = {qkv, mask, T, H, KV, hd, scale};
    const dim3 grid(qft_twin_att_tiles(T), H, B), block(WARPS * 32);
    const size_t sm = fwd_smem(hd);
    switch ((hd + 31) / 32) {
    case 1: att_fwd_kernel<1><<<grid, block, sm>>>(out, lse, a); break;
    case 2: att_fwd_kernel<2><<<grid, block, sm>>>(out, lse, a); break;
    case 3: att_fwd_kernel<3><<<grid, block, sm>>>(out, lse, a); break;
    default: att_fwd_kernel<4><<<grid, block, sm>>>(out, lse, a); break;
    }
    CUDA_LAUNCHED();
}

void qft_cuda_attention_bwd(float *dqkv, const float *dout, const float *out, const float *lse,
                            const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                            int hd, float scale, float *work, size_t work_floats) {
    if (B <= 0 || T <= 0 || H <= 0 || check_shape("attention_bwd", H, KV, hd)) return;
    if (use_tc(hd) && work_floats >= qft_cuda_attn_tc_bwd_floats(B, T, H)) {
        qft_cuda_attn_tc_backward(dqkv, dout, out, lse, qkv, mask, B, T, H, KV, hd, scale, work);
        return;
    }
    const int rows = gemm_rows(work_floats, T, H);
    if (rows > 0) {
        qft_cuda_attg_backward(dqkv, dout, out, lse, qkv, mask, B, T, H, KV, hd, scale, work,
                               rows);
        return;
    }
    const att_grad_args g = {{qkv, mask, T, H, KV, hd, scale}, dout, out, lse, dqkv};
    const dim3 gq(qft_twin_att_tiles(T), H, B), gkv(qft_twin_att_tiles(T), KV, B);
    const dim3 block(WARPS * 32);
    const size_t sq = dq_smem(hd), skv = dkv_smem(hd);
    switch ((hd + 31) / 32) {
    case 1:
        att_bwd_dq_kernel<1><<<gq, block, sq>>>(g);
        att_bwd_dkv_kernel<1><<<gkv, block, skv>>>(g);
        break;
    case 2:
        att_bwd_dq_kernel<2><<<gq, block, sq>>>(g);
        att_bwd_dkv_kernel<2><<<gkv, block, skv>>>(g);
        break;
    case 3:
        att_bwd_dq_kernel<3><<<gq, block, sq>>>(g);
        att_bwd_dkv_kernel<3><<<gkv, block, skv>>>(g);
        break;
    default:
        att_bwd_dq_kernel<4><<<gq, block, sq>>>(g);
        att_bwd_dkv_kernel<4><<<gkv, block, skv>>>(g);
        break;
    }
    CUDA_LAUNCHED();
}
