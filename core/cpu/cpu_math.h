/* Private to core/cpu: an expf that GCC vectorizes inside `omp simd` loops (glibc's expf
 * is a scalar call there), for softmax, SiLU and cross-entropy, which are exp-bound. */
#ifndef QFT_CPU_MATH_H
#define QFT_CPU_MATH_H

#include <math.h>
#include <stdint.h>

/* exp(x) by x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes' expf
 * coefficients), and 2^n from the exponent bits. Relative error under 2e-7 on
 * [-87, 88]; below -87 it returns 0 (e^-87 ~ 1.6e-38 is under fp32's normal range), and
 * -INFINITY gives 0. Inputs above 88 are clamped (the callers subtract a row maximum). */
static inline float qft_cpu_expf(float x) {
    /* ternaries, not fminf/fmaxf: those keep NaN rules that stop them from inlining */
    const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f; /* ln2 split in two for an exact first step */
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { /* a union, not memcpy: GCC vectorizes this bit cast */
        int32_t i;
        float f;
    } two_n = {.i = ((int32_t)n + 127) << 23};
    return x < -87.0f ? 0.0f : p * two_n.f;
}

#endif
