/* The plugin registry against real shared objects built for this test. */
#include "registry.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[4096];

static void path_of(char *buf, const char *file) { snprintf(buf, 4096, "%s/%s", g_dir, file); }

START_TEST(test_loads_and_finds) {
    qft_registry r = {0};
    qft_err err = {0};
    char p[4096];
    path_of(p, "qft_fake_rows.so");
    ck_assert_int_eq(qft_registry_add_file(&r, p, &err), 0);
    const qft_plugin *pl = qft_registry_find(&r, QFT_KIND_DATASET, "fake_rows", &err);
    ck_assert_ptr_nonnull(pl);
    ck_assert_str_eq(pl->desc->version, "1.2.3");
    const qft_dataset_vtable *vt = pl->desc->vtable;
    void *st = NULL;
    ck_assert_int_eq(vt->open(qft_registry_services(), NULL, &st, &err), 0);
    ck_assert_int_eq(vt->count(st), 3);
    const char *pr, *re;
    ck_assert_int_eq(vt->get(st, 2, &pr, &re, &err), 0);
    ck_assert_str_eq(pr, "6 * 7 =");
    ck_assert_str_eq(re, " 42");
    ck_assert_int_ne(vt->get(st, 3, &pr, &re, &err), 0);
    /* the same file twice (two folders on the path reaching it) is not a duplicate */
    ck_assert_int_eq(qft_registry_add_file(&r, p, &err), 0);
    ck_assert_int_eq(r.n, 1);
    qft_registry_free(&r);
}
END_TEST

START_TEST(test_missing_lists_available) {
    qft_registry r = {0};
    qft_err err = {0};
    char p[4096];
    path_of(p, "qft_fake_rows.so");
    ck_assert_int_eq(qft_registry_add_file(&r, p, &err), 0);
    ck_assert_ptr_null(qft_registry_find(&r, QFT_KIND_DATASET, "orca_mathh", &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "no dataset plugin named \"orca_mathh\""));
    ck_assert_ptr_nonnull(strstr(err.msg, "available datasets: fake_rows"));
    ck_assert_ptr_null(qft_registry_find(&r, QFT_KIND_QUANTIZER, "bnb_nf4", &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "available quantizers: none"));
    qft_registry_free(&r);
}
END_TEST

START_TEST(test_duplicate_names_both_files) {
    qft_registry r = {0};
    qft_err err = {0};
    char a[4096], b[4096];
    path_of(a, "qft_fake_rows.so");
    path_of(b, "qft_fake_rows_again.so");
    ck_assert_int_eq(qft_registry_add_file(&r, a, &err), 0);
    ck_assert_int_ne(qft_registry_add_file(&r, b, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "two dataset plugins named \"fake_rows\""));
    ck_assert_ptr_nonnull(strstr(err.msg, "qft_fake_rows.so"));
    ck_assert_ptr_nonnull(strstr(err.msg, "qft_fake_rows_again.so"));
    qft_registry_free(&r);
}
END_TEST

START_TEST(test_abi_mismatch_names_versions) {
    qft_registry r = {0};
    qft_err err = {0};
    char p[4096];
    path_of(p, "qft_fake_old_abi.so");
    ck_assert_int_ne(qft_registry_add_file(&r, p, &err), 0);
    char want[256];
    snprintf(want, sizeof want, "plugin ABI version 999, but this qft has ABI version %d",
             QFT_ABI_VERSION);
    ck_assert_ptr_nonnull(strstr(err.msg, want));
    ck_assert_ptr_nonnull(strstr(err.msg, "qft_fake_old_abi.so"));
    ck_assert_int_eq(r.n, 0);
    qft_registry_free(&r);
}
END_TEST

START_TEST(test_not_a_plugin) {
    qft_registry r = {0};
    qft_err err = {0};
    char p[4096];
    path_of(p, "qft_not_a_plugin.so");
    ck_assert_int_ne(qft_registry_add_file(&r, p, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a qft plugin (no symbol qft_plugin_entry)"));
    qft_registry_free(&r);
}
END_TEST

START_TEST(test_search_path_order) {
    setenv("QFT_PLUGIN_PATH", "/env/one:/env/two", 1);
    const char *cli[] = {"/cli/dir"};
    const char *cfg[] = {"/cfg/dir"};
    char dirs[32][4096];
    int n = qft_registry_search_path(cli, 1, cfg, 1, dirs, 32);
    ck_assert_int_ge(n, 4);
    ck_assert_str_eq(dirs[0], "/cli/dir");
    ck_assert_str_eq(dirs[1], "/cfg/dir");
    ck_assert_str_eq(dirs[2], "/env/one");
    ck_assert_str_eq(dirs[3], "/env/two");
    unsetenv("QFT_PLUGIN_PATH");
}
END_TEST

START_TEST(test_scan_folder_reports_duplicate) {
    /* The build folder holds both fake_rows files: a scan must refuse them. */
    qft_registry r = {0};
    qft_err err = {0};
    char dirs[1][4096];
    snprintf(dirs[0], 4096, "%s", g_dir);
    ck_assert_int_ne(qft_registry_scan(&r, dirs, 1, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "qft_fake_"));
    qft_registry_free(&r);
}
END_TEST

int main(void) {
    const char *d = getenv("QFT_TEST_PLUGIN_DIR");
    snprintf(g_dir, sizeof g_dir, "%s", d ? d : ".");
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    tcase_add_test(tc, test_loads_and_finds);
    tcase_add_test(tc, test_missing_lists_available);
    tcase_add_test(tc, test_duplicate_names_both_files);
    tcase_add_test(tc, test_abi_mismatch_names_versions);
    tcase_add_test(tc, test_not_a_plugin);
    tcase_add_test(tc, test_search_path_order);
    tcase_add_test(tc, test_scan_folder_reports_duplicate);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
