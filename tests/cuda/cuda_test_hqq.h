/* The hqq plugin for the CUDA tests: dlopened from $QFT_HQQ_PLUGIN (meson sets it to the
 * build tree's), configured and run on seeded data. Built only with QFT_TWIN_HQQ. */
#ifndef QFT_CUDA_TEST_HQQ_H
#define QFT_CUDA_TEST_HQQ_H

#include "hqq.h"

typedef struct cth_case {
    int nbits, axis, meta, gs; /* meta: quant_zero and quant_scale both on */
    int64_t out, in;
} cth_case;

/* The plugin's vtable (the test fails with a message when it does not load). */
const qft_quantizer_vtable *cth_plugin(void);
/* W (out, in) = 0.02 N(0, 1) from `seed` with outliers every 17th column of row 0,
 * quantized by the plugin under c; free with cth_plugin()->free_weight. */
struct qft_qweight *cth_quantize(const cth_case *c, uint64_t seed);

#endif
