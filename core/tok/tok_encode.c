/* Encoding, in tokenizers' order: repair invalid UTF-8; split off added tokens matched on
 * the raw text; normalize each remaining segment; split off added tokens matched on the
 * normalized text; pre-tokenize into words; BPE each word; add the template's special
 * tokens. Pieces are byte ranges into one of three scratch buffers, so splitting costs no
 * copy and only transforming steps (normalizers, ByteLevel, Metaspace) write text. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct piece {
    const char *base;   /* the buffer the piece lives in */
    uint32_t off, len;
    bool at_origin;     /* starts at offset 0 of the original text (Metaspace "first") */
} piece;

typedef struct pieces {
    piece *v;
    size_t len, cap;
} pieces;

typedef struct range {
    size_t s, e;
    bool m;             /* a match of the pattern (after invert) */
} range;

typedef struct enc_ctx {
    const qft_tokenizer *t;
    tok_scratch *s;
    tok_ids *out;
    qft_err *err;
    pieces p[2];
    range *r;
    size_t nr, cap_r;
    tok_buf pre_buf[2]; /* text written by ByteLevel / Metaspace, alternating */
    tok_buf tmp;
} enc_ctx;

static int oom(enc_ctx *c) { return qft_err_setf(c->err, "encode: out of memory"); }

static int push_piece(enc_ctx *c, pieces *ps, piece p) {
    if (p.len == 0) return 0; // tokenizers drops empty splits
    if (ps->len == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        piece *v = realloc(ps->v, cap * sizeof *v); // (cap,)
        if (!v) return oom(c);
        ps->v = v;
        ps->cap = cap;
    }
    ps->v[ps->len++] = p;
    return 0;
}

static int push_range(enc_ctx *c, size_t s, size_t e, bool m) {
    if (c->nr == c->cap_r) {
        size_t cap = c->cap_r ? c->cap_r * 2 : 64;
        range *r = realloc(c->r, cap * sizeof *r); // (cap,)
        if (!r) return oom(c);
        c->r = r;
        c->cap_r = cap;
    }
    c->r[c->nr++] = (range){s, e, m};
    return 0;
}

/* Matches of `re` over s[0..n) as ranges covering all of it, like tokenizers' find_matches
 * for a regex: gaps are non-matches, an empty text is one empty non-match. */
static int regex_ranges(enc_ctx *c, const tok_regex *re, const char *s, size_t n, bool invert) {
    c->nr = 0;
    if (n == 0) return push_range(c, 0, 0, invert);
    size_t prev = 0, at = 0;
    while (at <= n) {
        size_t ms, me;
        int rc = tok_regex_next(re, &c->s->matcher, s, n, at, &ms, &me, c->err);
        if (rc < 0) return -1;
        if (rc == 0) break;
        if (prev != ms && push_range(c, prev, ms, invert)) return -1;
        if (push_range(c, ms, me, !invert)) return -1;
        prev = me;
        // An empty match moves on by one character so the scan always progresses.
        at = me > ms ? me : me + (me < n ? tok_utf8_char_len((unsigned char)s[me]) : 1);
    }
    if (prev != n && push_range(c, prev, n, invert)) return -1;
    return 0;
}

/* Applies a split behavior to the ranges of one piece and appends the kept parts. */
static int split_by_ranges(enc_ctx *c, const piece *src, tok_split_behavior b, pieces *dst) {
    range *r = c->r;
    size_t n = c->nr, k = 0; // k: ranges kept after merging, compacted in place
    switch (b) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) r[i].m = false;
        k = n;
        break;
    case SPLIT_REMOVED:
        k = n;
        break;
    case SPLIT_CONTIGUOUS: {
        bool prev_m = false;
        for (size_t i = 0; i < n; i++) {
            bool m = r[i].m; // read first: the write below may land on r[i]
            if (m == prev_m && k) r[k - 1].e = r[i].e;
            else r[k++] = (range){r[i].s, r[i].e, false};
            prev_m = m;
        }
        for (size_t i = 0; i < k; i++) r[i].m = false;
        break;
    }
    case SPLIT_MERGED_PREV: {
        bool prev_m = false;
        for (size_t i = 0; i < n; i++) {
            bool m = r[i].m;
            if (m && !prev_m && k) r[k - 1].e = r[i].e;
            else r[k++] = (range){r[i].s, r[i].e, false};
            prev_m = m;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: {
        // Walk from the end, merging each match into the part after it.
        bool prev_m = false;
        size_t w = n; // write position from the back
        for (size_t i = n; i-- > 0;) {
            bool m = r[i].m;
            if (m && !prev_m && w < n) r[w].s = r[i].s;
            else r[--w] = (range){r[i].s, r[i].e, false};
            prev_m = m;
        }
        memmove(r, r + w, (n - w) * sizeof *r);
        k = n - w;
        break;
    }
    }
    for (size_t i = 0; i < k; i++) {
        if (r[i].m) continue; // removed
        piece p = {src->base, src->off + (uint32_t)r[i].s, (uint32_t)(r[i].e - r[i].s),
                   src->at_origin && r[i].s == 0};
        if (push_piece(c, dst, p)) return -1;
    }
    return 0;
}

/* ByteLevel: optional leading space, optional GPT-2 split, then every byte becomes its
 * printable stand-in. */
static int pre_bytelevel(enc_ctx *c, const tok_pre *x, const pieces *in, pieces *out,
                         tok_buf *dst) {
    const tok_bytelevel *bl = &c->t->bl;
    dst->len = 0;
    // Reserve the worst case first so that piece bases stay valid while writing.
    size_t need = 0;
    for (size_t i = 0; i < in->len; i++) need += 2 * (size_t)in->v[i].len + 2;
    if (tok_buf_reserve(dst, need + 1)) return oom(c);
    pieces tmp = {0};
    for (size_t i = 0; i < in->len; i++) {
        piece p = in->v[i];
        const char *s = p.base + p.off;
        // Split the raw text (with the added space), then map each part.
        tok_buf *raw = &c->tmp;
        raw->len = 0;
        if ((x->add_prefix_space && s[0] != ' ' && tok_buf_put(raw, " ", 1)) ||
            tok_buf_put(raw, s, p.len)) {
            free(tmp.v);
            return oom(c);
        }
        tmp.len = 0;
        piece whole = {raw->p, 0, (uint32_t)raw->len, p.at_origin};
        if (x->use_regex) {
            if (regex_ranges(c, &x->re, raw->p, raw->len, false) ||
                split_by_ranges(c, &whole, SPLIT_ISOLATED, &tmp)) {
                free(tmp.v);
                return -1;
            }
        } else if (push_piece(c, &tmp, whole)) {
            free(tmp.v);
            return -1;
        }
        for (size_t j = 0; j < tmp.len; j++) {
            size_t o = dst->len;
            const unsigned char *u = (const unsigned char *)raw->p + tmp.v[j].off;
            for (uint32_t k = 0; k < tmp.v[j].len; k++) {
                memcpy(dst->p + dst->len, bl->enc[u[k]], bl->enc_len[u[k]]);
                dst->len += bl->enc_len[u[k]];
            }
            piece q = {dst->p, (uint32_t)o, (uint32_t)(dst->len - o), tmp.v[j].at_origin};
            if (push_piece(c, out, q)) {
                free(tmp.v);
                return -1;
            }
        }
    }
    free(tmp.v);
    return 0;
}

/* Metaspace: spaces become the replacement char, which is prepended as the scheme says,
 * then (split) each replacement char starts a new piece. */
static int pre_metaspace(enc_ctx *c, const tok_pre *x, const pieces *in, pieces *out,
                         tok_buf *dst) {
    size_t rl = strlen(x->replacement);
    dst->len = 0;
    size_t need = 0;
    for (size_t i = 0; i < in->len; i++) need += (size_t)in->v[i].len * rl + rl;
    if (tok_buf_reserve(dst, need + 1)) return oom(c);
    for (size_t i = 0; i < in->len; i++) {
        piece p = in->v[i];
        const char *s = p.base + p.off;
        size_t o = dst->len;
        bool starts = p.len >= rl && memcmp(s, x->replacement, rl) == 0;
        // A leading space becomes the replacement too, so check for it as well.
        starts = starts || s[0] == ' ';
        if (!starts && (x->prepend == PREPEND_ALWAYS ||
                        (x->prepend == PREPEND_FIRST && p.at_origin))) {
            memcpy(dst->p + dst->len, x->replacement, rl);
            dst->len += rl;
        }
        for (uint32_t k = 0; k < p.len; k++) {
            if (s[k] == ' ') {
                memcpy(dst->p + dst->len, x->replacement, rl);
                dst->len += rl;
            } else {
                dst->p[dst->len++] = s[k];
            }
        }
        piece q = {dst->p, (uint32_t)o, (uint32_t)(dst->len - o), p.at_origin};
        if (!x->split) {
            if (push_piece(c, out, q)) return -1;
            continue;
        }
        // Split before each replacement char (MergedWithNext).
        size_t start = 0, len = q.len;
        const char *t = dst->p + o;
        for (size_t k = 1; k + rl <= len; k++) {
            if (memcmp(t + k, x->replacement, rl) == 0) {
                piece r = {dst->p, (uint32_t)(o + start), (uint32_t)(k - start),
                           q.at_origin && start == 0};
                if (push_piece(c, out, r)) return -1;
                start = k;
            }
        }
        piece r = {dst->p, (uint32_t)(o + start), (uint32_t)(len - start),
                   q.at_origin && start == 0};
        if (push_piece(c, out, r)) return -1;
    }
    return 0;
}

/* Pre-tokenizes one normalized piece and runs BPE on every word. */
static int encode_words(enc_ctx *c, piece whole) {
    const qft_tokenizer *t = c->t;
    pieces *cur = &c->p[0], *nxt = &c->p[1];
    cur->len = 0;
    if (push_piece(c, cur, whole)) return -1;
    int which = 0; // which pre_buf the next transform writes
    for (size_t i = 0; i < t->n_pres; i++) {
        const tok_pre *x = &t->pres[i];
        nxt->len = 0;
        if (x->kind == PRE_SPLIT) {
            for (size_t j = 0; j < cur->len; j++) {
                piece p = cur->v[j];
                if (regex_ranges(c, &x->re, p.base + p.off, p.len, x->invert) ||
                    split_by_ranges(c, &p, x->behavior, nxt))
                    return -1;
            }
        } else {
            tok_buf *dst = &c->pre_buf[which];
            which ^= 1;
            int rc = x->kind == PRE_BYTELEVEL ? pre_bytelevel(c, x, cur, nxt, dst)
                                               : pre_metaspace(c, x, cur, nxt, dst);
            if (rc) return -1;
        }
        pieces *sw = cur;
        cur = nxt;
        nxt = sw;
    }
    for (size_t j = 0; j < cur->len; j++)
        if (tok_bpe_word(t, c->s, cur->v[j].base + cur->v[j].off, cur->v[j].len, c->out, c->err))
            return -1;
    return 0;
}

/* ---- added tokens -------------------------------------------------------------------- */
/* Unicode White_Space, which is what tokenizers' lstrip/rstrip (Rust regex \s) strip. */
static bool is_white(uint32_t cp) {
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

static uint32_t decode_cp(const unsigned char *s, size_t len) {
    if (len == 1) return s[0];
    if (len == 2) return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    if (len == 3) return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* The character that ends at s[end) (end > 0). */
static size_t char_before(const char *s, size_t end) {
    size_t b = end - 1;
    while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
    return b;
}

/* Word characters in the sense of Rust regex's Unicode \w, for single_word tokens. */
static bool is_word_at(const qft_tokenizer *t, tok_scratch *s, const char *str, size_t n,
                       size_t at) {
    if (!t->word_re.code) return false;
    size_t ms, me;
    size_t cl = tok_utf8_char_len((unsigned char)str[at]);
    qft_err e = {0};
    return tok_regex_next(&t->word_re, &s->word_matcher, str, at + cl <= n ? at + cl : n, at, &ms,
                          &me, &e) == 1 && ms == at;
}

/* Leftmost-longest match of the trie at or after `from`: 1 with [*ms, *me) and the token
 * index, or 0. */
static int trie_find(const tok_trie *tr, const char *s, size_t n, size_t from, size_t *ms,
                     size_t *me, int32_t *idx) {
    if (!tr->n_nodes) return 0;
    for (size_t i = from; i < n; i++) {
        if (!tr->first[(unsigned char)s[i]]) continue;
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t ch = tr->nodes[node].child;
            while (ch >= 0 && tr->nodes[ch].byte != (unsigned char)s[j]) ch = tr->nodes[ch].sibling;
            if (ch < 0) break;
            node = ch;
            if (tr->nodes[node].added >= 0) {
                best = tr->nodes[node].added;
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            *idx = best;
            return 1;
        }
    }
    return 0;
}

typedef int (*gap_fn)(enc_ctx *c, const char *s, size_t off, size_t len, bool at_origin);

/* Splits s on the trie's tokens as tokenizers' find_matches does (single_word, lstrip,
 * rstrip), emitting token ids and handing every gap to `gap`. */
static int split_added(enc_ctx *c, const tok_trie *tr, const char *s, size_t n, bool at_origin,
                       gap_fn gap) {
    const qft_tokenizer *t = c->t;
    size_t start_offset = 0, from = 0, ms, me;
    int32_t idx;
    while (trie_find(tr, s, n, from, &ms, &me, &idx)) {
        from = me;
        const tok_added *a = &t->added[idx];
        size_t start = ms, stop = me;
        if (a->single_word) {
            bool start_space = start == 0 || !is_word_at(t, c->s, s, n, char_before(s, start));
            bool stop_space = stop == n || !is_word_at(t, c->s, s, n, stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t b = char_before(s, ns);
                if (!is_white(decode_cp((const unsigned char *)s + b, ns - b))) break;
                ns = b;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                size_t cl = tok_utf8_char_len((unsigned char)s[stop]);
                if (!is_white(decode_cp((const unsigned char *)s + stop, cl))) break;
                stop += cl;
            }
        }
        if (start_offset < start && gap(c, s, start_offset, start - start_offset,
                                        at_origin && start_offset == 0))
            return -1;
        if (tok_ids_push(c->out, a->id)) return oom(c);
        start_offset = stop;
    }
    if (start_offset < n && gap(c, s, start_offset, n - start_offset, at_origin && start_offset == 0))
        return -1;
    return 0;
}

static int gap_normalized(enc_ctx *c, const char *s, size_t off, size_t len, bool at_origin) {
    piece p = {s, (uint32_t)off, (uint32_t)len, at_origin};
    return encode_words(c, p);
}

/* Normalizes one raw segment into s->c (or leaves it in place when there is nothing to do). */
static int normalize(enc_ctx *c, const char *seg, size_t n, const char **out, size_t *out_len) {
    *out = seg;
    *out_len = n;
    if (!c->t->n_norms) return 0;
    if (tok_normalize(c->t, &c->s->matcher, seg, n, &c->s->c, c->err)) return -1;
    *out = c->s->c.p;
    *out_len = c->s->c.len;
    return 0;
}

static int gap_raw(enc_ctx *c, const char *s, size_t off, size_t len, bool at_origin) {
    const char *ns;
    size_t nn;
    if (normalize(c, s + off, len, &ns, &nn)) return -1;
    if (c->t->trie_norm.n_nodes)
        return split_added(c, &c->t->trie_norm, ns, nn, at_origin, gap_normalized);
    return gap_normalized(c, ns, 0, nn, at_origin);
}

void tok_scratch_free(tok_scratch *s) {
    free(s->sym);
    free(s->heap);
    tok_matcher_free(&s->matcher);
    tok_matcher_free(&s->word_matcher);
    tok_buf_free(&s->c);
    memset(s, 0, sizeof *s);
}

static int finish(int32_t **ids, size_t *n_ids, tok_ids *out, qft_err *err) {
    if (!out->v && !(out->v = malloc(sizeof *out->v)))
        return qft_err_setf(err, "encode: out of memory");
    *ids = out->v;
    *n_ids = out->len;
    return 0;
}

static int encode_bytes(const qft_tokenizer *t, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n_ids, qft_err *err) {
    size_t n = len + (add_special ? 1 : 0);
    int32_t *v = malloc((n ? n : 1) * sizeof *v); // (n,)
    if (!v) return qft_err_setf(err, "encode: out of memory for %zu ids", n);
    size_t k = 0;
    if (add_special) v[k++] = t->bos;
    for (size_t i = 0; i < len; i++) v[k++] = (unsigned char)text[i];
    *ids = v;
    *n_ids = n;
    return 0;
}

int qft_tokenizer_encode(const qft_tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n_ids, qft_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!t) return qft_err_setf(err, "encode: no tokenizer");
    if (!text && len) return qft_err_setf(err, "encode: NULL text of length %zu", len);
    if (t->kind == TOK_KIND_BYTE) return encode_bytes(t, text, len, add_special, ids, n_ids, err);
    if (len > UINT32_MAX / 4)
        return qft_err_setf(err, "encode: text of %zu bytes is too long for one call", len);

    tok_scratch s = {0};
    tok_ids out = {0};
    tok_buf clean = {0};
    enc_ctx c = {.t = t, .s = &s, .out = &out, .err = err};
    int rc = -1;
    int san = tok_utf8_sanitize(text ? text : "", len, &clean);
    if (san < 0) {
        oom(&c);
        goto done;
    }
    if (san == 1) {
        text = clean.p;
        len = clean.len;
    }
    if (add_special)
        for (int i = 0; i < t->n_prefix; i++)
            if (tok_ids_push(&out, t->prefix[i])) {
                oom(&c);
                goto done;
            }
    if (split_added(&c, &t->trie_raw, text ? text : "", len, true, gap_raw)) goto done;
    if (add_special)
        for (int i = 0; i < t->n_suffix; i++)
            if (tok_ids_push(&out, t->suffix[i])) {
                oom(&c);
                goto done;
            }
    rc = finish(ids, n_ids, &out, err);
done:
    if (rc) free(out.v);
    free(c.p[0].v);
    free(c.p[1].v);
    free(c.r);
    tok_buf_free(&c.pre_buf[0]);
    tok_buf_free(&c.pre_buf[1]);
    tok_buf_free(&c.tmp);
    tok_buf_free(&clean);
    tok_scratch_free(&s);
    return rc;
}
