/* The adapter ops' kernels (core/cuda/cuda_adapt.cu) as their twins (cuda_twin_adapt.h)
 * run them, on the CPU, against the CPU backend's qft_cpu_* of the same names (part of
 * test_cuda_twin, which needs no GPU):
 *   - the dropout mask: the kernel's copy of qft_ops.h's mix64/keep against the header's
 *     own over many keys, indices and thresholds; the whole op bit for bit, overwrite and
 *     accumulate, and the kept fraction near 1 - p;
 *   - cols_axpby element by element (every coefficient form, beta 0 over NaN, in place),
 *     and div: bit for bit; col_dot through the kernel's schedule (row slices, then their
 *     merge), checked by hand on one column and against the CPU's row order to 1 ulp;
 *   - row_norms through the kernel's lane tree (QFT_NORM_LANES lanes merged pairwise):
 *     within 1e-6 relative of the CPU's sum (another order).
 * Shapes are odd, with row strides past the row's end, and col_dot's n crosses the CPU's
 * 64-column blocks. The test is built with -ffp-contract=off, as the CPU library is. */
#include "cpu_ops.h"
#include "cpu_optim.h"
#include "cuda_test_util.h"
#include "cuda_twin_adapt.h"
#include "qft_base.h"
#include "twin_suites.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- dropout -------------------------------------------------------------------------------- */
START_TEST(test_dropout_mask_copy) {
    static const double ps[] = {0.0, 0.05, 0.1, 0.25, 0.5, 0.9, 0.999, 1.0};
    qft_rng r;
    qft_rng_seed(&r, 71);
    long checked = 0;
    for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++) {
        const uint64_t thr = qft_ops_dropout_threshold(ps[pi]);
        for (int k = 0; k < 64; k++) {
            /* keys as the plugins make them (small counters) and arbitrary 64-bit ones */
            const uint64_t key = k < 8 ? (uint64_t)k : qft_rng_next(&r);
            const uint64_t idx0 = k % 2 ? 0 : qft_rng_next(&r) >> 8;
            for (uint64_t i = 0; i < 1000; i++, checked++) {
                const int want = qft_ops_dropout_keep(key, idx0 + i, thr);
                const int got = qft_twin_dropout_keep(key, idx0 + i, thr);
                ck_assert_msg(got == want, "p %g key %llu idx %llu: twin %d, qft_ops.h %d", ps[pi],
                              (unsigned long long)key, (unsigned long long)(idx0 + i), got, want);
            }
        }
    }
    /* the mixer itself, on values whose every bit matters */
    for (int k = 0; k < 10000; k++) {
        const uint64_t z = qft_rng_next(&r);
        ck_assert(qft_twin_mix64(z) == qft_ops_mix64(z));
    }
    ck_assert(checked == 8 * 64 * 1000);
}
END_TEST

/* The kernel's schedule: element e of (N, d) is mask index e. */
static void twin_dropout(uint64_t key, double p, const float *src, int64_t N, int64_t d,
                         float *dst, int accumulate) {
    const uint64_t thr = qft_ops_dropout_threshold(p);
    const float scale = (float)(1.0 / (1.0 - p));
    for (size_t e = 0; e < (size_t)(N * d); e++) {
        const float v = qft_twin_dropout_value(key, (uint64_t)e, thr, scale, src[e]);
        dst[e] = accumulate ? qft_twin_add(dst[e], v) : v;
    }
}

START_TEST(test_dropout_op) {
    static const double ps[] = {0.05, 0.1, 0.5, 0.0};
    const double p = ps[_i];
    const int64_t N = 67, d = 129;
    const size_t n = (size_t)(N * d);
    float *src = ctu_calloc(n, 4), *base = ctu_calloc(n, 4), *got = ctu_calloc(n, 4),
          *ref = ctu_calloc(n, 4);
    ctu_fill(src, n, 81 + (uint64_t)_i, 1.0f);
    ctu_fill(base, n, 91, 0.5f);
    const uint64_t key = 0x5eed0000ull + 977u * (uint64_t)_i;
    for (int acc = 0; acc < 2; acc++) {
        memcpy(got, base, n * 4), memcpy(ref, base, n * 4);
        twin_dropout(key, p, src, N, d, got, acc);
        qft_cpu_dropout(key, p, src, N, d, ref, acc);
        const long at = ctu_first_diff(got, ref, n);
        ck_assert_msg(at < 0, "dropout p %g accumulate %d: element %ld twin %a, cpu %a", p, acc,
                      at, at < 0 ? 0.0 : got[at], at < 0 ? 0.0 : ref[at]);
    }
    /* overwrite mode: kept elements are src / (1 - p) rounded, dropped ones 0 */
    twin_dropout(key, p, src, N, d, got, 0);
    size_t kept = 0;
    const float scale = (float)(1.0 / (1.0 - p));
    for (size_t e = 0; e < n; e++) {
        if (got[e] != 0.0f) {
            kept++;
            ck_assert(got[e] == src[e] * scale);
        }
    }
    const double frac = (double)kept / (double)n;
    ck_assert_msg(fabs(frac - (1.0 - p)) < 0.02, "p %g: kept %.4f", p, frac);
    /* another key draws another mask */
    if (p > 0) {
        twin_dropout(key + 1, p, src, N, d, ref, 0);
        ck_assert(ctu_first_diff(got, ref, n) >= 0);
    }
    free(src), free(base), free(got), free(ref);
}
END_TEST

/* ---- cols_axpby ----------------------------------------------------------------------------- */
START_TEST(test_cols_axpby) {
    const int64_t N = 37, n = 131, ldd = n + 5, lds = n + 3;
    const int form = _i % 3;        /* f alone, f + fadd, fadd alone */
    const int bform = _i / 3 % 3;   /* beta 0 (over NaN), 1, -0.625 */
    const int inplace = _i / 9;     /* dst is src (same strides) */
    const float fadd = form == 0 ? 0.0f : form == 1 ? 0.75f : -1.5f;
    const float beta = bform == 0 ? 0.0f : bform == 1 ? 1.0f : -0.625f;
    const size_t nd = (size_t)(N * ldd), ns = (size_t)(N * lds);
    float *src = ctu_calloc(ns, 4), *f = ctu_calloc((size_t)n, 4);
    float *got = ctu_calloc(nd, 4), *ref = ctu_calloc(nd, 4);
    ctu_fill(src, ns, 101, 1.0f), ctu_fill(f, (size_t)n, 102, 2.0f);
    ctu_fill(got, nd, 103, 1.0f);
    if (bform == 0 && !inplace)
        for (int64_t r = 0; r < N; r++)
            for (int64_t j = 0; j < n; j++) got[r * ldd + j] = NAN;
    if (inplace) /* dst is src: the source values, with ldd as the stride of both */
        for (int64_t r = 0; r < N; r++) memcpy(got + r * ldd, src + r * lds, (size_t)n * 4);
    memcpy(ref, got, nd * 4);
    const float *fp = form == 2 ? NULL : f;
    /* the kernel's schedule: one element per e of (N, n) */
    const float *tsrc = inplace ? got : src;
    const int64_t tlds = inplace ? ldd : lds;
    for (size_t e = 0; e < (size_t)(N * n); e++) {
        const int64_t r = (int64_t)(e / (size_t)n), j = (int64_t)(e % (size_t)n);
        const float c = qft_twin_axpby_coef(fp, fadd, j);
        float *d = got + r * ldd + j;
        *d = qft_twin_axpby(beta, beta == 0.0f ? 0.0f : *d, c, tsrc[r * tlds + j]);
    }
    qft_cpu_cols_axpby(ref, ldd, beta, inplace ? ref : src, inplace ? ldd : lds, fp, fadd, N, n);
    const long at = ctu_first_diff(got, ref, nd);
    ck_assert_msg(at < 0, "cols_axpby form %d beta %g in place %d: element %ld twin %a cpu %a",
                  form, beta, inplace, at, at < 0 ? 0.0 : got[at], at < 0 ? 0.0 : ref[at]);
    /* real values, and the padding past each row untouched */
    int nonzero = 0;
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < n; j++) {
            ck_assert(isfinite(got[r * ldd + j]));
            nonzero += got[r * ldd + j] != 0.0f;
        }
    ck_assert_int_eq(nonzero, (int)(N * n));
    free(src), free(f), free(got), free(ref);
}
END_TEST

/* ---- col_dot and div ------------------------------------------------------------------------ */
START_TEST(test_col_dot) {
    const int64_t N = _i ? 1 : 203, n = 197, lda = n + 7, ldb = n + 2;
    float *a = ctu_calloc((size_t)(N * lda), 4), *b = ctu_calloc((size_t)(N * ldb), 4);
    float *dv = ctu_calloc((size_t)n, 4), *got = ctu_calloc((size_t)n, 4),
          *ref = ctu_calloc((size_t)n, 4);
    ctu_fill(a, (size_t)(N * lda), 111, 1.0f), ctu_fill(b, (size_t)(N * ldb), 112, 3.0f);
    ctu_fill(dv, (size_t)n, 113, 1.0f), ctu_fill(got, (size_t)n, 114, 0.1f);
    for (int64_t j = 0; j < n; j++) dv[j] = 0.5f + fabsf(dv[j]); /* norms: positive */
    memcpy(ref, got, (size_t)n * 4);
    const float before = got[5];
    for (int64_t j = 0; j < n; j++) { /* the kernel's schedule: slices, then their merge */
        double part[QFT_COLDOT_SLICES];
        for (int y = 0; y < QFT_COLDOT_SLICES; y++)
            part[y] = qft_twin_col_dot_slice(a, lda, b, ldb, N, j, y);
        got[j] = qft_twin_add(got[j], qft_twin_col_dot_merge(part, dv[j]));
    }
    /* column 5 by hand: the slices' rows, each slice in order, the slices in order */
    double s = 0.0;
    for (int y = 0; y < QFT_COLDOT_SLICES; y++) {
        double t = 0.0;
        for (int64_t r = y; r < N; r += QFT_COLDOT_SLICES) t += (double)a[r * lda + 5] * b[r * ldb + 5];
        s += t;
    }
    ck_assert_msg(got[5] == before + (float)(s / (double)dv[5]), "col_dot column 5: twin %a "
                  "by hand %a", (double)got[5], (double)(before + (float)(s / (double)dv[5])));
    /* the CPU sums in row order: the same to double rounding, so equal floats or 1 ulp */
    qft_cpu_col_dot(ref, a, lda, b, ldb, dv, N, n);
    for (int64_t j = 0; j < n; j++)
        ck_assert_msg(fabsf(got[j] - ref[j]) <= 2e-7f * fabsf(ref[j]) + 1e-30f,
                      "col_dot N %lld: column %lld twin %a cpu %a", (long long)N, (long long)j,
                      (double)got[j], (double)ref[j]);
    free(a), free(b), free(dv), free(got), free(ref);
}
END_TEST

/* col_dot_scale's slice (ABI 7): the same sums as col_dot's slice, bit for bit, and g the
 * CPU's col_dot_scale g bit for bit; the merged sums agree with the CPU's row order to
 * double rounding. In place on a copy of a. */
START_TEST(test_col_dot_scale) {
    const int64_t N = 203, n = 197, lda = n + 7, ldb = n + 2;
    const size_t na = (size_t)(N * lda);
    float *a = ctu_calloc(na, 4), *b = ctu_calloc((size_t)(N * ldb), 4),
          *dv = ctu_calloc((size_t)n, 4), *f = ctu_calloc((size_t)n, 4),
          *got = ctu_calloc((size_t)n, 4), *ref = ctu_calloc((size_t)n, 4),
          *ga = ctu_calloc(na, 4), *gc = ctu_calloc(na, 4);
    ctu_fill(a, na, 131, 1.0f), ctu_fill(b, (size_t)(N * ldb), 132, 3.0f);
    ctu_fill(dv, (size_t)n, 133, 1.0f), ctu_fill(f, (size_t)n, 134, 1.0f);
    for (int64_t j = 0; j < n; j++) dv[j] = 0.5f + fabsf(dv[j]);
    memcpy(ga, a, na * 4), memcpy(gc, a, na * 4);
    for (int64_t j = 0; j < n; j++) {
        double part[QFT_COLDOT_SLICES];
        for (int y = 0; y < QFT_COLDOT_SLICES; y++) {
            /* from the untouched a, then in place on ga: the same sum either way */
            const double plain = qft_twin_col_dot_slice(a, lda, b, ldb, N, j, y);
            part[y] = qft_twin_col_dot_slice_scale(ga, lda, b, ldb, N, j, y, f[j], ga, lda);
            ck_assert(part[y] == plain);
        }
        got[j] = qft_twin_col_dot_merge(part, dv[j]);
    }
    qft_cpu_col_dot_scale(ref, gc, lda, gc, lda, b, ldb, dv, f, N, n);
    ck_assert(ctu_first_diff(ga, gc, na) < 0);
    for (int64_t j = 0; j < n; j++)
        ck_assert_msg(fabsf(got[j] - ref[j]) <= 2e-7f * fabsf(ref[j]) + 1e-30f,
                      "col_dot_scale column %lld: twin %a cpu %a", (long long)j, (double)got[j],
                      (double)ref[j]);
    free(a), free(b), free(dv), free(f), free(got), free(ref), free(ga), free(gc);
}
END_TEST

/* lowrank_out's element (ABI 7): the kernel's k-order sum in float against the CPU
 * backend's lowrank_out (its GEMM's order), within the float rounding of k products. */
START_TEST(test_lowrank_out) {
    const int64_t N = 45, out = 77, k = _i ? 65 : 16, ldy = out + 2;
    const float s = 0.375f;
    float *y = ctu_calloc((size_t)(N * ldy), 4), *u = ctu_calloc((size_t)(N * k), 4),
          *B = ctu_calloc((size_t)(out * k), 4), *f = ctu_calloc((size_t)out, 4),
          *ref = ctu_calloc((size_t)(N * ldy), 4);
    ctu_fill(y, (size_t)(N * ldy), 141, 1.0f), ctu_fill(u, (size_t)(N * k), 142, 1.0f);
    ctu_fill(B, (size_t)(out * k), 143, 0.5f), ctu_fill(f, (size_t)out, 144, 1.0f);
    memcpy(ref, y, (size_t)(N * ldy) * 4);
    qft_cpu_lowrank_out(ref, ldy, u, B, k, s, f, NULL, N, out);
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < out; j++) {
            double mag = fabs((double)y[r * ldy + j]);
            for (int64_t q = 0; q < k; q++) mag += fabs(s * (double)u[r * k + q] * B[j * k + q]);
            const float t = qft_twin_lowrank_t(y[r * ldy + j], s,
                                               qft_twin_lowrank_dot(u + r * k, B + j * k, k));
            const float got = qft_twin_mul(f[j], t), want = ref[r * ldy + j];
            ck_assert_msg(fabs((double)got - want) <= 4e-7 * (double)(k + 2) * fabs(f[j]) * mag,
                          "lowrank_out (%lld, %lld) k %lld: twin %a cpu %a", (long long)r,
                          (long long)j, (long long)k, (double)got, (double)want);
        }
    free(y), free(u), free(B), free(f), free(ref);
}
END_TEST

START_TEST(test_div) {
    const size_t n = 4099;
    float *a = ctu_calloc(n, 4), *b = ctu_calloc(n, 4), *got = ctu_calloc(n, 4),
          *ref = ctu_calloc(n, 4);
    ctu_fill(a, n, 121, 3.0f), ctu_fill(b, n, 122, 1.0f);
    for (size_t i = 0; i < n; i++) got[i] = qft_twin_div(a[i], b[i]);
    qft_cpu_div(ref, a, b, n);
    ck_assert(ctu_first_diff(got, ref, n) < 0);
    free(a), free(b), free(got), free(ref);
}
END_TEST

/* ---- row_norms through the lane tree -------------------------------------------------------- */
START_TEST(test_row_norms) {
    static const int64_t lens[] = {1000, 77, 256, 4097};
    const int64_t n = 29, len = lens[_i], ld = len + 11;
    float *x = ctu_calloc((size_t)(n * ld), 4), *got = ctu_calloc((size_t)n, 4),
          *ref = ctu_calloc((size_t)n, 4);
    ctu_fill(x, (size_t)(n * ld), 131 + (uint64_t)_i, 1.0f);
    for (int64_t j = 0; j < n; j++) /* rows of different scales */
        for (int64_t k = 0; k < len; k++) x[j * ld + k] *= 0.01f * (float)(j + 1);
    double part[QFT_NORM_LANES];
    for (int64_t j = 0; j < n; j++) {
        for (int l = 0; l < QFT_NORM_LANES; l++)
            part[l] = qft_twin_row_sumsq_lane(x + j * ld, len, l);
        for (int off = QFT_NORM_LANES / 2; off > 0; off >>= 1)
            for (int l = 0; l < off; l++) part[l] = qft_twin_dadd(part[l], part[l + off]);
        got[j] = (float)sqrt(part[0]);
    }
    qft_cpu_row_norms(ref, x, ld, n, len);
    for (int64_t j = 0; j < n; j++) {
        const double e = fabs((double)got[j] - ref[j]) / ref[j];
        ck_assert_msg(ref[j] > 0 && e <= 1e-6, "row %lld len %lld: twin %.9g cpu %.9g (rel %g)",
                      (long long)j, (long long)len, got[j], ref[j], e);
    }
    free(x), free(got), free(ref);
}
END_TEST

void twin_adapt_add_tests(TCase *tc) {
    tcase_add_test(tc, test_dropout_mask_copy);
    tcase_add_loop_test(tc, test_dropout_op, 0, 4);
    tcase_add_loop_test(tc, test_cols_axpby, 0, 18);
    tcase_add_loop_test(tc, test_col_dot, 0, 2);
    tcase_add_test(tc, test_col_dot_scale);
    tcase_add_loop_test(tc, test_lowrank_out, 0, 2);
    tcase_add_test(tc, test_div);
    tcase_add_loop_test(tc, test_row_norms, 0, 4);
}
