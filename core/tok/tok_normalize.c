/* Normalizers: Prepend and Replace (a String or a Regex pattern), run in sequence. Used on
 * every text segment between added tokens, and once at load on the contents of added
 * tokens marked "normalized" (those are matched on normalized text). */
#include "tok_internal.h"

#include <string.h>

static int oom(qft_err *err) { return qft_err_setf(err, "normalize: out of memory"); }

static int replace_regex(const tok_norm *x, tok_matcher *m, const char *s, size_t n, tok_buf *dst,
                         qft_err *err) {
    size_t prev = 0, at = 0, bl = strlen(x->b);
    while (at <= n) {
        size_t ms, me;
        int rc = tok_regex_next(&x->re, m, s, n, at, &ms, &me, err);
        if (rc < 0) return -1;
        if (rc == 0) break;
        if (tok_buf_put(dst, s + prev, ms - prev) || tok_buf_put(dst, x->b, bl)) return oom(err);
        prev = me;
        at = me > ms ? me : me + (me < n ? tok_utf8_char_len((unsigned char)s[me]) : 1);
    }
    return tok_buf_put(dst, s + prev, n - prev) ? oom(err) : 0;
}

static int replace_string(const tok_norm *x, const char *s, size_t n, tok_buf *dst, qft_err *err) {
    size_t pl = strlen(x->a), bl = strlen(x->b), i0 = 0;
    for (size_t j = 0; pl && j + pl <= n;) {
        if (memcmp(s + j, x->a, pl) == 0) {
            if (tok_buf_put(dst, s + i0, j - i0) || tok_buf_put(dst, x->b, bl)) return oom(err);
            j += pl;
            i0 = j;
        } else {
            j++;
        }
    }
    return tok_buf_put(dst, s + i0, n - i0) ? oom(err) : 0;
}

int tok_normalize(const qft_tokenizer *t, tok_matcher *m, const char *s, size_t n, tok_buf *out,
                  qft_err *err) {
    tok_buf work[2] = {{0}, {0}};
    const char *cur = s;
    size_t cur_len = n;
    int w = 0, rc = -1;
    for (size_t i = 0; i < t->n_norms; i++) {
        const tok_norm *x = &t->norms[i];
        tok_buf *dst = &work[w];
        dst->len = 0;
        if (tok_buf_put(dst, "", 0)) {
            oom(err);
            goto done;
        }
        if (x->kind == NORM_PREPEND) {
            // An empty segment stays empty.
            if ((cur_len && tok_buf_put(dst, x->a, strlen(x->a))) || tok_buf_put(dst, cur, cur_len)) {
                oom(err);
                goto done;
            }
        } else if (x->re.code ? replace_regex(x, m, cur, cur_len, dst, err)
                              : replace_string(x, cur, cur_len, dst, err)) {
            goto done;
        }
        cur = dst->p;
        cur_len = dst->len;
        w ^= 1;
    }
    out->len = 0;
    if (tok_buf_put(out, cur, cur_len)) {
        oom(err);
        goto done;
    }
    rc = 0;
done:
    tok_buf_free(&work[0]);
    tok_buf_free(&work[1]);
    return rc;
}
