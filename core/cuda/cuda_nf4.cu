// bitsandbytes NF4 dequantization into an fp32 or bf16 tile: the building block of the
// fused quantized linear (a tile of W dequantized on the device, then cuBLASLt). Values are
// bit-identical to the bnb_nf4 plugin's nf4_dequantize_range: the code and absmax
// arithmetic is cuda_twin.h's, with multiplies and adds rounded separately.
#include "cuda_internal.h"

#include <cuda_bf16.h>

namespace {
// Each thread writes PER consecutive outputs (one packed byte when f0 is even), so a
// warp's stores are contiguous; the 16-entry codebook sits in shared memory.
const int PER = 2;
const int TPB = 256;

template <typename Out> __device__ Out convert(float v);
template <> __device__ float convert<float>(float v) { return v; }
template <> __device__ __nv_bfloat16 convert<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

template <typename Out>
__global__ void nf4_dequant_kernel(qft_cuda_nf4 w, int64_t f0, int64_t count, Out *dst) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
    __syncthreads();
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * PER;
    for (int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * PER; o < count;
         o += stride) {
        const int64_t end = o + PER < count ? o + PER : count;
        int64_t blk = -1;
        float a = 0.0f;
        for (int64_t e = o; e < end; e++) {
            const int64_t i = f0 + e; // flattened element
            const int64_t b = i / w.blocksize;
            if (b != blk) {
                blk = b;
                a = qft_twin_nf4_absmax(w.absmax, w.qabsmax, w.nested_absmax, w.nested_map,
                                        w.offset, b);
            }
            dst[e] = convert<Out>(qft_twin_mul(code[qft_twin_nf4_code(w.packed, i)], a));
        }
    }
}
} // namespace

extern "C" int qft_cuda_nf4_dequantize(const qft_cuda_nf4 *w, int64_t f0, int64_t count,
                                       void *dst, qft_dtype out_dtype, qft_err *err) {
    if (out_dtype != QFT_DT_F32 && out_dtype != QFT_DT_BF16)
        return qft_err_setf(err, "qft_cuda_nf4_dequantize: output must be f32 or bf16 (dtype %d)",
                            (int)out_dtype);
    if (w->blocksize <= 0 || f0 < 0 || count < 0 || f0 + count > w->n)
        return qft_err_setf(err, "qft_cuda_nf4_dequantize: range [%lld, %lld) outside a weight "
                                 "of %lld elements (blocksize %d)", (long long)f0,
                            (long long)(f0 + count), (long long)w->n, w->blocksize);
    if (!w->absmax && (!w->qabsmax || !w->nested_absmax || !w->nested_map))
        return qft_err_setf(err, "qft_cuda_nf4_dequantize: neither absmax nor the double-"
                                 "quantized absmax (qabsmax, nested_absmax, nested_map) given");
    if (!count) return 0;
    const unsigned blocks = qft_cuda_blocks((size_t)((count + PER - 1) / PER), TPB);
    if (out_dtype == QFT_DT_F32)
        nf4_dequant_kernel<float><<<blocks, TPB>>>(*w, f0, count, (float *)dst);
    else
        nf4_dequant_kernel<__nv_bfloat16><<<blocks, TPB>>>(*w, f0, count, (__nv_bfloat16 *)dst);
    if (CUDA_LAUNCHED()) return qft_cuda_status(err);
    return 0;
}
