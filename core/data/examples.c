/* Tokenizing (prompt, response) pairs into labelled examples; rules in batch.h. */
#include "batch.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct pairs_src {
    const char *const *prompts;
    const char *const *responses;
} pairs_src;

static int pairs_get(const void *state, long index, const char **prompt, const char **response,
                     qft_err *err) {
    const pairs_src *s = state;
    *prompt = s->prompts[index];
    *response = s->responses[index];
    if (!*prompt || !*response) return qft_err_setf(err, "example %ld: NULL prompt or response", index);
    return 0;
}

/* One example's tokens before compaction into the shared storage. */
typedef struct raw_example {
    int32_t *ids; /* (n_full) malloc'ed by the tokenizer, EOS appended */
    size_t n_full;
    size_t n_prompt;
} raw_example;

static int tokenize_one(const qft_tokenizer *tok, int32_t eos, const char *prompt,
                        const char *response, raw_example *out, qft_err *err) {
    const size_t lp = strlen(prompt), lr = strlen(response);
    char *text = malloc(lp + lr + 1); // (lp + lr + 1) prompt + response
    if (!text) return qft_err_setf(err, "out of memory for %zu bytes of text", lp + lr + 1);
    memcpy(text, prompt, lp);
    memcpy(text + lp, response, lr + 1);
    int32_t *ids = NULL, *pids = NULL;
    size_t n = 0, np = 0;
    /* The example is tokenized as one text, like the seed, not as two token lists
     * joined: a merge across the seam must happen as it does there. */
    int rc = qft_tokenizer_encode(tok, text, lp + lr, 1, &ids, &n, err);
    free(text);
    if (rc != 0) return rc;
    rc = qft_tokenizer_encode(tok, prompt, lp, 1, &pids, &np, err);
    free(pids);
    if (rc != 0) {
        free(ids);
        return rc;
    }
    int32_t *grown = realloc(ids, (n + 1) * sizeof(int32_t)); // (n + 1) with EOS
    if (!grown) {
        free(ids);
        return qft_err_setf(err, "out of memory for %zu token ids", n + 1);
    }
    grown[n] = eos;
    out->ids = grown;
    out->n_full = n + 1;
    out->n_prompt = np;
    return 0;
}

int qft_data_examples_build(qft_data_examples *out, const qft_tokenizer *tok,
                            qft_data_get_fn get, const void *state, const long *indices,
                            long count, int context_length, qft_err *err) {
    memset(out, 0, sizeof *out);
    if (count < 0) return qft_err_setf(err, "data: negative example count %ld", count);
    if (context_length <= 0)
        return qft_err_setf(err, "data.context_length = %d: must be positive", context_length);
    const int32_t eos = qft_tokenizer_eos(tok);
    if (eos < 0) return qft_err_setf(err, "data: the tokenizer defines no EOS token, which every example ends with");

    /* The source is asked from this thread only: a plugin's get need not be thread-safe. */
    const char **text = malloc((size_t)(count ? count : 1) * 2 * sizeof(char *)); // (count, 2)
    raw_example *raw = calloc((size_t)(count ? count : 1), sizeof(raw_example));  // [count]
    if (!text || !raw) {
        free(text);
        free(raw);
        return qft_err_setf(err, "data: out of memory for %ld examples", count);
    }
    for (long i = 0; i < count; i++) {
        long row = indices ? indices[i] : i;
        if (get(state, row, &text[2 * i], &text[2 * i + 1], err) != 0) {
            free(text);
            free(raw);
            return -1;
        }
    }

    long bad = -1; /* the lowest failing example, so the message does not depend on threads */
    qft_err first_err = {0};
#pragma omp parallel for schedule(dynamic, 16)
    for (long i = 0; i < count; i++) {
        qft_err e = {0};
        if (tokenize_one(tok, eos, text[2 * i], text[2 * i + 1], &raw[i], &e) != 0) {
#pragma omp critical(qft_data_examples_err)
            if (bad < 0 || i < bad) {
                bad = i;
                first_err = e;
            }
        }
    }
    free(text);
    int rc = 0;
    if (bad >= 0) {
        rc = qft_err_setf(err, "data: example %ld (row %ld): %s", bad, indices ? indices[bad] : bad,
                          first_err.msg);
        goto done;
    }

    long total = 0; /* tokens kept over all examples */
    for (long i = 0; i < count; i++) {
        size_t n = raw[i].n_full < (size_t)context_length ? raw[i].n_full : (size_t)context_length;
        if (raw[i].n_full > (size_t)INT_MAX) {
            rc = qft_err_setf(err, "data: example %ld has %zu tokens", i, raw[i].n_full);
            goto done;
        }
        total += (long)n;
    }
    out->ex = qft_mem_calloc((size_t)(count ? count : 1) * sizeof(qft_example), "data examples");
    out->storage = qft_mem_alloc((size_t)(total ? total : 1) * 2 * sizeof(int32_t), "data tokens"); // (2 * total)
    if (!out->ex || !out->storage) {
        rc = qft_err_setf(err, "data: out of memory for %ld tokens", total);
        goto done;
    }
    long off = 0;
    for (long i = 0; i < count; i++) {
        qft_example *e = &out->ex[i];
        e->n_full = (int)raw[i].n_full;
        e->n_prompt = (int)raw[i].n_prompt;
        e->n = e->n_full < context_length ? e->n_full : context_length;
        e->ids = out->storage + off;           // (n)
        e->labels = out->storage + total + off; // (n)
        off += e->n;
    }
#pragma omp parallel for schedule(static)
    for (long i = 0; i < count; i++) {
        qft_example *e = &out->ex[i];
        memcpy(e->ids, raw[i].ids, (size_t)e->n * sizeof(int32_t));
        for (int t = 0; t < e->n; t++) e->labels[t] = t < e->n_prompt ? QFT_IGNORE_INDEX : e->ids[t];
    }
    out->count = count;
    out->context_length = context_length;
    out->n_tokens = total;
    for (long i = 0; i < count; i++) {
        const qft_example *e = &out->ex[i];
        if (e->n_full > context_length) out->n_truncated++;
        int targets = e->n > e->n_prompt ? e->n - e->n_prompt : 0;
        if (targets == 0) out->n_no_target++;
        out->n_target_tokens += targets;
        if (e->n > out->max_len) out->max_len = e->n;
    }
done:
    for (long i = 0; i < count; i++) free(raw[i].ids);
    free(raw);
    if (rc != 0) qft_data_examples_free(out);
    return rc;
}

int qft_data_examples_from_pairs(qft_data_examples *out, const qft_tokenizer *tok,
                                 const char *const *prompts, const char *const *responses,
                                 long count, int context_length, qft_err *err) {
    pairs_src src = {prompts, responses};
    return qft_data_examples_build(out, tok, pairs_get, &src, NULL, count, context_length, err);
}

void qft_data_examples_free(qft_data_examples *d) {
    if (!d) return;
    qft_mem_free(d->ex);
    qft_mem_free(d->storage);
    memset(d, 0, sizeof *d);
}
