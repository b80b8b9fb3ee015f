/* dlopen of libqft_cuda.so for train.backend = "cuda" (see cuda_backend.h). */
#include "cuda_backend.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef const qft_ops *(*cuda_ops_fn)(int device, qft_err *err);
typedef size_t (*cuda_peak_fn)(void);
typedef void (*cuda_precision_fn)(int level);

/* Found with the op table: the library stays loaded, so the pointers stay valid. */
static cuda_peak_fn g_mem_peak, g_mem_held;
static cuda_precision_fn g_set_precision;

size_t qft_cuda_loaded_mem_peak(void) { return g_mem_peak ? g_mem_peak() : 0; }

size_t qft_cuda_loaded_mem_held(void) { return g_mem_held ? g_mem_held() : 0; }

int qft_cuda_loaded_set_matmul_precision(int level, qft_err *err) {
    if (!g_set_precision)
        return qft_err_setf(err, "train.matmul_precision: the loaded CUDA backend library has "
                                 "no such switch (an older libqft_cuda.so?)");
    g_set_precision(level);
    return 0;
}

const qft_ops *qft_cuda_load(int device, qft_err *err) {
    const char *cands[4];
    int nc = 0;
    const char *env = getenv("QFT_CUDA_LIB");
    if (env && *env) cands[nc++] = env;
#ifdef QFT_CUDA_BUILT
    cands[nc++] = QFT_CUDA_BUILT;
#endif
#ifdef QFT_CUDA_INSTALLED
    cands[nc++] = QFT_CUDA_INSTALLED;
    cands[nc++] = "libqft_cuda.so";
#endif
    if (nc == 0) {
        qft_err_setf(err, "train.backend = \"cuda\": this build of qft has no CUDA backend "
                          "(nvcc was not found when it was configured; set QFT_CUDA_LIB to a "
                          "libqft_cuda.so to use one built elsewhere)");
        return NULL;
    }
    char tried[1536] = "";
    for (int i = 0; i < nc; i++) {
        void *h = dlopen(cands[i], RTLD_NOW | RTLD_LOCAL); /* never closed: ops point into it */
        if (!h) {
            const char *why = dlerror();
            size_t len = strlen(tried);
            snprintf(tried + len, sizeof tried - len, "%s%s", len ? "; " : "",
                     why ? why : cands[i]);
            continue;
        }
        /* its op table must have this build's layout: entries are appended with each ABI,
         * and an older table read as a newer one would hand out pointers past its end */
        void *sym = dlsym(h, "qft_cuda_abi_version");
        int (*abi_fn)(void);
        memcpy(&abi_fn, &sym, sizeof abi_fn);
        const int abi = abi_fn ? abi_fn() : 0;
        if (abi != QFT_ABI_VERSION) {
            qft_err_setf(err, "train.backend = \"cuda\": %s was built for plugin ABI %d%s, this "
                              "qft is ABI %d: rebuild the CUDA backend with this tree",
                         cands[i], abi, abi ? "" : " (it predates the check)", QFT_ABI_VERSION);
            return NULL;
        }
        cuda_ops_fn fn;
        sym = dlsym(h, "qft_cuda_ops");
        memcpy(&fn, &sym, sizeof fn); /* object to function pointer without a cast warning */
        if (!fn) {
            qft_err_setf(err, "train.backend = \"cuda\": %s has no qft_cuda_ops", cands[i]);
            return NULL;
        }
        const qft_ops *ops = fn(device, err);
        if (ops) {
            sym = dlsym(h, "qft_cuda_mem_peak"); /* absent from an older library: no figure */
            memcpy(&g_mem_peak, &sym, sizeof g_mem_peak);
            sym = dlsym(h, "qft_cuda_mem_held");
            memcpy(&g_mem_held, &sym, sizeof g_mem_held);
            sym = dlsym(h, "qft_cuda_set_matmul_precision");
            memcpy(&g_set_precision, &sym, sizeof g_set_precision);
        }
        return ops;
    }
    qft_err_setf(err, "train.backend = \"cuda\": the CUDA backend library did not load (%s)",
                 tried);
    return NULL;
}
