/* bnb_nf4: blockwise 4-bit NormalFloat quantization exactly as bitsandbytes does it on the
 * CPU, with optional double quantization of the per-block absmax. Private to the plugin. */
#ifndef QFT_NF4_H
#define QFT_NF4_H

#include "qft_sdk.h"

#define NF4_NESTED_BLOCK 256 /* bitsandbytes' fixed block for the absmax's own quantization */

/* The options of the `quant` section. */
typedef struct nf4_opts {
    const qft_services *svc;
    int blocksize;          /* 32..4096, a power of two */
    int double_quant;       /* quantize the absmax vector too */
    qft_dtype dtype;        /* written as the quant_state "dtype": what peers dequantize to */
    qft_dtype quant_storage; /* dtype the packed bytes are viewed as in a saved file */
} nf4_opts;

struct qft_qweight {
    const qft_services *svc;
    int64_t out, in;      /* the dense weight's shape */
    int64_t n;            /* out * in */
    int blocksize;
    int64_t n_blocks;     /* ceil(n / blocksize) */
    int double_quant;
    qft_dtype dtype;
    qft_dtype quant_storage;
    float code[16];       /* the 4-bit codebook (from the file when loaded) */
    uint8_t *packed;      /* ((n + 1) / 2) two codes a byte, the first in the high nibble */
    float *absmax;        /* (n_blocks) fp32, when !double_quant */
    uint8_t *qabsmax;     /* (n_blocks) codes of absmax - offset, when double_quant */
    float *nested_absmax; /* (ceil(n_blocks / 256)), when double_quant */
    float nested_map[256];/* the signed dynamic map, when double_quant */
    float offset;         /* mean of the absmax, when double_quant */
    /* bitsandbytes' quant_state JSON for this weight, kept here because a sink needs the
     * bytes to outlive the save call */
    char qs_json[384];
    int qs_len;
    /* 1 once place() moved the buffers above into one block of core-owned memory: then
     * free_weight frees only this struct */
    int placed;
};

/* NF4 codebook and bitsandbytes' signed 8-bit dynamic map (256 values, as torch rounds them). */
extern const float qft_nf4_code[16];
extern const float qft_nf4_dynamic_map[256];

void *nf4_alloc(const qft_services *svc, size_t bytes);
void nf4_free(const qft_services *svc, void *p);
void nf4_weight_free(struct qft_qweight *qw);

/* Blockwise NF4 of x (n): absmax (ceil(n/bs)) and packed ((n+1)/2). */
void nf4_quantize_blocks(const float *x, int64_t n, int blocksize, float *absmax, uint8_t *packed);
/* bitsandbytes' CPU 8-bit blockwise quantization with `map` (256), blocks of 256, through its
 * 65536-step lookup table: codes (n), block absmax (ceil(n/256)). -1 when out of memory. */
int nf4_quantize_dynamic(const float *x, int64_t n, const float *map, uint8_t *codes,
                         float *absmax);
/* mean(x) as torch computes it in fp32 on the CPU (same summation order). */
float nf4_torch_mean(const float *x, int64_t n);
/* The fp32 absmax of block b, undoing the double quantization when there is one. */
float nf4_block_absmax(const struct qft_qweight *qw, int64_t b);
/* Dequantized elements [f0, f0 + count) of the flattened weight into dst (count). */
void nf4_dequantize_range(const struct qft_qweight *qw, int64_t f0, int64_t count, float *dst);

/* Fills qw->qs_json from the weight's fields; -1 if it does not fit. */
int nf4_build_qs_json(struct qft_qweight *qw);

/* Moves packed, absmax / qabsmax and nested_absmax into memory from pl (nf4_place.c). */
int nf4_place(struct qft_qweight *qw, const qft_placer *pl, qft_err *err);

/* The weight as QFT_QFMT_NF4 for a backend's dequantize (nf4_layout.c); buffers are the
 * weight's own. */
int nf4_layout(const struct qft_qweight *qw, struct qft_qlayout *out, qft_err *err);

/* Saving and loading with bitsandbytes' key names (nf4_io.c). */
int nf4_save(const struct qft_qweight *qw, const char *prefix, const qft_tensor_sink *sink,
             qft_err *err);
int nf4_load(const void *state, const char *prefix, int64_t out, int64_t in,
             const qft_tensor_source *src, struct qft_qweight **qw, qft_err *err);

#endif
