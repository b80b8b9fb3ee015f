/* Tokenizer throughput: encodes every question and answer of GSM8K (../shared) with one
 * thread and prints MB/s of UTF-8 input, for comparison with bench/tokenize_speed_peer.py
 * (Hugging Face tokenizers on one thread). Usage:
 *   bench_tokenize_speed [TOKENIZER_DIR [GSM8K_JSONL [REPEATS]]] */
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "../shared/assets/tokenizers/llama3";
    const char *data = argc > 2 ? argv[2] : "../shared/assets/datasets/gsm8k/train.jsonl";
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    qft_err err = {0};
    qft_tokenizer *t;
    double t0 = now();
    if (qft_tokenizer_load(dir, &t, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double t_load = now() - t0;
    FILE *f = fopen(data, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", data);
        return 1;
    }
    size_t cap = 16384, n = 0, bytes = 0;
    char **texts = malloc(cap * sizeof *texts);
    char line[1 << 16];
    while (texts && fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (!j) continue;
        const char *keys[2] = {"question", "answer"};
        for (int k = 0; k < 2; k++) {
            const char *s = json_string_value(json_object_get(j, keys[k]));
            if (!s) continue;
            if (n == cap) {
                cap *= 2;
                char **nt = realloc(texts, cap * sizeof *nt);
                if (!nt) return 1;
                texts = nt;
            }
            texts[n++] = strdup(s);
            bytes += strlen(s);
        }
        json_decref(j);
    }
    fclose(f);
    size_t total_ids = 0;
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double s = now();
        total_ids = 0;
        for (size_t i = 0; i < n; i++) {
            int32_t *ids;
            size_t k;
            if (qft_tokenizer_encode(t, texts[i], strlen(texts[i]), 0, &ids, &k, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            total_ids += k;
            free(ids);
        }
        double e = now() - s;
        if (e < best) best = e;
    }
    printf("| tokenizer | texts | MB | ids | load s | best of %d s | MB/s |\n", repeats);
    printf("| qft C (1 thread) %s | %zu | %.2f | %zu | %.2f | %.3f | %.1f |\n", dir, n,
           (double)bytes / 1e6, total_ids, t_load, best, (double)bytes / 1e6 / best);
    for (size_t i = 0; i < n; i++) free(texts[i]);
    free(texts);
    qft_tokenizer_free(t);
    return 0;
}
