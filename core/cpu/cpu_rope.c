/* Rotary position embedding in transformers' Llama convention: the head is split in two
 * halves (x1, x2) and rotated as (x1 cos - x2 sin, x2 cos + x1 sin), i.e.
 * x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1). */
#include "cpu_ops.h"

#include <math.h>

/* Follows transformers' fp32 arithmetic step by step (modeling_rope_utils:
 * _compute_default_rope_parameters, _compute_llama3_parameters; LlamaRotaryEmbedding),
 * so the table matches torch's to an ulp: inv_freq = 1 / theta^(2i/hd) in fp32, the
 * llama3 band adjustment in fp32, angle = fp32(t * inv_freq), then cos and sin. */
void qft_cpu_rope_table(float *cos_t, float *sin_t, int T, int hd, float theta, int rope_type,
                        float factor, float low_freq_factor, float high_freq_factor,
                        int original_max_pos) {
    const int half = hd / 2;
    float inv_freq[half > 0 ? half : 1]; // (hd/2)
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)hd;
        float p = (float)pow((double)theta, (double)expo);
        inv_freq[i] = 1.0f / p;
    }
    if (rope_type == QFT_OPS_ROPE_LLAMA3) {
        const float old_ctx = (float)original_max_pos;
        const float low_wl = old_ctx / low_freq_factor;  /* python float, exact enough */
        const float high_wl = old_ctx / high_freq_factor;
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i];
            float wavelen = (float)(2.0 * M_PI) / f;
            float f_llama = wavelen > low_wl ? f / factor : f;
            float smooth = (old_ctx / wavelen - low_freq_factor) /
                           (high_freq_factor - low_freq_factor);
            float smoothed = (1.0f - smooth) * f_llama / factor + smooth * f_llama;
            int medium = !(wavelen < high_wl) && !(wavelen > low_wl);
            inv_freq[i] = medium ? smoothed : f_llama;
        }
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float ang = (float)t * inv_freq[i];
            cos_t[(size_t)t * half + i] = (float)cos((double)ang); // (T, hd/2)
            sin_t[(size_t)t * half + i] = (float)sin((double)ang);
        }
}

static void rope_apply(float *x, int ld, const float *cos_t, const float *sin_t, int B, int T,
                       int nh, int hd, float sign) {
    const int half = hd / 2;
    const int rows = B * T;
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int r = 0; r < rows; r++) {
        const int t = r % T;
        const float *c = cos_t + (size_t)t * half; // (hd/2)
        const float *s = sin_t + (size_t)t * half; // (hd/2)
        for (int h = 0; h < nh; h++) {
            float *x1 = x + (size_t)r * ld + (size_t)h * hd; // (hd/2) first half of the head
            float *x2 = x1 + half;                           // (hd/2) second half
#pragma omp simd
            for (int i = 0; i < half; i++) {
                const float a = x1[i], b = x2[i], si = sign * s[i];
                x1[i] = a * c[i] - b * si;
                x2[i] = b * c[i] + a * si;
            }
        }
    }
}

void qft_cpu_rope_fwd(float *x, int ld, const float *cos_t, const float *sin_t, int B, int T,
                      int nh, int hd) {
    rope_apply(x, ld, cos_t, sin_t, B, T, nh, hd, 1.0f);
}

/* The rotation is orthogonal, so its gradient is the rotation by -angle. */
void qft_cpu_rope_bwd(float *dx, int ld, const float *cos_t, const float *sin_t, int B, int T,
                      int nh, int hd) {
    rope_apply(dx, ld, cos_t, sin_t, B, T, nh, hd, -1.0f);
}
