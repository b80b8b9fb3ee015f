/* Causal grouped-query attention by query tiles: for BQ queries at a time, the scores
 * against every key they can see are one small GEMM into a (BQ, T) scratch row block,
 * softmaxed in place, and multiplied by V in another GEMM; backward recomputes the same
 * row block from the saved log-sum-exp. So nothing of size (T, T) is ever stored (the
 * scratch is BQ rows per thread), and the heavy lifting runs in OpenBLAS's kernels rather
 * than in scalar loops.
 *
 * Layout: qkv rows are (H + 2*KV)*hd wide (queries, keys, values; see QFT_QKV_WIDTH).
 * Forward tasks are (batch, head); backward tasks are (batch, kv head), which own that kv
 * head's key and value gradients and their group's query gradients, so no two threads
 * write one row and the summation order is fixed. */
#include "cpu_blas.h"
#include "cpu_math.h"
#include "cpu_ops.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BQ 64 /* queries per tile */

static size_t per_thread(int T) { return (size_t)2 * BQ * T + BQ; } /* S, dS (BQ, T), D (BQ) */

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

size_t qft_cpu_attention_workspace(int T, int hd) {
    (void)hd;
    return (size_t)max_threads() * per_thread(T);
}

/* Threads the workspace can feed (at least 1: the caller must give one thread's worth). */
static int threads_for(size_t work_floats, int T) {
    size_t fit = work_floats / per_thread(T);
    int nt = max_threads();
    return fit < (size_t)nt ? (fit ? (int)fit : 1) : nt;
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Row r of a score block for query i over keys [0, nk): masked and future keys -> -inf.
 * Returns the row maximum (-inf when no key is visible). */
static float mask_row(float *s, int i, int nk, const uint8_t *mrow) {
    float m = -INFINITY;
    const int vis = i + 1 < nk ? i + 1 : nk;
    for (int j = 0; j < vis; j++) {
        if (mrow && !mrow[j]) s[j] = -INFINITY;
        m = s[j] > m ? s[j] : m;
    }
    for (int j = vis; j < nk; j++) s[j] = -INFINITY;
    return m;
}

static void exp_row(float *restrict s, float sub, int n) {
#pragma omp simd
    for (int j = 0; j < n; j++) s[j] = qft_cpu_expf(s[j] - sub);
}

static float sum_row(const float *restrict s, int n) {
    float t = 0.0f;
#pragma omp simd reduction(+ : t)
    for (int j = 0; j < n; j++) t += s[j];
    return t;
}

static void scale_row(float *restrict s, float f, int n) {
#pragma omp simd
    for (int j = 0; j < n; j++) s[j] *= f;
}

/* ds = p * (dp - D) * scale, in place over dp */
static void ds_row(float *restrict dp, const float *restrict p, float D, float scale, int n) {
#pragma omp simd
    for (int j = 0; j < n; j++) dp[j] = p[j] * (dp[j] - D) * scale;
}

void qft_cpu_attention_fwd(float *out, float *lse, const float *qkv, const uint8_t *mask, int B,
                           int T, int H, int KV, int hd, float scale, float *work,
                           size_t work_floats) {
    qft_cpu_blas_init();
    const int ld = QFT_QKV_WIDTH(H, KV, hd), group = H / KV, od = H * hd;
    const int nt = threads_for(work_floats, T);
#pragma omp parallel for schedule(dynamic, 1) collapse(2) num_threads(nt)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int kvh = h / group;
            float *S = work + (size_t)thread_id() * per_thread(T);                   // (BQ, T)
            const float *base = qkv + (size_t)b * T * ld;                           // (T, ld)
            const float *kb = base + (size_t)(H + kvh) * hd;                        // (T, hd) stride ld
            const float *vb = base + (size_t)(H + KV + kvh) * hd;                   // (T, hd) stride ld
            const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL;               // (T)
            for (int i0 = 0; i0 < T; i0 += BQ) {
                const int nq = i0 + BQ < T ? BQ : T - i0, nk = i0 + nq; /* keys [0, nk) */
                const float *q = base + (size_t)i0 * ld + (size_t)h * hd;           // (nq, hd) stride ld
                float *o = out + ((size_t)b * T + i0) * od + (size_t)h * hd;        // (nq, hd) stride od
                float *l = lse + ((size_t)b * H + h) * T + i0;                      // (nq)
                qft_cpu_sgemm(0, 1, nq, nk, hd, scale, q, ld, kb, ld, 0.0f, S, nk); // (nq, nk)
                for (int r = 0; r < nq; r++) {
                    float *s = S + (size_t)r * nk; // (nk)
                    const float m = mask_row(s, i0 + r, nk, mrow);
                    if (m == -INFINITY) { /* no visible key: zero probabilities */
                        memset(s, 0, (size_t)nk * sizeof *s);
                        l[r] = -INFINITY;
                        continue;
                    }
                    exp_row(s, m, nk);
                    const float sum = sum_row(s, nk);
                    scale_row(s, 1.0f / sum, nk);
                    l[r] = m + logf(sum);
                }
                qft_cpu_sgemm(0, 0, nq, hd, nk, 1.0f, S, nk, vb, ld, 0.0f, o, od); // (nq, hd)
            }
        }
}

void qft_cpu_attention_bwd(float *dqkv, const float *dout, const float *out, const float *lse,
                           const float *qkv, const uint8_t *mask, int B, int T, int H, int KV,
                           int hd, float scale, float *work, size_t work_floats) {
    qft_cpu_blas_init();
    const int ld = QFT_QKV_WIDTH(H, KV, hd), group = H / KV, od = H * hd;
    const int nt = threads_for(work_floats, T);
#pragma omp parallel for schedule(dynamic, 1) collapse(2) num_threads(nt)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++) {
            float *P = work + (size_t)thread_id() * per_thread(T); // (BQ, T) probabilities
            float *dS = P + (size_t)BQ * T;                       // (BQ, T) dP, then dS
            float *D = dS + (size_t)BQ * T;                       // (BQ) rowwise dO . O
            const float *base = qkv + (size_t)b * T * ld;         // (T, ld)
            float *dbase = dqkv + (size_t)b * T * ld;             // (T, ld)
            const float *kb = base + (size_t)(H + kvh) * hd;      // (T, hd) stride ld
            const float *vb = base + (size_t)(H + KV + kvh) * hd; // (T, hd) stride ld
            float *dkb = dbase + (size_t)(H + kvh) * hd;          // (T, hd) stride ld
            float *dvb = dbase + (size_t)(H + KV + kvh) * hd;     // (T, hd) stride ld
            const uint8_t *mrow = mask ? mask + (size_t)b * T : NULL; // (T)
            for (int t = 0; t < T; t++) {
                memset(dkb + (size_t)t * ld, 0, (size_t)hd * sizeof(float));
                memset(dvb + (size_t)t * ld, 0, (size_t)hd * sizeof(float));
            }
            for (int g = 0; g < group; g++) {
                const int h = kvh * group + g;
                for (int i0 = 0; i0 < T; i0 += BQ) {
                    const int nq = i0 + BQ < T ? BQ : T - i0, nk = i0 + nq;
                    const float *q = base + (size_t)i0 * ld + (size_t)h * hd;      // (nq, hd) stride ld
                    float *dq = dbase + (size_t)i0 * ld + (size_t)h * hd;          // (nq, hd) stride ld
                    const size_t orow = ((size_t)b * T + i0) * od + (size_t)h * hd;
                    const float *dO = dout + orow, *O = out + orow;                // (nq, hd) stride od
                    const float *l = lse + ((size_t)b * H + h) * T + i0;           // (nq)
                    qft_cpu_sgemm(0, 1, nq, nk, hd, scale, q, ld, kb, ld, 0.0f, P, nk);  // (nq, nk)
                    qft_cpu_sgemm(0, 1, nq, nk, hd, 1.0f, dO, od, vb, ld, 0.0f, dS, nk); // dP
                    for (int r = 0; r < nq; r++) {
                        float *p = P + (size_t)r * nk; // (nk)
                        if (l[r] == -INFINITY) { /* a row that saw no key: no gradient */
                            memset(p, 0, (size_t)nk * sizeof *p);
                            memset(dS + (size_t)r * nk, 0, (size_t)nk * sizeof *p);
                            continue;
                        }
                        mask_row(p, i0 + r, nk, mrow);
                        exp_row(p, l[r], nk);
                        float d = 0.0f;
                        const float *dor = dO + (size_t)r * od, *orr = O + (size_t)r * od;
#pragma omp simd reduction(+ : d)
                        for (int k = 0; k < hd; k++) d += dor[k] * orr[k];
                        D[r] = d;
                        ds_row(dS + (size_t)r * nk, p, d, scale, nk);
                    }
                    qft_cpu_sgemm(1, 0, nk, hd, nq, 1.0f, P, nk, dO, od, 1.0f, dvb, ld);  // dV += P^T dO
                    qft_cpu_sgemm(0, 0, nq, hd, nk, 1.0f, dS, nk, kb, ld, 0.0f, dq, ld);  // dQ = dS K
                    qft_cpu_sgemm(1, 0, nk, hd, nq, 1.0f, dS, nk, q, ld, 1.0f, dkb, ld);  // dK += dS^T Q
                }
            }
        }
}
