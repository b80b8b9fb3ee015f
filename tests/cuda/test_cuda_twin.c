/* The CUDA kernels' indexing and scalar math (core/cuda/cuda_twin.h), run on the CPU and
 * checked against the CPU backend, so that a wrong tile bound, nibble order, GEMM layout
 * or online-softmax merge fails here, on a machine without a GPU.
 *
 * Each twin below is the kernel's schedule flattened into loops: the same tiles in the
 * same order, the same per-row online softmax over key tiles, the same lane-strided
 * log-sum-exp with the same merge tree. Inputs are seeded random data on shapes that are
 * not multiples of the tile sizes. Tolerances: 1e-5 relative (max error over max value)
 * where summation order differs from the CPU backend's BLAS, exact where the arithmetic is
 * the same (NF4 dequantization, AdamW).
 *
 * With QFT_NF4_CODEC the test also checks the twin against the bnb_nf4 plugin's own
 * quantizer and dequantizer. */
#include "cpu_ops.h"
#include "cuda_test_util.h"
#include "cuda_backend.h"
#include "cuda_twin.h"
#include "optim.h"
#include "qft_base.h"
#include "twin_suites.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef QFT_NF4_CODEC
#include "nf4.h"
#endif

/* ---- GEMM layout ------------------------------------------------------------------------ */
/* Column-major C (m, n) = alpha op(F) op(S) + beta C, as cuBLASLt reads the plan. */
static void colmajor_gemm(const qft_twin_gemm_plan *p, float alpha, const float *F,
                          const float *S, float beta, float *C) {
    for (int i = 0; i < p->m; i++)
        for (int j = 0; j < p->n; j++) {
            double s = 0;
            for (int l = 0; l < p->k; l++) {
                /* element (r, c) of a column-major matrix is at r + c * ld */
                double f = p->trans_first ? F[l + (size_t)i * p->first_ld] : F[i + (size_t)l * p->first_ld];
                double g = p->trans_second ? S[j + (size_t)l * p->second_ld] : S[l + (size_t)j * p->second_ld];
                s += f * g;
            }
            float *c = C + i + (size_t)j * p->c_ld;
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}

START_TEST(test_gemm_layout) {
    const int M = 37, N = 23, K = 19, pad = 5;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
            const size_t nc = (size_t)M * ldc;
            float *A = ctu_calloc(na, 4), *B = ctu_calloc(nb, 4), *C = ctu_calloc(nc, 4), *R = ctu_calloc(nc, 4);
            ctu_fill(A, na, 1 + ta, 1.0f), ctu_fill(B, nb, 3 + tb, 1.0f), ctu_fill(C, nc, 5, 1.0f);
            memcpy(R, C, nc * 4);
            qft_twin_gemm_plan p = qft_twin_gemm_map(ta, tb, M, N, K, lda, ldb, ldc);
            /* the layouts are what cuBLASLt accepts: ld >= rows, op shapes chain */
            ck_assert_int_ge(p.first_ld, p.first_rows);
            ck_assert_int_ge(p.second_ld, p.second_rows);
            ck_assert_int_ge(p.c_ld, p.c_rows);
            ck_assert_int_eq(p.trans_first ? p.first_cols : p.first_rows, p.m);
            ck_assert_int_eq(p.trans_first ? p.first_rows : p.first_cols, p.k);
            ck_assert_int_eq(p.trans_second ? p.second_cols : p.second_rows, p.k);
            ck_assert_int_eq(p.trans_second ? p.second_rows : p.second_cols, p.n);
            ck_assert_int_eq(p.c_rows, p.m);
            ck_assert_int_eq(p.c_cols, p.n);
            colmajor_gemm(&p, 0.5f, B, A, -1.5f, C); /* first operand B, second A */
            qft_cpu_gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, -1.5f, R, ldc);
            for (int i = 0; i < M; i++) {
                double e = ctu_rel_err(C + (size_t)i * ldc, R + (size_t)i * ldc, (size_t)N);
                ck_assert_msg(e < 1e-5, "transA %d transB %d row %d: rel err %g", ta, tb, i, e);
            }
            /* padding columns are not written */
            for (int i = 0; i < M; i++)
                for (int j = N; j < ldc; j++) ck_assert(C[(size_t)i * ldc + j] == R[(size_t)i * ldc + j]);
            free(A), free(B), free(C), free(R);
        }
}
END_TEST

/* ---- attention ------------------------------------------------------------------------ */
typedef struct {
    int B, T, H, KV, hd;
    const float *qkv;
    const uint8_t *mask;
    float scale;
} att_shape;

static float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* The forward kernel's schedule: per (b, h, query tile), key tiles 0..qt, and for each row
 * the tile's masked scores, the tile max, the rescale of the running sum and output. */
static void twin_att_fwd(const att_shape *s, float *out, float *lse) {
    const int T = s->T, H = s->H, KV = s->KV, hd = s->hd, TL = QFT_ATT_TILE;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < H; h++) {
            const int kvh = qft_twin_att_kv_head(h, H, KV);
            const uint8_t *mb = s->mask ? s->mask + (size_t)b * T : NULL;
            for (int qt = 0; qt < qft_twin_att_tiles(T); qt++)
                for (int r = 0; r < TL; r++) {
                    const int i = qt * TL + r;
                    if (i >= T) continue;
                    const float *q = s->qkv + qft_twin_att_q(b, i, h, T, H, KV, hd);
                    float m = -INFINITY, l = 0.0f, acc[256] = {0};
                    for (int kt = 0; kt < qft_twin_att_key_tiles_for(qt); kt++) {
                        float sc[QFT_ATT_TILE], tmax = -INFINITY;
                        for (int c = 0; c < TL; c++) {
                            const int j = kt * TL + c;
                            sc[c] = -INFINITY;
                            if (qft_twin_att_visible(i, j, T, mb))
                                sc[c] = dot(q, s->qkv + qft_twin_att_k(b, j, kvh, T, H, KV, hd), hd) *
                                        s->scale;
                            tmax = fmaxf(tmax, sc[c]);
                        }
                        const float m_new = fmaxf(m, tmax);
                        if (m_new == -INFINITY) continue;
                        const float alpha = qft_twin_rescale(m, m_new);
                        float psum = 0.0f, p[QFT_ATT_TILE];
                        for (int c = 0; c < TL; c++) {
                            p[c] = sc[c] == -INFINITY ? 0.0f : expf(sc[c] - m_new);
                            psum += p[c];
                        }
                        l = l * alpha + psum;
                        for (int d = 0; d < hd; d++) acc[d] *= alpha;
                        for (int c = 0; c < TL; c++) {
                            const int j = kt * TL + c;
                            if (p[c] == 0.0f) continue;
                            const float *v = s->qkv + qft_twin_att_v(b, j, kvh, T, H, KV, hd);
                            for (int d = 0; d < hd; d++) acc[d] += p[c] * v[d];
                        }
                        m = m_new;
                    }
                    float *o = out + ((size_t)b * T + i) * H * hd + (size_t)h * hd;
                    for (int d = 0; d < hd; d++) o[d] = l == 0.0f ? 0.0f : acc[d] / l;
                    lse[((size_t)b * H + h) * T + i] = l == 0.0f ? -INFINITY : m + logf(l);
                }
        }
}

/* The two backward kernels' schedules: dQ per (b, h, query tile) over key tiles 0..qt;
 * dK and dV per (b, kv head, key tile) over the group's heads and query tiles from
 * qft_twin_att_first_query_tile on. */
static void twin_att_bwd(const att_shape *s, const float *dout, const float *out,
                         const float *lse, float *dqkv) {
    const int T = s->T, H = s->H, KV = s->KV, hd = s->hd, TL = QFT_ATT_TILE;
    const int nt = qft_twin_att_tiles(T), od = H * hd;
    for (int b = 0; b < s->B; b++) {
        const uint8_t *mb = s->mask ? s->mask + (size_t)b * T : NULL;
        for (int h = 0; h < H; h++) {
            const int kvh = qft_twin_att_kv_head(h, H, KV);
            for (int qt = 0; qt < nt; qt++)
                for (int r = 0; r < TL; r++) {
                    const int i = qt * TL + r;
                    if (i >= T) continue;
                    const size_t orow = ((size_t)b * T + i) * od + (size_t)h * hd;
                    const float D = dot(dout + orow, out + orow, hd);
                    const float L = lse[((size_t)b * H + h) * T + i];
                    const float *q = s->qkv + qft_twin_att_q(b, i, h, T, H, KV, hd);
                    float acc[256] = {0};
                    for (int kt = 0; kt < qft_twin_att_key_tiles_for(qt); kt++)
                        for (int c = 0; c < TL; c++) {
                            const int j = kt * TL + c;
                            if (L == -INFINITY || !qft_twin_att_visible(i, j, T, mb)) continue;
                            const float *k = s->qkv + qft_twin_att_k(b, j, kvh, T, H, KV, hd);
                            const float *v = s->qkv + qft_twin_att_v(b, j, kvh, T, H, KV, hd);
                            const float p = qft_twin_att_prob(dot(q, k, hd) * s->scale, L);
                            const float ds = p * (dot(dout + orow, v, hd) - D) * s->scale;
                            for (int d = 0; d < hd; d++) acc[d] += ds * k[d];
                        }
                    memcpy(dqkv + qft_twin_att_q(b, i, h, T, H, KV, hd), acc, (size_t)hd * 4);
                }
        }
        for (int kvh = 0; kvh < KV; kvh++)
            for (int kt = 0; kt < nt; kt++)
                for (int r = 0; r < TL; r++) {
                    const int j = kt * TL + r;
                    if (j >= T) continue;
                    const float *k = s->qkv + qft_twin_att_k(b, j, kvh, T, H, KV, hd);
                    const float *v = s->qkv + qft_twin_att_v(b, j, kvh, T, H, KV, hd);
                    float dk[256] = {0}, dv[256] = {0};
                    for (int g = 0; g < H / KV; g++) {
                        const int h = kvh * (H / KV) + g;
                        for (int qt = qft_twin_att_first_query_tile(kt); qt < nt; qt++)
                            for (int c = 0; c < TL; c++) {
                                const int i = qt * TL + c;
                                if (i >= T) continue;
                                const float L = lse[((size_t)b * H + h) * T + i];
                                if (L == -INFINITY || !qft_twin_att_visible(i, j, T, mb)) continue;
                                const size_t orow = ((size_t)b * T + i) * od + (size_t)h * hd;
                                const float *q = s->qkv + qft_twin_att_q(b, i, h, T, H, KV, hd);
                                const float D = dot(dout + orow, out + orow, hd);
                                const float p = qft_twin_att_prob(dot(q, k, hd) * s->scale, L);
                                const float ds = p * (dot(dout + orow, v, hd) - D) * s->scale;
                                for (int d = 0; d < hd; d++) {
                                    dv[d] += p * dout[orow + d];
                                    dk[d] += ds * q[d];
                                }
                            }
                    }
                    memcpy(dqkv + qft_twin_att_k(b, j, kvh, T, H, KV, hd), dk, (size_t)hd * 4);
                    memcpy(dqkv + qft_twin_att_v(b, j, kvh, T, H, KV, hd), dv, (size_t)hd * 4);
                }
    }
}

START_TEST(test_attention_schedule) {
    /* T not a multiple of the tile, one exactly a tile, one tiny; GQA groups 3, 1 and 2 */
    static const int shapes[3][5] = {{2, 77, 6, 2, 40}, {1, 32, 4, 4, 16}, {2, 5, 4, 2, 8}};
    const int B = shapes[_i][0], T = shapes[_i][1], H = shapes[_i][2], KV = shapes[_i][3],
              hd = shapes[_i][4];
    const int w = QFT_QKV_WIDTH(H, KV, hd), od = H * hd;
    const size_t nqkv = (size_t)B * T * w, nout = (size_t)B * T * od, nl = (size_t)B * H * T;
    float *qkv = ctu_calloc(nqkv, 4), *out = ctu_calloc(nout, 4), *ref = ctu_calloc(nout, 4);
    float *lse = ctu_calloc(nl, 4), *lref = ctu_calloc(nl, 4), *dout = ctu_calloc(nout, 4);
    float *dq = ctu_calloc(nqkv, 4), *dqref = ctu_calloc(nqkv, 4);
    uint8_t *mask = ctu_calloc((size_t)B * T, 1);
    ctu_fill(qkv, nqkv, 100 + _i, 1.0f);
    ctu_fill(dout, nout, 200 + _i, 1.0f);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) /* batch row 1 starts with a padded key: its query 0 sees nothing */
            mask[(size_t)b * T + t] = !(b == 1 && (t == 0 || t % 7 == 3));
    const att_shape s = {B, T, H, KV, hd, qkv, mask, 1.0f / sqrtf((float)hd)};
    twin_att_fwd(&s, out, lse);
    size_t wn = qft_cpu_attention_workspace(T, hd);
    float *work = ctu_calloc(wn, 4);
    qft_cpu_attention_fwd(ref, lref, qkv, mask, B, T, H, KV, hd, s.scale, work, wn);
    double e = ctu_rel_err(out, ref, nout), el = ctu_rel_err(lse, lref, nl);
    ck_assert_msg(e < 1e-5, "attention out: rel err %g", e);
    ck_assert_msg(el < 1e-5, "attention lse: rel err %g", el);
    if (B > 1) ck_assert(lse[(size_t)1 * H * T] == -INFINITY); /* (b 1, h 0, t 0) saw no key */
    twin_att_bwd(&s, dout, ref, lref, dq);
    qft_cpu_attention_bwd(dqref, dout, ref, lref, qkv, mask, B, T, H, KV, hd, s.scale, work, wn);
    e = ctu_rel_err(dq, dqref, nqkv);
    ck_assert_msg(e < 2e-5, "attention dqkv: rel err %g", e);
    free(qkv), free(out), free(ref), free(lse), free(lref), free(dout), free(dq), free(dqref);
    free(mask), free(work);
}
END_TEST

/* ---- cross-entropy: lane-strided online log-sum-exp and its merge tree --------------- */
static float twin_row_lse(const float *l, int V) {
    float m[QFT_XENT_LANES], s[QFT_XENT_LANES];
    for (int t = 0; t < QFT_XENT_LANES; t++) {
        m[t] = -INFINITY, s[t] = 0.0f;
        for (int v = t; v < V; v += QFT_XENT_LANES) qft_twin_lse_push(&m[t], &s[t], l[v]);
    }
    for (int off = QFT_XENT_LANES / 2; off > 0; off >>= 1)
        for (int t = 0; t < off; t++) qft_twin_lse_merge(&m[t], &s[t], m[t + off], s[t + off]);
    return m[0] + logf(s[0]);
}

START_TEST(test_xent_chunked_lse) {
    /* V below the lane count (empty lanes), not a multiple of it, and large; logits with
     * a wide range so the running maximum changes often */
    static const int Vs[3] = {100, 1000, 32003};
    const int V = Vs[_i], N = 9;
    float *logits = ctu_calloc((size_t)N * V, 4), *lse = ctu_calloc(N, 4), *loss = ctu_calloc(N, 4);
    ctu_fill(logits, (size_t)N * V, 300 + _i, 4.0f);
    for (int v = 0; v < V; v++) logits[(size_t)2 * V + v] += 0.01f * v; /* rising row */
    int32_t tg[9] = {0, 5, V - 1, -100, 17, 3, -100, 1, 2};
    int nv = 0;
    double total = qft_cpu_cross_entropy_fwd(logits, tg, N, V, lse, loss, &nv);
    ck_assert_int_eq(nv, 7);
    double sum = 0;
    for (int n = 0; n < N; n++) {
        if (tg[n] == -100) continue;
        const float r = twin_row_lse(logits + (size_t)n * V, V);
        /* two fp32 sums of V exponentials in different orders (lanes vs chunks): they may
         * differ by about sqrt(V) ulp, 3e-6 relative at V = 32003 (seen under
         * -fsanitize builds, whose code generation orders them differently) */
        ck_assert_msg(fabsf(r - lse[n]) <= 1e-5f * fabsf(lse[n]), "row %d: twin %.9g cpu %.9g", n,
                      (double)r, (double)lse[n]);
        sum += (double)(r - logits[(size_t)n * V + tg[n]]);
    }
    ck_assert_msg(fabs(sum - total) <= 1e-5 * fabs(total), "loss sum %g vs %g", sum, total);
    free(logits), free(lse), free(loss);
}
END_TEST

/* ---- NF4: nibble order, block index, double-quantized absmax ------------------------- */
START_TEST(test_nf4_unpack) {
    static const float code[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f,
                                   -0.39491748809814453f, -0.28444138169288635f,
                                   -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                   0.07958029955625534f, 0.16093020141124725f,
                                   0.24611230194568634f, 0.33791524171829224f,
                                   0.44070982933044434f, 0.5626170039176941f,
                                   0.7229568362236023f, 1.0f};
    const int64_t n = 64 * 37 + 13; /* a partial, odd last block */
    const int bs = 64;
    const int64_t nb = (n + bs - 1) / bs;
    uint8_t *q = ctu_calloc((size_t)n, 1), *packed = ctu_calloc((size_t)(n + 1) / 2, 1);
    float *absmax = ctu_calloc((size_t)nb, 4);
    qft_rng r;
    qft_rng_seed(&r, 77);
    for (int64_t i = 0; i < n; i++) q[i] = (uint8_t)(qft_rng_next(&r) & 15);
    for (int64_t b = 0; b < nb; b++) absmax[b] = 0.5f + (float)qft_rng_uniform(&r);
    /* bitsandbytes' packing: byte i = q[2i] << 4 | q[2i+1], odd count padded with 0 */
    for (int64_t i = 0; i < n; i += 2)
        packed[i / 2] = (uint8_t)((q[i] << 4) | (i + 1 < n ? q[i + 1] : 0));
    for (int64_t i = 0; i < n; i++) {
        ck_assert_int_eq(qft_twin_nf4_code(packed, i), q[i]);
        const float a = qft_twin_nf4_absmax(absmax, NULL, NULL, NULL, 0.0f, i / bs);
        ck_assert(qft_twin_mul(code[qft_twin_nf4_code(packed, i)], a) == code[q[i]] * absmax[i / bs]);
    }
    /* double quantization: map[q] * nested[b / 256] + offset */
    const int64_t nb2 = 600;
    uint8_t *qa = ctu_calloc((size_t)nb2, 1);
    float map[256], nested[3], offset = 0.03125f;
    for (int k = 0; k < 256; k++) map[k] = -1.0f + (float)k / 128.0f;
    for (int k = 0; k < 3; k++) nested[k] = 0.01f * (float)(k + 1);
    for (int64_t b = 0; b < nb2; b++) qa[b] = (uint8_t)(qft_rng_next(&r) & 255);
    for (int64_t b = 0; b < nb2; b++) {
        const float want = map[qa[b]] * nested[b / 256] + offset;
        ck_assert(qft_twin_nf4_absmax(NULL, qa, nested, map, offset, b) == want);
    }
    free(q), free(packed), free(absmax), free(qa);
}
END_TEST

#ifdef QFT_NF4_CODEC
/* The twin decodes what the plugin's quantizer wrote, as the plugin's dequantizer does,
 * bit for bit, from odd and even starts. */
START_TEST(test_nf4_vs_plugin) {
    const int64_t out = 37, in = 129, n = out * in;
    float *w = ctu_calloc((size_t)n, 4), *ref = ctu_calloc((size_t)n, 4);
    ctu_fill(w, (size_t)n, 55, 0.02f);
    struct qft_qweight qw;
    memset(&qw, 0, sizeof qw);
    qw.out = out, qw.in = in, qw.n = n, qw.blocksize = 64, qw.n_blocks = (n + 63) / 64;
    memcpy(qw.code, qft_nf4_code, sizeof qw.code);
    qw.packed = ctu_calloc((size_t)(n + 1) / 2, 1);
    qw.absmax = ctu_calloc((size_t)qw.n_blocks, 4);
    nf4_quantize_blocks(w, n, 64, qw.absmax, qw.packed);
    const int64_t starts[3] = {0, 1, 1000};
    for (int s = 0; s < 3; s++) {
        const int64_t f0 = starts[s], cnt = n - f0;
        nf4_dequantize_range(&qw, f0, cnt, ref);
        for (int64_t e = 0; e < cnt; e++) {
            const int64_t i = f0 + e;
            const float a = qft_twin_nf4_absmax(qw.absmax, NULL, NULL, NULL, 0.0f, i / 64);
            const float v = qft_twin_mul(qw.code[qft_twin_nf4_code(qw.packed, i)], a);
            ck_assert_msg(v == ref[e], "element %lld from %lld: twin %g plugin %g", (long long)i,
                          (long long)f0, (double)v, (double)ref[e]);
        }
    }
    free(w), free(ref), free(qw.packed), free(qw.absmax);
}
END_TEST
#endif

/* ---- AdamW: the twin element update against core/train's optimizer, bit for bit -------- */
START_TEST(test_adamw_elem) {
    const size_t n = 1000;
    const float wd = _i ? 0.0f : 0.1f, lr = 3e-3f;
    qft_optim_config cfg = {QFT_OPT_ADAMW, 0.9f, 0.95f, 1e-5f, wd, 0.0f};
    qft_optim o;
    qft_err err = {0, ""};
    ck_assert_int_eq(qft_optim_init(&o, &cfg, n, &err), 0);
    float *p = ctu_calloc(n, 4), *g = ctu_calloc(n, 4), *pt = ctu_calloc(n, 4),
          *mt = ctu_calloc(n, 4), *vt = ctu_calloc(n, 4);
    ctu_fill(p, n, 9, 1.0f);
    memcpy(pt, p, n * 4);
    for (int step = 1; step <= 3; step++) {
        ctu_fill(g, n, 10 + step, 0.1f);
        qft_optim_step(&o, p, g, lr);
        qft_cuda_adamw_scalars s = qft_cuda_adamw_scalars_make(
            qft_optim_float_decimal(cfg.beta1), qft_optim_float_decimal(cfg.beta2),
            qft_optim_float_decimal(cfg.eps), qft_optim_float_decimal(cfg.weight_decay),
            qft_optim_float_decimal(lr), step);
        for (size_t i = 0; i < n; i++) qft_twin_adamw_elem(&pt[i], &mt[i], &vt[i], g[i], &s);
        ck_assert_msg(memcmp(p, pt, n * 4) == 0, "step %d: params differ", step);
        ck_assert(memcmp(o.m, mt, n * 4) == 0 && memcmp(o.v, vt, n * 4) == 0);
    }
    qft_optim_free(&o);
    free(p), free(g), free(pt), free(mt), free(vt);
}
END_TEST

/* ---- SGD: the twin element update against core/train's optimizer, bit for bit --------- */
START_TEST(test_sgd_elem) {
    const size_t n = 1000;
    /* _i: 0 plain, 1 weight decay, 2 momentum, 3 both */
    const float wd = (_i & 1) ? 0.01f : 0.0f, mom = (_i & 2) ? 0.9f : 0.0f, lr = 0.05f;
    qft_optim_config cfg = {QFT_OPT_SGD, 0.0f, 0.0f, 0.0f, wd, mom};
    qft_optim o;
    qft_err err = {0, ""};
    ck_assert_int_eq(qft_optim_init(&o, &cfg, n, &err), 0);
    float *p = ctu_calloc(n, 4), *g = ctu_calloc(n, 4), *pt = ctu_calloc(n, 4),
          *bt = ctu_calloc(n, 4);
    ctu_fill(p, n, 19, 1.0f);
    memcpy(pt, p, n * 4);
    const double wd_d = qft_optim_float_decimal(wd), mom_d = qft_optim_float_decimal(mom);
    for (int step = 1; step <= 3; step++) {
        ctu_fill(g, n, 20 + step, 0.1f);
        qft_optim_step(&o, p, g, lr);
        const float neg_lr = (float)(-qft_optim_float_decimal(lr));
        for (size_t i = 0; i < n; i++)
            qft_twin_sgd_elem(&pt[i], &bt[i], g[i], wd_d != 0.0, (float)wd_d, mom_d != 0.0,
                              (float)mom_d, step == 1, neg_lr);
        ck_assert_msg(memcmp(p, pt, n * 4) == 0, "step %d: params differ", step);
        if (o.m) ck_assert_msg(memcmp(o.m, bt, n * 4) == 0, "step %d: momentum differs", step);
    }
    qft_optim_free(&o);
    free(p), free(g), free(pt), free(bt);
}
END_TEST

/* ---- sum of squares: the kernel's per-chunk sums, added in chunk order, against the CPU
 * op (the clipping norm), bit for bit, across chunk boundaries and a partial last chunk */
START_TEST(test_sumsq_chunks) {
    const size_t n = 3 * QFT_OPS_SUMSQ_CHUNK + 12345;
    float *x = ctu_calloc(n, 4);
    ctu_fill(x, n, 31, 2.0f);
    double s = 0.0;
    for (size_t lo = 0; lo < n; lo += QFT_OPS_SUMSQ_CHUNK)
        s += qft_twin_sumsq_range(x, lo, lo + QFT_OPS_SUMSQ_CHUNK < n ? lo + QFT_OPS_SUMSQ_CHUNK : n);
    const double ref = qft_cpu_ops()->sumsq(x, n);
    ck_assert_msg(memcmp(&s, &ref, sizeof s) == 0, "twin %.17g, cpu %.17g", s, ref);
    ck_assert(s > 0);
    free(x);
}
END_TEST

/* ---- RoPE table: the twin's inverse frequencies and angles against the CPU table ------ */
START_TEST(test_rope_table) {
    const int T = 300, hd = 128, half = hd / 2;
    const int type = _i; /* 0 default, 1 llama3 (Llama 3.1's factors) */
    float *c = ctu_calloc((size_t)T * half, 4), *s = ctu_calloc((size_t)T * half, 4);
    float *ct = ctu_calloc((size_t)T * half, 4), *st = ctu_calloc((size_t)T * half, 4), inv[64];
    qft_cpu_rope_table(c, s, T, hd, 500000.0f, type, 8.0f, 1.0f, 4.0f, 8192);
    qft_twin_rope_inv_freq(inv, hd, 500000.0f, type, 8.0f, 1.0f, 4.0f, 8192);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            const float a = qft_twin_rope_angle(t, inv[i]);
            ct[(size_t)t * half + i] = (float)cos((double)a);
            st[(size_t)t * half + i] = (float)sin((double)a);
        }
    /* the CPU library may fuse the llama3 smoothing into an FMA: an ulp of slack */
    double ec = ctu_rel_err(ct, c, (size_t)T * half), es = ctu_rel_err(st, s, (size_t)T * half);
    ck_assert_msg(ec < 1e-6 && es < 1e-6, "rope type %d: cos err %g sin err %g", type, ec, es);
    free(c), free(s), free(ct), free(st);
}
END_TEST

/* ---- the loader: without a usable device every path ends in a message naming the key -- */
START_TEST(test_loader_message) {
    qft_err err = {0, ""};
    const qft_ops *o = qft_cuda_load(999, &err);
    ck_assert_ptr_null(o);
    ck_assert_msg(strstr(err.msg, "train.") != NULL, "message: %s", err.msg);
    printf("cuda loader (device 999): %s\n", err.msg);
}
END_TEST

/* A backend library built for another ABI is refused by name, before its table is read. */
START_TEST(test_loader_abi) {
    const char *fake = getenv("QFT_FAKE_CUDA_LIB");
    if (!fake) {
        printf("QFT_FAKE_CUDA_LIB not set (run through meson): skipped\n");
        return;
    }
    const char *old = getenv("QFT_CUDA_LIB");
    char *keep = old ? strdup(old) : NULL;
    setenv("QFT_CUDA_LIB", fake, 1);
    qft_err err = {0, ""};
    const qft_ops *o = qft_cuda_load(0, &err);
    if (keep) setenv("QFT_CUDA_LIB", keep, 1); else unsetenv("QFT_CUDA_LIB");
    free(keep);
    ck_assert_ptr_null(o);
    char want[64];
    snprintf(want, sizeof want, "built for plugin ABI %d", QFT_ABI_VERSION - 1);
    ck_assert_msg(strstr(err.msg, want) && strstr(err.msg, "rebuild"), "message: %s", err.msg);
    printf("cuda loader (older library): %s\n", err.msg);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cuda_twin");
    TCase *tc = tcase_create("twin");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gemm_layout);
    tcase_add_loop_test(tc, test_attention_schedule, 0, 3);
    tcase_add_loop_test(tc, test_xent_chunked_lse, 0, 3);
    tcase_add_test(tc, test_nf4_unpack);
#ifdef QFT_NF4_CODEC
    tcase_add_test(tc, test_nf4_vs_plugin);
#endif
    tcase_add_loop_test(tc, test_adamw_elem, 0, 2);
    tcase_add_loop_test(tc, test_sgd_elem, 0, 4);
    tcase_add_test(tc, test_sumsq_chunks);
    tcase_add_loop_test(tc, test_rope_table, 0, 2);
    tcase_add_test(tc, test_loader_message);
    tcase_add_test(tc, test_loader_abi);
    twin_linear_add_tests(tc);
    twin_adapt_add_tests(tc);
    twin_attg_add_tests(tc);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
