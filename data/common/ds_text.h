/* Text checks shared by the dataset readers: UTF-8 validation and turning a byte offset
 * into the line and column an editor shows, so every message points at the exact byte. */
#ifndef QFT_DS_TEXT_H
#define QFT_DS_TEXT_H

#include <stddef.h>

/* Offset of the first byte of s[0..n) that is not well-formed UTF-8 (overlong forms,
 * surrogates and code points past U+10FFFF included), or -1 when all of it is. */
long qft_ds_utf8_check(const char *s, size_t n);

/* A position in a file: 1-based line, 1-based column in characters (each malformed byte
 * counts as one), and the 0-based byte offset. */
typedef struct qft_ds_pos {
    long line, column, offset;
} qft_ds_pos;

/* The position of byte `target` of buf, counting lines from a known earlier point: byte
 * `from` starts line `from_line` (use 0, 1 to count from the top of the file). */
qft_ds_pos qft_ds_pos_at(const char *buf, size_t from, long from_line, size_t target);

#endif
