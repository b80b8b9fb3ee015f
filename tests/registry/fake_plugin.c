/* A minimal dataset plugin for the registry tests, compiled several times with different
 * defines: a good plugin, a second file with the same name, a wrong ABI version. */
#include "qft_sdk.h"

#ifndef FAKE_NAME
#define FAKE_NAME "fake_rows"
#endif
#ifndef FAKE_ABI
#define FAKE_ABI QFT_ABI_VERSION
#endif

static const char *const k_rows[][2] = {{"2 + 3 =", " 5"}, {"7 - 4 =", " 3"}, {"6 * 7 =", " 42"}};

static int fake_open(const qft_services *svc, const config_setting_t *section, void **state,
                     qft_err *err) {
    (void)svc, (void)section, (void)err;
    *state = (void *)k_rows;
    return 0;
}
static long fake_count(const void *state) {
    (void)state;
    return 3;
}
static int fake_get(const void *state, long i, const char **p, const char **r, qft_err *err) {
    (void)state;
    if (i < 0 || i >= 3) return qft_err_setf(err, "fake_rows: index %ld out of range", i);
    *p = k_rows[i][0], *r = k_rows[i][1];
    return 0;
}
static void fake_close(void *state) { (void)state; }

static const char *const k_keys[] = {"path", NULL};
static const qft_dataset_vtable k_vt = {k_keys, fake_open, fake_count, fake_get, fake_close,
                                        NULL};
static const qft_plugin_desc k_desc = {FAKE_ABI, QFT_KIND_DATASET, FAKE_NAME, "1.2.3",
                                       "three arithmetic rows for tests", &k_vt};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
