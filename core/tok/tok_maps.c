/* Buffers, the two hash maps of the BPE model and the added-token trie. The maps use open
 * addressing with linear probing and are filled once at load time, so lookups (the hot path
 * of encoding) touch one or two cache lines and never take a lock. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

int tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_buf_put(tok_buf *b, const void *src, size_t n) {
    if (tok_buf_reserve(b, n + 1)) return -1;
    if (n) memcpy(b->p + b->len, src, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void tok_buf_free(tok_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

int tok_ids_push(tok_ids *a, int32_t id) {
    if (a->len == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v); // (cap,)
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->len++] = id;
    return 0;
}

/* A multiply-rotate hash over 8-byte words: token strings are short, so the per-call
 * overhead matters more than the quality on long keys. */
uint32_t tok_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)s[i] << (8 * i);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (uint32_t)h;
}

static size_t cap_for(size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 1) cap *= 2; // load factor <= 0.5
    return cap;
}

int tok_strmap_init(tok_strmap *m, size_t expected) {
    m->cap = cap_for(expected);
    m->count = 0;
    m->slots = malloc(m->cap * sizeof *m->slots); // (cap,)
    if (!m->slots) return -1;
    for (size_t i = 0; i < m->cap; i++) m->slots[i].val = -1;
    return 0;
}

static int strmap_grow(tok_strmap *m) {
    tok_strmap n;
    if (tok_strmap_init(&n, m->cap)) return -1; // doubles the capacity
    for (size_t i = 0; i < m->cap; i++) {
        struct tok_strslot *s = &m->slots[i];
        if (s->val < 0) continue;
        size_t j = s->hash & (n.cap - 1);
        while (n.slots[j].val >= 0) j = (j + 1) & (n.cap - 1);
        n.slots[j] = *s;
        n.count++;
    }
    free(m->slots);
    *m = n;
    return 0;
}

int tok_strmap_put(tok_strmap *m, const char *arena, uint32_t off, uint32_t len, int32_t val) {
    if ((m->count + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    uint32_t h = tok_hash_bytes(arena + off, len);
    size_t j = h & (m->cap - 1);
    for (;; j = (j + 1) & (m->cap - 1)) {
        struct tok_strslot *s = &m->slots[j];
        if (s->val < 0) {
            s->off = off;
            s->len = len;
            s->hash = h;
            s->val = val;
            m->count++;
            return 0;
        }
        if (s->hash == h && s->len == len && memcmp(arena + s->off, arena + off, len) == 0) {
            s->val = val;
            return 0;
        }
    }
}

int32_t tok_strmap_get(const tok_strmap *m, const char *arena, const char *key, size_t len) {
    if (!m->slots) return -1;
    uint32_t h = tok_hash_bytes(key, len);
    for (size_t j = h & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        const struct tok_strslot *s = &m->slots[j];
        if (s->val < 0) return -1;
        if (s->hash == h && s->len == len && memcmp(arena + s->off, key, len) == 0) return s->val;
    }
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static inline size_t pair_hash(uint64_t key) {
    key ^= key >> 33;
    key *= 0xFF51AFD7ED558CCDull;
    key ^= key >> 33;
    return (size_t)key;
}

int tok_pairmap_init(tok_pairmap *m, size_t expected) {
    m->cap = cap_for(expected);
    m->count = 0;
    m->slots = malloc(m->cap * sizeof *m->slots); // (cap,)
    if (!m->slots) return -1;
    for (size_t i = 0; i < m->cap; i++) m->slots[i].key = UINT64_MAX;
    return 0;
}

static int pairmap_grow(tok_pairmap *m) {
    tok_pairmap n;
    if (tok_pairmap_init(&n, m->cap)) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key == UINT64_MAX) continue;
        size_t j = pair_hash(m->slots[i].key) & (n.cap - 1);
        while (n.slots[j].key != UINT64_MAX) j = (j + 1) & (n.cap - 1);
        n.slots[j] = m->slots[i];
        n.count++;
    }
    free(m->slots);
    *m = n;
    return 0;
}

/* A later duplicate pair overwrites the earlier one, as collecting merges into a map does
 * in tokenizers. */
int tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    if ((m->count + 1) * 2 > m->cap && pairmap_grow(m)) return -1;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t j = pair_hash(key) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        struct tok_pairslot *s = &m->slots[j];
        if (s->key == UINT64_MAX || s->key == key) {
            if (s->key == UINT64_MAX) m->count++;
            s->key = key;
            s->rank = rank;
            s->new_id = new_id;
            return 0;
        }
    }
}

const struct tok_pairslot *tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b) {
    if (!m->slots) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t j = pair_hash(key) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        const struct tok_pairslot *s = &m->slots[j];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
    }
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ---- trie ---------------------------------------------------------------------------- */
static int32_t trie_new_node(tok_trie *tr, uint8_t byte) {
    if (tr->n_nodes == tr->cap) {
        size_t cap = tr->cap ? tr->cap * 2 : 64;
        struct tok_trie_node *n = realloc(tr->nodes, cap * sizeof *n); // (cap,)
        if (!n) return -1;
        tr->nodes = n;
        tr->cap = cap;
    }
    struct tok_trie_node *n = &tr->nodes[tr->n_nodes];
    n->child = n->sibling = n->added = -1;
    n->byte = byte;
    return (int32_t)tr->n_nodes++;
}

/* A token already present keeps its first owner: tokenizers builds its matcher from the
 * special tokens first, then the others, and the first pattern wins among equal ones. */
int tok_trie_insert(tok_trie *tr, const char *s, size_t n, int32_t added_index) {
    if (n == 0) return 0;
    if (tr->n_nodes == 0 && trie_new_node(tr, 0) < 0) return -1;
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        int32_t ch = tr->nodes[cur].child;
        while (ch >= 0 && tr->nodes[ch].byte != c) ch = tr->nodes[ch].sibling;
        if (ch < 0) {
            ch = trie_new_node(tr, c);
            if (ch < 0) return -1;
            tr->nodes[ch].sibling = tr->nodes[cur].child;
            tr->nodes[cur].child = ch;
        }
        cur = ch;
    }
    if (tr->nodes[cur].added < 0) tr->nodes[cur].added = added_index;
    tr->first[(uint8_t)s[0]] = 1;
    return 0;
}

void tok_trie_free(tok_trie *tr) {
    free(tr->nodes);
    memset(tr, 0, sizeof *tr);
}
