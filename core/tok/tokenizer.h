/* Tokenizers: Hugging Face tokenizer.json (byte-level BPE with a split regex, as Llama 3;
 * metaspace BPE with byte fallback, as Llama 2 / Mistral) and the project's own byte
 * tokenizer for the embedded demo. One opaque handle, one set of calls.
 *
 * Exactness: for the supported component types, encode gives the ids that Hugging Face
 * `tokenizers` gives for Tokenizer.from_file(".../tokenizer.json").encode(text,
 * add_special_tokens), and decode gives its decode(ids, skip_special_tokens) string
 * (tests/tok checks both on a corpus; tests/reference/tokenizer_reference.py makes it).
 * Supported: model BPE (vocab; merges as "a b" or [a, b]; byte_fallback, ignore_merges,
 * unk_token, fuse_unk, continuing_subword_prefix, end_of_word_suffix); added_tokens (special
 * or not, lstrip, rstrip, single_word, normalized); normalizer Sequence / Prepend / Replace;
 * pre_tokenizer Sequence / Split / ByteLevel / Metaspace; post_processor TemplateProcessing
 * / ByteLevel / Sequence; decoder Sequence / ByteLevel / Replace / ByteFallback / Fuse /
 * Strip / Metaspace. Anything else makes qft_tokenizer_load fail with the file and the
 * component named.
 *
 * Input text: any bytes. Invalid UTF-8 (including UTF-8-encoded lone surrogates such as
 * ED A0 80) is replaced by U+FFFD, one per maximal invalid subsequence — exactly what
 * Python's bytes.decode("utf-8", errors="replace") produces — and the result is encoded.
 * So the ids equal those of HF tokenizers on the text Python would read with
 * errors="replace", and decode returns that repaired text, not the original bytes. NUL
 * bytes are ordinary characters (text is given with its length).
 *
 * Special tokens: add_special adds what the tokenizer says, nothing more: the ids of the
 * post_processor's TemplateProcessing before and after the text, or — when
 * tokenizer_config.json sets add_bos_token and/or add_eos_token — BOS and/or EOS as those
 * flags say (transformers' rule). The Llama 3 tokenizer.json in ../shared has a ByteLevel
 * post-processor and no add_bos_token, so add_special adds nothing there (as HF does); the
 * sp-bpe-32k one adds BOS. EOS at the end of a training example is the data pipeline's job,
 * not this call's. Special-token strings inside the text (e.g. "<|begin_of_text|>", "<s>")
 * are always matched as their tokens, before normalization and pre-tokenization, as HF does.
 *
 * Threads: a loaded tokenizer is never modified, so one const handle may be used from any
 * number of threads at once; each call keeps its scratch to itself. */
#ifndef QFT_TOKENIZER_H
#define QFT_TOKENIZER_H

#include "qft_sdk.h"

#include <stddef.h>
#include <stdint.h>

typedef struct qft_tokenizer qft_tokenizer;

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json (BOS/EOS/PAD
 * tokens, add_bos_token/add_eos_token). Truncation and padding in tokenizer.json must be
 * null: the data pipeline owns both. */
int qft_tokenizer_load(const char *dir, qft_tokenizer **out, qft_err *err);
/* The project's own tokenizer: ids 0..255 are bytes, 256 = BOS "<s>", 257 = EOS "</s>",
 * 258 = PAD "<pad>". add_special adds BOS at the start only. Bytes are taken as they are
 * (no UTF-8 repair), so decode(encode(b)) == b for any bytes. NULL when out of memory. */
qft_tokenizer *qft_tokenizer_byte_new(void);
void qft_tokenizer_free(qft_tokenizer *t);

/* Encodes len bytes of text (see the notes above). *ids is malloc'ed (never NULL on
 * success, even for zero ids); the caller frees it with free(). */
int qft_tokenizer_encode(const qft_tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n_ids, qft_err *err);
/* Decodes ids to text (malloc'ed, NUL-terminated; free() it); skip_special drops special
 * tokens. An id that is not a token (negative, too large, or a gap in the vocabulary) is an
 * error naming the id and its position — HF would drop it silently. The byte tokenizer's
 * output is the raw bytes, which need not be valid UTF-8. */
int qft_tokenizer_decode(const qft_tokenizer *t, const int32_t *ids, size_t n_ids,
                         int skip_special, char **text, qft_err *err);
/* The same, with the length in bytes: decoded text may hold NUL characters. */
int qft_tokenizer_decode_n(const qft_tokenizer *t, const int32_t *ids, size_t n_ids,
                           int skip_special, char **text, size_t *len, qft_err *err);

int qft_tokenizer_vocab_size(const qft_tokenizer *t); /* 1 + the largest id */
int qft_tokenizer_bos(const qft_tokenizer *t); /* -1 when none */
int qft_tokenizer_eos(const qft_tokenizer *t);
int qft_tokenizer_pad(const qft_tokenizer *t); /* falls back to EOS when none is defined */
/* 1 when add_special puts BOS at the start / EOS at the end. */
int qft_tokenizer_adds_bos(const qft_tokenizer *t);
int qft_tokenizer_adds_eos(const qft_tokenizer *t);
/* The id of a token string (added tokens first, then the model's vocab), -1 when none. */
int32_t qft_tokenizer_token_to_id(const qft_tokenizer *t, const char *token);
/* The string of an id (an added token's content, else the model's token, in its stored
 * form: byte-level or metaspace-encoded), not NUL-safe, length in *len; NULL when none. */
const char *qft_tokenizer_id_to_token(const qft_tokenizer *t, int32_t id, size_t *len);
int qft_tokenizer_is_special(const qft_tokenizer *t, int32_t id);

#endif
