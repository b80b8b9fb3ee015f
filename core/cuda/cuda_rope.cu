// Rotary position embedding, rotate-half convention (transformers' Llama):
// (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) over the two halves of each head.
#include "cuda_internal.h"

namespace {
// The inverse frequencies travel as a kernel argument: hd/2 <= 256 floats, no buffer.
const int HALF_MAX = 256;
struct inv_freq_arg {
    float v[HALF_MAX];
};

// cos and sin in double and rounded, as the CPU table (its libm is within an ulp of
// CUDA's double cos/sin, so the float results agree but for rare ties).
// ptxas: local memory: double cos/sin's reduction of large angles keeps 40 bytes there; the
// table is built once a run.
__global__ void rope_table_kernel(float *cos_t, float *sin_t, int T, int half, inv_freq_arg inv) {
    const size_t total = (size_t)T * half; // (T, hd/2)
    QFT_CUDA_GRID_STRIDE(e, total) {
        const int t = (int)(e / half), i = (int)(e % half);
        const float ang = qft_twin_rope_angle(t, inv.v[i]);
        cos_t[e] = (float)cos((double)ang);
        sin_t[e] = (float)sin((double)ang);
    }
}

// One thread per (row, head, i < hd/2) pair of elements; sign -1 rotates back (backward).
__global__ void rope_apply_kernel(float *x, int ld, const float *cos_t, const float *sin_t,
                                  int rows, int T, int nh, int hd, float sign) {
    const int half = hd / 2;
    const size_t total = (size_t)rows * nh * half;
    QFT_CUDA_GRID_STRIDE(e, total) {
        const int i = (int)(e % half);
        const size_t rh = e / half;
        const int h = (int)(rh % nh), r = (int)(rh / nh), t = r % T;
        float *x1 = x + (size_t)r * ld + (size_t)h * hd; // (hd/2) first half of the head
        const float c = cos_t[(size_t)t * half + i], s = sign * sin_t[(size_t)t * half + i];
        const float a = x1[i], b = x1[i + half];
        x1[i] = a * c - b * s;
        x1[i + half] = b * c + a * s;
    }
}

void rope_apply(float *x, int ld, const float *cos_t, const float *sin_t, int B, int T, int nh,
                int hd, float sign) {
    const size_t total = (size_t)B * T * nh * (hd / 2);
    if (!total) return;
    rope_apply_kernel<<<qft_cuda_grid_for(total), QFT_CUDA_TPB>>>(x, ld, cos_t, sin_t, B * T, T,
                                                                  nh, hd, sign);
    CUDA_LAUNCHED();
}
} // namespace

void qft_cuda_rope_table(float *cos_t, float *sin_t, int T, int hd, float theta, int rope_type,
                         float factor, float low_freq_factor, float high_freq_factor,
                         int original_max_pos) {
    const int half = hd / 2;
    if (T <= 0 || half <= 0) return;
    if (half > HALF_MAX) {
        qft_cuda_fail("rope_table", __FILE__, __LINE__, "head_dim over 512 is not supported");
        return;
    }
    inv_freq_arg inv;
    qft_twin_rope_inv_freq(inv.v, hd, theta, rope_type, factor, low_freq_factor,
                           high_freq_factor, original_max_pos);
    rope_table_kernel<<<qft_cuda_grid_for((size_t)T * half), QFT_CUDA_TPB>>>(cos_t, sin_t, T, half,
                                                                             inv);
    CUDA_LAUNCHED();
}

void qft_cuda_rope_fwd(float *x, int ld, const float *cos_t, const float *sin_t, int B, int T,
                       int nh, int hd) {
    rope_apply(x, ld, cos_t, sin_t, B, T, nh, hd, 1.0f);
}

// The rotation is orthogonal: its gradient is the rotation by the opposite angle.
void qft_cuda_rope_bwd(float *dx, int ld, const float *cos_t, const float *sin_t, int B, int T,
                       int nh, int hd) {
    rope_apply(dx, ld, cos_t, sin_t, B, T, nh, hd, -1.0f);
}
