/* The GEMM attention's schedule (core/cuda/cuda_twin_attg.h) run on the CPU: its batched
 * GEMMs through the CPU backend's gemm one batch member at a time, its row kernels as plain
 * loops with the twin's visibility and probability, against the CPU backend's attention.
 * What this proves on a machine without a GPU: every GEMM's pointers, strides, transposes
 * and shapes, the tile walk (forward up, backward down with beta = 0 on the first dK/dV
 * products) and the rows' mapping to heads and queries. The CUDA row kernels and cuBLASLt's
 * batched layouts are left to the GPU test (test_cuda_ops.c). */
#include "cpu_ops.h"
#include "cuda_test_util.h"
#include "cuda_twin_attg.h"
#include "qft_ops.h"
#include "twin_suites.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int gemms;        /* batched calls made */
    int beta0_dk_rows; /* rows the first dK product wrote with beta = 0 */
} cpu_ctx;

static int cpu_bgemm(void *ctx, const qft_twin_bgemm *g) {
    cpu_ctx *c = ctx;
    c->gemms++;
    if (g->beta == 0.0f && g->ta) c->beta0_dk_rows = g->M;
    for (int p = 0; p < g->count; p++)
        qft_cpu_gemm(g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A + p * g->sA, (int)g->lda,
                     g->B + p * g->sB, (int)g->ldb, g->beta, g->C + p * g->sC, (int)g->ldc);
    return 0;
}

static int cpu_softmax(void *ctx, const qft_twin_attg_args *a, const qft_twin_attg_tile *t) {
    (void)ctx;
    for (int r = 0; r < a->H * t->nq; r++) {
        const int i = qft_twin_attg_row_query(r, t->nq, t->i0);
        const uint8_t *mb = a->mask ? a->mask + (size_t)t->b * a->T : NULL;
        float *s = a->s + (size_t)r * t->nk; // (nk)
        float m = -INFINITY;
        for (int j = 0; j < t->nk; j++)
            if (qft_twin_att_visible(i, j, a->T, mb) && s[j] > m) m = s[j];
        float sum = 0.0f;
        for (int j = 0; j < t->nk; j++) {
            s[j] = m != -INFINITY && qft_twin_att_visible(i, j, a->T, mb) ? expf(s[j] - m) : 0.0f;
            sum += s[j];
        }
        for (int j = 0; j < t->nk && m != -INFINITY; j++) s[j] *= 1.0f / sum;
        a->lse[qft_twin_attg_row_lse(r, t->b, t->nq, t->i0, a->H, a->T)] =
            m == -INFINITY ? -INFINITY : m + logf(sum);
    }
    return 0;
}

static int cpu_dscores(void *ctx, const qft_twin_attg_args *a, const qft_twin_attg_tile *t) {
    (void)ctx;
    for (int r = 0; r < a->H * t->nq; r++) {
        const int i = qft_twin_attg_row_query(r, t->nq, t->i0);
        const uint8_t *mb = a->mask ? a->mask + (size_t)t->b * a->T : NULL;
        const float L = a->lse[qft_twin_attg_row_lse(r, t->b, t->nq, t->i0, a->H, a->T)];
        const size_t orow = qft_twin_attg_row_out(r, t->b, t->nq, t->i0, a->H, a->T, a->hd);
        float D = 0.0f;
        for (int d = 0; d < a->hd; d++) D += a->dout[orow + d] * a->out[orow + d];
        float *s = a->s + (size_t)r * t->nk, *ds = a->ds + (size_t)r * t->nk; // (nk) each
        for (int j = 0; j < t->nk; j++) {
            const float p = L != -INFINITY && qft_twin_att_visible(i, j, a->T, mb)
                                ? qft_twin_att_prob(s[j], L)
                                : 0.0f;
            s[j] = p;
            ds[j] = p * (ds[j] - D) * a->scale;
        }
    }
    return 0;
}

START_TEST(test_attg_schedule) {
    /* T not a multiple of the rows, a single tile, GQA groups 3, 1 and 2, tiles of 16 */
    static const int shapes[4][6] = {
        {2, 77, 6, 2, 40, 16}, {1, 32, 4, 4, 16, 32}, {2, 5, 4, 2, 8, 16}, {1, 50, 8, 2, 16, 32}};
    const int B = shapes[_i][0], T = shapes[_i][1], H = shapes[_i][2], KV = shapes[_i][3],
              hd = shapes[_i][4], want_rows = shapes[_i][5];
    const int w = QFT_QKV_WIDTH(H, KV, hd), od = H * hd;
    const size_t nqkv = (size_t)B * T * w, nout = (size_t)B * T * od, nl = (size_t)B * H * T;
    /* scratch for exactly want_rows rows per tile, plus a little that must not matter */
    const size_t wn = (size_t)2 * H * T * want_rows + 7;
    const int rows = qft_twin_attg_rows(wn, T, H);
    ck_assert_int_eq(rows, want_rows < T ? want_rows : T);
    float *qkv = ctu_calloc(nqkv, 4), *out = ctu_calloc(nout, 4), *ref = ctu_calloc(nout, 4);
    float *lse = ctu_calloc(nl, 4), *lref = ctu_calloc(nl, 4), *dout = ctu_calloc(nout, 4);
    float *dq = ctu_calloc(nqkv, 4), *dqref = ctu_calloc(nqkv, 4), *work = ctu_calloc(wn, 4);
    uint8_t *mask = ctu_calloc((size_t)B * T, 1);
    ctu_fill(qkv, nqkv, 300 + _i, 1.0f);
    ctu_fill(dout, nout, 400 + _i, 1.0f);
    /* dqkv starts as garbage: backward must overwrite every element */
    ctu_fill(dq, nqkv, 500 + _i, 100.0f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) /* batch row 1 starts with a padded key: its query 0 sees nothing */
            mask[(size_t)b * T + t] = !(b == 1 && (t == 0 || t % 7 == 3));
    const float scale = 1.0f / sqrtf((float)hd);
    qft_twin_attg_args a = {B,    T,     H,    KV,   hd,   scale, qkv,
                            mask, out,   lse,  dout, dq,   work,  work + (size_t)H * rows * T,
                            rows};
    cpu_ctx ctx = {0, 0};
    const qft_twin_attg_prims prims = {&ctx, cpu_bgemm, cpu_softmax, cpu_dscores};
    ck_assert_int_eq(qft_twin_attg_forward(&a, &prims), 0);
    const int tiles = (T + rows - 1) / rows, g = H / KV;
    ck_assert_int_eq(ctx.gemms, B * tiles * 2 * g);
    size_t cwn = qft_cpu_attention_workspace(T, hd);
    float *cwork = ctu_calloc(cwn, 4);
    qft_cpu_attention_fwd(ref, lref, qkv, mask, B, T, H, KV, hd, scale, cwork, cwn);
    CTU_CHECK_ERR(out, ref, nout, 1e-5, "GEMM attention out");
    CTU_CHECK_ERR(lse, lref, nl, 1e-5, "GEMM attention lse");
    if (B > 1) ck_assert(lse[(size_t)1 * H * T] == -INFINITY); /* (b 1, h 0, t 0) saw no key */
    ctx.gemms = 0;
    ck_assert_int_eq(qft_twin_attg_backward(&a, &prims), 0);
    ck_assert_int_eq(ctx.gemms, B * tiles * 5 * g);
    ck_assert_int_eq(ctx.beta0_dk_rows, T); /* the first dK/dV products covered every key */
    qft_cpu_attention_bwd(dqref, dout, ref, lref, qkv, mask, B, T, H, KV, hd, scale, cwork, cwn);
    CTU_CHECK_ERR(dq, dqref, nqkv, 2e-5, "GEMM attention dqkv");
    free(qkv), free(out), free(ref), free(lse), free(lref), free(dout), free(dq), free(dqref);
    free(mask), free(work), free(cwork);
}
END_TEST

START_TEST(test_attg_rows) {
    /* Llama-3-8B at 2048 tokens in 128 MiB of scratch: 256 rows (2 * 32 * 2048 * 256 floats) */
    ck_assert_int_eq(qft_twin_attg_rows((size_t)32 << 20, 2048, 32), 256);
    ck_assert_int_eq(qft_twin_attg_rows((size_t)32 << 20, 8192, 32), 64);
    /* rounded down to the row step, whole sequences when they fit, 0 when nothing does */
    ck_assert_int_eq(qft_twin_attg_rows((size_t)2 * 4 * 100 * 37, 100, 4), 32);
    ck_assert_int_eq(qft_twin_attg_rows((size_t)2 * 4 * 100 * 100, 100, 4), 100);
    ck_assert_int_eq(qft_twin_attg_rows((size_t)2 * 4 * 100 * 15, 100, 4), 0);
}
END_TEST

void twin_attg_add_tests(TCase *tc) {
    tcase_add_loop_test(tc, test_attg_schedule, 0, 4);
    tcase_add_test(tc, test_attg_rows);
}
