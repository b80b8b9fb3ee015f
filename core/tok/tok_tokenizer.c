/* The tokenizer handle: the project's byte tokenizer, freeing, and the small queries. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

qft_tokenizer *qft_tokenizer_byte_new(void) {
    qft_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->kind = TOK_KIND_BYTE;
    t->n_ids = 259;
    t->unk_id = -1;
    t->id_tok = malloc((size_t)t->n_ids * sizeof *t->id_tok); // (259,)
    t->id_flags = calloc((size_t)t->n_ids, 1);                 // (259,)
    if (!t->id_tok || !t->id_flags) goto fail;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->id_tok[b].off = tok_arena_add(t, &c, 1);
        t->id_tok[b].len = 1;
        if (t->id_tok[b].off == UINT32_MAX) goto fail;
    }
    static const char *names[3] = {"<s>", "</s>", "<pad>"};
    for (int i = 0; i < 3; i++) {
        t->id_tok[256 + i].off = tok_arena_add(t, names[i], strlen(names[i]));
        t->id_tok[256 + i].len = (uint32_t)strlen(names[i]);
        if (t->id_tok[256 + i].off == UINT32_MAX) goto fail;
        t->id_flags[256 + i] = TOK_ID_ADDED | TOK_ID_SPECIAL;
    }
    t->bos = 256;
    t->eos = 257;
    t->pad = 258;
    t->prefix[0] = t->bos;
    t->n_prefix = 1;
    snprintf(t->path, sizeof t->path, "(byte tokenizer)");
    return t;
fail:
    qft_tokenizer_free(t);
    return NULL;
}

void qft_tokenizer_free(qft_tokenizer *t) {
    if (!t) return;
    tok_components_free(t);
    tok_strmap_free(&t->vocab);
    tok_pairmap_free(&t->merges);
    tok_strmap_free(&t->added_map);
    tok_trie_free(&t->trie_raw);
    tok_trie_free(&t->trie_norm);
    tok_regex_free(&t->word_re);
    free(t->added);
    free(t->cont_prefix);
    free(t->eow_suffix);
    free(t->id_tok);
    free(t->id_flags);
    free(t->arena);
    free(t);
}

int qft_tokenizer_vocab_size(const qft_tokenizer *t) { return t ? t->n_ids : 0; }
int qft_tokenizer_bos(const qft_tokenizer *t) { return t ? t->bos : -1; }
int qft_tokenizer_eos(const qft_tokenizer *t) { return t ? t->eos : -1; }
int qft_tokenizer_pad(const qft_tokenizer *t) { return !t ? -1 : t->pad >= 0 ? t->pad : t->eos; }

int qft_tokenizer_adds_bos(const qft_tokenizer *t) {
    for (int i = 0; t && t->bos >= 0 && i < t->n_prefix; i++)
        if (t->prefix[i] == t->bos) return 1;
    return 0;
}

int qft_tokenizer_adds_eos(const qft_tokenizer *t) {
    for (int i = 0; t && t->eos >= 0 && i < t->n_suffix; i++)
        if (t->suffix[i] == t->eos) return 1;
    return 0;
}

int32_t qft_tokenizer_token_to_id(const qft_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    if (t->kind == TOK_KIND_BYTE) {
        for (int32_t i = 256; i < t->n_ids; i++)
            if (strcmp(t->arena + t->id_tok[i].off, token) == 0) return i;
        return n == 1 ? (unsigned char)token[0] : -1;
    }
    int32_t id = tok_strmap_get(&t->added_map, t->arena, token, n);
    return id >= 0 ? id : tok_strmap_get(&t->vocab, t->arena, token, n);
}

const char *qft_tokenizer_id_to_token(const qft_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_ids || t->id_tok[id].len == UINT32_MAX) return NULL;
    if (len) *len = t->id_tok[id].len;
    return t->arena + t->id_tok[id].off;
}

int qft_tokenizer_is_special(const qft_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && (t->id_flags[id] & TOK_ID_SPECIAL) != 0;
}
