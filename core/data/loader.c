/* Ordering examples per epoch and packing them into right-padded batches; see batch.h. */
#include "batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* transformers' LengthGroupedSampler groups 50 batches at a time. */
#define QFT_LENGTH_GROUP_BATCHES 50

static long uniform_below(qft_rng *r, long bound) {
    long k = (long)(qft_rng_uniform(r) * (double)bound);
    return k < bound ? k : bound - 1;
}

static void shuffle_longs(long *a, long n, qft_rng *r) {
    for (long i = n - 1; i > 0; i--) {
        long j = uniform_below(r, i + 1);
        long t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* Sorting by length, longest first; equal lengths keep their shuffled order (the index
 * into the order array breaks ties), so the result does not depend on qsort's stability. */
typedef struct len_key {
    int len;
    long pos;
    long example;
} len_key;

static int cmp_len_desc(const void *a, const void *b) {
    const len_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int group_by_length(qft_data_loader *l, qft_rng *r, qft_err *err) {
    const long n = l->data->count, B = l->opt.batch_size;
    const long mega = B * QFT_LENGTH_GROUP_BATCHES;
    len_key *keys = malloc((size_t)n * sizeof(len_key)); // [n]
    if (!keys) return qft_err_setf(err, "data loader: out of memory ordering %ld examples", n);
    for (long i = 0; i < n; i++) keys[i] = (len_key){l->data->ex[l->order[i]].n, i, l->order[i]};
    for (long s = 0; s < n; s += mega)
        qsort(keys + s, (size_t)(n - s < mega ? n - s : mega), sizeof(len_key), cmp_len_desc);

    /* Shuffle whole batches; a final partial batch stays last so that every batch but one
     * is full. Then bring the batch with the longest example to the front. */
    const long full = n / B;
    long *batch_order = malloc((size_t)(full ? full : 1) * sizeof(long)); // [full]
    if (!batch_order) {
        free(keys);
        return qft_err_setf(err, "data loader: out of memory ordering %ld batches", full);
    }
    for (long b = 0; b < full; b++) batch_order[b] = b;
    shuffle_longs(batch_order, full, r);
    long longest = 0;
    for (long i = 1; i < n; i++)
        if (keys[i].len > keys[longest].len) longest = i;
    const long longest_batch = longest / B;
    if (longest_batch < full) {
        for (long b = 0; b < full; b++)
            if (batch_order[b] == longest_batch) {
                batch_order[b] = batch_order[0];
                batch_order[0] = longest_batch;
                break;
            }
    }
    long k = 0;
    for (long b = 0; b < full; b++)
        for (long j = 0; j < B; j++) l->order[k++] = keys[batch_order[b] * B + j].example;
    for (long i = full * B; i < n; i++) l->order[k++] = keys[i].example;
    free(batch_order);
    free(keys);
    return 0;
}

int qft_data_loader_epoch(qft_data_loader *l, int epoch, qft_err *err) {
    const long n = l->data->count;
    for (long i = 0; i < n; i++) l->order[i] = i;
    l->epoch = epoch;
    if (!l->opt.shuffle && !l->opt.group_by_length) return 0;
    qft_rng base, r;
    qft_rng_seed(&base, l->opt.seed);
    char purpose[64];
    snprintf(purpose, sizeof purpose, "data.order.epoch%d", epoch);
    qft_rng_fork(&base, purpose, &r);
    if (l->opt.shuffle) shuffle_longs(l->order, n, &r);
    if (l->opt.group_by_length) return group_by_length(l, &r, err);
    return 0;
}

int qft_data_loader_init(qft_data_loader *l, const qft_data_examples *data,
                         const qft_data_loader_options *opt, qft_err *err) {
    memset(l, 0, sizeof *l);
    if (opt->batch_size <= 0)
        return qft_err_setf(err, "train.batch_size = %d: must be positive", opt->batch_size);
    if (opt->pad_id < 0)
        return qft_err_setf(err, "data loader: pad id %d is negative (the tokenizer has no pad or EOS token)",
                            (int)opt->pad_id);
    l->data = data;
    l->opt = *opt;
    const long n = data->count, B = opt->batch_size;
    l->n_batches = opt->drop_last ? n / B : (n + B - 1) / B;
    l->t_cap = opt->pad_to_context ? data->context_length : data->max_len;
    if (l->t_cap < 1) l->t_cap = 1;
    const size_t cells = (size_t)B * (size_t)l->t_cap; // (B, t_cap)
    l->order = malloc((size_t)(n ? n : 1) * sizeof(long)); // [n]
    l->ids = qft_mem_alloc(cells * sizeof(int32_t), "batch");
    l->labels = qft_mem_alloc(cells * sizeof(int32_t), "batch");
    l->mask = qft_mem_alloc(cells, "batch");
    if (!l->order || !l->ids || !l->labels || !l->mask) {
        qft_data_loader_free(l);
        return qft_err_setf(err, "data loader: out of memory for a (%ld, %d) batch", B, l->t_cap);
    }
    return qft_data_loader_epoch(l, 0, err);
}

long qft_data_loader_count(const qft_data_loader *l) { return l->n_batches; }

int qft_data_loader_get(qft_data_loader *l, long index, qft_batch *out, long *n_tokens,
                        qft_err *err) {
    if (index < 0 || index >= l->n_batches)
        return qft_err_setf(err, "data loader: batch %ld of an epoch of %ld", index, l->n_batches);
    const long B_full = l->opt.batch_size;
    const long first = index * B_full;
    const long left = l->data->count - first;
    const int B = (int)(left < B_full ? left : B_full);
    int T = 0;
    if (l->opt.pad_to_context) {
        T = l->data->context_length;
    } else {
        for (int b = 0; b < B; b++) {
            int n = l->data->ex[l->order[first + b]].n;
            if (n > T) T = n;
        }
        if (T < 1) T = 1; /* empty examples still make a (B, 1) batch of padding */
    }
    long real = 0;
    for (int b = 0; b < B; b++) {
        const qft_example *e = &l->data->ex[l->order[first + b]];
        int32_t *ids = l->ids + (size_t)b * T;       // (T) row b of (B, T)
        int32_t *labels = l->labels + (size_t)b * T; // (T)
        uint8_t *mask = l->mask + (size_t)b * T;     // (T)
        memcpy(ids, e->ids, (size_t)e->n * sizeof(int32_t));
        memcpy(labels, e->labels, (size_t)e->n * sizeof(int32_t));
        memset(mask, 1, (size_t)e->n);
        for (int t = e->n; t < T; t++) {
            ids[t] = l->opt.pad_id;
            labels[t] = QFT_IGNORE_INDEX;
            mask[t] = 0;
        }
        real += e->n;
    }
    out->B = B;
    out->T = T;
    out->ids = l->ids;
    out->labels = l->labels;
    out->mask = l->mask;
    if (n_tokens) *n_tokens = real;
    return 0;
}

void qft_data_loader_free(qft_data_loader *l) {
    if (!l) return;
    free(l->order);
    qft_mem_free(l->ids);
    qft_mem_free(l->labels);
    qft_mem_free(l->mask);
    l->order = NULL;
    l->ids = l->labels = NULL;
    l->mask = NULL;
}
