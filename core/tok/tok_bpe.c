/* BPE of one pre-token, as tokenizers' BPE model does it: the word starts as one symbol per
 * character (or per byte, with byte fallback), then the pair of lowest merge rank is merged
 * until no adjacent pair has a merge. A min-heap keyed by (rank, position) holds the
 * candidate pairs, so a word of n symbols costs O(n log n) rather than a rescan per merge.
 * Stale heap entries are recognised on pop, exactly as tokenizers does it (the pair now at
 * that position must still merge into the same id), which keeps ties and corner cases
 * identical. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

static int scratch_reserve(tok_scratch *s, size_t n_sym) {
    if (n_sym > s->cap_sym) {
        size_t cap = s->cap_sym ? s->cap_sym : 64;
        while (cap < n_sym) cap *= 2;
        tok_symbol *sym = realloc(s->sym, cap * sizeof *sym); // (cap,)
        if (!sym) return -1;
        s->sym = sym;
        s->cap_sym = cap;
    }
    // Each merge pushes at most two entries on top of the initial n - 1.
    size_t need_heap = 3 * n_sym + 4;
    if (need_heap > s->cap_heap) {
        size_t cap = s->cap_heap ? s->cap_heap : 256;
        while (cap < need_heap) cap *= 2;
        tok_merge *h = realloc(s->heap, cap * sizeof *h); // (cap,)
        if (!h) return -1;
        s->heap = h;
        s->cap_heap = cap;
    }
    return 0;
}

static inline bool merge_less(const tok_merge *a, const tok_merge *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tok_merge *h, size_t *n, tok_merge m) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&m, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = m;
}

static tok_merge heap_pop(tok_merge *h, size_t *n) {
    tok_merge top = h[0];
    tok_merge last = h[--(*n)];
    size_t i = 0, len = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= len) break;
        size_t c = (l + 1 < len && merge_less(&h[l + 1], &h[l])) ? l + 1 : l;
        if (!merge_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (len) h[i] = last;
    return top;
}

static void add_symbol(tok_scratch *s, size_t *n, int32_t id, uint32_t len) {
    tok_symbol *y = &s->sym[*n];
    y->id = id;
    y->len = len;
    y->prev = *n ? (int32_t)*n - 1 : -1;
    y->next = -1;
    if (*n) s->sym[*n - 1].next = (int32_t)*n;
    (*n)++;
}

/* Looks up one character, with the continuing-subword prefix / end-of-word suffix the model
 * may ask for (neither real tokenizer does; kept for BPE files that set them). */
static int32_t char_id(const qft_tokenizer *t, const char *c, size_t clen, bool first, bool last,
                       char *tmp, size_t tmp_cap) {
    if ((!t->cont_prefix || first) && (!t->eow_suffix || !last))
        return tok_strmap_get(&t->vocab, t->arena, c, clen);
    size_t k = 0, pl = (!first && t->cont_prefix) ? strlen(t->cont_prefix) : 0;
    size_t sl = (last && t->eow_suffix) ? strlen(t->eow_suffix) : 0;
    if (pl + clen + sl > tmp_cap) return -1;
    memcpy(tmp, t->cont_prefix ? t->cont_prefix : "", pl);
    k = pl;
    memcpy(tmp + k, c, clen);
    k += clen;
    memcpy(tmp + k, t->eow_suffix ? t->eow_suffix : "", sl);
    return tok_strmap_get(&t->vocab, t->arena, tmp, k + sl);
}

int tok_bpe_word(const qft_tokenizer *t, tok_scratch *s, const char *w, size_t n, tok_ids *out,
                 qft_err *err) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = tok_strmap_get(&t->vocab, t->arena, w, n);
        if (id >= 0) return tok_ids_push(out, id) ? qft_err_setf(err, "encode: out of memory") : 0;
    }
    if (scratch_reserve(s, n)) return qft_err_setf(err, "encode: out of memory");

    // 1. One symbol per character; unknown characters become bytes or the unknown token.
    size_t ns = 0;
    int32_t unk_pending = -1;
    uint32_t unk_len = 0;
    char tmp[256];
    for (size_t i = 0; i < n;) {
        size_t cl = tok_utf8_char_len((unsigned char)w[i]);
        if (i + cl > n) cl = n - i;
        int32_t id = char_id(t, w + i, cl, i == 0, i + cl == n, tmp, sizeof tmp);
        if (id >= 0) {
            if (unk_pending >= 0) {
                add_symbol(s, &ns, unk_pending, unk_len);
                unk_pending = -1;
            }
            add_symbol(s, &ns, id, (uint32_t)cl);
        } else {
            bool done = false;
            if (t->byte_fallback) {
                bool all = true;
                for (size_t k = 0; k < cl; k++) all = all && t->byte_ids[(unsigned char)w[i + k]] >= 0;
                if (all) {
                    // The pending unknown is not flushed here: tokenizers does not either.
                    for (size_t k = 0; k < cl; k++)
                        add_symbol(s, &ns, t->byte_ids[(unsigned char)w[i + k]], 1);
                    done = true;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk_pending >= 0 && t->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk_pending >= 0) add_symbol(s, &ns, unk_pending, unk_len);
                    unk_pending = t->unk_id;
                    unk_len = (uint32_t)cl;
                }
            }
            // Neither bytes nor an unknown token: the character is dropped, as in tokenizers.
        }
        i += cl;
    }
    if (unk_pending >= 0) add_symbol(s, &ns, unk_pending, unk_len);

    // 2. Merge by rank.
    tok_merge *heap = s->heap;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const struct tok_pairslot *m = tok_pairmap_get(&t->merges, s->sym[i].id, s->sym[i + 1].id);
        if (m) heap_push(heap, &nh, (tok_merge){m->rank, (uint32_t)i, m->new_id});
    }
    while (nh) {
        tok_merge top = heap_pop(heap, &nh);
        tok_symbol *cur = &s->sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        tok_symbol *right = &s->sym[cur->next];
        const struct tok_pairslot *m = tok_pairmap_get(&t->merges, cur->id, right->id);
        if (!m || m->new_id != top.new_id) continue; // expired entry
        cur->id = top.new_id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0) s->sym[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            const tok_symbol *p = &s->sym[cur->prev];
            m = tok_pairmap_get(&t->merges, p->id, cur->id);
            if (m) heap_push(heap, &nh, (tok_merge){m->rank, (uint32_t)cur->prev, m->new_id});
        }
        if (cur->next >= 0) {
            m = tok_pairmap_get(&t->merges, cur->id, s->sym[cur->next].id);
            if (m) heap_push(heap, &nh, (tok_merge){m->rank, top.pos, m->new_id});
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (s->sym[i].len && tok_ids_push(out, s->sym[i].id))
            return qft_err_setf(err, "encode: out of memory");
    return 0;
}
