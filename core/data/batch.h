/* From (prompt, response) text to training batches, as the seed's fsdp_qlora does it
 * (train.py InstructionDataset + collate_fn; ../shared/REFERENCE.md "Prompt formats and
 * labels"):
 *
 *   ids    = encode(prompt + response, add_special) + [EOS]
 *   labels = ids, with the first len(encode(prompt, add_special)) positions set to -100
 *   both truncated to context_length (the EOS is lost when an example is cut)
 *
 * and batches right-padded to the longest example in the batch (or to context_length)
 * with the pad id, labels -100 and mask 0. All examples are tokenized once, in parallel;
 * the tokenizer is const and thread-safe.
 *
 * Sample packing (several examples per row) is not supported yet: one example per row. */
#ifndef QFT_BATCH_H
#define QFT_BATCH_H

#include "llama.h"
#include "qft_base.h"
#include "tokenizer.h"

#define QFT_IGNORE_INDEX (-100)

typedef struct qft_example {
    int32_t *ids;    /* (n) into the owner's storage */
    int32_t *labels; /* (n) -100 where the prompt is */
    int n;           /* tokens kept (<= context_length) */
    int n_full;      /* tokens before truncation */
    int n_prompt;    /* len(encode(prompt)): masked positions, before truncation */
} qft_example;

typedef struct qft_data_examples {
    qft_example *ex;       /* [count] */
    long count;
    int context_length;
    long n_truncated;      /* examples with n_full > context_length */
    long n_no_target;      /* examples left with no label != -100 (the prompt fills the context) */
    long n_tokens;         /* sum of n */
    long n_target_tokens;  /* labels != -100, summed */
    int max_len;           /* the longest n */
    int32_t *storage;      /* (2 * n_tokens): every example's ids, then its labels */
} qft_data_examples;

/* Where the text comes from: the dataset vtable's `get` has this signature. It is called
 * from one thread only. */
typedef int (*qft_data_get_fn)(const void *state, long index, const char **prompt,
                               const char **response, qft_err *err);

/* Tokenizes rows indices[0..count) of the source (indices NULL: rows 0..count-1) into
 * out->ex[0..count), in that order. Errors name the row. */
int qft_data_examples_build(qft_data_examples *out, const qft_tokenizer *tok,
                            qft_data_get_fn get, const void *state, const long *indices,
                            long count, int context_length, qft_err *err);
/* The same from two arrays of strings. */
int qft_data_examples_from_pairs(qft_data_examples *out, const qft_tokenizer *tok,
                                 const char *const *prompts, const char *const *responses,
                                 long count, int context_length, qft_err *err);
void qft_data_examples_free(qft_data_examples *d);

/* ---- batching ------------------------------------------------------------------------ */
typedef struct qft_data_loader_options {
    int batch_size;      /* B */
    int pad_to_context;  /* T = context_length in every batch, not the batch's longest */
    int shuffle;         /* seeded shuffle per epoch; 0 = the examples' order */
    int group_by_length; /* batches of similar length (see qft_data_loader_epoch) */
    int drop_last;       /* drop a final batch with fewer than B examples */
    uint64_t seed;
    int32_t pad_id;      /* the tokenizer's pad id (qft_tokenizer_pad: EOS when none) */
} qft_data_loader_options;

typedef struct qft_data_loader {
    const qft_data_examples *data;
    qft_data_loader_options opt;
    long *order;      /* [count] example indices in this epoch's order */
    long n_batches;   /* per epoch */
    int epoch;
    int t_cap;        /* the largest T a batch can have */
    int32_t *ids;     /* (B, t_cap) buffer behind the batches handed out */
    int32_t *labels;  /* (B, t_cap) */
    uint8_t *mask;    /* (B, t_cap) */
} qft_data_loader;

/* Checks the options and orders epoch 0. data must outlive the loader. */
int qft_data_loader_init(qft_data_loader *l, const qft_data_examples *data,
                         const qft_data_loader_options *opt, qft_err *err);
/* Orders the examples for `epoch`: the same seed and epoch always give the same order.
 * With shuffle, a Fisher-Yates shuffle from a stream forked off the seed for this epoch.
 * With group_by_length (as transformers' LengthGroupedSampler), the shuffled order is cut
 * into mega-batches of 50 batches, each sorted by length (longest first) and cut into
 * batches; the batch order is then shuffled, with the batch holding the longest example
 * first, so that an out-of-memory shows at the first step rather than hours in. */
int qft_data_loader_epoch(qft_data_loader *l, int epoch, qft_err *err);
/* Batches per epoch. */
long qft_data_loader_count(const qft_data_loader *l);
/* Batch `index` of the current epoch. The arrays point into the loader and stay valid
 * until the next call; out->B is smaller than batch_size only for a final partial batch.
 * n_tokens (may be NULL) receives the real (unpadded) tokens in the batch. */
int qft_data_loader_get(qft_data_loader *l, long index, qft_batch *out, long *n_tokens,
                        qft_err *err);
void qft_data_loader_free(qft_data_loader *l);

#endif
