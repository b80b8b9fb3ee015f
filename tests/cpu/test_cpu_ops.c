/* The CPU op table against naive double-precision references and central finite
 * differences, on seeded random inputs whose shapes are deliberately not multiples of the
 * kernels' block sizes. Errors are measured as max |got - ref| / max |ref| over a tensor
 * ("relative max error"); fp32 kernels against double references land near 1e-7, so
 * the bounds below (1e-5, 2e-5 for attention's longer sums) leave room for accumulation
 * order and nothing for a wrong index. */
#include "cpu_ops.h"
#include "qft_base.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const qft_ops *ops;

static int omp_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * qft_rng_normal(&r);
}

static double rel_max_err(const float *got, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= num)) num = e; /* also catches NaN */
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return den > 0 ? num / den : num;
}

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}
static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- gemm ---------------------------------------------------------------------------- */
START_TEST(test_gemm_all_transposes) {
    /* a small shape (one sgemm call) and two large enough to be split over threads, once
     * along rows of C and once along columns */
    static const int shapes[3][3] = {{37, 29, 45}, {150, 70, 40}, {70, 150, 40}};
    const int M = shapes[_i][0], N = shapes[_i][1], K = shapes[_i][2], pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            float *A = falloc((size_t)(ta ? K : M) * lda), *Bm = falloc((size_t)(tb ? N : K) * ldb);
            float *C = falloc((size_t)M * ldc);
            double *ref = dalloc((size_t)M * N);
            float *got = falloc((size_t)M * N);
            fill(A, (size_t)(ta ? K : M) * lda, 11 + ta, 1.0f);
            fill(Bm, (size_t)(tb ? N : K) * ldb, 21 + tb, 1.0f);
            fill(C, (size_t)M * ldc, 31, 1.0f);
            const float alpha = 0.75f, beta = -1.25f;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) {
                        double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                        double b = tb ? Bm[(size_t)j * ldb + k] : Bm[(size_t)k * ldb + j];
                        s += a * b;
                    }
                    ref[(size_t)i * N + j] = alpha * s + beta * C[(size_t)i * ldc + j];
                }
            ops->gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) got[(size_t)i * N + j] = C[(size_t)i * ldc + j];
            double e = rel_max_err(got, ref, (size_t)M * N);
            ck_assert_msg(e < 1e-5, "gemm %dx%dx%d transA=%d transB=%d: rel err %g", M, N, K, ta,
                          tb, e);
            free(A), free(Bm), free(C), free(ref), free(got);
        }
}
END_TEST

START_TEST(test_gemm_empty_k) {
    float C[6] = {1, 2, 3, NAN, 5, 6}, A[1] = {0}, Bm[1] = {0};
    ops->gemm(0, 0, 2, 3, 0, 1.0f, A, 1, Bm, 3, 2.0f, C, 3);
    ck_assert(C[0] == 2.0f && C[5] == 12.0f);
    ops->gemm(0, 0, 2, 3, 0, 1.0f, A, 1, Bm, 3, 0.0f, C, 3); /* beta 0 clears, NaN too */
    for (int i = 0; i < 6; i++) ck_assert(C[i] == 0.0f);
}
END_TEST

/* ---- embedding ----------------------------------------------------------------------- */
START_TEST(test_embedding) {
    const int V = 23, C = 19, N = 41;
    float *table = falloc((size_t)V * C), *out = falloc((size_t)N * C);
    float *dout = falloc((size_t)N * C), *dtab = falloc((size_t)V * C);
    double *ref = dalloc((size_t)V * C);
    int32_t ids[41];
    qft_rng r;
    qft_rng_seed(&r, 5);
    for (int n = 0; n < N; n++) ids[n] = (int32_t)(qft_rng_next(&r) % 7) * 3; /* repeats */
    fill(table, (size_t)V * C, 1, 1.0f);
    fill(dout, (size_t)N * C, 2, 1.0f);
    fill(dtab, (size_t)V * C, 3, 1.0f);
    for (size_t i = 0; i < (size_t)V * C; i++) ref[i] = dtab[i];
    ops->embedding_fwd(out, ids, table, N, C);
    for (int n = 0; n < N; n++)
        ck_assert_mem_eq(out + (size_t)n * C, table + (size_t)ids[n] * C, C * sizeof(float));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) ref[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
    ops->embedding_bwd(dtab, dout, ids, N, C);
    ck_assert_double_lt(rel_max_err(dtab, ref, (size_t)V * C), 1e-6);
    free(table), free(out), free(dout), free(dtab), free(ref);
}
END_TEST

/* ---- rmsnorm ------------------------------------------------------------------------- */
static double rms_loss_ref(const double *x, const float *w, const float *dout, int N, int C,
                           double eps, double *out) {
    double L = 0;
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += x[(size_t)n * C + c] * x[(size_t)n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) {
            double y = w[c] * x[(size_t)n * C + c] * r;
            if (out) out[(size_t)n * C + c] = y;
            L += y * dout[(size_t)n * C + c];
        }
    }
    return L;
}

START_TEST(test_rmsnorm) {
    const int N = 13, C = 70; /* C not a multiple of 16: the dw column blocks have a tail */
    const float eps = 1e-5f;
    float *x = falloc((size_t)N * C), *w = falloc(C), *out = falloc((size_t)N * C);
    float *rstd = falloc(N), *dout = falloc((size_t)N * C);
    float *dx = falloc((size_t)N * C), *dw = falloc(C);
    double *xd = dalloc((size_t)N * C), *ref = dalloc((size_t)N * C);
    double *dxr = dalloc((size_t)N * C), *dwr = dalloc(C);
    fill(x, (size_t)N * C, 7, 2.0f);
    fill(w, C, 8, 0.5f);
    for (int c = 0; c < C; c++) w[c] += 1.0f;
    fill(dout, (size_t)N * C, 9, 1.0f);
    fill(dx, (size_t)N * C, 10, 1.0f); /* nonzero: the op accumulates */
    fill(dw, C, 12, 1.0f);
    for (size_t i = 0; i < (size_t)N * C; i++) xd[i] = x[i], dxr[i] = dx[i];
    for (int c = 0; c < C; c++) dwr[c] = dw[c];
    rms_loss_ref(xd, w, dout, N, C, eps, ref);
    ops->rmsnorm_fwd(out, rstd, x, w, N, C, eps);
    double e = rel_max_err(out, ref, (size_t)N * C);
    ck_assert_msg(e < 1e-6, "rmsnorm fwd rel err %g", e);
    /* finite differences in double on the loss sum(out * dout) */
    const double h = 1e-6;
    for (size_t i = 0; i < (size_t)N * C; i++) {
        double s = xd[i];
        xd[i] = s + h;
        double lp = rms_loss_ref(xd, w, dout, N, C, eps, NULL);
        xd[i] = s - h;
        double lm = rms_loss_ref(xd, w, dout, N, C, eps, NULL);
        xd[i] = s;
        dxr[i] += (lp - lm) / (2 * h);
    }
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += xd[(size_t)n * C + c] * xd[(size_t)n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) dwr[c] += dout[(size_t)n * C + c] * xd[(size_t)n * C + c] * r;
    }
    ops->rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, C);
    e = rel_max_err(dx, dxr, (size_t)N * C);
    ck_assert_msg(e < 1e-5, "rmsnorm dx rel err %g", e);
    e = rel_max_err(dw, dwr, C);
    ck_assert_msg(e < 1e-5, "rmsnorm dw rel err %g", e);
    free(x), free(w), free(out), free(rstd), free(dout), free(dx), free(dw);
    free(xd), free(ref), free(dxr), free(dwr);
}
END_TEST

/* ---- rope ---------------------------------------------------------------------------- */
/* Position 37, head_dim 16, from transformers 5.24 LlamaRotaryEmbedding:
 *   cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64, ...)
 *   cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1, 40, 16), torch.arange(40)[None])
 * (a) rope_theta=10000; (b) rope_theta=500000 with rope_scaling llama3 factor 8,
 * low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8. */
static const float ref_cos_a[8] = {0.7654140591621399f, 0.6479216814041138f, -0.8481000065803528f,
                                   0.3901123106479645f, 0.9323273301124573f, 0.9931628108024597f,
                                   0.9993155598640442f, 0.9999315738677979f};
static const float ref_sin_a[8] = {-0.6435381174087524f, -0.7617069482803345f, -0.5298361778259277f,
                                   0.9207673072814941f, 0.36161544919013977f, 0.116737499833107f,
                                   0.036991558969020844f, 0.011700160801410675f};
static const float ref_cos_b[8] = {0.2766171991825104f, 0.6240409016609192f, 0.984912633895874f,
                                   0.9994312524795532f, 0.9999786019325256f, 0.9999992251396179f,
                                   1.0f, 1.0f};
static const float ref_sin_b[8] = {0.9609801769256592f, 0.7813916802406311f, 0.17305229604244232f,
                                   0.033722180873155594f, 0.006540690548717976f,
                                   0.0012683975510299206f, 0.0002459711686242372f,
                                   4.7699406422907487e-05f};

START_TEST(test_rope_table_matches_transformers) {
    float cs[40 * 8], sn[40 * 8];
    ops->rope_table(cs, sn, 40, 16, 10000.0f, QFT_OPS_ROPE_DEFAULT, 0, 0, 0, 0);
    for (int i = 0; i < 8; i++) {
        ck_assert_float_eq_tol(cs[37 * 8 + i], ref_cos_a[i], 2e-6);
        ck_assert_float_eq_tol(sn[37 * 8 + i], ref_sin_a[i], 2e-6);
    }
    ops->rope_table(cs, sn, 40, 16, 500000.0f, QFT_OPS_ROPE_LLAMA3, 8.0f, 1.0f, 4.0f, 8);
    for (int i = 0; i < 8; i++) {
        ck_assert_float_eq_tol(cs[37 * 8 + i], ref_cos_b[i], 2e-6);
        ck_assert_float_eq_tol(sn[37 * 8 + i], ref_sin_b[i], 2e-6);
    }
}
END_TEST

START_TEST(test_rope_fwd_bwd) {
    const int B = 2, T = 9, nh = 3, hd = 8, ld = nh * hd + 5; /* extra columns untouched */
    const int half = hd / 2;
    float cs[9 * 4], sn[9 * 4];
    ops->rope_table(cs, sn, T, hd, 100.0f, QFT_OPS_ROPE_DEFAULT, 0, 0, 0, 0);
    size_t n = (size_t)B * T * ld;
    float *x = falloc(n), *y = falloc(n), *g = falloc(n);
    double *ref = dalloc(n);
    fill(x, n, 41, 1.0f);
    memcpy(y, x, n * sizeof *x);
    for (int r = 0; r < B * T; r++) {
        int t = r % T;
        for (size_t j = 0; j < (size_t)ld; j++) ref[(size_t)r * ld + j] = x[(size_t)r * ld + j];
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < hd; i++) {
                /* x * cos + rotate_half(x) * sin, written out the way transformers does */
                const float *xh = x + (size_t)r * ld + (size_t)h * hd;
                double rot = i < half ? -xh[i + half] : xh[i - half];
                double ang = (double)(float)((float)t * (float)(1.0 / pow(100.0, (2.0 * (i % half)) / hd)));
                ref[(size_t)r * ld + h * hd + i] = xh[i] * cos(ang) + rot * sin(ang);
            }
    }
    ops->rope_fwd(y, ld, cs, sn, B, T, nh, hd);
    double e = rel_max_err(y, ref, n);
    ck_assert_msg(e < 1e-6, "rope fwd rel err %g", e);
    /* backward: the adjoint, checked as <rope(x), g> == <x, rope_bwd(g)> */
    fill(g, n, 42, 1.0f);
    double lhs = 0, rhs = 0;
    for (size_t i = 0; i < n; i++) lhs += (double)y[i] * g[i];
    ops->rope_bwd(g, ld, cs, sn, B, T, nh, hd);
    for (size_t i = 0; i < n; i++) rhs += (double)x[i] * g[i];
    ck_assert_msg(fabs(lhs - rhs) < 1e-5 * fabs(lhs) + 1e-6, "rope adjoint %g vs %g", lhs, rhs);
    /* and the inverse: bwd undoes fwd (a rotation) */
    memcpy(g, y, n * sizeof *y);
    ops->rope_bwd(g, ld, cs, sn, B, T, nh, hd);
    double *xd = dalloc(n);
    for (size_t i = 0; i < n; i++) xd[i] = x[i];
    e = rel_max_err(g, xd, n);
    ck_assert_msg(e < 1e-6, "rope bwd(fwd(x)) != x: %g", e);
    free(x), free(y), free(g), free(ref), free(xd);
}
END_TEST

/* ---- attention ----------------------------------------------------------------------- */
/* Naive O(T^2) reference with the full probability matrix, in double. Also returns the
 * analytic gradients for a given dout. */
static void attention_ref(const float *qkv, const uint8_t *mask, const float *dout, int B, int T,
                          int H, int KV, int hd, double scale, double *out, double *dqkv) {
    const int W = QFT_QKV_WIDTH(H, KV, hd), g = H / KV;
    double *P = dalloc((size_t)T * T), *dP = dalloc((size_t)T * T);
    if (dqkv) memset(dqkv, 0, (size_t)B * T * W * sizeof *dqkv);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / g;
#define Q(t, d) qkv[((size_t)b * T + (t)) * W + (size_t)h * hd + (d)]
#define K(t, d) qkv[((size_t)b * T + (t)) * W + (size_t)(H + kh) * hd + (d)]
#define Vv(t, d) qkv[((size_t)b * T + (t)) * W + (size_t)(H + KV + kh) * hd + (d)]
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < T; j++) {
                    double s = -INFINITY;
                    if (j <= i && (!mask || mask[b * T + j])) {
                        s = 0;
                        for (int d = 0; d < hd; d++) s += (double)Q(i, d) * K(j, d);
                        s *= scale;
                    }
                    P[(size_t)i * T + j] = s;
                    if (s > mx) mx = s;
                }
                double sum = 0;
                for (int j = 0; j < T; j++) {
                    double p = mx == -INFINITY ? 0 : exp(P[(size_t)i * T + j] - mx);
                    P[(size_t)i * T + j] = p;
                    sum += p;
                }
                for (int j = 0; j < T; j++) P[(size_t)i * T + j] = sum > 0 ? P[(size_t)i * T + j] / sum : 0;
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += P[(size_t)i * T + j] * Vv(j, d);
                    out[((size_t)b * T + i) * H * hd + (size_t)h * hd + d] = o;
                }
            }
            if (!dqkv) continue;
            const float *dO = dout + (size_t)b * T * H * hd + (size_t)h * hd; // row stride H*hd
            for (int i = 0; i < T; i++) {
                double rowdot = 0;
                for (int j = 0; j < T; j++) {
                    double dp = 0;
                    for (int d = 0; d < hd; d++) dp += (double)dO[(size_t)i * H * hd + d] * Vv(j, d);
                    dP[(size_t)i * T + j] = dp;
                    rowdot += dp * P[(size_t)i * T + j];
                }
                for (int j = 0; j < T; j++) {
                    double p = P[(size_t)i * T + j];
                    double ds = p * (dP[(size_t)i * T + j] - rowdot) * scale;
                    for (int d = 0; d < hd; d++) {
                        dqkv[((size_t)b * T + i) * W + (size_t)h * hd + d] += ds * K(j, d);
                        dqkv[((size_t)b * T + j) * W + (size_t)(H + kh) * hd + d] += ds * Q(i, d);
                        dqkv[((size_t)b * T + j) * W + (size_t)(H + KV + kh) * hd + d] +=
                            p * dO[(size_t)i * H * hd + d];
                    }
                }
            }
#undef Q
#undef K
#undef Vv
        }
    free(P), free(dP);
}

static float *att_work(int T, int hd, size_t *n) {
    *n = ops->attention_workspace(T, hd);
    return falloc(*n);
}

static void check_attention(int B, int T, int H, int KV, int hd, const uint8_t *mask,
                            uint64_t seed) {
    size_t wn;
    float *work = att_work(T, hd, &wn);
    const int W = QFT_QKV_WIDTH(H, KV, hd);
    const double scale = 1.0 / sqrt((double)hd);
    size_t nq = (size_t)B * T * W, no = (size_t)B * T * H * hd;
    float *qkv = falloc(nq), *out = falloc(no), *lse = falloc((size_t)B * H * T);
    float *dout = falloc(no), *dqkv = falloc(nq), *dqkv2 = falloc(nq);
    double *ro = dalloc(no), *rd = dalloc(nq);
    fill(qkv, nq, seed, 1.5f); /* large enough that softmax rows are far from uniform */
    fill(dout, no, seed + 1, 1.0f);
    fill(dqkv, nq, seed + 2, 1.0f); /* garbage: the op overwrites */
    attention_ref(qkv, mask, dout, B, T, H, KV, hd, scale, ro, rd);
    ops->attention_fwd(out, lse, qkv, mask, B, T, H, KV, hd, (float)scale, work, wn);
    double e = rel_max_err(out, ro, no);
    ck_assert_msg(e < 2e-5, "attention fwd (B%d T%d H%d KV%d hd%d) rel err %g", B, T, H, KV, hd, e);
    ops->attention_bwd(dqkv, dout, out, lse, qkv, mask, B, T, H, KV, hd, (float)scale, work, wn);
    e = rel_max_err(dqkv, rd, nq);
    ck_assert_msg(e < 2e-5, "attention bwd (B%d T%d H%d KV%d hd%d) rel err %g", B, T, H, KV, hd, e);
    for (size_t i = 0; i < nq; i++) ck_assert(isfinite(dqkv[i]));
    /* deterministic: a second run gives the same bits */
    ops->attention_bwd(dqkv2, dout, out, lse, qkv, mask, B, T, H, KV, hd, (float)scale, work, wn);
    ck_assert_mem_eq(dqkv, dqkv2, nq * sizeof(float));
    /* one thread's worth of scratch: fewer threads, same bits */
    ops->attention_bwd(dqkv2, dout, out, lse, qkv, mask, B, T, H, KV, hd, (float)scale, work,
                       wn / (size_t)omp_threads());
    ck_assert_mem_eq(dqkv, dqkv2, nq * sizeof(float));
    free(work);
    free(qkv), free(out), free(lse), free(dout), free(dqkv), free(dqkv2), free(ro), free(rd);
}

START_TEST(test_attention_gqa_multiblock) {
    /* T = 150 spans three 64-key blocks and five 32-query tiles, both with tails */
    check_attention(2, 150, 6, 2, 16, NULL, 100);
}
END_TEST

START_TEST(test_attention_mha_small) { check_attention(3, 7, 2, 2, 8, NULL, 200); }
END_TEST

START_TEST(test_attention_key_padding) {
    /* row 0 right-padded, row 1 with a hole and left padding (its first query sees no key:
     * the op defines that row's output as 0), row 2 all real */
    enum { B = 3, T = 70 };
    uint8_t mask[B * T];
    for (int t = 0; t < T; t++) {
        mask[0 * T + t] = t < 50;
        mask[1 * T + t] = t >= 3 && t != 40;
        mask[2 * T + t] = 1;
    }
    check_attention(B, T, 4, 1, 12, mask, 300);
}
END_TEST

START_TEST(test_attention_bwd_finite_difference) {
    /* an independent check of the analytic reference itself, on a few entries */
    enum { B = 1, T = 5, H = 2, KV = 1, hd = 4 };
    const int W = QFT_QKV_WIDTH(H, KV, hd);
    float qkv[B * T * W], dout[B * T * H * hd], out[B * T * H * hd], lse[B * H * T],
        dq[B * T * W];
    double o1[B * T * H * hd], o2[B * T * H * hd], rd[B * T * W];
    fill(qkv, sizeof qkv / sizeof *qkv, 400, 1.0f);
    fill(dout, sizeof dout / sizeof *dout, 401, 1.0f);
    const double scale = 0.5;
    attention_ref(qkv, NULL, dout, B, T, H, KV, hd, scale, o1, rd);
    size_t wn;
    float *work = att_work(T, hd, &wn);
    ops->attention_fwd(out, lse, qkv, NULL, B, T, H, KV, hd, (float)scale, work, wn);
    ops->attention_bwd(dq, dout, out, lse, qkv, NULL, B, T, H, KV, hd, (float)scale, work, wn);
    free(work);
    for (int idx = 0; idx < B * T * W; idx += 3) {
        const float save = qkv[idx], hstep = 1e-2f;
        const float up = save + hstep, down = save - hstep;
        qkv[idx] = up;
        attention_ref(qkv, NULL, NULL, B, T, H, KV, hd, scale, o1, NULL);
        qkv[idx] = down;
        attention_ref(qkv, NULL, NULL, B, T, H, KV, hd, scale, o2, NULL);
        qkv[idx] = save;
        double fd = 0;
        for (int i = 0; i < B * T * H * hd; i++) fd += dout[i] * (o1[i] - o2[i]);
        fd /= (double)up - (double)down;
        ck_assert_msg(fabs(fd - dq[idx]) < 2e-3 * (1 + fabs(fd)), "qkv[%d]: fd %g vs %g", idx, fd,
                      dq[idx]);
    }
}
END_TEST

/* ---- swiglu -------------------------------------------------------------------------- */
START_TEST(test_swiglu) {
    const int N = 11, I = 37;
    float *gu = falloc((size_t)N * 2 * I), *h = falloc((size_t)N * I), *dh = falloc((size_t)N * I);
    float *dgu = falloc((size_t)N * 2 * I);
    double *rh = dalloc((size_t)N * I), *rd = dalloc((size_t)N * 2 * I);
    fill(gu, (size_t)N * 2 * I, 51, 3.0f); /* wide enough to reach both tails of silu */
    fill(dh, (size_t)N * I, 52, 1.0f);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            double g = gu[(size_t)n * 2 * I + i], u = gu[(size_t)n * 2 * I + I + i];
            double s = 1 / (1 + exp(-g)), d = dh[(size_t)n * I + i];
            rh[(size_t)n * I + i] = g * s * u;
            rd[(size_t)n * 2 * I + i] = d * u * (s + g * s * (1 - s));
            rd[(size_t)n * 2 * I + I + i] = d * g * s;
        }
    ops->swiglu_fwd(h, gu, N, I);
    double e = rel_max_err(h, rh, (size_t)N * I);
    ck_assert_msg(e < 1e-6, "swiglu fwd rel err %g", e);
    ops->swiglu_bwd(dgu, dh, gu, N, I);
    e = rel_max_err(dgu, rd, (size_t)N * 2 * I);
    ck_assert_msg(e < 1e-6, "swiglu bwd rel err %g", e);
    /* in place (dgu = gu, as the model calls it): the same bits */
    ops->swiglu_bwd(gu, dh, gu, N, I);
    ck_assert_mem_eq(gu, dgu, (size_t)N * 2 * I * sizeof(float));
    free(gu), free(h), free(dh), free(dgu), free(rh), free(rd);
}
END_TEST

/* ---- cross-entropy ------------------------------------------------------------------- */
START_TEST(test_cross_entropy) {
    const int N = 9, V = 301;
    int32_t tg[9] = {5, -100, 300, 0, 17, -100, 150, 299, 1};
    float *lg = falloc((size_t)N * V), *lse = falloc(N), *loss = falloc(N);
    float *dl = falloc((size_t)N * V), *fused = falloc((size_t)N * V), *floss = falloc(N);
    double *rd = dalloc((size_t)N * V), rl[9];
    fill(lg, (size_t)N * V, 61, 4.0f);
    double rsum = 0;
    int rvalid = 0;
    for (int n = 0; n < N; n++) {
        const float *l = lg + (size_t)n * V;
        double mx = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        for (int v = 0; v < V; v++) s += exp(l[v] - mx);
        double ls = mx + log(s);
        rl[n] = tg[n] == -100 ? 0 : ls - l[tg[n]];
        if (tg[n] != -100) rsum += rl[n], rvalid++;
        for (int v = 0; v < V; v++)
            rd[(size_t)n * V + v] = tg[n] == -100 ? 0 : 0.3 * (exp(l[v] - ls) - (v == tg[n]));
    }
    int nv = -1;
    double sum = ops->cross_entropy_fwd(lg, tg, N, V, lse, loss, &nv);
    ck_assert_int_eq(nv, rvalid);
    ck_assert_double_eq_tol(sum, rsum, 1e-5 * fabs(rsum));
    double e = rel_max_err(loss, rl, N);
    ck_assert_msg(e < 1e-6, "cross-entropy row losses rel err %g", e);
    ops->cross_entropy_bwd(dl, lg, lse, tg, N, V, 0.3f);
    e = rel_max_err(dl, rd, (size_t)N * V);
    ck_assert_msg(e < 1e-5, "cross-entropy grad rel err %g", e);
    memcpy(fused, lg, (size_t)N * V * sizeof *lg);
    nv = -1;
    double fsum = ops->cross_entropy_fused(fused, tg, N, V, 0.3f, floss, &nv);
    ck_assert_int_eq(nv, rvalid);
    ck_assert(fsum == sum); /* same per-row arithmetic, same order */
    ck_assert_mem_eq(fused, dl, (size_t)N * V * sizeof *dl);
    /* in place, as the model uses it */
    ops->cross_entropy_bwd(lg, lg, lse, tg, N, V, 0.3f);
    ck_assert_mem_eq(lg, dl, (size_t)N * V * sizeof *dl);
    free(lg), free(lse), free(loss), free(dl), free(fused), free(floss), free(rd);
}
END_TEST

/* ---- DoRA's fused steps (ABI 7) --------------------------------------------------------
 * lowrank_out: y = f (y + s u B^T) with h = y + s u B^T kept, against a double reference,
 * and bit for bit against the steps it replaces (the GEMM, a copy, a scale: the adapters'
 * results before it existed). Cases: f and h each given or not; y's row stride past its
 * width, whose padding must stay untouched. */
START_TEST(test_lowrank_out) {
    const int with_f = _i & 1, with_h = (_i >> 1) & 1;
    const int64_t N = 67, out = 131, k = 19, ldy = out + 5;
    const float s = 0.375f;
    float *y = falloc((size_t)(N * ldy)), *u = falloc((size_t)(N * k)),
          *B = falloc((size_t)(out * k)), *f = falloc((size_t)out), *h = falloc((size_t)(N * out)),
          *y2 = falloc((size_t)(N * ldy)), *h2 = falloc((size_t)(N * out));
    fill(y, (size_t)(N * ldy), 81, 1.0f), fill(u, (size_t)(N * k), 82, 1.0f);
    fill(B, (size_t)(out * k), 83, 0.5f), fill(f, (size_t)out, 84, 1.0f);
    memcpy(y2, y, (size_t)(N * ldy) * sizeof *y);
    double *ry = dalloc((size_t)(N * out)), *rh = dalloc((size_t)(N * out));
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < out; j++) {
            double d = 0;
            for (int64_t q = 0; q < k; q++) d += (double)u[r * k + q] * B[j * k + q];
            rh[r * out + j] = y[r * ldy + j] + s * d;
            ry[r * out + j] = (with_f ? f[j] : 1.0) * rh[r * out + j];
        }
    ops->lowrank_out(y, ldy, u, B, k, s, with_f ? f : NULL, with_h ? h : NULL, N, out);
    /* the replaced steps */
    ops->gemm(0, 1, (int)N, (int)out, (int)k, s, u, (int)k, B, (int)k, 1.0f, y2, (int)ldy);
    if (with_h) ops->cols_axpby(h2, out, 0.0f, y2, ldy, NULL, 1.0f, N, out);
    if (with_f) ops->cols_axpby(y2, ldy, 0.0f, y2, ldy, f, 0.0f, N, out);
    ck_assert_mem_eq(y, y2, (size_t)(N * ldy) * sizeof *y); /* padding included */
    if (with_h) ck_assert_mem_eq(h, h2, (size_t)(N * out) * sizeof *h);
    float *yc = falloc((size_t)(N * out));
    for (int64_t r = 0; r < N; r++) memcpy(yc + r * out, y + r * ldy, (size_t)out * sizeof *y);
    ck_assert_double_le(rel_max_err(yc, ry, (size_t)(N * out)), 1e-6);
    if (with_h) ck_assert_double_le(rel_max_err(h, rh, (size_t)(N * out)), 1e-6);
    free(y), free(u), free(B), free(f), free(h), free(y2), free(h2), free(ry), free(rh), free(yc);
}
END_TEST

/* col_dot_scale: col_dot's sums and f a from one read, bit for bit against col_dot then
 * cols_axpby, and against a double reference; into another buffer (_i = 0) and in place
 * (_i = 1). */
START_TEST(test_col_dot_scale) {
    const int inplace = _i;
    const int64_t N = 203, n = 197, lda = n + 7, ldb = n + 2, ldg = inplace ? lda : n + 3;
    const size_t na = (size_t)(N * lda), ng = (size_t)(N * ldg);
    float *a0 = falloc(na), *a = falloc(na), *a2 = falloc(na), *b = falloc((size_t)(N * ldb)),
          *dv = falloc((size_t)n), *f = falloc((size_t)n), *acc0 = falloc((size_t)n),
          *acc = falloc((size_t)n), *acc2 = falloc((size_t)n), *g = falloc(ng), *g2 = falloc(ng);
    fill(a0, na, 91, 1.0f), fill(b, (size_t)(N * ldb), 92, 3.0f);
    fill(dv, (size_t)n, 93, 1.0f), fill(f, (size_t)n, 94, 1.0f), fill(acc0, (size_t)n, 95, 0.1f);
    for (int64_t j = 0; j < n; j++) dv[j] = 0.5f + fabsf(dv[j]); /* norms: positive */
    memcpy(a, a0, na * sizeof *a), memcpy(a2, a0, na * sizeof *a);
    memcpy(acc, acc0, (size_t)n * sizeof *acc), memcpy(acc2, acc0, (size_t)n * sizeof *acc);
    fill(g, ng, 96, 1.0f);
    memcpy(g2, g, ng * sizeof *g);
    float *gp = inplace ? a : g, *gp2 = inplace ? a2 : g2;
    ops->col_dot_scale(acc, gp, ldg, a, lda, b, ldb, dv, f, N, n);
    ops->col_dot(acc2, a2, lda, b, ldb, dv, N, n);
    ops->cols_axpby(gp2, ldg, 0.0f, a2, lda, f, 0.0f, N, n);
    ck_assert_mem_eq(acc, acc2, (size_t)n * sizeof *acc);
    ck_assert_mem_eq(gp, gp2, ng * sizeof *g); /* padding untouched too */
    double *ref = dalloc((size_t)n);
    for (int64_t j = 0; j < n; j++) {
        double d = 0;
        for (int64_t r = 0; r < N; r++) d += (double)a0[r * lda + j] * b[r * ldb + j];
        ref[j] = acc0[j] + d / dv[j];
        for (int64_t r = 0; r < N; r++) ck_assert(gp[r * ldg + j] == f[j] * a0[r * lda + j]);
    }
    ck_assert_double_le(rel_max_err(acc, ref, (size_t)n), 1e-6);
    free(a0), free(a), free(a2), free(b), free(dv), free(f), free(acc0), free(acc), free(acc2);
    free(g), free(g2), free(ref);
}
END_TEST

START_TEST(test_add_and_table) {
    ck_assert_str_eq(ops->name, "cpu");
    const size_t n = 100003; /* above the parallel threshold, odd */
    float *a = falloc(n), *b = falloc(n), *o = falloc(n);
    fill(a, n, 71, 1.0f);
    fill(b, n, 72, 1.0f);
    ops->add(o, a, b, n);
    for (size_t i = 0; i < n; i++) ck_assert(o[i] == a[i] + b[i]);
    ops->add(a, a, b, n); /* in place */
    ck_assert_mem_eq(a, o, n * sizeof *o);
    float *m = ops->alloc(64 * sizeof(float), "test");
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq((uintptr_t)m % 64, 0);
    ops->copy(m, o, 64);
    ck_assert_mem_eq(m, o, 64 * sizeof *o);
    ops->zero(m, 64);
    for (int i = 0; i < 64; i++) ck_assert(m[i] == 0.0f);
    ops->free(m);
    free(a), free(b), free(o);
}
END_TEST

int main(void) {
    ops = qft_cpu_ops();
    Suite *s = suite_create("cpu_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_gemm_all_transposes, 0, 3);
    tcase_add_test(tc, test_gemm_empty_k);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope_table_matches_transformers);
    tcase_add_test(tc, test_rope_fwd_bwd);
    tcase_add_test(tc, test_attention_gqa_multiblock);
    tcase_add_test(tc, test_attention_mha_small);
    tcase_add_test(tc, test_attention_key_padding);
    tcase_add_test(tc, test_attention_bwd_finite_difference);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_loop_test(tc, test_lowrank_out, 0, 4);
    tcase_add_loop_test(tc, test_col_dot_scale, 0, 2);
    tcase_add_test(tc, test_add_and_table);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
