// HQQ dequantization into an fp32 or bf16 tile, the HQQ half of the quantized linear's
// scratch path. Values are bit-identical to the hqq plugin's hqq_dequantize_range: the
// code unpacking, grouping and meta-quantized scale/zero are cuda_twin.h's, with every
// subtract and multiply rounded separately.
#include "cuda_internal.h"

#include <cuda_bf16.h>

namespace {
// Each thread writes PER consecutive outputs; with axis 1 they almost always share a group,
// whose scale and zero are then read once (a group change inside the run is handled).
const int PER = 4;
const int TPB = 256;

template <typename Out> __device__ Out convert(float v);
template <> __device__ float convert<float>(float v) { return v; }
template <> __device__ __nv_bfloat16 convert<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

template <typename Out>
__global__ void hqq_dequant_kernel(qft_cuda_hqq w, qft_twin_hqq_geom g, int64_t f0, int64_t count,
                                   Out *dst) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * PER;
    for (int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * PER; o < count;
         o += stride) {
        const int64_t end = o + PER < count ? o + PER : count;
        int64_t grp = -1;
        float z = 0.0f, s = 0.0f;
        for (int64_t e = o; e < end; e++) {
            const int64_t f = f0 + e; // flattened element
            const int64_t r = f / g.C, c = f - r * g.C;
            const int64_t gi = qft_twin_hqq_group(&g, r, c);
            if (gi != grp) {
                grp = gi;
                z = qft_twin_hqq_zero(w.zero, w.zero_q, w.zero_meta[0], w.zero_meta[1], gi);
                s = qft_twin_hqq_scale(w.scale, w.scale_q, w.scale_meta, g.n_groups, gi);
            }
            dst[e] = convert<Out>(qft_twin_hqq_value(qft_twin_hqq_code(w.packed, &g, r, c), z, s));
        }
    }
}
} // namespace

extern "C" int qft_cuda_hqq_dequantize(const qft_cuda_hqq *w, int64_t f0, int64_t count,
                                       void *dst, qft_dtype out_dtype, qft_err *err) {
    if (out_dtype != QFT_DT_F32 && out_dtype != QFT_DT_BF16)
        return qft_err_setf(err, "qft_cuda_hqq_dequantize: output must be f32 or bf16 (dtype %d)",
                            (int)out_dtype);
    qft_twin_hqq_geom g;
    if (qft_twin_hqq_geom_make(&g, w->nbits, w->group_size, w->axis, w->n))
        return qft_err_setf(err, "qft_cuda_hqq_dequantize: hqq cannot hold %lld elements at "
                                 "nbits %d, group_size %d, axis %d", (long long)w->n, w->nbits,
                            w->group_size, w->axis);
    if (f0 < 0 || count < 0 || f0 + count > w->n)
        return qft_err_setf(err, "qft_cuda_hqq_dequantize: range [%lld, %lld) outside a weight "
                                 "of %lld elements", (long long)f0, (long long)(f0 + count),
                            (long long)w->n);
    if (!w->packed || (!w->zero && !w->zero_q) || (!w->scale && (!w->scale_q || !w->scale_meta)))
        return qft_err_setf(err, "qft_cuda_hqq_dequantize: missing buffers (packed %s, zero or "
                                 "zero_q %s, scale or scale_q + scale_meta %s)",
                            w->packed ? "given" : "NULL", (w->zero || w->zero_q) ? "given" : "NULL",
                            (w->scale || (w->scale_q && w->scale_meta)) ? "given" : "NULL");
    if (!w->scale && g.n_groups % QFT_HQQ_META_GROUP)
        return qft_err_setf(err, "qft_cuda_hqq_dequantize: meta-quantized scales need the %lld "
                                 "groups in multiples of %d", (long long)g.n_groups,
                            QFT_HQQ_META_GROUP);
    if (g.nbits == 3 && ((uintptr_t)w->packed & 3))
        return qft_err_setf(err, "qft_cuda_hqq_dequantize: 3-bit words must be 4-byte aligned");
    if (!count) return 0;
    const unsigned blocks = qft_cuda_blocks((size_t)((count + PER - 1) / PER), TPB);
    if (out_dtype == QFT_DT_F32)
        hqq_dequant_kernel<float><<<blocks, TPB>>>(*w, g, f0, count, (float *)dst);
    else
        hqq_dequant_kernel<__nv_bfloat16><<<blocks, TPB>>>(*w, g, f0, count, (__nv_bfloat16 *)dst);
    if (CUDA_LAUNCHED()) return qft_cuda_status(err);
    return 0;
}
