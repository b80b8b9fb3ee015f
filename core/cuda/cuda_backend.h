/* Selecting the CUDA backend from the engine. libqft does not link the CUDA libraries: the
 * backend is its own shared library, libqft_cuda.so (built when nvcc is found), opened here
 * with dlopen when a run asks for train.backend = "cuda". So a CPU-only user never loads
 * libcudart or cuBLASLt, and a machine without them still runs every CPU path. */
#ifndef QFT_CUDA_BACKEND_H
#define QFT_CUDA_BACKEND_H

#include "qft_ops.h"
#include "qft_sdk.h"

/* The CUDA op table on `device`, or NULL with err filled: this build has no CUDA backend,
 * the library does not load, or (its own message) there is no usable device. The library
 * is looked for at $QFT_CUDA_LIB, then the build tree, then the install libdir, then the
 * dynamic linker's path; it stays loaded for the life of the process. */
const qft_ops *qft_cuda_load(int device, qft_err *err);
/* The loaded library's qft_cuda_mem_peak (bytes), or 0 when qft_cuda_load has not
 * succeeded in this process. */
size_t qft_cuda_loaded_mem_peak(void);
/* Its qft_cuda_mem_held: the bytes it holds now (0 likewise). */
size_t qft_cuda_loaded_mem_held(void);
/* The loaded library's qft_cuda_set_matmul_precision; -1 with err when it has none. */
int qft_cuda_loaded_set_matmul_precision(int level, qft_err *err);

#endif
