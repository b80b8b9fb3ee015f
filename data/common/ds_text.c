/* UTF-8 validation follows RFC 3629's table of well-formed byte sequences. */
#include "ds_text.h"

#include <stdint.h>

long qft_ds_utf8_check(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        const unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf; /* the allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;      /* no overlong 3-byte forms */
            else if (c == 0xed) hi = 0x9f; /* no UTF-16 surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;      /* no overlong 4-byte forms */
            else if (c == 0xf4) hi = 0x8f; /* nothing past U+10FFFF */
        } else {
            return (long)i; /* a stray continuation byte, 0xc0/0xc1 or 0xf5.. */
        }
        /* A bad sequence is reported at its lead byte: that is the character at fault. */
        if (i + 1 >= n || p[i + 1] < lo || p[i + 1] > hi) return (long)i;
        for (size_t k = 2; k < len; k++)
            if (i + k >= n || (p[i + k] & 0xc0) != 0x80) return (long)i;
        i += len;
    }
    return -1;
}

qft_ds_pos qft_ds_pos_at(const char *buf, size_t from, long from_line, size_t target) {
    long line = from_line;
    size_t line_start = from;
    for (size_t i = from; i < target; i++)
        if (buf[i] == '\n') {
            line++;
            line_start = i + 1;
        }
    long col = 1;
    for (size_t i = line_start; i < target; i++)
        if (((unsigned char)buf[i] & 0xc0) != 0x80) col++;
    qft_ds_pos p = {line, col, (long)target};
    return p;
}
