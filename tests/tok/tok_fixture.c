/* Fixture reading for the tokenizer tests. Dataset texts are not copied into the fixtures
 * (they are third-party data in ../shared): records name the dataset row and field, and the
 * text is rebuilt here with the same templates the reference script used. */
#include "tok_fixture.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long n = ftell(f);
    rewind(f);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

json_t **fx_read_jsonl(const char *path, size_t *n) {
    size_t len;
    char *buf = read_file(path, &len);
    *n = 0;
    if (!buf) {
        fprintf(stderr, "%s: cannot read\n", path);
        return NULL;
    }
    size_t cap = 1024, count = 0;
    json_t **lines = malloc(cap * sizeof *lines);
    int line_no = 0;
    for (char *p = buf; lines && p < buf + len;) {
        char *e = memchr(p, '\n', (size_t)(buf + len - p));
        size_t l = e ? (size_t)(e - p) : (size_t)(buf + len - p);
        line_no++;
        if (l) {
            json_error_t je;
            json_t *j = json_loadb(p, l, JSON_ALLOW_NUL, &je);
            if (!j) {
                fprintf(stderr, "%s:%d: %s\n", path, line_no, je.text);
                fx_free_lines(lines, count);
                free(buf);
                return NULL;
            }
            if (count == cap) {
                json_t **nl = realloc(lines, 2 * cap * sizeof *nl);
                if (!nl) break;
                lines = nl;
                cap *= 2;
            }
            lines[count++] = j;
        }
        p += l + 1;
    }
    free(buf);
    *n = count;
    return lines;
}

void fx_free_lines(json_t **lines, size_t n) {
    for (size_t i = 0; lines && i < n; i++) json_decref(lines[i]);
    free(lines);
}

int32_t *fx_ids(json_t *rec, const char *key, long *n) {
    json_t *a = json_object_get(rec, key);
    if (!json_is_array(a)) {
        *n = -1;
        return NULL;
    }
    *n = (long)json_array_size(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    for (long i = 0; v && i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

void fx_path(char *out, size_t cap, const char *rel) {
    const char *root = getenv("QFT_SOURCE_ROOT");
    snprintf(out, cap, "%s/%s", root && *root ? root : ".", rel);
}

static int from_hex(const char *h, char **out, size_t *n) {
    size_t l = strlen(h);
    *out = malloc(l / 2 + 1);
    if (!*out) return -1;
    for (size_t i = 0; i + 1 < l; i += 2) {
        unsigned v;
        if (sscanf(h + i, "%2x", &v) != 1) return -1;
        (*out)[i / 2] = (char)v;
    }
    *n = l / 2;
    (*out)[*n] = 0;
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Concatenates NULL-terminated pieces. */
static char *cat(const char **parts) {
    size_t n = 0;
    for (int i = 0; parts[i]; i++) n += strlen(parts[i]);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    s[0] = 0;
    for (int i = 0; parts[i]; i++) strcat(s, parts[i]);
    return s;
}

/* The datasets, read once per process (tests only). */
static json_t **g_gsm;
static size_t g_gsm_n;
static json_t *g_alpaca;

static int dataset_text(const char *src, long row, const char *field, char **out) {
    char path[4096];
    *out = NULL;
    if (!strcmp(src, "gsm8k")) {
        if (!g_gsm) {
            fx_path(path, sizeof path, "../shared/assets/datasets/gsm8k/train.jsonl");
            FILE *f = fopen(path, "rb");
            if (!f) return 1;
            fclose(f);
            g_gsm = fx_read_jsonl(path, &g_gsm_n);
            if (!g_gsm) return -1;
        }
        if (row < 0 || (size_t)row >= g_gsm_n) return -1;
        const char *q = json_string_value(json_object_get(g_gsm[row], "question"));
        const char *a = json_string_value(json_object_get(g_gsm[row], "answer"));
        if (!q || !a) return -1;
        if (!strcmp(field, "question")) *out = strdup(q);
        else if (!strcmp(field, "answer")) *out = strdup(a);
        else if (!strcmp(field, "orca"))
            *out = cat((const char *[]){"###Question:\n", q, "\n###Answer:\n", a, NULL});
        return *out ? 0 : -1;
    }
    if (!strcmp(src, "alpaca")) {
        if (!g_alpaca) {
            fx_path(path, sizeof path, "../shared/assets/datasets/alpaca/alpaca_200.json");
            FILE *f = fopen(path, "rb");
            if (!f) return 1;
            fclose(f);
            json_error_t je;
            g_alpaca = json_load_file(path, 0, &je);
            if (!g_alpaca) return -1;
        }
        json_t *r = json_array_get(g_alpaca, (size_t)row);
        const char *ins = json_string_value(json_object_get(r, "instruction"));
        const char *inp = json_string_value(json_object_get(r, "input"));
        const char *outp = json_string_value(json_object_get(r, "output"));
        if (!ins || !outp) return -1;
        bool has_input = inp && *inp;
        const char *prompt_parts_no[] = {
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n", ins, "\n\n### Response:", NULL};
        const char *prompt_parts_in[] = {
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n", ins, "\n\n### Input:\n", has_input ? inp : "",
            "\n\n### Response:", NULL};
        char *prompt = cat(has_input ? prompt_parts_in : prompt_parts_no);
        if (!prompt) return -1;
        if (!strcmp(field, "prompt")) *out = prompt;
        else {
            *out = cat((const char *[]){prompt, outp, NULL});
            free(prompt);
        }
        return *out ? 0 : -1;
    }
    return -1;
}

int fx_corpus_text(json_t *rec, fx_text *out) {
    memset(out, 0, sizeof *out);
    json_t *src = json_object_get(rec, "src");
    if (json_is_string(src)) {
        char *s;
        int rc = dataset_text(json_string_value(src),
                              (long)json_integer_value(json_object_get(rec, "row")),
                              json_string_value(json_object_get(rec, "field")), &s);
        if (rc) return rc;
        out->raw = s;
        out->raw_len = strlen(s);
        if ((long)out->raw_len != (long)json_integer_value(json_object_get(rec, "len"))) {
            free(s);
            return -1;
        }
        out->text = dup_n(s, out->raw_len);
        out->text_len = out->raw_len;
        return out->text ? 0 : -1;
    }
    json_t *text = json_object_get(rec, "text");
    if (!json_is_string(text)) return -1;
    out->text_len = json_string_length(text);
    out->text = dup_n(json_string_value(text), out->text_len);
    json_t *hex = json_object_get(rec, "hex");
    if (json_is_string(hex)) {
        if (from_hex(json_string_value(hex), &out->raw, &out->raw_len)) return -1;
    } else {
        out->raw = dup_n(out->text, out->text_len);
        out->raw_len = out->text_len;
    }
    return out->text && out->raw ? 0 : -1;
}

void fx_text_free(fx_text *t) {
    free(t->raw);
    free(t->text);
    memset(t, 0, sizeof *t);
}

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, long nb) {
    return nb >= 0 && (size_t)nb == na && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int32_t *v, size_t n) {
    fprintf(stderr, "    %s [", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, "%s%d", i ? ", " : "", v[i]);
    fprintf(stderr, "%s]\n", n > 40 ? ", ..." : "");
}

int fx_check_record(const struct qft_tokenizer *t, const char *name, size_t i, json_t *crec,
                    json_t *rrec, const int32_t *pre, long n_pre, const int32_t *suf, long n_suf,
                    fx_stats *st, int32_t **ids_out, size_t *n_out, fx_text *tx) {
    *ids_out = NULL;
    *n_out = 0;
    int rc = fx_corpus_text(crec, tx);
    if (rc) {
        if (rc == 1) st->skipped++;
        return rc;
    }
    qft_err err = {0};
    st->checked++;
    long n_exp, n_exp_sp;
    int32_t *exp = fx_ids(rrec, "ids", &n_exp);
    int32_t *exp_sp = fx_ids(rrec, "ids_sp", &n_exp_sp);
    if (n_exp < 0) {
        free(exp_sp);
        return -1;
    }
    if (n_exp_sp < 0) { // the template around the plain ids
        n_exp_sp = n_pre + n_exp + n_suf;
        exp_sp = malloc((size_t)(n_exp_sp ? n_exp_sp : 1) * sizeof *exp_sp);
        if (!exp_sp) return -1;
        memcpy(exp_sp, pre, (size_t)n_pre * sizeof *pre);
        memcpy(exp_sp + n_pre, exp, (size_t)n_exp * sizeof *exp);
        memcpy(exp_sp + n_pre + n_exp, suf, (size_t)n_suf * sizeof *suf);
    }
    int32_t *ids = NULL, *ids_sp = NULL;
    size_t nid = 0, nid_sp = 0;
    char *dec = NULL, *dec_skip = NULL;
    size_t dl = 0, dsl = 0;
    rc = -1;
    if (qft_tokenizer_encode(t, tx->raw, tx->raw_len, 0, &ids, &nid, &err) ||
        qft_tokenizer_encode(t, tx->raw, tx->raw_len, 1, &ids_sp, &nid_sp, &err) ||
        qft_tokenizer_decode_n(t, exp, (size_t)n_exp, 0, &dec, &dl, &err) ||
        qft_tokenizer_decode_n(t, exp_sp, (size_t)n_exp_sp, 1, &dec_skip, &dsl, &err)) {
        fprintf(stderr, "  %s: record %zu: %s\n", name, i, err.msg);
        st->bad_enc++;
        goto done;
    }
    bool ok = ids_equal(ids, nid, exp, n_exp), ok_sp = ids_equal(ids_sp, nid_sp, exp_sp, n_exp_sp);
    st->bad_enc += !ok;
    st->bad_enc_sp += !ok_sp;
    if ((!ok || !ok_sp) && st->shown++ < 5) {
        fprintf(stderr, "  %s: encode mismatch on record %zu (%s): \"%.80s\"\n", name, i,
                json_string_value(json_object_get(crec, "cat")), tx->text);
        print_ids("expected", ok ? exp_sp : exp, (size_t)(ok ? n_exp_sp : n_exp));
        print_ids("got     ", ok ? ids_sp : ids, ok ? nid_sp : nid);
    }
    // Decode: the reference string, stored when it differs from the text.
    json_t *dj = json_object_get(rrec, "dec"), *dsj = json_object_get(rrec, "dec_skip");
    const char *want = json_is_string(dj) ? json_string_value(dj) : tx->text;
    size_t want_len = json_is_string(dj) ? json_string_length(dj) : tx->text_len;
    const char *want_skip = json_is_string(dsj) ? json_string_value(dsj) : want;
    size_t want_skip_len = json_is_string(dsj) ? json_string_length(dsj) : want_len;
    bool dok = dl == want_len && memcmp(dec, want, want_len) == 0;
    bool dsok = dsl == want_skip_len && memcmp(dec_skip, want_skip, want_skip_len) == 0;
    st->bad_dec += !dok;
    st->bad_dec_skip += !dsok;
    if ((!dok || !dsok) && st->shown++ < 5)
        fprintf(stderr, "  %s: decode%s mismatch on record %zu: want \"%.80s\" got \"%.80s\"\n",
                name, dok ? " (skip_special)" : "", i, dok ? want_skip : want, dok ? dec_skip : dec);
    st->rt_ref += json_is_true(json_object_get(rrec, "rt"));
    st->rt_ours += dl == tx->text_len && memcmp(dec, tx->text, tx->text_len) == 0;
    *ids_out = ids;
    *n_out = nid;
    ids = NULL;
    rc = 0;
done:
    free(ids);
    free(ids_sp);
    free(exp);
    free(exp_sp);
    free(dec);
    free(dec_skip);
    return rc;
}

int fx_check_inline(const char *dir, const char *jsonl, const char *name, fx_stats *st) {
    qft_tokenizer *t;
    qft_err err = {0};
    memset(st, 0, sizeof *st);
    if (qft_tokenizer_load(dir, &t, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    size_t n;
    json_t **lines = fx_read_jsonl(jsonl, &n);
    if (!lines || n < 2) {
        qft_tokenizer_free(t);
        fx_free_lines(lines, n);
        return -1;
    }
    json_t *meta = json_object_get(lines[0], "meta");
    long n_pre, n_suf;
    int32_t *pre = fx_ids(meta, "special_prefix", &n_pre);
    int32_t *suf = fx_ids(meta, "special_suffix", &n_suf);
    int rc = n_pre < 0 || n_suf < 0 ? -1 : 0;
    for (size_t i = 1; i < n && !rc; i++) {
        int32_t *ids;
        size_t nid;
        fx_text tx;
        if (fx_check_record(t, name, i - 1, lines[i], lines[i], pre, n_pre, suf, n_suf, st, &ids,
                            &nid, &tx) < 0)
            rc = -1;
        free(ids);
        fx_text_free(&tx);
    }
    printf("%s: %zu texts, encode mismatches %zu (add_special %zu), decode mismatches %zu "
           "(skip_special %zu), round trip %zu (reference %zu)\n", name, st->checked, st->bad_enc,
           st->bad_enc_sp, st->bad_dec, st->bad_dec_skip, st->rt_ours, st->rt_ref);
    free(pre);
    free(suf);
    fx_free_lines(lines, n);
    qft_tokenizer_free(t);
    return rc;
}
