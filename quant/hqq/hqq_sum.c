/* torch's fp32 summation order on the CPU (ATen's cascade_sum with 8-float vectors), so
 * that the refined zero point, a mean over each group, is torch's float to the last bit.
 * Inner: a contiguous run. Outer: one column of a row-major (rows, ncols) matrix, where
 * torch sums columns in blocks of 32 with four partial-sum levels over the rows, and the
 * columns past the last full block with four interleaved row accumulators. Beyond 32768
 * elements torch may split a sum across threads; there this stays serial (the early-stop
 * comparison and a few codes may then differ, within the fixture's tolerance). */
#include "hqq.h"

#include <string.h>

static int ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int b = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1) b++;
    return b;
}

/* Sum of `size` rows of m floats each, rows rstride apart, with torch's levels. */
static void multi_row_sum(const float *base, int64_t rstride, int64_t istride, int m,
                          int64_t size, float *out) {
    float acc[4][32] = {{0}};
    const int lp = ceil_log2(size) / 4 > 4 ? ceil_log2(size) / 4 : 4;
    const int64_t step = (int64_t)1 << lp, mask = step - 1;
    int64_t i = 0;
    while (i + step <= size) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < m; k++) acc[0][k] += base[i * rstride + k * istride];
        for (int j = 1; j < 4; j++) {
            for (int k = 0; k < m; k++) {
                acc[j][k] += acc[j - 1][k];
                acc[j - 1][k] = 0.0f;
            }
            if (i & (mask << (j * lp))) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < m; k++) acc[0][k] += base[i * rstride + k * istride];
    for (int j = 1; j < 4; j++)
        for (int k = 0; k < m; k++) acc[0][k] += acc[j][k];
    memcpy(out, acc[0], (size_t)m * sizeof(float));
}

/* row_sum with four interleaved accumulators over `size` items `stride` apart. */
static float row_sum_ilp(const float *x, int64_t stride, int64_t size) {
    float ps[4] = {0};
    const int64_t si = size / 4;
    if (si > 0) multi_row_sum(x, 4 * stride, stride, 4, si, ps);
    for (int64_t i = si * 4; i < size; i++) ps[0] += x[i * stride];
    for (int k = 1; k < 4; k++) ps[0] += ps[k];
    return ps[0];
}

float hqq_torch_sum_inner(const float *x, int64_t n) {
    if (n < 8) return 0.0f + row_sum_ilp(x, 1, n);
    float ps[32] = {0}; // (4, 8) vector partial sums
    const int64_t vs = n / 8, si = vs / 4;
    if (si > 0) multi_row_sum(x, 32, 1, 32, si, ps);
    for (int64_t i = si * 4; i < vs; i++)
        for (int l = 0; l < 8; l++) ps[l] += x[i * 8 + l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < 8; l++) ps[l] += ps[k * 8 + l];
    float fa = 0.0f;
    for (int64_t i = vs * 8; i < n; i++) fa += x[i];
    for (int l = 0; l < 8; l++) fa += ps[l];
    return 0.0f + fa;
}

float hqq_torch_sum_outer(const float *x, int64_t rows, int64_t ncols, int64_t col) {
    /* under 8 columns torch's scalar path takes columns four at a time, then singly */
    const int64_t blocked = ncols < 8 ? ncols / 4 * 4 : ncols / 32 * 32;
    if (col < blocked) {
        float s;
        multi_row_sum(x + col, ncols, 1, 1, rows, &s);
        return 0.0f + s;
    }
    return 0.0f + row_sum_ilp(x + col, ncols, rows);
}
