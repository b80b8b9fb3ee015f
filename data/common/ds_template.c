/* The `{field}` templates of ds_template.h. */
#include "ds_template.h"

#include <stdlib.h>
#include <string.h>

static int name_index(qft_ds_template *t, const char *name, size_t len) {
    for (int k = 0; k < t->n_names; k++)
        if (strlen(t->names[k]) == len && memcmp(t->names[k], name, len) == 0) return k;
    return -1;
}

int qft_ds_template_parse(const char *tmpl, const char *what, qft_ds_template *t, qft_err *err) {
    memset(t, 0, sizeof *t);
    const size_t n = strlen(tmpl);
    /* Literal text shrinks when braces are unescaped and names are copied out once, so the
     * template's own length bounds all the storage; +MAX for the names' terminators. */
    t->storage = malloc(2 * n + QFT_DS_TEMPLATE_MAX_PARTS + 1);
    if (!t->storage) return qft_err_setf(err, "%s: out of memory", what);
    char *w = t->storage;
    size_t i = 0;
    while (i < n) {
        if (t->n_parts == QFT_DS_TEMPLATE_MAX_PARTS) {
            qft_ds_template_free(t);
            return qft_err_setf(err, "%s: more than %d pieces (text and placeholders)", what,
                                QFT_DS_TEMPLATE_MAX_PARTS);
        }
        if (tmpl[i] == '{' && (i + 1 >= n || tmpl[i + 1] != '{')) {
            const char *close = strchr(tmpl + i + 1, '}');
            const char *open = strchr(tmpl + i + 1, '{');
            if (!close || (open && open < close)) {
                qft_ds_template_free(t);
                return qft_err_setf(err, "%s: the '{' at character %zu has no closing '}' (write "
                                         "'{{' for a literal brace)", what, i + 1);
            }
            const char *name = tmpl + i + 1;
            const size_t len = (size_t)(close - name);
            if (len == 0) {
                qft_ds_template_free(t);
                return qft_err_setf(err, "%s: empty placeholder '{}' at character %zu: name a field, "
                                         "e.g. {question}", what, i + 1);
            }
            if (strcspn(name, "!:.[") < len) {
                qft_ds_template_free(t);
                return qft_err_setf(err, "%s: placeholder {%.*s}: only plain field names are "
                                         "supported (no format specs, conversions, '.' or '[')",
                                    what, (int)len, name);
            }
            int k = name_index(t, name, len);
            if (k < 0) {
                k = t->n_names++;
                t->names[k] = w;
                memcpy(w, name, len);
                w[len] = 0;
                w += len + 1;
            }
            t->field[t->n_parts] = k;
            t->text[t->n_parts] = NULL;
            t->text_len[t->n_parts] = 0;
            t->n_parts++;
            i += len + 2;
            continue;
        }
        /* A run of literal text up to the next lone brace. */
        t->text[t->n_parts] = w;
        t->field[t->n_parts] = -1;
        size_t len = 0;
        while (i < n) {
            if ((tmpl[i] == '{' || tmpl[i] == '}') && i + 1 < n && tmpl[i + 1] == tmpl[i]) {
                w[len++] = tmpl[i];
                i += 2;
            } else if (tmpl[i] == '{') {
                break;
            } else if (tmpl[i] == '}') {
                qft_ds_template_free(t);
                return qft_err_setf(err, "%s: single '}' at character %zu (write '}}' for a literal "
                                         "brace)", what, i + 1);
            } else {
                w[len++] = tmpl[i++];
            }
        }
        t->text_len[t->n_parts] = len;
        w += len;
        t->n_parts++;
    }
    return 0;
}

char *qft_ds_template_render(const qft_ds_template *t, const char *const *values,
                             qft_ds_arena *arena) {
    size_t total = 1;
    for (int p = 0; p < t->n_parts; p++)
        total += t->field[p] < 0 ? t->text_len[p] : strlen(values[t->field[p]]);
    char *out = qft_ds_arena_alloc(arena, total);
    if (!out) return NULL;
    char *w = out;
    for (int p = 0; p < t->n_parts; p++) {
        const char *s = t->field[p] < 0 ? t->text[p] : values[t->field[p]];
        const size_t len = t->field[p] < 0 ? t->text_len[p] : strlen(s);
        memcpy(w, s, len);
        w += len;
    }
    *w = 0;
    return out;
}

void qft_ds_template_free(qft_ds_template *t) {
    free(t->storage);
    memset(t, 0, sizeof *t);
}
