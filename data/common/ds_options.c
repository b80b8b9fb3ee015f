/* Option reading and row selection of ds_options.h. */
#include "ds_options.h"

#include "np_random.h"

#include <stdlib.h>
#include <string.h>

static int where(const config_setting_t *s, char *buf, size_t n) {
    const char *file = config_setting_source_file(s);
    const unsigned line = config_setting_source_line(s);
    if (line)
        snprintf(buf, n, "%s:%u: data.%s", file ? file : "<config>", line, config_setting_name(s));
    else /* set on the command line */
        snprintf(buf, n, "--set data.%s", config_setting_name(s));
    return 0;
}

static int get_int(const config_setting_t *sec, const char *key, long long min, long long max,
                   long long *v, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 0;
    char w[1200];
    where(s, w, sizeof w);
    const int t = config_setting_type(s);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return qft_err_setf(err, "%s: expected an integer", w);
    const long long x = config_setting_get_int64(s);
    if (x < min || x > max)
        return qft_err_setf(err, "%s = %lld: must be between %lld and %lld", w, x, min, max);
    *v = x;
    return 0;
}

static int get_bool(const config_setting_t *sec, const char *key, int *v, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 0;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        char w[1200];
        where(s, w, sizeof w);
        return qft_err_setf(err, "%s: expected true or false", w);
    }
    *v = config_setting_get_bool(s);
    return 0;
}

static int get_string(const config_setting_t *sec, const char *key, const char **v, qft_err *err) {
    const config_setting_t *s = sec ? config_setting_get_member(sec, key) : NULL;
    if (!s) return 0;
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        char w[1200];
        where(s, w, sizeof w);
        return qft_err_setf(err, "%s: expected a string", w);
    }
    *v = config_setting_get_string(s);
    return 0;
}

int qft_ds_config_string(const config_setting_t *section, const char *key, int required,
                         const char **v, qft_err *err) {
    *v = NULL;
    if (get_string(section, key, v, err)) return -1;
    if (required && (!*v || !**v)) {
        const char *file = section ? config_setting_source_file(section) : NULL;
        return qft_err_setf(err, "%s%sdata.%s is required", file ? file : "", file ? ": " : "", key);
    }
    return 0;
}

int qft_ds_opts_read(const config_setting_t *section, int default_shuffle, qft_ds_opts *o,
                     qft_err *err) {
    memset(o, 0, sizeof *o);
    long long samples = -1, holdout = 0, seed = 42, pool = -1;
    int skip = 0, shuffle = default_shuffle;
    const char *path = NULL, *split = "train";
    if (get_int(section, "dataset_samples", -1, 1LL << 40, &samples, err) ||
        get_int(section, "eval_holdout", 0, 1LL << 40, &holdout, err) ||
        get_int(section, "seed", 0, 1LL << 62, &seed, err) ||
        get_int(section, "eval_pool", 0, 1LL << 40, &pool, err) ||
        get_bool(section, "skip_bad_rows", &skip, err) ||
        get_bool(section, "shuffle", &shuffle, err) || get_string(section, "path", &path, err) ||
        get_string(section, "split", &split, err))
        return -1;
    if (!path || !*path)
        return qft_err_setf(err, "%s%sdata.path is required: the local dataset file (JSONL or a JSON "
                                 "array)",
                            section && config_setting_source_file(section)
                                ? config_setting_source_file(section) : "",
                            section && config_setting_source_file(section) ? ": " : "");
    if (strcmp(split, "train") != 0 && strcmp(split, "eval") != 0) {
        char w[1200];
        where(config_setting_get_member(section, "split"), w, sizeof w);
        return qft_err_setf(err, "%s = \"%s\": expected \"train\" or \"eval\"", w, split);
    }
    /* "~/" is the one shell expansion a config path gets: configs are shared between users. */
    const char *home = getenv("HOME");
    if (path[0] == '~' && path[1] == '/' && home)
        snprintf(o->path, sizeof o->path, "%s%s", home, path + 1);
    else
        snprintf(o->path, sizeof o->path, "%s", path);
    o->dataset_samples = (long)samples;
    o->eval_holdout = (long)holdout;
    o->seed = (uint64_t)seed;
    o->skip_bad_rows = skip;
    o->shuffle = shuffle;
    o->split_eval = strcmp(split, "eval") == 0;
    o->eval_pool = (long)pool;
    return 0;
}

int qft_ds_select(const qft_services *svc, const qft_ds_opts *o, long n, long pool, long **idx,
                  long *count, qft_err *err) {
    *idx = NULL;
    *count = 0;
    if (o->eval_holdout > pool)
        return qft_err_setf(err, "%s: data.eval_holdout = %ld is larger than the validation pool "
                                 "(%ld rows)", o->path, o->eval_holdout, pool);
    if (pool > n || (!o->split_eval && pool == n))
        return qft_err_setf(err, "%s: %ld usable rows cannot hold a validation pool of %ld rows and "
                                 "leave rows to train on (lower data.eval_holdout)",
                            o->path, n, pool);
    if (o->split_eval && o->eval_holdout == 0)
        return qft_err_setf(err, "%s: data.split = \"eval\" needs data.eval_holdout > 0 (how many "
                                 "validation rows to score)", o->path);
    long first, len;
    if (o->split_eval) {
        first = n - pool;
        len = o->eval_holdout;
    } else {
        first = 0;
        len = n - pool;
        if (o->dataset_samples >= 0 && o->dataset_samples < len) len = o->dataset_samples;
    }
    long *order = qft_ds_mem_alloc(svc, (size_t)n * sizeof *order); // (n)
    if (!order) return qft_err_setf(err, "%s: out of memory for the order of %ld rows", o->path, n);
    if (o->shuffle)
        qft_np_permutation(o->seed, n, order);
    else
        for (long i = 0; i < n; i++) order[i] = i;
    if (first > 0) memmove(order, order + first, (size_t)len * sizeof *order);
    *idx = order; /* only the first len entries are meaningful */
    *count = len;
    return 0;
}
