/* Tokenizers: Hugging Face tokenizer.json (byte-level BPE with a split regex, as Llama 3;
 * metaspace BPE with byte fallback, as Llama 2 / Mistral) and the project's own byte
 * tokenizer for the embedded demo. One opaque handle, one set of calls. */
#ifndef QFT_TOKENIZER_H
#define QFT_TOKENIZER_H

#include "qft_sdk.h"

#include <stddef.h>
#include <stdint.h>

typedef struct qft_tokenizer qft_tokenizer;

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json (BOS/EOS rules). */
int qft_tokenizer_load(const char *dir, qft_tokenizer **out, qft_err *err);
/* The project's own tokenizer: ids 0..255 are bytes, then BOS, EOS, PAD. */
qft_tokenizer *qft_tokenizer_byte_new(void);
void qft_tokenizer_free(qft_tokenizer *t);

/* Encodes UTF-8 text. add_special adds BOS (and EOS) as tokenizer_config.json says.
 * *ids is malloc'ed; the caller frees it. */
int qft_tokenizer_encode(const qft_tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n_ids, qft_err *err);
/* Decodes ids to text (malloc'ed, NUL-terminated); skip_special drops special tokens. */
int qft_tokenizer_decode(const qft_tokenizer *t, const int32_t *ids, size_t n_ids,
                         int skip_special, char **text, qft_err *err);

int qft_tokenizer_vocab_size(const qft_tokenizer *t);
int qft_tokenizer_bos(const qft_tokenizer *t); /* -1 when none */
int qft_tokenizer_eos(const qft_tokenizer *t);
int qft_tokenizer_pad(const qft_tokenizer *t); /* falls back to EOS when none is defined */

#endif
