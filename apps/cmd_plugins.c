/* `qft plugins`: what the registry finds on the search path, one line each. */
#include "cli.h"
#include "registry.h"

#include <stdio.h>

int qft_cmd_plugins(int argc, char **argv) {
    qft_cli_opts o;
    if (qft_cli_parse(argc, argv, &o)) return 2;
    char dirs[32][4096];
    int n = qft_registry_search_path(o.plugin_dirs, o.n_plugin_dirs, NULL, 0, dirs, 32);
    qft_registry r = {0};
    qft_err err = {0};
    int rc = qft_registry_scan(&r, dirs, n, &err);
    if (rc) {
        fprintf(stderr, "qft: %s\n", err.msg);
        qft_registry_free(&r);
        return 1;
    }
    printf("%-10s %-22s %-8s %s\n", "KIND", "NAME", "VERSION", "FILE");
    for (int k = 0; k < QFT_KIND_COUNT; k++)
        for (int i = 0; i < r.n; i++) {
            const qft_plugin_desc *d = r.items[i].desc;
            if ((int)d->kind != k) continue;
            printf("%-10s %-22s %-8s %s\n", qft_kind_name(d->kind), d->name,
                   d->version ? d->version : "?", r.items[i].path);
        }
    printf("(%d plugin%s; searched:", r.n, r.n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) printf(" %s", dirs[i]);
    printf(")\n");
    qft_registry_free(&r);
    return 0;
}
