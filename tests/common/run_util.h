/* Helpers of the tests that drive `qft train` as a command (tests/apps/test_resume.c,
 * tests/shard/test_resume_ranks.c, tests/shard/test_shard_equiv.c): run a command, read a
 * run's metrics.jsonl, compare two runs' tensors. Static functions in a header, since each
 * test is one translation unit and they share nothing else. */
#ifndef QFT_TEST_RUN_UTIL_H
#define QFT_TEST_RUN_UTIL_H

#include "safetensors.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define RU_MAX_STEPS 64

typedef struct ru_row {
    long step;
    double loss, lr, grad_norm;
} ru_row;

/* Runs cmd through the shell, its stdout and stderr into out; returns the wait status. */
static inline int ru_run(const char *cmd, char *out, size_t size) {
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "popen failed: %s", cmd);
    size_t len = 0;
    while (len + 1 < size) {
        size_t got = fread(out + len, 1, size - 1 - len, p);
        if (got == 0) break;
        len += got;
    }
    out[len] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0) {
    }
    return pclose(p);
}

/* The tiny random Llama the backend tests train (tests/apps): 4 steps of 2 rows, hidden 64,
 * 2 layers, context 192, saved in f32, every step logged. */
#define RU_TINY_LLAMA                                                                        \
    "--set train.max_steps=4 --set data.count=24 --set train.batch_size=2 "                  \
    "--set model.config.hidden_size=64 --set model.config.intermediate_size=128 "            \
    "--set model.config.num_hidden_layers=2 --set model.config.num_attention_heads=2 "       \
    "--set model.config.num_key_value_heads=1 --set data.context_length=192 "                \
    "--set output.save_dtype=\\\"f32\\\" --set train.log_every=1"

/* qft train $QFT_SOURCE_ROOT/configs/<type>.cfg ($QFT_BIN) under `pre` (environment and
 * launcher words, or "") with RU_TINY_LLAMA and `sets`, into dir, with -q when quiet;
 * returns the wait status, and *out (may be NULL) its stdout and stderr (a static buffer,
 * until the next call). */
static inline int ru_train_run(const char *pre, const char *type, const char *sets,
                               const char *dir, int quiet, const char **out) {
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    ck_assert_msg(qft && root, "QFT_BIN and QFT_SOURCE_ROOT must be set");
    char cmd[16384];
    static char buf[1 << 18];
    snprintf(cmd, sizeof cmd,
             "%s %s train %s/configs/%s.cfg %s %s --set output.dir=\\\"%s\\\"%s 2>&1", pre,
             qft, root, type, RU_TINY_LLAMA, sets, dir, quiet ? " -q" : "");
    const int st = ru_run(cmd, buf, sizeof buf);
    if (out) *out = buf;
    return st;
}

/* ru_train_run that must succeed (quiet): a failure prints the run's output whole and
 * fails the test. Returns the output. */
static inline const char *ru_train(const char *pre, const char *type, const char *sets,
                                   const char *dir) {
    const char *out = NULL;
    const int st = ru_train_run(pre, type, sets, dir, 1, &out);
    if (st != 0) fputs(out, stdout); /* whole, not through Check's bounded message */
    ck_assert_msg(st == 0, "%.500s qft train %s %.1000s (into %s) failed (%d); its output is "
                           "above", pre, type, sets, dir, st);
    return out;
}

static inline int ru_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* The rows of dir/metrics.jsonl; they must be steps 1, 2, ... in order, each once. */
static inline int ru_metrics(const char *dir, ru_row *rows) {
    char path[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        ck_assert_msg(o != NULL, "%s: bad JSON line %d: %s", path, n + 1, je.text);
        ck_assert_int_lt(n, RU_MAX_STEPS);
        rows[n].step = (long)json_integer_value(json_object_get(o, "step"));
        rows[n].loss = json_number_value(json_object_get(o, "loss"));
        rows[n].lr = json_number_value(json_object_get(o, "lr"));
        rows[n].grad_norm = json_number_value(json_object_get(o, "grad_norm"));
        ck_assert_msg(rows[n].step == n + 1, "%s: line %d is step %ld (duplicated or missing "
                                             "rows)", path, n + 1, rows[n].step);
        n++;
        json_decref(o);
    }
    fclose(f);
    return n;
}

/* Both runs logged `steps` steps with the same loss, learning rate and gradient norm, to
 * the last printed digit (%.9g of the double loss: the float sums agree bit for bit). */
static inline void ru_same_metrics(const char *a, const char *b, int steps) {
    ru_row ra[RU_MAX_STEPS], rb[RU_MAX_STEPS];
    const int na = ru_metrics(a, ra), nb = ru_metrics(b, rb);
    ck_assert_msg(na == steps && nb == steps, "%d and %d rows logged, expected %d", na, nb,
                  steps);
    for (int s = 0; s < steps; s++) {
        ck_assert_msg(ra[s].loss == rb[s].loss, "step %d: loss %.9g (uninterrupted) vs %.9g "
                                                "(resumed)", s + 1, ra[s].loss, rb[s].loss);
        ck_assert_msg(ra[s].lr == rb[s].lr, "step %d: lr %.9g vs %.9g", s + 1, ra[s].lr,
                      rb[s].lr);
        ck_assert_msg(ra[s].grad_norm == rb[s].grad_norm, "step %d: grad_norm %.9g vs %.9g",
                      s + 1, ra[s].grad_norm, rb[s].grad_norm);
    }
    /* a run whose loss stays put would hide a missing update */
    ck_assert_msg(ra[steps - 1].loss < ra[0].loss, "loss did not fall: %.9g -> %.9g", ra[0].loss,
                  ra[steps - 1].loss);
}

/* Every tensor of two safetensors files: the same names, shapes and dtypes, not all zeros
 * (a zero tensor would pass any comparison), and equal: bit for bit when rel is 0, else
 * within rel relative (plus 1e-7 absolute near zero) element by element, or, when
 * `scaled`, within rel of the tensor's scale (max |a - b| <= rel max |a|, as
 * scripts/compare_runs.py measures two backends). Returns the worst relative difference
 * (of values above 1e-3 in magnitude; scaled: of any tensor); *count (may be NULL) the
 * tensor count. */
static inline double ru_compare_tensors_as(const char *pa, const char *pb, double rel,
                                          int scaled, int *count) {
    qft_st_file a, b;
    qft_err err = {0, ""};
    ck_assert_msg(qft_st_open(pa, &a, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_st_open(pb, &b, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(a.n_entries, b.n_entries);
    ck_assert_int_gt(a.n_entries, 0);
    double worst = 0;
    for (int i = 0; i < a.n_entries; i++) {
        const qft_st_entry *ea = &a.entries[i];
        const qft_st_entry *eb = qft_st_find(&b, ea->name);
        ck_assert_msg(eb != NULL, "%s lacks %s", pb, ea->name);
        const size_t n = qft_st_numel(&ea->t);
        ck_assert_uint_eq(n, qft_st_numel(&eb->t));
        ck_assert_int_eq(ea->t.dtype, eb->t.dtype);
        float *va = malloc(n * sizeof(float)), *vb = malloc(n * sizeof(float)); // (n) each
        ck_assert(va && vb);
        ck_assert_msg(qft_st_entry_to_f32(&a, ea, va, &err) == 0, "%s", err.msg);
        ck_assert_msg(qft_st_entry_to_f32(&b, eb, vb, &err) == 0, "%s", err.msg);
        double sumsq = 0, scale = 0, diff = 0;
        for (size_t k = 0; k < n; k++) {
            if (scaled) {
                scale = fmax(scale, fabs((double)va[k]));
                diff = va[k] != va[k] || vb[k] != vb[k]
                           ? INFINITY
                           : fmax(diff, fabs((double)va[k] - (double)vb[k]));
            } else if (rel == 0) {
                ck_assert_msg(memcmp(&va[k], &vb[k], sizeof(float)) == 0,
                              "%s[%zu]: %.9g (%s) vs %.9g (%s)", ea->name, k, (double)va[k], pa,
                              (double)vb[k], pb);
            } else {
                const double d = fabs((double)va[k] - (double)vb[k]);
                const double mag = fmax(fabs((double)va[k]), fabs((double)vb[k]));
                ck_assert_msg(d <= rel * mag + 1e-7, "%s[%zu]: %.9g (%s) vs %.9g (%s)",
                              ea->name, k, (double)va[k], pa, (double)vb[k], pb);
                if (mag > 1e-3 && d / mag > worst) worst = d / mag;
            }
            sumsq += (double)va[k] * va[k];
        }
        ck_assert_msg(sumsq > 0, "%s: %s is all zeros", pa, ea->name);
        if (scaled) {
            ck_assert_msg(diff <= rel * scale, "%s: %.3g of its scale %.3g apart (limit %.3g)",
                          ea->name, diff / scale, scale, rel);
            if (diff / scale > worst) worst = diff / scale;
        }
        free(va);
        free(vb);
    }
    if (count) *count = a.n_entries;
    qft_st_close(&a);
    qft_st_close(&b);
    return worst;
}

/* Element by element (see ru_compare_tensors_as). */
static inline double ru_compare_tensors(const char *pa, const char *pb, double rel, int *count) {
    return ru_compare_tensors_as(pa, pb, rel, 0, count);
}

/* The same tensors bit for bit; returns their count. */
static inline int ru_same_tensors(const char *pa, const char *pb) {
    int n = 0;
    ru_compare_tensors(pa, pb, 0, &n);
    return n;
}

/* 1 when `type` is in the comma-separated list of environment variable `env` (the train
 * types or plugins this build has), or when the variable is unset. */
static inline int ru_type_built(const char *env, const char *type) {
    const char *built = getenv(env);
    if (!built) return 1;
    char buf[1024], want[64];
    snprintf(buf, sizeof buf, ",%s,", built);
    snprintf(want, sizeof want, ",%s,", type);
    return strstr(buf, want) != NULL;
}

/* Like ru_same_metrics, within rel (relative) for the loss and gradient norm: two
 * backends whose sums run in different orders. Returns the largest relative difference. */
static inline double ru_close_metrics(const char *a, const char *b, int steps, double rel) {
    ru_row ra[RU_MAX_STEPS], rb[RU_MAX_STEPS];
    const int na = ru_metrics(a, ra), nb = ru_metrics(b, rb);
    ck_assert_msg(na == steps && nb == steps, "%d and %d rows logged, expected %d", na, nb,
                  steps);
    double worst = 0.0;
    for (int s = 0; s < steps; s++) {
        const double dl = fabs(ra[s].loss - rb[s].loss) / fabs(ra[s].loss);
        const double dg = fabs(ra[s].grad_norm - rb[s].grad_norm) / fabs(ra[s].grad_norm);
        ck_assert_msg(dl <= rel, "step %d: loss %.9g vs %.9g", s + 1, ra[s].loss, rb[s].loss);
        ck_assert_msg(dg <= rel, "step %d: grad_norm %.9g vs %.9g", s + 1, ra[s].grad_norm,
                      rb[s].grad_norm);
        worst = dl > worst ? dl : worst;
        worst = dg > worst ? dg : worst;
    }
    ck_assert_msg(ra[steps - 1].loss < ra[0].loss, "loss did not fall: %.9g -> %.9g", ra[0].loss,
                  ra[steps - 1].loss);
    return worst;
}

/* The optimizer files of two checkpoints, rank by rank: equal tensors and metadata. */
static inline void ru_same_checkpoint(const char *a, const char *b, int world) {
    for (int r = 0; r < world; r++) {
        char pa[8192], pb[8192];
        snprintf(pa, sizeof pa, "%s/optimizer-rank%d-of-%d.safetensors", a, r, world);
        snprintf(pb, sizeof pb, "%s/optimizer-rank%d-of-%d.safetensors", b, r, world);
        ck_assert_int_eq(ru_same_tensors(pa, pb), 3); /* params, exp_avg, exp_avg_sq */
        qft_st_file fa, fb;
        qft_err err = {0, ""};
        ck_assert_msg(qft_st_open(pa, &fa, &err) == 0, "%s", err.msg);
        ck_assert_msg(qft_st_open(pb, &fb, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(fa.n_meta, fb.n_meta);
        for (int i = 0; i < fa.n_meta; i++) {
            const char *vb = qft_st_meta(&fb, fa.meta_keys[i]);
            ck_assert_msg(vb && strcmp(vb, fa.meta_vals[i]) == 0, "%s: %s = %s, %s has %s", pa,
                          fa.meta_keys[i], fa.meta_vals[i], pb, vb ? vb : "(none)");
        }
        qft_st_close(&fa);
        qft_st_close(&fb);
    }
}

/* A run resumed at step 3 against the one that went straight to step 6, both saving a
 * training-state checkpoint every 3 steps: the same metrics, adapter and checkpoint-3 and
 * -6 optimizer files of `world` ranks, bit for bit. Returns the adapter's tensor count. */
static inline int ru_same_resumed(const char *straight, const char *resumed, int world) {
    char pa[8192], pb[8192];
    ru_same_metrics(straight, resumed, 6);
    snprintf(pa, sizeof pa, "%s/adapter/adapter_model.safetensors", straight);
    snprintf(pb, sizeof pb, "%s/adapter/adapter_model.safetensors", resumed);
    const int n = ru_same_tensors(pa, pb);
    for (int step = 3; step <= 6; step += 3) {
        snprintf(pa, sizeof pa, "%s/checkpoint-%d", straight, step);
        snprintf(pb, sizeof pb, "%s/checkpoint-%d", resumed, step);
        ru_same_checkpoint(pa, pb, world);
    }
    return n;
}

/* Runs the suite in this process (the cases run in order and may share files), removes
 * the scratch folder tmp when every case passed, and returns the exit status. */
static inline int ru_run_suite(Suite *s, const char *tmp) {
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (failed == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* "cp -r" and "rm -rf" through the shell, for preparing damaged checkpoints. */
static inline void ru_sh(const char *fmt, const char *a, const char *b) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    ck_assert_msg(system(cmd) == 0, "failed: %s", cmd);
}

#endif
