/* The synth_math dataset plugin through dlopen, as the registry loads it: descriptor,
 * config keys and their errors, count/get, the Orca-Math prompt template, determinism,
 * and every answer's arithmetic. The module's path comes from $QFT_SYNTH_MATH_SO or the
 * build tree (QFT_SYNTH_MATH_SO_PATH, set by meson). */
#include "qft_base.h"
#include "synth_math_check.h"

#include <check.h>
#include <dlfcn.h>
#include <libconfig.h>
#include <stdlib.h>
#include <string.h>

static void *g_dl;
static const qft_plugin_desc *g_desc;
static const qft_dataset_vtable *g_vt;

static void svc_log(int level, const char *fmt, ...) { (void)level, (void)fmt; }

/* The core's own `data` keys as config.h lists them; the plugin adds count and seed. */
static int svc_check_keys(const config_setting_t *section, const char *const *plugin_keys,
                          qft_err *err) {
    static const char *const core[] = {"plugin", "path", "dataset_samples", "context_length",
                                       "eval_holdout", "seed", NULL};
    for (int i = 0; i < config_setting_length(section); i++) {
        const config_setting_t *s = config_setting_get_elem(section, (unsigned)i);
        const char *name = config_setting_name(s);
        int known = 0;
        for (int k = 0; core[k] && !known; k++) known = strcmp(core[k], name) == 0;
        for (int k = 0; plugin_keys[k] && !known; k++) known = strcmp(plugin_keys[k], name) == 0;
        if (!known)
            return qft_err_setf(err, "%s:%d: unknown key data.%s", config_setting_source_file(s),
                                config_setting_source_line(s), name);
    }
    return 0;
}

static const qft_services k_svc = {
    .abi_version = QFT_ABI_VERSION,
    .alloc = qft_mem_alloc,
    .free = qft_mem_free,
    .log = svc_log,
    .rng_seed = qft_rng_seed,
    .rng_next = qft_rng_next,
    .config_check_keys = svc_check_keys,
};

/* Parses a config text and opens the plugin on its `data` group. */
static int open_with(const char *text, void **st, qft_err *err) {
    config_t cfg;
    config_init(&cfg);
    ck_assert_msg(config_read_string(&cfg, text) == CONFIG_TRUE, "bad test config: %s",
                  config_error_text(&cfg));
    int rc = g_vt->open(&k_svc, config_lookup(&cfg, "data"), st, err);
    config_destroy(&cfg); /* the plugin must not keep pointers into the config */
    return rc;
}

START_TEST(descriptor) {
    ck_assert_int_eq(g_desc->abi_version, QFT_ABI_VERSION);
    ck_assert_int_eq(g_desc->kind, QFT_KIND_DATASET);
    ck_assert_str_eq(g_desc->name, "synth_math");
    ck_assert_ptr_nonnull(g_desc->version);
    ck_assert_ptr_nonnull(g_desc->description);
    ck_assert_ptr_nonnull(g_vt->open);
    ck_assert_ptr_nonnull(g_vt->count);
    ck_assert_ptr_nonnull(g_vt->get);
    ck_assert_ptr_nonnull(g_vt->close);
    int has_count = 0, has_seed = 0;
    for (int k = 0; g_vt->config_keys[k]; k++) {
        has_count |= strcmp(g_vt->config_keys[k], "count") == 0;
        has_seed |= strcmp(g_vt->config_keys[k], "seed") == 0;
    }
    ck_assert(has_count && has_seed);
    /* Only the entry point is exported. */
    ck_assert_ptr_null(dlsym(g_dl, "qft_synth_math_make"));
}
END_TEST

START_TEST(rows_are_well_formed_and_right) {
    void *st;
    qft_err err = {0};
    size_t mem_before = qft_mem_current();
    ck_assert_msg(open_with("data: { plugin = \"synth_math\"; count = 400; seed = 7; "
                            "context_length = 512; }", &st, &err) == 0, "%s", err.msg);
    ck_assert_uint_gt(qft_mem_current(), mem_before); /* it allocates through the services */
    ck_assert_int_eq(g_vt->count(st), 400);
    const char *head = "###Question:\n", *tail = "\n###Answer:\n";
    for (long i = 0; i < 400; i++) {
        const char *p, *r;
        ck_assert_int_eq(g_vt->get(st, i, &p, &r, &err), 0);
        size_t lp = strlen(p);
        ck_assert_msg(strncmp(p, head, strlen(head)) == 0, "row %ld prompt: %s", i, p);
        ck_assert(lp > strlen(head) + strlen(tail) + 20);
        ck_assert_str_eq(p + lp - strlen(tail), tail);
        ck_assert_msg(p[lp - strlen(tail) - 1] == '?', "row %ld: the question ends in '?'", i);
        long fin;
        char why[256];
        ck_assert_msg(smc_check_solution(r, &fin, why, sizeof why) == 0, "row %ld: %s\n%s%s", i, why, p, r);
        ck_assert(fin > 0);
    }
    const char *p, *r;
    ck_assert_int_ne(g_vt->get(st, 400, &p, &r, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "400"));
    ck_assert_int_ne(g_vt->get(st, -1, &p, &r, &err), 0);
    g_vt->close(st);
    ck_assert_uint_eq(qft_mem_current(), mem_before); /* and frees all of it */
}
END_TEST

START_TEST(deterministic_from_the_seed) {
    void *a, *b, *c, *d;
    qft_err err = {0};
    ck_assert_int_eq(open_with("data: { count = 120; seed = 11; }", &a, &err), 0);
    ck_assert_int_eq(open_with("data: { count = 120; seed = 11; }", &b, &err), 0);
    ck_assert_int_eq(open_with("data: { count = 120; seed = 12; }", &c, &err), 0);
    ck_assert_int_eq(open_with("data: { count = 30; seed = 11; }", &d, &err), 0);
    int same_c = 0;
    for (long i = 0; i < 120; i++) {
        const char *pa, *ra, *pb, *rb, *pc, *rc;
        g_vt->get(a, i, &pa, &ra, &err);
        g_vt->get(b, i, &pb, &rb, &err);
        g_vt->get(c, i, &pc, &rc, &err);
        ck_assert_str_eq(pa, pb);
        ck_assert_str_eq(ra, rb);
        same_c += strcmp(pa, pc) == 0;
        if (i < 30) { /* a smaller count is a prefix of a larger one */
            const char *pd, *rd;
            g_vt->get(d, i, &pd, &rd, &err);
            ck_assert_str_eq(pa, pd);
            ck_assert_str_eq(ra, rd);
        }
    }
    ck_assert_int_le(same_c, 2);
    /* Rows differ from each other. */
    const char *p0, *r0, *p1, *r1;
    g_vt->get(a, 0, &p0, &r0, &err);
    g_vt->get(a, 1, &p1, &r1, &err);
    ck_assert_str_ne(p0, p1);
    g_vt->close(a);
    g_vt->close(b);
    g_vt->close(c);
    g_vt->close(d);
}
END_TEST

START_TEST(defaults_and_errors) {
    void *st;
    qft_err err = {0};
    ck_assert_int_eq(g_vt->open(&k_svc, NULL, &st, &err), 0); /* no data section: defaults */
    ck_assert_int_eq(g_vt->count(st), 2000);
    const char *p42, *r42;
    g_vt->get(st, 5, &p42, &r42, &err);
    void *st42;
    ck_assert_int_eq(open_with("data: { seed = 42; }", &st42, &err), 0);
    const char *p, *r;
    g_vt->get(st42, 5, &p, &r, &err);
    ck_assert_str_eq(p, p42); /* the default seed is 42 */
    g_vt->close(st42);
    g_vt->close(st);

    ck_assert_int_ne(open_with("data: {\n  count = 0;\n}", &st, &err), 0);
    ck_assert_msg(strstr(err.msg, ":2:") && strstr(err.msg, "data.count"), "%s", err.msg);
    ck_assert_int_ne(open_with("data: { count = \"many\"; }", &st, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "data.count must be an integer"));
    ck_assert_int_ne(open_with("data: { seed = -3; }", &st, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "data.seed"));
    ck_assert_int_ne(open_with("data: {\n count = 5;\n cuont = 6; }", &st, &err), 0);
    ck_assert_msg(strstr(err.msg, ":3:") && strstr(err.msg, "cuont"), "%s", err.msg);
}
END_TEST

int main(void) {
    const char *path = getenv("QFT_SYNTH_MATH_SO");
    if (!path) path = QFT_SYNTH_MATH_SO_PATH;
    g_dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!g_dl) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return EXIT_FAILURE;
    }
    qft_plugin_entry_fn entry = (qft_plugin_entry_fn)dlsym(g_dl, QFT_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        fprintf(stderr, "%s: no %s\n", path, QFT_PLUGIN_ENTRY_SYMBOL);
        return EXIT_FAILURE;
    }
    g_desc = entry();
    g_vt = g_desc->vtable;
    Suite *s = suite_create("data_synth_math_plugin");
    TCase *tc = tcase_create("plugin");
    tcase_add_test(tc, descriptor);
    tcase_add_test(tc, rows_are_well_formed_and_right);
    tcase_add_test(tc, deterministic_from_the_seed);
    tcase_add_test(tc, defaults_and_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    dlclose(g_dl);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
