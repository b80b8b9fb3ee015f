/* The pipeline components of tokenizer.json: normalizer, pre_tokenizer, post_processor and
 * decoder. Only the types the Llama-family tokenizers use are supported; any other type is
 * refused with its name and the file, rather than silently producing different ids. */
#include "tok_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's split pattern, which ByteLevel applies itself when use_regex is true. */
#define GPT2_PATTERN \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static const char *type_of(json_t *o) {
    json_t *v = json_object_get(o, "type");
    return json_is_string(v) ? json_string_value(v) : "(no type)";
}

static bool flag(json_t *o, const char *key, bool dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* {"String": s} or {"Regex": r}: returns the text and whether it is a regex. */
static const char *pattern_of(json_t *o, bool *is_regex) {
    json_t *p = json_object_get(o, "pattern");
    json_t *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    *is_regex = json_is_string(r);
    return json_is_string(s) ? json_string_value(s) : json_is_string(r) ? json_string_value(r)
                                                                         : NULL;
}

static int scheme_of(json_t *o, tok_prepend_scheme *out) {
    json_t *ps = json_object_get(o, "prepend_scheme");
    if (json_is_string(ps)) {
        const char *s = json_string_value(ps);
        if (!strcmp(s, "always")) *out = PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *out = PREPEND_FIRST;
        else if (!strcmp(s, "never")) *out = PREPEND_NEVER;
        else return -1;
        return 0;
    }
    // Files older than prepend_scheme say add_prefix_space instead.
    *out = flag(o, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    return 0;
}

static int replacement_of(json_t *o, char out[8]) {
    json_t *r = json_object_get(o, "replacement");
    const char *s = json_is_string(r) ? json_string_value(r) : "\xE2\x96\x81"; // U+2581
    size_t n = strlen(s);
    if (n == 0 || n >= 8 || tok_utf8_char_len((unsigned char)s[0]) != n) return -1;
    memcpy(out, s, n + 1);
    return 0;
}

/* ---- normalizer ---------------------------------------------------------------------- */
static int add_norm(qft_tokenizer *t, json_t *o, const char *where, qft_err *err) {
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(o, "normalizers");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (add_norm(t, json_array_get(list, i), where, err)) return -1;
        return 0;
    }
    tok_norm *n = realloc(t->norms, (t->n_norms + 1) * sizeof *n); // (n_norms + 1,)
    if (!n) return qft_err_setf(err, "%s: out of memory", where);
    t->norms = n;
    tok_norm *x = &t->norms[t->n_norms];
    memset(x, 0, sizeof *x);
    t->n_norms++; // counted at once so that free releases a half-built entry
    if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(o, "prepend");
        if (!json_is_string(p))
            return qft_err_setf(err, "%s: normalizer Prepend has no \"prepend\" string", where);
        x->kind = NORM_PREPEND;
        if (!(x->a = strdup(json_string_value(p)))) return qft_err_setf(err, "out of memory");
    } else if (!strcmp(type, "Replace")) {
        bool is_re;
        const char *pat = pattern_of(o, &is_re);
        json_t *c = json_object_get(o, "content");
        if (!pat || !json_is_string(c))
            return qft_err_setf(err, "%s: normalizer Replace needs a pattern and a content", where);
        x->kind = NORM_REPLACE;
        if (!(x->a = strdup(pat)) || !(x->b = strdup(json_string_value(c))))
            return qft_err_setf(err, "out of memory");
        if (is_re && tok_regex_compile(&x->re, pat, 0, where, err)) return -1;
    } else {
        return qft_err_setf(err, "%s: normalizer type \"%s\" is not supported (supported: "
                            "Sequence, Prepend, Replace)", where, type);
    }
    return 0;
}

int tok_load_normalizer(qft_tokenizer *t, void *json, qft_err *err) {
    json_t *o = json;
    if (!o || json_is_null(o)) return 0;
    return add_norm(t, o, t->path, err);
}

/* ---- pre-tokenizer ------------------------------------------------------------------- */
static int add_pre(qft_tokenizer *t, json_t *o, qft_err *err) {
    const char *where = t->path;
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(o, "pretokenizers");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (add_pre(t, json_array_get(list, i), err)) return -1;
        return 0;
    }
    tok_pre *p = realloc(t->pres, (t->n_pres + 1) * sizeof *p); // (n_pres + 1,)
    if (!p) return qft_err_setf(err, "%s: out of memory", where);
    t->pres = p;
    tok_pre *x = &t->pres[t->n_pres];
    memset(x, 0, sizeof *x);
    t->n_pres++; // counted at once so that free releases a half-built entry
    if (!strcmp(type, "Split")) {
        bool is_re;
        const char *pat = pattern_of(o, &is_re);
        json_t *b = json_object_get(o, "behavior");
        const char *bs = json_is_string(b) ? json_string_value(b) : "";
        if (!pat) return qft_err_setf(err, "%s: pre_tokenizer Split has no pattern", where);
        x->kind = PRE_SPLIT;
        x->invert = flag(o, "invert", false);
        if (!strcmp(bs, "Removed")) x->behavior = SPLIT_REMOVED;
        else if (!strcmp(bs, "Isolated")) x->behavior = SPLIT_ISOLATED;
        else if (!strcmp(bs, "MergedWithPrevious")) x->behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(bs, "MergedWithNext")) x->behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(bs, "Contiguous")) x->behavior = SPLIT_CONTIGUOUS;
        else
            return qft_err_setf(err, "%s: pre_tokenizer Split behavior \"%s\" is not known",
                                where, bs);
        char w[1200];
        snprintf(w, sizeof w, "%s: pre_tokenizer Split", where);
        if (tok_regex_compile(&x->re, pat, !is_re, w, err)) return -1;
    } else if (!strcmp(type, "ByteLevel")) {
        x->kind = PRE_BYTELEVEL;
        x->add_prefix_space = flag(o, "add_prefix_space", true);
        x->use_regex = flag(o, "use_regex", true);
        char w[1200];
        snprintf(w, sizeof w, "%s: pre_tokenizer ByteLevel", where);
        if (x->use_regex && tok_regex_compile(&x->re, GPT2_PATTERN, 0, w, err)) return -1;
    } else if (!strcmp(type, "Metaspace")) {
        x->kind = PRE_METASPACE;
        if (replacement_of(o, x->replacement) || scheme_of(o, &x->prepend))
            return qft_err_setf(err, "%s: pre_tokenizer Metaspace: bad replacement or "
                                "prepend_scheme", where);
        x->split = flag(o, "split", true);
    } else {
        return qft_err_setf(err, "%s: pre_tokenizer type \"%s\" is not supported (supported: "
                            "Sequence, Split, ByteLevel, Metaspace)", where, type);
    }
    return 0;
}

int tok_load_pre_tokenizer(qft_tokenizer *t, void *json, qft_err *err) {
    json_t *o = json;
    if (!o || json_is_null(o)) return 0;
    return add_pre(t, o, err);
}

/* ---- post-processor ------------------------------------------------------------------ */
static int add_template_ids(qft_tokenizer *t, json_t *specials, const char *name, bool before,
                            qft_err *err) {
    json_t *st = json_object_get(specials, name);
    json_t *ids = json_object_get(st, "ids");
    if (!json_is_array(ids))
        return qft_err_setf(err, "%s: post_processor TemplateProcessing names special token "
                            "\"%s\" but special_tokens does not define its ids", t->path, name);
    for (size_t i = 0; i < json_array_size(ids); i++) {
        json_t *v = json_array_get(ids, i);
        int *n = before ? &t->n_prefix : &t->n_suffix;
        int32_t *arr = before ? t->prefix : t->suffix;
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= t->n_ids)
            return qft_err_setf(err, "%s: post_processor special token \"%s\" has a bad id",
                                t->path, name);
        if (*n >= 8)
            return qft_err_setf(err, "%s: post_processor adds more than 8 tokens on one side",
                                t->path);
        arr[(*n)++] = (int32_t)json_integer_value(v);
    }
    return 0;
}

static int add_post(qft_tokenizer *t, json_t *o, qft_err *err) {
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(o, "processors");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (add_post(t, json_array_get(list, i), err)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; // it only adjusts offsets, never ids
    if (strcmp(type, "TemplateProcessing") != 0)
        return qft_err_setf(err, "%s: post_processor type \"%s\" is not supported (supported: "
                            "TemplateProcessing, ByteLevel, Sequence)", t->path, type);
    json_t *single = json_object_get(o, "single");
    json_t *specials = json_object_get(o, "special_tokens");
    if (!json_is_array(single))
        return qft_err_setf(err, "%s: post_processor TemplateProcessing has no \"single\"",
                            t->path);
    t->n_prefix = t->n_suffix = 0;
    bool seen_a = false;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *piece = json_array_get(single, i);
        json_t *sp = json_object_get(piece, "SpecialToken");
        json_t *seq = json_object_get(piece, "Sequence");
        if (seq) {
            if (seen_a)
                return qft_err_setf(err, "%s: post_processor template uses the sequence twice",
                                    t->path);
            seen_a = true;
        } else if (json_is_string(json_object_get(sp, "id"))) {
            if (add_template_ids(t, specials, json_string_value(json_object_get(sp, "id")),
                                 !seen_a, err))
                return -1;
        } else {
            return qft_err_setf(err, "%s: post_processor template piece %zu is neither "
                                "SpecialToken nor Sequence", t->path, i);
        }
    }
    return 0;
}

int tok_load_post_processor(qft_tokenizer *t, void *json, qft_err *err) {
    json_t *o = json;
    if (!o || json_is_null(o)) return 0;
    return add_post(t, o, err);
}

/* ---- decoder ------------------------------------------------------------------------- */
static int add_dec(qft_tokenizer *t, json_t *o, qft_err *err) {
    const char *where = t->path;
    const char *type = type_of(o);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(o, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (add_dec(t, json_array_get(list, i), err)) return -1;
        return 0;
    }
    tok_dec *d = realloc(t->decs, (t->n_decs + 1) * sizeof *d); // (n_decs + 1,)
    if (!d) return qft_err_setf(err, "%s: out of memory", where);
    t->decs = d;
    tok_dec *x = &t->decs[t->n_decs];
    memset(x, 0, sizeof *x);
    t->n_decs++; // counted at once so that free releases a half-built entry
    if (!strcmp(type, "ByteLevel")) {
        x->kind = DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        x->kind = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        x->kind = DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        bool is_re;
        const char *pat = pattern_of(o, &is_re);
        json_t *c = json_object_get(o, "content");
        if (!pat || is_re || !json_is_string(c))
            return qft_err_setf(err, "%s: decoder Replace needs a String pattern and a content "
                                "(Regex patterns are not supported)", where);
        x->kind = DEC_REPLACE;
        if (!(x->a = strdup(pat)) || !(x->b = strdup(json_string_value(c))))
            return qft_err_setf(err, "out of memory");
    } else if (!strcmp(type, "Strip")) {
        json_t *c = json_object_get(o, "content");
        json_t *s = json_object_get(o, "start"), *e = json_object_get(o, "stop");
        if (!json_is_string(c) || !json_is_integer(s) || !json_is_integer(e))
            return qft_err_setf(err, "%s: decoder Strip needs content, start and stop", where);
        x->kind = DEC_STRIP;
        x->start = (int)json_integer_value(s);
        x->stop = (int)json_integer_value(e);
        if (!(x->a = strdup(json_string_value(c)))) return qft_err_setf(err, "out of memory");
    } else if (!strcmp(type, "Metaspace")) {
        x->kind = DEC_METASPACE;
        if (replacement_of(o, x->replacement) || scheme_of(o, &x->prepend))
            return qft_err_setf(err, "%s: decoder Metaspace: bad replacement or prepend_scheme",
                                where);
    } else {
        return qft_err_setf(err, "%s: decoder type \"%s\" is not supported (supported: "
                            "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)",
                            where, type);
    }
    return 0;
}

int tok_load_decoder(qft_tokenizer *t, void *json, qft_err *err) {
    json_t *o = json;
    if (!o || json_is_null(o)) return 0;
    t->has_decoder = true;
    return add_dec(t, o, err);
}

void tok_components_free(qft_tokenizer *t) {
    for (size_t i = 0; i < t->n_norms; i++) {
        free(t->norms[i].a);
        free(t->norms[i].b);
        tok_regex_free(&t->norms[i].re);
    }
    for (size_t i = 0; i < t->n_pres; i++) tok_regex_free(&t->pres[i].re);
    for (size_t i = 0; i < t->n_decs; i++) {
        free(t->decs[i].a);
        free(t->decs[i].b);
    }
    free(t->norms);
    free(t->pres);
    free(t->decs);
    t->norms = NULL;
    t->pres = NULL;
    t->decs = NULL;
    t->n_norms = t->n_pres = t->n_decs = 0;
}
