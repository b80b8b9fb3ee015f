/* A stand-in for a libqft_cuda.so built from an older tree: it has the op-table entry point
 * but reports the previous plugin ABI, so the loader must refuse it before reading a table
 * of another layout (tests/cuda/test_cuda_twin.c, test_loader_abi). */
#include "qft_sdk.h"
#include "qft_ops.h"

#include <stddef.h>

int qft_cuda_abi_version(void);
const qft_ops *qft_cuda_ops(int device, qft_err *err);

int qft_cuda_abi_version(void) { return QFT_ABI_VERSION - 1; }

const qft_ops *qft_cuda_ops(int device, qft_err *err) {
    (void)device;
    qft_err_setf(err, "the stand-in backend was asked for its table: the ABI check let it by");
    return NULL;
}
