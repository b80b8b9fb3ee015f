/* Every entry of the CUDA op table, and the CUDA-only entry points (bf16 GEMM, NF4
 * dequantization, AdamW, bf16 conversion; HQQ and the quantized linear in
 * test_cuda_ops_linear.c; the adapter ops in test_cuda_ops_adapt.c), against the CPU
 * backend (qft_cpu_ops) and core/train's optimizer, on seeded random inputs with shapes
 * that are not multiples of the kernels' tiles. Errors are max |gpu - cpu| / max |cpu|
 * over a tensor.
 *
 * Tolerances: 1e-5 for elementwise ops and row reductions (fp32 on both sides, different
 * summation trees); 1e-4 for GEMM and attention (long dot products summed in another
 * order); exact where the arithmetic is the same (embedding, NF4, AdamW, bf16 rounding);
 * 1e-2 for bf16 outputs (one bf16 rounding is 2^-8 relative).
 *
 * Without a CUDA device it prints "no CUDA device: skipped" and exits 77, which meson
 * counts as a skip. Runs in one process (CK_NOFORK): a CUDA context does not survive
 * fork. */
#include "cpu_ops.h"
#include "cuda_test_util.h"
#include "optim.h"
#include "qft_base.h"
#include "qft_cuda.h"
#include "cuda_twin.h"
#include "cuda_twin_attg.h"
#include "ops_suites.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const qft_ops *G; /* the CUDA table */
static const qft_ops *C; /* the CPU table */

void ops_synced(void) {
    qft_err err = {0, ""};
    ck_assert_msg(qft_cuda_sync(&err) == 0, "%s", err.msg);
}

void *ops_dup(const void *h, size_t bytes) {
    qft_err err = {0, ""};
    void *d = G->alloc(bytes, "test");
    ck_assert_ptr_nonnull(d);
    ck_assert_msg(qft_cuda_upload(d, h, bytes, &err) == 0, "%s", err.msg);
    return d;
}
void ops_get(void *h, const void *d, size_t bytes) {
    qft_err err = {0, ""};
    ck_assert_msg(qft_cuda_download(h, d, bytes, &err) == 0, "%s", err.msg);
}

/* ---- gemm ------------------------------------------------------------------------------ */
START_TEST(test_gemm) {
    static const int shapes[3][3] = {{37, 29, 45}, {256, 384, 512}, {1, 1000, 64}};
    const int M = shapes[_i][0], N = shapes[_i][1], K = shapes[_i][2], pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bz = 0; bz < 2; bz++) { /* beta = -1.25, then beta = 0 over NaN */
                const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
                const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
                const size_t nc = (size_t)M * ldc;
                float *A = ctu_calloc(na, 4), *B = ctu_calloc(nb, 4), *Cm = ctu_calloc(nc, 4),
                      *got = ctu_calloc(nc, 4);
                ctu_fill(A, na, 1 + ta, 1.0f), ctu_fill(B, nb, 3 + tb, 1.0f),
                    ctu_fill(Cm, nc, 5, 1.0f);
                const float beta = bz ? 0.0f : -1.25f;
                if (bz)
                    for (size_t i = 0; i < nc; i++) Cm[i] = NAN;
                float *dA = ops_dup(A, na * 4), *dB = ops_dup(B, nb * 4), *dC = ops_dup(Cm, nc * 4);
                G->gemm(ta, tb, M, N, K, 0.75f, dA, lda, dB, ldb, beta, dC, ldc);
                ops_get(got, dC, nc * 4);
                ops_synced();
                C->gemm(ta, tb, M, N, K, 0.75f, A, lda, B, ldb, beta, Cm, ldc);
                for (int i = 0; i < M; i++)
                    CTU_CHECK_ERR(got + (size_t)i * ldc, Cm + (size_t)i * ldc, (size_t)N, 1e-4, "gemm row");
                G->free(dA), G->free(dB), G->free(dC);
                free(A), free(B), free(Cm), free(got);
            }
}
END_TEST

/* Sub-tensor pointers, as the model passes them (a head's slice, the up half of a row):
 * A 4-byte aligned, B 12, C 8; the plan must pick an algorithm that reads them. */
START_TEST(test_gemm_offsets) {
    const int M = 70, N = 50, K = 33, lda = K + 1, ldb = K + 3, ldc = N + 2;
    const size_t na = (size_t)M * lda + 1, nb = (size_t)N * ldb + 3, nc = (size_t)M * ldc + 2;
    float *A = ctu_calloc(na, 4), *B = ctu_calloc(nb, 4), *Cm = ctu_calloc(nc, 4),
          *got = ctu_calloc(nc, 4);
    ctu_fill(A, na, 13, 1.0f), ctu_fill(B, nb, 14, 1.0f), ctu_fill(Cm, nc, 15, 1.0f);
    float *dA = ops_dup(A, na * 4), *dB = ops_dup(B, nb * 4), *dC = ops_dup(Cm, nc * 4);
    G->gemm(0, 1, M, N, K, 1.0f, dA + 1, lda, dB + 3, ldb, 1.0f, dC + 2, ldc);
    ops_get(got, dC, nc * 4);
    ops_synced();
    C->gemm(0, 1, M, N, K, 1.0f, A + 1, lda, B + 3, ldb, 1.0f, Cm + 2, ldc);
    for (int i = 0; i < M; i++)
        CTU_CHECK_ERR(got + 2 + (size_t)i * ldc, Cm + 2 + (size_t)i * ldc, (size_t)N, 1e-4,
                      "gemm row");
    ck_assert(got[0] == Cm[0] && got[1] == Cm[1]); /* before C: untouched */
    G->free(dA), G->free(dB), G->free(dC);
    free(A), free(B), free(Cm), free(got);
}
END_TEST

START_TEST(test_gemm_k0) {
    const int M = 5, N = 7;
    float Cm[35], got[35];
    ctu_fill(Cm, 35, 8, 1.0f);
    float *dC = ops_dup(Cm, sizeof Cm);
    G->gemm(0, 0, M, N, 0, 1.0f, dC, 1, dC, N, 0.5f, dC, N);
    ops_get(got, dC, sizeof got);
    ops_synced();
    for (int i = 0; i < 35; i++) ck_assert(got[i] == 0.5f * Cm[i]);
    G->free(dC);
}
END_TEST

/* ---- add, embedding, swiglu -------------------------------------------------------------- */
START_TEST(test_add) {
    const size_t n = 100003;
    float *a = ctu_calloc(n, 4), *b = ctu_calloc(n, 4), *ref = ctu_calloc(n, 4),
          *got = ctu_calloc(n, 4);
    ctu_fill(a, n, 1, 1.0f), ctu_fill(b, n, 2, 1.0f);
    float *da = ops_dup(a, n * 4), *db = ops_dup(b, n * 4);
    G->add(da, da, db, n); /* out aliases a */
    ops_get(got, da, n * 4);
    ops_synced();
    C->add(ref, a, b, n);
    ck_assert(memcmp(got, ref, n * 4) == 0);
    G->free(da), G->free(db);
    free(a), free(b), free(ref), free(got);
}
END_TEST

START_TEST(test_embedding) {
    const int V = 50, Cd = 333, N = 97;
    float *table = ctu_calloc((size_t)V * Cd, 4), *dout = ctu_calloc((size_t)N * Cd, 4);
    float *out = ctu_calloc((size_t)N * Cd, 4), *ref = ctu_calloc((size_t)N * Cd, 4);
    float *dt = ctu_calloc((size_t)V * Cd, 4), *dtref = ctu_calloc((size_t)V * Cd, 4);
    int32_t ids[97];
    qft_rng r;
    qft_rng_seed(&r, 4);
    for (int n = 0; n < N; n++) ids[n] = (int32_t)(qft_rng_next(&r) % 20); /* many repeats */
    ctu_fill(table, (size_t)V * Cd, 5, 1.0f), ctu_fill(dout, (size_t)N * Cd, 6, 1.0f);
    ctu_fill(dtref, (size_t)V * Cd, 7, 1.0f); /* accumulated into */
    float *dtab = ops_dup(table, (size_t)V * Cd * 4), *ddo = ops_dup(dout, (size_t)N * Cd * 4);
    float *ddt = ops_dup(dtref, (size_t)V * Cd * 4), *dout_d = G->alloc((size_t)N * Cd * 4, "t");
    int32_t *dids = ops_dup(ids, sizeof ids);
    G->embedding_fwd(dout_d, dids, dtab, N, Cd);
    G->embedding_bwd(ddt, ddo, dids, N, Cd);
    ops_get(out, dout_d, (size_t)N * Cd * 4), ops_get(dt, ddt, (size_t)V * Cd * 4);
    ops_synced();
    C->embedding_fwd(ref, ids, table, N, Cd);
    C->embedding_bwd(dtref, dout, ids, N, Cd);
    ck_assert(memcmp(out, ref, (size_t)N * Cd * 4) == 0);
    ck_assert(memcmp(dt, dtref, (size_t)V * Cd * 4) == 0); /* row order on both sides */
    G->free(dtab), G->free(ddo), G->free(ddt), G->free(dout_d), G->free(dids);
    free(table), free(dout), free(out), free(ref), free(dt), free(dtref);
}
END_TEST

START_TEST(test_swiglu) {
    const int N = 37, I = 1000;
    const size_t ngu = (size_t)N * 2 * I, nh = (size_t)N * I;
    float *gu = ctu_calloc(ngu, 4), *dh = ctu_calloc(nh, 4), *h = ctu_calloc(nh, 4),
          *href = ctu_calloc(nh, 4);
    float *dgu = ctu_calloc(ngu, 4), *dguref = ctu_calloc(ngu, 4);
    ctu_fill(gu, ngu, 11, 2.0f), ctu_fill(dh, nh, 12, 1.0f);
    float *dgu_in = ops_dup(gu, ngu * 4), *ddh = ops_dup(dh, nh * 4);
    float *dhout = G->alloc(nh * 4, "t"), *ddgu = G->alloc(ngu * 4, "t");
    G->swiglu_fwd(dhout, dgu_in, N, I);
    G->swiglu_bwd(ddgu, ddh, dgu_in, N, I);
    ops_get(h, dhout, nh * 4), ops_get(dgu, ddgu, ngu * 4);
    ops_synced();
    C->swiglu_fwd(href, gu, N, I);
    C->swiglu_bwd(dguref, dh, gu, N, I);
    CTU_CHECK_ERR(h, href, nh, 1e-5, "swiglu fwd");
    CTU_CHECK_ERR(dgu, dguref, ngu, 1e-5, "swiglu bwd");
    /* in place (dgu = gu, as the model calls it): the same bits as out of place */
    G->swiglu_bwd(dgu_in, ddh, dgu_in, N, I);
    ops_get(dguref, dgu_in, ngu * 4);
    ops_synced();
    ck_assert_msg(memcmp(dguref, dgu, ngu * 4) == 0, "swiglu bwd in place differs");
    G->free(dgu_in), G->free(ddh), G->free(dhout), G->free(ddgu);
    free(gu), free(dh), free(h), free(href), free(dgu), free(dguref);
}
END_TEST

/* ---- rmsnorm ------------------------------------------------------------------------------ */
START_TEST(test_rmsnorm) {
    const int N = 67, Cd = 1000;
    const size_t n = (size_t)N * Cd;
    float *x = ctu_calloc(n, 4), *w = ctu_calloc(Cd, 4), *dout = ctu_calloc(n, 4);
    float *out = ctu_calloc(n, 4), *oref = ctu_calloc(n, 4), *rs = ctu_calloc(N, 4),
          *rsref = ctu_calloc(N, 4);
    float *dx = ctu_calloc(n, 4), *dxref = ctu_calloc(n, 4), *dw = ctu_calloc(Cd, 4), *dwref = ctu_calloc(Cd, 4);
    ctu_fill(x, n, 21, 1.5f), ctu_fill(w, Cd, 22, 1.0f), ctu_fill(dout, n, 23, 1.0f);
    ctu_fill(dxref, n, 24, 1.0f), ctu_fill(dwref, Cd, 25, 1.0f); /* both accumulated into */
    float *dX = ops_dup(x, n * 4), *dW = ops_dup(w, Cd * 4), *dDo = ops_dup(dout, n * 4);
    float *dOut = G->alloc(n * 4, "t"), *dR = G->alloc(N * 4, "t");
    float *dDx = ops_dup(dxref, n * 4), *dDw = ops_dup(dwref, Cd * 4);
    G->rmsnorm_fwd(dOut, dR, dX, dW, N, Cd, 1e-5f);
    G->rmsnorm_bwd(dDx, dDw, dDo, dX, dW, dR, N, Cd);
    G->rmsnorm_bwd(dDx, NULL, dDo, dX, dW, dR, N, Cd); /* frozen weight: dx only, twice */
    ops_get(out, dOut, n * 4), ops_get(rs, dR, N * 4), ops_get(dx, dDx, n * 4),
        ops_get(dw, dDw, Cd * 4);
    ops_synced();
    C->rmsnorm_fwd(oref, rsref, x, w, N, Cd, 1e-5f);
    C->rmsnorm_bwd(dxref, dwref, dout, x, w, rsref, N, Cd);
    C->rmsnorm_bwd(dxref, NULL, dout, x, w, rsref, N, Cd);
    CTU_CHECK_ERR(out, oref, n, 1e-5, "rmsnorm out");
    CTU_CHECK_ERR(rs, rsref, (size_t)N, 1e-5, "rmsnorm rstd");
    CTU_CHECK_ERR(dx, dxref, n, 1e-5, "rmsnorm dx");
    CTU_CHECK_ERR(dw, dwref, (size_t)Cd, 1e-5, "rmsnorm dw");
    G->free(dX), G->free(dW), G->free(dDo), G->free(dOut), G->free(dR), G->free(dDx), G->free(dDw);
    free(x), free(w), free(dout), free(out), free(oref), free(rs), free(rsref);
    free(dx), free(dxref), free(dw), free(dwref);
}
END_TEST

/* ---- rope ---------------------------------------------------------------------------------- */
START_TEST(test_rope) {
    const int B = 2, T = 50, H = 4, KV = 1, hd = 128, half = hd / 2, type = _i;
    const int ld = QFT_QKV_WIDTH(H, KV, hd), nh = H + KV; /* q and k heads, as the model does */
    const size_t nx = (size_t)B * T * ld, nt = (size_t)T * half;
    float *x = ctu_calloc(nx, 4), *xr = ctu_calloc(nx, 4), *got = ctu_calloc(nx, 4);
    float *ct = ctu_calloc(nt, 4), *st = ctu_calloc(nt, 4), *cg = ctu_calloc(nt, 4),
          *sg = ctu_calloc(nt, 4);
    ctu_fill(x, nx, 31, 1.0f);
    memcpy(xr, x, nx * 4);
    float *dx = ops_dup(x, nx * 4), *dc = G->alloc(nt * 4, "t"), *ds = G->alloc(nt * 4, "t");
    G->rope_table(dc, ds, T, hd, 500000.0f, type, 8.0f, 1.0f, 4.0f, 8192);
    ops_get(cg, dc, nt * 4), ops_get(sg, ds, nt * 4);
    C->rope_table(ct, st, T, hd, 500000.0f, type, 8.0f, 1.0f, 4.0f, 8192);
    CTU_CHECK_ERR(cg, ct, nt, 1e-6, "rope cos");
    CTU_CHECK_ERR(sg, st, nt, 1e-6, "rope sin");
    G->rope_fwd(dx, ld, dc, ds, B, T, nh, hd);
    ops_get(got, dx, nx * 4);
    ops_synced();
    C->rope_fwd(xr, ld, ct, st, B, T, nh, hd);
    CTU_CHECK_ERR(got, xr, nx, 1e-5, "rope fwd");
    G->rope_bwd(dx, ld, dc, ds, B, T, nh, hd); /* rotating back restores the input */
    ops_get(got, dx, nx * 4);
    ops_synced();
    C->rope_bwd(xr, ld, ct, st, B, T, nh, hd);
    CTU_CHECK_ERR(got, xr, nx, 1e-5, "rope bwd");
    CTU_CHECK_ERR(got, x, nx, 1e-5, "rope round trip");
    G->free(dx), G->free(dc), G->free(ds);
    free(x), free(xr), free(got), free(ct), free(st), free(cg), free(sg);
}
END_TEST

/* ---- attention ----------------------------------------------------------------------------- */
/* Each shape through every attention: _i / 4 = 0 the flash kernels, 1 the GEMM path with
 * the workspace the op asks for (whole sequences here: one tile), 2 the GEMM path with
 * scratch for 16 query rows (several tiles, the last one short), 3 the tensor-core forward
 * at bf16 matmul precision, then the GEMM path's backward (bf16 GEMMs): bf16 tolerances.
 * Mode 3's forward gets no scratch, so for head dims it serves (multiples of 16) nothing
 * but it can run there: the fp32 flash kernels it would otherwise fall to would be within
 * 1e-5, and its error must show bf16 rounding; hd 40 (not served) takes the GEMM path. */
START_TEST(test_attention) {
    static const int shapes[4][6] = { /* B, T, H, KV, hd, masked */
        {2, 77, 6, 2, 40, 1}, {1, 130, 8, 2, 128, 0}, {1, 64, 4, 4, 64, 1}, {3, 5, 2, 1, 16, 1}};
    const int sh = _i % 4, mode = _i / 4;
    const int B = shapes[sh][0], T = shapes[sh][1], H = shapes[sh][2], KV = shapes[sh][3],
              hd = shapes[sh][4], masked = shapes[sh][5];
    qft_cuda_set_attention_kernel(mode == 0 ? 1 : mode == 3 ? 2 : 0);
    if (mode == 3) qft_cuda_set_matmul_precision(2);
    const int tc = mode == 3 && hd % 16 == 0;
    const double tol = mode == 3 ? 2e-2 : 1e-4;
    const int w = QFT_QKV_WIDTH(H, KV, hd);
    const size_t nq = (size_t)B * T * w, no = (size_t)B * T * H * hd, nl = (size_t)B * H * T;
    const float scale = 1.0f / sqrtf((float)hd);
    float *qkv = ctu_calloc(nq, 4), *dout = ctu_calloc(no, 4), *out = ctu_calloc(no, 4),
          *oref = ctu_calloc(no, 4), *lse = ctu_calloc(nl, 4), *lref = ctu_calloc(nl, 4),
          *dq = ctu_calloc(nq, 4), *dqref = ctu_calloc(nq, 4), *dq2 = ctu_calloc(nq, 4);
    uint8_t *mask = ctu_calloc((size_t)B * T, 1);
    ctu_fill(qkv, nq, 41 + sh, 1.0f), ctu_fill(dout, no, 51 + sh, 1.0f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) mask[(size_t)b * T + t] = !(b == 1 && (t == 0 || t % 5 == 2));
    const uint8_t *hm = masked ? mask : NULL;
    float *dQKV = ops_dup(qkv, nq * 4), *dDo = ops_dup(dout, no * 4);
    uint8_t *dM = masked ? ops_dup(mask, (size_t)B * T) : NULL;
    float *dO = G->alloc(no * 4, "t"), *dL = G->alloc(nl * 4, "t"), *dDq = G->alloc(nq * 4, "t");
    const size_t gw_op = G->attention_workspace(T, hd), gw16 = (size_t)2 * H * T * 16;
    const size_t gw = mode == 2 && gw16 < gw_op ? gw16 : gw_op;
    if (mode == 1) ck_assert_int_eq(qft_twin_attg_rows(gw, T, H), T);
    float *gwork = G->alloc(gw * 4, "t");
    G->attention_fwd(dO, dL, dQKV, dM, B, T, H, KV, hd, scale, gwork, tc ? 0 : gw);
    G->attention_bwd(dDq, dDo, dO, dL, dQKV, dM, B, T, H, KV, hd, scale, gwork, gw);
    ops_get(out, dO, no * 4), ops_get(lse, dL, nl * 4), ops_get(dq, dDq, nq * 4);
    G->attention_bwd(dDq, dDo, dO, dL, dQKV, dM, B, T, H, KV, hd, scale, gwork, gw);
    ops_get(dq2, dDq, nq * 4);
    ops_synced();
    const size_t cw = C->attention_workspace(T, hd);
    float *cwork = ctu_calloc(cw, 4);
    C->attention_fwd(oref, lref, qkv, hm, B, T, H, KV, hd, scale, cwork, cw);
    C->attention_bwd(dqref, dout, oref, lref, qkv, hm, B, T, H, KV, hd, scale, cwork, cw);
    CTU_CHECK_ERR(out, oref, no, tol, "attention out");
    CTU_CHECK_ERR(lse, lref, nl, tol, "attention lse");
    CTU_CHECK_ERR(dq, dqref, nq, tol, "attention dqkv");
    if (tc) ck_assert_msg(ctu_rel_err(out, oref, no) > 1e-5, "the tensor-core forward was not taken");
    ck_assert_msg(memcmp(dq, dq2, nq * 4) == 0, "attention backward is not deterministic");
    if (masked && B > 1) ck_assert(lse[(size_t)H * T] == -INFINITY); /* b 1, h 0, t 0 */
    qft_cuda_set_attention_kernel(0);
    qft_cuda_set_matmul_precision(0);
    G->free(dQKV), G->free(dDo), G->free(dO), G->free(dL), G->free(dDq), G->free(gwork);
    if (dM) G->free(dM);
    free(qkv), free(dout), free(out), free(oref), free(lse), free(lref), free(dq), free(dqref);
    free(dq2), free(mask), free(cwork);
}
END_TEST

/* ---- cross-entropy --------------------------------------------------------------------------- */
START_TEST(test_cross_entropy) {
    const int N = 33, V = 32003;
    const size_t n = (size_t)N * V;
    float *lg = ctu_calloc(n, 4), *d = ctu_calloc(n, 4), *dref = ctu_calloc(n, 4);
    float *lse = ctu_calloc(N, 4), *lref = ctu_calloc(N, 4), *loss = ctu_calloc(N, 4), *lossref = ctu_calloc(N, 4);
    int32_t tg[33];
    qft_rng r;
    qft_rng_seed(&r, 61);
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 3 ? -100 : (int32_t)(qft_rng_next(&r) % V);
    ctu_fill(lg, n, 62, 3.0f);
    float *dLg = ops_dup(lg, n * 4), *dD = G->alloc(n * 4, "t"), *dLse = G->alloc(N * 4, "t");
    float *dLoss = G->alloc(N * 4, "t");
    int32_t *dT = ops_dup(tg, sizeof tg);
    int nv = -1, nvref = -2;
    const double tot = G->cross_entropy_fwd(dLg, dT, N, V, dLse, dLoss, &nv);
    const double tot_noloss = G->cross_entropy_fwd(dLg, dT, N, V, dLse, NULL, NULL);
    G->cross_entropy_bwd(dD, dLg, dLse, dT, N, V, 0.125f);
    ops_get(lse, dLse, N * 4), ops_get(loss, dLoss, N * 4), ops_get(d, dD, n * 4);
    ops_synced();
    const double totref = C->cross_entropy_fwd(lg, tg, N, V, lref, lossref, &nvref);
    C->cross_entropy_bwd(dref, lg, lref, tg, N, V, 0.125f);
    ck_assert_int_eq(nv, nvref);
    ck_assert_msg(fabs(tot - totref) <= 1e-5 * fabs(totref), "loss sum %.9g vs %.9g", tot, totref);
    ck_assert(tot == tot_noloss);
    CTU_CHECK_ERR(lse, lref, (size_t)N, 1e-5, "xent lse");
    CTU_CHECK_ERR(loss, lossref, (size_t)N, 1e-5, "xent loss");
    CTU_CHECK_ERR(d, dref, n, 1e-5, "xent dlogits");
    /* fused, in place */
    const double totf = G->cross_entropy_fused(dLg, dT, N, V, 0.125f, dLoss, &nv);
    ops_get(d, dLg, n * 4), ops_get(loss, dLoss, N * 4);
    ops_synced();
    const double totfref = C->cross_entropy_fused(lg, tg, N, V, 0.125f, lossref, &nvref);
    ck_assert_int_eq(nv, nvref);
    ck_assert_msg(fabs(totf - totfref) <= 1e-5 * fabs(totfref), "fused sum %g vs %g", totf, totfref);
    CTU_CHECK_ERR(loss, lossref, (size_t)N, 1e-5, "xent fused loss");
    CTU_CHECK_ERR(d, lg, n, 1e-5, "xent fused dlogits");
    G->free(dLg), G->free(dD), G->free(dLse), G->free(dLoss), G->free(dT);
    free(lg), free(d), free(dref), free(lse), free(lref), free(loss), free(lossref);
}
END_TEST

/* ---- AdamW ------------------------------------------------------------------------------------ */
START_TEST(test_adamw) {
    const size_t n = 70001;
    const float lr = 2e-3f;
    qft_optim_config cfg = {QFT_OPT_ADAMW, 0.9f, 0.95f, 1e-5f, 0.1f, 0.0f};
    qft_optim o;
    qft_err err = {0, ""};
    ck_assert_int_eq(qft_optim_init(&o, &cfg, n, &err), 0);
    float *p = ctu_calloc(n, 4), *g = ctu_calloc(n, 4), *got = ctu_calloc(n, 4);
    ctu_fill(p, n, 71, 1.0f);
    float *dp = ops_dup(p, n * 4), *dm = G->alloc(n * 4, "t"), *dv = G->alloc(n * 4, "t");
    float *dg = G->alloc(n * 4, "t");
    G->zero(dm, n), G->zero(dv, n);
    for (int step = 1; step <= 3; step++) {
        ctu_fill(g, n, 72 + step, 0.1f);
        qft_cuda_upload(dg, g, n * 4, &err);
        qft_optim_step(&o, p, g, lr);
        qft_cuda_adamw_scalars s = qft_cuda_adamw_scalars_make(
            qft_optim_float_decimal(cfg.beta1), qft_optim_float_decimal(cfg.beta2),
            qft_optim_float_decimal(cfg.eps), qft_optim_float_decimal(cfg.weight_decay),
            qft_optim_float_decimal(lr), step);
        qft_cuda_adamw(dp, dg, dm, dv, n, &s);
    }
    ops_get(got, dp, n * 4);
    ops_synced();
    CTU_CHECK_ERR(got, p, n, 1e-6, "adamw params");
    qft_optim_free(&o);
    G->free(dp), G->free(dm), G->free(dv), G->free(dg);
    free(p), free(g), free(got);
}
END_TEST

/* ---- NF4 dequantization ------------------------------------------------------------------------ */
START_TEST(test_nf4) {
    static const float code[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f,
                                   -0.39491748809814453f, -0.28444138169288635f,
                                   -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                   0.07958029955625534f, 0.16093020141124725f,
                                   0.24611230194568634f, 0.33791524171829224f,
                                   0.44070982933044434f, 0.5626170039176941f,
                                   0.7229568362236023f, 1.0f};
    const int dq = _i; /* plain absmax, then double-quantized */
    const int64_t n = 64 * 701 + 33, bs = 64, nb = (n + bs - 1) / bs, nn = (nb + 255) / 256;
    uint8_t *packed = ctu_calloc((size_t)(n + 1) / 2, 1), *qa = ctu_calloc((size_t)nb, 1);
    float *absmax = ctu_calloc((size_t)nb, 4), *nested = ctu_calloc((size_t)nn, 4), map[256];
    float *want = ctu_calloc((size_t)n, 4), *got = ctu_calloc((size_t)n, 4);
    uint16_t *gotb = ctu_calloc((size_t)n, 2);
    qft_rng r;
    qft_rng_seed(&r, 81);
    for (int64_t i = 0; i < (n + 1) / 2; i++) packed[i] = (uint8_t)qft_rng_next(&r);
    for (int64_t b = 0; b < nb; b++) absmax[b] = 0.01f + 0.1f * (float)qft_rng_uniform(&r);
    for (int64_t b = 0; b < nb; b++) qa[b] = (uint8_t)qft_rng_next(&r);
    for (int64_t k = 0; k < nn; k++) nested[k] = 0.001f * (float)(k + 3);
    for (int k = 0; k < 256; k++) map[k] = -1.0f + (float)k / 127.5f;
    const float offset = 0.05f;
    qft_cuda_nf4 w = {ops_dup(packed, (size_t)(n + 1) / 2), ops_dup(code, sizeof code),
                      dq ? NULL : ops_dup(absmax, (size_t)nb * 4), dq ? ops_dup(qa, (size_t)nb) : NULL,
                      dq ? ops_dup(nested, (size_t)nn * 4) : NULL, dq ? ops_dup(map, sizeof map) : NULL,
                      offset, (int)bs, n};
    /* expected, from the definition (not the twin): code[nibble] * block absmax */
    for (int64_t i = 0; i < n; i++) {
        const int q = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4;
        const int64_t b = i / bs;
        const float a = dq ? map[qa[b]] * nested[b / 256] + offset : absmax[b];
        want[i] = code[q] * a;
    }
    const int64_t f0 = 1001, cnt = n - f0 - 5; /* odd start, stops short of the end */
    qft_err err = {0, ""};
    float *dout = G->alloc((size_t)n * 4, "t");
    uint16_t *doutb = G->alloc((size_t)n * 2, "t");
    ck_assert_msg(qft_cuda_nf4_dequantize(&w, f0, cnt, dout, QFT_DT_F32, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_cuda_nf4_dequantize(&w, f0, cnt, doutb, QFT_DT_BF16, &err) == 0, "%s", err.msg);
    ck_assert_int_ne(qft_cuda_nf4_dequantize(&w, n - 3, 4, dout, QFT_DT_F32, &err), 0);
    ops_get(got, dout, (size_t)cnt * 4), ops_get(gotb, doutb, (size_t)cnt * 2);
    ops_synced();
    for (int64_t e = 0; e < cnt; e++) {
        ck_assert_msg(got[e] == want[f0 + e], "element %lld: %g vs %g", (long long)(f0 + e),
                      (double)got[e], (double)want[f0 + e]);
        ck_assert(gotb[e] == qft_f32_to_bf16(want[f0 + e]));
    }
    /* the op table's entry: the same buffers as the qft_qlayout of a (323, 139) weight,
     * rows [7, 307), on the device and through the CPU backend's entry over the host
     * buffers; both exactly the definition */
    {
        const int64_t out = 323, in = 139, r0 = 7, nr = 300; // out * in = n
        ck_assert_int_eq(out * in, n);
        qft_qlayout hl, dl;
        memset(&hl, 0, sizeof hl);
        hl.format = QFT_QFMT_NF4, hl.out = out, hl.in = in;
        hl.nf4_blocksize = (int)bs, hl.nf4_offset = dq ? offset : 0.0f;
        hl.buf[QFT_QL_NF4_PACKED] = packed, hl.bytes[QFT_QL_NF4_PACKED] = (size_t)(n + 1) / 2;
        hl.buf[QFT_QL_NF4_CODE] = code, hl.bytes[QFT_QL_NF4_CODE] = sizeof code;
        if (dq) {
            hl.buf[QFT_QL_NF4_QABSMAX] = qa, hl.bytes[QFT_QL_NF4_QABSMAX] = (size_t)nb;
            hl.buf[QFT_QL_NF4_NESTED_ABSMAX] = nested;
            hl.bytes[QFT_QL_NF4_NESTED_ABSMAX] = (size_t)nn * 4;
            hl.buf[QFT_QL_NF4_NESTED_MAP] = map, hl.bytes[QFT_QL_NF4_NESTED_MAP] = sizeof map;
        } else {
            hl.buf[QFT_QL_NF4_ABSMAX] = absmax, hl.bytes[QFT_QL_NF4_ABSMAX] = (size_t)nb * 4;
        }
        dl = hl;
        dl.buf[QFT_QL_NF4_PACKED] = w.packed, dl.buf[QFT_QL_NF4_CODE] = w.code;
        dl.buf[QFT_QL_NF4_ABSMAX] = w.absmax, dl.buf[QFT_QL_NF4_QABSMAX] = w.qabsmax;
        dl.buf[QFT_QL_NF4_NESTED_ABSMAX] = w.nested_absmax;
        dl.buf[QFT_QL_NF4_NESTED_MAP] = w.nested_map;
        float *cpu = ctu_calloc((size_t)(nr * in), 4); // (nr, in)
        C->dequantize(&hl, r0, nr, cpu);
        ck_assert(memcmp(cpu, want + r0 * in, (size_t)(nr * in) * 4) == 0);
        ck_assert(G->has_qformat(QFT_QFMT_NF4) && G->has_qformat(QFT_QFMT_HQQ));
        ck_assert(!G->has_qformat(QFT_QFMT_NONE) && !G->has_qformat(99));
        G->dequantize(&dl, r0, nr, dout);
        ops_get(got, dout, (size_t)(nr * in) * 4);
        ops_synced();
        for (int64_t e = 0; e < nr * in; e++)
            ck_assert_msg(memcmp(&got[e], &cpu[e], 4) == 0, "dequantize entry, element %lld: "
                          "gpu %.9g cpu %.9g", (long long)(r0 * in + e), (double)got[e],
                          (double)cpu[e]);
        free(cpu);
    }
    G->free((void *)w.packed), G->free((void *)w.code);
    if (dq)
        G->free((void *)w.qabsmax), G->free((void *)w.nested_absmax), G->free((void *)w.nested_map);
    else
        G->free((void *)w.absmax);
    G->free(dout), G->free(doutb);
    free(packed), free(qa), free(absmax), free(nested), free(want), free(got), free(gotb);
}
END_TEST

/* ---- bf16: conversion and the cuBLASLt bf16 GEMM -------------------------------------------------- */
START_TEST(test_bf16_gemm) {
    const int M = 64, N = 96, K = 136;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
            const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
            const size_t nc = (size_t)M * N;
            float *A = ctu_calloc(na, 4), *B = ctu_calloc(nb, 4), *ref = ctu_calloc(nc, 4),
                  *got = ctu_calloc(nc, 4);
            uint16_t *Ab = ctu_calloc(na, 2), *Bb = ctu_calloc(nb, 2), *gotb = ctu_calloc(nc, 2);
            ctu_fill(A, na, 91, 1.0f), ctu_fill(B, nb, 92, 1.0f);
            float *dA = ops_dup(A, na * 4), *dB = ops_dup(B, nb * 4);
            uint16_t *dAb = G->alloc(na * 2, "t"), *dBb = G->alloc(nb * 2, "t"), *dCb = G->alloc(nc * 2, "t");
            float *dC = G->alloc(nc * 4, "t");
            qft_cuda_f32_to_bf16(dAb, dA, na);
            qft_cuda_f32_to_bf16(dBb, dB, nb);
            ops_get(Ab, dAb, na * 2), ops_get(Bb, dBb, nb * 2);
            ops_synced();
            for (size_t i = 0; i < na; i++) {
                ck_assert(Ab[i] == qft_f32_to_bf16(A[i]));
                A[i] = qft_bf16_to_f32(Ab[i]);
            }
            for (size_t i = 0; i < nb; i++) {
                ck_assert(Bb[i] == qft_f32_to_bf16(B[i]));
                B[i] = qft_bf16_to_f32(Bb[i]);
            }
            qft_err err = {0, ""};
            ck_assert_msg(qft_cuda_gemm_bf16(ta, tb, M, N, K, 1.0f, dAb, lda, dBb, ldb, 0.0f, dC,
                                             QFT_DT_F32, ldc, &err) == 0, "%s", err.msg);
            ck_assert_msg(qft_cuda_gemm_bf16(ta, tb, M, N, K, 1.0f, dAb, lda, dBb, ldb, 0.0f, dCb,
                                             QFT_DT_BF16, ldc, &err) == 0, "%s", err.msg);
            ops_get(got, dC, nc * 4), ops_get(gotb, dCb, nc * 2);
            ops_synced();
            C->gemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, ref, ldc);
            CTU_CHECK_ERR(got, ref, nc, 1e-4, "bf16 gemm, f32 out");
            for (size_t i = 0; i < nc; i++) got[i] = qft_bf16_to_f32(gotb[i]);
            CTU_CHECK_ERR(got, ref, nc, 1e-2, "bf16 gemm, bf16 out");
            qft_cuda_bf16_to_f32(dC, dCb, nc);
            ops_get(got, dC, nc * 4);
            ops_synced();
            for (size_t i = 0; i < nc; i++) ck_assert(got[i] == qft_bf16_to_f32(gotb[i]));
            G->free(dA), G->free(dB), G->free(dAb), G->free(dBb), G->free(dCb), G->free(dC);
            free(A), free(B), free(ref), free(got), free(Ab), free(Bb), free(gotb);
        }
}
END_TEST

/* ---- errors: another device, and a recorded kernel error (last: the record is sticky) --- */
START_TEST(test_errors) {
    qft_err err = {0, ""};
    ck_assert_ptr_null(qft_cuda_ops(1000, &err));
    ck_assert_msg(strstr(err.msg, "train.device = 1000") != NULL, "%s", err.msg);
    ck_assert_int_eq(qft_cuda_status(&err), 0);
    G->attention_fwd(NULL, NULL, NULL, NULL, 1, 4, 2, 1, 200, 1.0f, NULL, 0); /* hd 200 */
    ck_assert_int_ne(qft_cuda_sync(&err), 0);
    ck_assert_msg(strstr(err.msg, "head_dim=200") != NULL, "%s", err.msg);
}
END_TEST

int main(void) {
    qft_err err = {0, ""};
    G = qft_cuda_ops(0, &err);
    if (!G) {
        if (strstr(err.msg, "no CUDA device")) {
            printf("no CUDA device: skipped (%s)\n", err.msg);
            return 77;
        }
        fprintf(stderr, "%s\n", err.msg);
        return EXIT_FAILURE;
    }
    C = qft_cpu_ops();
    printf("CUDA device: %s\n", qft_cuda_device_name());
    Suite *s = suite_create("cuda_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_gemm, 0, 3);
    tcase_add_test(tc, test_gemm_offsets);
    tcase_add_test(tc, test_gemm_k0);
    tcase_add_test(tc, test_add);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_loop_test(tc, test_rope, 0, 2);
    tcase_add_loop_test(tc, test_attention, 0, 16);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_adamw);
    tcase_add_loop_test(tc, test_nf4, 0, 2);
    tcase_add_test(tc, test_bf16_gemm);
    ops_linear_add_tests(tc, G);
    ops_adapt_add_tests(tc, G);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
