#include "io_test_util.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

const char *iot_fixture(const char *rel, char *buf, size_t n) {
    const char *root = getenv("QFT_SOURCE_ROOT");
    if (root && *root)
        snprintf(buf, n, "%s/tests/fixtures/io/%s", root, rel);
    else
        snprintf(buf, n, "%s/../fixtures/io/%s", QFT_IO_TEST_DIR, rel);
    return buf;
}

void iot_mkdtemp(char *buf, size_t n) {
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, n, "%s/qft-io-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp %s: %s", buf, strerror(errno));
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void iot_rm_rf(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

char *iot_read(const char *path, size_t *len) {
    char *buf = NULL;
    qft_err err = {0};
    ck_assert_msg(qft_file_read_all(path, &buf, len, &err) == 0, "%s", err.msg);
    return buf;
}

void iot_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_msg(fwrite(data, 1, len, f) == len, "%s: short write", path);
    ck_assert_int_eq(fclose(f), 0);
}

void iot_copy(const char *src, const char *dst) {
    size_t len = 0;
    char *buf = iot_read(src, &len);
    iot_write(dst, buf, len);
    free(buf);
}

json_t *iot_load_json(const char *path) {
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    ck_assert_msg(j != NULL, "%s:%d: %s", path, jerr.line, jerr.text);
    return j;
}
