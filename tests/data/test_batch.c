/* Examples and batches (core/data): label masking, EOS, truncation, padding, per-epoch
 * shuffles and length grouping, on pseudo-random text of varied lengths.
 *
 * Built twice: with QFT_TEST_LOCAL_TOKENIZER, against a byte tokenizer defined below
 * (ids 0..255 = bytes, then BOS 256, EOS 257, PAD 258; add_special adds BOS), so the
 * expected ids are known independently; and, when core/tok is built, against the real
 * qft_tokenizer_byte_new(), with expectations formed from separate encode calls. */
#include "batch.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#ifdef QFT_TEST_LOCAL_TOKENIZER
struct qft_tokenizer {
    int eos;
};
qft_tokenizer *qft_tokenizer_byte_new(void) {
    qft_tokenizer *t = malloc(sizeof *t);
    if (t) t->eos = 257;
    return t;
}
void qft_tokenizer_free(qft_tokenizer *t) { free(t); }
int qft_tokenizer_encode(const qft_tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n_ids, qft_err *err) {
    (void)t;
    int32_t *out = malloc((len + 1) * sizeof(int32_t));
    if (!out) return qft_err_setf(err, "oom");
    size_t n = 0;
    if (add_special) out[n++] = 256;
    for (size_t i = 0; i < len; i++) out[n++] = (unsigned char)text[i];
    *ids = out;
    *n_ids = n;
    return 0;
}
int qft_tokenizer_eos(const qft_tokenizer *t) { return t->eos; }
int qft_tokenizer_pad(const qft_tokenizer *t) { return 258; }
#endif

#define N_EX 203 /* not a multiple of the batch sizes used */

static qft_tokenizer *g_tok;
static char *g_prompts[N_EX], *g_responses[N_EX];

/* Setup runs outside any test, where Check's asserts cannot report. */
static void *need(void *p) {
    if (!p) {
        fprintf(stderr, "test setup: out of memory\n");
        exit(EXIT_FAILURE);
    }
    return p;
}

/* Word-like text of a random length: lengths vary so batches need padding and grouping
 * has something to group. */
static char *random_text(qft_rng *r, int min_len, int max_len) {
    int len = min_len + (int)(qft_rng_uniform(r) * (max_len - min_len + 1));
    char *s = need(malloc((size_t)len + 1));
    for (int i = 0; i < len; i++) {
        int c = (int)(qft_rng_uniform(r) * 28);
        s[i] = c < 26 ? (char)('a' + c) : c == 26 ? ' ' : '\n';
    }
    s[len] = 0;
    return s;
}

static void make_texts(void) {
    qft_rng r;
    qft_rng_seed(&r, 2024);
    for (int i = 0; i < N_EX; i++) {
        char *q = random_text(&r, 0, 40);
        size_t size = strlen(q) + 32;
        g_prompts[i] = need(malloc(size));
        snprintf(g_prompts[i], size, "###Question:\n%s\n###Answer:\n", q);
        free(q);
        g_responses[i] = random_text(&r, 1, 90);
    }
}

/* The expected example, formed without the code under test. */
static void expected(int i, int ctx, int32_t **ids, int32_t **labels, int *n, int *n_full,
                     int *n_prompt) {
    qft_err err = {0};
    size_t lp = strlen(g_prompts[i]), lr = strlen(g_responses[i]);
    char *text = malloc(lp + lr + 1);
    ck_assert_ptr_nonnull(text);
    memcpy(text, g_prompts[i], lp);
    memcpy(text + lp, g_responses[i], lr + 1);
    int32_t *full = NULL, *pp = NULL;
    size_t nf = 0, np = 0;
    ck_assert_int_eq(qft_tokenizer_encode(g_tok, text, lp + lr, 1, &full, &nf, &err), 0);
    ck_assert_int_eq(qft_tokenizer_encode(g_tok, g_prompts[i], lp, 1, &pp, &np, &err), 0);
#ifdef QFT_TEST_LOCAL_TOKENIZER
    ck_assert_uint_eq(nf, 1 + lp + lr);
    ck_assert_uint_eq(np, 1 + lp);
#endif
    free(text);
    free(pp);
    *n_full = (int)nf + 1;
    *n_prompt = (int)np;
    *n = *n_full < ctx ? *n_full : ctx;
    *ids = malloc((size_t)*n_full * sizeof(int32_t));
    *labels = malloc((size_t)*n_full * sizeof(int32_t));
    ck_assert(*ids && *labels);
    for (int t = 0; t < *n_full; t++) {
        (*ids)[t] = t < (int)nf ? full[t] : qft_tokenizer_eos(g_tok);
        (*labels)[t] = t < (int)np ? -100 : (*ids)[t];
    }
    free(full);
}

static void build(qft_data_examples *d, int ctx) {
    qft_err err = {0};
    ck_assert_msg(qft_data_examples_from_pairs(d, g_tok, (const char *const *)g_prompts,
                                               (const char *const *)g_responses, N_EX, ctx, &err) == 0,
                  "%s", err.msg);
}

START_TEST(examples_match_the_seed_rule) {
    const int ctxs[] = {2048, 48};
    for (int k = 0; k < 2; k++) {
        const int ctx = ctxs[k];
        qft_data_examples d;
        build(&d, ctx);
        ck_assert_int_eq(d.count, N_EX);
        long trunc = 0, no_target = 0, tokens = 0, targets = 0;
        int max_len = 0;
        for (int i = 0; i < N_EX; i++) {
            int32_t *ids, *labels;
            int n, n_full, n_prompt;
            expected(i, ctx, &ids, &labels, &n, &n_full, &n_prompt);
            const qft_example *e = &d.ex[i];
            ck_assert_int_eq(e->n, n);
            ck_assert_int_eq(e->n_full, n_full);
            ck_assert_int_eq(e->n_prompt, n_prompt);
            for (int t = 0; t < n; t++) {
                ck_assert_msg(e->ids[t] == ids[t], "ctx %d example %d id %d", ctx, i, t);
                ck_assert_msg(e->labels[t] == labels[t], "ctx %d example %d label %d", ctx, i, t);
            }
            /* Untruncated: ends with EOS, which is a target. */
            if (n_full <= ctx) {
                ck_assert_int_eq(e->ids[n - 1], qft_tokenizer_eos(g_tok));
                ck_assert_int_eq(e->labels[n - 1], qft_tokenizer_eos(g_tok));
            }
#ifdef QFT_TEST_LOCAL_TOKENIZER
            ck_assert_int_eq(e->ids[0], 256);
            ck_assert_int_eq(e->ids[1], '#');
#endif
            trunc += n_full > ctx;
            int tg = n > n_prompt ? n - n_prompt : 0;
            no_target += tg == 0;
            targets += tg;
            tokens += n;
            if (n > max_len) max_len = n;
            free(ids);
            free(labels);
        }
        ck_assert_int_eq(d.n_truncated, trunc);
        ck_assert_int_eq(d.n_no_target, no_target);
        ck_assert_int_eq(d.n_tokens, tokens);
        ck_assert_int_eq(d.n_target_tokens, targets);
        ck_assert_int_eq(d.max_len, max_len);
        if (ctx == 48) {
            ck_assert_int_gt(trunc, 50); /* the short context really cuts */
            ck_assert_int_gt(no_target, 0);
        } else {
            ck_assert_int_eq(trunc, 0);
        }
        qft_data_examples_free(&d);
    }
}
END_TEST

static int fail_at_7(const void *state, long index, const char **p, const char **r, qft_err *err) {
    (void)state;
    if (index == 7) return qft_err_setf(err, "orca.jsonl:8: missing \"answer\"");
    *p = g_prompts[index];
    *r = g_responses[index];
    return 0;
}

START_TEST(errors_name_the_row) {
    qft_data_examples d;
    qft_err err = {0};
    ck_assert_int_ne(qft_data_examples_build(&d, g_tok, fail_at_7, NULL, NULL, 20, 64, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "orca.jsonl:8"));
    ck_assert_ptr_null(d.ex);
    ck_assert_int_ne(qft_data_examples_build(&d, g_tok, fail_at_7, NULL, NULL, 5, 0, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "context_length"));
    /* Rows picked by index: 8..11 only, so row 7 is never asked for. */
    long rows[] = {11, 8, 10, 9};
    ck_assert_int_eq(qft_data_examples_build(&d, g_tok, fail_at_7, NULL, rows, 4, 64, &err), 0);
    int32_t *ids, *labels;
    int n, n_full, n_prompt;
    expected(11, 64, &ids, &labels, &n, &n_full, &n_prompt);
    ck_assert_int_eq(d.ex[0].n, n);
    ck_assert_int_eq(memcmp(d.ex[0].ids, ids, (size_t)n * 4), 0);
    free(ids);
    free(labels);
    qft_data_examples_free(&d);
}
END_TEST

/* Checks one epoch: a permutation, batches right-padded, T the longest (or ctx). */
static void check_epoch(qft_data_loader *l, const qft_data_examples *d, int B, int pad_to_ctx,
                        int drop_last, long *order_out) {
    qft_err err = {0};
    const long nb = qft_data_loader_count(l);
    ck_assert_int_eq(nb, drop_last ? N_EX / B : (N_EX + B - 1) / B);
    char *seen = calloc(N_EX, 1);
    ck_assert_ptr_nonnull(seen);
    long k = 0;
    for (long bi = 0; bi < nb; bi++) {
        qft_batch b;
        long ntok = 0;
        ck_assert_int_eq(qft_data_loader_get(l, bi, &b, &ntok, &err), 0);
        ck_assert_int_eq(b.B, bi < N_EX / B ? B : N_EX % B);
        int longest = 0;
        long real = 0;
        for (int r = 0; r < b.B; r++) {
            /* Find which example this row is: the loader's order says. */
            long ex = l->order[bi * B + r];
            ck_assert(!seen[ex]);
            seen[ex] = 1;
            if (order_out) order_out[k] = ex;
            k++;
            const qft_example *e = &d->ex[ex];
            if (e->n > longest) longest = e->n;
            real += e->n;
            for (int t = 0; t < b.T; t++) {
                size_t at = (size_t)r * b.T + t; // (B, T)
                if (t < e->n) {
                    ck_assert_int_eq(b.ids[at], e->ids[t]);
                    ck_assert_int_eq(b.labels[at], e->labels[t]);
                    ck_assert_int_eq(b.mask[at], 1);
                } else {
                    ck_assert_int_eq(b.ids[at], qft_tokenizer_pad(g_tok));
                    ck_assert_int_eq(b.labels[at], -100);
                    ck_assert_int_eq(b.mask[at], 0);
                }
            }
        }
        ck_assert_int_eq(b.T, pad_to_ctx ? d->context_length : longest);
        ck_assert_int_eq(ntok, real);
    }
    ck_assert_int_eq(k, drop_last ? (N_EX / B) * B : N_EX);
    free(seen);
}

START_TEST(loader_shuffles_per_epoch_and_pads) {
    qft_data_examples d;
    build(&d, 96);
    qft_err err = {0};
    qft_data_loader_options o = {.batch_size = 8, .shuffle = 1, .seed = 42,
                                 .pad_id = qft_tokenizer_pad(g_tok)};
    qft_data_loader l, l2;
    ck_assert_msg(qft_data_loader_init(&l, &d, &o, &err) == 0, "%s", err.msg);
    long e0[N_EX], e1[N_EX], again[N_EX], other[N_EX];
    check_epoch(&l, &d, 8, 0, 0, e0);
    ck_assert_int_eq(qft_data_loader_epoch(&l, 1, &err), 0);
    check_epoch(&l, &d, 8, 0, 0, e1);
    ck_assert_int_ne(memcmp(e0, e1, sizeof e0), 0);
    /* The same seed and epoch give the same order, from a fresh loader. */
    ck_assert_int_eq(qft_data_loader_init(&l2, &d, &o, &err), 0);
    check_epoch(&l2, &d, 8, 0, 0, again);
    ck_assert_int_eq(memcmp(e0, again, sizeof e0), 0);
    qft_data_loader_free(&l2);
    o.seed = 43;
    ck_assert_int_eq(qft_data_loader_init(&l2, &d, &o, &err), 0);
    check_epoch(&l2, &d, 8, 0, 0, other);
    ck_assert_int_ne(memcmp(e0, other, sizeof e0), 0);
    qft_data_loader_free(&l2);
    /* A shuffle moves most examples. */
    int fixed = 0;
    for (int i = 0; i < N_EX; i++) fixed += e0[i] == i;
    ck_assert_int_lt(fixed, 10);
    /* No shuffle: the examples' order; drop_last and pad_to_context. */
    o.shuffle = 0;
    o.drop_last = 1;
    o.pad_to_context = 1;
    o.batch_size = 16;
    ck_assert_int_eq(qft_data_loader_init(&l2, &d, &o, &err), 0);
    long plain[N_EX];
    check_epoch(&l2, &d, 16, 1, 1, plain);
    for (int i = 0; i < (N_EX / 16) * 16; i++) ck_assert_int_eq(plain[i], i);
    qft_batch b;
    ck_assert_int_ne(qft_data_loader_get(&l2, qft_data_loader_count(&l2), &b, NULL, &err), 0);
    qft_data_loader_free(&l2);
    qft_data_loader_free(&l);
    o.batch_size = 0;
    ck_assert_int_ne(qft_data_loader_init(&l2, &d, &o, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "batch_size"));
    qft_data_examples_free(&d);
}
END_TEST

static long spread(const qft_data_loader *l, const qft_data_examples *d, int B) {
    long total = 0;
    for (long bi = 0; bi < N_EX / B; bi++) {
        int lo = 1 << 30, hi = 0;
        for (int r = 0; r < B; r++) {
            int n = d->ex[l->order[bi * B + r]].n;
            if (n < lo) lo = n;
            if (n > hi) hi = n;
        }
        total += hi - lo;
    }
    return total;
}

START_TEST(length_grouping) {
    qft_data_examples d;
    build(&d, 2048);
    qft_err err = {0};
    const int B = 4;
    qft_data_loader_options o = {.batch_size = B, .shuffle = 1, .seed = 7,
                                 .pad_id = qft_tokenizer_pad(g_tok)};
    qft_data_loader plain, grouped;
    ck_assert_int_eq(qft_data_loader_init(&plain, &d, &o, &err), 0);
    o.group_by_length = 1;
    ck_assert_int_eq(qft_data_loader_init(&grouped, &d, &o, &err), 0);
    long order[N_EX];
    check_epoch(&grouped, &d, B, 0, 0, order);
    /* The longest example is in the first batch. */
    long longest = 0;
    for (long i = 1; i < N_EX; i++)
        if (d.ex[i].n > d.ex[longest].n) longest = i;
    int in_first = 0;
    for (int r = 0; r < B; r++) in_first |= d.ex[order[r]].n == d.ex[longest].n;
    ck_assert(in_first);
    /* Grouped batches waste far less padding than shuffled ones. */
    long s_plain = spread(&plain, &d, B), s_grouped = spread(&grouped, &d, B);
    ck_assert_msg(s_grouped * 4 < s_plain, "spread grouped %ld, shuffled %ld", s_grouped, s_plain);
    /* Deterministic, and another epoch another grouping. */
    ck_assert_int_eq(qft_data_loader_epoch(&grouped, 1, &err), 0);
    long order1[N_EX];
    check_epoch(&grouped, &d, B, 0, 0, order1);
    ck_assert_int_ne(memcmp(order, order1, sizeof order), 0);
    ck_assert_int_eq(qft_data_loader_epoch(&grouped, 0, &err), 0);
    for (int i = 0; i < N_EX; i++) ck_assert_int_eq(grouped.order[i], order[i]);
    qft_data_loader_free(&plain);
    qft_data_loader_free(&grouped);
    qft_data_examples_free(&d);
}
END_TEST

START_TEST(build_is_deterministic) {
    qft_data_examples a, b;
    build(&a, 80);
    build(&b, 80);
    ck_assert_int_eq(a.n_tokens, b.n_tokens);
    ck_assert_int_eq(memcmp(a.storage, b.storage, (size_t)a.n_tokens * 2 * sizeof(int32_t)), 0);
    qft_data_examples_free(&a);
    qft_data_examples_free(&b);
}
END_TEST

int main(void) {
    g_tok = qft_tokenizer_byte_new();
    if (!g_tok) {
        fprintf(stderr, "no byte tokenizer\n");
        return EXIT_FAILURE;
    }
    make_texts();
    Suite *s = suite_create("data_batch");
    TCase *tc = tcase_create("batch");
    tcase_add_test(tc, examples_match_the_seed_rule);
    tcase_add_test(tc, errors_name_the_row);
    tcase_add_test(tc, loader_shuffles_per_epoch_and_pads);
    tcase_add_test(tc, length_grouping);
    tcase_add_test(tc, build_is_deterministic);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    for (int i = 0; i < N_EX; i++) {
        free(g_prompts[i]);
        free(g_responses[i]);
    }
    qft_tokenizer_free(g_tok);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
