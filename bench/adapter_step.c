/* Train-step time of one train_type on the issue-2 bench shape (a ~20M-parameter random
 * Llama: hidden 512, 8 layers, 8 heads, intermediate 1024, vocab 2048; batch 4 x 256):
 * forward + backward + AdamW on the trainable tensors, through the engine as a run builds
 * it (qft_llama_alloc_build with the quantizer and adapter plugins found by the registry).
 * bench/adapter_step_torch.py is its PyTorch + PEFT twin; bench/run_adapter_step.sh runs
 * both for full, lora, dora, qlora and qdora and prints the table of bench/README.md.
 *
 * usage: bench_adapter_step TRAIN_TYPE [steps [rank [dropout]]]
 *   TRAIN_TYPE: full, lora, dora, qlora (bnb_nf4 + lora), qdora (bnb_nf4 + dora)
 * Adapters: rank 64, alpha 16, targets "all" (q, k, v, gate, up, down: fsdp_qlora's),
 * dropout 0; NF4 block 64 with double quantization. No activation recomputation (the
 * PyTorch twin runs without gradient checkpointing). Threads: OMP_NUM_THREADS.
 * Prints one machine-readable line:
 *   RESULT qft TYPE threads trainable total fastest_ms median_ms tokens_per_s rss_mib loss */
#include "config.h"
#include "cpu_ops.h"
#include "llama.h"
#include "optim.h"
#include "registry.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int role(void *ctx, const char *name, int is_linear) {
    (void)name;
    const int quant = (int)(intptr_t)ctx;
    return is_linear && quant ? QFT_ROLE_QUANTIZED : QFT_ROLE_FROZEN;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int fail(const qft_err *err) {
    fprintf(stderr, "bench_adapter_step: %s\n", err->msg);
    return 1;
}

int main(int argc, char **argv) {
    const char *type = argc > 1 ? argv[1] : "lora";
    const int steps = argc > 2 ? atoi(argv[2]) : 5;
    const int rank = argc > 3 ? atoi(argv[3]) : 64;
    const double dropout = argc > 4 ? atof(argv[4]) : 0.0;
    const char *quant = NULL, *adapter = NULL;
    if (!strcmp(type, "lora") || !strcmp(type, "dora")) adapter = type;
    else if (!strcmp(type, "qlora")) quant = "bnb_nf4", adapter = "lora";
    else if (!strcmp(type, "qdora")) quant = "bnb_nf4", adapter = "dora";
    else if (strcmp(type, "full") != 0) {
        fprintf(stderr, "usage: %s full|lora|dora|qlora|qdora [steps [rank [dropout]]]\n",
                argv[0]);
        return 2;
    }
    if (steps < 1 || rank < 1) return 2;

    qft_llama_config c;
    qft_llama_config_defaults(&c);
    c.hidden_size = 512, c.num_hidden_layers = 8, c.num_attention_heads = 8;
    c.num_key_value_heads = 8, c.intermediate_size = 1024, c.vocab_size = 2048;
    c.head_dim = c.hidden_size / c.num_attention_heads;
    c.max_position_embeddings = 256;
    const int B = 4, T = 256;

    qft_err err = {0};
    qft_registry reg = {0};
    config_t cfg;
    config_init(&cfg);
    char text[512];
    snprintf(text, sizeof text,
             "quant = { plugin = \"%s\"; blocksize = 64; double_quant = true; };\n"
             "adapter = { plugin = \"%s\"; rank = %d; alpha = 16; dropout = %g; "
             "target_modules = \"all\"; };\n",
             quant ? quant : "none", adapter ? adapter : "none", rank, dropout);
    if (config_read_string(&cfg, text) != CONFIG_TRUE) {
        fprintf(stderr, "bench_adapter_step: config: %s\n", config_error_text(&cfg));
        return 1;
    }
    const qft_quantizer_vtable *qvt = NULL;
    const qft_adapter_vtable *avt = NULL;
    void *qstate = NULL, *astate = NULL;
    qft_registry_set_ops(qft_cpu_ops());
    if (quant || adapter) {
        char dirs[32][4096];
        int nd = qft_registry_search_path(NULL, 0, NULL, 0, dirs, 32);
        if (qft_registry_scan(&reg, dirs, nd, &err)) return fail(&err);
    }
    if (quant) {
        const qft_plugin *p = qft_registry_find(&reg, QFT_KIND_QUANTIZER, quant, &err);
        if (!p) return fail(&err);
        qvt = p->desc->vtable;
        config_setting_t *s = config_lookup(&cfg, "quant");
        if (qft_config_check_keys(s, qvt->config_keys, &err) ||
            qvt->configure(qft_registry_services(), s, &qstate, &err))
            return fail(&err);
    }
    if (adapter) {
        const qft_plugin *p = qft_registry_find(&reg, QFT_KIND_ADAPTER, adapter, &err);
        if (!p) return fail(&err);
        avt = p->desc->vtable;
        config_setting_t *s = config_lookup(&cfg, "adapter");
        if (qft_config_check_keys(s, avt->config_keys, &err) ||
            avt->configure(qft_registry_services(), s, &astate, &err))
            return fail(&err);
    }
    /* full: every tensor trains (NULL build); adapters: the base is frozen or packed */
    qft_llama_build build = {.role = role, .ctx = (void *)(intptr_t)(qvt != NULL), .qvt = qvt,
                             .qstate = qstate, .avt = avt, .astate = astate};
    qft_llama_model m;
    if (qft_llama_alloc_build(&m, &c, adapter ? &build : NULL, &err) ||
        qft_llama_init_random(&m, 1234, &err) || qft_llama_alloc_grads(&m, &err) ||
        (avt && qft_llama_attach_adapters(&m, 1, 1234, &err)))
        return fail(&err);
    m.recompute = 0;
    qft_optim_config oc = {.kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f,
                           .weight_decay = 0.1f};
    qft_optim opt;
    if (qft_optim_init(&opt, &oc, m.n_trainable, &err)) return fail(&err);

    int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * T); /* (B, T) */
    double *dt = malloc(sizeof(double) * (size_t)steps);
    if (!ids || !dt) return 1;
    qft_rng r;
    qft_rng_seed(&r, 7);
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(qft_rng_next(&r) % (uint64_t)c.vocab_size);
    qft_batch b = {.B = B, .T = T, .ids = ids, .labels = ids, .mask = NULL};
    float loss = 0;
    for (int s = 0; s < steps + 1; s++) { /* step 0 warms caches and allocates activations */
        const double t0 = qft_time_now();
        qft_llama_zero_grads(&m);
        m.astep = (qft_adapter_step){.seed = 1, .step = s, .micro = 0, .training = 1};
        if (qft_llama_forward(&m, &b, &loss, &err) || qft_llama_backward(&m, &b, 1.0f, &err))
            return fail(&err);
        qft_optim_step(&opt, m.params, m.grads, 1e-4f);
        if (s > 0) dt[s - 1] = qft_time_now() - t0;
    }
    qsort(dt, (size_t)steps, sizeof *dt, cmp_double);
    const double fastest = dt[0], median = dt[steps / 2];
    const size_t total = m.n_params + m.n_quantized;
    printf("RESULT qft %s %d %zu %zu %.1f %.1f %.0f %.0f %.4f\n", type, omp_get_max_threads(),
           m.n_trainable, total, fastest * 1e3, median * 1e3, (double)B * T / fastest,
           qft_mem_peak_rss() / 1048576.0, loss);
    qft_optim_free(&opt);
    qft_llama_free(&m);
    if (astate) avt->close(astate);
    if (qstate) qvt->close(qstate);
    qft_registry_free(&reg);
    config_destroy(&cfg);
    free(ids), free(dt);
    return 0;
}
