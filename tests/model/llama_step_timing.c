/* A timing driver, not a test: tokens/s and peak RSS of forward + backward + AdamW on a
 * random Llama, for comparing against PyTorch by hand. No assertions on time.
 *   llama_step_timing [hidden layers heads kv_heads intermediate vocab B T steps recompute tied]
 * Defaults: the issue's ~20M-parameter shape, 512 8 8 8 1376 32000 4 256 5 0 0. */
#include "llama.h"
#include "optim.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int a[11] = {512, 8, 8, 8, 1376, 32000, 4, 256, 5, 0, 0};
    for (int i = 1; i < argc && i <= 11; i++) a[i - 1] = atoi(argv[i]);
    qft_llama_config cfg;
    qft_llama_config_defaults(&cfg);
    cfg.hidden_size = a[0], cfg.num_hidden_layers = a[1], cfg.num_attention_heads = a[2];
    cfg.num_key_value_heads = a[3], cfg.intermediate_size = a[4], cfg.vocab_size = a[5];
    cfg.head_dim = a[0] / a[2], cfg.tie_word_embeddings = a[10], cfg.rms_norm_eps = 1e-5f;
    const int B = a[6], T = a[7], steps = a[8];
    qft_llama_model m;
    qft_err err = {0};
    qft_optim opt;
    qft_optim_config oc = {.kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f,
                           .weight_decay = 0.1f};
    if (qft_llama_alloc(&m, &cfg, &err) || qft_llama_alloc_grads(&m, &err) ||
        qft_optim_init(&opt, &oc, m.n_params, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    m.recompute = a[9];
    if (qft_llama_init_random(&m, 42, &err)) return 1;
    int32_t *ids = malloc((size_t)B * T * sizeof *ids), *labels = malloc((size_t)B * T * sizeof *ids);
    if (!ids || !labels) return 1;
    qft_rng r;
    qft_rng_seed(&r, 7);
    for (int i = 0; i < B * T; i++) ids[i] = labels[i] = (int32_t)(qft_rng_next(&r) % cfg.vocab_size);
    qft_batch b = {B, T, ids, labels, NULL};
    double tf = 0, tb = 0, to = 0;
    for (int s = 0; s <= steps; s++) { /* step 0 warms up and is not counted */
        float loss;
        double t0 = qft_time_now();
        if (qft_llama_forward(&m, &b, &loss, &err)) break;
        double t1 = qft_time_now();
        qft_llama_zero_grads(&m);
        if (qft_llama_backward(&m, &b, 1.0f, &err)) break;
        double t2 = qft_time_now();
        qft_optim_step(&opt, m.params, m.grads, 1e-4f);
        double t3 = qft_time_now();
        if (s) tf += t1 - t0, tb += t2 - t1, to += t3 - t2;
        printf("step %d loss %.4f fwd %.3fs bwd %.3fs opt %.3fs\n", s, loss, t1 - t0, t2 - t1, t3 - t2);
    }
    if (err.code) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double t = (tf + tb + to) / steps;
    printf("params %zu, %.1f tokens/s (fwd %.3f bwd %.3f opt %.3f s/step), activations %.1f MB, "
           "peak RSS %.1f MB\n", m.n_params, B * T / t, tf / steps, tb / steps, to / steps,
           qft_llama_acts_bytes(&m) / 1e6, qft_mem_peak_rss() / 1e6);
    qft_optim_free(&opt);
    qft_llama_free(&m);
    free(ids), free(labels);
    return 0;
}
