/* Helpers shared by the core/io suites: fixture paths, scratch folders, whole-file I/O. */
#ifndef QFT_IO_TEST_UTIL_H
#define QFT_IO_TEST_UTIL_H

#include <check.h>
#include <jansson.h>
#include <string.h>

#include "qft_base.h"

/* Writes $QFT_SOURCE_ROOT/tests/fixtures/io/<rel> into buf (without the variable: the
 * source tree this file was compiled from) and returns buf. */
const char *iot_fixture(const char *rel, char *buf, size_t n);
/* A fresh scratch folder under $TMPDIR or /tmp; iot_rm_rf removes it. */
void iot_mkdtemp(char *buf, size_t n);
void iot_rm_rf(const char *dir);
/* Whole-file helpers; abort the test (ck_abort) on failure. */
char *iot_read(const char *path, size_t *len);
void iot_write(const char *path, const void *data, size_t len);
void iot_copy(const char *src, const char *dst);
json_t *iot_load_json(const char *path);

/* Asserts that the error message contains `needle`. */
#define IOT_ASSERT_MSG_HAS(err, needle)                                                     \
    ck_assert_msg(strstr((err).msg, (needle)) != NULL, "error message \"%s\" lacks \"%s\"", \
                  (err).msg, (needle))

#endif
