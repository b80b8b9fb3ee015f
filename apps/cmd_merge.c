/* `qft merge --base MODEL_DIR --adapter ADAPTER_DIR -o OUT [--dtype bf16|f32]
 *            [--quant NAME] [--plugin-path DIR ...]`
 * A merged dense model folder: the adapter (PEFT format, from qft or from PEFT) folded into
 * its linears (LoRA: W + s B A; DoRA: the magnitude-rescaled rows), packed bases
 * dequantized. transformers loads the result as a plain LlamaForCausalLM. The adapter
 * plugin and its options come from adapter_config.json (use_dora picks "dora"). */
#include "cli.h"
#include "config.h"
#include "hf_model.h"
#include "peft_adapter.h"
#include "registry.h"
#include "run.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static int role_frozen(void *ctx, const char *name, int is_linear) {
    (void)name;
    return is_linear && ctx ? QFT_ROLE_QUANTIZED : QFT_ROLE_FROZEN;
}

/* adapter_config.json -> an `adapter` section as a qft config would write it */
static int adapter_section(const char *dir, config_setting_t *sec, const char **plugin,
                           qft_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    if (!c) return qft_err_setf(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    int rc = 0;
    const char *pt = json_string_value(json_object_get(c, "peft_type"));
    json_t *r = json_object_get(c, "r"), *a = json_object_get(c, "lora_alpha");
    json_t *t = json_object_get(c, "target_modules");
    if (!pt || strcmp(pt, "LORA") != 0 || !json_is_integer(r) || !json_is_number(a)) {
        rc = qft_err_setf(err, "%s: not a PEFT LoRA/DoRA adapter (needs peft_type \"LORA\", "
                               "integer r, numeric lora_alpha)", path);
        goto out;
    }
    *plugin = json_is_true(json_object_get(c, "use_dora")) ? "dora" : "lora";
    config_setting_set_string(config_setting_add(sec, "plugin", CONFIG_TYPE_STRING), *plugin);
    config_setting_set_int(config_setting_add(sec, "rank", CONFIG_TYPE_INT),
                           (int)json_integer_value(r));
    config_setting_set_float(config_setting_add(sec, "alpha", CONFIG_TYPE_FLOAT),
                             json_number_value(a));
    config_setting_set_bool(config_setting_add(sec, "rslora", CONFIG_TYPE_BOOL),
                            json_is_true(json_object_get(c, "use_rslora")));
    config_setting_t *tm = config_setting_add(sec, "target_modules", CONFIG_TYPE_ARRAY);
    if (json_is_string(t)) { /* PEFT writes "all-linear" or a regex as one string */
        config_setting_remove(sec, "target_modules");
        config_setting_set_string(config_setting_add(sec, "target_modules", CONFIG_TYPE_STRING),
                                  json_string_value(t));
    } else if (json_is_array(t)) {
        size_t i;
        json_t *v;
        json_array_foreach(t, i, v) {
            if (!json_is_string(v)) {
                rc = qft_err_setf(err, "%s: target_modules[%zu] is not a string", path, i);
                goto out;
            }
            config_setting_set_string(config_setting_add(tm, NULL, CONFIG_TYPE_STRING),
                                      json_string_value(v));
        }
    } else {
        rc = qft_err_setf(err, "%s: target_modules must be a list or a string", path);
    }
out:
    json_decref(c);
    return rc;
}

int qft_cmd_merge(int argc, char **argv) {
    qft_cli_opts o;
    if (qft_cli_parse(argc, argv, &o)) return 2;
    const char *base = NULL, *adapter = NULL, *out = NULL, *dtype = "bf16", *quant = NULL;
    for (int i = 0; i < o.n_args; i++) {
        const char *a = o.args[i];
        const char **dst = !strcmp(a, "--base") ? &base : !strcmp(a, "--adapter") ? &adapter
                           : (!strcmp(a, "-o") || !strcmp(a, "--output")) ? &out
                           : !strcmp(a, "--dtype") ? &dtype : !strcmp(a, "--quant") ? &quant
                                                                                    : NULL;
        if (!dst || i + 1 >= o.n_args) {
            fprintf(stderr, "qft merge: unexpected argument \"%s\"\n", a);
            return 2;
        }
        *dst = o.args[++i];
    }
    if (!base || !adapter || !out || (strcmp(dtype, "bf16") && strcmp(dtype, "f32"))) {
        fprintf(stderr, "usage: qft merge --base MODEL_DIR --adapter ADAPTER_DIR -o OUT "
                        "[--dtype bf16|f32] [--quant NAME] [--plugin-path DIR ...]\n");
        return 2;
    }
    qft_err err = {0};
    int status = 1;
    config_t cfg;
    config_init(&cfg);
    qft_registry reg = {0};
    const qft_adapter_vtable *avt = NULL;
    const qft_quantizer_vtable *qvt = NULL;
    void *astate = NULL, *qstate = NULL;
    qft_llama_model m;
    memset(&m, 0, sizeof m);
    config_setting_t *asec = config_setting_add(config_root_setting(&cfg), "adapter",
                                                CONFIG_TYPE_GROUP);
    config_setting_t *qsec = config_setting_add(config_root_setting(&cfg), "quant",
                                                CONFIG_TYPE_GROUP);
    const char *plugin = NULL;
    if (adapter_section(adapter, asec, &plugin, &err)) goto fail;
    char dirs[32][4096];
    int nd = qft_registry_search_path(o.plugin_dirs, o.n_plugin_dirs, NULL, 0, dirs, 32);
    if (qft_registry_scan(&reg, dirs, nd, &err)) goto fail;
    /* the sections are the adapter's own adapter_config.json fields, no user keys */
    const qft_plugin *p;
    if (qft_registry_open(&reg, QFT_KIND_ADAPTER, plugin, asec, 0, &p, &astate, &err)) goto fail;
    avt = p->desc->vtable;
    if (quant) { /* a pre-quantized base: its quantizer reads it */
        if (qft_registry_open(&reg, QFT_KIND_QUANTIZER, quant, qsec, 0, &p, &qstate, &err))
            goto fail;
        qvt = p->desc->vtable;
    }
    qft_llama_build build = {.role = role_frozen, .ctx = qvt ? (void *)1 : NULL, .qvt = qvt,
                             .qstate = qstate, .avt = avt, .astate = astate};
    if (qft_hf_model_load_build(base, &m, &build, &err) || qft_llama_alloc_grads(&m, &err) ||
        qft_peft_load(adapter, &m, &err) || qft_llama_attach_adapters(&m, 0, 0, &err) ||
        qft_hf_model_save(out, &m, strcmp(dtype, "f32") ? QFT_DT_BF16 : QFT_DT_F32, &err) ||
        qft_run_copy_tokenizer(base, out, &err))
        goto fail;
    printf("merged %s (%s, %d adapted linears) into %s: %s\n", adapter, plugin, m.n_adapted,
           base, out);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "qft: %s\n", err.msg);
done:
    qft_llama_free(&m);
    if (astate) avt->close(astate);
    if (qstate) qvt->close(qstate);
    qft_registry_free(&reg);
    config_destroy(&cfg);
    return status;
}
