/* Tokenizer throughput: encodes every question and answer of GSM8K (../shared) with one
 * thread and prints MB/s of UTF-8 input, for comparison with bench/tokenize_speed_peer.py
 * (Hugging Face tokenizers on one thread). Usage:
 *   bench_tokenize_speed [TOKENIZER_DIR [GSM8K_JSONL [REPEATS]]] */
#include "tokenizer.h"

#include <jansson.h>
#include <omp.h>
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
    /* one thread, then every thread (texts split over an OpenMP team: the tokenizer is
     * read-only, so one handle serves all) */
    printf("| tokenizer | threads | texts | MB | ids | load s | best of %d s | MB/s |\n", repeats);
    const int teams[2] = {1, omp_get_max_threads()};
    for (int ti = 0; ti < (teams[1] > 1 ? 2 : 1); ti++) {
        size_t total_ids = 0;
        double best = 1e30;
        int bad = 0;
        for (int r = 0; r < repeats; r++) {
            double s = now();
            total_ids = 0;
#pragma omp parallel for num_threads(teams[ti]) schedule(dynamic, 64) reduction(+ : total_ids) reduction(| : bad)
            for (size_t i = 0; i < n; i++) {
                int32_t *ids;
                size_t k;
                qft_err e = {0};
                if (qft_tokenizer_encode(t, texts[i], strlen(texts[i]), 0, &ids, &k, &e)) {
                    bad = 1;
                    continue;
                }
                total_ids += k;
                free(ids);
            }
            double el = now() - s;
            if (el < best) best = el;
        }
        if (bad) {
            fprintf(stderr, "encode failed\n");
            return 1;
        }
        printf("| qft C %s | %d | %zu | %.2f | %zu | %.2f | %.3f | %.1f |\n", dir, teams[ti], n,
               (double)bytes / 1e6, total_ids, t_load, best, (double)bytes / 1e6 / best);
    }
    for (size_t i = 0; i < n; i++) free(texts[i]);
    free(texts);
    qft_tokenizer_free(t);
    return 0;
}
