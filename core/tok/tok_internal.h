/* Internals of the tokenizer, shared by the files of core/tok/ and by nothing else.
 *
 * After loading, a qft_tokenizer is never written again: every encode/decode call keeps its
 * scratch in a tok_scratch of its own, which is what makes a const tokenizer safe to use from
 * several threads at once. */
#ifndef QFT_TOK_INTERNAL_H
#define QFT_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable byte buffer and id vector --------------------------------------------- */
typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;
int tok_buf_reserve(tok_buf *b, size_t extra); /* 0 ok, -1 out of memory */
int tok_buf_put(tok_buf *b, const void *src, size_t n);
void tok_buf_free(tok_buf *b);

typedef struct tok_ids {
    int32_t *v;
    size_t len, cap;
} tok_ids;
int tok_ids_push(tok_ids *a, int32_t id);

/* ---- hash maps (open addressing, built once, read-only afterwards) -------------------- */
/* String -> int32. Keys are byte ranges of an arena the owner keeps alive. */
typedef struct tok_strmap {
    struct tok_strslot {
        uint32_t off, len;  /* key = arena[off, off + len) */
        uint32_t hash;
        int32_t val;        /* -1 = empty slot */
    } *slots;               /* (cap,) */
    size_t cap, count;      /* cap is a power of two */
} tok_strmap;
int tok_strmap_init(tok_strmap *m, size_t expected);
/* Inserts or overwrites; arena must hold the key at off. */
int tok_strmap_put(tok_strmap *m, const char *arena, uint32_t off, uint32_t len, int32_t val);
int32_t tok_strmap_get(const tok_strmap *m, const char *arena, const char *key, size_t len);
void tok_strmap_free(tok_strmap *m);
uint32_t tok_hash_bytes(const void *p, size_t n);

/* (left id, right id) -> (merge rank, merged id). */
typedef struct tok_pairmap {
    struct tok_pairslot {
        uint64_t key;       /* (left << 32) | right; UINT64_MAX = empty */
        uint32_t rank;
        int32_t new_id;
    } *slots;               /* (cap,) */
    size_t cap, count;
} tok_pairmap;
int tok_pairmap_init(tok_pairmap *m, size_t expected);
int tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
/* Returns the slot or NULL. */
const struct tok_pairslot *tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b);
void tok_pairmap_free(tok_pairmap *m);

/* ---- UTF-8 ---------------------------------------------------------------------------- */
/* Length of the valid UTF-8 sequence at s[0..n), or 0 when the bytes there are not one. */
size_t tok_utf8_valid_len(const unsigned char *s, size_t n);
/* Byte length of the character that starts with byte c (1 for continuation/invalid bytes). */
static inline size_t tok_utf8_char_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/* Replaces each maximal invalid subsequence with U+FFFD, as Python's
 * bytes.decode("utf-8", errors="replace") and Rust's String::from_utf8_lossy do. Returns 1
 * and fills *out when something was replaced, 0 when s is valid (out untouched), -1 on
 * allocation failure. */
int tok_utf8_sanitize(const char *s, size_t n, tok_buf *out);
int tok_utf8_encode(uint32_t cp, char out[4]); /* returns the byte count */

/* GPT-2's byte-to-character table: each byte as 1 or 2 UTF-8 bytes of a printable char. */
#define TOK_BYTELEVEL_MAXCP 0x180
typedef struct tok_bytelevel {
    char enc[256][3];
    uint8_t enc_len[256];
    int16_t dec[TOK_BYTELEVEL_MAXCP]; /* code point -> byte, -1 when not in the alphabet */
} tok_bytelevel;
void tok_bytelevel_init(tok_bytelevel *t);
/* Inverse: the byte for the char at s (1 or 2 bytes, length in *n), or -1 if not one. */
int tok_bytelevel_decode_char(const tok_bytelevel *t, const char *s, size_t len, size_t *n);

/* ---- regexes (Oniguruma spelling in tokenizer.json, run by PCRE2) ---------------------- */
typedef struct tok_regex {
    pcre2_code *code;
    bool jit;
} tok_regex;
/* Compiles an Oniguruma pattern as tokenizers would run it (UTF, Unicode properties),
 * translating the classes whose meaning differs between the engines (\s, \S, \w, \W).
 * literal != 0 compiles the text as a plain string instead. */
int tok_regex_compile(tok_regex *re, const char *pattern, int literal, const char *where,
                      qft_err *err);
void tok_regex_free(tok_regex *re);
/* Match state of one call; never shared between threads. */
typedef struct tok_matcher {
    pcre2_match_data *md;
    pcre2_jit_stack *stack;        /* created when the default JIT stack is too small */
    pcre2_match_context *mctx;
} tok_matcher;
void tok_matcher_free(tok_matcher *m);
/* Finds the next match in s[0..n) at or after `start`; 1 = found ([*ms, *me)), 0 = none,
 * -1 = error (err filled). */
int tok_regex_next(const tok_regex *re, tok_matcher *m, const char *s, size_t n, size_t start,
                   size_t *ms, size_t *me, qft_err *err);

/* ---- the pipeline components ---------------------------------------------------------- */
typedef enum { NORM_PREPEND, NORM_REPLACE } tok_norm_kind;
typedef struct tok_norm {
    tok_norm_kind kind;
    char *a;   /* PREPEND: the prefix; REPLACE: the pattern string */
    char *b;   /* REPLACE: the replacement */
    tok_regex re; /* REPLACE with a Regex pattern (re.code != NULL) */
} tok_norm;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT,
               SPLIT_CONTIGUOUS } tok_split_behavior;
typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE } tok_pre_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } tok_prepend_scheme;
typedef struct tok_pre {
    tok_pre_kind kind;
    tok_regex re;                 /* SPLIT; BYTELEVEL with use_regex (the GPT-2 pattern) */
    tok_split_behavior behavior;  /* SPLIT */
    bool invert;                  /* SPLIT */
    bool add_prefix_space;        /* BYTELEVEL */
    bool use_regex;               /* BYTELEVEL */
    char replacement[8];          /* METASPACE: UTF-8 of the replacement char */
    tok_prepend_scheme prepend;   /* METASPACE */
    bool split;                   /* METASPACE */
} tok_pre;

typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP,
               DEC_METASPACE } tok_dec_kind;
typedef struct tok_dec {
    tok_dec_kind kind;
    char *a, *b;                  /* REPLACE: pattern, content; STRIP: a = the char */
    int start, stop;              /* STRIP */
    char replacement[8];          /* METASPACE */
    tok_prepend_scheme prepend;   /* METASPACE */
} tok_dec;

/* An added token (tokenizer.json "added_tokens"). */
typedef struct tok_added {
    uint32_t off, len;            /* content in the arena */
    int32_t id;
    bool special, normalized, lstrip, rstrip, single_word;
} tok_added;

/* A byte trie over added-token contents for leftmost-longest matching. */
typedef struct tok_trie {
    struct tok_trie_node {
        int32_t child;            /* first child, -1 none */
        int32_t sibling;          /* next sibling, -1 none */
        int32_t added;            /* index into added[], -1 when no token ends here */
        uint8_t byte;
    } *nodes;                     /* (n_nodes,), node 0 is the root */
    size_t n_nodes, cap;
    uint8_t first[256];           /* 1 when some token starts with this byte */
} tok_trie;

typedef enum { TOK_KIND_BYTE, TOK_KIND_BPE } tok_kind;

struct qft_tokenizer {
    tok_kind kind;
    char *arena;                  /* every token string, back to back */
    size_t arena_len, arena_cap;
    int32_t n_ids;                /* 1 + the largest id of the model or of an added token */
    struct tok_idtok {
        uint32_t off, len;        /* the token's string; len = UINT32_MAX when the id has none */
    } *id_tok;                    /* (n_ids,) */
    uint8_t *id_flags;            /* (n_ids,) TOK_ID_* bits */

    /* BPE model */
    tok_strmap vocab;
    tok_pairmap merges;
    bool byte_fallback, ignore_merges, fuse_unk;
    int32_t unk_id;               /* -1 none */
    int32_t byte_ids[256];        /* id of "<0xXX>" (byte fallback), -1 when absent */
    char *cont_prefix, *eow_suffix; /* continuing_subword_prefix, end_of_word_suffix */

    /* added tokens */
    tok_added *added;
    size_t n_added;
    tok_strmap added_map;         /* content -> id */
    tok_trie trie_raw, trie_norm; /* matched on the raw text / on normalized pieces */
    tok_regex word_re;            /* a word character, when some token is single_word */

    /* pipeline */
    tok_norm *norms;
    size_t n_norms;
    tok_pre *pres;
    size_t n_pres;
    tok_dec *decs;
    size_t n_decs;
    bool has_decoder;
    int32_t prefix[8], suffix[8]; /* ids that add_special puts around the text */
    int n_prefix, n_suffix;

    tok_bytelevel bl;             /* GPT-2's byte alphabet, both ways */
    int32_t bos, eos, pad;        /* -1 when none */
    char path[1024];              /* the tokenizer.json read, for messages */
};

enum { TOK_ID_ADDED = 1, TOK_ID_SPECIAL = 2 };

/* Appends a string to the tokenizer's arena; returns its offset, or UINT32_MAX on failure. */
uint32_t tok_arena_add(qft_tokenizer *t, const char *s, size_t n);
int tok_trie_insert(tok_trie *tr, const char *s, size_t n, int32_t added_index);
void tok_trie_free(tok_trie *tr);

/* Runs the normalizers over s[0..n) into out (tok_normalize.c). */
int tok_normalize(const qft_tokenizer *t, tok_matcher *m, const char *s, size_t n, tok_buf *out,
                  qft_err *err);

/* Component loaders (tok_components.c); `json` is a jansson json_t*. */
int tok_load_normalizer(qft_tokenizer *t, void *json, qft_err *err);
int tok_load_pre_tokenizer(qft_tokenizer *t, void *json, qft_err *err);
int tok_load_decoder(qft_tokenizer *t, void *json, qft_err *err);
int tok_load_post_processor(qft_tokenizer *t, void *json, qft_err *err);
void tok_components_free(qft_tokenizer *t);

/* ---- per-call scratch ---------------------------------------------------------------- */
typedef struct tok_symbol {
    int32_t id;
    int32_t prev, next;           /* indices into the word's symbols, -1 at the ends */
    uint32_t len;                 /* bytes covered; 0 once merged into its left neighbour */
} tok_symbol;
typedef struct tok_merge {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} tok_merge;
typedef struct tok_scratch {
    tok_symbol *sym;              /* (cap_sym,) */
    tok_merge *heap;              /* (cap_heap,) */
    size_t cap_sym, cap_heap;
    tok_matcher matcher;
    tok_matcher word_matcher;     /* single_word checks */
    tok_buf c;                    /* the normalized segment */
} tok_scratch;
void tok_scratch_free(tok_scratch *s);

/* BPE of one pre-token (tok_bpe.c): appends its ids. */
int tok_bpe_word(const qft_tokenizer *t, tok_scratch *s, const char *w, size_t n, tok_ids *out,
                 qft_err *err);

#endif
