/* Train-step benchmark: forward + backward + AdamW of a random Llama on the CPU backend.
 * Prints one table row: tokens/s and peak RSS. bench/train_step_torch.py is its PyTorch
 * twin; bench/run_train_step.sh runs both with one thread count and prints the table.
 *
 * usage: bench_train_step [hidden layers heads kv_heads intermediate vocab seq batch steps]
 */
#include "llama.h"
#include "optim.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int a[9] = {512, 8, 8, 8, 1024, 2048, 256, 4, 6}; /* defaults: the issue's ~20M config */
    for (int i = 1; i < argc && i <= 9; i++) a[i - 1] = atoi(argv[i]);
    qft_llama_config c;
    qft_llama_config_defaults(&c);
    c.hidden_size = a[0], c.num_hidden_layers = a[1], c.num_attention_heads = a[2];
    c.num_key_value_heads = a[3], c.intermediate_size = a[4], c.vocab_size = a[5];
    c.head_dim = c.hidden_size / c.num_attention_heads;
    c.max_position_embeddings = a[6];
    const int T = a[6], B = a[7], steps = a[8];
    qft_err err = {0};
    qft_llama_model m;
    if (qft_llama_alloc(&m, &c, &err) || qft_llama_alloc_grads(&m, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    if (qft_llama_init_random(&m, 1234, &err)) return 1;
    qft_optim_config oc = {.kind = QFT_OPT_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-5f,
                           .weight_decay = 0.1f};
    qft_optim opt;
    if (qft_optim_init(&opt, &oc, m.n_params, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * T);
    qft_rng r;
    qft_rng_seed(&r, 7);
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(qft_rng_next(&r) % (uint64_t)c.vocab_size);
    qft_batch b = {.B = B, .T = T, .ids = ids, .labels = ids, .mask = NULL};
    double t_total = 0;
    float loss = 0;
    for (int s = 0; s < steps + 1; s++) { /* step 0 warms caches and allocates activations */
        double t0 = qft_time_now();
        qft_llama_zero_grads(&m);
        if (qft_llama_forward(&m, &b, &loss, &err) || qft_llama_backward(&m, &b, 1.0f, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
        qft_optim_step(&opt, m.params, m.grads, 1e-4f);
        if (s > 0) t_total += qft_time_now() - t0;
    }
    printf("| qft (C, fp32, OpenBLAS) | %d | %.2fM | %d x %d | %.0f | %.0f | %.4f |\n",
           omp_get_max_threads(), m.n_params / 1e6, B, T, (double)B * T * steps / t_total,
           qft_mem_peak_rss() / 1048576.0, loss);
    qft_optim_free(&opt);
    qft_llama_free(&m);
    free(ids);
    return 0;
}
