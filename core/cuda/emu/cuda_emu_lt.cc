// The emulator's cuBLASLt: the calls cuda_gemm.cu makes, with their real signatures, and
// a reference GEMM (OpenBLAS's sgemm on fp32 copies of the operands) behind cublasLtMatmul. Column-major D = alpha op(A) op(B) + beta C over
// strided batches, fp32 accumulation; A and B fp32 or bf16, C and D fp32 or bf16. Under
// CUBLAS_COMPUTE_32F_FAST_16BF (or _TF32) the fp32 inputs are rounded to bf16 (or TF32)
// first, as the tensor cores read them. What cuBLASLt checks is checked: the layouts'
// shapes against the operation, the data and compute types, that every matrix and the
// workspace are device memory, and that each pointer has the alignment the algorithm was
// chosen for (the heuristic's preference), since an algorithm used on a pointer it was not
// chosen for may fault on a GPU. With beta = 0, C is not read (it may hold NaN).
#include "cuda_emu_internal.h"

#include <cblas.h>
#include <cublasLt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

using namespace qft_emu;

namespace {
struct emu_desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t ta, tb;
};
struct emu_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch;
    int64_t stride;
};
struct emu_pref {
    size_t ws;
    uint32_t align[4]; // A, B, C, D
};
// what the heuristic's algorithm remembers: the alignments it was chosen for
struct emu_algo {
    uint32_t magic;
    uint32_t align[4];
};
const uint32_t ALGO_MAGIC = 0x71f7e3u;

cublasStatus_t bad(const char *call, const char *why) {
    fprintf(stderr, "qft cuda emulator: %s: %s\n", call, why);
    return CUBLAS_STATUS_INVALID_VALUE;
}

size_t esize(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

float round_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&x, &u, 4);
    return x;
}

float load(const void *p, cudaDataType_t t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

void store(void *p, cudaDataType_t t, size_t i, float v) {
    if (t == CUDA_R_32F)
        ((float *)p)[i] = v;
    else
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
}

// Elements from a matrix's first to its last (layout l): (cols - 1) ld + rows.
size_t span_of(const emu_layout *l) { return (l->cols - 1) * (size_t)l->ld + l->rows; }

// Problem p's matrix of a strided batch starting at base (layout l).
const void *problem_at(const void *base, const emu_layout *l, int32_t p) {
    return (const char *)base + p * l->stride * (int64_t)esize(l->type);
}

// The matrix at p (layout l) as fp32 in its own layout: p itself when it is fp32 and the
// compute type reads it unrounded, else a copy in buf, bf16 widened, or rounded to bf16
// (r16) or TF32 (r32).
const float *as_f32(const void *p, const emu_layout *l, bool r16, bool r32, std::vector<float> &buf) {
    if (l->type == CUDA_R_32F && !r16 && !r32) return (const float *)p;
    buf.resize(span_of(l));
    for (uint64_t c = 0; c < l->cols; c++)
        for (uint64_t r = 0; r < l->rows; r++) {
            const size_t i = r + c * (size_t)l->ld;
            const float v = load(p, l->type, i);
            buf[i] = r16 ? round_bf16(v) : r32 ? round_tf32(v) : v;
        }
    return buf.data();
}

bool aligned(const void *p, uint32_t a) { return a <= 1 || (uintptr_t)p % a == 0; }

// op(X)'s shape from X's layout
void op_shape(const emu_layout *l, cublasOperation_t op, uint64_t *r, uint64_t *c) {
    *r = op == CUBLAS_OP_N ? l->rows : l->cols;
    *c = op == CUBLAS_OP_N ? l->cols : l->rows;
}

const char *check_problem(const emu_desc *d, const emu_layout *a, const emu_layout *b,
                          const emu_layout *c, const emu_layout *dl) {
    uint64_t m, k, k2, n;
    op_shape(a, d->ta, &m, &k);
    op_shape(b, d->tb, &k2, &n);
    if (k != k2) return "op(A) and op(B) disagree on K";
    if (c->rows != m || c->cols != n || dl->rows != m || dl->cols != n) return "C or D is not M x N";
    for (const emu_layout *l : {a, b, c, dl})
        if (l->ld < (int64_t)l->rows || l->ld < 1) return "a leading dimension below the rows";
    if (a->type != b->type) return "A and B of different types";
    if (a->type != CUDA_R_32F && a->type != CUDA_R_16BF) return "A/B neither fp32 nor bf16";
    if (c->type != dl->type || (c->type != CUDA_R_32F && c->type != CUDA_R_16BF)) return "C/D types";
    if (d->scale != CUDA_R_32F) return "a scale type other than fp32";
    if (d->compute == CUBLAS_COMPUTE_32F_FAST_16BF || d->compute == CUBLAS_COMPUTE_32F_FAST_TF32) {
        if (a->type != CUDA_R_32F) return "a fast fp32 compute type on bf16 inputs";
    } else if (d->compute != CUBLAS_COMPUTE_32F) {
        return "a compute type the emulator does not model";
    }
    const int32_t nb = a->batch;
    if (b->batch != nb || c->batch != nb || dl->batch != nb) return "batch counts differ";
    return NULL;
}
} // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    static int the_handle;
    *h = (cublasLtHandle_t)&the_handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }

const char *cublasLtGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "a cuBLASLt status of the emulator";
    }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
    emu_desc *e = new emu_desc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N};
    *d = (cublasLtMatmulDesc_t)e;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete (emu_desc *)d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a,
                                              const void *buf, size_t size) {
    emu_desc *e = (emu_desc *)d;
    if (a == CUBLASLT_MATMUL_DESC_TRANSA || a == CUBLASLT_MATMUL_DESC_TRANSB) {
        if (size != sizeof(cublasOperation_t)) return bad("cublasLtMatmulDescSetAttribute", "size");
        cublasOperation_t op;
        memcpy(&op, buf, sizeof op);
        if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return bad("cublasLtMatmulDescSetAttribute", "op");
        (a == CUBLASLT_MATMUL_DESC_TRANSA ? e->ta : e->tb) = op;
        return CUBLAS_STATUS_SUCCESS;
    }
    return bad("cublasLtMatmulDescSetAttribute", "an attribute the emulator does not model");
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    *l = (cublasLtMatrixLayout_t) new emu_layout{type, rows, cols, ld, 1, 0};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete (emu_layout *)l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a,
                                                const void *buf, size_t size) {
    emu_layout *e = (emu_layout *)l;
    if (a == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT && size == sizeof(int32_t)) {
        memcpy(&e->batch, buf, size);
        return e->batch >= 1 ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatrixLayoutSetAttribute", "batch count");
    }
    if (a == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET && size == sizeof(int64_t)) {
        memcpy(&e->stride, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    return bad("cublasLtMatrixLayoutSetAttribute", "an attribute (or size) the emulator does not model");
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = (cublasLtMatmulPreference_t) new emu_pref{0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete (emu_pref *)p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *buf, size_t size) {
    emu_pref *e = (emu_pref *)p;
    switch (a) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        if (size != sizeof(uint64_t)) break;
        memcpy(&e->ws, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: {
        if (size != sizeof(uint32_t)) break;
        const int i = a == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES   ? 0
                      : a == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES ? 1
                      : a == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES ? 2
                                                                        : 3;
        memcpy(&e->align[i], buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    default: break;
    }
    return bad("cublasLtMatmulPreferenceSetAttribute", "an attribute (or size) the emulator does not model");
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B,
                                              cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned) {
    const char *why = check_problem((const emu_desc *)desc, (const emu_layout *)A, (const emu_layout *)B,
                                    (const emu_layout *)C, (const emu_layout *)D);
    if (why) return bad("cublasLtMatmulAlgoGetHeuristic", why);
    if (requested < 1) return bad("cublasLtMatmulAlgoGetHeuristic", "no result asked for");
    memset(&results[0], 0, sizeof results[0]);
    emu_algo ea;
    ea.magic = ALGO_MAGIC;
    memcpy(ea.align, ((const emu_pref *)pref)->align, sizeof ea.align);
    static_assert(sizeof ea <= sizeof results[0].algo, "algo record");
    memcpy(&results[0].algo, &ea, sizeof ea);
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void *alpha_p,
                              const void *A, cublasLtMatrixLayout_t Al, const void *B,
                              cublasLtMatrixLayout_t Bl, const void *beta_p, const void *C,
                              cublasLtMatrixLayout_t Cl, void *D, cublasLtMatrixLayout_t Dl,
                              const cublasLtMatmulAlgo_t *algo, void *work, size_t work_bytes,
                              cudaStream_t) {
    if (qft_emu::context_broken()) return CUBLAS_STATUS_EXECUTION_FAILED;
    const emu_desc *d = (const emu_desc *)desc;
    const emu_layout *a = (const emu_layout *)Al, *b = (const emu_layout *)Bl, *c = (const emu_layout *)Cl,
                     *dl = (const emu_layout *)Dl;
    const char *why = check_problem(d, a, b, c, dl);
    if (why) return bad("cublasLtMatmul", why);
    emu_algo ea;
    memset(&ea, 0, sizeof ea);
    if (algo) memcpy(&ea, algo, sizeof ea);
    if (algo && ea.magic != ALGO_MAGIC) return bad("cublasLtMatmul", "an algorithm no heuristic returned");
    const float alpha = *(const float *)alpha_p, beta = *(const float *)beta_p;
    uint64_t m, k, n, k2;
    op_shape(a, d->ta, &m, &k);
    op_shape(b, d->tb, &k2, &n);
    const int32_t nb = a->batch;
    // every problem's matrices must be device memory, at the algorithm's alignment
    for (int32_t p = 0; p < nb; p++) {
        const emu_layout *ls[4] = {a, b, c, dl};
        const void *ptr[4] = {problem_at(A, a, p), problem_at(B, b, p), problem_at(C, c, p),
                              problem_at(D, dl, p)};
        for (int i = 0; i < 4; i++) {
            if (i == 2 && beta == 0.0f) continue;
            const size_t span = span_of(ls[i]) * esize(ls[i]->type);
            if (!mem_on(ptr[i], span, current_device())) {
                char msg[200];
                snprintf(msg, sizeof msg, "%c of problem %d (%p, %zu bytes) is not the current device's memory",
                         "ABCD"[i], p, ptr[i], span);
                return bad("cublasLtMatmul", msg);
            }
            if (algo && !aligned(ptr[i], ea.align[i])) {
                char msg[200];
                snprintf(msg, sizeof msg,
                         "%c of problem %d (%p) is not %u-byte aligned, as its algorithm was chosen for",
                         "ABCD"[i], p, ptr[i], ea.align[i]);
                return bad("cublasLtMatmul", msg);
            }
        }
    }
    if (work_bytes && !mem_on(work, work_bytes, current_device())) return bad("cublasLtMatmul", "the workspace is not the current device's memory");
    const bool r16 = d->compute == CUBLAS_COMPUTE_32F_FAST_16BF, r32 = d->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    device_enter();
    std::vector<float> abuf, bbuf, t(m * n);
    for (int32_t p = 0; p < nb; p++) {
        const void *Ap = problem_at(A, a, p), *Bp = problem_at(B, b, p), *Cp = problem_at(C, c, p);
        void *Dp = (void *)problem_at(D, dl, p);
        // the products in fp32 by OpenBLAS (the reference's order of sums, not cuBLASLt's),
        // on the operands as stored (rounded as the compute type reads them): t (m, n)
        // column-major = alpha op(A) op(B)
        const float *af = as_f32(Ap, a, r16, r32, abuf), *bf = as_f32(Bp, b, r16, r32, bbuf);
        cblas_sgemm(CblasColMajor, d->ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    d->tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, (int)m, (int)n, (int)k, alpha,
                    af, (int)a->ld, bf, (int)b->ld, 0.0f, t.data(), (int)m);
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t i = 0; i < m; i++) {
                float v = t[i + j * m];
                if (beta != 0.0f) v += beta * load(Cp, c->type, i + j * c->ld);
                store(Dp, dl->type, i + j * dl->ld, v);
            }
    }
    device_leave();
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
