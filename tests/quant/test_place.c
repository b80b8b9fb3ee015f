/* The quantizers' `place` entry (full sharding): a weight's data buffers move into memory
 * the core owns, and afterwards the weight dequantizes, counts and saves exactly as before,
 * reads nothing but that memory (zeroing it changes the output; refilling it with the
 * saved bytes restores it bit for bit), and free_weight leaves it alone. Covered for
 * bnb_nf4 (with and without double quantization, odd lengths), hqq (4-bit on both axes,
 * 3, 2, 8 bits, meta-quantized zero and scale) and the int8_rowwise example plugin (when
 * its .so is in the build tree), each after quantize and after load, plus a placer that
 * runs out of memory. */
#include "quant_test_util.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The lead's core gives each weight its reported bytes plus 8 * 64 for alignment of up to
 * eight buffers (core/model/llama_units.c); a plugin may use no more than that. */
#define PLACE_SLACK (8 * 64)

static const qft_quantizer_vtable *vt_nf4, *vt_hqq, *vt_int8;

/* ---- a test placer: bump allocation from one malloc'd block ------------------------- */
typedef struct arena {
    uint8_t *base; // (cap)
    size_t cap, used;
    int calls;
    int fail;      /* 1: NULL with a message, 2: NULL without one */
} arena;

static void *arena_alloc(void *ctx, size_t bytes, qft_err *err) {
    arena *a = ctx;
    a->calls++;
    if (a->fail == 1) {
        qft_err_setf(err, "test arena exhausted (asked for %zu bytes)", bytes);
        return NULL;
    }
    if (a->fail == 2) return NULL;
    const size_t at = (a->used + 63) / 64 * 64;
    if (at + bytes > a->cap) {
        qft_err_setf(err, "test arena of %zu bytes cannot hold %zu more at %zu", a->cap, bytes,
                     at);
        return NULL;
    }
    a->used = at + bytes;
    return a->base + at;
}

static arena arena_new(size_t cap) {
    arena a = {.cap = cap};
    a.base = aligned_alloc(64, (cap + 63) / 64 * 64);
    ck_assert_ptr_nonnull(a.base);
    /* a pattern, not zeros: a plugin that reads bytes it did not write shows up */
    for (size_t i = 0; i < cap; i++) a.base[i] = (uint8_t)(i * 131 + 7);
    return a;
}

/* ---- owned copies of what save() hands a sink ------------------------------------------ */
typedef struct saved {
    qt_mem m;       /* names, dtypes, shapes; data points into bytes[] */
    void *bytes[64];
} saved;

static void save_copy(const qft_quantizer_vtable *vt, const qft_qweight *qw, saved *s) {
    memset(s, 0, sizeof *s);
    qft_tensor_sink sink = qt_mem_sink(&s->m);
    qft_err err = {0};
    ck_assert_msg(vt->save(qw, "model.layers.0.mlp.up_proj", &sink, &err) == 0, "%s", err.msg);
    for (int i = 0; i < s->m.n; i++) {
        const size_t nb = qt_numel(&s->m.e[i].t) * qt_dtype_size(s->m.e[i].t.dtype);
        s->bytes[i] = malloc(nb ? nb : 1);
        ck_assert_ptr_nonnull(s->bytes[i]);
        memcpy(s->bytes[i], s->m.e[i].t.data, nb);
        s->m.e[i].t.data = s->bytes[i];
    }
}

static void saved_free(saved *s) {
    for (int i = 0; i < s->m.n; i++) free(s->bytes[i]);
}

static void assert_same_saved(const saved *a, const saved *b, const char *what) {
    ck_assert_int_eq(a->m.n, b->m.n);
    for (int i = 0; i < a->m.n; i++) {
        const qt_mem_entry *x = &a->m.e[i], *y = &b->m.e[i];
        ck_assert_str_eq(x->name, y->name);
        ck_assert_int_eq(x->t.dtype, y->t.dtype);
        ck_assert_int_eq(x->t.ndim, y->t.ndim);
        for (int d = 0; d < x->t.ndim; d++) ck_assert_int_eq(x->t.shape[d], y->t.shape[d]);
        const size_t nb = qt_numel(&x->t) * qt_dtype_size(x->t.dtype);
        ck_assert_msg(memcmp(x->t.data, y->t.data, nb) == 0, "%s: saved %s differs after place",
                      what, x->name);
    }
}

/* ---- the checks ----------------------------------------------------------------------- */
static float *dequant_all(const qft_quantizer_vtable *vt, const qft_qweight *qw, int64_t out,
                          int64_t in) {
    float *d = malloc((size_t)(out * in) * sizeof(float)); // (out, in)
    ck_assert_ptr_nonnull(d);
    qft_err err = {0};
    /* in tiles of up to 3 rows, so that row offsets into the placed codes are exercised */
    for (int64_t r = 0; r < out; r += 3) {
        const int64_t n = out - r < 3 ? out - r : 3;
        ck_assert_msg(vt->dequantize_rows(qw, r, n, d + r * in, &err) == 0, "%s", err.msg);
    }
    return d;
}

/* Seeded weights with a few outliers, so blocks and groups get different statistics. */
static float *random_weight(int64_t out, int64_t in, uint64_t seed) {
    qft_rng r;
    qft_rng_seed(&r, seed);
    float *w = malloc((size_t)(out * in) * sizeof(float)); // (out, in)
    ck_assert_ptr_nonnull(w);
    for (int64_t i = 0; i < out * in; i++) {
        w[i] = 0.02f * qft_rng_normal(&r);
        if (qft_rng_uniform(&r) < 0.01) w[i] *= 8.0f;
    }
    return w;
}

/* Places qw into a fresh arena and runs every post-place check against A (its dense rows
 * before placing) and `before` (its saved tensors before placing). data_bytes: the
 * weight's data as the format defines it (codes and statistics, no header). Frees qw. */
static void place_and_check(const qft_quantizer_vtable *vt, qft_qweight *qw, int64_t out,
                            int64_t in, size_t data_bytes, const float *A, const char *what) {
    const size_t nA = (size_t)(out * in) * sizeof(float);
    const size_t bytes0 = vt->bytes(qw);
    ck_assert_msg(bytes0 >= data_bytes, "%s: bytes() %zu < data %zu", what, bytes0, data_bytes);
    saved before;
    save_copy(vt, qw, &before);

    arena ar = arena_new(bytes0 + PLACE_SLACK);
    const qft_placer pl = {.ctx = &ar, .alloc = arena_alloc};
    const size_t mem0 = qft_mem_current();
    qft_err err = {0};
    ck_assert_msg(vt->place(qw, &pl, &err) == 0, "%s: %s", what, err.msg);
    ck_assert_int_eq(err.code, 0);
    ck_assert_msg(ar.used >= data_bytes && ar.used <= data_bytes + PLACE_SLACK,
                  "%s: placed %zu bytes for %zu data bytes", what, ar.used, data_bytes);
    /* the plugin's own copies are gone: exactly the data left the accounted heap */
    ck_assert_msg(mem0 - qft_mem_current() == data_bytes, "%s: heap shrank by %zu, data %zu",
                  what, mem0 - qft_mem_current(), data_bytes);
    ck_assert_uint_eq(vt->bytes(qw), bytes0);

    float *B = dequant_all(vt, qw, out, in);
    ck_assert_msg(memcmp(A, B, nA) == 0, "%s: dequantized rows differ after place", what);

    saved after;
    save_copy(vt, qw, &after);
    assert_same_saved(&before, &after, what);

    /* save hands out views: every data tensor now lies in the arena, and together they
     * are the whole data (the header's own tensors, such as codebooks, lie outside) */
    qt_mem views = {0};
    qft_tensor_sink vs = qt_mem_sink(&views);
    ck_assert_msg(vt->save(qw, "p", &vs, &err) == 0, "%s", err.msg);
    size_t in_arena = 0;
    for (int i = 0; i < views.n; i++) {
        const uint8_t *d = views.e[i].t.data;
        const size_t nb = qt_numel(&views.e[i].t) * qt_dtype_size(views.e[i].t.dtype);
        if (d >= ar.base && d < ar.base + ar.used) {
            ck_assert_msg(d + nb <= ar.base + ar.used, "%s: %s runs past the placed bytes", what,
                          views.e[i].name);
            in_arena += nb;
        }
    }
    ck_assert_msg(in_arena == data_bytes, "%s: saved tensors in the arena hold %zu bytes, the "
                  "data is %zu", what, in_arena, data_bytes);

    /* release and gather: the weight must read only the placed bytes */
    uint8_t *copy = malloc(ar.used); // (used)
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, ar.base, ar.used);
    memset(ar.base, 0, ar.cap);
    float *Z = dequant_all(vt, qw, out, in);
    ck_assert_msg(memcmp(A, Z, nA) != 0, "%s: zeroing the placed memory changed nothing: the "
                  "weight reads data from elsewhere", what);
    memcpy(ar.base, copy, ar.used);
    float *C = dequant_all(vt, qw, out, in);
    ck_assert_msg(memcmp(A, C, nA) == 0, "%s: dequantized rows differ after zero and refill",
                  what);
    saved refilled;
    save_copy(vt, qw, &refilled);
    assert_same_saved(&before, &refilled, what);

    /* a second place is refused and takes nothing */
    const size_t used = ar.used;
    qft_err e2 = {0};
    ck_assert_int_ne(vt->place(qw, &pl, &e2), 0);
    ck_assert_msg(strstr(e2.msg, "already placed") != NULL, "%s: %s", what, e2.msg);
    ck_assert_uint_eq(ar.used, used);
    float *D = dequant_all(vt, qw, out, in);
    ck_assert_msg(memcmp(A, D, nA) == 0, "%s: a refused second place changed the weight", what);

    /* free_weight frees the header only (what bytes() counts beyond the data: the plugins
     * count their struct when they allocate it through the services), and leaves the
     * arena as it was */
    const size_t mem1 = qft_mem_current();
    vt->free_weight(qw);
    ck_assert_msg(mem1 - qft_mem_current() == bytes0 - data_bytes,
                  "%s: free_weight released %zu accounted bytes, the header is %zu", what,
                  mem1 - qft_mem_current(), bytes0 - data_bytes);
    ck_assert_msg(memcmp(ar.base, copy, ar.used) == 0, "%s: free_weight touched the arena", what);

    free(B), free(Z), free(C), free(D), free(copy), free(ar.base);
    saved_free(&before), saved_free(&after), saved_free(&refilled);
}

/* Quantizes a seeded weight, places it, and checks; then loads the saved weight back,
 * places the loaded one, and checks it against the same rows. */
static void check_case(const qft_quantizer_vtable *vt, const void *state, int64_t out,
                       int64_t in, uint64_t seed, size_t data_bytes, const char *what) {
    const size_t mem_start = qft_mem_current();
    float *w = random_weight(out, in, seed);
    qft_qweight *qw = NULL;
    qft_err err = {0};
    ck_assert_msg(vt->quantize(state, "model.layers.0.mlp.up_proj", w, out, in, &qw, &err) == 0,
                  "%s: %s", what, err.msg);
    float *A = dequant_all(vt, qw, out, in);
    int nonzero = 0;
    for (int64_t i = 0; i < out * in; i++) nonzero += A[i] != 0.0f;
    ck_assert_msg(nonzero > out * in / 2, "%s: the test weight dequantizes to zeros", what);
    saved s;
    save_copy(vt, qw, &s);
    place_and_check(vt, qw, out, in, data_bytes, A, what);

    char what2[256];
    snprintf(what2, sizeof what2, "%s, loaded", what);
    qft_tensor_source src = qt_mem_source(&s.m);
    qft_qweight *lw = NULL;
    ck_assert_msg(vt->load(state, "model.layers.0.mlp.up_proj", out, in, &src, &lw, &err) == 0,
                  "%s: %s", what2, err.msg);
    float *L = dequant_all(vt, lw, out, in);
    ck_assert_msg(memcmp(A, L, (size_t)(out * in) * sizeof(float)) == 0, "%s: load differs",
                  what2);
    place_and_check(vt, lw, out, in, data_bytes, A, what2);
    saved_free(&s);
    free(L), free(A), free(w);
    ck_assert_msg(qft_mem_current() == mem_start, "%s: %zu accounted bytes leaked", what,
                  qft_mem_current() - mem_start);
}

/* A placer that fails: place returns -1 with a message, and the weight is untouched. */
static void check_fail(const qft_quantizer_vtable *vt, const void *state, int64_t out,
                       int64_t in, const char *plugin) {
    float *w = random_weight(out, in, 99);
    qft_qweight *qw = NULL;
    qft_err err = {0};
    ck_assert_msg(vt->quantize(state, "w", w, out, in, &qw, &err) == 0, "%s", err.msg);
    float *A = dequant_all(vt, qw, out, in);
    const size_t bytes0 = vt->bytes(qw), mem0 = qft_mem_current();
    saved before;
    save_copy(vt, qw, &before);
    for (int mode = 1; mode <= 3; mode++) {
        /* 1: the placer says why; 2: it says nothing; 3: too small an arena */
        arena ar = mode == 3 ? arena_new(16) : (arena){.fail = mode};
        const qft_placer pl = {.ctx = &ar, .alloc = arena_alloc};
        qft_err e = {0};
        ck_assert_int_eq(vt->place(qw, &pl, &e), -1);
        ck_assert_int_ne(e.code, 0);
        ck_assert_msg(strstr(e.msg, plugin) == e.msg, "mode %d: message not from %s: %s", mode,
                      plugin, e.msg);
        ck_assert_msg(strstr(e.msg, mode == 1 ? "test arena exhausted"
                                : mode == 2 ? "no memory" : "cannot hold") != NULL,
                      "mode %d: %s", mode, e.msg);
        ck_assert_int_eq(ar.calls, 1);
        ck_assert_uint_eq(qft_mem_current(), mem0);
        ck_assert_uint_eq(vt->bytes(qw), bytes0);
        float *B = dequant_all(vt, qw, out, in);
        ck_assert_msg(memcmp(A, B, (size_t)(out * in) * sizeof(float)) == 0,
                      "mode %d: the weight changed after a failed place", mode);
        saved after;
        save_copy(vt, qw, &after);
        assert_same_saved(&before, &after, plugin);
        saved_free(&after);
        free(B);
        free(ar.base);
    }
    /* and it can still be placed afterwards */
    arena ar = arena_new(bytes0 + PLACE_SLACK);
    const qft_placer pl = {.ctx = &ar, .alloc = arena_alloc};
    ck_assert_msg(vt->place(qw, &pl, &err) == 0, "%s", err.msg);
    float *B = dequant_all(vt, qw, out, in);
    ck_assert(memcmp(A, B, (size_t)(out * in) * sizeof(float)) == 0);
    vt->free_weight(qw);
    saved_free(&before);
    free(B), free(A), free(w), free(ar.base);
}

/* ---- bnb_nf4 ---------------------------------------------------------------------------- */
START_TEST(test_nf4_place) {
    static const qt_nf4_case cases[] = {
        {7, 37, 64, 1},    /* 259 elements: odd, a partial last block */
        {7, 37, 64, 0},
        {301, 129, 64, 1}, /* 607 blocks: three nested blocks, the last partial */
        {33, 65, 128, 0},
        {5, 3, 32, 1},     /* fewer elements than a block */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[128];
        void *st = qt_nf4_open(vt_nf4, &cases[i], what, sizeof what);
        check_case(vt_nf4, st, cases[i].out, cases[i].in, 1000 + i, qt_nf4_data_bytes(&cases[i]),
                   what);
        vt_nf4->close(st);
    }
}
END_TEST

START_TEST(test_nf4_place_fails_cleanly) {
    for (int dq = 0; dq <= 1; dq++) {
        void *st =
            qt_configure(vt_nf4, "bnb_nf4", dq ? "double_quant = true;" : "double_quant = false;");
        check_fail(vt_nf4, st, 9, 31, "bnb_nf4");
        vt_nf4->close(st);
    }
}
END_TEST

/* ---- hqq -------------------------------------------------------------------------------- */
START_TEST(test_hqq_place) {
    static const qt_hqq_case cases[] = {
        {32, 128, 4, 64, 1, 0, 0},
        {64, 96, 4, 64, 0, 0, 0},  /* axis 0: groups are columns */
        {24, 80, 3, 64, 1, 0, 0},  /* 30 groups: the last int32 word holds no full ten rows */
        {16, 128, 2, 64, 1, 0, 0},
        {10, 96, 8, 32, 1, 0, 0},
        {128, 128, 4, 64, 1, 1, 1}, /* 256 groups: zero and scale meta-quantized */
        {96, 128, 3, 48, 1, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[160];
        void *st = qt_hqq_open(vt_hqq, &cases[i], what, sizeof what);
        check_case(vt_hqq, st, cases[i].out, cases[i].in, 2000 + i, qt_hqq_data_bytes(&cases[i]),
                   what);
        vt_hqq->close(st);
    }
}
END_TEST

START_TEST(test_hqq_place_fails_cleanly) {
    void *st = qt_configure(vt_hqq, "hqq", "nbits = 4;");
    check_fail(vt_hqq, st, 8, 64, "hqq");
    vt_hqq->close(st);
    st = qt_configure(vt_hqq, "hqq", "nbits = 4; quant_zero = true; quant_scale = true;");
    check_fail(vt_hqq, st, 128, 128, "hqq");
    vt_hqq->close(st);
}
END_TEST

/* ---- the int8_rowwise example ----------------------------------------------------------- */
START_TEST(test_int8_place) {
    if (!vt_int8) {
        printf("int8_rowwise example plugin not built here: skipping its place checks\n");
        return;
    }
    void *st = qt_configure(vt_int8, "int8_rowwise", "");
    check_case(vt_int8, st, 13, 37, 3000, 13 * 37 + 4 * 13, "int8_rowwise (13, 37)");
    check_case(vt_int8, st, 1, 200, 3001, 200 + 4, "int8_rowwise (1, 200)");
    check_fail(vt_int8, st, 6, 17, "int8_rowwise");
    vt_int8->close(st);
}
END_TEST

int main(void) {
    vt_nf4 = qt_load_plugin("QFT_NF4_PLUGIN");
    vt_hqq = qt_load_plugin("QFT_HQQ_PLUGIN");
    if (!vt_nf4 || !vt_hqq) return 1;
    if (!vt_nf4->place || !vt_hqq->place) {
        fprintf(stderr, "bnb_nf4 or hqq has no place entry\n");
        return 1;
    }
    const char *ex = getenv("QFT_EXAMPLE_PLUGIN");
    if (ex && access(ex, R_OK) == 0) {
        vt_int8 = qt_load_plugin("QFT_EXAMPLE_PLUGIN");
        if (!vt_int8 || !vt_int8->place) {
            fprintf(stderr, "%s: not a quantizer with a place entry\n", ex);
            return 1;
        }
    }
    Suite *s = suite_create("quant_place");
    TCase *tc = tcase_create("place");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_nf4_place);
    tcase_add_test(tc, test_nf4_place_fails_cleanly);
    tcase_add_test(tc, test_hqq_place);
    tcase_add_test(tc, test_hqq_place_fails_cleanly);
    tcase_add_test(tc, test_int8_place);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
