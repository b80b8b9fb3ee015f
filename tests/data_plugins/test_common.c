/* data/common against numpy: SeedSequence, PCG64 (64- and buffered 32-bit draws) and
 * Generator.permutation, compared with tests/fixtures/data/shuffle_numpy.json, which
 * tests/reference/shuffle_reference.py wrote from numpy itself. Also the UTF-8 check and
 * the {field} template parser on hand-made cases. */
#include "ds_template.h"
#include "ds_text.h"
#include "np_random.h"

#include <check.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static json_t *g_fix;

static void load_fixture(void) {
    const char *root = getenv("QFT_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/data/shuffle_numpy.json", root ? root : ".");
    json_error_t je;
    g_fix = json_load_file(path, 0, &je);
    if (!g_fix) {
        fprintf(stderr, "%s:%d: %s\n", path, je.line, je.text);
        exit(1);
    }
}

static uint64_t u64_of(const json_t *v) { return strtoull(json_string_value(v), NULL, 10); }

START_TEST(seedseq_matches_numpy) {
    const json_t *arr = json_object_get(g_fix, "seedseq");
    ck_assert_int_eq((int)json_array_size(arr), 3);
    for (size_t k = 0; k < json_array_size(arr); k++) {
        const json_t *e = json_array_get(arr, k);
        const uint64_t seed = u64_of(json_object_get(e, "seed"));
        uint32_t pool[4], w[8];
        qft_np_seedseq_pool(seed, pool);
        for (int i = 0; i < 4; i++)
            ck_assert_uint_eq(pool[i], json_integer_value(json_array_get(json_object_get(e, "pool"), i)));
        qft_np_seedseq_generate(pool, w, 8);
        for (int i = 0; i < 8; i++)
            ck_assert_uint_eq(w[i], json_integer_value(json_array_get(json_object_get(e, "state_u32_8"), i)));
        /* generate_state(4, uint64) = the uint32 words paired little-endian */
        for (int i = 0; i < 4; i++) {
            const uint64_t v = (uint64_t)w[2 * i] | ((uint64_t)w[2 * i + 1] << 32);
            ck_assert_uint_eq(v, u64_of(json_array_get(json_object_get(e, "state_u64_4"), i)));
        }
    }
}
END_TEST

START_TEST(pcg64_matches_numpy) {
    const json_t *arr = json_object_get(g_fix, "pcg64");
    for (size_t k = 0; k < json_array_size(arr); k++) {
        const json_t *e = json_array_get(arr, k);
        const uint64_t seed = u64_of(json_object_get(e, "seed"));
        qft_np_pcg64 g;
        qft_np_pcg64_seed(&g, seed);
        char hex[33];
        snprintf(hex, sizeof hex, "%016" PRIx64 "%016" PRIx64, g.state_hi, g.state_lo);
        ck_assert_str_eq(hex, json_string_value(json_object_get(e, "state_hex")));
        snprintf(hex, sizeof hex, "%016" PRIx64 "%016" PRIx64, g.inc_hi, g.inc_lo);
        ck_assert_str_eq(hex, json_string_value(json_object_get(e, "inc_hex")));
        const json_t *u64 = json_object_get(e, "next_uint64");
        for (size_t i = 0; i < json_array_size(u64); i++)
            ck_assert_uint_eq(qft_np_pcg64_next64(&g), u64_of(json_array_get(u64, i)));
        qft_np_pcg64_seed(&g, seed);
        const json_t *u32 = json_object_get(e, "next_uint32");
        for (size_t i = 0; i < json_array_size(u32); i++)
            ck_assert_uint_eq(qft_np_pcg64_next32(&g), json_integer_value(json_array_get(u32, i)));
        /* 64-bit draws neither use nor clear a pending 32-bit half */
        qft_np_pcg64_seed(&g, seed);
        const json_t *mixed = json_object_get(e, "mixed");
        for (size_t i = 0; i < json_array_size(mixed); i++) {
            const json_t *m = json_array_get(mixed, i);
            const int is32 = strcmp(json_string_value(json_array_get(m, 0)), "32") == 0;
            const uint64_t got = is32 ? qft_np_pcg64_next32(&g) : qft_np_pcg64_next64(&g);
            ck_assert_uint_eq(got, u64_of(json_array_get(m, 1)));
        }
    }
}
END_TEST

static uint64_t checksum(const long *p, long n) {
    uint64_t h = 0;
    for (long i = 0; i < n; i++) h = h * 1000003u + (uint64_t)p[i] + 1u;
    return h;
}

START_TEST(permutation_matches_numpy) {
    const json_t *arr = json_object_get(g_fix, "perms");
    ck_assert_int_ge((int)json_array_size(arr), 15);
    for (size_t k = 0; k < json_array_size(arr); k++) {
        const json_t *e = json_array_get(arr, k);
        const long n = (long)json_integer_value(json_object_get(e, "n"));
        const uint64_t seed = u64_of(json_object_get(e, "seed"));
        long *p = malloc((size_t)n * sizeof *p); // (n)
        ck_assert_ptr_nonnull(p);
        qft_np_permutation(seed, n, p);
        const json_t *full = json_object_get(e, "perm");
        if (full) {
            for (long i = 0; i < n; i++)
                ck_assert_int_eq(p[i], json_integer_value(json_array_get(full, (size_t)i)));
        } else {
            const json_t *first = json_object_get(e, "first"), *last = json_object_get(e, "last");
            for (long i = 0; i < 50; i++) {
                ck_assert_int_eq(p[i], json_integer_value(json_array_get(first, (size_t)i)));
                ck_assert_int_eq(p[n - 50 + i], json_integer_value(json_array_get(last, (size_t)i)));
            }
        }
        ck_assert_uint_eq(checksum(p, n), u64_of(json_object_get(e, "checksum")));
        free(p);
    }
}
END_TEST

START_TEST(random_interval_bounds) {
    /* Masked rejection never leaves [0, max], and max = 0 draws nothing. */
    qft_np_pcg64 g, h;
    qft_np_pcg64_seed(&g, 7);
    h = g;
    ck_assert_uint_eq(qft_np_random_interval(&g, 0), 0);
    ck_assert_uint_eq(g.state_lo, h.state_lo);
    const uint64_t maxes[] = {1, 2, 5, 1000, 65537, 0xffffffffu, 0x100000000ull, 0x123456789abull};
    for (size_t m = 0; m < sizeof maxes / sizeof maxes[0]; m++) {
        uint64_t top = 0;
        for (int i = 0; i < 2000; i++) {
            const uint64_t v = qft_np_random_interval(&g, maxes[m]);
            ck_assert_uint_le(v, maxes[m]);
            if (v > top) top = v;
        }
        if (maxes[m] <= 5) ck_assert_uint_eq(top, maxes[m]); /* small ranges get covered */
    }
}
END_TEST

START_TEST(utf8_check_cases) {
    ck_assert_int_eq(qft_ds_utf8_check("plain", 5), -1);
    ck_assert_int_eq(qft_ds_utf8_check("Zo\xc3\xab \xe6\x97\xa5 \xf0\x9f\x98\x80", 13), -1);
    ck_assert_int_eq(qft_ds_utf8_check("Caf\xe9 au lait", 12), 3);   /* Latin-1 e-acute */
    ck_assert_int_eq(qft_ds_utf8_check("ab\xc0\xafz", 5), 2);        /* overlong '/' */
    ck_assert_int_eq(qft_ds_utf8_check("ab\xed\xa0\x80z", 6), 2);    /* a UTF-16 surrogate */
    ck_assert_int_eq(qft_ds_utf8_check("ab\xf4\x90\x80\x80", 6), 2); /* past U+10FFFF */
    ck_assert_int_eq(qft_ds_utf8_check("abc\xe6\x97", 5), 3);        /* cut short */
    ck_assert_int_eq(qft_ds_utf8_check("x\x80", 2), 1);              /* stray continuation */
    const char *t = "ab\ncd\xc3\xa9" "f\ngh";
    const qft_ds_pos p = qft_ds_pos_at(t, 0, 1, 7); /* the 'f' after "cdé" */
    ck_assert_int_eq(p.line, 2);
    ck_assert_int_eq(p.column, 4);
    ck_assert_int_eq(p.offset, 7);
}
END_TEST

START_TEST(template_parse_render) {
    qft_ds_template t;
    qft_err err = {0};
    ck_assert_int_eq(qft_ds_template_parse("Context: {context}\nQ: {q} {{literal}} {q}\nA:", "tmpl",
                                           &t, &err), 0);
    ck_assert_int_eq(t.n_names, 2);
    ck_assert_str_eq(t.names[0], "context");
    ck_assert_str_eq(t.names[1], "q");
    qft_ds_arena arena = {0};
    const char *vals[] = {"Paris is in {France}.", "Where?"};
    const char *out = qft_ds_template_render(&t, vals, &arena);
    ck_assert_str_eq(out, "Context: Paris is in {France}.\nQ: Where? {literal} Where?\nA:");
    qft_ds_template_free(&t);
    qft_ds_arena_free(&arena);

    static const struct {
        const char *tmpl, *want;
    } bad[] = {
        {"Q: {q", "the '{' at character 4 has no closing '}'"},
        {"Q: {q {a}}", "the '{' at character 4 has no closing '}'"},
        {"a } b", "single '}' at character 3"},
        {"x {} y", "empty placeholder '{}' at character 3"},
        {"{q:>5}", "placeholder {q:>5}: only plain field names"},
        {"{q!r}", "placeholder {q!r}: only plain field names"},
        {"{a.b}", "placeholder {a.b}: only plain field names"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        ck_assert_int_ne(qft_ds_template_parse(bad[i].tmpl, "run.cfg:4: data.prompt_template", &t, &err), 0);
        ck_assert_msg(strstr(err.msg, bad[i].want) && strstr(err.msg, "run.cfg:4: data.prompt_template"),
                      "template \"%s\": got \"%s\"", bad[i].tmpl, err.msg);
    }
}
END_TEST

int main(void) {
    load_fixture();
    Suite *s = suite_create("data_common");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, seedseq_matches_numpy);
    tcase_add_test(tc, pcg64_matches_numpy);
    tcase_add_test(tc, permutation_matches_numpy);
    tcase_add_test(tc, random_interval_bounds);
    tcase_add_test(tc, utf8_check_cases);
    tcase_add_test(tc, template_parse_render);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    json_decref(g_fix);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
