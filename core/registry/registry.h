/* The plugin registry: scans plugin folders in order, dlopens every shared object there,
 * calls its one entry symbol, checks the ABI version and registers (kind, name). This is
 * the one piece of the core that knows plugins exist. */
#ifndef QFT_REGISTRY_H
#define QFT_REGISTRY_H

#include "qft_sdk.h"

typedef struct qft_plugin {
    const qft_plugin_desc *desc;
    char path[4096]; /* resolved path of the .so */
    void *handle;    /* dlopen handle */
} qft_plugin;

typedef struct qft_registry {
    qft_plugin *items;
    int n, cap;
    char dirs[32][4096]; /* folders scanned, in order, for messages */
    int n_dirs;
} qft_registry;

/* The search order of DESIGN.md: `--plugin-path` folders, the config's plugins.path,
 * $QFT_PLUGIN_PATH (colon-separated), then the build tree's plugin folders when this
 * binary runs from the build tree, else the installed <libdir>/qft/plugins. Fills
 * dirs[0..n) and returns n. */
int qft_registry_search_path(const char *const *cli_dirs, int n_cli, const char *const *cfg_dirs,
                             int n_cfg, char dirs[][4096], int max);

/* Scans `dirs` in order. A folder that does not exist is skipped; a file that is not a qft
 * plugin (no entry symbol) is an error naming it, as are an ABI mismatch (the file, its
 * ABI and ours) and two plugins of one (kind, name) (both files). */
int qft_registry_scan(qft_registry *r, char dirs[][4096], int n_dirs, qft_err *err);
/* Registers one file (used by the scan, and by tests). */
int qft_registry_add_file(qft_registry *r, const char *path, qft_err *err);
/* Finds (kind, name); a miss lists the names of that kind that exist and where it looked. */
const qft_plugin *qft_registry_find(const qft_registry *r, qft_kind kind, const char *name,
                                    qft_err *err);
/* Finds a quantizer, adapter or shard plugin, checks the keys of its `section` (unless
 * check_keys is 0: a section the caller built itself) and lets it read its options:
 * *out is the plugin (its desc->vtable of kind's type), *state the configured options. */
int qft_registry_open(const qft_registry *r, qft_kind kind, const char *name,
                      const config_setting_t *section, int check_keys, const qft_plugin **out,
                      void **state, qft_err *err);
void qft_registry_free(qft_registry *r);
const char *qft_kind_name(qft_kind kind);

/* The services table plugins receive: allocation, logging, random numbers, key checks. */
const qft_services *qft_registry_services(void);
/* Sets the op table the services hand to plugins: the run's backend, chosen before any
 * plugin computes (one backend per process). */
void qft_registry_set_ops(const struct qft_ops *ops);

#endif
