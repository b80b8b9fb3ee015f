/* hqq: Half-Quadratic Quantization as the hqq library does it (Quantizer.quantize with the
 * proximal zero-point refinement, its bit packings, and the older meta-quantization of
 * zero and scale). Private to the plugin. */
#ifndef QFT_HQQ_H
#define QFT_HQQ_H

#include "qft_sdk.h"

#define HQQ_META_GROUP 128 /* hqq's group for the 8-bit quantization of the scale */

typedef struct hqq_opts {
    const qft_services *svc;
    int nbits;       /* 2, 3, 4 or 8 */
    int group_size;  /* elements per group */
    int axis;        /* 1: groups are runs of group_size consecutive elements; 0: columns */
    int optimize;    /* proximal refinement of the zero point */
    int round_zero;  /* round the initial zero point (hqq's default for 4 bits) */
    int quant_zero;  /* zero points quantized to 8 bits, one global min/max */
    int quant_scale; /* scales quantized to 8 bits, groups of 128 along axis 0 */
} hqq_opts;

struct qft_qweight {
    const qft_services *svc;
    int64_t out, in, n;    /* dense shape, n = out * in */
    int nbits, group_size, axis, optimize, round_zero;
    int64_t R, C;          /* the grouped matrix: axis 1 (n/gs, gs), axis 0 (gs, n/gs) */
    int64_t n_groups;      /* axis 1: R, axis 0: C */
    int64_t packed_rows;   /* rows of the packed tensor (C columns each) */
    uint8_t *packed;       /* 8/4/2 bits: uint8 (packed_rows, C); 3 bits: int32 words */
    size_t packed_bytes;
    float *scale, *zero;   /* (n_groups) each, fp32; NULL when meta-quantized */
    int quant_zero, quant_scale;
    uint8_t *zero_q;       /* (n_groups) when quant_zero */
    float zero_meta[2];    /* its scale and zero (one global group) */
    uint8_t *scale_q;      /* (n_groups) when quant_scale, laid out (128, n_groups/128) */
    float *scale_meta;     /* (2, n_groups/128): scale row then zero row */
    /* hqq's scalar metadata as saved tensors; here because a sink keeps pointers */
    int32_t s_nbits, s_group_size, s_axis;
    int64_t s_shape[2];
    uint8_t s_one, s_zero, s_optimize, s_round_zero, s_quant_zero, s_quant_scale;
    /* 1 once place() moved the buffers above into one block of core-owned memory: then
     * free_weight frees only this struct */
    int placed;
};

void *hqq_alloc(const qft_services *svc, size_t bytes);
void hqq_free(const qft_services *svc, void *p);
void hqq_weight_free(struct qft_qweight *qw);

/* Shapes and buffers for a weight of (out, in) under opts; -1 with err on a bad shape. */
int hqq_weight_init(struct qft_qweight *qw, const hqq_opts *o, int64_t out, int64_t in,
                    const char *name, qft_err *err);
int hqq_quantize_weight(struct qft_qweight *qw, const float *w, qft_err *err);
/* Elements [f0, f0 + count) of the flattened dequantized weight. */
void hqq_dequantize_range(const struct qft_qweight *qw, int64_t f0, int64_t count, float *dst);
/* The code of grouped element (r, c). */
int hqq_code(const struct qft_qweight *qw, int64_t r, int64_t c);
float hqq_group_scale(const struct qft_qweight *qw, int64_t g);
float hqq_group_zero(const struct qft_qweight *qw, int64_t g);

/* torch's fp32 summation orders (hqq_sum.c): a contiguous run (inner reduction), and one
 * column of a row-major matrix at column index col of ncols (outer reduction). */
float hqq_torch_sum_inner(const float *x, int64_t n);
float hqq_torch_sum_outer(const float *x, int64_t rows, int64_t ncols, int64_t col);

/* Moves packed, scale/zero and their meta-quantized forms into memory from pl
 * (hqq_place.c). */
int hqq_place(struct qft_qweight *qw, const qft_placer *pl, qft_err *err);

/* The weight as QFT_QFMT_HQQ for a backend's dequantize (hqq_layout.c); buffers are the
 * weight's own. */
int hqq_layout(const struct qft_qweight *qw, struct qft_qlayout *out, qft_err *err);

int hqq_save(const qft_qweight *qw, const char *prefix, const qft_tensor_sink *sink,
             qft_err *err);
int hqq_load(const void *state, const char *prefix, int64_t out, int64_t in,
             const qft_tensor_source *src, qft_qweight **qw, qft_err *err);

#endif
