/* The `adapter` section of a run's config for lora and dora, which tensors a linear gets,
 * and the adapter_config.json members PEFT expects for them. */
#include "lora_common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const qft_lora_module_names[QFT_LORA_N_MODULES] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

const char *const qft_lora_config_keys[] = {
    "rank",           "alpha", "dropout", "rslora", "target_modules", "init_lora_weights",
    "norm_tile_rows", NULL};

#define BIT(k) (1u << (k))
/* fsdp_qlora's "all" leaves o_proj out; PEFT's "all-linear" takes every linear but the
 * head, which qft never offers to adapters; PEFT's default for Llama is q and v. */
#define TARGETS_ALL                                                                                \
    (BIT(QFT_LORA_Q) | BIT(QFT_LORA_K) | BIT(QFT_LORA_V) | BIT(QFT_LORA_GATE) | BIT(QFT_LORA_UP) | \
     BIT(QFT_LORA_DOWN))
#define TARGETS_ALL_LINEAR (TARGETS_ALL | BIT(QFT_LORA_O))
#define TARGETS_DEFAULT (BIT(QFT_LORA_Q) | BIT(QFT_LORA_V))

static const char *where(const config_setting_t *s, char *buf, size_t size) {
    const char *file = config_setting_source_file(s);
    snprintf(buf, size, "%s:%u: adapter.%s", file ? file : "<config>",
             config_setting_source_line(s), config_setting_name(s) ? config_setting_name(s) : "?");
    return buf;
}

static int module_index(const char *name) {
    for (int k = 0; k < QFT_LORA_N_MODULES; k++)
        if (!strcmp(name, qft_lora_module_names[k])) return k;
    return -1;
}

/* The module a target names: its last dot-separated part ("self_attn.q_proj" -> q_proj). */
static int target_module(const char *t) {
    const char *dot = strrchr(t, '.');
    return module_index(dot ? dot + 1 : t);
}

static int read_number(const config_setting_t *sec, const char *key, double def, double lo,
                       double hi, int hi_open, double *out, qft_err *err) {
    *out = def;
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 0;
    char w[512];
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        *out = (double)config_setting_get_int64(s);
    else if (t == CONFIG_TYPE_FLOAT)
        *out = config_setting_get_float(s);
    else
        return qft_err_setf(err, "%s: expected a number", where(s, w, sizeof w));
    if (!(*out >= lo) || (hi_open ? !(*out < hi) : !(*out <= hi)))
        return qft_err_setf(err, "%s = %g: must be in [%g, %g%c", where(s, w, sizeof w), *out, lo,
                            hi, hi_open ? ')' : ']');
    return 0;
}

static int read_int(const config_setting_t *sec, const char *key, long long def, long long lo,
                    long long hi, long long *out, qft_err *err) {
    *out = def;
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 0;
    char w[512];
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return qft_err_setf(err, "%s: expected an integer", where(s, w, sizeof w));
    *out = config_setting_get_int64(s);
    if (*out < lo || *out > hi)
        return qft_err_setf(err, "%s = %lld: must be between %lld and %lld", where(s, w, sizeof w),
                            *out, lo, hi);
    return 0;
}

static int read_bool(const config_setting_t *sec, const char *key, int def, int *out,
                     qft_err *err) {
    *out = def;
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 0;
    char w[512];
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return qft_err_setf(err, "%s: expected true or false", where(s, w, sizeof w));
    *out = config_setting_get_bool(s);
    return 0;
}

static char *dup_str(const qft_services *svc, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = qft_lora_alloc(svc, n, "adapter config");
    if (d) memcpy(d, s, n);
    return d;
}

static int read_targets(qft_lora_config *c, const config_setting_t *sec, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, "target_modules") : NULL;
    c->target_mask = TARGETS_DEFAULT;
    if (!s) return 0;
    char w[512];
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_STRING) {
        const char *v = config_setting_get_string(s);
        if (!strcmp(v, "all"))
            c->target_mask = TARGETS_ALL;
        else if (!strcmp(v, "all-linear"))
            c->target_mask = TARGETS_ALL_LINEAR;
        else if (!strcmp(v, "default"))
            c->target_mask = TARGETS_DEFAULT;
        else {
            /* any other string is, as in PEFT, a regular expression the whole module name
             * must match */
            c->target_mask = 0;
            size_t n = strlen(v) + 8;
            char *anchored = qft_lora_alloc(c->svc, n, "adapter config");
            c->target_regex = dup_str(c->svc, v);
            if (!anchored || !c->target_regex) {
                qft_lora_free(c->svc, anchored);
                return qft_err_setf(err, "%s: out of memory", where(s, w, sizeof w));
            }
            snprintf(anchored, n, "^(%s)$", v);
            int rc = regcomp(&c->re, anchored, REG_EXTENDED | REG_NOSUB);
            qft_lora_free(c->svc, anchored);
            if (rc) {
                char msg[256];
                regerror(rc, &c->re, msg, sizeof msg);
                return qft_err_setf(err,
                                    "%s = \"%s\": not \"all\", \"all-linear\", \"default\", "
                                    "a list of module names, or a valid regular expression "
                                    "(%s)",
                                    where(s, w, sizeof w), v, msg);
            }
            c->has_re = 1;
        }
        return 0;
    }
    if (t != CONFIG_TYPE_LIST && t != CONFIG_TYPE_ARRAY)
        return qft_err_setf(err,
                            "%s: expected a list of module names or \"all\", "
                            "\"all-linear\", \"default\"",
                            where(s, w, sizeof w));
    int n = config_setting_length(s);
    if (n == 0) return qft_err_setf(err, "%s: the list is empty", where(s, w, sizeof w));
    c->target_mask = 0;
    c->target_list = qft_lora_alloc(c->svc, (size_t)n * sizeof *c->target_list, "adapter config");
    if (!c->target_list) return qft_err_setf(err, "%s: out of memory", where(s, w, sizeof w));
    memset(c->target_list, 0, (size_t)n * sizeof *c->target_list);
    c->n_targets = n;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v =
            config_setting_type(e) == CONFIG_TYPE_STRING ? config_setting_get_string(e) : NULL;
        if (!v) return qft_err_setf(err, "%s[%d]: expected a string", where(s, w, sizeof w), i);
        int k = target_module(v);
        if (k < 0) {
            char known[256] = "";
            for (int j = 0; j < QFT_LORA_N_MODULES; j++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", j ? ", " : "",
                         qft_lora_module_names[j]);
            return qft_err_setf(err, "%s[%d] = \"%s\": not a linear of a Llama block (%s)",
                                where(s, w, sizeof w), i, v, known);
        }
        c->target_mask |= BIT(k);
        if (!(c->target_list[i] = dup_str(c->svc, v)))
            return qft_err_setf(err, "%s: out of memory", where(s, w, sizeof w));
    }
    return 0;
}

static int read_init(qft_lora_config *c, const config_setting_t *sec, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, "init_lora_weights") : NULL;
    c->init = QFT_LORA_INIT_DEFAULT;
    if (!s) return 0;
    char w[512];
    if (config_setting_type(s) == CONFIG_TYPE_BOOL) {
        c->init = config_setting_get_bool(s) ? QFT_LORA_INIT_DEFAULT : QFT_LORA_INIT_NONE;
        return 0;
    }
    if (config_setting_type(s) == CONFIG_TYPE_STRING &&
        !strcmp(config_setting_get_string(s), "gaussian")) {
        c->init = QFT_LORA_INIT_GAUSSIAN;
        return 0;
    }
    return qft_err_setf(err, "%s: expected true, false or \"gaussian\"", where(s, w, sizeof w));
}

int qft_lora_configure(const qft_services *svc, const config_setting_t *section, int dora,
                       void **state, qft_err *err) {
    *state = NULL;
    if (svc && svc->config_check_keys && section &&
        svc->config_check_keys(section, qft_lora_config_keys, err))
        return -1;
    qft_lora_config *c = qft_lora_alloc(svc, sizeof *c, "adapter config");
    if (!c) return qft_err_setf(err, "adapter: out of memory");
    memset(c, 0, sizeof *c);
    c->svc = svc;
    c->dora = dora;
    c->scratch = qft_lora_alloc(svc, sizeof *c->scratch, "adapter config");
    if (!c->scratch) {
        qft_lora_close(c);
        return qft_err_setf(err, "adapter: out of memory");
    }
    memset(c->scratch, 0, sizeof *c->scratch);
    long long r, tile;
    int bad = read_int(section, "rank", 8, 1, 1 << 16, &r, err) ||
              read_number(section, "alpha", 8.0, 1e-12, 1e12, 0, &c->alpha, err) ||
              read_number(section, "dropout", 0.0, 0.0, 1.0, 1, &c->dropout, err) ||
              read_bool(section, "rslora", 0, &c->rslora, err) || read_targets(c, section, err) ||
              read_init(c, section, err) ||
              read_int(section, "norm_tile_rows", 0, 0, 1 << 30, &tile, err);
    if (bad) {
        qft_lora_close(c);
        return -1;
    }
    c->r = (int)r;
    c->tile_rows = (int)tile;
    c->scale = (float)(c->rslora ? c->alpha / sqrt((double)c->r) : c->alpha / (double)c->r);
    *state = c;
    return 0;
}

int qft_lora_targets(const void *state, const qft_linear_base *lin) {
    const qft_lora_config *c = state;
    if (c->has_re) return regexec(&c->re, lin->name, 0, NULL, 0) == 0;
    if (c->target_list) {
        /* PEFT's rule: the target is the module's full name or a dotted suffix of it */
        size_t ln = strlen(lin->name);
        for (int i = 0; i < c->n_targets; i++) {
            const char *t = c->target_list[i];
            size_t tn = strlen(t);
            if (!strcmp(lin->name, t) ||
                (ln > tn && lin->name[ln - tn - 1] == '.' && !strcmp(lin->name + ln - tn, t)))
                return 1;
        }
        return 0;
    }
    int k = module_index(lin->module);
    return k >= 0 && (c->target_mask & BIT(k));
}

static void set_param(qft_adapter_param *p, const char *suffix, int ndim, int64_t d0, int64_t d1) {
    memset(p, 0, sizeof *p);
    snprintf(p->suffix, sizeof p->suffix, "%s", suffix);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
}

int qft_lora_declare(const void *state, const qft_linear_base *lin, qft_adapter_param *params,
                     int *n, qft_err *err) {
    const qft_lora_config *c = state;
    if (lin->out <= 0 || lin->in <= 0)
        return qft_err_setf(err, "%s: adapter on a linear of shape (%lld, %lld)", lin->name,
                            (long long)lin->out, (long long)lin->in);
    set_param(&params[0], "lora_A.weight", 2, c->r, lin->in);  // (r, in)
    set_param(&params[1], "lora_B.weight", 2, lin->out, c->r); // (out, r)
    *n = 2;
    if (c->dora) set_param(&params[(*n)++], "lora_magnitude_vector", 1, lin->out, 0); // (out)
    return 0;
}

/* Appends s JSON-escaped and quoted. */
static void put_json_string(char *buf, size_t size, size_t *used, const char *s) {
    char tmp[8];
    if (*used < size) *used += (size_t)snprintf(buf + *used, size - *used, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            snprintf(tmp, sizeof tmp, "\\%c", ch);
        else if (ch < 0x20)
            snprintf(tmp, sizeof tmp, "\\u%04x", ch);
        else
            snprintf(tmp, sizeof tmp, "%c", ch);
        if (*used < size) *used += (size_t)snprintf(buf + *used, size - *used, "%s", tmp);
    }
    if (*used < size) *used += (size_t)snprintf(buf + *used, size - *used, "\"");
}

/* The shortest %g text that reads back as v. */
static void fmt_double(char *out, size_t size, double v) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, size, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    if (!strpbrk(out, ".eEn")) snprintf(out + strlen(out), size - strlen(out), ".0");
}

int qft_lora_peft_config(const void *state, char *buf, size_t size, qft_err *err) {
    const qft_lora_config *c = state;
    size_t used = 0;
    char alpha[64], drop[64];
    /* PEFT keeps lora_alpha an int when it is one */
    if (c->alpha == floor(c->alpha) && fabs(c->alpha) < 1e15)
        snprintf(alpha, sizeof alpha, "%lld", (long long)c->alpha);
    else
        fmt_double(alpha, sizeof alpha, c->alpha);
    fmt_double(drop, sizeof drop, c->dropout);
    used += (size_t)snprintf(buf, size,
                             "\"r\": %d, \"lora_alpha\": %s, \"lora_dropout\": %s, "
                             "\"use_dora\": %s, \"use_rslora\": %s, "
                             "\"init_lora_weights\": %s, \"target_modules\": ",
                             c->r, alpha, drop, c->dora ? "true" : "false",
                             c->rslora ? "true" : "false",
                             c->init == QFT_LORA_INIT_GAUSSIAN ? "\"gaussian\""
                             : c->init == QFT_LORA_INIT_NONE   ? "false"
                                                               : "true");
    if (c->has_re) {
        put_json_string(buf, size, &used, c->target_regex);
    } else {
        if (used < size) used += (size_t)snprintf(buf + used, size - used, "[");
        int first = 1;
        if (c->target_list) {
            for (int i = 0; i < c->n_targets; i++, first = 0) {
                if (!first && used < size) used += (size_t)snprintf(buf + used, size - used, ", ");
                put_json_string(buf, size, &used, c->target_list[i]);
            }
        } else {
            for (int k = 0; k < QFT_LORA_N_MODULES; k++) {
                if (!(c->target_mask & BIT(k))) continue;
                if (!first && used < size) used += (size_t)snprintf(buf + used, size - used, ", ");
                put_json_string(buf, size, &used, qft_lora_module_names[k]);
                first = 0;
            }
        }
        if (used < size) used += (size_t)snprintf(buf + used, size - used, "]");
    }
    if (used >= size)
        return qft_err_setf(err, "adapter: peft_config needs more than %zu bytes", size);
    return 0;
}

void qft_lora_close(void *state) {
    qft_lora_config *c = state;
    if (!c) return;
    const qft_services *svc = c->svc;
    if (c->scratch) {
        qft_lora_scratch_release(c->scratch);
        qft_lora_free(svc, c->scratch);
    }
    if (c->target_list) {
        for (int i = 0; i < c->n_targets; i++) qft_lora_free(svc, c->target_list[i]);
        qft_lora_free(svc, c->target_list);
    }
    if (c->has_re) regfree(&c->re);
    qft_lora_free(svc, c->target_regex);
    qft_lora_free(svc, c);
}
