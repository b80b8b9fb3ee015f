/* synth_math: the project's own dataset of grade-school math word problems, generated
 * from a seed rather than read from a file, in the Orca-Math schema (question, answer)
 * with the seed's Orca-Math prompt template. Config keys in `data`: count (default 2000)
 * and seed (default 42). The problems themselves are made in synth_math_gen.c. */
#include "qft_sdk.h"
#include "synth_math_gen.h"

#include <stdlib.h>
#include <string.h>

#define SYNTH_MATH_DEFAULT_COUNT 2000
#define SYNTH_MATH_DEFAULT_SEED 42
#define SYNTH_MATH_MAX_COUNT 10000000L

static const char *const k_keys[] = {"count", "seed", NULL};

typedef struct state {
    const qft_services *svc;
    long count;
    char **prompt;   /* [count] "###Question:\n{question}\n###Answer:\n" */
    char **response; /* [count] the step-by-step answer */
} state;

static void *sm_alloc(const qft_services *svc, size_t bytes) {
    return svc && svc->alloc ? svc->alloc(bytes, "dataset synth_math") : malloc(bytes);
}

static void sm_free(const qft_services *svc, void *p) {
    if (!p) return;
    if (svc && svc->free)
        svc->free(p);
    else
        free(p);
}

static char *sm_strdup(const qft_services *svc, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sm_alloc(svc, n);
    if (d) memcpy(d, s, n);
    return d;
}

/* An integer key of `section`, or def when absent; errors give file, line and key. */
static int read_int(const config_setting_t *section, const char *key, long long def,
                    long long min, long long max, long long *out, qft_err *err) {
    *out = def;
    if (!section) return 0;
    config_setting_t *s = config_setting_get_member(section, key);
    if (!s) return 0;
    const char *file = config_setting_source_file(s);
    int line = (int)config_setting_source_line(s);
    int type = config_setting_type(s);
    if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
        return qft_err_setf(err, "%s:%d: data.%s must be an integer", file ? file : "<config>", line,
                            key);
    long long v = config_setting_get_int64(s);
    if (v < min || v > max)
        return qft_err_setf(err, "%s:%d: data.%s = %lld: must be between %lld and %lld",
                            file ? file : "<config>", line, key, v, min, max);
    *out = v;
    return 0;
}

static void sm_close(void *p) {
    state *st = p;
    if (!st) return;
    const qft_services *svc = st->svc;
    for (long i = 0; i < st->count; i++) {
        if (st->prompt) sm_free(svc, st->prompt[i]);
        if (st->response) sm_free(svc, st->response[i]);
    }
    sm_free(svc, st->prompt);
    sm_free(svc, st->response);
    sm_free(svc, st);
}

static int sm_open(const qft_services *svc, const config_setting_t *section, void **out,
                   qft_err *err) {
    *out = NULL;
    if (svc && svc->config_check_keys && section &&
        svc->config_check_keys(section, k_keys, err) != 0)
        return -1;
    long long count, seed;
    if (read_int(section, "count", SYNTH_MATH_DEFAULT_COUNT, 1, SYNTH_MATH_MAX_COUNT, &count, err) ||
        read_int(section, "seed", SYNTH_MATH_DEFAULT_SEED, 0, INT64_MAX, &seed, err))
        return -1;
    state *st = sm_alloc(svc, sizeof *st);
    if (!st) return qft_err_setf(err, "synth_math: out of memory");
    memset(st, 0, sizeof *st);
    st->svc = svc;
    st->prompt = sm_alloc(svc, (size_t)count * sizeof(char *));   // [count]
    st->response = sm_alloc(svc, (size_t)count * sizeof(char *)); // [count]
    if (!st->prompt || !st->response) {
        sm_close(st);
        return qft_err_setf(err, "synth_math: out of memory for %lld problems", count);
    }
    memset(st->prompt, 0, (size_t)count * sizeof(char *));
    memset(st->response, 0, (size_t)count * sizeof(char *));
    st->count = (long)count;
    qft_synth_math_problem pr;
    char prompt[sizeof pr.question + 64];
    for (long i = 0; i < st->count; i++) {
        if (qft_synth_math_make((uint64_t)seed, i, &pr) != 0) {
            sm_close(st);
            return qft_err_setf(err, "synth_math: problem %ld (template %s) does not fit its buffer", i,
                                qft_synth_math_template_name(pr.template_id));
        }
        snprintf(prompt, sizeof prompt, "###Question:\n%s\n###Answer:\n", pr.question);
        st->prompt[i] = sm_strdup(svc, prompt);
        st->response[i] = sm_strdup(svc, pr.solution);
        if (!st->prompt[i] || !st->response[i]) {
            sm_close(st);
            return qft_err_setf(err, "synth_math: out of memory at problem %ld", i);
        }
    }
    *out = st;
    return 0;
}

static long sm_count(const void *p) { return ((const state *)p)->count; }

static int sm_get(const void *p, long index, const char **prompt, const char **response,
                  qft_err *err) {
    const state *st = p;
    if (index < 0 || index >= st->count)
        return qft_err_setf(err, "synth_math: example %ld out of range (count %ld)", index, st->count);
    *prompt = st->prompt[index];
    *response = st->response[index];
    return 0;
}

static const qft_dataset_vtable k_vtable = {
    .config_keys = k_keys,
    .open = sm_open,
    .count = sm_count,
    .get = sm_get,
    .close = sm_close,
};

static const qft_plugin_desc k_desc = {
    .abi_version = QFT_ABI_VERSION,
    .kind = QFT_KIND_DATASET,
    .name = "synth_math",
    .version = "1.0.0",
    .description = "generated grade-school math word problems (Orca-Math schema, GSM8K-style answers)",
    .vtable = &k_vtable,
};

__attribute__((visibility("default"))) const qft_plugin_desc *qft_plugin_entry(void) {
    return &k_desc;
}
