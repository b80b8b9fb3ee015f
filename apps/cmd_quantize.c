/* `qft quantize MODEL_DIR --method NAME -o OUT [--set quant.key=value ...]`: a
 * pre-quantized model folder. Every block linear is packed by the quantizer plugin and
 * saved with the peer library's key names; embeddings, norms and the head are saved
 * dense; config.json gains the plugin's quantization_config; tokenizer files are copied.
 * Later runs that name the same quantizer load it without quantizing again. */
#include "cli.h"
#include "config.h"
#include "hf_model.h"
#include "registry.h"
#include "run.h"

#include <stdio.h>
#include <string.h>

static int role_pack_linears(void *ctx, const char *name, int is_linear) {
    (void)ctx, (void)name;
    return is_linear ? QFT_ROLE_QUANTIZED : QFT_ROLE_FROZEN;
}

int qft_cmd_quantize(int argc, char **argv) {
    qft_cli_opts o;
    if (qft_cli_parse(argc, argv, &o)) return 2;
    const char *model = NULL, *method = NULL, *out = NULL, *dtype = "bf16";
    for (int i = 0; i < o.n_args; i++) {
        const char *a = o.args[i];
        if ((!strcmp(a, "--method") || !strcmp(a, "-m")) && i + 1 < o.n_args) method = o.args[++i];
        else if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && i + 1 < o.n_args) out = o.args[++i];
        else if (!strcmp(a, "--dtype") && i + 1 < o.n_args) dtype = o.args[++i];
        else if (!model && a[0] != '-') model = a;
        else {
            fprintf(stderr, "qft quantize: unexpected argument \"%s\"\n", a);
            return 2;
        }
    }
    if (!model || !method || !out) {
        fprintf(stderr, "usage: qft quantize MODEL_DIR --method NAME -o OUT [--dtype bf16|f32] "
                        "[--set quant.key=value ...] [--plugin-path DIR ...]\n");
        return 2;
    }
    qft_dtype dt = strcmp(dtype, "f32") == 0 ? QFT_DT_F32 : QFT_DT_BF16;
    qft_err err = {0};
    int status = 1;
    /* The quantizer's options come as a `quant` section, like in a run's config. */
    config_t cfg;
    config_init(&cfg);
    qft_registry reg = {0};
    void *qstate = NULL;
    const qft_quantizer_vtable *vt = NULL;
    qft_llama_model m;
    memset(&m, 0, sizeof m);
    config_setting_t *q = config_setting_add(config_root_setting(&cfg), "quant", CONFIG_TYPE_GROUP);
    config_setting_set_string(config_setting_add(q, "plugin", CONFIG_TYPE_STRING), method);
    for (int i = 0; i < o.n_sets; i++) {
        if (strncmp(o.sets[i], "quant.", 6) != 0) {
            fprintf(stderr, "qft quantize: --set %s: only quant.* options apply here\n", o.sets[i]);
            goto out;
        }
        if (qft_config_apply_set(&cfg, o.sets[i], &err)) goto fail;
    }
    char dirs[32][4096];
    int nd = qft_registry_search_path(o.plugin_dirs, o.n_plugin_dirs, NULL, 0, dirs, 32);
    if (qft_registry_scan(&reg, dirs, nd, &err)) goto fail;
    const qft_plugin *p;
    if (qft_registry_open(&reg, QFT_KIND_QUANTIZER, method, q, 1, &p, &qstate, &err)) goto fail;
    vt = p->desc->vtable;
    qft_llama_build build = {.role = role_pack_linears, .qvt = vt, .qstate = qstate};
    const double t0 = qft_time_now();
    if (qft_hf_model_load_build(model, &m, &build, &err)) goto fail;
    const double t1 = qft_time_now();
    if (qft_hf_model_save_ex(out, &m, dt, 1, &err) || qft_run_copy_tokenizer(model, out, &err))
        goto fail;
    if (vt->hf_quantization_config) {
        char json[4096], path[8192];
        snprintf(path, sizeof path, "%s/config.json", out);
        if (vt->hf_quantization_config(qstate, json, sizeof json, &err) ||
            qft_hf_config_set_json(path, "quantization_config", json, &err))
            goto fail;
    }
    size_t packed = qft_llama_weight_bytes(&m) - m.n_params * sizeof(float);
    printf("quantized %zu weights of %d linears with %s in %.1f s: %.3f bits per weight; "
           "wrote %s\n", m.n_quantized, m.cfg.num_hidden_layers * QFT_LIN_COUNT, method, t1 - t0,
           m.n_quantized ? 8.0 * (double)packed / (double)m.n_quantized : 0.0, out);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "qft: %s\n", err.msg);
out:
    qft_llama_free(&m);
    if (qstate) vt->close(qstate);
    qft_registry_free(&reg);
    config_destroy(&cfg);
    return status;
}
