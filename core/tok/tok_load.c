/* Loading a Hugging Face tokenizer directory: tokenizer.json (the BPE model, added tokens,
 * and the pipeline components, the latter parsed in tok_components.c) and, when present,
 * tokenizer_config.json (BOS/EOS/PAD and whether add_special adds BOS and EOS). */
#include "tok_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t tok_arena_add(qft_tokenizer *t, const char *s, size_t n) {
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
        while (cap < t->arena_len + n + 1) cap *= 2;
        if (cap > UINT32_MAX) return UINT32_MAX;
        char *a = realloc(t->arena, cap);
        if (!a) return UINT32_MAX;
        t->arena = a;
        t->arena_cap = cap;
    }
    uint32_t off = (uint32_t)t->arena_len;
    memcpy(t->arena + off, s, n);
    t->arena[off + n] = 0;
    t->arena_len += n + 1;
    return off;
}

/* Vocab keys are NUL-terminated in jansson; no real vocabulary holds a NUL inside a token
 * (byte-level and byte-fallback vocabularies spell byte 0 differently). */
static size_t key_len(const char *key) { return strlen(key); }

static const char *json_str(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool json_flag(json_t *o, const char *key, bool dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int set_id_token(qft_tokenizer *t, int32_t id, uint32_t off, uint32_t len) {
    t->id_tok[id].off = off;
    t->id_tok[id].len = len;
    return 0;
}

/* ---- the BPE model ------------------------------------------------------------------- */
static int load_model(qft_tokenizer *t, json_t *model, int32_t max_added, qft_err *err) {
    const char *path = t->path;
    if (!json_is_object(model)) return qft_err_setf(err, "%s: \"model\" is missing", path);
    const char *type = json_str(model, "type");
    if (!type || strcmp(type, "BPE") != 0)
        return qft_err_setf(err, "%s: model type \"%s\" is not supported (only BPE)", path,
                            type ? type : "(none)");
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) != 0.0)
        return qft_err_setf(err, "%s: model.dropout = %g is not supported (encoding would not "
                            "be deterministic)", path, json_number_value(dropout));
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return qft_err_setf(err, "%s: model.vocab is not an object", path);
    if (merges && !json_is_array(merges) && !json_is_null(merges))
        return qft_err_setf(err, "%s: model.merges is not an array", path);

    t->byte_fallback = json_flag(model, "byte_fallback", false);
    t->ignore_merges = json_flag(model, "ignore_merges", false);
    t->fuse_unk = json_flag(model, "fuse_unk", false);
    const char *pre = json_str(model, "continuing_subword_prefix");
    const char *suf = json_str(model, "end_of_word_suffix");
    if (pre && *pre && !(t->cont_prefix = strdup(pre))) goto oom;
    if (suf && *suf && !(t->eow_suffix = strdup(suf))) goto oom;

    // Size the id table: the largest id of the vocab or of an added token.
    int32_t max_id = max_added;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) > INT32_MAX - 1)
            return qft_err_setf(err, "%s: model.vocab[\"%s\"] is not a valid id", path, key);
        if (json_integer_value(val) > max_id) max_id = (int32_t)json_integer_value(val);
    }
    t->n_ids = max_id + 1;
    t->id_tok = malloc((size_t)t->n_ids * sizeof *t->id_tok); // (n_ids,)
    t->id_flags = calloc((size_t)t->n_ids, 1);                 // (n_ids,)
    if (!t->id_tok || !t->id_flags) goto oom;
    for (int32_t i = 0; i < t->n_ids; i++) t->id_tok[i].len = UINT32_MAX;
    if (tok_strmap_init(&t->vocab, json_object_size(vocab))) goto oom;
    json_object_foreach(vocab, key, val) {
        size_t kl = key_len(key);
        uint32_t off = tok_arena_add(t, key, kl);
        if (off == UINT32_MAX) goto oom;
        int32_t id = (int32_t)json_integer_value(val);
        if (tok_strmap_put(&t->vocab, t->arena, off, (uint32_t)kl, id)) goto oom;
        set_id_token(t, id, off, (uint32_t)kl);
    }

    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tok_strmap_get(&t->vocab, t->arena, name, 6);
    }
    t->unk_id = -1;
    const char *unk = json_str(model, "unk_token");
    if (unk) {
        t->unk_id = tok_strmap_get(&t->vocab, t->arena, unk, strlen(unk));
        if (t->unk_id < 0)
            return qft_err_setf(err, "%s: model.unk_token \"%s\" is not in the vocab", path, unk);
    }

    size_t n_merges = json_is_array(merges) ? json_array_size(merges) : 0;
    if (tok_pairmap_init(&t->merges, n_merges)) goto oom;
    tok_buf joined = {0};
    size_t pl = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    for (size_t r = 0; r < n_merges; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            // "a b": exactly one space, as tokenizers requires.
            const char *s = json_string_value(m);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                tok_buf_free(&joined);
                return qft_err_setf(err, "%s: model.merges[%zu] \"%s\" is not two tokens "
                                    "separated by one space", path, r, s);
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            tok_buf_free(&joined);
            return qft_err_setf(err, "%s: model.merges[%zu] is neither \"a b\" nor [a, b]", path,
                                r);
        }
        int32_t ia = tok_strmap_get(&t->vocab, t->arena, a, al);
        int32_t ib = tok_strmap_get(&t->vocab, t->arena, b, bl);
        // The merged token drops the right side's first prefix-length bytes, as tokenizers
        // does (the right side of a merge always carries the continuing-subword prefix).
        size_t skip = pl <= bl ? pl : 0;
        joined.len = 0;
        if (tok_buf_put(&joined, a, al) || tok_buf_put(&joined, b + skip, bl - skip)) {
            tok_buf_free(&joined);
            goto oom;
        }
        int32_t inew = tok_strmap_get(&t->vocab, t->arena, joined.p, joined.len);
        if (ia < 0 || ib < 0 || inew < 0) {
            qft_err_setf(err, "%s: model.merges[%zu] (\"%.*s\", \"%.*s\"): token \"%s\" is not in "
                         "the vocab", path, r, (int)al, a, (int)bl, b,
                         ia < 0 ? "(left)" : ib < 0 ? "(right)" : joined.p);
            tok_buf_free(&joined);
            return -1;
        }
        if (tok_pairmap_put(&t->merges, ia, ib, (uint32_t)r, inew)) {
            tok_buf_free(&joined);
            goto oom;
        }
    }
    tok_buf_free(&joined);
    return 0;
oom:
    return qft_err_setf(err, "%s: out of memory loading the model", path);
}

/* ---- added tokens -------------------------------------------------------------------- */
static int load_added(qft_tokenizer *t, json_t *arr, qft_err *err) {
    const char *path = t->path;
    size_t n = json_array_size(arr);
    if (!n) return 0;
    t->added = calloc(n, sizeof *t->added); // (n,)
    if (!t->added || tok_strmap_init(&t->added_map, n))
        return qft_err_setf(err, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(arr, i);
        json_t *c = json_object_get(a, "content");
        json_t *id = json_object_get(a, "id");
        if (!json_is_string(c) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= t->n_ids)
            return qft_err_setf(err, "%s: added_tokens[%zu] needs a string \"content\" and an "
                                "integer \"id\"", path, i);
        size_t len = json_string_length(c);
        if (len == 0) continue;
        tok_added *x = &t->added[t->n_added++];
        x->off = tok_arena_add(t, json_string_value(c), len);
        if (x->off == UINT32_MAX) return qft_err_setf(err, "%s: out of memory", path);
        x->len = (uint32_t)len;
        x->id = (int32_t)json_integer_value(id);
        x->special = json_flag(a, "special", false);
        x->normalized = json_flag(a, "normalized", !x->special);
        x->lstrip = json_flag(a, "lstrip", false);
        x->rstrip = json_flag(a, "rstrip", false);
        x->single_word = json_flag(a, "single_word", false);
        if (tok_strmap_put(&t->added_map, t->arena, x->off, x->len, x->id))
            return qft_err_setf(err, "%s: out of memory", path);
        // Decoding reads an added token's content before the model's string for its id.
        set_id_token(t, x->id, x->off, x->len);
        t->id_flags[x->id] |= TOK_ID_ADDED | (x->special ? TOK_ID_SPECIAL : 0);
    }
    return 0;
}

/* Matchers: special tokens first, then the others, as tokenizers orders its patterns. The
 * normalized ones are matched on normalized text, so their patterns are normalized too;
 * with the normalizers supported here that only matters for Prepend/Replace. */
static int build_tries(qft_tokenizer *t, qft_err *err) {
    bool single = false;
    for (size_t i = 0; i < t->n_added; i++) single = single || t->added[i].single_word;
    // Rust regex's Unicode \w, which tokenizers uses to decide what a word is.
    if (single && tok_regex_compile(&t->word_re,
                                    "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]", 0,
                                    t->path, err))
        return -1;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < t->n_added; i++) {
            tok_added *x = &t->added[i];
            if (x->special != (pass == 0)) continue;
            const char *s = t->arena + x->off;
            if (!x->normalized) {
                if (tok_trie_insert(&t->trie_raw, s, x->len, (int32_t)i)) goto oom;
                continue;
            }
            tok_buf a = {0};
            tok_matcher m = {0};
            int rc = tok_normalize(t, &m, s, x->len, &a, err);
            tok_matcher_free(&m);
            if (!rc && tok_trie_insert(&t->trie_norm, a.p, a.len, (int32_t)i)) rc = -2;
            // tokenizers decodes such a token to its normalized content (id_to_token gives
            // that too), while token_to_id still takes the content as written.
            if (!rc) {
                uint32_t off = tok_arena_add(t, a.p, a.len);
                if (off == UINT32_MAX) rc = -2;
                else set_id_token(t, x->id, off, (uint32_t)a.len);
            }
            tok_buf_free(&a);
            if (rc == -2) goto oom;
            if (rc) return -1;
        }
    }
    return 0;
oom:
    return qft_err_setf(err, "%s: out of memory building the added-token matcher", t->path);
}

/* ---- tokenizer_config.json ----------------------------------------------------------- */
/* A token named in the config is either a string or an AddedToken object {"content": ...}. */
static int config_token(qft_tokenizer *t, json_t *cfg, const char *key, const char *cpath,
                        int32_t *out, qft_err *err) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return 0;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v))
        return qft_err_setf(err, "%s: \"%s\" is neither a string nor {\"content\": ...}", cpath,
                            key);
    int32_t id = qft_tokenizer_token_to_id(t, json_string_value(v));
    if (id < 0)
        return qft_err_setf(err, "%s: %s \"%s\" is not a token of %s", cpath, key,
                            json_string_value(v), t->path);
    *out = id;
    return 0;
}

static int load_config(qft_tokenizer *t, const char *dir, qft_err *err) {
    char cpath[1200];
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(cpath, "rb");
    if (!f) return 0; // optional
    fclose(f);
    json_error_t je;
    // model_max_length is often 1e30 written as an integer, beyond what jansson holds.
    json_t *cfg = json_load_file(cpath, JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg)
        return qft_err_setf(err, "%s:%d:%d: %s", cpath, je.line, je.column, je.text);
    int rc = -1;
    if (!json_is_object(cfg)) {
        qft_err_setf(err, "%s: not a JSON object", cpath);
        goto done;
    }
    if (config_token(t, cfg, "bos_token", cpath, &t->bos, err) ||
        config_token(t, cfg, "eos_token", cpath, &t->eos, err) ||
        config_token(t, cfg, "pad_token", cpath, &t->pad, err))
        goto done;
    // add_bos_token / add_eos_token, when given, replace the post-processor's template, as
    // transformers does when it rebuilds the post-processor from them.
    json_t *ab = json_object_get(cfg, "add_bos_token");
    json_t *ae = json_object_get(cfg, "add_eos_token");
    if (json_is_boolean(ab) || json_is_boolean(ae)) {
        bool add_bos = json_is_boolean(ab) ? json_is_true(ab) : false;
        bool add_eos = json_is_boolean(ae) ? json_is_true(ae) : false;
        if ((add_bos && t->bos < 0) || (add_eos && t->eos < 0)) {
            qft_err_setf(err, "%s: add_%s_token is true but no %s_token is defined", cpath,
                         add_bos && t->bos < 0 ? "bos" : "eos", add_bos && t->bos < 0 ? "bos" : "eos");
            goto done;
        }
        t->n_prefix = t->n_suffix = 0;
        if (add_bos) t->prefix[t->n_prefix++] = t->bos;
        if (add_eos) t->suffix[t->n_suffix++] = t->eos;
    }
    rc = 0;
done:
    json_decref(cfg);
    return rc;
}

int qft_tokenizer_load(const char *dir, qft_tokenizer **out, qft_err *err) {
    *out = NULL;
    qft_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return qft_err_setf(err, "%s: out of memory", dir);
    t->kind = TOK_KIND_BPE;
    t->bos = t->eos = t->pad = t->unk_id = -1;
    tok_bytelevel_init(&t->bl);
    snprintf(t->path, sizeof t->path, "%s/tokenizer.json", dir);
    json_error_t je;
    json_t *root = json_load_file(t->path, JSON_ALLOW_NUL, &je);
    if (!root) {
        qft_err_setf(err, "%s:%d:%d: %s", t->path, je.line, je.column, je.text);
        qft_tokenizer_free(t);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(root)) {
        qft_err_setf(err, "%s: not a JSON object", t->path);
        goto done;
    }
    json_t *trunc = json_object_get(root, "truncation"), *pad = json_object_get(root, "padding");
    if ((trunc && !json_is_null(trunc)) || (pad && !json_is_null(pad))) {
        qft_err_setf(err, "%s: %s is set; qft truncates and pads in its data pipeline, so "
                     "tokenizer.json must leave it null", t->path, trunc && !json_is_null(trunc)
                     ? "truncation" : "padding");
        goto done;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added)) {
        qft_err_setf(err, "%s: added_tokens is not an array", t->path);
        goto done;
    }
    int32_t max_added = -1;
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        if (json_is_integer(id) && json_integer_value(id) > max_added &&
            json_integer_value(id) < INT32_MAX)
            max_added = (int32_t)json_integer_value(id);
    }
    if (load_model(t, json_object_get(root, "model"), max_added, err) ||
        load_added(t, added, err) ||
        tok_load_normalizer(t, json_object_get(root, "normalizer"), err) ||
        tok_load_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err) ||
        tok_load_post_processor(t, json_object_get(root, "post_processor"), err) ||
        tok_load_decoder(t, json_object_get(root, "decoder"), err) || build_tries(t, err) ||
        load_config(t, dir, err))
        goto done;
    rc = 0;
done:
    json_decref(root);
    if (rc) qft_tokenizer_free(t);
    else *out = t;
    return rc;
}
