/* `qft expand MODEL_DIR -o OUT [--dtype bf16|f16|f32] [--set adapter.expansion_rate=R |
 *             --set adapter.interval=K] [--plugin-path DIR ...]`
 * A Llama-Pro expanded Hugging Face folder: the llama_pro adapter plugin plans the block
 * list (the seed's block_expansion.py rule, the same plan a llama_pro run uses), the
 * checkpoint is loaded into it (inserted blocks copy their source block, with o_proj and
 * down_proj zeroed), and the result is saved with config.json's num_hidden_layers set to
 * the new count. Weights keep the checkpoint's dtype unless --dtype says otherwise, so an
 * unchanged tensor is written back bit for bit. */
#include "cli.h"
#include "config.h"
#include "hf_model.h"
#include "registry.h"
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int role_frozen(void *ctx, const char *name, int is_linear) {
    (void)ctx, (void)name, (void)is_linear;
    return QFT_ROLE_FROZEN;
}

/* "float32" etc. (config.json) or "f32" etc. (the command line) -> a dtype; -1 if neither. */
static int dtype_from_name(const char *s) {
    if (!strcmp(s, "f32") || !strcmp(s, "float32")) return QFT_DT_F32;
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) return QFT_DT_BF16;
    if (!strcmp(s, "f16") || !strcmp(s, "float16")) return QFT_DT_F16;
    return -1;
}

int qft_cmd_expand(int argc, char **argv) {
    qft_cli_opts o;
    if (qft_cli_parse(argc, argv, &o)) return 2;
    const char *model = NULL, *out = NULL, *dtype = NULL;
    for (int i = 0; i < o.n_args; i++) {
        const char *a = o.args[i];
        if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && i + 1 < o.n_args) out = o.args[++i];
        else if (!strcmp(a, "--dtype") && i + 1 < o.n_args) dtype = o.args[++i];
        else if (!model && a[0] != '-') model = a;
        else {
            fprintf(stderr, "qft expand: unexpected argument \"%s\"\n", a);
            return 2;
        }
    }
    if (!model || !out || (dtype && dtype_from_name(dtype) < 0)) {
        fprintf(stderr, "usage: qft expand MODEL_DIR -o OUT [--dtype bf16|f16|f32] "
                        "[--set adapter.expansion_rate=R | --set adapter.interval=K] "
                        "[--plugin-path DIR ...]\n");
        return 2;
    }
    qft_err err = {0};
    int status = 1;
    config_t cfg;
    config_init(&cfg);
    qft_registry reg = {0};
    const qft_adapter_vtable *vt = NULL;
    void *astate = NULL;
    qft_run_expansion *x = NULL;
    qft_llama_model m;
    memset(&m, 0, sizeof m);
    /* The plugin's options come as an `adapter` section, like in a llama_pro run. */
    config_setting_t *sec = config_setting_add(config_root_setting(&cfg), "adapter",
                                               CONFIG_TYPE_GROUP);
    config_setting_set_string(config_setting_add(sec, "plugin", CONFIG_TYPE_STRING),
                              "llama_pro");
    for (int i = 0; i < o.n_sets; i++) {
        if (strncmp(o.sets[i], "adapter.expansion_rate=", 23) != 0 &&
            strncmp(o.sets[i], "adapter.interval=", 17) != 0) {
            fprintf(stderr, "qft expand: --set %s: only adapter.expansion_rate and "
                            "adapter.interval apply here\n", o.sets[i]);
            goto out;
        }
        if (qft_config_apply_set(&cfg, o.sets[i], &err)) goto fail;
    }
    char dirs[32][4096];
    int nd = qft_registry_search_path(o.plugin_dirs, o.n_plugin_dirs, NULL, 0, dirs, 32);
    if (qft_registry_scan(&reg, dirs, nd, &err)) goto fail;
    const qft_plugin *p;
    if (qft_registry_open(&reg, QFT_KIND_ADAPTER, "llama_pro", sec, 0, &p, &astate, &err))
        goto fail;
    vt = p->desc->vtable;
    if (!vt->expand) {
        qft_err_setf(&err, "%s: the llama_pro plugin has no expand hook", p->path);
        goto fail;
    }

    char path[8192];
    snprintf(path, sizeof path, "%s/config.json", model);
    qft_llama_config c;
    if (qft_hf_config_load(path, &c, &err)) goto fail;
    int dt = dtype ? dtype_from_name(dtype) : dtype_from_name(c.torch_dtype);
    if (dt < 0) dt = QFT_DT_F32; /* no (known) dtype recorded: f32 loses nothing */
    x = malloc(sizeof *x);
    if (!x) {
        qft_err_setf(&err, "out of memory");
        goto fail;
    }
    /* Only the plan comes from the adapter: the model is built without it, so no adapter
     * tensors are declared and the saved folder is a plain dense checkpoint. */
    qft_llama_build build = {.role = role_frozen};
    if (qft_run_plan_expansion(vt, astate, c.num_hidden_layers, x, &build, &err) ||
        qft_hf_model_load_build(model, &m, &build, &err) ||
        qft_hf_model_save(out, &m, (qft_dtype)dt, &err) ||
        qft_run_copy_tokenizer(model, out, &err))
        goto fail;
    printf("expanded %s from %d to %d layers (inserted:", model, x->n_src_layers, x->n_layers);
    for (int i = 0; i < x->n_layers; i++)
        if (x->is_new[i]) printf(" %d", i);
    printf("), %s weights: %s\n", qft_dtype_name((qft_dtype)dt), out);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "qft: %s\n", err.msg);
out:
    qft_llama_free(&m);
    free(x);
    if (astate) vt->close(astate);
    qft_registry_free(&reg);
    config_destroy(&cfg);
    return status;
}
