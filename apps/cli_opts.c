#include "cli.h"

#include <stdio.h>
#include <string.h>

int qft_cli_parse(int argc, char **argv, qft_cli_opts *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        int is_set = 0, is_path = 0;
        if (strcmp(a, "--set") == 0 || strcmp(a, "--plugin-path") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "qft: %s needs a value\n", a);
                return -1;
            }
            is_set = a[2] == 's';
            is_path = !is_set;
            val = argv[++i];
        } else if (strncmp(a, "--set=", 6) == 0) {
            is_set = 1, val = a + 6;
        } else if (strncmp(a, "--plugin-path=", 14) == 0) {
            is_path = 1, val = a + 14;
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            o->quiet = 1;
            continue;
        }
        if (is_set) {
            if (o->n_sets == 256) return fprintf(stderr, "qft: too many --set\n"), -1;
            o->sets[o->n_sets++] = val;
        } else if (is_path) {
            if (o->n_plugin_dirs == 16) return fprintf(stderr, "qft: too many --plugin-path\n"), -1;
            o->plugin_dirs[o->n_plugin_dirs++] = val;
        } else {
            if (o->n_args == 64) return fprintf(stderr, "qft: too many arguments\n"), -1;
            o->args[o->n_args++] = a;
        }
    }
    return 0;
}
