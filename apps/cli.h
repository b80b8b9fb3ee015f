/* The qft command's subcommands; each returns the process exit status. */
#ifndef QFT_CLI_H
#define QFT_CLI_H

int qft_cmd_train(int argc, char **argv);
int qft_cmd_plugins(int argc, char **argv);
int qft_cmd_data(int argc, char **argv);
int qft_cmd_quantize(int argc, char **argv);
int qft_cmd_merge(int argc, char **argv);
int qft_cmd_expand(int argc, char **argv);
int qft_cmd_tokenize(int argc, char **argv);

/* Common options: `--plugin-path DIR` (repeatable) and `--set a.b=v` (repeatable) are
 * collected into these arrays; other arguments are left in args. */
typedef struct qft_cli_opts {
    const char *plugin_dirs[16];
    int n_plugin_dirs;
    const char *sets[256];
    int n_sets;
    const char *args[64];
    int n_args;
    int quiet;
} qft_cli_opts;
int qft_cli_parse(int argc, char **argv, qft_cli_opts *o);

extern const char qft_default_config[];

#endif
