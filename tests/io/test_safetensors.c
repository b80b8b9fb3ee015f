/* safetensors read and write: round trips, files written by Python's safetensors, byte
 * equality with what Python writes, unaligned tensors, on-the-fly conversion. */
#include <stdlib.h>
#include <string.h>

#include "io_test_util.h"
#include "safetensors.h"

static float rand_val(qft_rng *r) { return 3.0f * qft_rng_normal(r); }

/* Fills n elements of dtype dt with random values from r. */
static void fill_random(void *data, qft_dtype dt, size_t n, qft_rng *r) {
    for (size_t i = 0; i < n; i++) {
        switch (dt) {
        case QFT_DT_F32: ((float *)data)[i] = rand_val(r); break;
        case QFT_DT_BF16: ((uint16_t *)data)[i] = qft_f32_to_bf16(rand_val(r)); break;
        case QFT_DT_F16: ((uint16_t *)data)[i] = qft_f32_to_f16(rand_val(r)); break;
        case QFT_DT_I32: ((int32_t *)data)[i] = (int32_t)qft_rng_next(r); break;
        case QFT_DT_I64: ((int64_t *)data)[i] = (int64_t)qft_rng_next(r); break;
        default: ck_abort_msg("unexpected dtype");
        }
    }
}

START_TEST(test_roundtrip) {
    char dir[4096], path[4200];
    iot_mkdtemp(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    qft_rng r;
    qft_rng_seed(&r, 7);
    struct {
        const char *name;
        qft_dtype dt;
        int ndim;
        int64_t shape[3];
    } spec[] = {
        {"w.f32", QFT_DT_F32, 3, {3, 5, 7}},  {"w.bf16", QFT_DT_BF16, 3, {7, 1, 3}},
        {"a.f16", QFT_DT_F16, 2, {11, 3}},    {"ids.i32", QFT_DT_I32, 2, {5, 3}},
        {"z.i64", QFT_DT_I64, 1, {9}},        {"scalar", QFT_DT_F32, 0, {0}},
        {"empty", QFT_DT_BF16, 2, {4, 0}},    {"b.f16", QFT_DT_F16, 1, {1}},
    };
    enum { NS = sizeof spec / sizeof spec[0] };
    qft_tensor t[NS];
    qft_st_writer w;
    qft_st_writer_init(&w);
    qft_err err = {0};
    for (int i = 0; i < NS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].dtype = spec[i].dt;
        t[i].ndim = spec[i].ndim;
        memcpy(t[i].shape, spec[i].shape, sizeof spec[i].shape);
        size_t n = qft_st_numel(&t[i]);
        t[i].data = malloc(n * qft_dtype_size(spec[i].dt) + 1);
        fill_random(t[i].data, spec[i].dt, n, &r);
        ck_assert_msg(qft_st_writer_add(&w, spec[i].name, &t[i], &err) == 0, "%s", err.msg);
    }
    ck_assert_int_eq(qft_st_writer_meta(&w, "format", "pt", &err), 0);
    ck_assert_int_eq(qft_st_writer_meta(&w, "note", "round \"trip\" é", &err), 0);
    ck_assert_msg(qft_st_write(&w, path, &err) == 0, "%s", err.msg);
    qft_st_writer_free(&w);

    /* layout: 8-byte aligned header that starts with the metadata */
    size_t len = 0;
    char *raw = iot_read(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)raw[i];
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert_msg(strncmp(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"", 30) == 0, "%.60s",
                  raw + 8);
    free(raw);

    qft_st_file f;
    ck_assert_msg(qft_st_open(path, &f, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n_entries, NS);
    ck_assert_str_eq(qft_st_meta(&f, "format"), "pt");
    ck_assert_str_eq(qft_st_meta(&f, "note"), "round \"trip\" é");
    ck_assert_ptr_null(qft_st_meta(&f, "missing"));
    for (int i = 0; i < NS; i++) {
        const qft_st_entry *e = qft_st_find(&f, spec[i].name);
        ck_assert_msg(e != NULL, "%s missing", spec[i].name);
        ck_assert_int_eq(e->t.dtype, spec[i].dt);
        ck_assert_int_eq(e->t.ndim, spec[i].ndim);
        for (int d = 0; d < spec[i].ndim; d++) ck_assert_int_eq(e->t.shape[d], spec[i].shape[d]);
        size_t nb = qft_st_numel(&t[i]) * qft_dtype_size(spec[i].dt);
        ck_assert_uint_eq(e->nbytes, nb);
        ck_assert_msg(memcmp(e->t.data, t[i].data, nb) == 0, "%s: data differs", spec[i].name);
        /* widest dtype first keeps every tensor aligned */
        ck_assert_uint_eq((uintptr_t)e->t.data % qft_dtype_size(spec[i].dt), 0);
        free(t[i].data);
    }
    ck_assert_ptr_null(qft_st_find(&f, "w.f3"));
    qft_st_close(&f);
    iot_rm_rf(dir);
}
END_TEST

/* Exact values against what the reference script recorded from torch. */
START_TEST(test_read_python_fixture) {
    char path[4096], jpath[4096];
    iot_fixture("py_tensors.safetensors", path, sizeof path);
    iot_fixture("py_tensors.json", jpath, sizeof jpath);
    json_t *expect = iot_load_json(jpath);
    json_t *tensors = json_object_get(expect, "tensors");
    qft_st_file f;
    qft_err err = {0};
    ck_assert_msg(qft_st_open(path, &f, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n_entries, (int)json_object_size(tensors));
    ck_assert_str_eq(qft_st_meta(&f, "format"), "pt");
    ck_assert_ptr_nonnull(qft_st_meta(&f, "qft_versions"));
    const char *name;
    json_t *rec;
    int checked = 0;
    json_object_foreach(tensors, name, rec) {
        const qft_st_entry *e = qft_st_find(&f, name);
        ck_assert_msg(e != NULL, "%s missing", name);
        ck_assert_str_eq(qft_dtype_name(e->t.dtype), json_string_value(json_object_get(rec, "dtype")));
        json_t *shape = json_object_get(rec, "shape");
        ck_assert_int_eq(e->t.ndim, (int)json_array_size(shape));
        for (int d = 0; d < e->t.ndim; d++)
            ck_assert_int_eq(e->t.shape[d], json_integer_value(json_array_get(shape, (size_t)d)));
        json_t *vals = json_object_get(rec, "values");
        size_t n = qft_st_numel(&e->t);
        ck_assert_uint_eq(n, json_array_size(vals));
        if (e->t.dtype == QFT_DT_I64 || e->t.dtype == QFT_DT_I32) {
            for (size_t i = 0; i < n; i++) {
                int64_t v;
                if (e->t.dtype == QFT_DT_I64) {
                    memcpy(&v, (const char *)e->t.data + 8 * i, 8);
                } else {
                    int32_t v32;
                    memcpy(&v32, (const char *)e->t.data + 4 * i, 4);
                    v = v32;
                }
                ck_assert_int_eq(v, json_integer_value(json_array_get(vals, i)));
            }
        } else {
            float *got = malloc((n ? n : 1) * sizeof *got); // (n)
            ck_assert_msg(qft_st_entry_to_f32(&f, e, got, &err) == 0, "%s", err.msg);
            for (size_t i = 0; i < n; i++) {
                float want = (float)json_number_value(json_array_get(vals, i));
                ck_assert_msg(got[i] == want, "%s[%zu]: %.9g != %.9g", name, i, got[i], want);
            }
            free(got);
        }
        checked++;
    }
    ck_assert_int_eq(checked, 8);
    /* the I64 values really use the high bits (a 32-bit read would lose them) */
    const qft_st_entry *ids = qft_st_find(&f, "i64.ids");
    int big = 0;
    for (size_t i = 0; i < 13; i++) {
        int64_t v;
        memcpy(&v, (const char *)ids->t.data + 8 * i, 8);
        big |= v > INT32_MAX || v < INT32_MIN;
    }
    ck_assert(big);
    qft_st_close(&f);
    json_decref(expect);
}
END_TEST

/* Reading a file Python wrote and writing it back with qft gives the same bytes: same
 * tensor order, header spelling, metadata placement and padding. */
static void check_rewrite_identical(const char *rel) {
    char src[4096], dir[4096], dst[4200];
    iot_fixture(rel, src, sizeof src);
    iot_mkdtemp(dir, sizeof dir);
    snprintf(dst, sizeof dst, "%s/out.safetensors", dir);
    qft_st_file f;
    qft_err err = {0};
    ck_assert_msg(qft_st_open(src, &f, &err) == 0, "%s", err.msg);
    qft_st_writer w;
    qft_st_writer_init(&w);
    for (int i = 0; i < f.n_meta; i++)
        ck_assert_int_eq(qft_st_writer_meta(&w, f.meta_keys[i], f.meta_vals[i], &err), 0);
    /* add in reverse name order so the writer's own ordering is what is tested */
    for (int i = f.n_entries - 1; i >= 0; i--)
        ck_assert_msg(qft_st_writer_add(&w, f.entries[i].name, &f.entries[i].t, &err) == 0, "%s",
                      err.msg);
    ck_assert_msg(qft_st_write(&w, dst, &err) == 0, "%s", err.msg);
    qft_st_writer_free(&w);
    qft_st_close(&f);
    size_t la = 0, lb = 0;
    char *a = iot_read(src, &la), *b = iot_read(dst, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_msg(memcmp(a, b, la) == 0, "%s: qft's rewrite differs from Python's bytes", rel);
    free(a);
    free(b);
    iot_rm_rf(dir);
}

START_TEST(test_rewrite_matches_python_bytes) {
    check_rewrite_identical("py_tensors.safetensors");
    check_rewrite_identical("tiny_llama_f32/model.safetensors");
    check_rewrite_identical("tiny_llama_bf16/model.safetensors");
    check_rewrite_identical("tiny_llama_tied_bf16/model.safetensors");
}
END_TEST

static void put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Tensors at odd offsets (a writer that does not sort by dtype, or pads oddly): the views
 * are misaligned, and conversion must still read them right (UBSan checks the "how"). */
START_TEST(test_unaligned_tensors) {
    char dir[4096], path[4200];
    iot_mkdtemp(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/unaligned.safetensors", dir);
    enum { N32 = 5, N16 = 5000, NB = 7 };
    /* data: 1 pad byte, F32 (5) at 1, F16 (5000) at 21, BF16 (7) at 10021 */
    char hdr[512];
    snprintf(hdr, sizeof hdr, "%s",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[1,21]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[50,100],\"data_offsets\":[21,10021]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[7],\"data_offsets\":[10021,10035]}}");
    /* pad so the data section is 8-aligned; the odd offsets above then misalign the views */
    while (strlen(hdr) % 8) strcat(hdr, " ");
    size_t hlen = strlen(hdr);
    size_t dlen = 10035;
    uint8_t *buf = calloc(8 + hlen + dlen, 1);
    put_u64le(buf, hlen);
    memcpy(buf + 8, hdr, hlen);
    uint8_t *data = buf + 8 + hlen;
    qft_rng r;
    qft_rng_seed(&r, 11);
    float a[N32];
    uint16_t h[N16], b[NB];
    for (int i = 0; i < N32; i++) a[i] = rand_val(&r);
    for (int i = 0; i < N16; i++) h[i] = qft_f32_to_f16(rand_val(&r));
    for (int i = 0; i < NB; i++) b[i] = qft_f32_to_bf16(rand_val(&r));
    memcpy(data + 1, a, sizeof a);
    memcpy(data + 21, h, sizeof h);
    memcpy(data + 10021, b, sizeof b);
    iot_write(path, buf, 8 + hlen + dlen);
    free(buf);

    qft_st_file f;
    qft_err err = {0};
    ck_assert_msg(qft_st_open(path, &f, &err) == 0, "%s", err.msg);
    const qft_st_entry *ea = qft_st_find(&f, "a"), *eh = qft_st_find(&f, "h"),
                       *eb = qft_st_find(&f, "b");
    ck_assert(ea && eh && eb);
    ck_assert_uint_ne((uintptr_t)ea->t.data % 4, 0); /* the point of the test */
    ck_assert_uint_ne((uintptr_t)eh->t.data % 2, 0);
    float out[N16];
    ck_assert_int_eq(qft_st_entry_to_f32(&f, ea, out, &err), 0);
    for (int i = 0; i < N32; i++) ck_assert_float_eq(out[i], a[i]);
    ck_assert_int_eq(qft_st_entry_to_f32(&f, eh, out, &err), 0);
    for (int i = 0; i < N16; i++) ck_assert_float_eq(out[i], qft_f16_to_f32(h[i]));
    ck_assert_int_eq(qft_st_entry_to_f32(&f, eb, out, &err), 0);
    for (int i = 0; i < NB; i++) ck_assert_float_eq(out[i], qft_bf16_to_f32(b[i]));
    qft_st_release(&f, eh);
    ck_assert_int_eq(qft_st_entry_to_f32(&f, eh, out, &err), 0); /* still readable */
    ck_assert_float_eq(out[N16 - 1], qft_f16_to_f32(h[N16 - 1]));
    qft_st_close(&f);
    iot_rm_rf(dir);
}
END_TEST

/* F32 sources written as BF16/F16, across the writer's chunk boundary. */
START_TEST(test_write_converted) {
    char dir[4096], path[4200];
    iot_mkdtemp(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/conv.safetensors", dir);
    enum { R = 101, C = 333 }; /* 33633 elements: two full chunks and a partial one */
    float *src = malloc((size_t)R * C * sizeof *src); // (R, C)
    qft_rng r;
    qft_rng_seed(&r, 3);
    for (size_t i = 0; i < (size_t)R * C; i++) src[i] = rand_val(&r);
    qft_tensor t = {.dtype = QFT_DT_F32, .ndim = 2, .shape = {R, C}, .data = src};
    qft_st_writer w;
    qft_st_writer_init(&w);
    qft_err err = {0};
    ck_assert_int_eq(qft_st_writer_add_f32(&w, "as_bf16", &t, QFT_DT_BF16, &err), 0);
    ck_assert_int_eq(qft_st_writer_add_f32(&w, "as_f16", &t, QFT_DT_F16, &err), 0);
    ck_assert_int_eq(qft_st_writer_add_f32(&w, "as_f32", &t, QFT_DT_F32, &err), 0);
    ck_assert_int_ne(qft_st_writer_add_f32(&w, "as_i32", &t, QFT_DT_I32, &err), 0);
    IOT_ASSERT_MSG_HAS(err, "as_i32");
    ck_assert_msg(qft_st_write(&w, path, &err) == 0, "%s", err.msg);
    qft_st_writer_free(&w);
    qft_st_file f;
    ck_assert_msg(qft_st_open(path, &f, &err) == 0, "%s", err.msg);
    const qft_st_entry *eb = qft_st_find(&f, "as_bf16"), *eh = qft_st_find(&f, "as_f16"),
                       *ef = qft_st_find(&f, "as_f32");
    ck_assert(eb && eh && ef);
    ck_assert_int_eq(eb->t.dtype, QFT_DT_BF16);
    ck_assert_int_eq(eh->t.dtype, QFT_DT_F16);
    ck_assert_uint_eq(eb->nbytes, (size_t)R * C * 2);
    const uint16_t *pb = eb->t.data, *ph = eh->t.data; /* aligned: the writer sorts by dtype */
    for (size_t i = 0; i < (size_t)R * C; i++) {
        ck_assert_uint_eq(pb[i], qft_f32_to_bf16(src[i]));
        ck_assert_uint_eq(ph[i], qft_f32_to_f16(src[i]));
    }
    ck_assert(memcmp(ef->t.data, src, (size_t)R * C * 4) == 0);
    qft_st_close(&f);
    free(src);
    iot_rm_rf(dir);
}
END_TEST

START_TEST(test_writer_rejects) {
    qft_st_writer w;
    qft_st_writer_init(&w);
    qft_err err = {0};
    float v[2] = {1.5f, -2.0f};
    qft_tensor t = {.dtype = QFT_DT_F32, .ndim = 1, .shape = {2}, .data = v};
    ck_assert_int_eq(qft_st_writer_add(&w, "x", &t, &err), 0);
    ck_assert_int_ne(qft_st_writer_add(&w, "x", &t, &err), 0);
    IOT_ASSERT_MSG_HAS(err, "'x' added twice");
    ck_assert_int_ne(qft_st_writer_add(&w, "__metadata__", &t, &err), 0);
    IOT_ASSERT_MSG_HAS(err, "reserved");
    qft_tensor neg = t;
    neg.shape[0] = -1;
    ck_assert_int_ne(qft_st_writer_add(&w, "neg", &neg, &err), 0);
    IOT_ASSERT_MSG_HAS(err, "'neg'");
    qft_st_writer_free(&w);
    /* an unwritable destination fails cleanly and leaves nothing behind */
    qft_st_writer_init(&w);
    ck_assert_int_eq(qft_st_writer_add(&w, "x", &t, &err), 0);
    ck_assert_int_ne(qft_st_write(&w, "/nonexistent-dir/x.safetensors", &err), 0);
    IOT_ASSERT_MSG_HAS(err, "/nonexistent-dir/x.safetensors");
    qft_st_writer_free(&w);
}
END_TEST

int main(void) {
    Suite *s = suite_create("io_safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_read_python_fixture);
    tcase_add_test(tc, test_rewrite_matches_python_bytes);
    tcase_add_test(tc, test_unaligned_tensors);
    tcase_add_test(tc, test_write_converted);
    tcase_add_test(tc, test_writer_rejects);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
