/* The dataset file reader of ds_rows.h. */
#include "ds_rows.h"

#include "ds_text.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DS_BLOCK_BYTES ((size_t)4 << 20)

/* ---- memory --------------------------------------------------------------------------- */
void *qft_ds_mem_alloc(const qft_services *svc, size_t bytes) {
    if (bytes == 0) bytes = 1;
    return svc && svc->alloc ? svc->alloc(bytes, "dataset rows") : malloc(bytes);
}

void qft_ds_mem_free(const qft_services *svc, void *p) {
    if (!p) return;
    if (svc && svc->free)
        svc->free(p);
    else
        free(p);
}

struct qft_ds_block {
    qft_ds_block *next;
    size_t used, cap;
    char *data; // (cap)
};

void *qft_ds_arena_alloc(qft_ds_arena *a, size_t bytes) {
    bytes = (bytes + 7) & ~(size_t)7; /* keep every piece 8-byte aligned */
    qft_ds_block *b = a->head;
    if (!b || b->cap - b->used < bytes) {
        /* An oversized string gets a block of its own rather than wasting a shared one. */
        const size_t cap = bytes > DS_BLOCK_BYTES ? bytes : DS_BLOCK_BYTES;
        b = qft_ds_mem_alloc(a->svc, sizeof *b + cap);
        if (!b) return NULL;
        b->data = (char *)(b + 1);
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += bytes;
    return p;
}

void qft_ds_arena_free(qft_ds_arena *a) {
    for (qft_ds_block *b = a->head, *next; b; b = next) {
        next = b->next;
        qft_ds_mem_free(a->svc, b);
    }
    a->head = NULL;
}

/* ---- reading -------------------------------------------------------------------------- */
typedef struct reader {
    const qft_services *svc;
    const char *buf; // (size) the whole file
    size_t size;
    const qft_ds_field *fields; // (n_fields)
    int skip_bad;
    qft_ds_rows *out;
    long cap; /* rows allocated in out */
    char msg[1536];
} reader;

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static int grow(reader *r) {
    qft_ds_rows *o = r->out;
    const long cap = r->cap ? 2 * r->cap : 1024;
    const size_t nf = (size_t)o->n_fields;
    const char **cells = qft_ds_mem_alloc(r->svc, (size_t)cap * nf * sizeof *cells); // (cap, F)
    long *row_no = qft_ds_mem_alloc(r->svc, (size_t)cap * sizeof *row_no);          // (cap)
    long *line = qft_ds_mem_alloc(r->svc, (size_t)cap * sizeof *line);              // (cap)
    if (!cells || !row_no || !line) {
        qft_ds_mem_free(r->svc, cells);
        qft_ds_mem_free(r->svc, row_no);
        qft_ds_mem_free(r->svc, line);
        return -1;
    }
    if (o->n) {
        memcpy(cells, o->cells, (size_t)o->n * nf * sizeof *cells);
        memcpy(row_no, o->row_no, (size_t)o->n * sizeof *row_no);
        memcpy(line, o->line, (size_t)o->n * sizeof *line);
    }
    qft_ds_mem_free(r->svc, (void *)o->cells);
    qft_ds_mem_free(r->svc, o->row_no);
    qft_ds_mem_free(r->svc, o->line);
    o->cells = cells;
    o->row_no = row_no;
    o->line = line;
    r->cap = cap;
    return 0;
}

/* One row: text[off, off + len) of the file, starting on `line`, whose first byte is at
 * `line_start`. Returns 0 when kept, 1 when bad (r->msg says why), -1 out of memory. */
static int take_row(reader *r, size_t off, size_t len, long row, long line, size_t line_start) {
    const char *path = r->out->path;
    const long bad = qft_ds_utf8_check(r->buf + off, len);
    if (bad >= 0) {
        const qft_ds_pos p = qft_ds_pos_at(r->buf, line_start, line, off + (size_t)bad);
        snprintf(r->msg, sizeof r->msg,
                 "%s:%ld:%ld: row %ld: not valid UTF-8 (byte 0x%02x at byte offset %ld of the file); "
                 "re-encode the file as UTF-8",
                 path, p.line, p.column, row, (unsigned)(unsigned char)r->buf[p.offset], p.offset);
        return 1;
    }
    json_error_t je;
    json_t *obj = json_loadb(r->buf + off, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!obj) {
        size_t at = je.position > 0 ? (size_t)je.position : 0;
        if (at > len) at = len;
        const qft_ds_pos p = qft_ds_pos_at(r->buf, line_start, line, off + at);
        snprintf(r->msg, sizeof r->msg, "%s:%ld:%ld: row %ld: malformed JSON: %s", path, p.line,
                 p.column, row, je.text);
        return 1;
    }
    if (!json_is_object(obj)) {
        snprintf(r->msg, sizeof r->msg, "%s:%ld: row %ld: expected a JSON object, got %s", path,
                 line, row, json_type_name(obj));
        json_decref(obj);
        return 1;
    }
    qft_ds_rows *o = r->out;
    if (o->n == r->cap && grow(r)) {
        json_decref(obj);
        return -1;
    }
    const char **cells = o->cells + (size_t)o->n * (size_t)o->n_fields; // (F)
    for (int f = 0; f < o->n_fields; f++) {
        const qft_ds_field *fd = &r->fields[f];
        const json_t *v = json_object_get(obj, fd->name);
        if (!v && fd->optional) {
            cells[f] = NULL;
            continue;
        }
        if (!v || !json_is_string(v)) {
            if (!v)
                snprintf(r->msg, sizeof r->msg, "%s:%ld: row %ld: missing field \"%s\"%s%s%s", path,
                         line, row, fd->name, fd->role ? " (" : "", fd->role ? fd->role : "",
                         fd->role ? ")" : "");
            else
                snprintf(r->msg, sizeof r->msg,
                         "%s:%ld: row %ld: field \"%s\" is %s, expected a string", path, line, row,
                         fd->name, json_type_name(v));
            json_decref(obj);
            return 1;
        }
        const size_t n = json_string_length(v);
        char *s = qft_ds_arena_alloc(&o->arena, n + 1);
        if (!s) {
            json_decref(obj);
            return -1;
        }
        memcpy(s, json_string_value(v), n);
        s[n] = 0;
        cells[f] = s;
    }
    json_decref(obj);
    o->row_no[o->n] = row;
    o->line[o->n] = line;
    o->n++;
    return 0;
}

/* Applies the bad-row policy to take_row's verdict; 0 = go on. */
static int settle(reader *r, int rc, qft_err *err) {
    r->out->n_seen++;
    if (rc == 0) return 0;
    if (rc < 0) return qft_err_setf(err, "%s: out of memory after %ld rows", r->out->path, r->out->n);
    if (!r->skip_bad) {
        qft_err_setf(err, "%s (set data.skip_bad_rows = true to skip bad rows and count them)", r->msg);
        return -1;
    }
    if (r->out->n_bad++ == 0) snprintf(r->out->first_bad, sizeof r->out->first_bad, "%s", r->msg);
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static int read_jsonl(reader *r, size_t i, qft_err *err) {
    long line = 1, row = 0;
    while (i < r->size) {
        const size_t ls = i;
        const char *nl = memchr(r->buf + ls, '\n', r->size - ls);
        const size_t le = nl ? (size_t)(nl - r->buf) : r->size;
        size_t e = le;
        if (e > ls && r->buf[e - 1] == '\r') e--;
        size_t s = ls;
        while (s < e && is_space(r->buf[s])) s++;
        if (s < e) { /* a blank line is no row */
            row++;
            if (settle(r, take_row(r, ls, e - ls, row, line, ls), err)) return -1;
        }
        line++;
        i = nl ? le + 1 : r->size;
    }
    return 0;
}

static int read_array(reader *r, size_t i, qft_err *err) {
    const char *b = r->buf, *path = r->out->path;
    const size_t n = r->size;
    long line = 1;
    size_t ls = 0; /* offset where `line` starts */
    for (size_t k = 0; k < i; k++)
        if (b[k] == '\n') line++, ls = k + 1;
    const qft_ds_pos open = qft_ds_pos_at(b, ls, line, i);
    i++; /* past '[' */
    long row = 0;
    int after_comma = 0;
    for (;;) {
        for (; i < n && is_space(b[i]); i++)
            if (b[i] == '\n') line++, ls = i + 1;
        if (i >= n)
            return qft_err_setf(err, "%s:%ld: unexpected end of file: the array opened at line %ld, "
                                     "column %ld is not closed with ']'",
                                path, line, open.line, open.column);
        if (b[i] == ']' || b[i] == ',') {
            if (b[i] == ']' && !after_comma) {
                i++;
                break;
            }
            const qft_ds_pos p = qft_ds_pos_at(b, ls, line, i);
            return qft_err_setf(err, "%s:%ld:%ld: malformed JSON: expected a row (an object) %s ','",
                                path, p.line, p.column, b[i] == ']' ? "after the last" : "before this");
        }
        /* One element: up to the ',' or ']' outside strings and brackets at its own level. */
        const size_t start = i;
        const long start_line = line;
        const size_t start_ls = ls;
        int depth = 0, in_str = 0;
        for (; i < n; i++) {
            const char c = b[i];
            if (c == '\n') line++, ls = i + 1;
            if (in_str) {
                if (c == '\\' && i + 1 < n) {
                    i++;
                    if (b[i] == '\n') line++, ls = i + 1;
                } else if (c == '"') {
                    in_str = 0;
                }
                continue;
            }
            if (c == '"') {
                in_str = 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (depth == 0) {
                    if (c == ']') break;
                    const qft_ds_pos p = qft_ds_pos_at(b, ls, line, i);
                    return qft_err_setf(err, "%s:%ld:%ld: malformed JSON: unexpected '}' in row %ld",
                                        path, p.line, p.column, row + 1);
                }
                depth--;
            } else if (c == ',' && depth == 0) {
                break;
            }
        }
        if (i >= n && (in_str || depth > 0))
            return qft_err_setf(err, "%s:%ld: unexpected end of file in row %ld (which starts on "
                                     "line %ld): %s is not closed",
                                path, line, row + 1, start_line,
                                in_str ? "a string" : "an object or array");
        if (i >= n)
            return qft_err_setf(err, "%s:%ld: unexpected end of file: the array opened at line %ld, "
                                     "column %ld is not closed with ']'",
                                path, line, open.line, open.column);
        size_t end = i;
        while (end > start && is_space(b[end - 1])) end--;
        row++;
        if (settle(r, take_row(r, start, end - start, row, start_line, start_ls), err)) return -1;
        after_comma = b[i] == ',';
        i++;
        if (!after_comma) break; /* that was the closing ']' */
    }
    for (; i < n && is_space(b[i]); i++)
        if (b[i] == '\n') line++, ls = i + 1;
    if (i < n) {
        const qft_ds_pos p = qft_ds_pos_at(b, ls, line, i);
        return qft_err_setf(err, "%s:%ld:%ld: malformed JSON: text after the array's closing ']'",
                            path, p.line, p.column);
    }
    return 0;
}

static int read_file(const qft_services *svc, const char *path, char **buf, size_t *size,
                     qft_err *err) {
    *buf = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return qft_err_setf(err, "%s: cannot open dataset file: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return qft_err_setf(err, "%s: cannot seek: %s", path, strerror(errno));
    }
    const long len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return qft_err_setf(err, "%s: cannot tell its size: %s", path, strerror(errno));
    }
    char *b = qft_ds_mem_alloc(svc, (size_t)len + 1);
    if (!b) {
        fclose(f);
        return qft_err_setf(err, "%s: out of memory reading %ld bytes", path, len);
    }
    const size_t got = fread(b, 1, (size_t)len, f);
    const int bad = ferror(f);
    fclose(f);
    if (bad || got != (size_t)len) {
        qft_ds_mem_free(svc, b);
        return qft_err_setf(err, "%s: read error after %zu of %ld bytes", path, got, len);
    }
    b[len] = 0;
    *buf = b;
    *size = (size_t)len;
    return 0;
}

int qft_ds_rows_read(const qft_services *svc, const char *path, const qft_ds_field *fields,
                     int n_fields, int skip_bad_rows, qft_ds_rows *out, qft_err *err) {
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);
    out->n_fields = n_fields;
    out->arena.svc = svc;
    char *buf;
    size_t size = 0;
    if (read_file(svc, path, &buf, &size, err)) return -1;
    reader r = {.svc = svc, .buf = buf, .size = size, .fields = fields, .skip_bad = skip_bad_rows,
                .out = out};
    size_t i = 0;
    if (size >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) i = 3; /* a UTF-8 byte order mark */
    size_t first = i;
    while (first < size && is_space(buf[first])) first++;
    int rc;
    if (first == size) {
        rc = qft_err_setf(err, "%s: empty file: no rows (expected JSONL, one object per line, or a "
                               "JSON array of objects)", path);
    } else if (buf[first] == '[') {
        out->format = QFT_DS_JSON_ARRAY;
        rc = read_array(&r, first, err);
    } else {
        out->format = QFT_DS_JSONL;
        rc = read_jsonl(&r, i, err);
    }
    qft_ds_mem_free(svc, buf);
    if (rc == 0 && out->n_seen == 0)
        rc = qft_err_setf(err, "%s: no rows (an empty JSON array)", path);
    else if (rc == 0 && out->n == 0)
        rc = qft_err_setf(err, "%s: all %ld rows are bad; the first: %s", path, out->n_seen,
                          out->first_bad);
    if (rc) qft_ds_rows_free(out);
    return rc;
}

void qft_ds_rows_free(qft_ds_rows *r) {
    const qft_services *svc = r->arena.svc;
    qft_ds_mem_free(svc, (void *)r->cells);
    qft_ds_mem_free(svc, r->row_no);
    qft_ds_mem_free(svc, r->line);
    qft_ds_arena_free(&r->arena);
    r->cells = NULL;
    r->row_no = r->line = NULL;
    r->n = 0;
}
