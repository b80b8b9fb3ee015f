/* The orca_math, alpaca and jsonl dataset plugins, loaded from their build paths through the
 * registry (as the engine loads them) and opened on `data` sections written here: rendered
 * prompts, the seed's shuffle and split, and every bad-input case with its message. The
 * real GSM8K and Alpaca files of ../shared are used when present (skipped otherwise). */
#include "registry.h"

#include <check.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static qft_registry g_reg;
static qft_services g_svc;
static char g_log[16384];
static config_t g_cfg;
static json_t *g_np; /* shuffle_numpy.json */

/* Keeps what the plugins log so tests can check the counts they report. */
static void capture_log(int level, const char *fmt, ...) {
    const size_t used = strlen(g_log);
    int n = snprintf(g_log + used, sizeof g_log - used, "[%d] ", level);
    if (n < 0 || (size_t)n >= sizeof g_log - used) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_log + used + (size_t)n, sizeof g_log - used - (size_t)n, fmt, ap);
    va_end(ap);
    strncat(g_log, "\n", sizeof g_log - strlen(g_log) - 1);
}

static const char *root(void) {
    const char *r = getenv("QFT_SOURCE_ROOT");
    return r ? r : ".";
}

static const char *fixture(const char *name) {
    static char path[8][4096];
    static int k;
    k = (k + 1) % 8;
    snprintf(path[k], sizeof path[k], "%s/tests/fixtures/data/%s", root(), name);
    return path[k];
}

static const char *shared_file(const char *rel) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/../shared/assets/datasets/%s", root(), rel);
    return access(path, R_OK) == 0 ? path : NULL;
}

static const qft_dataset_vtable *plugin(const char *name) {
    qft_err err = {0};
    const qft_plugin *p = qft_registry_find(&g_reg, QFT_KIND_DATASET, name, &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    return p->desc->vtable;
}

/* Opens `name` on the section `data: { <body> }`; returns open's result. */
static int open_ds(const char *name, const char *body, void **state, qft_err *err) {
    char text[8192];
    snprintf(text, sizeof text, "data: {\n  plugin = \"%s\";\n  %s\n};\n", name, body);
    config_destroy(&g_cfg);
    config_init(&g_cfg);
    ck_assert_msg(config_read_string(&g_cfg, text) == CONFIG_TRUE, "config: %s at line %d",
                  config_error_text(&g_cfg), config_error_line(&g_cfg));
    g_log[0] = 0;
    memset(err, 0, sizeof *err);
    *state = NULL;
    return plugin(name)->open(&g_svc, config_lookup(&g_cfg, "data"), state, err);
}

static void *open_ok(const char *name, const char *body) {
    void *st;
    qft_err err;
    ck_assert_msg(open_ds(name, body, &st, &err) == 0, "%s: %s", name, err.msg);
    return st;
}

/* The error message of an open that must fail. */
static const char *open_fails(const char *name, const char *body) {
    static qft_err err;
    void *st;
    ck_assert_msg(open_ds(name, body, &st, &err) != 0, "%s opened, expected an error", name);
    ck_assert_ptr_null(st);
    ck_assert_int_ne(err.code, 0);
    return err.msg;
}

#define ASSERT_HAS(msg, part) ck_assert_msg(strstr((msg), (part)) != NULL, "\"%s\" lacks \"%s\"", (msg), (part))

static void get_ok(const char *name, void *st, long i, const char **p, const char **r) {
    qft_err err = {0};
    ck_assert_msg(plugin(name)->get(st, i, p, r, &err) == 0, "%s", err.msg);
}

static const json_t *np_perm(long n, const char *seed) {
    const json_t *arr = json_object_get(g_np, "perms");
    for (size_t k = 0; k < json_array_size(arr); k++) {
        const json_t *e = json_array_get(arr, k);
        if (json_integer_value(json_object_get(e, "n")) == n &&
            strcmp(json_string_value(json_object_get(e, "seed")), seed) == 0)
            return json_object_get(e, "perm");
    }
    ck_abort_msg("no permutation of %ld for seed %s in shuffle_numpy.json", n, seed);
    return NULL;
}

/* The fixture's rows as jansson reads them: the expectation comes from an independent parse. */
static json_t *fixture_rows_jsonl(const char *name) {
    FILE *f = fopen(fixture(name), "r");
    ck_assert_ptr_nonnull(f);
    json_t *rows = json_array();
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '\n') continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        ck_assert_ptr_nonnull(o);
        json_array_append_new(rows, o);
    }
    fclose(f);
    return rows;
}

static char *orca_prompt(const char *q) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "###Question:\n%s\n###Answer:\n", q);
    return buf;
}

/* ---- orca_math ---------------------------------------------------------------------- */
START_TEST(orca_prompt_and_seed_shuffle) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("orca_small.jsonl"));
    void *st = open_ok("orca_math", body);
    const qft_dataset_vtable *vt = plugin("orca_math");
    ck_assert_int_eq(vt->count(st), 10); /* the trailing blank line is no row */
    const char *p, *r;
    /* numpy's default_rng(42).permutation(10) starts with row 5 */
    get_ok("orca_math", st, 0, &p, &r);
    ck_assert_str_eq(p, "###Question:\nA recipe needs {2} cups of flour per batch. How much for 3 "
                        "batches?\n###Answer:\n");
    ck_assert_str_eq(r, "2 × 3 = 6 cups.\n#### 6");
    get_ok("orca_math", st, 1, &p, &r);
    ck_assert_str_eq(p, "###Question:\nTom saves $5 a week. How much after 9 weeks?\n###Answer:\n");
    json_t *rows = fixture_rows_jsonl("orca_small.jsonl");
    const json_t *perm = np_perm(10, "42");
    for (long i = 0; i < 10; i++) {
        const json_t *row = json_array_get(rows, (size_t)json_integer_value(json_array_get(perm, (size_t)i)));
        get_ok("orca_math", st, i, &p, &r);
        ck_assert_str_eq(p, orca_prompt(json_string_value(json_object_get(row, "question"))));
        ck_assert_str_eq(r, json_string_value(json_object_get(row, "answer")));
    }
    json_decref(rows);
    qft_err err = {0};
    ck_assert_int_ne(vt->get(st, 10, &p, &r, &err), 0);
    ASSERT_HAS(err.msg, "example 10 out of range");
    ASSERT_HAS(g_log, "10 rows (JSONL)");
    vt->close(st);
}
END_TEST

START_TEST(orca_json_array_same_rows) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\"; seed = 0;", fixture("orca_small.jsonl"));
    void *a = open_ok("orca_math", body);
    snprintf(body, sizeof body, "path = \"%s\"; seed = 0;", fixture("orca_small_array.json"));
    void *b = open_ok("orca_math", body);
    ASSERT_HAS(g_log, "(JSON array)");
    const qft_dataset_vtable *vt = plugin("orca_math");
    ck_assert_int_eq(vt->count(a), vt->count(b));
    json_t *rows = fixture_rows_jsonl("orca_small.jsonl");
    const json_t *perm = np_perm(10, "0");
    for (long i = 0; i < vt->count(a); i++) {
        const char *pa, *ra, *pb, *rb;
        get_ok("orca_math", a, i, &pa, &ra);
        get_ok("orca_math", b, i, &pb, &rb);
        ck_assert_str_eq(pa, pb);
        ck_assert_str_eq(ra, rb);
        const json_t *row = json_array_get(rows, (size_t)json_integer_value(json_array_get(perm, (size_t)i)));
        ck_assert_str_eq(pa, orca_prompt(json_string_value(json_object_get(row, "question"))));
    }
    json_decref(rows);
    vt->close(a);
    vt->close(b);
}
END_TEST

START_TEST(orca_split_and_samples) {
    const qft_dataset_vtable *vt = plugin("orca_math");
    json_t *rows = fixture_rows_jsonl("orca_small.jsonl");
    const json_t *perm = np_perm(10, "42"); /* 5 6 0 7 3 2 4 9 1 8 */
    const char *p, *r;
    char body[4096];
    /* eval_holdout = 3 on a small file: the pool is the last 3 rows of the order */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 3;", fixture("orca_small.jsonl"));
    void *st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 7);
    vt->close(st);
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 3; split = \"eval\";",
             fixture("orca_small.jsonl"));
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 3);
    for (long i = 0; i < 3; i++) {
        const json_t *row = json_array_get(rows, (size_t)json_integer_value(json_array_get(perm, (size_t)(7 + i))));
        get_ok("orca_math", st, i, &p, &r);
        ck_assert_str_eq(p, orca_prompt(json_string_value(json_object_get(row, "question"))));
    }
    get_ok("orca_math", st, 0, &p, &r); /* row 9: the multi-line question */
    ck_assert_str_eq(p, "###Question:\nLine one\nline two: what is 6 × 7?\n###Answer:\n");
    ck_assert_str_eq(r, "\"Forty-two\" — 42.\n#### 42");
    vt->close(st);
    /* eval_pool widens the pool past the rows scored: training loses 5, eval scores 2 */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 2; eval_pool = 5; split = \"eval\";",
             fixture("orca_small.jsonl"));
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 2);
    get_ok("orca_math", st, 0, &p, &r);
    const json_t *row = json_array_get(rows, (size_t)json_integer_value(json_array_get(perm, 5)));
    ck_assert_str_eq(p, orca_prompt(json_string_value(json_object_get(row, "question"))));
    vt->close(st);
    /* dataset_samples caps the training rows, from the front of the order */
    snprintf(body, sizeof body, "path = \"%s\"; dataset_samples = 4; eval_holdout = 3;",
             fixture("orca_small.jsonl"));
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 4);
    get_ok("orca_math", st, 3, &p, &r);
    row = json_array_get(rows, (size_t)json_integer_value(json_array_get(perm, 3)));
    ck_assert_str_eq(p, orca_prompt(json_string_value(json_object_get(row, "question"))));
    vt->close(st);
    /* more samples than rows outside the pool: all of them, with a warning */
    snprintf(body, sizeof body, "path = \"%s\"; dataset_samples = 100; eval_holdout = 3;",
             fixture("orca_small.jsonl"));
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 7);
    ASSERT_HAS(g_log, "data.dataset_samples = 100 but only 7 rows are left for training");
    vt->close(st);
    json_decref(rows);
}
END_TEST

START_TEST(orca_option_errors) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";\n  shuffle = false;", fixture("orca_small.jsonl"));
    const char *m = open_fails("orca_math", body);
    ASSERT_HAS(m, "line 4");
    ASSERT_HAS(m, "data.shuffle: unknown key");
    m = open_fails("orca_math", "eval_holdout = 3;");
    ASSERT_HAS(m, "data.path is required");
    snprintf(body, sizeof body, "path = \"%s\";\n  split = \"test\";", fixture("orca_small.jsonl"));
    m = open_fails("orca_math", body);
    ASSERT_HAS(m, ":4: data.split = \"test\": expected \"train\" or \"eval\"");
    snprintf(body, sizeof body, "path = \"%s\";\n  eval_holdout = \"3\";", fixture("orca_small.jsonl"));
    m = open_fails("orca_math", body);
    ASSERT_HAS(m, ":4: data.eval_holdout: expected an integer");
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 10;", fixture("orca_small.jsonl"));
    m = open_fails("orca_math", body);
    ASSERT_HAS(m, "10 usable rows cannot hold a validation pool of 10 rows");
    snprintf(body, sizeof body, "path = \"%s\"; split = \"eval\";", fixture("orca_small.jsonl"));
    m = open_fails("orca_math", body);
    ASSERT_HAS(m, "data.split = \"eval\" needs data.eval_holdout > 0");
    m = open_fails("orca_math", "path = \"/nonexistent/orca.jsonl\";");
    ASSERT_HAS(m, "/nonexistent/orca.jsonl: cannot open dataset file: No such file or directory");
}
END_TEST

/* The seed's pool rule needs a file of Orca-Math's size: 200,000 generated rows, checked
 * against numpy's permutation of 200,000 (its first and last 50 entries). */
START_TEST(orca_seed_pool_on_200k) {
    char path[] = "/tmp/qft_orca200k_XXXXXX";
    const int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    for (long i = 0; i < 200000; i++)
        fprintf(f, "{\"question\": \"q%ld\", \"answer\": \"a%ld\"}\n", i, i);
    ck_assert_int_eq(fclose(f), 0);
    const json_t *ref = NULL, *arr = json_object_get(g_np, "perms");
    for (size_t k = 0; k < json_array_size(arr); k++) {
        const json_t *e = json_array_get(arr, k);
        if (json_integer_value(json_object_get(e, "n")) == 200000 &&
            strcmp(json_string_value(json_object_get(e, "seed")), "42") == 0)
            ref = e;
    }
    ck_assert_ptr_nonnull(ref);
    const json_t *first = json_object_get(ref, "first"), *last = json_object_get(ref, "last");
    const qft_dataset_vtable *vt = plugin("orca_math");
    const char *p, *r;
    char want[64], body[4096];
    /* training: everything before the 5,000-row pool, in numpy's order */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 500;", path);
    void *st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 195000);
    for (long i = 0; i < 50; i++) {
        get_ok("orca_math", st, i, &p, &r);
        snprintf(want, sizeof want, "a%lld", (long long)json_integer_value(json_array_get(first, (size_t)i)));
        ck_assert_str_eq(r, want);
    }
    vt->close(st);
    /* evaluation: the first eval_holdout rows of the pool */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 500; split = \"eval\";", path);
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 500);
    vt->close(st);
    /* scoring the whole pool reaches the order's last rows */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 5000; split = \"eval\";", path);
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 5000);
    for (long i = 0; i < 50; i++) {
        get_ok("orca_math", st, 4950 + i, &p, &r);
        snprintf(want, sizeof want, "###Question:\nq%lld\n###Answer:\n",
                 (long long)json_integer_value(json_array_get(last, (size_t)i)));
        ck_assert_str_eq(p, want);
    }
    vt->close(st);
    /* dataset_samples = 10000 (the seed's runs): the first 10,000 of the same order */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 500; dataset_samples = 10000;", path);
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 10000);
    get_ok("orca_math", st, 0, &p, &r);
    snprintf(want, sizeof want, "a%lld", (long long)json_integer_value(json_array_get(first, 0)));
    ck_assert_str_eq(r, want);
    vt->close(st);
    unlink(path);
}
END_TEST

/* ---- bad input ---------------------------------------------------------------------- */
START_TEST(bad_malformed_json) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_malformed.jsonl"));
    const char *m = open_fails("orca_math", body);
    /* line 3 lacks the comma before "answer" (columns 28-35); jansson reports the position
     * just past the token it stopped at */
    ASSERT_HAS(m, "bad_malformed.jsonl:3:36: row 3: malformed JSON: '}' expected near '\"answer\"'");
    ASSERT_HAS(m, "skip_bad_rows");
}
END_TEST

START_TEST(bad_missing_field) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_missing.jsonl"));
    const char *m = open_fails("orca_math", body);
    ASSERT_HAS(m, "bad_missing.jsonl:2: row 2: missing field \"answer\" (the response)");
}
END_TEST

START_TEST(bad_mistyped_field) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_mistyped.jsonl"));
    const char *m = open_fails("orca_math", body);
    /* row 3 is on line 4: a blank line is no row */
    ASSERT_HAS(m, "bad_mistyped.jsonl:4: row 3: field \"answer\" is an integer, expected a string");
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_array_field.json"));
    m = open_fails("orca_math", body);
    ASSERT_HAS(m, "bad_array_field.json:2: row 2: field \"question\" is an array, expected a string");
}
END_TEST

START_TEST(bad_empty_file) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("empty.jsonl"));
    ASSERT_HAS(open_fails("orca_math", body), "empty.jsonl: empty file: no rows");
    snprintf(body, sizeof body, "path = \"%s\"; skip_bad_rows = true;", fixture("empty.jsonl"));
    ASSERT_HAS(open_fails("alpaca", body), "empty.jsonl: empty file: no rows");
}
END_TEST

START_TEST(bad_utf8) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_utf8.jsonl"));
    const char *m = open_fails("orca_math", body);
    /* line 1 is 50 bytes + '\n'; the 0xe9 follows {"question": "Caf, 17 bytes into line 2 */
    ASSERT_HAS(m, "bad_utf8.jsonl:2:18: row 2: not valid UTF-8 (byte 0xe9 at byte offset 68 of the file)");
}
END_TEST

START_TEST(skip_bad_rows_counts) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_mixed.jsonl"));
    const char *m = open_fails("orca_math", body);
    ASSERT_HAS(m, "bad_mixed.jsonl:2: row 2: missing field \"answer\"");
    snprintf(body, sizeof body, "path = \"%s\"; skip_bad_rows = true; seed = 42;",
             fixture("bad_mixed.jsonl"));
    void *st = open_ok("orca_math", body);
    ASSERT_HAS(g_log, "skipped 2 bad rows of 6 (data.skip_bad_rows = true); the first: ");
    ASSERT_HAS(g_log, "bad_mixed.jsonl:2: row 2: missing field \"answer\"");
    const qft_dataset_vtable *vt = plugin("orca_math");
    ck_assert_int_eq(vt->count(st), 4);
    ck_assert_msg(vt->skipped && vt->skipped(st) == 2, "the plugin does not report its 2 "
                                                        "skipped rows");
    /* the shuffle runs over the 4 good rows (1, 3, 5, 6): default_rng(42).permutation(4) */
    static const char *const good[] = {"Question 1?", "Question 3?", "Question 5?", "Question 6?"};
    long seen = 0;
    for (long i = 0; i < 4; i++) {
        const char *p, *r;
        get_ok("orca_math", st, i, &p, &r);
        for (int k = 0; k < 4; k++)
            if (strcmp(p, orca_prompt(good[k])) == 0) seen |= 1L << k;
    }
    ck_assert_int_eq(seen, 15);
    vt->close(st);
}
END_TEST

START_TEST(bad_json_array) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("bad_array_row.json"));
    const char *m = open_fails("orca_math", body);
    ASSERT_HAS(m, "bad_array_row.json:3:");
    ASSERT_HAS(m, ": row 2: malformed JSON: ");
    snprintf(body, sizeof body, "path = \"%s\"; skip_bad_rows = true;", fixture("bad_array_row.json"));
    void *st = open_ok("orca_math", body);
    ck_assert_int_eq(plugin("orca_math")->count(st), 2);
    ASSERT_HAS(g_log, "skipped 1 bad rows of 3");
    plugin("orca_math")->close(st);
    /* an array that never closes leaves no row boundary to trust: always an error */
    snprintf(body, sizeof body, "path = \"%s\"; skip_bad_rows = true;", fixture("bad_array_unclosed.json"));
    m = open_fails("orca_math", body);
    ASSERT_HAS(m, "bad_array_unclosed.json:4: unexpected end of file: the array opened at line 1, "
                  "column 1 is not closed with ']'");
}
END_TEST

/* ---- alpaca ------------------------------------------------------------------------- */
#define NO_INPUT_HEAD "Below is an instruction that describes a task. Write a response that " \
                      "appropriately completes the request.\n\n### Instruction:\n"
#define INPUT_HEAD "Below is an instruction that describes a task, paired with an input that " \
                   "provides further context. Write a response that appropriately completes " \
                   "the request.\n\n### Instruction:\n"

START_TEST(alpaca_templates) {
    char body[4096];
    snprintf(body, sizeof body, "path = \"%s\";", fixture("alpaca_small.json"));
    void *st = open_ok("alpaca", body);
    const qft_dataset_vtable *vt = plugin("alpaca");
    ck_assert_int_eq(vt->count(st), 6); /* the seed's alpaca path keeps file order */
    const char *p, *r;
    get_ok("alpaca", st, 0, &p, &r); /* empty input: the first template */
    ck_assert_str_eq(p, NO_INPUT_HEAD "Give three tips for staying healthy.\n\n### Response:");
    ck_assert_str_eq(r, "1. Eat well.\n2. Exercise.\n3. Sleep.");
    get_ok("alpaca", st, 1, &p, &r);
    ck_assert_str_eq(p, INPUT_HEAD "Translate to French.\n\n### Input:\nGood morning, Zoë!\n\n### Response:");
    ck_assert_str_eq(r, "Bonjour, Zoë !");
    get_ok("alpaca", st, 2, &p, &r); /* no input field at all: as the seed's .get("input", "") */
    ck_assert_str_eq(p, NO_INPUT_HEAD "Name the capital of Japan.\n\n### Response:");
    ck_assert_str_eq(r, "東京 (Tokyo).");
    get_ok("alpaca", st, 3, &p, &r); /* braces in values are text, not placeholders */
    ck_assert_str_eq(p, INPUT_HEAD "Summarize: {braces} stay as they are.\n\n### Input:\nText with "
                                   "{curly} braces.\n\n### Response:");
    vt->close(st);
    /* shuffle = true: numpy's default_rng(42).permutation(6) = 3 2 5 4 1 0; hold out 2 */
    snprintf(body, sizeof body, "path = \"%s\"; shuffle = true; eval_holdout = 2; dataset_samples = 3;",
             fixture("alpaca_small.json"));
    st = open_ok("alpaca", body);
    const json_t *perm = np_perm(6, "42");
    ck_assert_int_eq(json_integer_value(json_array_get(perm, 0)), 3);
    ck_assert_int_eq(vt->count(st), 3);
    get_ok("alpaca", st, 0, &p, &r);
    ck_assert_str_eq(r, "Braces {kept}.");
    get_ok("alpaca", st, 2, &p, &r);
    ck_assert_str_eq(r, "Hello.");
    vt->close(st);
    snprintf(body, sizeof body, "path = \"%s\"; shuffle = true; eval_holdout = 2; split = \"eval\";",
             fixture("alpaca_small.json"));
    st = open_ok("alpaca", body);
    ck_assert_int_eq(vt->count(st), 2);
    get_ok("alpaca", st, 0, &p, &r);
    ck_assert_str_eq(r, "Bonjour, Zoë !"); /* perm[4] = 1 */
    get_ok("alpaca", st, 1, &p, &r);
    ck_assert_str_eq(r, "1. Eat well.\n2. Exercise.\n3. Sleep."); /* perm[5] = 0 */
    vt->close(st);
    /* an input that is not a string is a bad row, named */
    snprintf(body, sizeof body, "path = \"%s\";", fixture("orca_small.jsonl"));
    ASSERT_HAS(open_fails("alpaca", body), "orca_small.jsonl:1: row 1: missing field \"instruction\"");
    snprintf(body, sizeof body, "path = \"%s\"; shuffle = 1;", fixture("alpaca_small.json"));
    ASSERT_HAS(open_fails("alpaca", body), "data.shuffle: expected true or false");
}
END_TEST

/* ---- jsonl -------------------------------------------------------------------------- */
START_TEST(jsonl_template) {
    char body[4096];
    snprintf(body, sizeof body,
             "path = \"%s\";\n  prompt_template = \"Context: {context}\\nQ: {q} {{id}}\\nA: \";\n"
             "  response_field = \"a\";", fixture("generic_small.jsonl"));
    void *st = open_ok("jsonl", body);
    const qft_dataset_vtable *vt = plugin("jsonl");
    ck_assert_int_eq(vt->count(st), 3);
    const char *p, *r;
    get_ok("jsonl", st, 0, &p, &r);
    ck_assert_str_eq(p, "Context: Paris is in France.\nQ: Where is Paris? {id}\nA: ");
    ck_assert_str_eq(r, "In France.");
    get_ok("jsonl", st, 2, &p, &r);
    ck_assert_str_eq(p, "Context: Ångström is a unit of length.\nQ: What is an ångström? {id}\nA: ");
    ck_assert_str_eq(r, "10⁻¹⁰ m.");
    vt->close(st);
    /* the response field may also appear in the template; shuffle with the seed */
    snprintf(body, sizeof body,
             "path = \"%s\"; prompt_template = \"{q} ({a})\"; response_field = \"a\"; shuffle = true; "
             "seed = 0;", fixture("generic_small.jsonl"));
    st = open_ok("jsonl", body);
    ck_assert_int_eq(vt->count(st), 3);
    vt->close(st);
    /* orca_math's file through jsonl with orca's template gives orca_math's examples */
    snprintf(body, sizeof body,
             "path = \"%s\"; prompt_template = \"###Question:\\n{question}\\n###Answer:\\n\"; "
             "response_field = \"answer\"; shuffle = true;", fixture("orca_small.jsonl"));
    st = open_ok("jsonl", body);
    snprintf(body, sizeof body, "path = \"%s\";", fixture("orca_small.jsonl"));
    char first_jsonl[4096];
    get_ok("jsonl", st, 0, &p, &r);
    snprintf(first_jsonl, sizeof first_jsonl, "%s", p);
    vt->close(st);
    void *o = open_ok("orca_math", body);
    get_ok("orca_math", o, 0, &p, &r);
    ck_assert_str_eq(first_jsonl, p);
    plugin("orca_math")->close(o);
}
END_TEST

START_TEST(jsonl_errors) {
    char body[4096];
    snprintf(body, sizeof body,
             "path = \"%s\"; prompt_template = \"{context} {question}\"; response_field = \"a\";",
             fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body),
               "generic_small.jsonl:1: row 1: missing field \"question\" (named in data.prompt_template)");
    snprintf(body, sizeof body,
             "path = \"%s\"; prompt_template = \"{q}\"; response_field = \"answer\";",
             fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body),
               "generic_small.jsonl:1: row 1: missing field \"answer\" (data.response_field)");
    snprintf(body, sizeof body,
             "path = \"%s\"; prompt_template = \"{id}\"; response_field = \"a\";",
             fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body), "row 1: field \"id\" is an integer, expected a string");
    snprintf(body, sizeof body, "path = \"%s\";\n  prompt_template = \"{q\"; response_field = \"a\";",
             fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body), ":4: data.prompt_template: the '{' at character 1 has no closing '}'");
    snprintf(body, sizeof body, "path = \"%s\"; response_field = \"a\";", fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body), "data.prompt_template is required");
    snprintf(body, sizeof body, "path = \"%s\";\n  prompt_template = 3; response_field = \"a\";",
             fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body), ":4: data.prompt_template: expected a string");
    snprintf(body, sizeof body, "path = \"%s\"; prompt_template = \"{q}\";", fixture("generic_small.jsonl"));
    ASSERT_HAS(open_fails("jsonl", body), "data.response_field is required");
}
END_TEST

/* ---- the real files of ../shared ----------------------------------------------------- */
START_TEST(gsm8k_seed_order) {
    const char *path = shared_file("gsm8k/train.jsonl");
    const json_t *ref = json_object_get(g_np, "gsm8k");
    if (!path || !ref) {
        printf("gsm8k_seed_order: skipped: ../shared/assets/datasets/gsm8k/train.jsonl (or its "
               "reference in shuffle_numpy.json) is absent\n");
        return;
    }
    char body[8192];
    snprintf(body, sizeof body, "path = \"%s\";", path);
    void *st = open_ok("orca_math", body);
    const qft_dataset_vtable *vt = plugin("orca_math");
    ck_assert_int_eq(vt->count(st), json_integer_value(json_object_get(ref, "rows")));
    ck_assert_int_eq(vt->count(st), 7473);
    const char *p, *r;
    for (size_t i = 0; i < 3; i++) {
        get_ok("orca_math", st, (long)i, &p, &r);
        ck_assert_str_eq(p, json_string_value(json_array_get(json_object_get(ref, "first_prompts"), i)));
        ck_assert_str_eq(r, json_string_value(json_array_get(json_object_get(ref, "first_responses"), i)));
    }
    vt->close(st);
    /* eval_holdout = 500 on 7,473 rows: a 500-row pool; training keeps 6,973 */
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 500;", path);
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 6973);
    vt->close(st);
    snprintf(body, sizeof body, "path = \"%s\"; eval_holdout = 500; split = \"eval\";", path);
    st = open_ok("orca_math", body);
    ck_assert_int_eq(vt->count(st), 500);
    get_ok("orca_math", st, 0, &p, &r);
    ck_assert_str_eq(p, json_string_value(json_object_get(ref, "eval500_first_prompt")));
    vt->close(st);
}
END_TEST

START_TEST(alpaca_200_seed_templates) {
    const char *path = shared_file("alpaca/alpaca_200.json");
    const json_t *ref = json_object_get(g_np, "alpaca");
    if (!path || !ref) {
        printf("alpaca_200_seed_templates: skipped: ../shared/assets/datasets/alpaca/alpaca_200.json "
               "(or its reference in shuffle_numpy.json) is absent\n");
        return;
    }
    char body[8192];
    snprintf(body, sizeof body, "path = \"%s\";", path);
    void *st = open_ok("alpaca", body);
    const qft_dataset_vtable *vt = plugin("alpaca");
    ck_assert_int_eq(vt->count(st), json_integer_value(json_object_get(ref, "rows")));
    const char *p, *r;
    get_ok("alpaca", st, 0, &p, &r);
    ck_assert_str_eq(p, json_string_value(json_object_get(ref, "row0_prompt")));
    ck_assert_str_eq(r, json_string_value(json_object_get(ref, "row0_response")));
    get_ok("alpaca", st, (long)json_integer_value(json_object_get(ref, "first_with_input")), &p, &r);
    ck_assert_str_eq(p, json_string_value(json_object_get(ref, "with_input_prompt")));
    vt->close(st);
    snprintf(body, sizeof body, "path = \"%s\"; shuffle = true;", path);
    st = open_ok("alpaca", body);
    get_ok("alpaca", st, 0, &p, &r);
    ck_assert_str_eq(p, json_string_value(json_object_get(ref, "shuffled42_first_prompt")));
    vt->close(st);
}
END_TEST

static void load_plugins(void) {
    static const char *const envs[] = {"QFT_ORCA_MATH_SO", "QFT_ALPACA_SO", "QFT_JSONL_SO"};
    qft_err err = {0};
    for (size_t i = 0; i < 3; i++) {
        const char *so = getenv(envs[i]);
        if (!so || qft_registry_add_file(&g_reg, so, &err)) {
            fprintf(stderr, "cannot load %s (%s): %s\n", envs[i], so ? so : "unset", err.msg);
            exit(1);
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/data/shuffle_numpy.json", root());
    json_error_t je;
    g_np = json_load_file(path, 0, &je);
    if (!g_np) {
        fprintf(stderr, "%s:%d: %s\n", path, je.line, je.text);
        exit(1);
    }
}

int main(void) {
    load_plugins();
    g_svc = *qft_registry_services();
    g_svc.log = capture_log;
    config_init(&g_cfg);
    Suite *s = suite_create("data_plugins");
    TCase *tc = tcase_create("plugins");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, orca_prompt_and_seed_shuffle);
    tcase_add_test(tc, orca_json_array_same_rows);
    tcase_add_test(tc, orca_split_and_samples);
    tcase_add_test(tc, orca_option_errors);
    tcase_add_test(tc, orca_seed_pool_on_200k);
    tcase_add_test(tc, bad_malformed_json);
    tcase_add_test(tc, bad_missing_field);
    tcase_add_test(tc, bad_mistyped_field);
    tcase_add_test(tc, bad_empty_file);
    tcase_add_test(tc, bad_utf8);
    tcase_add_test(tc, skip_bad_rows_counts);
    tcase_add_test(tc, bad_json_array);
    tcase_add_test(tc, alpaca_templates);
    tcase_add_test(tc, jsonl_template);
    tcase_add_test(tc, jsonl_errors);
    tcase_add_test(tc, gsm8k_seed_order);
    tcase_add_test(tc, alpaca_200_seed_templates);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    config_destroy(&g_cfg);
    qft_registry_free(&g_reg);
    json_decref(g_np);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
