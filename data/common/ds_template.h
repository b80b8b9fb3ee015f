/* Prompt templates with `{field}` placeholders, as Python's str.format_map reads them for
 * plain names: `{{` and `}}` are literal braces; format specs, conversions, attribute and
 * index access (`{a:>4}`, `{a!r}`, `{a.b}`, `{a[0]}`) are refused with the offending
 * placeholder named, so a template never silently means something else here. */
#ifndef QFT_DS_TEMPLATE_H
#define QFT_DS_TEMPLATE_H

#include "ds_rows.h"

#define QFT_DS_TEMPLATE_MAX_PARTS 64

typedef struct qft_ds_template {
    int n_parts;
    /* part i: literal text (field[i] < 0) or the value of field number field[i] */
    const char *text[QFT_DS_TEMPLATE_MAX_PARTS]; /* literal pieces, braces unescaped */
    size_t text_len[QFT_DS_TEMPLATE_MAX_PARTS];
    int field[QFT_DS_TEMPLATE_MAX_PARTS];
    int n_names;
    char *names[QFT_DS_TEMPLATE_MAX_PARTS]; /* distinct placeholder names, first use first */
    char *storage;                           /* one allocation behind text[] and names[] */
} qft_ds_template;

/* Parses `tmpl`; `what` names it in messages (e.g. "/a/run.cfg:7: data.prompt_template"). */
int qft_ds_template_parse(const char *tmpl, const char *what, qft_ds_template *t, qft_err *err);
/* Renders with values[k] the value of names[k]; the result lives in the arena. */
char *qft_ds_template_render(const qft_ds_template *t, const char *const *values,
                             qft_ds_arena *arena);
void qft_ds_template_free(qft_ds_template *t);

#endif
