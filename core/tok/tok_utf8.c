/* UTF-8 validation and repair, and GPT-2's byte-level alphabet.
 *
 * Invalid input is repaired, not refused: a training corpus with one stray byte should not
 * stop a run, and the repair is the one Python applies with errors="replace" (and Rust's
 * from_utf8_lossy), so ids stay identical to encoding the text Python would have read. */
#include "tok_internal.h"

#include <string.h>

/* The well-formed sequences of Unicode table 3-7; anything else is a maximal invalid
 * subpart. Returns the length of the valid character at s, or 0. */
size_t tok_utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2 || c > 0xF4) return 0;
    size_t need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (n < need) return 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return need;
}

/* How many bytes starting at s form the longest prefix of some valid sequence (at least 1):
 * that prefix becomes one U+FFFD. */
static size_t invalid_prefix_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0xC2 || c > 0xF4) return 1;
    size_t need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    size_t k = 1;
    if (k < n && k < need && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < n && k < need && s[k] >= 0x80 && s[k] <= 0xBF) k++;
    }
    return k;
}

int tok_utf8_sanitize(const char *str, size_t n, tok_buf *out) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    // Fast scan: most text is valid and needs no copy.
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = tok_utf8_valid_len(s + i, n - i);
        if (!k) break;
        i += k;
    }
    if (i == n) return 0;
    out->len = 0;
    if (tok_buf_reserve(out, n + n * 2 + 1)) return -1; // worst case: 3 bytes per input byte
    memcpy(out->p, s, i);
    out->len = i;
    while (i < n) {
        size_t k = tok_utf8_valid_len(s + i, n - i);
        if (k) {
            memcpy(out->p + out->len, s + i, k);
            out->len += k;
            i += k;
        } else {
            memcpy(out->p + out->len, "\xEF\xBF\xBD", 3);
            out->len += 3;
            i += invalid_prefix_len(s + i, n - i);
        }
    }
    out->p[out->len] = 0;
    return 1;
}

int tok_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2's bytes_to_unicode: the printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
 * themselves, the other 68 are shifted to U+0100.. in byte order. Every code point is below
 * U+0144, so two UTF-8 bytes at most. */
#define P(b) (((b) >= 0x21 && (b) <= 0x7E) || ((b) >= 0xA1 && (b) <= 0xAC) || ((b) >= 0xAE))
void tok_bytelevel_init(tok_bytelevel *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < TOK_BYTELEVEL_MAXCP; i++) t->dec[i] = -1;
    uint32_t shifted = 0x100;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = P(b) ? (uint32_t)b : shifted++;
        char u[4];
        int k = tok_utf8_encode(cp, u);
        memcpy(t->enc[b], u, (size_t)k);
        t->enc_len[b] = (uint8_t)k;
        t->dec[cp] = (int16_t)b;
    }
}
#undef P

int tok_bytelevel_decode_char(const tok_bytelevel *t, const char *str, size_t len, size_t *n) {
    const unsigned char *s = (const unsigned char *)str;
    if (len == 0) return -1;
    if (s[0] < 0x80) {
        *n = 1;
        return t->dec[s[0]];
    }
    if (len < 2 || (s[0] & 0xE0) != 0xC0 || (s[1] & 0xC0) != 0x80) return -1;
    uint32_t cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    *n = 2;
    return cp < TOK_BYTELEVEL_MAXCP ? t->dec[cp] : -1;
}
