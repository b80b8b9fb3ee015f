/* Split regexes. tokenizer.json spells them for Oniguruma, which tokenizers runs; PCRE2
 * runs them here. The syntax the real tokenizers use is common to both engines, but a few
 * escapes mean different sets of characters under Unicode rules, so they are rewritten into
 * explicit classes with Oniguruma's meaning:
 *   \s  Oniguruma: U+0009..U+000D, U+0085 and the Z categories (Zs, Zl, Zp);
 *       PCRE2 (UCP): also U+180E and other \h/\v members outside Z.
 *   \w  Oniguruma: letters, marks, decimal digits, connector punctuation;
 *       PCRE2 10.42 (UCP): letters, all numbers and '_' only. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

#define ONIG_SPACE "\\t-\\r\\x{85}\\p{Z}"
#define ONIG_WORD "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"

static int translate(const char *pat, tok_buf *out, const char *where, qft_err *err) {
    size_t n = strlen(pat);
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char e = pat[i + 1];
            const char *rep = NULL;
            if (e == 's') rep = in_class ? ONIG_SPACE : "[" ONIG_SPACE "]";
            else if (e == 'w') rep = in_class ? ONIG_WORD : "[" ONIG_WORD "]";
            else if (e == 'S' && !in_class) rep = "[^" ONIG_SPACE "]";
            else if (e == 'W' && !in_class) rep = "[^" ONIG_WORD "]";
            else if ((e == 'S' || e == 'W') && in_class)
                return qft_err_setf(err, "%s: \\%c inside a character class is not supported",
                                    where, e);
            if (rep) {
                if (tok_buf_put(out, rep, strlen(rep))) goto oom;
            } else if (tok_buf_put(out, pat + i, 2)) {
                goto oom;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            if (tok_buf_put(out, &c, 1)) goto oom;
            // A leading '^' and then a leading ']' are part of the class, not its end.
            if (i + 1 < n && pat[i + 1] == '^') {
                if (tok_buf_put(out, "^", 1)) goto oom;
                i++;
            }
            if (i + 1 < n && pat[i + 1] == ']') {
                if (tok_buf_put(out, "]", 1)) goto oom;
                i++;
            }
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && pat[i + 1] == ':') {
            const char *end = strstr(pat + i, ":]");
            if (!end) return qft_err_setf(err, "%s: unterminated [: in pattern", where);
            size_t k = (size_t)(end - (pat + i)) + 2;
            if (tok_buf_put(out, pat + i, k)) goto oom;
            i += k - 1;
            continue;
        }
        if (in_class && c == '[')
            return qft_err_setf(err, "%s: nested character classes are not supported", where);
        if (in_class && c == ']') in_class = false;
        if (tok_buf_put(out, &c, 1)) goto oom;
    }
    return 0;
oom:
    return qft_err_setf(err, "%s: out of memory translating the pattern", where);
}

int tok_regex_compile(tok_regex *re, const char *pattern, int literal, const char *where,
                      qft_err *err) {
    memset(re, 0, sizeof *re);
    tok_buf pat = {0};
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
    if (literal) {
        opts |= PCRE2_LITERAL;
        opts &= ~(uint32_t)PCRE2_UCP;
        if (tok_buf_put(&pat, pattern, strlen(pattern)))
            return qft_err_setf(err, "%s: out of memory", where);
    } else if (translate(pattern, &pat, where, err)) {
        tok_buf_free(&pat);
        return -1;
    }
    int ecode;
    PCRE2_SIZE eoff;
    re->code = pcre2_compile((PCRE2_SPTR)pat.p, pat.len, opts, &ecode, &eoff, NULL);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        qft_err_setf(err, "%s: regex does not compile at offset %zu: %s (pattern as PCRE2: %s)",
                     where, (size_t)eoff, (char *)msg, pat.p);
        tok_buf_free(&pat);
        return -1;
    }
    tok_buf_free(&pat);
    // Without JIT the interpreter still gives the same matches, only slower.
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

void tok_regex_free(tok_regex *re) {
    if (re->code) pcre2_code_free(re->code);
    re->code = NULL;
}

void tok_matcher_free(tok_matcher *m) {
    if (m->md) pcre2_match_data_free(m->md);
    if (m->mctx) pcre2_match_context_free(m->mctx);
    if (m->stack) pcre2_jit_stack_free(m->stack);
    memset(m, 0, sizeof *m);
}

/* The default JIT stack (32 KiB on the machine stack) covers ordinary text; a long run that
 * overflows it is retried once with a private 8 MiB stack. */
static int matcher_big_stack(tok_matcher *m) {
    if (m->stack) return 0;
    m->mctx = pcre2_match_context_create(NULL);
    m->stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, NULL);
    if (!m->mctx || !m->stack) return -1;
    pcre2_jit_stack_assign(m->mctx, NULL, m->stack);
    return 0;
}

int tok_regex_next(const tok_regex *re, tok_matcher *m, const char *s, size_t n, size_t start,
                   size_t *ms, size_t *me, qft_err *err) {
    if (!m->md) {
        // Three pairs: the patterns in use have no capture groups worth reading.
        m->md = pcre2_match_data_create(3, NULL);
        if (!m->md) return qft_err_setf(err, "regex: out of memory");
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc;
        if (re->jit)
            rc = pcre2_jit_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, m->md,
                                 m->mctx);
        else
            rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, m->md,
                             m->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && attempt == 0) {
            if (matcher_big_stack(m)) return qft_err_setf(err, "regex: out of memory");
            continue;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return qft_err_setf(err, "regex: matching failed at byte %zu: %s", start,
                                (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
        *ms = ov[0];
        *me = ov[1];
        return 1;
    }
    return qft_err_setf(err, "regex: JIT stack exhausted at byte %zu", start);
}
