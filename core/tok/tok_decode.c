/* Decoding, as tokenizers does it: each id becomes its token string (an added token's
 * content first, else the model's string), special tokens are dropped when asked, and the
 * decoder chain rewrites the list of strings, which is then concatenated. Without a decoder
 * the strings are joined with single spaces. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct dpiece {
    size_t off, len; /* into the current buffer */
} dpiece;

typedef struct dlist {
    tok_buf buf;
    dpiece *v;
    size_t len, cap;
} dlist;

static int dl_push(dlist *l, const char *s, size_t n) {
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        dpiece *v = realloc(l->v, cap * sizeof *v); // (cap,)
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    size_t off = l->buf.len;
    if (tok_buf_put(&l->buf, s, n)) return -1;
    l->v[l->len++] = (dpiece){off, n};
    return 0;
}

/* Appends to the last piece (which must be the last thing written to buf). */
static int dl_extend(dlist *l, const char *s, size_t n) {
    if (tok_buf_put(&l->buf, s, n)) return -1;
    l->v[l->len - 1].len += n;
    return 0;
}

static void dl_reset(dlist *l) {
    l->len = 0;
    l->buf.len = 0;
}

static void dl_free(dlist *l) {
    tok_buf_free(&l->buf);
    free(l->v);
    memset(l, 0, sizeof *l);
}

#define P(l, i) ((l)->buf.p + (l)->v[i].off)

static int replace_all(dlist *dst, const char *s, size_t n, const char *pat, const char *rep) {
    size_t pl = strlen(pat), rl = strlen(rep), i0 = 0;
    if (dl_push(dst, "", 0)) return -1;
    for (size_t j = 0; pl && j + pl <= n;) {
        if (memcmp(s + j, pat, pl) == 0) {
            if (dl_extend(dst, s + i0, j - i0) || dl_extend(dst, rep, rl)) return -1;
            j += pl;
            i0 = j;
        } else {
            j++;
        }
    }
    return dl_extend(dst, s + i0, n - i0);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xXX>" -> the byte, else -1. Two characters parsed as Rust's u8::from_str_radix would,
 * which also accepts a leading '+'. */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    if (s[3] == '+') return hexval(s[4]);
    int h = hexval(s[3]), l = hexval(s[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
}

static int flush_bytes(dlist *dst, tok_buf *bytes) {
    if (!bytes->len) return 0;
    int rc = 0;
    size_t k = 0;
    const unsigned char *u = (const unsigned char *)bytes->p;
    bool valid = true;
    while (k < bytes->len && valid) {
        size_t v = tok_utf8_valid_len(u + k, bytes->len - k);
        valid = v > 0;
        k += v;
    }
    if (valid) {
        rc = dl_push(dst, bytes->p, bytes->len);
    } else {
        // Invalid bytes give one U+FFFD each, not one per maximal subpart.
        for (size_t i = 0; i < bytes->len && !rc; i++) rc = dl_push(dst, "\xEF\xBF\xBD", 3);
    }
    bytes->len = 0;
    return rc;
}

static int apply(const qft_tokenizer *t, const tok_dec *d, dlist *src, dlist *dst) {
    dl_reset(dst);
    switch (d->kind) {
    case DEC_BYTELEVEL: {
        tok_buf raw = {0}, clean = {0};
        int rc = 0;
        for (size_t i = 0; i < src->len && !rc; i++) {
            const char *s = P(src, i);
            size_t n = src->v[i].len, start = raw.len;
            for (size_t j = 0; j < n;) {
                size_t k;
                int b = tok_bytelevel_decode_char(&t->bl, s + j, n - j, &k);
                if (b < 0) {
                    // A character outside the alphabet: the whole token goes through as is.
                    raw.len = start;
                    rc = tok_buf_put(&raw, s, n);
                    break;
                }
                unsigned char byte = (unsigned char)b;
                if ((rc = tok_buf_put(&raw, &byte, 1))) break;
                j += k;
            }
        }
        if (!rc) {
            int san = tok_utf8_sanitize(raw.p ? raw.p : "", raw.len, &clean);
            rc = san < 0 ? -1 : san ? dl_push(dst, clean.p, clean.len)
                                    : dl_push(dst, raw.p ? raw.p : "", raw.len);
        }
        tok_buf_free(&raw);
        tok_buf_free(&clean);
        return rc;
    }
    case DEC_REPLACE:
        for (size_t i = 0; i < src->len; i++)
            if (replace_all(dst, P(src, i), src->v[i].len, d->a, d->b)) return -1;
        return 0;
    case DEC_BYTEFALLBACK: {
        tok_buf bytes = {0};
        int rc = 0;
        for (size_t i = 0; i < src->len && !rc; i++) {
            int b = byte_token(P(src, i), src->v[i].len);
            if (b >= 0) {
                unsigned char byte = (unsigned char)b;
                rc = tok_buf_put(&bytes, &byte, 1);
            } else {
                rc = flush_bytes(dst, &bytes) || dl_push(dst, P(src, i), src->v[i].len);
            }
        }
        if (!rc) rc = flush_bytes(dst, &bytes);
        tok_buf_free(&bytes);
        return rc;
    }
    case DEC_FUSE:
        if (dl_push(dst, "", 0)) return -1;
        for (size_t i = 0; i < src->len; i++)
            if (dl_extend(dst, P(src, i), src->v[i].len)) return -1;
        return 0;
    case DEC_STRIP: {
        size_t cl = strlen(d->a);
        for (size_t i = 0; i < src->len; i++) {
            const char *s = P(src, i);
            size_t b = 0, e = src->v[i].len;
            for (int k = 0; k < d->start && b + cl <= e && memcmp(s + b, d->a, cl) == 0; k++)
                b += cl;
            for (int k = 0; k < d->stop && e >= b + cl && memcmp(s + e - cl, d->a, cl) == 0; k++)
                e -= cl;
            if (dl_push(dst, s + b, e - b)) return -1;
        }
        return 0;
    }
    case DEC_METASPACE: {
        // Every replacement char of the first token is dropped (not only a leading one),
        // unless the scheme is "never": that is what tokenizers' Metaspace decoder does.
        size_t rl = strlen(d->replacement);
        for (size_t i = 0; i < src->len; i++) {
            const char *s = P(src, i);
            size_t n = src->v[i].len, i0 = 0;
            bool drop = i == 0 && d->prepend != PREPEND_NEVER;
            if (dl_push(dst, "", 0)) return -1;
            for (size_t j = 0; j + rl <= n;) {
                if (memcmp(s + j, d->replacement, rl) == 0) {
                    if (dl_extend(dst, s + i0, j - i0) || (!drop && dl_extend(dst, " ", 1)))
                        return -1;
                    j += rl;
                    i0 = j;
                } else {
                    j++;
                }
            }
            if (dl_extend(dst, s + i0, n - i0)) return -1;
        }
        return 0;
    }
    }
    return -1;
}

static int decode_bytes(const qft_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        char **text, size_t *len_out, qft_err *err) {
    tok_buf out = {0};
    if (tok_buf_put(&out, "", 0)) return qft_err_setf(err, "decode: out of memory");
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids) {
            tok_buf_free(&out);
            return qft_err_setf(err, "decode: id %d at position %zu is outside the vocabulary "
                                "(0..%d)", id, i, t->n_ids - 1);
        }
        if (id >= 256 && skip_special) continue;
        const char *s = t->arena + t->id_tok[id].off;
        size_t len = t->id_tok[id].len;
        if (tok_buf_put(&out, s, len)) {
            tok_buf_free(&out);
            return qft_err_setf(err, "decode: out of memory");
        }
    }
    *text = out.p;
    *len_out = out.len;
    return 0;
}

int qft_tokenizer_decode(const qft_tokenizer *t, const int32_t *ids, size_t n_ids,
                         int skip_special, char **text, qft_err *err) {
    size_t len;
    return qft_tokenizer_decode_n(t, ids, n_ids, skip_special, text, &len, err);
}

int qft_tokenizer_decode_n(const qft_tokenizer *t, const int32_t *ids, size_t n_ids,
                           int skip_special, char **text, size_t *len, qft_err *err) {
    *text = NULL;
    *len = 0;
    if (!t) return qft_err_setf(err, "decode: no tokenizer");
    if (n_ids && !ids) return qft_err_setf(err, "decode: NULL ids");
    if (t->kind == TOK_KIND_BYTE) return decode_bytes(t, ids, n_ids, skip_special, text, len, err);
    dlist l[2];
    memset(l, 0, sizeof l);
    int cur = 0, rc = -1;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || t->id_tok[id].len == UINT32_MAX) {
            qft_err_setf(err, "decode: id %d at position %zu is not a token of %s", id, i,
                         t->path);
            goto done;
        }
        if (skip_special && (t->id_flags[id] & TOK_ID_SPECIAL)) continue;
        if (dl_push(&l[cur], t->arena + t->id_tok[id].off, t->id_tok[id].len)) goto oom;
    }
    if (t->has_decoder) {
        for (size_t k = 0; k < t->n_decs; k++) {
            if (apply(t, &t->decs[k], &l[cur], &l[cur ^ 1])) goto oom;
            cur ^= 1;
        }
    }
    tok_buf out = {0};
    if (tok_buf_put(&out, "", 0)) goto oom;
    for (size_t i = 0; i < l[cur].len; i++) {
        if ((!t->has_decoder && i > 0 && tok_buf_put(&out, " ", 1)) ||
            tok_buf_put(&out, P(&l[cur], i), l[cur].v[i].len)) {
            tok_buf_free(&out);
            goto oom;
        }
    }
    *text = out.p;
    *len = out.len;
    rc = 0;
    goto done;
oom:
    qft_err_setf(err, "decode: out of memory");
done:
    dl_free(&l[0]);
    dl_free(&l[1]);
    return rc;
}
