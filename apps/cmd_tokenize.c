/* `qft tokenize`: text in on stdin, token ids out on stdout, one line each, so a tokenizer
 * can be checked by hand or from a script against another implementation.
 *
 *   qft tokenize --tokenizer DIR [--json] [--decode] [--no-special]
 *
 * DIR holds tokenizer.json (and optionally tokenizer_config.json); "--tokenizer byte" is the
 * project's byte tokenizer. Each input line (without its '\n') is one text and prints one
 * JSON array of ids. --json: each line is a JSON string instead, so texts may hold
 * newlines. --decode: each line is a JSON array of ids and prints the text as a JSON string.
 * --no-special: do not add BOS/EOS when encoding; drop special tokens when decoding. */
#include "cli.h"
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr, "usage: qft tokenize --tokenizer DIR|byte [--json] [--decode] [--no-special]"
                    "  (reads stdin, one text or id array per line)\n");
    return 2;
}

/* Length of the well-formed UTF-8 character at s, or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    if (s[0] < 0x80) return 1;
    size_t need = s[0] >= 0xC2 && s[0] < 0xE0 ? 2 : s[0] >= 0xE0 && s[0] < 0xF0 ? 3
                : s[0] >= 0xF0 && s[0] < 0xF5 ? 4 : 0;
    if (!need || n < need) return 0;
    unsigned char lo = s[0] == 0xE0 ? 0xA0 : s[0] == 0xF0 ? 0x90 : 0x80;
    unsigned char hi = s[0] == 0xED ? 0x9F : s[0] == 0xF4 ? 0x8F : 0xBF;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return need;
}

/* Prints s as a JSON string; bytes that are not UTF-8 (only the byte tokenizer makes them)
 * are printed as U+FFFD, one per byte, so the line stays valid JSON. */
static void print_json_string(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (!j) {
        char *fixed = malloc(3 * n + 1);
        size_t k = 0;
        for (size_t i = 0; fixed && i < n;) {
            size_t c = utf8_len((const unsigned char *)s + i, n - i);
            if (c) {
                memcpy(fixed + k, s + i, c);
                k += c;
                i += c;
            } else {
                memcpy(fixed + k, "\xEF\xBF\xBD", 3);
                k += 3;
                i++;
            }
        }
        j = fixed ? json_stringn(fixed, k) : NULL;
        free(fixed);
    }
    char *out = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    printf("%s\n", out ? out : "\"\"");
    free(out);
    json_decref(j);
}

static int encode_line(const qft_tokenizer *t, const char *text, size_t len, int add_special,
                       long line_no) {
    int32_t *ids;
    size_t n;
    qft_err err = {0};
    if (qft_tokenizer_encode(t, text, len, add_special, &ids, &n, &err)) {
        fprintf(stderr, "qft tokenize: stdin line %ld: %s\n", line_no, err.msg);
        return 1;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
    free(ids);
    return 0;
}

static int decode_line(const qft_tokenizer *t, const char *line, int skip_special, long line_no) {
    json_error_t je;
    json_t *a = json_loads(line, JSON_DECODE_ANY, &je);
    if (!json_is_array(a)) {
        fprintf(stderr, "qft tokenize: stdin line %ld: expected a JSON array of ids%s%s\n",
                line_no, a ? "" : ": ", a ? "" : je.text);
        json_decref(a);
        return 1;
    }
    size_t n = json_array_size(a);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids); // (n,)
    if (!ids) {
        json_decref(a);
        fprintf(stderr, "qft tokenize: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v)) {
            fprintf(stderr, "qft tokenize: stdin line %ld: element %zu is not an integer\n",
                    line_no, i);
            free(ids);
            json_decref(a);
            return 1;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    json_decref(a);
    char *text;
    size_t len;
    qft_err err = {0};
    int rc = qft_tokenizer_decode_n(t, ids, n, skip_special, &text, &len, &err);
    free(ids);
    if (rc) {
        fprintf(stderr, "qft tokenize: stdin line %ld: %s\n", line_no, err.msg);
        return 1;
    }
    print_json_string(text, len);
    free(text);
    return 0;
}

int qft_cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    int json = 0, decode = 0, special = 1;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
        else if (!strncmp(argv[i], "--tokenizer=", 12)) dir = argv[i] + 12;
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (!strcmp(argv[i], "--no-special")) special = 0;
        else {
            fprintf(stderr, "qft tokenize: unknown argument \"%s\"\n", argv[i]);
            return usage();
        }
    }
    if (!dir) return usage();
    qft_tokenizer *t = NULL;
    qft_err err = {0};
    if (!strcmp(dir, "byte")) {
        t = qft_tokenizer_byte_new();
        if (!t) {
            fprintf(stderr, "qft tokenize: out of memory\n");
            return 1;
        }
    } else if (qft_tokenizer_load(dir, &t, &err)) {
        fprintf(stderr, "qft tokenize: %s\n", err.msg);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    long line_no = 0;
    int rc = 0;
    while (!rc && (got = getline(&line, &cap, stdin)) >= 0) {
        line_no++;
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n') line[--len] = 0;
        if (decode) {
            rc = decode_line(t, line, !special, line_no);
        } else if (json) {
            json_error_t je;
            json_t *s = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            if (!json_is_string(s)) {
                fprintf(stderr, "qft tokenize: stdin line %ld: expected a JSON string%s%s\n",
                        line_no, s ? "" : ": ", s ? "" : je.text);
                rc = 1;
            } else {
                rc = encode_line(t, json_string_value(s), json_string_length(s), special, line_no);
            }
            json_decref(s);
        } else {
            rc = encode_line(t, line, len, special, line_no);
        }
        fflush(stdout);
    }
    free(line);
    qft_tokenizer_free(t);
    return rc;
}
