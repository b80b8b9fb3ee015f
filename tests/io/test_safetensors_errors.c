/* Bad safetensors files, each made from a good one in a scratch folder. Every check asserts
 * that the reader refuses the file and that the message names the file and, where the
 * fault belongs to a tensor, that tensor. */
#include <stdlib.h>
#include <string.h>

#include "io_test_util.h"
#include "safetensors.h"

static char g_dir[4096], g_good[4200];
static char *g_bytes; /* the good file */
static size_t g_len, g_hlen;

/* The good file: three tensors of different dtypes with random contents. */
static void setup(void) {
    iot_mkdtemp(g_dir, sizeof g_dir);
    snprintf(g_good, sizeof g_good, "%s/good.safetensors", g_dir);
    qft_rng r;
    qft_rng_seed(&r, 5);
    static float a[4 * 3];   // (4, 3)
    static uint16_t b[5];    // (5)
    static int64_t c[2 * 2]; // (2, 2)
    for (int i = 0; i < 12; i++) a[i] = qft_rng_normal(&r);
    for (int i = 0; i < 5; i++) b[i] = qft_f32_to_bf16(qft_rng_normal(&r));
    for (int i = 0; i < 4; i++) c[i] = (int64_t)qft_rng_next(&r);
    qft_tensor ta = {.dtype = QFT_DT_F32, .ndim = 2, .shape = {4, 3}, .data = a};
    qft_tensor tb = {.dtype = QFT_DT_BF16, .ndim = 1, .shape = {5}, .data = b};
    qft_tensor tc = {.dtype = QFT_DT_I64, .ndim = 2, .shape = {2, 2}, .data = c};
    qft_st_writer w;
    qft_st_writer_init(&w);
    qft_err err = {0};
    ck_assert_int_eq(qft_st_writer_add(&w, "alpha.weight", &ta, &err), 0);
    ck_assert_int_eq(qft_st_writer_add(&w, "beta.norm", &tb, &err), 0);
    ck_assert_int_eq(qft_st_writer_add(&w, "gamma.ids", &tc, &err), 0);
    ck_assert_int_eq(qft_st_writer_meta(&w, "format", "pt", &err), 0);
    ck_assert_msg(qft_st_write(&w, g_good, &err) == 0, "%s", err.msg);
    qft_st_writer_free(&w);
    g_bytes = iot_read(g_good, &g_len);
    g_hlen = 0;
    for (int i = 7; i >= 0; i--) g_hlen = (g_hlen << 8) | (uint8_t)g_bytes[i];
}

static void teardown(void) {
    free(g_bytes);
    iot_rm_rf(g_dir);
}

static void bad_path(const char *name, char *out, size_t n) { snprintf(out, n, "%s/%s", g_dir, name); }

/* Writes the good file with its header text's first `from` replaced by `to` (the length
 * field follows the new header; the data section is unchanged). */
static void write_patched(const char *path, const char *from, const char *to) {
    char *hdr = strndup(g_bytes + 8, g_hlen);
    char *at = strstr(hdr, from);
    ck_assert_msg(at != NULL, "'%s' not in header %s", from, hdr);
    size_t nh = g_hlen - strlen(from) + strlen(to);
    size_t dlen = g_len - 8 - g_hlen;
    char *out = malloc(8 + nh + dlen);
    for (int i = 0; i < 8; i++) out[i] = (char)((uint64_t)nh >> (8 * i));
    size_t pre = (size_t)(at - hdr);
    memcpy(out + 8, hdr, pre);
    memcpy(out + 8 + pre, to, strlen(to));
    memcpy(out + 8 + pre + strlen(to), at + strlen(from), g_hlen - pre - strlen(from));
    memcpy(out + 8 + nh, g_bytes + 8 + g_hlen, dlen);
    iot_write(path, out, 8 + nh + dlen);
    free(out);
    free(hdr);
}

/* Opens path, expecting failure; returns the message. */
static qft_err expect_fail(const char *path) {
    qft_st_file f;
    qft_err err = {0};
    int rc = qft_st_open(path, &f, &err);
    if (rc == 0) qft_st_close(&f);
    ck_assert_msg(rc != 0, "%s opened although it is bad", path);
    ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0,
                  "message \"%s\" does not begin with the path %s", err.msg, path);
    return err;
}

START_TEST(test_good_file_opens) {
    qft_st_file f;
    qft_err err = {0};
    ck_assert_msg(qft_st_open(g_good, &f, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n_entries, 3);
    qft_st_close(&f);
}
END_TEST

START_TEST(test_shorter_than_8_bytes) {
    char p[4300];
    bad_path("tiny.safetensors", p, sizeof p);
    iot_write(p, g_bytes, 5);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "shorter than the 8-byte header length");
}
END_TEST

START_TEST(test_truncated_header) {
    char p[4300];
    bad_path("cut.safetensors", p, sizeof p);
    iot_write(p, g_bytes, 8 + g_hlen / 2); /* cut inside the header */
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "runs past the end of the file");
}
END_TEST

START_TEST(test_header_length_past_end) {
    char p[4300];
    bad_path("len.safetensors", p, sizeof p);
    char *b = malloc(g_len);
    memcpy(b, g_bytes, g_len);
    uint64_t fake = g_len; /* 8 + g_len > file size */
    for (int i = 0; i < 8; i++) b[i] = (char)(fake >> (8 * i));
    iot_write(p, b, g_len);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "runs past the end of the file");
    /* and an absurd one is called that, before any allocation is attempted */
    fake = 1ull << 40;
    for (int i = 0; i < 8; i++) b[i] = (char)(fake >> (8 * i));
    iot_write(p, b, g_len);
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "is absurd");
    free(b);
}
END_TEST

START_TEST(test_offset_past_end) {
    char p[4300];
    bad_path("short_data.safetensors", p, sizeof p);
    /* the data is ordered I64, F32, BF16: cutting 3 bytes breaks the last, beta.norm */
    iot_write(p, g_bytes, g_len - 3);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'beta.norm'");
    IOT_ASSERT_MSG_HAS(e, "[80, 90]");
    IOT_ASSERT_MSG_HAS(e, "data section (87 bytes");
}
END_TEST

START_TEST(test_unknown_dtype) {
    char p[4300];
    bad_path("dtype.safetensors", p, sizeof p);
    write_patched(p, "\"dtype\":\"BF16\"", "\"dtype\":\"F8_E9M9\"");
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'beta.norm'");
    IOT_ASSERT_MSG_HAS(e, "\"F8_E9M9\"");
}
END_TEST

START_TEST(test_shape_bytes_disagree) {
    char p[4300];
    bad_path("shape.safetensors", p, sizeof p);
    write_patched(p, "\"shape\":[4,3]", "\"shape\":[4,4]");
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
    IOT_ASSERT_MSG_HAS(e, "hold 48 bytes but shape [4,4] of F32 needs 64");
}
END_TEST

START_TEST(test_bad_shape_entries) {
    char p[4300];
    bad_path("negshape.safetensors", p, sizeof p);
    write_patched(p, "\"shape\":[4,3]", "\"shape\":[-4,3]");
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
    IOT_ASSERT_MSG_HAS(e, "non-negative integers, got [-4,3]");
    write_patched(p, "\"shape\":[4,3]", "\"shape\":[4.0,3]");
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
    IOT_ASSERT_MSG_HAS(e, "non-negative integers");
    write_patched(p, "\"shape\":[4,3]", "\"shape\":\"4x3\"");
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
}
END_TEST

START_TEST(test_bad_data_offsets) {
    char p[4300];
    bad_path("offs.safetensors", p, sizeof p);
    write_patched(p, "\"data_offsets\":[32,80]", "\"data_offsets\":[80,32]");
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
    IOT_ASSERT_MSG_HAS(e, "[begin, end]");
    write_patched(p, "\"data_offsets\":[32,80]", "\"data_offsets\":[32]");
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
    /* an end beyond the data, with the header itself intact */
    write_patched(p, "\"data_offsets\":[32,80]", "\"data_offsets\":[32,800]");
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight'");
    IOT_ASSERT_MSG_HAS(e, "[32, 800] run past the end of the data section (90 bytes");
}
END_TEST

START_TEST(test_not_json) {
    char p[4300];
    bad_path("json.safetensors", p, sizeof p);
    write_patched(p, "\"dtype\":\"F32\"", "\"dtype\":F32\"");
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "header is not valid JSON (line 1, column");
    /* valid JSON of the wrong shape */
    write_patched(p, "\"alpha.weight\":{", "\"alpha.weight\":[{");
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "not valid JSON");
    write_patched(p, "{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[32,80]}", "17");
    e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "tensor 'alpha.weight': record must be an object, got 17");
}
END_TEST

START_TEST(test_bad_metadata) {
    char p[4300];
    bad_path("meta.safetensors", p, sizeof p);
    write_patched(p, "\"format\":\"pt\"", "\"format\":3");
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "__metadata__ key 'format' must be a string, got 3");
}
END_TEST

START_TEST(test_missing_file) {
    char p[4300];
    bad_path("absent.safetensors", p, sizeof p);
    qft_err e = expect_fail(p);
    IOT_ASSERT_MSG_HAS(e, "cannot open");
}
END_TEST

int main(void) {
    Suite *s = suite_create("io_safetensors_errors");
    TCase *tc = tcase_create("bad files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_good_file_opens);
    tcase_add_test(tc, test_shorter_than_8_bytes);
    tcase_add_test(tc, test_truncated_header);
    tcase_add_test(tc, test_header_length_past_end);
    tcase_add_test(tc, test_offset_past_end);
    tcase_add_test(tc, test_unknown_dtype);
    tcase_add_test(tc, test_shape_bytes_disagree);
    tcase_add_test(tc, test_bad_shape_entries);
    tcase_add_test(tc, test_bad_data_offsets);
    tcase_add_test(tc, test_not_json);
    tcase_add_test(tc, test_bad_metadata);
    tcase_add_test(tc, test_missing_file);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
