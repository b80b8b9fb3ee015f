/* The services table handed to plugins: the engine's own functions, behind plain C
 * pointers, so a plugin never links against core/ headers. */
#include "config.h"
#include "qft_base.h"
#include "registry.h"

static void svc_log(int level, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    qft_log(level, "%s", buf);
}

/* Not const: the run fills in the active backend's op table once it is chosen. */
static qft_services k_services = {
    .abi_version = QFT_ABI_VERSION,
    .alloc = qft_mem_alloc,
    .free = qft_mem_free,
    .log = svc_log,
    .rng_seed = qft_rng_seed,
    .rng_next = qft_rng_next,
    .config_check_keys = qft_config_check_keys,
};

const qft_services *qft_registry_services(void) { return &k_services; }

void qft_registry_set_ops(const struct qft_ops *ops) { k_services.ops = ops; }
