/* `qft train [RUN.cfg] [--set k=v ...] [--plugin-path DIR ...]` */
#include "cli.h"
#include "config.h"
#include "run.h"

#include <stdio.h>

int qft_cmd_train(int argc, char **argv) {
    qft_cli_opts o;
    if (qft_cli_parse(argc, argv, &o)) return 2;
    if (o.n_args > 1) {
        fprintf(stderr, "qft train: one config file at most (got %d arguments)\n", o.n_args);
        return 2;
    }
    qft_run_config rc;
    qft_err err = {0};
    int status = 0;
    if (qft_config_load(&rc, o.n_args ? o.args[0] : NULL, qft_default_config, o.sets,
                        o.n_sets, &err)) {
        fprintf(stderr, "qft: %s\n", err.msg);
        qft_config_free(&rc);
        return 1;
    }
    if (!o.n_args && !o.quiet)
        fprintf(stderr, "qft: no config given; training the embedded demo (see README)\n");
    qft_run_summary s;
    if (qft_run_train(&rc, o.plugin_dirs, o.n_plugin_dirs, o.quiet, &s, &err)) {
        fprintf(stderr, "qft: %s\n", err.msg);
        status = 1;
    }
    qft_config_free(&rc);
    return status;
}
