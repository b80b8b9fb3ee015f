/* Reading the tokenizer fixtures of tests/fixtures/tok (JSON Lines written by
 * tests/reference/tokenizer_reference.py) for the Check suites of tests/tok. */
#ifndef QFT_TEST_TOK_FIXTURE_H
#define QFT_TEST_TOK_FIXTURE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* One line per element; the caller json_decref's each and frees the array. NULL when the
 * file cannot be read (message on stderr). */
json_t **fx_read_jsonl(const char *path, size_t *n);
void fx_free_lines(json_t **lines, size_t n);

/* The int array under `key`, malloc'ed; n = -1 when the key is absent. */
int32_t *fx_ids(json_t *rec, const char *key, long *n);

/* $QFT_SOURCE_ROOT (or ".") joined with rel. */
void fx_path(char *out, size_t cap, const char *rel);

/* A corpus text: the bytes to encode and the text HF saw (they differ only for invalid
 * UTF-8). Dataset records are rebuilt from ../shared; returns 0 ok, 1 when the dataset is
 * absent (skip), -1 on a broken record. */
typedef struct fx_text {
    char *raw;
    size_t raw_len;
    char *text;
    size_t text_len;
} fx_text;
int fx_corpus_text(json_t *rec, fx_text *out);
void fx_text_free(fx_text *t);

/* Checks one text against its reference record (crec holds the text, rrec the ids; they
 * may be the same object): encode with and without special tokens, decode with and without
 * skipping them. Counts into st and prints the first mismatches. On success *ids (the
 * add_special = 0 ids, malloc'ed) and *tx are kept for the caller; returns 1 when the
 * record was skipped (dataset absent), 0 when checked, -1 on a broken record. */
typedef struct fx_stats {
    size_t checked, skipped, bad_enc, bad_enc_sp, bad_dec, bad_dec_skip, rt_ref, rt_ours, shown;
} fx_stats;
struct qft_tokenizer;
int fx_check_record(const struct qft_tokenizer *t, const char *name, size_t i, json_t *crec,
                    json_t *rrec, const int32_t *pre, long n_pre, const int32_t *suf, long n_suf,
                    fx_stats *st, int32_t **ids, size_t *n_ids, fx_text *tx);
/* Runs fx_check_record over a reference file whose records carry their text inline (the
 * synthetic fixtures), loading the tokenizer from dir. Prints a summary line. */
int fx_check_inline(const char *dir, const char *jsonl, const char *name, fx_stats *st);

#endif
