/* The arithmetic of bitsandbytes' 4-bit blockwise quantization on the CPU, reproduced
 * operation for operation in fp32 so that codes, absmax and dequantized values are
 * bit-identical to the peer's (see ../../shared/REFERENCE.md and the nf4 fixtures). */
#include "nf4.h"

#include <float.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

const float qft_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) as torch's fp32
 * arithmetic leaves it: copied from the fixture, since recomputing it in C rounds some
 * entries differently. */
const float qft_nf4_dynamic_map[256] = {
    -9.929687381e-01f, -9.789062738e-01f, -9.648437500e-01f, -9.507812262e-01f, -9.367187619e-01f, -9.226562381e-01f,
    -9.085937738e-01f, -8.945312500e-01f, -8.804687262e-01f, -8.664062619e-01f, -8.523437381e-01f, -8.382812738e-01f,
    -8.242187500e-01f, -8.101562262e-01f, -7.960937619e-01f, -7.820312381e-01f, -7.679687738e-01f, -7.539062500e-01f,
    -7.398437262e-01f, -7.257812619e-01f, -7.117187977e-01f, -6.976562738e-01f, -6.835937500e-01f, -6.695312262e-01f,
    -6.554687619e-01f, -6.414062977e-01f, -6.273437738e-01f, -6.132812500e-01f, -5.992187262e-01f, -5.851562619e-01f,
    -5.710937977e-01f, -5.570312738e-01f, -5.429687500e-01f, -5.289062262e-01f, -5.148437023e-01f, -5.007812381e-01f,
    -4.867187142e-01f, -4.726562500e-01f, -4.585937262e-01f, -4.445312619e-01f, -4.304687381e-01f, -4.164062440e-01f,
    -4.023437500e-01f, -3.882812262e-01f, -3.742187619e-01f, -3.601562381e-01f, -3.460937440e-01f, -3.320312500e-01f,
    -3.179687262e-01f, -3.039062619e-01f, -2.898437381e-01f, -2.757812738e-01f, -2.617187500e-01f, -2.476562411e-01f,
    -2.335937470e-01f, -2.195312530e-01f, -2.054687440e-01f, -1.914062500e-01f, -1.773437560e-01f, -1.632812470e-01f,
    -1.492187530e-01f, -1.351562440e-01f, -1.210937500e-01f, -1.070312560e-01f, -9.859374911e-02f, -9.578125924e-02f,
    -9.296875447e-02f, -9.015624970e-02f, -8.734375238e-02f, -8.453124762e-02f, -8.171875775e-02f, -7.890625298e-02f,
    -7.609374821e-02f, -7.328125089e-02f, -7.046874613e-02f, -6.765625626e-02f, -6.484375149e-02f, -6.203125045e-02f,
    -5.921875313e-02f, -5.640624836e-02f, -5.359375104e-02f, -5.078125000e-02f, -4.796874896e-02f, -4.515625164e-02f,
    -4.234374687e-02f, -3.953124955e-02f, -3.671875224e-02f, -3.390625119e-02f, -3.109375015e-02f, -2.828125097e-02f,
    -2.546874993e-02f, -2.265625075e-02f, -1.984375156e-02f, -1.703125052e-02f, -1.421875041e-02f, -1.140625030e-02f,
    -9.718749672e-03f, -9.156249464e-03f, -8.593750186e-03f, -8.031249978e-03f, -7.468749769e-03f, -6.906250026e-03f,
    -6.343749817e-03f, -5.781250075e-03f, -5.218750332e-03f, -4.656249657e-03f, -4.093749914e-03f, -3.531249706e-03f,
    -2.968749963e-03f, -2.406249987e-03f, -1.843750011e-03f, -1.281249919e-03f, -9.437500848e-04f, -8.312499849e-04f,
    -7.187500596e-04f, -6.062500761e-04f, -4.937500344e-04f, -3.812500217e-04f, -2.687500382e-04f, -1.562500111e-04f,
    -8.874999912e-05f, -6.625000242e-05f, -4.374999844e-05f, -2.124999810e-05f, -7.749999895e-06f, -3.250000191e-06f,
    -5.500000384e-07f, 0.000000000e+00f, 5.500000384e-07f, 3.250000191e-06f, 7.749999895e-06f, 2.124999810e-05f,
    4.374999844e-05f, 6.625000242e-05f, 8.874999912e-05f, 1.562500111e-04f, 2.687500382e-04f, 3.812500217e-04f,
    4.937500344e-04f, 6.062500761e-04f, 7.187500596e-04f, 8.312499849e-04f, 9.437500848e-04f, 1.281249919e-03f,
    1.843750011e-03f, 2.406249987e-03f, 2.968749963e-03f, 3.531249706e-03f, 4.093749914e-03f, 4.656249657e-03f,
    5.218750332e-03f, 5.781250075e-03f, 6.343749817e-03f, 6.906250026e-03f, 7.468749769e-03f, 8.031249978e-03f,
    8.593750186e-03f, 9.156249464e-03f, 9.718749672e-03f, 1.140625030e-02f, 1.421875041e-02f, 1.703125052e-02f,
    1.984375156e-02f, 2.265625075e-02f, 2.546874993e-02f, 2.828125097e-02f, 3.109375015e-02f, 3.390625119e-02f,
    3.671875224e-02f, 3.953124955e-02f, 4.234374687e-02f, 4.515625164e-02f, 4.796874896e-02f, 5.078125000e-02f,
    5.359375104e-02f, 5.640624836e-02f, 5.921875313e-02f, 6.203125045e-02f, 6.484375149e-02f, 6.765625626e-02f,
    7.046874613e-02f, 7.328125089e-02f, 7.609374821e-02f, 7.890625298e-02f, 8.171875775e-02f, 8.453124762e-02f,
    8.734375238e-02f, 9.015624970e-02f, 9.296875447e-02f, 9.578125924e-02f, 9.859374911e-02f, 1.070312560e-01f,
    1.210937500e-01f, 1.351562440e-01f, 1.492187530e-01f, 1.632812470e-01f, 1.773437560e-01f, 1.914062500e-01f,
    2.054687440e-01f, 2.195312530e-01f, 2.335937470e-01f, 2.476562411e-01f, 2.617187500e-01f, 2.757812738e-01f,
    2.898437381e-01f, 3.039062619e-01f, 3.179687262e-01f, 3.320312500e-01f, 3.460937440e-01f, 3.601562381e-01f,
    3.742187619e-01f, 3.882812262e-01f, 4.023437500e-01f, 4.164062440e-01f, 4.304687381e-01f, 4.445312619e-01f,
    4.585937262e-01f, 4.726562500e-01f, 4.867187142e-01f, 5.007812381e-01f, 5.148437023e-01f, 5.289062262e-01f,
    5.429687500e-01f, 5.570312738e-01f, 5.710937977e-01f, 5.851562619e-01f, 5.992187262e-01f, 6.132812500e-01f,
    6.273437738e-01f, 6.414062977e-01f, 6.554687619e-01f, 6.695312262e-01f, 6.835937500e-01f, 6.976562738e-01f,
    7.117187977e-01f, 7.257812619e-01f, 7.398437262e-01f, 7.539062500e-01f, 7.679687738e-01f, 7.820312381e-01f,
    7.960937619e-01f, 8.101562262e-01f, 8.242187500e-01f, 8.382812738e-01f, 8.523437381e-01f, 8.664062619e-01f,
    8.804687262e-01f, 8.945312500e-01f, 9.085937738e-01f, 9.226562381e-01f, 9.367187619e-01f, 9.507812262e-01f,
    9.648437500e-01f, 9.789062738e-01f, 9.929687381e-01f, 1.000000000e+00f,
};

void *nf4_alloc(const qft_services *svc, size_t bytes) {
    if (bytes == 0) bytes = 1;
    return svc && svc->alloc ? svc->alloc(bytes, "quant bnb_nf4") : malloc(bytes);
}

void nf4_free(const qft_services *svc, void *p) {
    if (!p) return;
    if (svc && svc->free)
        svc->free(p);
    else
        free(p);
}

void nf4_weight_free(struct qft_qweight *qw) {
    if (!qw) return;
    const qft_services *svc = qw->svc;
    if (!qw->placed) { /* placed buffers belong to the core */
        nf4_free(svc, qw->packed);
        nf4_free(svc, qw->absmax);
        nf4_free(svc, qw->qabsmax);
        nf4_free(svc, qw->nested_absmax);
    }
    nf4_free(svc, qw);
}

/* Index of the code for a normalised value: the number of midpoints x is strictly above
 * (torch.bucketize, right=False), so an exact tie goes to the lower code. */
static inline int nf4_bucket(const float *mids, float x) {
    int q = 0;
    q += (x > mids[q + 7]) ? 8 : 0;
    q += (x > mids[q + 3]) ? 4 : 0;
    q += (x > mids[q + 1]) ? 2 : 0;
    q += (x > mids[q]) ? 1 : 0;
    return q;
}

static inline float clamp1(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }

void nf4_quantize_blocks(const float *x, int64_t n, int blocksize, float *absmax,
                         uint8_t *packed) {
    float mids[15]; /* computed in fp32 like bitsandbytes: (code[i] + code[i+1]) / 2 */
    for (int i = 0; i < 15; i++) mids[i] = (qft_nf4_code[i] + qft_nf4_code[i + 1]) / 2.0f;
    const int64_t full = n / blocksize;                // complete blocks
    const int64_t n_blocks = (n + blocksize - 1) / blocksize;
    /* Blocks are even-sized, so no packed byte straddles two blocks; only the last
     * (partial, possibly odd) block writes a padding nibble. */
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t f0 = b * blocksize;
        const int64_t len = b < full ? blocksize : n - f0;
        const float *xb = x + f0; // (len)
        float am = 0.0f;
        for (int64_t i = 0; i < len; i++) {
            float a = fabsf(xb[i]);
            if (a > am) am = a;
        }
        /* Full blocks multiply by the reciprocal of the clamped absmax and store the
         * unclamped one; the partial last block divides and stores the clamped one. */
        const float amc = am < 1e-38f ? 1e-38f : am;
        const float r = 1.0f / amc;
        const int partial = b >= full;
        absmax[b] = partial ? amc : am;
        for (int64_t i = 0; i < len; i += 2) {
            float s0 = partial ? xb[i] / amc : xb[i] * r;
            int q0 = nf4_bucket(mids, clamp1(s0));
            int q1 = 7; /* pad: a 0.0 scaled value lands on code 7 */
            if (i + 1 < len) {
                float s1 = partial ? xb[i + 1] / amc : xb[i + 1] * r;
                q1 = nf4_bucket(mids, clamp1(s1));
            }
            packed[(f0 + i) >> 1] = (uint8_t)((q0 << 4) | q1);
        }
    }
}

/* bitsandbytes 0.50's CPU 8-bit quantizer does not search the map: it rounds the
 * normalised value onto a 65536-step grid over [-1, 1] and reads the code from a table
 * built for that grid (each step takes the code whose midpoints bracket it). So the
 * result is the nearest code except within a grid step of a midpoint; reproduced here
 * operation for operation, in fp32. */
#define NF4_LUT_SIZE 65536

static void build_lut(const float *map, uint8_t *lut) {
    float mids[255];
    for (int i = 0; i < 255; i++) mids[i] = 0.5f * (map[i] + map[i + 1]);
    int k = 0;
    for (int i = 0; i < NF4_LUT_SIZE; i++) {
        const float grid = (2.0f * (float)i) / (float)(NF4_LUT_SIZE - 1);
        const float v = -1.0f + grid;
        while (k < 255 && mids[k] < v) k++;
        lut[i] = (uint8_t)k;
    }
}

static inline uint16_t lut_index(float v) {
    v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    const float h = (v + 1.0f) * 0.5f;
    const float g = h * (float)(NF4_LUT_SIZE - 1);
    return (uint16_t)(g + 0.5f);
}

int nf4_quantize_dynamic(const float *x, int64_t n, const float *map, uint8_t *codes,
                         float *absmax) {
    uint8_t *lut = malloc(NF4_LUT_SIZE); // (65536)
    if (!lut) return -1;
    build_lut(map, lut);
    const int64_t n_blocks = (n + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t f0 = b * NF4_NESTED_BLOCK;
        const int64_t f1 = f0 + NF4_NESTED_BLOCK < n ? f0 + NF4_NESTED_BLOCK : n;
        float am = 0.0f;
        for (int64_t i = f0; i < f1; i++) am = fmaxf(am, fabsf(x[i]));
        absmax[b] = am;
        if (am == 0.0f) {
            memset(codes + f0, 0, (size_t)(f1 - f0));
            continue;
        }
        const float inv = 1.0f / am;
        for (int64_t i = f0; i < f1; i++) codes[i] = lut[lut_index(x[i] * inv)];
    }
    free(lut);
    return 0;
}

/* torch's fp32 sum on the CPU (ATen's cascade_sum as its 8-lane vector kernels run it):
 * four levels of partial sums over rows of four 8-float vectors, then the leftover
 * vectors, then the scalar tail and the eight lanes in order. Reproduced so that the
 * double-quantization offset, mean(absmax), is torch's float to the last bit. Beyond
 * 32768 elements torch splits the sum across its threads; there we stay serial. */
static int ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int b = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1) b++;
    return b;
}

/* The sum of `size` rows (each m = nrows * lanes floats, rows rstride floats apart). */
static void multi_row_sum(const float *base, int64_t rstride, int m, int64_t size, float *out) {
    float acc[4][32] = {{0}};
    const int lp = ceil_log2(size) / 4 > 4 ? ceil_log2(size) / 4 : 4;
    const int64_t step = (int64_t)1 << lp, mask = step - 1;
    int64_t i = 0;
    while (i + step <= size) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < m; k++) acc[0][k] += base[i * rstride + k];
        for (int j = 1; j < 4; j++) {
            for (int k = 0; k < m; k++) {
                acc[j][k] += acc[j - 1][k];
                acc[j - 1][k] = 0.0f;
            }
            if (i & (mask << (j * lp))) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < m; k++) acc[0][k] += base[i * rstride + k];
    for (int j = 1; j < 4; j++)
        for (int k = 0; k < m; k++) acc[0][k] += acc[j][k];
    memcpy(out, acc[0], (size_t)m * sizeof(float));
}

float nf4_torch_mean(const float *x, int64_t n) {
    float total;
    if (n < 8) {
        float ps[4] = {0};
        const int64_t si = n / 4;
        if (si > 0) multi_row_sum(x, 4, 4, si, ps);
        for (int64_t i = si * 4; i < n; i++) ps[0] += x[i];
        for (int k = 1; k < 4; k++) ps[0] += ps[k];
        total = 0.0f + ps[0];
    } else {
        float ps[32] = {0}; // (4, 8): four vector partial sums
        const int64_t vs = n / 8, si = vs / 4;
        if (si > 0) multi_row_sum(x, 32, 32, si, ps);
        for (int64_t i = si * 4; i < vs; i++)
            for (int l = 0; l < 8; l++) ps[l] += x[i * 8 + l];
        for (int k = 1; k < 4; k++)
            for (int l = 0; l < 8; l++) ps[l] += ps[k * 8 + l];
        float fa = 0.0f;
        for (int64_t i = vs * 8; i < n; i++) fa += x[i];
        for (int l = 0; l < 8; l++) fa += ps[l];
        total = 0.0f + fa;
    }
    return total / (float)n;
}

float nf4_block_absmax(const struct qft_qweight *qw, int64_t b) {
    if (!qw->double_quant) return qw->absmax[b];
    const float v = qw->nested_map[qw->qabsmax[b]] * qw->nested_absmax[b / NF4_NESTED_BLOCK];
    return v + qw->offset;
}

#ifdef __AVX512F__
/* 2 * nb weights from nb packed bytes (nb a multiple of 8), each code times a: the
 * sixteen-entry codebook sits in one register and a lane permute reads it, where the
 * scalar loop loads it once a weight. Each product is the same single fp32 multiply, so
 * the values are bit-identical to the scalar path. */
static void nf4_decode_avx512(const float *code, const uint8_t *bytes, int64_t nb, float a,
                              float *o) {
    const __m512 cb = _mm512_loadu_ps(code), va = _mm512_set1_ps(a);
    /* lane 2j holds byte j's high nibble (the earlier weight), lane 2j+1 its low one */
    const __m512i shift = _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    const __m512i m15 = _mm512_set1_epi32(15);
    int64_t j = 0;
    for (; j + 16 <= nb; j += 16, o += 32) {
        const __m128i b = _mm_loadu_si128((const __m128i *)(bytes + j)); // (16) bytes
        const __m512i lo = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b)); // (16) bytes 0..7 twice
        const __m512i hi = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(b, b)); // (16) bytes 8..15
        const __m512i q0 = _mm512_and_si512(_mm512_srlv_epi32(lo, shift), m15);
        const __m512i q1 = _mm512_and_si512(_mm512_srlv_epi32(hi, shift), m15);
        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_permutexvar_ps(q0, cb), va));
        _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_permutexvar_ps(q1, cb), va));
    }
    for (; j + 8 <= nb; j += 8, o += 16) {
        const __m128i b = _mm_loadl_epi64((const __m128i *)(bytes + j)); // (8) bytes
        const __m512i lo = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
        const __m512i q0 = _mm512_and_si512(_mm512_srlv_epi32(lo, shift), m15);
        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_permutexvar_ps(q0, cb), va));
    }
}
#endif

void nf4_dequantize_range(const struct qft_qweight *qw, int64_t f0, int64_t count, float *dst) {
    const int64_t bs = qw->blocksize;
    int64_t f = f0;
    const int64_t end = f0 + count;
    while (f < end) {
        const int64_t b = f / bs;
        const int64_t stop = (b + 1) * bs < end ? (b + 1) * bs : end; // within block b
        const float a = nf4_block_absmax(qw, b);
        float *o = dst + (f - f0); // (stop - f)
        int64_t i = f;
        if (i & 1) { /* odd start: the low nibble of a byte */
            *o++ = qw->code[qw->packed[i >> 1] & 15] * a;
            i++;
        }
#ifdef __AVX512F__
        const int64_t nb = ((stop - i) >> 1) & ~(int64_t)7; // whole bytes, 8 at a time
        if (nb) {
            nf4_decode_avx512(qw->code, qw->packed + (i >> 1), nb, a, o);
            i += 2 * nb;
            o += 2 * nb;
        }
#endif
        for (; i + 1 < stop; i += 2) {
            const uint8_t byte = qw->packed[i >> 1];
            o[0] = qw->code[byte >> 4] * a;
            o[1] = qw->code[byte & 15] * a;
            o += 2;
        }
        if (i < stop) *o = qw->code[qw->packed[i >> 1] >> 4] * a;
        f = stop;
    }
}
