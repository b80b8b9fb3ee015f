/* Opening the MPI and NCCL transports from their own libraries (libqft_mpi.so,
 * libqft_nccl.so), dlopened on first use: libqft links neither MPI, the CUDA runtime nor
 * NCCL, so a single-process run starts on a machine without them, and only a run launched
 * by mpirun (or one asking for NCCL) needs them. See transport_plugin.h for the contract.
 *
 * Where a library is looked for: only $QFT_MPI_LIB / $QFT_NCCL_LIB when set; otherwise,
 * first hit wins, beside the object holding this loader (an installed libqft.so finds the
 * libraries installed with it, whatever its prefix or DESTDIR), the build tree's
 * (QFT_*_BUILT), the configured install path (QFT_*_INSTALLED), and the bare name through
 * the dynamic loader's own search. */
#include "transport_plugin.h"

#include "qft_base.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef struct lib_spec {
    const char *file;    /* "libqft_mpi.so" */
    const char *env;     /* "QFT_MPI_LIB" */
    const char *built;   /* in the build tree, or NULL when this build did not make it */
    const char *installed;
    const char *entry;   /* the one exported symbol */
    int global;          /* RTLD_GLOBAL: Open MPI's own dlopened components resolve
                          * libmpi's symbols through the global scope */
} lib_spec;

static const lib_spec g_mpi_spec = {
    .file = "libqft_mpi.so",
    .env = "QFT_MPI_LIB",
#ifdef QFT_MPI_BUILT
    .built = QFT_MPI_BUILT,
#endif
#ifdef QFT_MPI_INSTALLED
    .installed = QFT_MPI_INSTALLED,
#endif
    .entry = QFT_TRANSPORT_MPI_ENTRY,
    .global = 1,
};

static const lib_spec g_nccl_spec = {
    .file = "libqft_nccl.so",
    .env = "QFT_NCCL_LIB",
#ifdef QFT_NCCL_BUILT
    .built = QFT_NCCL_BUILT,
#endif
#ifdef QFT_NCCL_INSTALLED
    .installed = QFT_NCCL_INSTALLED,
#endif
    .entry = QFT_TRANSPORT_NCCL_ENTRY,
    .global = 0,
};

/* The core's side of the contract: the allocator and the counter stay the core's. */
static const qft_transport_host g_host = {
    .abi = QFT_TRANSPORT_LIB_ABI,
    .mem_alloc = qft_mem_alloc,
    .mem_free = qft_mem_free,
    .time_now = qft_time_now,
    .count = qft_transport_count,
};

static int spec_built(const lib_spec *s) {
    const char *e = getenv(s->env);
    return (e && *e) || s->built || s->installed;
}

int qft_transport_has_mpi(void) { return spec_built(&g_mpi_spec); }

int qft_transport_has_nccl(void) { return spec_built(&g_nccl_spec); }

/* "<directory of the object holding this loader>/<file>", or 0 when dladdr cannot say. */
static int beside_self(const char *file, char *buf, size_t cap) {
    Dl_info info;
    void *self;
    int (*fn)(void) = qft_transport_has_mpi;
    memcpy(&self, &fn, sizeof self); /* function to object pointer without a cast warning */
    if (!dladdr(self, &info) || !info.dli_fname || !strchr(info.dli_fname, '/')) return 0;
    const char *slash = strrchr(info.dli_fname, '/');
    int n = snprintf(buf, cap, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname, file);
    return n > 0 && (size_t)n < cap;
}

/* dlopens the first candidate that loads and returns its entry, or NULL with err naming
 * the library, every path tried and what dlerror said for each. The handle is never
 * closed: transports and their vtables live in it until the process ends. */
static void *load_entry(const lib_spec *s, const char *why, qft_err *err) {
    char beside[4096];
    const char *cands[5];
    int nc = 0;
    const char *env = getenv(s->env);
    if (env && *env) {
        cands[nc++] = env; /* an explicit choice: falling back elsewhere would hide a typo */
    } else {
        if (beside_self(s->file, beside, sizeof beside)) cands[nc++] = beside;
        if (s->built) cands[nc++] = s->built;
        if (s->installed) cands[nc++] = s->installed;
        cands[nc++] = s->file;
    }
    char tried[3072] = "";
    for (int i = 0; i < nc; i++) {
        int dup = 0;
        for (int j = 0; j < i && !dup; j++) dup = !strcmp(cands[i], cands[j]);
        if (dup) continue;
        void *h = dlopen(cands[i], RTLD_NOW | (s->global ? RTLD_GLOBAL : RTLD_LOCAL));
        if (!h) {
            const char *msg = dlerror();
            size_t len = strlen(tried);
            if (msg && strstr(msg, cands[i])) { /* dlerror names the path itself */
                snprintf(tried + len, sizeof tried - len, "%s%s", len ? "; " : "", msg);
            } else {
                snprintf(tried + len, sizeof tried - len, "%s%s: %s", len ? "; " : "",
                         cands[i], msg ? msg : "not loaded");
            }
            continue;
        }
        void *sym = dlsym(h, s->entry);
        if (!sym) {
            qft_err_setf(err, "%s: %s loaded but has no %s (not a qft transport library, "
                              "or one from another version)",
                         why, cands[i], s->entry);
            return NULL;
        }
        return sym;
    }
    qft_err_setf(err, "%s: the transport library %s did not load (tried %s); install it "
                      "beside libqft or set %s to its path",
                 why, s->file, tried, s->env);
    return NULL;
}

/* Loaded once per process; the transports opened later reuse the same open function. */
static qft_transport_open_mpi_fn g_open_mpi;
static qft_transport_open_nccl_fn g_open_nccl;

static int bind_mpi(qft_err *err) {
    if (g_open_mpi) return 0;
    void *sym = load_entry(&g_mpi_spec, "mpi transport", err);
    if (!sym) return -1;
    qft_transport_mpi_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry); /* object to function pointer without a cast warning */
    qft_transport_open_mpi_fn open = NULL;
    if (entry(&g_host, &open, err)) return -1;
    g_open_mpi = open;
    return 0;
}

static int bind_nccl(qft_err *err) {
    if (g_open_nccl) return 0;
    void *sym = load_entry(&g_nccl_spec, "nccl transport", err);
    if (!sym) return -1;
    qft_transport_nccl_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    qft_transport_open_nccl_fn open = NULL;
    if (entry(&g_host, &open, err)) return -1;
    g_open_nccl = open;
    return 0;
}

int qft_transport_open_mpi(qft_transport **out, qft_err *err) {
    *out = NULL;
    if (!qft_transport_has_mpi()) {
        return qft_err_setf(err, "this qft was built without MPI, so it cannot run with several "
                                 "ranks (install Open MPI, e.g. Debian's libopenmpi-dev, and "
                                 "rerun meson setup; or set QFT_MPI_LIB to a libqft_mpi.so "
                                 "built elsewhere)");
    }
    /* Bad settings fail before anything is loaded or MPI is started. */
    qft_transport_env env;
    if (qft_transport_env_read(&env, err)) return -1;
    if (bind_mpi(err)) return -1;
    return g_open_mpi(out, err);
}

int qft_transport_open_nccl(const qft_transport *boot, int device, qft_transport **out,
                            qft_err *err) {
    *out = NULL;
    if (!qft_transport_has_nccl()) {
        return qft_err_setf(err, "this qft was built without NCCL and CUDA; GPU collectives "
                                 "are not available (or set QFT_NCCL_LIB to a libqft_nccl.so "
                                 "built elsewhere)");
    }
    if (!boot || boot->device != -1) {
        return qft_err_setf(err, "nccl transport: the bootstrap transport must be a host "
                                 "transport (mpi or local)");
    }
    qft_transport_env env;
    if (qft_transport_env_read(&env, err)) return -1;
    if (bind_nccl(err)) return -1;
    return g_open_nccl(boot, device, out, err);
}
