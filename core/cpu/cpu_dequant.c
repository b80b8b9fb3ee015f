/* The CPU backend's `dequantize` and `has_qformat` (qft_ops.h): rows of a packed weight
 * described by a qft_qlayout (bitsandbytes NF4, hqq), decoded to fp32.
 *
 * The element arithmetic is cuda_twin.h's, the very functions the CUDA kernels run, which
 * tests/cuda checks against the quantizer plugins; so the CPU and CUDA backends and the
 * plugin's dequantize_rows give the same bits. That needs every multiply and add rounded
 * on its own: this file is built in qft_cpu_optim, without floating-point contraction
 * (core/cpu/meson.build).
 *
 * The flattened range is cut into fixed chunks, one OpenMP iteration each, so every
 * output is written once by one thread and the result does not depend on scheduling. */
#include "cpu_ops.h"
#include "cuda_twin.h"

#include "qft_base.h"

#include <math.h>

/* Elements per parallel chunk: large enough that a chunk's block or group look-ups are
 * amortised, small enough that a few rows still spread over the threads. */
#define DEQ_CHUNK 16384
#define DEQ_PAR_MIN (4 * DEQ_CHUNK)

int qft_cpu_has_qformat(int format) {
    return format == QFT_QFMT_NF4 || format == QFT_QFMT_HQQ || format == QFT_QFMT_BF16;
}

/* Elements [f0, f0 + count) of an NF4 weight into dst (count). */
static void nf4_range(const qft_qlayout *w, int64_t f0, int64_t count, float *dst) {
    const uint8_t *packed = w->buf[QFT_QL_NF4_PACKED];     // ((n + 1) / 2)
    const float *code = w->buf[QFT_QL_NF4_CODE];           // (16)
    const float *absmax = w->buf[QFT_QL_NF4_ABSMAX];       // (n_blocks) or NULL
    const uint8_t *qabsmax = w->buf[QFT_QL_NF4_QABSMAX];   // (n_blocks) when double-quantized
    const float *nested = w->buf[QFT_QL_NF4_NESTED_ABSMAX];// (ceil(n_blocks / 256))
    const float *map = w->buf[QFT_QL_NF4_NESTED_MAP];      // (256)
    const int64_t bs = w->nf4_blocksize, end = f0 + count;
    for (int64_t f = f0; f < end;) {
        const int64_t b = f / bs;
        const int64_t stop = (b + 1) * bs < end ? (b + 1) * bs : end; // within block b
        const float a = qft_twin_nf4_absmax(absmax, qabsmax, nested, map, w->nf4_offset, b);
        for (; f < stop; f++) dst[f - f0] = qft_twin_mul(code[qft_twin_nf4_code(packed, f)], a);
    }
}

/* Elements [f0, f0 + count) of an HQQ weight of geometry g into dst (count), walked along
 * the rows of the grouped matrix (R, C). */
static void hqq_range(const qft_qlayout *w, const qft_twin_hqq_geom *g, int64_t f0,
                      int64_t count, float *dst) {
    const uint8_t *packed = w->buf[QFT_QL_HQQ_PACKED];   // (packed_rows, C) codes
    const float *scale = w->buf[QFT_QL_HQQ_SCALE];       // (n_groups) or NULL
    const float *zero = w->buf[QFT_QL_HQQ_ZERO];         // (n_groups) or NULL
    const uint8_t *zero_q = w->buf[QFT_QL_HQQ_ZERO_Q];   // (n_groups) when zero is NULL
    const uint8_t *scale_q = w->buf[QFT_QL_HQQ_SCALE_Q]; // (n_groups) when scale is NULL
    const float *meta = w->buf[QFT_QL_HQQ_SCALE_META];   // (2, n_groups / 128)
    const float mz_scale = w->hqq_zero_meta[0], mz_zero = w->hqq_zero_meta[1];
    const int64_t C = g->C, end = f0 + count;
    for (int64_t f = f0; f < end;) {
        const int64_t r = f / C;
        const int64_t stop = (r + 1) * C < end ? (r + 1) * C : end; // within grouped row r
        if (g->axis == 1) { /* the row is one group */
            const float z = qft_twin_hqq_zero(zero, zero_q, mz_scale, mz_zero, r);
            const float s = qft_twin_hqq_scale(scale, scale_q, meta, g->n_groups, r);
            for (; f < stop; f++)
                dst[f - f0] = qft_twin_hqq_value(qft_twin_hqq_code(packed, g, r, f - r * C), z, s);
        } else { /* every column its own group */
            for (; f < stop; f++) {
                const int64_t c = f - r * C, gi = qft_twin_hqq_group(g, r, c);
                const float z = qft_twin_hqq_zero(zero, zero_q, mz_scale, mz_zero, gi);
                const float s = qft_twin_hqq_scale(scale, scale_q, meta, g->n_groups, gi);
                dst[f - f0] = qft_twin_hqq_value(qft_twin_hqq_code(packed, g, r, c), z, s);
            }
        }
    }
}

/* Elements [f0, f0 + count) of a bf16 weight into dst (count): exact, bf16 is fp32's top
 * half. */
static void bf16_range(const qft_qlayout *w, int64_t f0, int64_t count, float *dst) {
    const uint16_t *v = w->buf[QFT_QL_BF16_VALUES]; // (out * in)
    for (int64_t i = 0; i < count; i++) dst[i] = qft_bf16_to_f32(v[f0 + i]);
}

/* 1 when w can be decoded for rows [row0, row0 + n): a known format with its buffers, a
 * geometry the format holds, rows inside the weight. */
static int layout_ok(const qft_qlayout *w, int64_t row0, int64_t n, qft_twin_hqq_geom *g) {
    if (!w || w->out <= 0 || w->in <= 0 || row0 < 0 || n < 0 || row0 + n > w->out) return 0;
    const void *const *b = w->buf;
    if (w->format == QFT_QFMT_BF16) return b[QFT_QL_BF16_VALUES] != NULL;
    if (w->format == QFT_QFMT_NF4)
        return w->nf4_blocksize > 0 && b[QFT_QL_NF4_PACKED] && b[QFT_QL_NF4_CODE] &&
               (b[QFT_QL_NF4_ABSMAX] || (b[QFT_QL_NF4_QABSMAX] && b[QFT_QL_NF4_NESTED_ABSMAX] &&
                                         b[QFT_QL_NF4_NESTED_MAP]));
    if (w->format != QFT_QFMT_HQQ) return 0;
    if (qft_twin_hqq_geom_make(g, w->hqq_nbits, w->hqq_group_size, w->hqq_axis,
                               w->out * w->in))
        return 0;
    if (!b[QFT_QL_HQQ_PACKED] || (!b[QFT_QL_HQQ_ZERO] && !b[QFT_QL_HQQ_ZERO_Q])) return 0;
    if (b[QFT_QL_HQQ_SCALE]) return 1;
    return b[QFT_QL_HQQ_SCALE_Q] && b[QFT_QL_HQQ_SCALE_META] &&
           g->n_groups % QFT_HQQ_META_GROUP == 0;
}

/* The entry returns void, so a layout it cannot decode (which the core rules out with
 * has_qformat and its own shape checks) yields NaN rows: loud in any loss, never a
 * plausible weight. */
void qft_cpu_dequantize(const qft_qlayout *w, int64_t row0, int64_t n, float *dst) {
    qft_twin_hqq_geom g = {0};
    if (!dst || n <= 0) return;
    if (!layout_ok(w, row0, n, &g)) {
        if (w && w->in > 0)
            for (int64_t i = 0; i < n * w->in; i++) dst[i] = NAN; // (n, in)
        return;
    }
    const int64_t f0 = row0 * w->in, total = n * w->in; // elements of the flattened weight
    const int64_t chunks = (total + DEQ_CHUNK - 1) / DEQ_CHUNK;
    const int hqq = w->format == QFT_QFMT_HQQ, bf16 = w->format == QFT_QFMT_BF16;
#pragma omp parallel for schedule(static) if (total >= DEQ_PAR_MIN)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t lo = k * DEQ_CHUNK;
        const int64_t cnt = total - lo < DEQ_CHUNK ? total - lo : DEQ_CHUNK;
        if (bf16) bf16_range(w, f0 + lo, cnt, dst + lo);
        else if (hqq) hqq_range(w, &g, f0 + lo, cnt, dst + lo);
        else nf4_range(w, f0 + lo, cnt, dst + lo);
    }
}

/* Tiles of W's rows through the scratch: the forward's tiles fill their own columns of c,
 * the backward's partial products over W's rows accumulate in c, the first with beta. */
void qft_cpu_qmatmul(const qft_qlayout *w, int backward, const float *a, int64_t lda, int64_t N,
                     float *c, int64_t ldc, float beta, float *scratch, size_t scratch_floats) {
    const int64_t in = w->in, out = w->out;
    int64_t tr = (int64_t)(scratch_floats / (size_t)in);
    tr = tr < out ? (tr > 0 ? tr : 1) : out;
    for (int64_t r0 = 0; r0 < out; r0 += tr) {
        const int64_t n = out - r0 < tr ? out - r0 : tr;
        qft_cpu_dequantize(w, r0, n, scratch); // (n, in)
        if (!backward)
            qft_cpu_gemm(0, 1, (int)N, (int)n, (int)in, 1.0f, a, (int)lda, scratch, (int)in, beta,
                         c + r0, (int)ldc);
        else
            qft_cpu_gemm(0, 0, (int)N, (int)in, (int)n, 1.0f, a + r0, (int)lda, scratch, (int)in,
                         r0 ? 1.0f : beta, c, (int)ldc);
    }
}
