/* Causal grouped-query attention, streamed over key blocks (flash-attention style): the
 * forward keeps only each row's log-sum-exp, and the backward recomputes probabilities
 * block by block from it, so no (T, T) matrix exists at any point.
 *
 * Layout: qkv rows are (H + 2*KV)*hd wide (queries, keys, values; see QFT_QKV_WIDTH).
 * Scores for one query against a key block are computed against the block transposed to
 * (hd, BK), so the inner loops run over keys (forward scores) or over head dims (value
 * sums) with no horizontal reductions; that keeps every inner loop a vector FMA. */
#include "cpu_math.h"
#include "cpu_ops.h"

#include <math.h>
#include <string.h>

#define BQ 32 /* queries per tile (forward) */
#define BK 64 /* keys per block */

/* Copies rows j0..j0+nb-1 of a head (row stride ld) into dst (hd, BK), zero-padded to BK
 * columns so the score loops can always run BK wide. */
static void load_transposed(float *dst, const float *src, int ld, int nb, int hd) {
    for (int d = 0; d < hd; d++) {
        float *row = dst + (size_t)d * BK; // (BK)
        for (int jj = 0; jj < nb; jj++) row[jj] = src[(size_t)jj * ld + d];
        for (int jj = nb; jj < BK; jj++) row[jj] = 0.0f;
    }
}

/* s (BK) = scale * q . kt[:, jj] for the BK keys of a transposed block kt (hd, BK). */
static inline void block_scores(float *restrict s, const float *restrict q,
                                const float *restrict kt, int hd, float scale) {
#pragma omp simd
    for (int jj = 0; jj < BK; jj++) s[jj] = 0.0f;
    for (int d = 0; d < hd; d++) {
        const float qd = q[d];
        const float *restrict k = kt + (size_t)d * BK;
#pragma omp simd
        for (int jj = 0; jj < BK; jj++) s[jj] += qd * k[jj];
    }
#pragma omp simd
    for (int jj = 0; jj < BK; jj++) s[jj] *= scale;
}

/* Number of keys of block [j0, j0+nb) visible to query i (causal: j <= i), with masked
 * keys set to -INFINITY in s. Returns 0 when none is visible. */
static inline int block_visible(float *s, int i, int j0, int nb, const uint8_t *mrow) {
    int nv = i - j0 + 1;
    if (nv > nb) nv = nb;
    if (nv <= 0) return 0;
    int any = 0;
    for (int jj = 0; jj < nv; jj++) {
        if (mrow && !mrow[j0 + jj]) s[jj] = -INFINITY;
        else any = 1;
    }
    for (int jj = nv; jj < BK; jj++) s[jj] = -INFINITY;
    return any ? nv : 0;
}

void qft_cpu_attention_fwd(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                           int T, int H, int KV, int hd, float scale) {
    const int ld = QFT_QKV_WIDTH(H, KV, hd), group = H / KV, od = H * hd;
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int kvh = h / group;
            const float *qb = qkv + (size_t)b * T * ld + (size_t)h * hd;             // (T, hd) stride ld
            const float *kb = qkv + (size_t)b * T * ld + (size_t)(H + kvh) * hd;      // (T, hd) stride ld
            const float *vb = qkv + (size_t)b * T * ld + (size_t)(H + KV + kvh) * hd; // (T, hd) stride ld
            const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL;                  // (T)
            float kt[hd * BK];   // (hd, BK)
            float acc[BQ * hd];  // (BQ, hd) unnormalised outputs of the tile
            float mx[BQ], sum[BQ];
            float s[BK];
            for (int i0 = 0; i0 < T; i0 += BQ) {
                const int i1 = i0 + BQ < T ? i0 + BQ : T;
                for (int r = 0; r < i1 - i0; r++) mx[r] = -INFINITY, sum[r] = 0.0f;
                memset(acc, 0, sizeof acc);
                for (int j0 = 0; j0 < i1; j0 += BK) {
                    const int nb = j0 + BK < i1 ? BK : i1 - j0;
                    load_transposed(kt, kb + (size_t)j0 * ld, ld, nb, hd);
                    for (int i = i0 > j0 ? i0 : j0; i < i1; i++) {
                        const int r = i - i0;
                        block_scores(s, qb + (size_t)i * ld, kt, hd, scale);
                        const int nv = block_visible(s, i, j0, nb, mrow);
                        if (!nv) continue;
                        float bm = -INFINITY;
                        for (int jj = 0; jj < nv; jj++) bm = s[jj] > bm ? s[jj] : bm;
                        const float mnew = bm > mx[r] ? bm : mx[r];
                        const float corr = qft_cpu_expf(mx[r] - mnew); /* 0 on the first block */
                        float ps = 0.0f;
#pragma omp simd reduction(+ : ps)
                        for (int jj = 0; jj < BK; jj++) {
                            s[jj] = qft_cpu_expf(s[jj] - mnew);
                            ps += s[jj];
                        }
                        sum[r] = sum[r] * corr + ps;
                        mx[r] = mnew;
                        float *a = acc + (size_t)r * hd; // (hd)
                        if (corr != 1.0f) {
#pragma omp simd
                            for (int d = 0; d < hd; d++) a[d] *= corr;
                        }
                        for (int jj = 0; jj < nv; jj++) {
                            const float p = s[jj];
                            const float *v = vb + (size_t)(j0 + jj) * ld; // (hd)
#pragma omp simd
                            for (int d = 0; d < hd; d++) a[d] += p * v[d];
                        }
                    }
                }
                for (int i = i0; i < i1; i++) {
                    const int r = i - i0;
                    float *o = out + ((size_t)b * T + i) * od + (size_t)h * hd; // (hd)
                    float *l = lse + ((size_t)b * H + h) * T + i;
                    if (sum[r] > 0.0f) {
                        const float inv = 1.0f / sum[r];
                        for (int d = 0; d < hd; d++) o[d] = acc[(size_t)r * hd + d] * inv;
                        *l = mx[r] + logf(sum[r]);
                    } else {
                        memset(o, 0, (size_t)hd * sizeof *o);
                        *l = -INFINITY;
                    }
                }
            }
        }
}

/* Per key block (outer) and query (inner): p = exp(s - lse), dp = dO . v,
 * ds = p (dp - D) with D = dO . O; then dV += p dO, dK += scale ds q, dQ += scale ds k.
 * A task owns one (batch, kv head): the key and value gradients of that kv head and the
 * query gradients of its group of heads, so no two threads write one row. */
void qft_cpu_attention_bwd(float *dqkv, const float *dout, const float *out, const float *lse,
                           const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                           int hd, float scale) {
    const int ld = QFT_QKV_WIDTH(H, KV, hd), group = H / KV, od = H * hd;
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++) {
            const float *base = qkv + (size_t)b * T * ld;                    // (T, ld)
            float *dbase = dqkv + (size_t)b * T * ld;                        // (T, ld)
            const float *kb = base + (size_t)(H + kvh) * hd;                 // (T, hd) stride ld
            const float *vb = base + (size_t)(H + KV + kvh) * hd;            // (T, hd) stride ld
            float *dkb = dbase + (size_t)(H + kvh) * hd;                     // (T, hd) stride ld
            float *dvb = dbase + (size_t)(H + KV + kvh) * hd;                // (T, hd) stride ld
            const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL;        // (T)
            for (int t = 0; t < T; t++) {
                memset(dkb + (size_t)t * ld, 0, (size_t)hd * sizeof(float));
                memset(dvb + (size_t)t * ld, 0, (size_t)hd * sizeof(float));
                for (int g = 0; g < group; g++)
                    memset(dbase + (size_t)t * ld + (size_t)(kvh * group + g) * hd, 0,
                           (size_t)hd * sizeof(float));
            }
            float kt[hd * BK], vt[hd * BK], dkt[hd * BK], dvt[hd * BK]; // (hd, BK) each
            float p[BK], ds[BK];
            for (int j0 = 0; j0 < T; j0 += BK) {
                const int nb = j0 + BK < T ? BK : T - j0;
                load_transposed(kt, kb + (size_t)j0 * ld, ld, nb, hd);
                load_transposed(vt, vb + (size_t)j0 * ld, ld, nb, hd);
                memset(dkt, 0, sizeof dkt);
                memset(dvt, 0, sizeof dvt);
                for (int g = 0; g < group; g++) {
                    const int h = kvh * group + g;
                    for (int i = j0; i < T; i++) {
                        const float l = lse[((size_t)b * H + h) * T + i];
                        if (!(l > -INFINITY)) continue; /* a row that saw no key */
                        const float *q = base + (size_t)i * ld + (size_t)h * hd;        // (hd)
                        const float *dO = dout + ((size_t)b * T + i) * od + (size_t)h * hd; // (hd)
                        const float *O = out + ((size_t)b * T + i) * od + (size_t)h * hd;   // (hd)
                        float *dq = dbase + (size_t)i * ld + (size_t)h * hd;           // (hd)
                        block_scores(p, q, kt, hd, scale);
                        const int nv = block_visible(p, i, j0, nb, mrow);
                        if (!nv) continue;
                        float D = 0.0f;
#pragma omp simd reduction(+ : D)
                        for (int d = 0; d < hd; d++) D += dO[d] * O[d];
                        block_scores(ds, dO, vt, hd, 1.0f); /* dp */
#pragma omp simd
                        for (int jj = 0; jj < BK; jj++) {
                            p[jj] = qft_cpu_expf(p[jj] - l);
                            ds[jj] = p[jj] * (ds[jj] - D) * scale;
                        }
                        for (int d = 0; d < hd; d++) {
                            const float dod = dO[d], qd = q[d];
                            float *dv = dvt + (size_t)d * BK, *dk = dkt + (size_t)d * BK;
#pragma omp simd
                            for (int jj = 0; jj < BK; jj++) {
                                dv[jj] += p[jj] * dod;
                                dk[jj] += ds[jj] * qd;
                            }
                        }
                        for (int jj = 0; jj < nv; jj++) {
                            const float w = ds[jj];
                            const float *k = kb + (size_t)(j0 + jj) * ld; // (hd)
#pragma omp simd
                            for (int d = 0; d < hd; d++) dq[d] += w * k[d];
                        }
                    }
                }
                for (int jj = 0; jj < nb; jj++) {
                    float *dk = dkb + (size_t)(j0 + jj) * ld, *dv = dvb + (size_t)(j0 + jj) * ld;
                    for (int d = 0; d < hd; d++) {
                        dk[d] = dkt[(size_t)d * BK + jj];
                        dv[d] = dvt[(size_t)d * BK + jj];
                    }
                }
            }
        }
}
