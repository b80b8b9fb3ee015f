/* CUDA backend kernels on one GPU, printed as markdown tables (bench/README.md, "CUDA"):
 *   - cuBLASLt bf16 GEMM (fp32 accumulation, bf16 out) for the Llama-3-8B linear shapes at
 *     M = 2048 tokens, forward (x W^T), input gradient (dY W) and weight gradient (dY^T x),
 *     in TFLOP/s and as a share of the measured peak (the best of large square GEMMs);
 *     the op table's fp32 GEMM (no TF32) on one shape for scale;
 *   - the op table's attention, forward and backward, at T = 2048: the flash kernels and
 *     the GEMM path at each matmul precision,
 *     H = 32, KV = 8, hd = 128 (Llama-3-8B), batch 1;
 *   - NF4 and HQQ (4-bit, group 64, axis 1) dequantization of a 14336 x 4096 weight to bf16
 *     and fp32, in GB/s of bytes read and written;
 *   - the op table's qmatmul (what the model runs) on an NF4 layout at each matmul
 *     precision, beside the quantized linear below;
 *   - the quantized linear (qft_cuda_qlinear_fwd / _bwd_input: dequantize into a bf16
 *     scratch, then the cuBLASLt bf16 GEMM) for NF4 and HQQ 4-bit at the Llama-3-8B shapes
 *     and M = 2048, with a whole-weight scratch and with 1024-row tiles, in ms and as a
 *     multiple of the plain bf16 GEMM on a dense weight; and the other design, W's tiles
 *     decoded on chip into the tensor-core kernel (qft_cuda_qgemm_onchip_*), beside it;
 *   - DoRA's weight norm of a 14336 x 4096 NF4 weight at r = 16: lowrank_row_norms against
 *     the generic tile path;
 *   - DoRA's element-wise steps on a (2048, 14336) output at r = 16: the fused lowrank_out
 *     and col_dot_scale against the steps they replace.
 * Times are the median of `iters` runs after warm-up, measured on the host around a
 * device synchronisation. Usage: cuda_bench [--quick | --choose-qmatmul |
 * --choose-attention] (see choose_qmatmul and attention_table). Exits 77 without a device. */
#include "qft_base.h"
#include "qft_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const qft_ops *G;
static int iters = 20;

static void die(const char *what, const qft_err *err) {
    fprintf(stderr, "cuda_bench: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static void sync_or_die(void) {
    qft_err err = {0, ""};
    if (qft_cuda_sync(&err)) die("CUDA", &err);
}

static void *dalloc(size_t bytes) {
    void *p = G->alloc(bytes, "bench");
    if (!p) {
        qft_err err = {0, ""};
        qft_cuda_status(&err);
        die("device allocation", &err);
    }
    return p;
}

/* A device buffer of n floats, uniform in [-scale, scale) from a fixed LCG (fast enough
 * for hundreds of MB; the numbers only need to be non-degenerate). */
static float *rand_dev(size_t n, float scale, uint64_t seed) {
    float *h = malloc(n * sizeof *h);
    if (!h) die("host allocation", NULL);
    uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = scale * ((float)(s >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
    float *d = dalloc(n * sizeof *d);
    qft_err err = {0, ""};
    if (qft_cuda_upload(d, h, n * sizeof *d, &err)) die("upload", &err);
    free(h);
    return d;
}

static uint16_t *bf16_dev(size_t n, float scale, uint64_t seed) {
    float *f = rand_dev(n, scale, seed);
    uint16_t *b = dalloc(n * sizeof *b);
    qft_cuda_f32_to_bf16(b, f, n);
    sync_or_die();
    G->free(f);
    return b;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median seconds of one call of fn(ctx), after 3 warm-up calls. */
static double time_median(void (*fn)(void *), void *ctx) {
    for (int i = 0; i < 3; i++) fn(ctx);
    sync_or_die();
    double t[64];
    const int n = iters < 64 ? iters : 64;
    for (int i = 0; i < n; i++) {
        double t0 = qft_time_now();
        fn(ctx);
        sync_or_die();
        t[i] = qft_time_now() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

/* ---- GEMM ------------------------------------------------------------------------------ */
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    const uint16_t *A, *B;
    void *C;
    int fp32; /* the op table's fp32 GEMM on float buffers instead */
} gemm_ctx;

static void run_gemm(void *p) {
    gemm_ctx *g = p;
    if (g->fp32) {
        G->gemm(g->ta, g->tb, g->M, g->N, g->K, 1.0f, (const float *)g->A, g->lda,
                (const float *)g->B, g->ldb, 0.0f, g->C, g->ldc);
        return;
    }
    qft_err err = {0, ""};
    if (qft_cuda_gemm_bf16(g->ta, g->tb, g->M, g->N, g->K, 1.0f, g->A, g->lda, g->B, g->ldb, 0.0f,
                           g->C, QFT_DT_BF16, g->ldc, &err))
        die("bf16 gemm", &err);
}

/* TFLOP/s of C (M, N) = op(A) op(B) over K, with buffers big enough for every op here. */
static double gemm_tflops(int ta, int tb, int M, int N, int K, const uint16_t *A,
                          const uint16_t *B, void *C, int fp32) {
    gemm_ctx g = {ta, tb, M, N, K, ta ? M : K, tb ? K : N, N, A, B, C, fp32};
    const double s = time_median(run_gemm, &g);
    return 2.0 * M * N * K / s / 1e12;
}

/* ---- attention ----------------------------------------------------------------------------- */
typedef struct {
    int B, T, H, KV, hd;
    float *qkv, *out, *lse, *dout, *dqkv, *work;
    size_t work_n;
} att_ctx;

static void run_att_fwd(void *p) {
    att_ctx *a = p;
    G->attention_fwd(a->out, a->lse, a->qkv, NULL, a->B, a->T, a->H, a->KV, a->hd,
                     1.0f / sqrtf((float)a->hd), a->work, a->work_n);
}
static void run_att_bwd(void *p) {
    att_ctx *a = p;
    G->attention_bwd(a->dqkv, a->dout, a->out, a->lse, a->qkv, NULL, a->B, a->T, a->H, a->KV,
                     a->hd, 1.0f / sqrtf((float)a->hd), a->work, a->work_n);
}

/* ---- NF4 ----------------------------------------------------------------------------------- */
typedef struct {
    qft_cuda_nf4 w;
    void *out;
    qft_dtype dt;
} nf4_ctx;

static void run_nf4(void *p) {
    nf4_ctx *c = p;
    qft_err err = {0, ""};
    if (qft_cuda_nf4_dequantize(&c->w, 0, c->w.n, c->out, c->dt, &err)) die("nf4", &err);
}

/* ---- HQQ and the quantized linear ---------------------------------------------------------- */
typedef struct {
    qft_cuda_hqq w;
    void *out;
    qft_dtype dt;
} hqq_ctx;

static void run_hqq(void *p) {
    hqq_ctx *c = p;
    qft_err err = {0, ""};
    if (qft_cuda_hqq_dequantize(&c->w, 0, c->w.n, c->out, c->dt, &err)) die("hqq", &err);
}

typedef struct {
    qft_cuda_weight w;
    const uint16_t *x;  // (M, in) or, backward, dY (M, out)
    void *y;            // (M, out) or dX (M, in), bf16 forward, fp32 backward
    int M, bwd;
    uint16_t *scratch;
    int64_t scratch_elems;
    int onchip; /* the on-chip kernels (fp32 output both ways) instead of the scratch */
} qlin_ctx;

static void run_qlin(void *p) {
    qlin_ctx *c = p;
    qft_err err = {0, ""};
    if (c->onchip) {
        int rc = c->bwd ? qft_cuda_qgemm_onchip_bwd(&c->w, c->x, c->w.out, c->M, c->y, c->w.in,
                                                    0.0f, &err)
                        : qft_cuda_qgemm_onchip_fwd(&c->w, c->x, c->M, c->w.in, c->y, c->w.out,
                                                    0.0f, &err);
        if (rc) die("on-chip qgemm", &err);
        return;
    }
    int rc = c->bwd ? qft_cuda_qlinear_bwd_input(&c->w, c->x, c->w.out, c->M, c->y, QFT_DT_F32,
                                                 c->w.in, 0.0f, c->scratch, c->scratch_elems, &err)
                    : qft_cuda_qlinear_fwd(&c->w, c->x, c->M, c->w.in, c->y, QFT_DT_BF16, c->w.out,
                                           0.0f, c->scratch, c->scratch_elems, &err);
    if (rc) die("qlinear", &err);
}

/* The op table's qmatmul, as the model calls it: fp32 activations in and out, a 64 MiB
 * fp32 scratch, at the backend's current matmul precision. */
typedef struct {
    const qft_qlayout *w;
    const float *a;
    float *c;
    int M, bwd;
    float *scratch;
    size_t scratch_floats;
} qmm_ctx;

static void run_qmm(void *p) {
    qmm_ctx *q = p;
    const int64_t lda = q->bwd ? q->w->out : q->w->in, ldc = q->bwd ? q->w->in : q->w->out;
    G->qmatmul(q->w, q->bwd, q->a, lda, q->M, q->c, ldc, 0.0f, q->scratch, q->scratch_floats);
}

/* Random packed bytes on the device. */
static uint8_t *bytes_dev(size_t n, uint64_t seed) {
    uint8_t *h = malloc(n);
    if (!h) die("host allocation", NULL);
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) h[i] = (uint8_t)((s = s * 6364136223846793005ULL + 1) >> 56);
    uint8_t *d = dalloc(n);
    qft_err err = {0, ""};
    if (qft_cuda_upload(d, h, n, &err)) die("upload", &err);
    free(h);
    return d;
}

/* Rows of the quantized-linear table for W (out, in) at M tokens. */
static void qlinear_rows(int out, int in, int M) {
    const int64_t n = (int64_t)out * in, nb = n / 64;
    uint8_t *packed = bytes_dev((size_t)n / 2, 11); /* 4 bits a code for both formats */
    float *code = rand_dev(16, 1.0f, 12), *absmax = rand_dev((size_t)nb, 0.1f, 13);
    float *scale = rand_dev((size_t)nb, 0.01f, 14), *zero = rand_dev((size_t)nb, 8.0f, 15);
    qft_cuda_nf4 nf4 = {packed, code, absmax, NULL, NULL, NULL, 0.0f, 64, n};
    qft_cuda_hqq hqq = {packed, scale, zero, NULL, {0.0f, 0.0f}, NULL, NULL, 4, 64, 1, n};
    uint16_t *wd = bf16_dev((size_t)n, 0.05f, 16);
    uint16_t *x = bf16_dev((size_t)M * (in > out ? in : out), 1.0f, 17);
    void *y = dalloc((size_t)M * (in > out ? in : out) * 4);
    uint16_t *scratch = dalloc((size_t)n * 2);
    const qft_cuda_weight dense = {NULL, NULL, wd, out, in};
    const qft_cuda_weight qw[2] = {{&nf4, NULL, NULL, out, in}, {NULL, &hqq, NULL, out, in}};
    static const char *const names[2] = {"NF4", "HQQ 4-bit"};
    /* the model's path: NF4 as a layout, fp32 activations, the model's 64 MiB fp32 scratch */
    qft_qlayout nl;
    memset(&nl, 0, sizeof nl);
    nl.format = QFT_QFMT_NF4, nl.out = out, nl.in = in, nl.nf4_blocksize = 64;
    nl.buf[QFT_QL_NF4_PACKED] = packed, nl.buf[QFT_QL_NF4_CODE] = code;
    nl.buf[QFT_QL_NF4_ABSMAX] = absmax;
    const size_t qscr_n = (size_t)16 << 20;
    float *af = rand_dev((size_t)M * (in > out ? in : out), 1.0f, 18);
    float *qscr = dalloc(qscr_n * 4);
    static const char *const precs[3] = {"fp32 tiles + fp32 GEMM", "fp32 tiles + TF32 GEMM",
                                         "bf16 tiles + bf16 GEMM"};
    for (int bwd = 0; bwd < 2; bwd++) {
        qlin_ctx c = {dense, x, y, M, bwd, NULL, 0, 0};
        const double plain = time_median(run_qlin, &c);
        printf("| %dx%d | %s | bf16 dense (plain GEMM) | %.3f | 1.00 |\n", out, in,
               bwd ? "dY W" : "x W^T", plain * 1e3);
        for (int k = 0; k < 2; k++)
            for (int tiled = 0; tiled < 2; tiled++) {
                qlin_ctx q = {qw[k], x, y, M, bwd, scratch, tiled ? (int64_t)1024 * in : n, 0};
                const double t = time_median(run_qlin, &q);
                printf("| %dx%d | %s | %s, %s | %.3f | %.2f |\n", out, in, bwd ? "dY W" : "x W^T",
                       names[k], tiled ? "1024-row tiles" : "whole-weight scratch", t * 1e3,
                       t / plain);
            }
        for (int k = 0; k < 2; k++) { /* the other design: W decoded on chip, no scratch */
            qlin_ctx q = {qw[k], x, y, M, bwd, NULL, 0, 1};
            const double t = time_median(run_qlin, &q);
            printf("| %dx%d | %s | %s, decoded on chip (WMMA, fp32 out) | %.3f | %.2f |\n", out,
                   in, bwd ? "dY W" : "x W^T", names[k], t * 1e3, t / plain);
        }
        for (int prec = 0; prec < 4; prec++) { /* 3: bf16 with the on-chip kernels */
            qft_cuda_set_matmul_precision(prec < 3 ? prec : 2);
            qft_cuda_set_qmatmul_kernel(prec == 3);
            qmm_ctx q = {&nl, af, y, M, bwd, qscr, qscr_n};
            const double t = time_median(run_qmm, &q);
            printf("| %dx%d | %s | NF4, op qmatmul (fp32 in/out, 64 MiB scratch): %s | %.3f | "
                   "%.2f |\n", out, in, bwd ? "dY W" : "x W^T",
                   prec < 3 ? precs[prec] : "bf16, W decoded on chip", t * 1e3, t / plain);
        }
        qft_cuda_set_matmul_precision(0);
        qft_cuda_set_qmatmul_kernel(0);
    }
    G->free(af), G->free(qscr);
    G->free(packed), G->free(code), G->free(absmax), G->free(scale), G->free(zero);
    G->free(wd), G->free(x), G->free(y), G->free(scratch);
}

/* A random NF4 weight (out, in) on the device as a layout (block 64, fp32 absmax); its
 * buffers are freed by nf4_layout_free. */
static qft_qlayout nf4_layout_dev(int out, int in, uint64_t seed) {
    const int64_t n = (int64_t)out * in;
    qft_qlayout nl;
    memset(&nl, 0, sizeof nl);
    nl.format = QFT_QFMT_NF4, nl.out = out, nl.in = in, nl.nf4_blocksize = 64;
    nl.buf[QFT_QL_NF4_PACKED] = bytes_dev((size_t)n / 2, seed);
    nl.buf[QFT_QL_NF4_CODE] = rand_dev(16, 1.0f, seed + 1);
    nl.buf[QFT_QL_NF4_ABSMAX] = rand_dev((size_t)n / 64, 0.1f, seed + 2);
    return nl;
}

static void nf4_layout_free(qft_qlayout *nl) {
    G->free((void *)nl->buf[QFT_QL_NF4_PACKED]), G->free((void *)nl->buf[QFT_QL_NF4_CODE]);
    G->free((void *)nl->buf[QFT_QL_NF4_ABSMAX]);
}

/* ---- DoRA's weight norm --------------------------------------------------------------------
 * ||W_j + s B_j A|| for every row: the op table's lowrank_row_norms (one read of the packed
 * W), or the generic path the DoRA plugin takes without it (fp32 tiles of W, s B A added by
 * a GEMM, row_norms), 64 MiB tiles as on a device. */
typedef struct {
    const qft_qlayout *w;
    const float *A, *B;
    float *norm, *tile;
    int64_t r, tile_rows;
    int fused;
} norm_ctx;

static void run_norm(void *p) {
    norm_ctx *c = p;
    const int64_t out = c->w->out, in = c->w->in;
    if (c->fused) {
        G->lowrank_row_norms(c->norm, c->w, NULL, out, in, c->A, c->B, c->r, 2.0f);
        return;
    }
    for (int64_t r0 = 0; r0 < out; r0 += c->tile_rows) {
        const int64_t n = out - r0 < c->tile_rows ? out - r0 : c->tile_rows;
        G->dequantize(c->w, r0, n, c->tile);
        G->gemm(0, 0, (int)n, (int)in, (int)c->r, 2.0f, c->B + r0 * c->r, (int)c->r, c->A, (int)in,
                1.0f, c->tile, (int)in);
        G->row_norms(c->norm + r0, c->tile, in, n, in);
    }
}

static void norm_rows(void) {
    const int out = 14336, in = 4096, r = 16;
    qft_qlayout nl = nf4_layout_dev(out, in, 41);
    float *A = rand_dev((size_t)r * in, 0.02f, 44), *B = rand_dev((size_t)out * r, 0.02f, 45);
    float *norm = dalloc((size_t)out * 4), *tile = dalloc((size_t)16 << 22);
    printf("\n| DoRA weight norm, NF4 %dx%d, r = %d | ms |\n|---|---|\n", out, in, r);
    for (int fused = 1; fused >= 0; fused--) {
        norm_ctx c = {&nl, A, B, norm, tile, r, ((int64_t)16 << 20) / in, fused};
        const double t = time_median(run_norm, &c);
        printf("| %s | %.3f |\n", fused ? "lowrank_row_norms (one read of the packed W)"
                                         : "fp32 tiles + GEMM + row_norms (the generic path)",
               t * 1e3);
    }
    nf4_layout_free(&nl);
    G->free(A), G->free(B), G->free(norm), G->free(tile);
}

/* ---- DoRA's output -------------------------------------------------------------------------
 * y = f (y + s u B^T) keeping h, on gate_proj's output (N = 2048, out = 14336) at r = 16:
 * the op table's fused lowrank_out (one read of y) against the GEMM, copy and scale it
 * replaced (QFT_CUDA_LOWRANK_OUT=gemm); and the backward's dm sums with f dy, col_dot_scale
 * against col_dot + cols_axpby. */
typedef struct {
    float *y, *u, *B, *f, *h, *acc, *norm;
    int64_t N, out, r;
    int fused;
} dora_ctx;

static void run_dora_out(void *p) {
    dora_ctx *c = p;
    qft_cuda_set_lowrank_out_unfused(!c->fused);
    G->lowrank_out(c->y, c->out, c->u, c->B, c->r, 2.0f, c->f, c->h, c->N, c->out);
}

static void run_dora_bwd(void *p) {
    dora_ctx *c = p;
    if (c->fused) {
        G->col_dot_scale(c->acc, c->y, c->out, c->y, c->out, c->h, c->out, c->norm, c->f, c->N,
                         c->out);
        return;
    }
    G->col_dot(c->acc, c->y, c->out, c->h, c->out, c->norm, c->N, c->out);
    G->cols_axpby(c->y, c->out, 0.0f, c->y, c->out, c->f, 0.0f, c->N, c->out);
}

static void dora_rows(void) {
    const int64_t N = 2048, out = 14336, r = 16;
    dora_ctx c = {rand_dev((size_t)(N * out), 1.0f, 51), rand_dev((size_t)(N * r), 1.0f, 52),
                  rand_dev((size_t)(out * r), 0.02f, 53), rand_dev((size_t)out, 1.0f, 54),
                  dalloc((size_t)(N * out) * 4), rand_dev((size_t)out, 0.0f, 55),
                  rand_dev((size_t)out, 1.0f, 56), N, out, r, 1};
    printf("\n| DoRA element-wise steps, (%lld, %lld), r = %lld | ms |\n|---|---|\n",
           (long long)N, (long long)out, (long long)r);
    for (int fused = 1; fused >= 0; fused--) {
        c.fused = fused;
        printf("| forward: %s | %.3f |\n",
               fused ? "lowrank_out (fused; y read once)" : "GEMM + copy + scale",
               time_median(run_dora_out, &c) * 1e3);
    }
    qft_cuda_set_lowrank_out_unfused(0);
    for (int fused = 1; fused >= 0; fused--) {
        c.fused = fused;
        printf("| backward: %s | %.3f |\n",
               fused ? "col_dot_scale (fused)" : "col_dot + cols_axpby",
               time_median(run_dora_bwd, &c) * 1e3);
    }
    G->free(c.y), G->free(c.u), G->free(c.B), G->free(c.f), G->free(c.h), G->free(c.acc);
    G->free(c.norm);
}

/* --choose-qmatmul: the op table's qmatmul under bf16 precision with each of its two
 * kernels for NF4 weights (the bf16 scratch + cuBLASLt, and the on-chip decoding), forward
 * and input gradient of the three Llama-3-8B linears at M = 2048, as the model calls them;
 * prints the sums and, last, the QFT_CUDA_QMATMUL setting of the faster, for the GPU check
 * to run the model with ("measure both and keep the faster"). */
static int choose_qmatmul(void) {
    static const int lin[3][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    const int M = 2048;
    const size_t qscr_n = (size_t)16 << 20; /* the model's 64 MiB fp32 tile scratch */
    float *af = rand_dev((size_t)M * 14336, 1.0f, 31), *y = dalloc((size_t)M * 14336 * 4);
    float *qscr = dalloc(qscr_n * 4);
    double total[2] = {0, 0};
    qft_cuda_set_matmul_precision(2);
    for (int i = 0; i < 3; i++) {
        const int out = lin[i][0], in = lin[i][1];
        qft_qlayout nl = nf4_layout_dev(out, in, 32);
        for (int k = 0; k < 2; k++) {
            qft_cuda_set_qmatmul_kernel(k);
            for (int bwd = 0; bwd < 2; bwd++) {
                qmm_ctx q = {&nl, af, y, M, bwd, qscr, qscr_n};
                const double t = time_median(run_qmm, &q);
                total[k] += t;
                printf("qmatmul NF4 %dx%d %s, %s: %.3f ms\n", out, in, bwd ? "dY W" : "x W^T",
                       k ? "on chip" : "scratch", t * 1e3);
            }
        }
        nf4_layout_free(&nl);
    }
    qft_cuda_set_qmatmul_kernel(0);
    qft_cuda_set_matmul_precision(0);
    G->free(af), G->free(y), G->free(qscr);
    sync_or_die();
    printf("qmatmul over the three linears, both products: scratch %.3f ms, on chip %.3f ms\n",
           total[0] * 1e3, total[1] * 1e3);
    printf("QFT_CUDA_QMATMUL=%s\n", total[1] < total[0] ? "onchip" : "scratch");
    return 0;
}

/* The attention rows at Llama-3-8B's shape (B 1, T 2048, H 32, KV 8, hd 128), each kernel
 * (qft_cuda_set_attention_kernel) at its matmul precision. choose: only the two bf16
 * designs, the GEMM path and the tensor-core kernels, then, last, the QFT_CUDA_ATTENTION
 * setting of the faster (fwd + bwd), for the GPU check to run the model with. */
static int attention_table(int choose) {
    att_ctx a = {1, 2048, 32, 8, 128, NULL, NULL, NULL, NULL, NULL, NULL, 0};
    const size_t nq = (size_t)a.B * a.T * QFT_QKV_WIDTH(a.H, a.KV, a.hd);
    const size_t no = (size_t)a.B * a.T * a.H * a.hd;
    a.qkv = rand_dev(nq, 1.0f, 5), a.dout = rand_dev(no, 1.0f, 6);
    a.out = dalloc(no * 4), a.dqkv = dalloc(nq * 4), a.lse = dalloc((size_t)a.B * a.H * a.T * 4);
    a.work_n = G->attention_workspace(a.T, a.hd);
    a.work = dalloc(a.work_n * 4);
    /* causal: half of the T x T scores; forward 2 matmuls, backward counted as 2.5x */
    const double flops = 4.0 * a.B * a.H * (double)a.T * a.T * a.hd / 2;
    printf("| attention B T H KV hd | kernel | forward ms | backward ms | fwd+bwd ms "
           "| fwd TFLOP/s | bwd TFLOP/s |\n|---|---|---|---|---|---|---|\n");
    static const struct {
        const char *name;
        int kernel, precision;
    } kinds[] = {{"flash, fp32", 1, 0}, {"GEMMs, fp32", 0, 0}, {"GEMMs, TF32", 0, 1},
                 {"GEMMs, bf16", 0, 2}, {"tensor cores, bf16", 2, 2}};
    double total[5] = {0};
    for (int k = choose ? 3 : 0; k < 5; k++) {
        qft_cuda_set_attention_kernel(kinds[k].kernel);
        qft_cuda_set_matmul_precision(kinds[k].precision);
        const double tf = time_median(run_att_fwd, &a), tb = time_median(run_att_bwd, &a);
        total[k] = tf + tb;
        printf("| %d %d %d %d %d | %s | %.2f | %.2f | %.2f | %.1f | %.1f |\n", a.B, a.T, a.H,
               a.KV, a.hd, kinds[k].name, tf * 1e3, tb * 1e3, (tf + tb) * 1e3, flops / tf / 1e12,
               2.5 * flops / tb / 1e12);
    }
    printf("\n");
    qft_cuda_set_attention_kernel(0);
    qft_cuda_set_matmul_precision(0);
    G->free(a.qkv), G->free(a.dout), G->free(a.out), G->free(a.dqkv), G->free(a.lse);
    G->free(a.work);
    sync_or_die();
    if (choose) printf("QFT_CUDA_ATTENTION=%s\n", total[4] < total[3] ? "tc" : "gemm");
    return 0;
}

int main(int argc, char **argv) {
    /* a line at a time into the GPU check's tee: a run cut at its limit keeps its rows */
    setvbuf(stdout, NULL, _IOLBF, 0);
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    const int choose = argc > 1 && strcmp(argv[1], "--choose-qmatmul") == 0;
    const int choose_att = argc > 1 && strcmp(argv[1], "--choose-attention") == 0;
    if (quick || choose || choose_att) iters = 5;
    qft_err err = {0, ""};
    G = qft_cuda_ops(0, &err);
    if (!G) {
        printf("no CUDA device: skipped (%s)\n", err.msg);
        return 77;
    }
    if (choose) return choose_qmatmul();
    if (choose_att) return attention_table(1);
    printf("# qft CUDA kernels on %s\n\n", qft_cuda_device_name());

    /* buffers for the largest GEMM: 8192^2 per operand for the peak, 14336 x 4096 weights */
    const size_t big = (size_t)8192 * 8192;
    uint16_t *A = bf16_dev(big, 1.0f, 1), *B = bf16_dev(big, 1.0f, 2);
    uint16_t *Cb = dalloc(big * sizeof *Cb);
    double peak = 0;
    static const int sq[3][3] = {{8192, 8192, 8192}, {4096, 8192, 8192}, {8192, 4096, 8192}};
    printf("| bf16 GEMM (cuBLASLt, fp32 accumulate) | M | N | K | TFLOP/s | of peak |\n");
    printf("|---|---|---|---|---|---|\n");
    for (int i = 0; i < (quick ? 1 : 3); i++) {
        double t = gemm_tflops(0, 1, sq[i][0], sq[i][1], sq[i][2], A, B, Cb, 0);
        if (t > peak) peak = t;
        printf("| peak probe | %d | %d | %d | %.1f | |\n", sq[i][0], sq[i][1], sq[i][2], t);
    }
    /* Llama-3-8B linears W (out, in) at M = 2048 tokens */
    static const int lin[3][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    const int M = 2048;
    for (int i = 0; i < 3; i++) {
        const int out = lin[i][0], in = lin[i][1];
        /* forward y (M, out) = x (M, in) W^T; dX (M, in) = dY (M, out) W; dW (out, in) = dY^T x */
        double f = gemm_tflops(0, 1, M, out, in, A, B, Cb, 0);
        double dx = gemm_tflops(0, 0, M, in, out, A, B, Cb, 0);
        double dw = gemm_tflops(1, 0, out, in, M, A, B, Cb, 0);
        printf("| W %dx%d forward x W^T | %d | %d | %d | %.1f | %.0f%% |\n", out, in, M, out, in, f,
               100 * f / peak);
        printf("| W %dx%d input grad dY W | %d | %d | %d | %.1f | %.0f%% |\n", out, in, M, in, out,
               dx, 100 * dx / peak);
        printf("| W %dx%d weight grad dY^T x | %d | %d | %d | %.1f | %.0f%% |\n", out, in, out, in,
               M, dw, 100 * dw / peak);
    }
    G->free(Cb);
    G->free(A), G->free(B);
    {
        float *Af = rand_dev((size_t)M * 4096, 1.0f, 3), *Bf = rand_dev((size_t)4096 * 4096, 1.0f, 4);
        float *Cf = dalloc((size_t)M * 4096 * sizeof *Cf);
        double t = gemm_tflops(0, 1, M, 4096, 4096, (const uint16_t *)Af, (const uint16_t *)Bf, Cf, 1);
        printf("| op table fp32 GEMM (no TF32), x W^T | %d | 4096 | 4096 | %.1f | %.0f%% |\n", M, t,
               100 * t / peak);
        G->free(Af), G->free(Bf), G->free(Cf);
    }
    printf("\npeak = the best bf16 probe above: %.1f TFLOP/s\n\n", peak);

    /* attention, Llama-3-8B shape: the flash kernels, the GEMM path at each matmul
     * precision (its products in cuBLASLt; fp32, TF32, bf16), the bf16 tensor-core kernels */
    attention_table(0);

    /* NF4 dequantization of a 14336 x 4096 weight */
    {
        const int64_t n = (int64_t)14336 * 4096, bs = 64, nb = n / bs, nn = (nb + 255) / 256;
        uint8_t *hp = malloc((size_t)n / 2), *hq = malloc((size_t)nb);
        if (!hp || !hq) die("host allocation", NULL);
        uint64_t s = 99;
        for (int64_t i = 0; i < n / 2; i++) hp[i] = (uint8_t)((s = s * 6364136223846793005ULL + 1) >> 56);
        for (int64_t i = 0; i < nb; i++) hq[i] = (uint8_t)((s = s * 6364136223846793005ULL + 1) >> 56);
        uint8_t *dp = dalloc((size_t)n / 2), *dq = dalloc((size_t)nb);
        if (qft_cuda_upload(dp, hp, (size_t)n / 2, &err) || qft_cuda_upload(dq, hq, (size_t)nb, &err))
            die("upload", &err);
        float *code = rand_dev(16, 1.0f, 7), *absmax = rand_dev((size_t)nb, 1.0f, 8);
        float *nested = rand_dev((size_t)nn, 0.01f, 9), *map = rand_dev(256, 1.0f, 10);
        void *out = dalloc((size_t)n * 4);
        printf("| NF4 dequantize 14336x4096 (block 64) | absmax | out | ms | GB/s |\n"
               "|---|---|---|---|---|\n");
        for (int dqnt = 0; dqnt < 2; dqnt++)
            for (int o = 0; o < 2; o++) {
                nf4_ctx c = {{dp, code, dqnt ? NULL : absmax, dqnt ? dq : NULL, dqnt ? nested : NULL,
                              dqnt ? map : NULL, 0.01f, (int)bs, n},
                             out, o ? QFT_DT_F32 : QFT_DT_BF16};
                const double t = time_median(run_nf4, &c);
                const double bytes = (double)n / 2 + (double)nb * (dqnt ? 1 : 4) +
                                     (double)n * (o ? 4 : 2);
                printf("| | %s | %s | %.3f | %.0f |\n", dqnt ? "double-quantized" : "fp32",
                       o ? "fp32" : "bf16", t * 1e3, bytes / t / 1e9);
            }
        G->free(dp), G->free(dq), G->free(code), G->free(absmax), G->free(nested), G->free(map);
        G->free(out);
        free(hp), free(hq);
    }
    /* HQQ dequantization of a 14336 x 4096 weight, 4-bit, group 64, axis 1 */
    {
        const int64_t n = (int64_t)14336 * 4096, ng = n / 64;
        uint8_t *dp = bytes_dev((size_t)n / 2, 21), *zq = bytes_dev((size_t)ng, 22);
        uint8_t *sq = bytes_dev((size_t)ng, 23);
        float *scale = rand_dev((size_t)ng, 0.01f, 24), *zero = rand_dev((size_t)ng, 8.0f, 25);
        float *smeta = rand_dev((size_t)2 * (ng / 128), 0.01f, 26);
        void *out = dalloc((size_t)n * 4);
        printf("\n| HQQ dequantize 14336x4096 (4-bit, group 64, axis 1) | scale/zero | out | ms | "
               "GB/s |\n|---|---|---|---|---|\n");
        for (int meta = 0; meta < 2; meta++)
            for (int o = 0; o < 2; o++) {
                hqq_ctx c = {{dp, meta ? NULL : scale, meta ? NULL : zero, meta ? zq : NULL,
                              {0.05f, 3.0f}, meta ? sq : NULL, meta ? smeta : NULL, 4, 64, 1, n},
                             out, o ? QFT_DT_F32 : QFT_DT_BF16};
                const double t = time_median(run_hqq, &c);
                const double bytes = (double)n / 2 + (double)ng * (meta ? 2 : 8) +
                                     (double)n * (o ? 4 : 2);
                printf("| | %s | %s | %.3f | %.0f |\n", meta ? "8-bit meta-quantized" : "fp32",
                       o ? "fp32" : "bf16", t * 1e3, bytes / t / 1e9);
            }
        G->free(dp), G->free(zq), G->free(sq), G->free(scale), G->free(zero), G->free(smeta);
        G->free(out);
    }

    /* the quantized linear: dequantize into the bf16 scratch + cuBLASLt, against plain bf16 */
    printf("\n| quantized linear W (out x in), M = 2048 | product | weight, scratch | ms | "
           "vs plain |\n|---|---|---|---|---|\n");
    for (int i = 0; i < 3; i++) qlinear_rows(lin[i][0], lin[i][1], M);
    norm_rows();
    dora_rows();

    sync_or_die();
    printf("\ndevice memory in use at the end: %.2f GiB\n", (double)qft_cuda_mem_used() / (1 << 30));
    return 0;
}
