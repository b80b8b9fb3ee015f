/* The adapter ops of the CUDA table (cols_axpby, col_dot, div, row_norms, dropout;
 * core/cuda/cuda_adapt.cu) on a GPU against the CPU backend's qft_cpu_* of the same names
 * (part of test_cuda_ops, which skips without a device). Bit for bit (memcmp over the
 * whole strided buffer, so padding past each row must stay untouched), except row_norms:
 * 1e-6 relative (a lane tree against the CPU's sum), and col_dot, which is compared with
 * its own order (cuda_twin_adapt.h's row slices) replayed on the host, bit for bit. Shapes are odd with row strides past
 * the row's end; one size per op is past the kernels' capped grid (sm_count * 32 blocks
 * of 256), so the grid-stride loops wrap. */
#include "ops_suites.h"

#include "cpu_ops.h"
#include "cpu_optim.h"
#include "cuda_test_util.h"
#include "cuda_twin_adapt.h"
#include "qft_base.h"
#include "qft_cuda.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const qft_ops *G;

#define CHECK_BITS(got, ref, n, ...)                                                          \
    do {                                                                                      \
        const long at_ = ctu_first_diff(got, ref, n);                                         \
        if (at_ >= 0) {                                                                       \
            fprintf(stderr, __VA_ARGS__);                                                     \
            ck_abort_msg("element %ld: gpu %a, cpu %a", at_, (double)(got)[at_],              \
                         (double)(ref)[at_]);                                                 \
        }                                                                                     \
    } while (0)

START_TEST(test_table) {
    ck_assert_int_eq(G->host_memory, 0);
    ck_assert(G->cols_axpby && G->col_dot && G->div && G->row_norms && G->dropout);
    ck_assert(G->embedding_fwd_bf16 && G->f32_to_bf16 && G->bf16_to_f32 && G->qmatmul);
    ck_assert(G->lowrank_out && G->col_dot_scale);
}
END_TEST

/* ---- cols_axpby ----------------------------------------------------------------------------- */
START_TEST(test_cols_axpby) {
    const int form = _i % 3;      /* f alone, f + fadd, fadd alone */
    const int bform = _i / 3 % 3; /* beta 0 (over NaN), 1, -0.625 */
    const int inplace = _i / 9 % 2;
    const int big = _i / 18;      /* past the capped grid */
    const int64_t N = big ? 2049 : 37, n = big ? 777 : 131, ldd = n + 5;
    const int64_t lds = inplace ? ldd : n + 3;
    const float fadd = form == 0 ? 0.0f : form == 1 ? 0.75f : -1.5f;
    const float beta = bform == 0 ? 0.0f : bform == 1 ? 1.0f : -0.625f;
    const size_t nd = (size_t)(N * ldd), ns = (size_t)(N * lds);
    float *src = ctu_calloc(ns, 4), *f = ctu_calloc((size_t)n, 4), *ref = ctu_calloc(nd, 4),
          *got = ctu_calloc(nd, 4);
    ctu_fill(src, ns, 201 + (uint64_t)_i, 1.0f), ctu_fill(f, (size_t)n, 202, 2.0f);
    ctu_fill(ref, nd, 203, 1.0f);
    if (inplace)
        memcpy(ref, src, nd * 4);
    else if (bform == 0)
        for (int64_t r = 0; r < N; r++)
            for (int64_t j = 0; j < n; j++) ref[r * ldd + j] = NAN;
    const float *fp = form == 2 ? NULL : f;
    float *dd = ops_dup(ref, nd * 4), *ds = inplace ? dd : ops_dup(src, ns * 4);
    float *df = ops_dup(f, (size_t)n * 4);
    G->cols_axpby(dd, ldd, beta, ds, lds, fp ? df : NULL, fadd, N, n);
    ops_get(got, dd, nd * 4);
    ops_synced();
    qft_cpu_cols_axpby(ref, ldd, beta, inplace ? ref : src, lds, fp, fadd, N, n);
    CHECK_BITS(got, ref, nd, "cols_axpby N %lld n %lld form %d beta %g in place %d\n",
               (long long)N, (long long)n, form, beta, inplace);
    for (int64_t r = 0; r < N; r++) ck_assert(isfinite(got[r * ldd + n - 1]));
    G->free(dd), G->free(df);
    if (!inplace) G->free(ds);
    free(src), free(f), free(ref), free(got);
}
END_TEST

/* ---- col_dot -------------------------------------------------------------------------------- */
START_TEST(test_col_dot) {
    static const int64_t shapes[4][2] = {{203, 197}, {1, 197}, {64, 5001}, {0, 33}}; /* N, n */
    const int64_t N = shapes[_i][0], n = shapes[_i][1], lda = n + 7, ldb = n + 2;
    const size_t na = (size_t)(N * lda), nb = (size_t)(N * ldb);
    float *a = ctu_calloc(na, 4), *b = ctu_calloc(nb, 4), *dv = ctu_calloc((size_t)n, 4),
          *ref = ctu_calloc((size_t)n, 4), *got = ctu_calloc((size_t)n, 4);
    ctu_fill(a, na, 211, 1.0f), ctu_fill(b, nb, 212, 3.0f), ctu_fill(dv, (size_t)n, 213, 1.0f);
    ctu_fill(ref, (size_t)n, 214, 0.1f);
    for (int64_t j = 0; j < n; j++) dv[j] = 0.5f + fabsf(dv[j]); /* norms: positive */
    float *da = ops_dup(a, na * 4), *db = ops_dup(b, nb * 4), *ddv = ops_dup(dv, (size_t)n * 4);
    float *dacc = ops_dup(ref, (size_t)n * 4);
    G->col_dot(dacc, da, lda, db, ldb, ddv, N, n);
    ops_get(got, dacc, (size_t)n * 4);
    ops_synced();
    /* the kernel's order (cuda_twin_adapt.h's slices, then their merge) replayed here */
    for (int64_t j = 0; j < n; j++) {
        double part[QFT_COLDOT_SLICES];
        for (int y = 0; y < QFT_COLDOT_SLICES; y++)
            part[y] = qft_twin_col_dot_slice(a, lda, b, ldb, N, j, y);
        ref[j] = qft_twin_add(ref[j], qft_twin_col_dot_merge(part, dv[j]));
    }
    CHECK_BITS(got, ref, (size_t)n, "col_dot N %lld n %lld\n", (long long)N, (long long)n);
    G->free(da), G->free(db), G->free(ddv), G->free(dacc);
    free(a), free(b), free(dv), free(ref), free(got);
}
END_TEST

/* ---- col_dot_scale (ABI 7) ------------------------------------------------------------------
 * The sums in col_dot's order and g = f a, replayed on the host with the twin, bit for bit;
 * into another buffer and in place. */
START_TEST(test_col_dot_scale) {
    static const int64_t shapes[3][2] = {{203, 197}, {1, 33}, {64, 5001}}; /* N, n */
    const int64_t N = shapes[_i % 3][0], n = shapes[_i % 3][1];
    const int inplace = _i / 3;
    const int64_t lda = n + 7, ldb = n + 2, ldg = inplace ? lda : n + 3;
    const size_t na = (size_t)(N * lda), nb = (size_t)(N * ldb), ng = (size_t)(N * ldg);
    float *a = ctu_calloc(na, 4), *b = ctu_calloc(nb, 4), *dv = ctu_calloc((size_t)n, 4),
          *f = ctu_calloc((size_t)n, 4), *ref = ctu_calloc((size_t)n, 4),
          *got = ctu_calloc((size_t)n, 4), *g = ctu_calloc(ng, 4), *gref = ctu_calloc(ng, 4),
          *ggot = ctu_calloc(ng, 4);
    ctu_fill(a, na, 221, 1.0f), ctu_fill(b, nb, 222, 3.0f), ctu_fill(dv, (size_t)n, 223, 1.0f);
    ctu_fill(f, (size_t)n, 224, 1.0f), ctu_fill(ref, (size_t)n, 225, 0.1f);
    ctu_fill(g, ng, 226, 1.0f);
    for (int64_t j = 0; j < n; j++) dv[j] = 0.5f + fabsf(dv[j]);
    memcpy(gref, inplace ? a : g, ng * 4);
    float *da = ops_dup(a, na * 4), *db = ops_dup(b, nb * 4), *ddv = ops_dup(dv, (size_t)n * 4),
          *df = ops_dup(f, (size_t)n * 4), *dacc = ops_dup(ref, (size_t)n * 4);
    float *dg = inplace ? da : ops_dup(g, ng * 4);
    G->col_dot_scale(dacc, dg, ldg, da, lda, db, ldb, ddv, df, N, n);
    ops_get(got, dacc, (size_t)n * 4);
    ops_get(ggot, dg, ng * 4);
    ops_synced();
    for (int64_t j = 0; j < n; j++) {
        double part[QFT_COLDOT_SLICES];
        for (int y = 0; y < QFT_COLDOT_SLICES; y++)
            part[y] = qft_twin_col_dot_slice_scale(a, lda, b, ldb, N, j, y, f[j], gref, ldg);
        ref[j] = qft_twin_add(ref[j], qft_twin_col_dot_merge(part, dv[j]));
    }
    CHECK_BITS(got, ref, (size_t)n, "col_dot_scale sums N %lld n %lld\n", (long long)N,
               (long long)n);
    CHECK_BITS(ggot, gref, ng, "col_dot_scale g N %lld n %lld in place %d\n", (long long)N,
               (long long)n, inplace);
    G->free(da), G->free(db), G->free(ddv), G->free(df), G->free(dacc);
    if (!inplace) G->free(dg);
    free(a), free(b), free(dv), free(f), free(ref), free(got), free(g), free(gref), free(ggot);
}
END_TEST

/* ---- lowrank_out (ABI 7) --------------------------------------------------------------------
 * Case _i of 16: four shapes with partial tiles in rows, columns and k chunks, f and h each
 * given or not; y's rows padded past their width. Host inputs and their device copies (dh
 * zeroed, so that a missed write shows). */
typedef struct lr_case {
    int64_t N, out, k, ldy;
    int with_f, with_h;
    size_t ny, nh;
    float *y, *u, *B, *f, *ref, *href, *got, *hgot;
    float *dy, *du, *dB, *df, *dh;
} lr_case;

static void lr_case_make(lr_case *c, int i) {
    static const int64_t shapes[4][3] = {{37, 131, 16}, {1, 5, 1}, {130, 200, 65}, {2049, 70, 8}};
    c->N = shapes[i % 4][0], c->out = shapes[i % 4][1], c->k = shapes[i % 4][2];
    c->with_f = (i / 4) & 1, c->with_h = (i / 8) & 1, c->ldy = c->out + 3;
    c->ny = (size_t)(c->N * c->ldy), c->nh = (size_t)(c->N * c->out);
    const size_t nu = (size_t)(c->N * c->k), nb = (size_t)(c->out * c->k);
    c->y = ctu_calloc(c->ny, 4), c->u = ctu_calloc(nu, 4), c->B = ctu_calloc(nb, 4);
    c->f = ctu_calloc((size_t)c->out, 4), c->ref = ctu_calloc(c->ny, 4);
    c->href = ctu_calloc(c->nh, 4), c->got = ctu_calloc(c->ny, 4), c->hgot = ctu_calloc(c->nh, 4);
    ctu_fill(c->y, c->ny, 231, 1.0f), ctu_fill(c->u, nu, 232, 1.0f);
    ctu_fill(c->B, nb, 233, 0.5f), ctu_fill(c->f, (size_t)c->out, 234, 1.0f);
    memcpy(c->ref, c->y, c->ny * 4);
    c->dy = ops_dup(c->y, c->ny * 4), c->du = ops_dup(c->u, nu * 4), c->dB = ops_dup(c->B, nb * 4);
    c->df = ops_dup(c->f, (size_t)c->out * 4);
    c->dh = c->with_h ? ops_dup(c->hgot, c->nh * 4) : NULL;
}

/* lowrank_out on the device copies; y and h back into got and hgot */
static void lr_case_run(lr_case *c, float s) {
    G->lowrank_out(c->dy, c->ldy, c->du, c->dB, c->k, s, c->with_f ? c->df : NULL, c->dh, c->N,
                   c->out);
    ops_get(c->got, c->dy, c->ny * 4);
    if (c->dh) ops_get(c->hgot, c->dh, c->nh * 4);
    ops_synced();
}

static void lr_case_free(lr_case *c) {
    G->free(c->dy), G->free(c->du), G->free(c->dB), G->free(c->df);
    if (c->dh) G->free(c->dh);
    free(c->y), free(c->u), free(c->B), free(c->f), free(c->ref), free(c->href);
    free(c->got), free(c->hgot);
}

/* The fused kernel against its order replayed on the host with the twin (the rank-k sum in
 * k order), bit for bit, y's padding included. */
START_TEST(test_lowrank_out) {
    lr_case c;
    lr_case_make(&c, _i);
    const float s = 0.375f;
    for (int64_t r = 0; r < c.N; r++)
        for (int64_t j = 0; j < c.out; j++) {
            const float t = qft_twin_lowrank_t(c.y[r * c.ldy + j], s,
                                               qft_twin_lowrank_dot(c.u + r * c.k, c.B + j * c.k,
                                                                    c.k));
            c.href[r * c.out + j] = t;
            c.ref[r * c.ldy + j] = c.with_f ? qft_twin_mul(c.f[j], t) : t;
        }
    lr_case_run(&c, s);
    CHECK_BITS(c.got, c.ref, c.ny, "lowrank_out y N %lld out %lld k %lld f %d h %d\n",
               (long long)c.N, (long long)c.out, (long long)c.k, c.with_f, c.with_h);
    if (c.dh)
        CHECK_BITS(c.hgot, c.href, c.nh, "lowrank_out h N %lld out %lld k %lld\n", (long long)c.N,
                   (long long)c.out, (long long)c.k);
    lr_case_free(&c);
}
END_TEST

/* The GEMM fallback (QFT_CUDA_LOWRANK_OUT=gemm: the GEMM, copy and scale the fused kernel
 * replaced) on the same cases, against the CPU backend within fp32 rounding of the sums: its
 * own test, so that gpu-check takes the fallback only when this one passes. */
START_TEST(test_lowrank_out_gemm) {
    lr_case c;
    lr_case_make(&c, _i);
    const float s = 0.375f;
    qft_cpu_lowrank_out(c.ref, c.ldy, c.u, c.B, c.k, s, c.with_f ? c.f : NULL,
                        c.with_h ? c.href : NULL, c.N, c.out);
    qft_cuda_set_lowrank_out_unfused(1);
    lr_case_run(&c, s);
    qft_cuda_set_lowrank_out_unfused(0);
    double worst = 0, scale = 0;
    for (size_t e = 0; e < c.ny; e++) {
        const double d = fabs((double)c.got[e] - c.ref[e]);
        if (!(d <= worst)) worst = d;
        if (fabs(c.ref[e]) > scale) scale = fabs(c.ref[e]);
    }
    for (size_t e = 0; c.with_h && e < c.nh; e++) {
        const double d = fabs((double)c.hgot[e] - c.href[e]);
        if (!(d <= worst)) worst = d;
    }
    ck_assert_msg(worst <= 1e-5 * scale, "lowrank_out fallback N %lld out %lld k %lld: %g off "
                  "at scale %g", (long long)c.N, (long long)c.out, (long long)c.k, worst, scale);
    lr_case_free(&c);
}
END_TEST

/* ---- div ------------------------------------------------------------------------------------ */
START_TEST(test_div) {
    const size_t n = _i ? ((size_t)3 << 20) + 3 : 4099;
    float *a = ctu_calloc(n, 4), *b = ctu_calloc(n, 4), *ref = ctu_calloc(n, 4),
          *got = ctu_calloc(n, 4);
    ctu_fill(a, n, 221, 3.0f), ctu_fill(b, n, 222, 1.0f);
    float *da = ops_dup(a, n * 4), *db = ops_dup(b, n * 4), *dout = G->alloc(n * 4, "test");
    ck_assert_ptr_nonnull(dout);
    G->div(dout, da, db, n);
    ops_get(got, dout, n * 4);
    ops_synced();
    qft_cpu_div(ref, a, b, n);
    CHECK_BITS(got, ref, n, "div n %zu\n", n);
    G->free(da), G->free(db), G->free(dout);
    free(a), free(b), free(ref), free(got);
}
END_TEST

/* ---- embedding_fwd_bf16 ---------------------------------------------------------------------- */
START_TEST(test_embedding_bf16) {
    const int V = 1000, C = 200, N = 333;
    uint16_t *table = malloc((size_t)V * C * 2);
    int32_t *ids = malloc((size_t)N * 4);
    float *vals = ctu_calloc((size_t)V * C, 4), *ref = ctu_calloc((size_t)N * C, 4),
          *got = ctu_calloc((size_t)N * C, 4);
    ck_assert(table && ids);
    ctu_fill(vals, (size_t)V * C, 231, 2.0f);
    for (size_t i = 0; i < (size_t)V * C; i++) table[i] = qft_f32_to_bf16(vals[i]);
    for (int n = 0; n < N; n++) ids[n] = (int32_t)((n * 7919 + 13) % V); /* repeats too */
    uint16_t *dt = ops_dup(table, (size_t)V * C * 2);
    int32_t *di = ops_dup(ids, (size_t)N * 4);
    float *dout = G->alloc((size_t)N * C * 4, "test");
    ck_assert_ptr_nonnull(dout);
    G->embedding_fwd_bf16(dout, di, dt, N, C);
    ops_get(got, dout, (size_t)N * C * 4);
    ops_synced();
    qft_cpu_embedding_fwd_bf16(ref, ids, table, N, C);
    CHECK_BITS(got, ref, (size_t)N * C, "embedding_fwd_bf16 (%d, %d) x %d ids\n", V, C, N);
    G->free(dt), G->free(di), G->free(dout);
    free(table), free(ids), free(vals), free(ref), free(got);
}
END_TEST

/* ---- f32_to_bf16 / bf16_to_f32 (train.residual_dtype = "bf16") -------------------------------- */
START_TEST(test_bf16_round_trip) {
    const size_t n = (size_t)3 << 20 | 17; /* past the capped grid, odd */
    float *src = ctu_calloc(n, 4), *ref = ctu_calloc(n, 4), *got = ctu_calloc(n, 4);
    uint16_t *href = malloc(n * 2), *hgot = malloc(n * 2);
    ck_assert(href && hgot);
    ctu_fill(src, n, 251, 3.0f);
    /* ties at the rounding bit (both directions), infinities, zeros, a subnormal */
    const float edge[] = {1.00390625f, 1.01171875f, -1.00390625f, INFINITY, -INFINITY, 0.0f,
                          -0.0f, 1e-40f, 3.3895314e38f};
    memcpy(src, edge, sizeof edge);
    float *ds = ops_dup(src, n * 4), *dw = G->alloc(n * 4, "test");
    uint16_t *dh = G->alloc(n * 2, "test");
    ck_assert(dw && dh);
    G->f32_to_bf16(dh, ds, n);
    G->bf16_to_f32(dw, dh, n);
    ops_get(hgot, dh, n * 2), ops_get(got, dw, n * 4);
    ops_synced();
    qft_cpu_f32_to_bf16(href, src, n);
    qft_cpu_bf16_to_f32(ref, href, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(hgot[i] == href[i], "element %zu (%a): gpu bf16 %#06x, cpu %#06x", i,
                      (double)src[i], hgot[i], href[i]);
    CHECK_BITS(got, ref, n, "bf16_to_f32 over %zu elements\n", n);
    G->free(ds), G->free(dw), G->free(dh);
    free(src), free(ref), free(got), free(href), free(hgot);
}
END_TEST

/* ---- dequantize of a bf16 layout (train.frozen_dtype = "bf16") --------------------------------- */
/* A random (out, in) weight as a bf16 layout: *hl on the host (its values malloc'd, freed
 * by the caller), *dl the same with the values copied to the device (G->free them). */
static void bf16_layouts(int64_t out, int64_t in, uint64_t seed, qft_qlayout *hl,
                         qft_qlayout *dl) {
    uint16_t *vals = malloc((size_t)(out * in) * 2);
    float *src = ctu_calloc((size_t)(out * in), 4);
    ck_assert(vals != NULL);
    ctu_fill(src, (size_t)(out * in), seed, 3.0f);
    for (int64_t i = 0; i < out * in; i++) vals[i] = qft_f32_to_bf16(src[i]);
    free(src);
    memset(hl, 0, sizeof *hl);
    hl->format = QFT_QFMT_BF16, hl->out = out, hl->in = in;
    hl->buf[QFT_QL_BF16_VALUES] = vals, hl->bytes[QFT_QL_BF16_VALUES] = (size_t)(out * in) * 2;
    *dl = *hl;
    dl->buf[QFT_QL_BF16_VALUES] = ops_dup(vals, (size_t)(out * in) * 2);
}

START_TEST(test_dequantize_bf16) {
    const int64_t out = 37, in = 53, r0 = 3, nr = 27;
    float *ref = ctu_calloc((size_t)(nr * in), 4), *got = ctu_calloc((size_t)(nr * in), 4);
    qft_qlayout hl, dl;
    bf16_layouts(out, in, 241, &hl, &dl);
    const uint16_t *vals = hl.buf[QFT_QL_BF16_VALUES];
    float *dout = G->alloc((size_t)(nr * in) * 4, "test");
    ck_assert_ptr_nonnull(dout);
    ck_assert(G->has_qformat(QFT_QFMT_BF16));
    G->dequantize(&dl, r0, nr, dout);
    ops_get(got, dout, (size_t)(nr * in) * 4);
    ops_synced();
    qft_cpu_ops()->dequantize(&hl, r0, nr, ref);
    for (int64_t i = 0; i < nr * in; i++) /* bf16 widens exactly */
        ck_assert(ref[i] == qft_bf16_to_f32(vals[r0 * in + i]));
    CHECK_BITS(got, ref, (size_t)(nr * in), "dequantize bf16 rows [%lld, %lld)\n", (long long)r0,
               (long long)(r0 + nr));
    G->free((void *)dl.buf[QFT_QL_BF16_VALUES]), G->free(dout);
    free((void *)vals), free(ref), free(got);
}
END_TEST

/* ---- qmatmul over a bf16 layout (the frozen dense linears and head of train.frozen_dtype) ---- */
/* _i bit 0: backward; bit 1: bf16 matmul precision (else fp32); bit 2: a scratch of 5 rows
 * (several tiles; else the whole weight). Against the CPU entry: fp32 to GEMM rounding, bf16
 * to bf16 input rounding. */
START_TEST(test_qmatmul) {
    const int backward = _i & 1, bf16 = _i >> 1 & 1, small = _i >> 2 & 1;
    const int64_t out = 72, in = 40, N = 19;
    const int64_t K = backward ? out : in, M = backward ? in : out; /* a (N, K), c (N, M) */
    const int64_t lda = K + 3, ldc = M + 5;
    float *a = ctu_calloc((size_t)(N * lda), 4);
    float *ref = ctu_calloc((size_t)(N * ldc), 4), *got = ctu_calloc((size_t)(N * ldc), 4);
    ctu_fill(a, (size_t)(N * lda), 262, 1.0f), ctu_fill(ref, (size_t)(N * ldc), 263, 1.0f);
    qft_qlayout hl, dl;
    bf16_layouts(out, in, 261, &hl, &dl);
    const size_t scratch_n = (size_t)(small ? 5 : out) * (size_t)in;
    float *da = ops_dup(a, (size_t)(N * lda) * 4), *dc = ops_dup(ref, (size_t)(N * ldc) * 4);
    float *dscr = G->alloc(scratch_n * 4, "test"), *scr = ctu_calloc(scratch_n, 4);
    ck_assert_ptr_nonnull(dscr);
    qft_cuda_set_matmul_precision(bf16 ? 2 : 0);
    G->qmatmul(&dl, backward, da, lda, N, dc, ldc, 0.5f, dscr, scratch_n);
    qft_cuda_set_matmul_precision(0);
    ops_get(got, dc, (size_t)(N * ldc) * 4);
    ops_synced();
    qft_cpu_qmatmul(&hl, backward, a, lda, N, ref, ldc, 0.5f, scr, scratch_n);
    for (int64_t r = 0; r < N; r++) { /* the columns past M are the caller's: untouched */
        double e = ctu_rel_err(got + r * ldc, ref + r * ldc, (size_t)M);
        ck_assert_msg(e < (bf16 ? 1e-2 : 1e-5), "qmatmul backward %d bf16 %d small %d row %lld: "
                      "rel err %g", backward, bf16, small, (long long)r, e);
        for (int64_t j = M; j < ldc; j++)
            ck_assert(memcmp(&got[r * ldc + j], &ref[r * ldc + j], 4) == 0);
    }
    G->free((void *)dl.buf[QFT_QL_BF16_VALUES]), G->free(da), G->free(dc), G->free(dscr);
    free((void *)hl.buf[QFT_QL_BF16_VALUES]), free(a), free(ref), free(got), free(scr);
}
END_TEST

/* ---- row_norms ------------------------------------------------------------------------------ */
START_TEST(test_row_norms) {
    static const int64_t shapes[5][2] = {{29, 1000}, {29, 77}, {29, 256}, {29, 4097},
                                         {3001, 129}}; /* rows, len */
    const int64_t n = shapes[_i][0], len = shapes[_i][1], ld = len + 11;
    const size_t nx = (size_t)(n * ld);
    float *x = ctu_calloc(nx, 4), *ref = ctu_calloc((size_t)n, 4), *got = ctu_calloc((size_t)n, 4);
    ctu_fill(x, nx, 231 + (uint64_t)_i, 1.0f);
    for (int64_t j = 0; j < n; j++) /* rows of different scales */
        for (int64_t k = 0; k < len; k++) x[j * ld + k] *= 0.01f * (float)(j % 50 + 1);
    float *dx = ops_dup(x, nx * 4), *dn = G->alloc((size_t)n * 4, "test");
    ck_assert_ptr_nonnull(dn);
    G->row_norms(dn, dx, ld, n, len);
    ops_get(got, dn, (size_t)n * 4);
    ops_synced();
    qft_cpu_row_norms(ref, x, ld, n, len);
    for (int64_t j = 0; j < n; j++) {
        const double e = fabs((double)got[j] - ref[j]) / ref[j];
        ck_assert_msg(ref[j] > 0 && e <= 1e-6, "row %lld of (%lld, %lld): gpu %.9g cpu %.9g",
                      (long long)j, (long long)n, (long long)len, got[j], ref[j]);
    }
    G->free(dx), G->free(dn);
    free(x), free(ref), free(got);
}
END_TEST

/* ---- dropout -------------------------------------------------------------------------------- */
START_TEST(test_dropout) {
    static const double ps[] = {0.05, 0.1, 0.5, 0.0, 0.1};
    const double p = ps[_i];
    const int big = _i == 4; /* past the capped grid */
    const int64_t N = big ? 1601 : 67, d = big ? 1023 : 129;
    const size_t n = (size_t)(N * d);
    float *src = ctu_calloc(n, 4), *base = ctu_calloc(n, 4), *ref = ctu_calloc(n, 4),
          *got = ctu_calloc(n, 4);
    ctu_fill(src, n, 241 + (uint64_t)_i, 1.0f), ctu_fill(base, n, 242, 0.5f);
    const uint64_t key = 0xd0d0ull * (uint64_t)(_i + 1) + 17;
    float *dsrc = ops_dup(src, n * 4);
    for (int mode = 0; mode < 3; mode++) { /* overwrite, accumulate, in place */
        const int acc = mode == 1;
        float *ddst = mode == 2 ? ops_dup(src, n * 4) : ops_dup(base, n * 4);
        G->dropout(key, p, mode == 2 ? ddst : dsrc, N, d, ddst, acc);
        ops_get(got, ddst, n * 4);
        ops_synced();
        memcpy(ref, mode == 2 ? src : base, n * 4);
        qft_cpu_dropout(key, p, src, N, d, ref, acc);
        CHECK_BITS(got, ref, n, "dropout p %g (%lld, %lld) mode %d\n", p, (long long)N,
                   (long long)d, mode);
        G->free(ddst);
    }
    size_t kept = 0;
    for (size_t e = 0; e < n; e++) kept += got[e] != 0.0f; /* the in-place run */
    ck_assert_msg(fabs((double)kept / (double)n - (1.0 - p)) < 0.02, "p %g: kept %zu of %zu", p,
                  kept, n);
    G->free(dsrc);
    free(src), free(base), free(ref), free(got);
}
END_TEST

void ops_adapt_add_tests(TCase *tc, const qft_ops *gpu) {
    G = gpu;
    tcase_add_test(tc, test_table);
    tcase_add_loop_test(tc, test_cols_axpby, 0, 20); /* 18 small, then 2 big ones */
    tcase_add_loop_test(tc, test_col_dot, 0, 4);
    tcase_add_loop_test(tc, test_col_dot_scale, 0, 6);
    tcase_add_loop_test(tc, test_lowrank_out, 0, 16);
    tcase_add_loop_test(tc, test_lowrank_out_gemm, 0, 16);
    tcase_add_loop_test(tc, test_div, 0, 2);
    tcase_add_loop_test(tc, test_row_norms, 0, 5);
    tcase_add_loop_test(tc, test_dropout, 0, 5);
    tcase_add_test(tc, test_embedding_bf16);
    tcase_add_test(tc, test_bf16_round_trip);
    tcase_add_loop_test(tc, test_qmatmul, 0, 8);
    tcase_add_test(tc, test_dequantize_bf16);
}
