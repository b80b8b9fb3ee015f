/* Reading a dataset file into rows of named string fields: JSONL (one object per line) or
 * a JSON array of objects, told apart by the first non-space byte ('[' = array). Each row
 * is parsed on its own with jansson and only the asked-for fields are kept, so a 200k-row
 * file costs its text, not a tree of JSON objects.
 *
 * A bad row -- malformed JSON, bytes that are not UTF-8, not an object, a missing or
 * non-string field -- stops the read with its position (file:line:column, row number,
 * byte offset) unless skip_bad_rows, which skips it and counts it. Faults that leave no
 * rows to speak of (an unreadable or empty file, an array that never closes) always stop. */
#ifndef QFT_DS_ROWS_H
#define QFT_DS_ROWS_H

#include "qft_sdk.h"

enum { QFT_DS_JSONL = 0, QFT_DS_JSON_ARRAY = 1 };

typedef struct qft_ds_field {
    const char *name;
    int optional;     /* absent -> NULL cell instead of an error */
    const char *role; /* why the field is needed, for messages (may be NULL) */
} qft_ds_field;

/* Strings of a table live in large blocks freed together. */
typedef struct qft_ds_block qft_ds_block;
typedef struct qft_ds_arena {
    const qft_services *svc;
    qft_ds_block *head;
} qft_ds_arena;

void *qft_ds_arena_alloc(qft_ds_arena *a, size_t bytes);
void qft_ds_arena_free(qft_ds_arena *a);
/* Memory through the services table when there is one (counted in the run's report). */
void *qft_ds_mem_alloc(const qft_services *svc, size_t bytes);
void qft_ds_mem_free(const qft_services *svc, void *p);

typedef struct qft_ds_rows {
    char path[1024];
    int format;          /* QFT_DS_JSONL or QFT_DS_JSON_ARRAY */
    int n_fields;
    long n;              /* rows kept */
    const char **cells;  // (n, n_fields): NUL-terminated UTF-8, NULL for an absent optional
    long *row_no;        // (n): the row's 1-based number among the file's rows
    long *line;          // (n): the line the row starts on
    long n_seen;         /* rows in the file, bad ones included */
    long n_bad;          /* rows skipped under skip_bad_rows */
    char first_bad[1536]; /* the message of the first skipped row */
    qft_ds_arena arena;
} qft_ds_rows;

int qft_ds_rows_read(const qft_services *svc, const char *path, const qft_ds_field *fields,
                     int n_fields, int skip_bad_rows, qft_ds_rows *out, qft_err *err);
void qft_ds_rows_free(qft_ds_rows *r);

#endif
