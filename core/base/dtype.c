/* dtype names (safetensors spelling) and fp32 <-> bf16/f16 conversion with torch's
 * rounding (nearest, ties to even), so saved checkpoints match what torch would write. */
#include "qft_base.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} k_dtypes[QFT_DT_COUNT] = {
    [QFT_DT_F32] = {"F32", 4}, [QFT_DT_F16] = {"F16", 2},  [QFT_DT_BF16] = {"BF16", 2},
    [QFT_DT_F64] = {"F64", 8}, [QFT_DT_I8] = {"I8", 1},    [QFT_DT_U8] = {"U8", 1},
    [QFT_DT_I16] = {"I16", 2}, [QFT_DT_I32] = {"I32", 4},  [QFT_DT_I64] = {"I64", 8},
    [QFT_DT_BOOL] = {"BOOL", 1},
};

size_t qft_dtype_size(qft_dtype dt) { return dt < QFT_DT_COUNT ? k_dtypes[dt].size : 0; }
const char *qft_dtype_name(qft_dtype dt) { return dt < QFT_DT_COUNT ? k_dtypes[dt].name : "?"; }

int qft_dtype_from_name(const char *name, qft_dtype *out) {
    for (int i = 0; i < QFT_DT_COUNT; i++)
        if (strcmp(name, k_dtypes[i].name) == 0) {
            *out = (qft_dtype)i;
            return 0;
        }
    return -1;
}

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float qft_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t qft_f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float qft_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return u2f(sign);
        float v = (float)man * 0x1p-24f; /* subnormal */
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t qft_f32_to_f16(float f) {
    uint32_t u = f2u(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (a < 0x38800000u) {                                  /* subnormal or zero in f16 */
        /* value / 2^-24, rounded to nearest even by adding the magic constant */
        float v = u2f(a) + 0.5f;
        return (uint16_t)(sign | (f2u(v) - f2u(0.5f)));
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round */
    return (uint16_t)(sign | (a >> 13));
}

int qft_convert_to_f32(float *dst, const void *src, qft_dtype dt, size_t n, qft_err *err) {
    switch (dt) {
    case QFT_DT_F32: memcpy(dst, src, n * 4); return 0;
    case QFT_DT_BF16: {
        const uint16_t *s = src;
#pragma omp parallel for if (n > (1 << 16))
        for (size_t i = 0; i < n; i++) dst[i] = qft_bf16_to_f32(s[i]);
        return 0;
    }
    case QFT_DT_F16: {
        const uint16_t *s = src;
#pragma omp parallel for if (n > (1 << 16))
        for (size_t i = 0; i < n; i++) dst[i] = qft_f16_to_f32(s[i]);
        return 0;
    }
    case QFT_DT_F64: {
        const double *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return 0;
    }
    default: return qft_err_setf(err, "cannot convert dtype %s to F32", qft_dtype_name(dt));
    }
}

int qft_convert_from_f32(void *dst, qft_dtype dt, const float *src, size_t n, qft_err *err) {
    switch (dt) {
    case QFT_DT_F32: memcpy(dst, src, n * 4); return 0;
    case QFT_DT_BF16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = qft_f32_to_bf16(src[i]);
        return 0;
    }
    case QFT_DT_F16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = qft_f32_to_f16(src[i]);
        return 0;
    }
    default: return qft_err_setf(err, "cannot convert F32 to dtype %s", qft_dtype_name(dt));
    }
}
