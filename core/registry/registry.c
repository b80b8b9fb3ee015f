#include "registry.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef QFT_PLUGINDIR
#define QFT_PLUGINDIR "/usr/local/lib/qft/plugins"
#endif
#ifndef QFT_BUILD_ROOT
#define QFT_BUILD_ROOT ""
#endif

const char *qft_kind_name(qft_kind kind) {
    static const char *const names[QFT_KIND_COUNT] = {"quantizer", "adapter", "dataset", "shard"};
    return kind < QFT_KIND_COUNT ? names[kind] : "unknown";
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int add_dir(char dirs[][4096], int n, int max, const char *d) {
    if (n >= max || !d || !*d) return n;
    if (d[0] == '~' && getenv("HOME"))
        snprintf(dirs[n], 4096, "%s%s", getenv("HOME"), d + 1);
    else
        snprintf(dirs[n], 4096, "%s", d);
    return n + 1;
}

/* True when this process's executable lives under the build tree it was built in; then
 * the build tree's plugins are the ones that match it, not an older installed set. */
static int running_from_build_tree(void) {
    char exe[PATH_MAX], root[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0 || !QFT_BUILD_ROOT[0] || !realpath(QFT_BUILD_ROOT, root)) return 0;
    exe[n] = 0;
    size_t rl = strlen(root);
    return strncmp(exe, root, rl) == 0 && exe[rl] == '/';
}

int qft_registry_search_path(const char *const *cli_dirs, int n_cli, const char *const *cfg_dirs,
                             int n_cfg, char dirs[][4096], int max) {
    int n = 0;
    for (int i = 0; i < n_cli; i++) n = add_dir(dirs, n, max, cli_dirs[i]);
    for (int i = 0; i < n_cfg; i++) n = add_dir(dirs, n, max, cfg_dirs[i]);
    char buf[8192];
    const char *env = getenv("QFT_PLUGIN_PATH");
    if (env) {
        snprintf(buf, sizeof buf, "%s", env);
        char *save = NULL;
        for (char *p = strtok_r(buf, ":", &save); p; p = strtok_r(NULL, ":", &save))
            n = add_dir(dirs, n, max, p);
    }
    if (running_from_build_tree()) {
        /* Each plugin is built in its own folder of the build tree: <kind folder>/<name>. */
        static const char *const kinds[] = {"quant", "adapters", "data", "shard"};
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
            snprintf(buf, sizeof buf, "%s/%s", QFT_BUILD_ROOT, kinds[k]);
            DIR *d = opendir(buf);
            if (!d) continue;
            char *names[256];
            int nn = 0;
            struct dirent *e;
            while ((e = readdir(d)) && nn < 256)
                if (e->d_name[0] != '.' && e->d_type == DT_DIR) names[nn++] = strdup(e->d_name);
            closedir(d);
            qsort(names, (size_t)nn, sizeof *names, cmp_str);
            for (int i = 0; i < nn; i++) {
                char sub[8192];
                snprintf(sub, sizeof sub, "%s/%s", buf, names[i]);
                n = add_dir(dirs, n, max, sub);
                free(names[i]);
            }
        }
    } else {
        n = add_dir(dirs, n, max, QFT_PLUGINDIR);
    }
    return n;
}

int qft_registry_add_file(qft_registry *r, const char *path, qft_err *err) {
    char real[PATH_MAX];
    if (!realpath(path, real)) return qft_err_setf(err, "%s: %s", path, strerror(errno));
    for (int i = 0; i < r->n; i++) /* one file reached through two folders */
        if (strcmp(r->items[i].path, real) == 0) return 0;
    /* RTLD_LOCAL keeps one plugin's symbols from resolving another's. */
    void *h = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!h) return qft_err_setf(err, "%s: cannot load plugin: %s", real, dlerror());
    qft_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, QFT_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        return qft_err_setf(err, "%s: not a qft plugin (no symbol %s)", real,
                            QFT_PLUGIN_ENTRY_SYMBOL);
    }
    const qft_plugin_desc *d = entry();
    if (!d) {
        dlclose(h);
        return qft_err_setf(err, "%s: %s returned no descriptor", real, QFT_PLUGIN_ENTRY_SYMBOL);
    }
    if (d->abi_version != QFT_ABI_VERSION) {
        int abi = d->abi_version;
        dlclose(h);
        return qft_err_setf(err, "%s: plugin ABI version %d, but this qft has ABI version %d; "
                                 "rebuild the plugin against this qft's SDK", real, abi,
                            QFT_ABI_VERSION);
    }
    if ((unsigned)d->kind >= QFT_KIND_COUNT || !d->name || !d->name[0] || !d->vtable) {
        dlclose(h);
        return qft_err_setf(err, "%s: malformed descriptor (kind %d, name %s)", real,
                            (int)d->kind, d->name ? d->name : "(null)");
    }
    for (int i = 0; i < r->n; i++) {
        const qft_plugin_desc *o = r->items[i].desc;
        if (o->kind == d->kind && strcmp(o->name, d->name) == 0) {
            char other[4096];
            snprintf(other, sizeof other, "%s", r->items[i].path);
            const char *kind = qft_kind_name(d->kind);
            char name[256];
            snprintf(name, sizeof name, "%s", d->name);
            dlclose(h);
            return qft_err_setf(err, "two %s plugins named \"%s\": %s and %s; remove one or "
                                     "reorder the plugin path", kind, name, other, real);
        }
    }
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        qft_plugin *ni = realloc(r->items, (size_t)cap * sizeof *ni);
        if (!ni) {
            dlclose(h);
            return qft_err_setf(err, "out of memory");
        }
        r->items = ni, r->cap = cap;
    }
    qft_plugin *p = &r->items[r->n++];
    p->desc = d;
    p->handle = h;
    snprintf(p->path, sizeof p->path, "%s", real);
    return 0;
}

int qft_registry_scan(qft_registry *r, char dirs[][4096], int n_dirs, qft_err *err) {
    for (int i = 0; i < n_dirs && r->n_dirs < 32; i++) {
        snprintf(r->dirs[r->n_dirs++], 4096, "%s", dirs[i]);
        DIR *d = opendir(dirs[i]);
        if (!d) continue; /* a folder on the path that does not exist is not an error */
        /* sorted, so that which file a duplicate error names first never depends on the
         * file system's order */
        char *names[1024];
        int nn = 0;
        struct dirent *e;
        while ((e = readdir(d)) && nn < 1024) {
            size_t l = strlen(e->d_name);
            if (l > 3 && strcmp(e->d_name + l - 3, ".so") == 0) names[nn++] = strdup(e->d_name);
        }
        closedir(d);
        qsort(names, (size_t)nn, sizeof *names, cmp_str);
        int rc = 0;
        for (int k = 0; k < nn; k++) {
            char path[8192];
            snprintf(path, sizeof path, "%s/%s", dirs[i], names[k]);
            if (!rc) rc = qft_registry_add_file(r, path, err);
            free(names[k]);
        }
        if (rc) return rc;
    }
    return 0;
}

const qft_plugin *qft_registry_find(const qft_registry *r, qft_kind kind, const char *name,
                                    qft_err *err) {
    char avail[2048] = "";
    size_t used = 0;
    for (int i = 0; i < r->n; i++) {
        if (r->items[i].desc->kind != kind) continue;
        if (strcmp(r->items[i].desc->name, name) == 0) return &r->items[i];
        used += (size_t)snprintf(avail + used, used < sizeof avail ? sizeof avail - used : 0,
                                 "%s%s", used ? ", " : "", r->items[i].desc->name);
    }
    char where[4096] = "";
    size_t wu = 0;
    for (int i = 0; i < r->n_dirs && wu < sizeof where; i++)
        wu += (size_t)snprintf(where + wu, sizeof where - wu, "%s%s", i ? ", " : "", r->dirs[i]);
    qft_err_setf(err, "no %s plugin named \"%s\" (available %ss: %s; searched: %s)",
                 qft_kind_name(kind), name, qft_kind_name(kind), used ? avail : "none",
                 r->n_dirs ? where : "no folders");
    return NULL;
}

void qft_registry_free(qft_registry *r) {
    for (int i = 0; i < r->n; i++) dlclose(r->items[i].handle);
    free(r->items);
    memset(r, 0, sizeof *r);
}
