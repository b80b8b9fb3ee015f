/* Training-state checkpoints: save and resume (see run_ckpt.h). */
#include "run_ckpt.h"

#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef QFT_VERSION
#define QFT_VERSION "unknown"
#endif

#define STATE_FORMAT "qft.trainer_state"
#define OPT_FORMAT "qft.optimizer_state"

static void rank_file_name(char *buf, size_t n, int rank, int world) {
    snprintf(buf, n, "optimizer-rank%d-of-%d.safetensors", rank, world);
}

/* The tensor names follow torch's optimizer state keys. */
static const char *moment_name(const qft_optim *opt, int which) {
    if (opt->cfg.kind == QFT_OPT_ADAMW) return which == 0 ? "exp_avg" : "exp_avg_sq";
    return which == 0 ? "momentum_buffer" : NULL;
}

int qft_run_ckpt_due(const qft_run_config *rc, long done, long total) {
    const long every = rc->output.save_state_every;
    return every > 0 && done > 0 && (done % every == 0 || done == total);
}

/* ---- save ---------------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes a folder and what it holds; a missing one is fine. */
static int remove_tree(const char *path, qft_err *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return qft_err_setf(err, "%s: cannot remove the leftover of an earlier save: %s", path,
                            strerror(errno));
    return 0;
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int write_rank_file(const char *dir, const qft_run_config *rc, const qft_run_shard *sh,
                           const qft_optim *opt, const float *slice, qft_err *err) {
    const qft_transport *t = sh->t;
    char name[256], path[8192], num[8][64];
    rank_file_name(name, sizeof name, t->rank, t->world);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    qft_tensor ts = {.dtype = QFT_DT_F32, .ndim = 1, .shape = {(int64_t)sh->len}};
    qft_st_writer w;
    qft_st_writer_init(&w);
    int bad = 0;
    ts.data = (void *)slice; // (len)
    bad |= qft_st_writer_add(&w, "params", &ts, err);
    const float *moments[2] = {opt->m, opt->v}; // (len) each, NULL where the optimizer has none
    for (int k = 0; k < 2 && !bad; k++) {
        if (!moment_name(opt, k) || !moments[k]) continue;
        ts.data = (void *)moments[k];
        bad |= qft_st_writer_add(&w, moment_name(opt, k), &ts, err);
    }
    snprintf(num[0], sizeof num[0], "%d", QFT_RUN_CKPT_VERSION);
    snprintf(num[1], sizeof num[1], "%d", t->rank);
    snprintf(num[2], sizeof num[2], "%d", t->world);
    snprintf(num[3], sizeof num[3], "%zu", sh->offset);
    snprintf(num[4], sizeof num[4], "%zu", sh->len);
    snprintf(num[5], sizeof num[5], "%zu", sh->n);
    snprintf(num[6], sizeof num[6], "%ld", opt->step);
    const char *meta[][2] = {{"format", OPT_FORMAT},   {"format_version", num[0]},
                             {"rank", num[1]},         {"world_size", num[2]},
                             {"shard_strategy", sh->name}, {"offset", num[3]},
                             {"len", num[4]},          {"n_trainable", num[5]},
                             {"optimizer", rc->train.optimizer}, {"step", num[6]}};
    for (size_t i = 0; i < sizeof meta / sizeof meta[0] && !bad; i++)
        bad |= qft_st_writer_meta(&w, meta[i][0], meta[i][1], err);
    if (!bad) bad = qft_st_write(&w, path, err);
    qft_st_writer_free(&w);
    return bad ? -1 : 0;
}

static int write_state(const char *dir, const qft_run_config *rc, const qft_run_shard *sh,
                       const qft_run_ckpt_info *info, qft_err *err) {
    const int world = sh->t->world;
    json_t *o = json_object(), *files = json_array();
    if (!o || !files) {
        json_decref(o), json_decref(files);
        return qft_err_setf(err, "%s: out of memory for trainer_state.json", dir);
    }
    for (int r = 0; r < world; r++) {
        char name[256];
        rank_file_name(name, sizeof name, r, world);
        json_array_append_new(files, json_string(name));
    }
    json_object_set_new(o, "format", json_string(STATE_FORMAT));
    json_object_set_new(o, "format_version", json_integer(QFT_RUN_CKPT_VERSION));
    json_object_set_new(o, "global_step", json_integer(info->step));
    json_object_set_new(o, "epoch", json_real(info->epoch));
    json_object_set_new(o, "total_steps", json_integer(info->total_steps));
    json_object_set_new(o, "world_size", json_integer(world));
    json_object_set_new(o, "shard_strategy", json_string(sh->name));
    json_object_set_new(o, "train_type", json_string(rc->train_type));
    json_object_set_new(o, "optimizer", json_string(rc->train.optimizer));
    json_object_set_new(o, "n_trainable", json_integer((json_int_t)sh->n));
    json_object_set_new(o, "seed", json_integer(rc->train.seed));
    json_object_set_new(o, "qft_version", json_string(QFT_VERSION));
    json_object_set_new(o, "config_file", json_string(rc->file));
    json_object_set_new(o, "optimizer_files", files);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text) return qft_err_setf(err, "%s: cannot format trainer_state.json", dir);
    char path[8192];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    const size_t len = strlen(text);
    /* ends with a newline, for cat and editors */
    char *withnl = malloc(len + 2);
    if (!withnl) {
        free(text);
        return qft_err_setf(err, "%s: out of memory", path);
    }
    memcpy(withnl, text, len);
    withnl[len] = '\n';
    free(text);
    const int rc_ = qft_atomic_write(path, withnl, len + 1, err);
    free(withnl);
    return rc_;
}

/* Puts the finished folder under its final name. A folder already there (a run resumed
 * from an earlier checkpoint that passes this step again) is moved aside first and removed
 * after, so a crash between leaves a complete folder under one of the two names. */
static int commit_dir(const char *tmp, const char *final, qft_err *err) {
    if (fsync_path(tmp) != 0)
        return qft_err_setf(err, "%s: cannot fsync: %s", tmp, strerror(errno));
    char stale[8300];
    snprintf(stale, sizeof stale, "%s.old", final);
    struct stat st;
    const int replacing = lstat(final, &st) == 0;
    if (replacing) {
        if (remove_tree(stale, err)) return -1;
        if (rename(final, stale) != 0)
            return qft_err_setf(err, "%s: cannot move the earlier checkpoint aside: %s", final,
                                strerror(errno));
    }
    if (rename(tmp, final) != 0)
        return qft_err_setf(err, "%s: cannot rename into place as %s: %s", tmp, final,
                            strerror(errno));
    char parent[8192];
    snprintf(parent, sizeof parent, "%s", final);
    char *slash = strrchr(parent, '/');
    if (slash) *slash = '\0';
    fsync_path(slash ? parent : ".");
    return replacing ? remove_tree(stale, err) : 0;
}

int qft_run_ckpt_save(const qft_run_config *rc, const qft_run_shard *sh, const qft_optim *opt,
                      const float *slice, const qft_run_ckpt_info *info, qft_err *err) {
    const qft_transport *t = sh->t;
    char final[8192], tmp[8300];
    snprintf(final, sizeof final, "%s/checkpoint-%ld", rc->output.dir, info->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    if (opt->n != sh->len)
        return qft_err_setf(err, "checkpoint %s: rank %d's optimizer holds %zu floats but its "
                                 "slice is %zu", final, t->rank, opt->n, sh->len);
    /* Rank 0 makes the folder before anyone writes into it; a failure here ends the job
     * through the caller's abort while the peers wait in the barrier. */
    if (t->rank == 0 && (remove_tree(tmp, err) || qft_mkdir_p(tmp, err))) return -1;
    if (qft_transport_barrier(t, err)) return -1;
    if (write_rank_file(tmp, rc, sh, opt, slice, err)) return -1;
    if (t->rank == 0 && write_state(tmp, rc, sh, info, err)) return -1;
    /* every rank's file is on disk (fsynced and renamed) before the folder is named */
    if (qft_transport_barrier(t, err)) return -1;
    if (t->rank != 0) return 0;
    if (commit_dir(tmp, final, err)) return -1;
    qft_log(QFT_LOG_INFO, "saved %s (training state of %d rank%s)", final, t->world,
            t->world == 1 ? "" : "s");
    return 0;
}

/* ---- load ---------------------------------------------------------------------------- */

typedef struct load_ctx {
    const qft_run_shard *sh;
    const char *dir;
    qft_err *err;
} load_ctx;

/* "rank R of W: checkpoint DIR: <msg>"; a msg starting with a space continues the sentence
 * instead ("checkpoint DIR was written by ..."). */
static int ctx_fail(const load_ctx *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static int ctx_fail(const load_ctx *c, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qft_err_setf(c->err, "rank %d of %d: checkpoint %s%s%s", c->sh->t->rank,
                        c->sh->t->world, c->dir, msg[0] == ' ' ? "" : ": ", msg);
}

static int state_string(const load_ctx *c, json_t *o, const char *key, const char **out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return ctx_fail(c, "trainer_state.json: \"%s\" is missing or not a string", key);
    *out = json_string_value(v);
    return 0;
}

static int state_int(const load_ctx *c, json_t *o, const char *key, long long *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return ctx_fail(c, "trainer_state.json: \"%s\" is missing or not an integer", key);
    *out = json_integer_value(v);
    return 0;
}

/* The run-wide record, checked against this run. */
static int check_state(const load_ctx *c, const qft_run_config *rc, json_t *o, long *step) {
    const qft_run_shard *sh = c->sh;
    const char *format = "", *strategy = "", *type = "", *optimizer = "";
    long long version = 0, gstep = 0, world = 0, n = 0, seed = 0, total = -1;
    if (state_string(c, o, "format", &format) || state_int(c, o, "format_version", &version))
        return -1;
    if (strcmp(format, STATE_FORMAT) != 0 || version != QFT_RUN_CKPT_VERSION)
        return ctx_fail(c, "trainer_state.json is format \"%s\" version %lld; this qft (%s) "
                           "reads \"%s\" version %d: resume with the qft that wrote it",
                        format, version, QFT_VERSION, STATE_FORMAT, QFT_RUN_CKPT_VERSION);
    if (state_int(c, o, "global_step", &gstep) || state_int(c, o, "world_size", &world) ||
        state_string(c, o, "shard_strategy", &strategy) ||
        state_string(c, o, "train_type", &type) || state_string(c, o, "optimizer", &optimizer) ||
        state_int(c, o, "n_trainable", &n) || state_int(c, o, "seed", &seed))
        return -1;
    if (json_is_integer(json_object_get(o, "total_steps")))
        total = json_integer_value(json_object_get(o, "total_steps"));
    if (world != sh->t->world)
        return ctx_fail(c, " was written by %lld rank%s (%s); this run has %d: resume with the "
                           "same number of ranks (mpirun -np %lld)",
                        world, world == 1 ? "" : "s", strategy, sh->t->world, world);
    if (strcmp(strategy, sh->name) != 0)
        return ctx_fail(c, " was written with shard.plugin \"%s\"; this run uses \"%s\": resume "
                           "with the same strategy",
                        strategy, sh->name);
    if (strcmp(type, rc->train_type) != 0)
        return ctx_fail(c, " was written by train_type \"%s\"; this run is \"%s\"", type,
                        rc->train_type);
    if (strcmp(optimizer, rc->train.optimizer) != 0)
        return ctx_fail(c, " holds the state of optimizer \"%s\"; this run uses \"%s\"",
                        optimizer, rc->train.optimizer);
    if (n != (long long)sh->n)
        return ctx_fail(c, " holds %lld trainable floats; this run has %zu (another model "
                           "shape or adapter config)", n, sh->n);
    if (gstep < 0) return ctx_fail(c, "trainer_state.json: global_step %lld", gstep);
    /* Both still resume, but no longer reproduce the uninterrupted run. */
    if (seed != rc->train.seed && sh->t->rank == 0)
        qft_log(QFT_LOG_WARN, "checkpoint %s was trained with train.seed %lld, this run has "
                              "%ld: data order and dropout from here on differ from the "
                              "original run", c->dir, seed, rc->train.seed);
    if (total >= 0 && sh->t->rank == 0 && strcmp(rc->train.schedule, "constant") != 0) {
        const long now = rc->train.max_steps > 0 ? rc->train.max_steps : -1;
        if (now > 0 && now != total)
            qft_log(QFT_LOG_WARN, "checkpoint %s was written by a run of %lld steps, this one "
                                  "has %ld: the %s schedule of the remaining steps differs",
                    c->dir, total, now, rc->train.schedule);
    }
    *step = (long)gstep;
    return 0;
}

static int meta_num(const load_ctx *c, const qft_st_file *f, const char *key,
                    long long *out) {
    const char *v = qft_st_meta(f, key);
    char *end = NULL;
    if (v) {
        errno = 0;
        *out = strtoll(v, &end, 10);
    }
    if (!v || !end || *end || end == v || errno)
        return ctx_fail(c, "%s: __metadata__ \"%s\" is missing or not a number", f->path, key);
    return 0;
}

/* Copies the F32 tensor `name` of len floats into dst. */
static int read_tensor(const load_ctx *c, const qft_st_file *f, const char *name, float *dst,
                       size_t len) {
    const qft_st_entry *e = qft_st_find(f, name);
    if (!e) return ctx_fail(c, "%s: tensor \"%s\" is missing", f->path, name);
    if (e->t.dtype != QFT_DT_F32 || qft_st_numel(&e->t) != len)
        return ctx_fail(c, "%s: tensor \"%s\" is %s of %zu elements, expected F32 of %zu",
                        f->path, name, qft_dtype_name(e->t.dtype), qft_st_numel(&e->t), len);
    if (len && qft_st_entry_to_f32(f, e, dst, c->err))
        return ctx_fail(c, "%s", c->err->msg);
    return 0;
}

static int load_rank_file(const load_ctx *c, const qft_run_config *rc, qft_optim *opt,
                          float *slice, long step) {
    const qft_run_shard *sh = c->sh;
    const qft_transport *t = sh->t;
    char name[256], path[8192];
    rank_file_name(name, sizeof name, t->rank, t->world);
    snprintf(path, sizeof path, "%s/%s", c->dir, name);
    qft_st_file f;
    if (qft_st_open(path, &f, c->err)) {
        char why[2048];
        snprintf(why, sizeof why, "%s", c->err->msg);
        return ctx_fail(c, "this rank's optimizer file %s cannot be read (%s); the checkpoint "
                           "is incomplete or damaged: resume from another checkpoint",
                        path, why);
    }
    int bad = 0;
    long long version = 0, rank = 0, world = 0, offset = 0, len = 0, n = 0, ostep = 0;
    const char *format = qft_st_meta(&f, "format"), *strategy = qft_st_meta(&f, "shard_strategy");
    const char *optimizer = qft_st_meta(&f, "optimizer");
    if (!format || strcmp(format, OPT_FORMAT) != 0)
        bad = ctx_fail(c, "%s: not a qft optimizer-state file (__metadata__ format \"%s\", "
                          "expected \"%s\")", path, format ? format : "", OPT_FORMAT);
    if (!bad)
        bad = meta_num(c, &f, "format_version", &version) || meta_num(c, &f, "rank", &rank) ||
              meta_num(c, &f, "world_size", &world) || meta_num(c, &f, "offset", &offset) ||
              meta_num(c, &f, "len", &len) || meta_num(c, &f, "n_trainable", &n) ||
              meta_num(c, &f, "step", &ostep);
    if (!bad && version != QFT_RUN_CKPT_VERSION)
        bad = ctx_fail(c, "%s: format version %lld; this qft reads version %d", path, version,
                       QFT_RUN_CKPT_VERSION);
    if (!bad && (rank != t->rank || world != t->world))
        bad = ctx_fail(c, "%s: written by rank %lld of %lld, read by rank %d of %d", path, rank,
                       world, t->rank, t->world);
    if (!bad && (!strategy || strcmp(strategy, sh->name) != 0))
        bad = ctx_fail(c, "%s: written with shard.plugin \"%s\"; this run uses \"%s\"", path,
                       strategy ? strategy : "", sh->name);
    if (!bad && (!optimizer || strcmp(optimizer, rc->train.optimizer) != 0))
        bad = ctx_fail(c, "%s: holds optimizer \"%s\"; this run uses \"%s\"", path,
                       optimizer ? optimizer : "", rc->train.optimizer);
    if (!bad && (offset != (long long)sh->offset || len != (long long)sh->len ||
                 n != (long long)sh->n))
        bad = ctx_fail(c, "%s: holds trainable floats [%lld, %lld) of %lld; this rank's slice "
                          "is [%zu, %zu) of %zu",
                       path, offset, offset + len, n, sh->offset, sh->offset + sh->len, sh->n);
    if (!bad && ostep != step)
        bad = ctx_fail(c, "%s: optimizer step %lld, but trainer_state.json says global_step "
                          "%ld", path, ostep, step);
    if (!bad) bad = read_tensor(c, &f, "params", slice, sh->len);
    float *moments[2] = {opt->m, opt->v}; // (len) each
    for (int k = 0; k < 2 && !bad; k++)
        if (moment_name(opt, k) && moments[k])
            bad = read_tensor(c, &f, moment_name(opt, k), moments[k], sh->len);
    qft_st_close(&f);
    if (bad) return -1;
    opt->step = step;
    return 0;
}

int qft_run_ckpt_load(const qft_run_config *rc, const qft_run_shard *sh, qft_optim *opt,
                      float *slice, long *step, qft_err *err) {
    load_ctx c = {.sh = sh, .dir = rc->train.resume_from, .err = err};
    *step = 0;
    if (opt->n != sh->len)
        return ctx_fail(&c, "the optimizer holds %zu floats but this rank's slice is %zu",
                        opt->n, sh->len);
    char path[8192], *text;
    snprintf(path, sizeof path, "%s/trainer_state.json", c.dir);
    if (qft_file_read_all(path, &text, NULL, err)) {
        char why[2048];
        snprintf(why, sizeof why, "%s", err->msg);
        return ctx_fail(&c, "%s (train.resume_from must name a checkpoint-<step> folder)", why);
    }
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    free(text);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return ctx_fail(&c, "%s:%d:%d: %s", path, je.line, je.column,
                        o ? "not a JSON object" : je.text);
    }
    long saved = 0;
    int bad = check_state(&c, rc, o, &saved);
    json_decref(o);
    if (bad || load_rank_file(&c, rc, opt, slice, saved)) return -1;
    *step = saved;
    if (sh->t->rank == 0)
        qft_log(QFT_LOG_INFO, "resumed from %s at step %ld", c.dir, saved);
    return 0;
}

/* ---- metrics ------------------------------------------------------------------------- */

int qft_run_ckpt_trim_metrics(const char *path, long last_step, qft_err *err) {
    if (access(path, F_OK) != 0) return 0;
    char *text;
    size_t len;
    if (qft_file_read_all(path, &text, &len, err)) return -1;
    char *out = malloc(len + 1); // at most the whole file
    if (!out) {
        free(text);
        return qft_err_setf(err, "%s: out of memory", path);
    }
    size_t used = 0;
    long dropped = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        if (!nl) { /* a line cut by the interruption */
            dropped++;
            break;
        }
        long step;
        if (sscanf(line, "{\"step\":%ld", &step) == 1 && step >= 1 && step <= last_step) {
            memcpy(out + used, line, (size_t)(nl + 1 - line));
            used += (size_t)(nl + 1 - line);
        } else {
            dropped++;
        }
        line = nl + 1;
    }
    free(text);
    int rc_ = 0;
    if (dropped) {
        rc_ = qft_atomic_write(path, out, used, err);
        if (!rc_)
            qft_log(QFT_LOG_INFO, "%s: %ld row%s after step %ld dropped (the run resumes there)",
                    path, dropped, dropped == 1 ? "" : "s", last_step);
    }
    free(out);
    return rc_;
}
