// Causal grouped-query attention on bf16 tensor cores (WMMA 16x16x16, fp32 accumulation),
// flash-style, forward and backward. Forward: for a tile of 64 query rows, the scores of one 64-key
// tile at a time (Q K^T on tensor cores into shared memory), an online softmax over key tiles in
// fp32, the probabilities rounded to bf16 for P V on tensor cores; the output accumulates in
// fp32 in shared memory and the log-sum-exp is saved, so nothing of size (T, T) exists and
// no scratch is needed. It rounds q, k, v and p to bf16 as the GEMM path does under
// `train.matmul_precision = "medium"` (cuBLASLt's bf16 compute type), and is only taken at
// that precision (qft_cuda_attention_fwd), so that a backward on the GEMM path, which
// recomputes the probabilities from the saved log-sum-exp, rounds its scores alike.
//
// Backward (FA2's split, deterministic: every output element has one owner summing in a
// fixed order, no atomics): D = rowsum(dO * O) first (B H T floats of the op's scratch);
// then dK and dV by one block per (key tile, kv head, batch row), warp w owning keys
// 16w..16w+15 with their dK and dV rows in accumulator fragments, looping over the kv
// head's group of query heads and the query tiles that see the key tile: P^T = exp(K Q^T
// scale - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D) scale, dV += P^T dO, dK += dS^T Q; and
// dQ by one block per (query tile, head, batch row): dQ += dS K over the key tiles. The
// probabilities are computed twice, once per kernel, as in the fp32 flash kernels.
//
// One block per (query tile, head, batch row), 4 warps, warp w owning query rows 16w..16w+15:
// its Q rows stay in registers as WMMA fragments for the whole key loop. Per key tile each
// warp computes its 16 x 64 scores, then lane pairs own a row (lane / 2, half lane % 2 of
// the keys and of the head dims) for the softmax and the rescaling of the output rows, then
// P V adds into the output, loaded and stored as accumulator fragments. hd: a multiple of 16
// up to 128 (Llama: 64, 128); the caller falls back to the other kernels otherwise.
#include "cuda_internal.h"

#include <mma.h>

namespace {
using namespace nvcuda;
typedef __nv_bfloat16 bf16;

const int BQ = 64, BK = 64, WARPS = 4, HD_MAX = 128;
const int SLD = BK + 4; // fp32 score rows (a multiple of 4 floats for WMMA stores)
const int PLD = BK + 8; // bf16 probability rows (a multiple of 8)
const unsigned FULL = 0xffffffffu;
static_assert(BQ == WARPS * 16 && BQ == BK,
              "a warp owns 16 query rows; key tiles match query tiles");

__host__ __device__ int kv_ld(int hd) { return hd + 8; }  // bf16 K / V rows
__host__ __device__ int out_ld(int hd) { return hd + 4; } // fp32 output rows

// Bytes of shared memory for head dim hd: K and V tiles (bf16), and per warp its scores
// (fp32), probabilities (bf16) and output rows (fp32). Every part starts 32-byte aligned
// (WMMA's pointer rule) for hd a multiple of 16.
__host__ __device__ size_t tc_smem(int hd) {
    return (size_t)2 * BK * kv_ld(hd) * sizeof(bf16) + (size_t)WARPS * 16 * SLD * sizeof(float) +
           (size_t)WARPS * 16 * PLD * sizeof(bf16) +
           (size_t)WARPS * 16 * out_ld(hd) * sizeof(float);
}

struct tc_args {
    const float *qkv;    // (B, T, (H+2KV)*hd)
    const uint8_t *mask; // (B, T) or NULL
    float *out, *lse;    // (B, T, H*hd), (B, H, T)
    int B, T, H, KV, hd;
    float scale;
};

// dst (64, ldd) bf16 <- rows [0, nvalid) of src (row stride ld, hd wide) rounded to bf16;
// the rows past nvalid become 0, so a partial tile computes harmlessly.
__device__ void load_bf16_tile(bf16 *dst, int ldd, const float *src, size_t ld, int nvalid,
                               int hd) {
    for (int e = threadIdx.x; e < 64 * hd; e += WARPS * 32) {
        const int r = e / hd, d = e % hd;
        dst[r * ldd + d] = __float2bfloat16(r < nvalid ? src[(size_t)r * ld + d] : 0.0f);
    }
}

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;

// acc (16, 16) += A (16, 64 bf16, stride PLD) times columns 16 dc.. of Y (64, hd row-major,
// stride ldy): P V for 16 head dims in the forward, and each fragment of the backward's
// dV, dK and dQ rows.
__device__ void accumulate_cols16(acc_frag &acc, const bf16 *A, const bf16 *Y, int ldy, int dc) {
    for (int kk = 0; kk < BK / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> af;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> yf;
        wmma::load_matrix_sync(af, A + kk * 16, PLD);
        wmma::load_matrix_sync(yf, Y + kk * 16 * ldy + dc * 16, ldy);
        wmma::mma_sync(acc, af, yf, acc);
    }
}

template <int ND> // = hd / 16: compile-time, so that fragment arrays stay in registers
__global__ void __launch_bounds__(WARPS * 32) att_tc_fwd_kernel(tc_args a) {
    extern __shared__ float sm_tc[];
    const int hd = ND * 16, ldk = kv_ld(hd), ldo = out_ld(hd), nd = ND;
    bf16 *Ks = (bf16 *)sm_tc;                     // (BK, ldk); Q's tile before the key loop
    bf16 *Vs = Ks + BK * ldk;                     // (BK, ldk)
    float *Ss = (float *)(Vs + BK * ldk);         // (WARPS, 16, SLD)
    bf16 *Ps = (bf16 *)(Ss + WARPS * 16 * SLD);   // (WARPS, 16, PLD)
    float *Os = (float *)(Ps + WARPS * 16 * PLD); // (WARPS, 16, ldo)
    const int nqt = (a.T + BQ - 1) / BQ;
    const int qt = nqt - 1 - blockIdx.x; // long (late) tiles first: causal load balance
    const int h = blockIdx.y, b = blockIdx.z;
    const int kvh = qft_twin_att_kv_head(h, a.H, a.KV);
    const size_t ld = (size_t)(a.H + 2 * a.KV) * hd;
    const int i0 = qt * BQ, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.T : NULL; // (T)
    float *S = Ss + warp * 16 * SLD, *O = Os + warp * 16 * ldo;
    bf16 *P = Ps + warp * 16 * PLD;

    // the warp's Q rows as fragments, for every key tile
    load_bf16_tile(Ks, ldk, a.qkv + qft_twin_att_q(b, i0, h, a.T, a.H, a.KV, hd), ld,
                   min(BQ, a.T - i0), hd);
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qf[ND];
#pragma unroll
    for (int kk = 0; kk < nd; kk++)
        wmma::load_matrix_sync(qf[kk], Ks + warp * 16 * ldk + kk * 16, ldk);
    for (int e = lane; e < 16 * hd; e += 32) O[(e / hd) * ldo + e % hd] = 0.0f;

    // lane pair (2r, 2r + 1) owns row r: keys and head dims split in halves
    const int r = lane / 2, half = lane % 2, i = i0 + warp * 16 + r;
    const int d0 = half * (hd / 2), d1 = d0 + hd / 2;
    float m = -INFINITY, l = 0.0f;
    const int nkt = qt + 1; // key tiles up to the diagonal
    for (int kt = 0; kt < nkt; kt++) {
        const int j0 = kt * BK, nk = min(BK, a.T - j0);
        __syncthreads(); // every warp is done with the previous K and V (and with Q)
        load_bf16_tile(Ks, ldk, a.qkv + qft_twin_att_k(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
        load_bf16_tile(Vs, ldk, a.qkv + qft_twin_att_v(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk, hd);
        __syncthreads();
        // S (16, 64) = Q K^T: K (key, d) row-major is K^T column-major
        for (int n = 0; n < BK / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < nd; kk++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kf;
                wmma::load_matrix_sync(kf, Ks + n * 16 * ldk + kk * 16, ldk);
                wmma::mma_sync(acc, qf[kk], kf, acc);
            }
            wmma::store_matrix_sync(S + n * 16, acc, SLD, wmma::mem_row_major);
        }
        __syncwarp();
        // online softmax of row r over this tile's keys; invisible keys get p = 0
        float tile_max = -INFINITY;
        for (int c = half * 32; c < half * 32 + 32; c++)
            if (i < a.T && qft_twin_att_visible(i, j0 + c, a.T, mb))
                tile_max = fmaxf(tile_max, S[r * SLD + c] * a.scale);
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        float sum = 0.0f;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            const bool vis =
                m_new != -INFINITY && i < a.T && qft_twin_att_visible(i, j0 + c, a.T, mb);
            const float p = vis ? expf(S[r * SLD + c] * a.scale - m_new) : 0.0f;
            P[r * PLD + c] = __float2bfloat16(p);
            sum += p;
        }
        sum += __shfl_xor_sync(FULL, sum, 1);
        if (m_new != -INFINITY) { // else nothing visible yet: O, l and m stay as they are
            const float alpha = qft_twin_rescale(m, m_new);
            l = l * alpha + sum;
            for (int d = d0; d < d1; d++) O[r * ldo + d] *= alpha;
            m = m_new;
        }
        __syncwarp();
        // O (16, hd) += P V, 16 head dims at a time
        for (int dc = 0; dc < nd; dc++) {
            acc_frag acc;
            wmma::load_matrix_sync(acc, O + dc * 16, ldo, wmma::mem_row_major);
            accumulate_cols16(acc, P, Vs, ldk, dc);
            wmma::store_matrix_sync(O + dc * 16, acc, ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }
    if (i >= a.T) return;
    const bool none = l == 0.0f; // no visible key: out 0, lse -inf
    float *o = a.out + ((size_t)b * a.T + i) * (size_t)(a.H * hd) + (size_t)h * hd; // (hd)
    for (int d = d0; d < d1; d++) o[d] = none ? 0.0f : O[r * ldo + d] / l;
    if (half == 0) a.lse[((size_t)b * a.H + h) * a.T + i] = none ? -INFINITY : m + logf(l);
}

// Bytes of shared memory of the backward kernels: four bf16 tiles (K, V, Q, dO), and per
// warp an fp32 block (the scores, then dP) and bf16 probabilities and score gradients; lse
// and D of the query rows. About 104 KiB at hd 128, so that two blocks share an H100's
// SM. Every part 32-byte aligned for hd a multiple of 16.
__host__ __device__ size_t tc_bwd_smem(int hd) {
    return (size_t)4 * BK * kv_ld(hd) * sizeof(bf16) + (size_t)WARPS * 16 * SLD * sizeof(float) +
           (size_t)2 * WARPS * 16 * PLD * sizeof(bf16) + (size_t)2 * BQ * sizeof(float);
}

struct tc_grad_args {
    tc_args f;
    const float *dout, *out; // (B, T, H*hd)
    const float *D;          // (B, H, T): rowsum(dO * O)
    float *dqkv;             // (B, T, (H+2KV)*hd)
};

// D[b, h, i] = dO[b, i, h] . O[b, i, h]: one warp per row, lanes over the head dims.
__global__ void att_tc_rowdot_kernel(float *D, const float *dout, const float *out, int B, int T,
                                     int H, int hd) {
    const long row = (long)blockIdx.x * WARPS + threadIdx.x / 32; // (b, h, i) row-major
    const int lane = threadIdx.x % 32;
    if (row >= (long)B * H * T) return;
    const int i = (int)(row % T), h = (int)(row / T % H), b = (int)(row / ((long)T * H));
    const size_t at = ((size_t)b * T + i) * (size_t)(H * hd) + (size_t)h * hd;
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s += dout[at + d] * out[at + d];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL, s, o);
    if (lane == 0) D[row] = s;
}

// rows [0, nvalid) of the fp32 (16, 16) staging tile st into dst (row stride ld, 16 wide)
__device__ void store_rows16(float *dst, size_t ld, const float *st, int nvalid) {
    const int lane = threadIdx.x % 32;
    for (int e = lane; e < 256; e += 32)
        if (e / 16 < nvalid) dst[(size_t)(e / 16) * ld + e % 16] = st[e];
}

// The warp's (16, 64) block: probabilities P = exp(S scale - lse) from its scores S (fp32,
// row stride SLD), rounded to bf16 (0 where the key is not visible to the query). KEY_ROWS:
// the block's rows are keys k0.. and its columns queries q0.. (the dK/dV kernel's
// transposed block), else rows are queries and columns keys. lse_s is the query tile's.
template <bool KEY_ROWS>
__device__ void block_probs(const float *S, bf16 *P, int q0, int k0, const float *lse_s,
                            const tc_args &a, const uint8_t *mb) {
    const int lane = threadIdx.x % 32;
    for (int e = lane; e < 16 * BK; e += 32) {
        const int r = e / BK, c = e % BK;
        const int i = KEY_ROWS ? q0 + c : q0 + r, j = KEY_ROWS ? k0 + r : k0 + c; // query, key
        const int qi = KEY_ROWS ? c : r;                                          // in the tile
        const bool vis = i < a.T && qft_twin_att_visible(i, j, a.T, mb) && lse_s[qi] != -INFINITY;
        P[r * PLD + c] = __float2bfloat16(vis ? expf(S[r * SLD + c] * a.scale - lse_s[qi]) : 0.0f);
    }
}

// Then the score gradients dS = P (dP - D) scale from dP (fp32, where S was) and the bf16
// P: its rounding (2^-9 relative) is below dS's own to bf16 for the products, and it spares
// a second fp32 block. D_s is the query tile's.
template <bool KEY_ROWS>
__device__ void block_grads(const float *dP, const bf16 *P, bf16 *dS, const float *D_s,
                            float scale) {
    const int lane = threadIdx.x % 32;
    for (int e = lane; e < 16 * BK; e += 32) {
        const int r = e / BK, c = e % BK, qi = KEY_ROWS ? c : r;
        const float p = __bfloat162float(P[r * PLD + c]);
        dS[r * PLD + c] = __float2bfloat16(p * (dP[r * SLD + c] - D_s[qi]) * scale);
    }
}

// (16, 64) = rows of X (16 of them at X, row stride ldx, bf16) times the 64 rows of Y
// transposed (Y (64, hd) row-major, stride ldy), over hd = 16 ND: the warp's scores-like block,
// stored fp32 at out (stride SLD).
template <int ND>
__device__ void rows_times_tile_t(float *out, const bf16 *X, int ldx, const bf16 *Y, int ldy) {
    for (int n = 0; n < BK / 16; n++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < ND; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> xf;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> yf;
            wmma::load_matrix_sync(xf, X + kk * 16, ldx);
            wmma::load_matrix_sync(yf, Y + n * 16 * ldy + kk * 16, ldy);
            wmma::mma_sync(acc, xf, yf, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, SLD, wmma::mem_row_major);
    }
}

// acc[dc] (16, hd as ND fragments) += A (16, 64 bf16, stride PLD) times Y (64, hd) row-major
template <int ND>
__device__ void accumulate_rows(acc_frag (&acc)[ND], const bf16 *A, const bf16 *Y, int ldy) {
#pragma unroll
    for (int dc = 0; dc < ND; dc++) accumulate_cols16(acc[dc], A, Y, ldy, dc);
}

// lse and D of query rows q0.. (64) into shared memory; rows past T get -inf (no gradient)
__device__ void load_row_stats(float *lse_s, float *D_s, const tc_grad_args &g, int b, int h,
                               int q0) {
    for (int r = threadIdx.x; r < BQ; r += WARPS * 32) {
        const int i = q0 + r;
        const size_t at = ((size_t)b * g.f.H + h) * g.f.T + i;
        lse_s[r] = i < g.f.T ? g.f.lse[at] : -INFINITY;
        D_s[r] = i < g.f.T ? g.D[at] : 0.0f;
    }
}

struct bwd_smem {
    bf16 *Ks, *Vs, *Qs, *dOs; // (64, kv_ld) each
    float *S;                 // the warp's (16, SLD): scores, then dP
    bf16 *P, *dS;             // the warp's (16, PLD) each
    float *lse_s, *D_s;       // (64) each: the query tile's
};

__device__ bwd_smem carve_bwd(float *base, int hd) {
    bwd_smem m;
    const int ldk = kv_ld(hd), warp = threadIdx.x / 32;
    m.Ks = (bf16 *)base;
    m.Vs = m.Ks + BK * ldk, m.Qs = m.Vs + BK * ldk, m.dOs = m.Qs + BK * ldk;
    float *S_all = (float *)(m.dOs + BK * ldk);       // (WARPS, 16, SLD)
    bf16 *P_all = (bf16 *)(S_all + WARPS * 16 * SLD); // (2, WARPS, 16, PLD): P's, dS's
    m.S = S_all + warp * 16 * SLD;
    m.P = P_all + warp * 16 * PLD;
    m.dS = P_all + (WARPS + warp) * 16 * PLD;
    m.lse_s = (float *)(P_all + 2 * WARPS * 16 * PLD);
    m.D_s = m.lse_s + BQ;
    return m;
}

template <int ND>
__global__ void __launch_bounds__(WARPS * 32) att_tc_bwd_dkv_kernel(tc_grad_args g) {
    extern __shared__ float sm_tcb[];
    const tc_args &a = g.f;
    const int hd = ND * 16, ldk = kv_ld(hd), nd = ND;
    bwd_smem m = carve_bwd(sm_tcb, hd);
    const int nt = (a.T + BK - 1) / BK, kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const size_t ld = (size_t)(a.H + 2 * a.KV) * hd;
    const int j0 = kt * BK, warp = threadIdx.x / 32, group = a.H / a.KV;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.T : NULL;
    load_bf16_tile(m.Ks, ldk, a.qkv + qft_twin_att_k(b, j0, kvh, a.T, a.H, a.KV, hd), ld,
                   min(BK, a.T - j0), hd);
    load_bf16_tile(m.Vs, ldk, a.qkv + qft_twin_att_v(b, j0, kvh, a.T, a.H, a.KV, hd), ld,
                   min(BK, a.T - j0), hd);
    acc_frag dK[ND], dV[ND];
#pragma unroll
    for (int dc = 0; dc < nd; dc++)
        wmma::fill_fragment(dK[dc], 0.0f), wmma::fill_fragment(dV[dc], 0.0f);
    const bf16 *Kw = m.Ks + warp * 16 * ldk, *Vw = m.Vs + warp * 16 * ldk; // the warp's keys
    for (int hh = 0; hh < group; hh++) {
        const int h = kvh * group + hh;
        for (int qt = qft_twin_att_first_query_tile(kt); qt < nt; qt++) {
            const int q0 = qt * BQ;
            __syncthreads(); // every warp is done with the previous Q, dO and row stats
            load_bf16_tile(m.Qs, ldk, a.qkv + qft_twin_att_q(b, q0, h, a.T, a.H, a.KV, hd), ld,
                           min(BQ, a.T - q0), hd);
            load_bf16_tile(m.dOs, ldk,
                           g.dout + ((size_t)b * a.T + q0) * (size_t)(a.H * hd) + (size_t)h * hd,
                           (size_t)(a.H * hd), min(BQ, a.T - q0), hd);
            load_row_stats(m.lse_s, m.D_s, g, b, h, q0);
            __syncthreads();
            rows_times_tile_t<ND>(m.S, Kw, ldk, m.Qs, ldk); // S^T (16 keys, 64 queries) = K_w Q^T
            __syncwarp();
            block_probs<true>(m.S, m.P, q0, j0 + warp * 16, m.lse_s, a, mb);
            __syncwarp();
            rows_times_tile_t<ND>(m.S, Vw, ldk, m.dOs, ldk); // dP^T = V_w dO^T
            __syncwarp();
            block_grads<true>(m.S, m.P, m.dS, m.D_s, a.scale);
            __syncwarp();
            accumulate_rows<ND>(dV, m.P, m.dOs, ldk); // dV_w += P^T dO
            accumulate_rows<ND>(dK, m.dS, m.Qs, ldk); // dK_w += dS^T Q
            __syncwarp();
        }
    }
    // the warp's 16 keys: rows past T are not stored (staged through the score block)
    const int jw = j0 + warp * 16, nvalid = min(16, a.T - jw);
    if (nvalid <= 0) return;
#pragma unroll
    for (int dc = 0; dc < nd; dc++) {
        wmma::store_matrix_sync(m.S, dK[dc], 16, wmma::mem_row_major);
        __syncwarp();
        store_rows16(g.dqkv + qft_twin_att_k(b, jw, kvh, a.T, a.H, a.KV, hd) + dc * 16, ld, m.S,
                     nvalid);
        __syncwarp();
        wmma::store_matrix_sync(m.S, dV[dc], 16, wmma::mem_row_major);
        __syncwarp();
        store_rows16(g.dqkv + qft_twin_att_v(b, jw, kvh, a.T, a.H, a.KV, hd) + dc * 16, ld, m.S,
                     nvalid);
        __syncwarp();
    }
}

template <int ND>
__global__ void __launch_bounds__(WARPS * 32) att_tc_bwd_dq_kernel(tc_grad_args g) {
    extern __shared__ float sm_tcq[];
    const tc_args &a = g.f;
    const int hd = ND * 16, ldk = kv_ld(hd), nd = ND;
    bwd_smem m = carve_bwd(sm_tcq, hd);
    const int nqt = (a.T + BQ - 1) / BQ;
    const int qt = nqt - 1 - blockIdx.x; // long (late) tiles first: causal load balance
    const int h = blockIdx.y, b = blockIdx.z, kvh = qft_twin_att_kv_head(h, a.H, a.KV);
    const size_t ld = (size_t)(a.H + 2 * a.KV) * hd;
    const int q0 = qt * BQ, warp = threadIdx.x / 32, qw = q0 + warp * 16;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.T : NULL;
    load_bf16_tile(m.Qs, ldk, a.qkv + qft_twin_att_q(b, q0, h, a.T, a.H, a.KV, hd), ld,
                   min(BQ, a.T - q0), hd);
    load_bf16_tile(m.dOs, ldk,
                   g.dout + ((size_t)b * a.T + q0) * (size_t)(a.H * hd) + (size_t)h * hd,
                   (size_t)(a.H * hd), min(BQ, a.T - q0), hd);
    load_row_stats(m.lse_s, m.D_s, g, b, h, q0);
    acc_frag dQ[ND];
#pragma unroll
    for (int dc = 0; dc < nd; dc++) wmma::fill_fragment(dQ[dc], 0.0f);
    const bf16 *Qw = m.Qs + warp * 16 * ldk, *dOw = m.dOs + warp * 16 * ldk; // the warp's rows
    for (int kt = 0; kt <= qt; kt++) { // key tiles up to the diagonal
        const int j0 = kt * BK, nk = min(BK, a.T - j0);
        __syncthreads(); // every warp is done with the previous K and V
        load_bf16_tile(m.Ks, ldk, a.qkv + qft_twin_att_k(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk,
                       hd);
        load_bf16_tile(m.Vs, ldk, a.qkv + qft_twin_att_v(b, j0, kvh, a.T, a.H, a.KV, hd), ld, nk,
                       hd);
        __syncthreads();
        rows_times_tile_t<ND>(m.S, Qw, ldk, m.Ks, ldk); // S = Q_w K^T
        __syncwarp();
        block_probs<false>(m.S, m.P, qw, j0, m.lse_s + warp * 16, a, mb);
        __syncwarp();
        rows_times_tile_t<ND>(m.S, dOw, ldk, m.Vs, ldk); // dP = dO_w V^T
        __syncwarp();
        block_grads<false>(m.S, m.P, m.dS, m.D_s + warp * 16, a.scale);
        __syncwarp();
        accumulate_rows<ND>(dQ, m.dS, m.Ks, ldk); // dQ_w += dS K
        __syncwarp();
    }
    const int nvalid = min(16, a.T - qw);
    if (nvalid <= 0) return;
#pragma unroll
    for (int dc = 0; dc < nd; dc++) { // staged through the score block: rows past T stay out
        wmma::store_matrix_sync(m.S, dQ[dc], 16, wmma::mem_row_major);
        __syncwarp();
        store_rows16(g.dqkv + qft_twin_att_q(b, qw, h, a.T, a.H, a.KV, hd) + dc * 16, ld, m.S,
                     nvalid);
        __syncwarp();
    }
}
} // namespace

int qft_cuda_attn_tc_supports(int hd) {
    const size_t most = tc_smem(hd) > tc_bwd_smem(hd) ? tc_smem(hd) : tc_bwd_smem(hd);
    return hd % 16 == 0 && hd > 0 && hd <= HD_MAX && most <= (size_t)qft_cuda_g.smem_optin;
}

namespace {
template <int ND> int setup_nd() {
    return CUDA_CHECK(cudaFuncSetAttribute(att_tc_fwd_kernel<ND>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)tc_smem(ND * 16))) ||
           CUDA_CHECK(cudaFuncSetAttribute(att_tc_bwd_dkv_kernel<ND>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)tc_bwd_smem(ND * 16))) ||
           CUDA_CHECK(cudaFuncSetAttribute(att_tc_bwd_dq_kernel<ND>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)tc_bwd_smem(ND * 16)));
}

template <int ND> void forward_nd(const tc_args &a, dim3 grid) {
    att_tc_fwd_kernel<ND><<<grid, WARPS * 32, tc_smem(ND * 16)>>>(a);
}

template <int ND> void backward_nd(const tc_grad_args &g, int nt) {
    att_tc_bwd_dkv_kernel<ND><<<dim3(nt, g.f.KV, g.f.B), WARPS * 32, tc_bwd_smem(ND * 16)>>>(g);
    att_tc_bwd_dq_kernel<ND><<<dim3(nt, g.f.H, g.f.B), WARPS * 32, tc_bwd_smem(ND * 16)>>>(g);
}

// f<ND>(args...) for ND = hd / 16 (1 to 8)
#define QFT_TC_DISPATCH(f, hd, ...)                                                                \
    switch ((hd) / 16) {                                                                           \
    case 1: f<1>(__VA_ARGS__); break;                                                              \
    case 2: f<2>(__VA_ARGS__); break;                                                              \
    case 3: f<3>(__VA_ARGS__); break;                                                              \
    case 4: f<4>(__VA_ARGS__); break;                                                              \
    case 5: f<5>(__VA_ARGS__); break;                                                              \
    case 6: f<6>(__VA_ARGS__); break;                                                              \
    case 7: f<7>(__VA_ARGS__); break;                                                              \
    default: f<8>(__VA_ARGS__); break;                                                             \
    }
} // namespace

int qft_cuda_attn_tc_setup(void) {
    return setup_nd<1>() || setup_nd<2>() || setup_nd<3>() || setup_nd<4>() || setup_nd<5>() ||
           setup_nd<6>() || setup_nd<7>() || setup_nd<8>();
}

void qft_cuda_attn_tc_forward(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                              int T, int H, int KV, int hd, float scale) {
    const tc_args a = {qkv, mask, out, lse, B, T, H, KV, hd, scale};
    QFT_TC_DISPATCH(forward_nd, hd, a, dim3((T + BQ - 1) / BQ, H, B));
    CUDA_LAUNCHED();
}

size_t qft_cuda_attn_tc_bwd_floats(int B, int T, int H) { return (size_t)B * H * T; }

void qft_cuda_attn_tc_backward(float *dqkv, const float *dout, const float *out, const float *lse,
                               const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                               int hd, float scale, float *D) {
    const tc_grad_args g = {
        {qkv, mask, NULL, (float *)lse, B, T, H, KV, hd, scale}, dout, out, D, dqkv};
    const long rows = (long)B * H * T;
    att_tc_rowdot_kernel<<<(unsigned)((rows + WARPS - 1) / WARPS), WARPS * 32>>>(D, dout, out, B, T,
                                                                                 H, hd);
    CUDA_LAUNCHED();
    QFT_TC_DISPATCH(backward_nd, hd, g, (T + BQ - 1) / BQ);
    CUDA_LAUNCHED();
}
