/* File helpers. Checkpoints and model folders are written to a temporary name in the same
 * directory, fsynced, renamed over the final name and the directory fsynced, so a crash
 * leaves either the old file or the new one, never half of one. */
#include "qft_base.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int qft_atomic_open(qft_atomic_file *af, const char *path, qft_err *err) {
    memset(af, 0, sizeof *af);
    if (strlen(path) + 32 >= sizeof af->final_path)
        return qft_err_setf(err, "%s: path too long", path);
    snprintf(af->final_path, sizeof af->final_path, "%s", path);
    snprintf(af->tmp_path, sizeof af->tmp_path, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) return qft_err_setf(err, "%s: cannot create: %s", af->tmp_path, strerror(errno));
    return 0;
}

static int fsync_dir_of(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int qft_atomic_commit(qft_atomic_file *af, qft_err *err) {
    if (!af->f) return qft_err_setf(err, "%s: file not open", af->final_path);
    int bad = fflush(af->f) != 0 || fsync(fileno(af->f)) != 0;
    int saved = errno;
    if (fclose(af->f) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    af->f = NULL;
    if (bad) {
        unlink(af->tmp_path);
        return qft_err_setf(err, "%s: write failed: %s", af->tmp_path, strerror(saved));
    }
    if (rename(af->tmp_path, af->final_path) != 0) {
        saved = errno;
        unlink(af->tmp_path);
        return qft_err_setf(err, "%s: cannot rename into place: %s", af->final_path,
                            strerror(saved));
    }
    fsync_dir_of(af->final_path);
    return 0;
}

void qft_atomic_abort(qft_atomic_file *af) {
    if (af->f) fclose(af->f);
    af->f = NULL;
    if (af->tmp_path[0]) unlink(af->tmp_path);
}

int qft_atomic_write(const char *path, const void *data, size_t len, qft_err *err) {
    qft_atomic_file af;
    if (qft_atomic_open(&af, path, err)) return -1;
    if (len && fwrite(data, 1, len, af.f) != len) {
        qft_atomic_abort(&af);
        return qft_err_setf(err, "%s: write failed", path);
    }
    return qft_atomic_commit(&af, err);
}

int qft_mkdir_p(const char *path, qft_err *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return qft_err_setf(err, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return qft_err_setf(err, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return qft_err_setf(err, "%s: cannot create directory: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return qft_err_setf(err, "%s: exists and is not a directory", buf);
    return 0;
}

int qft_file_read_all(const char *path, char **out, size_t *len, qft_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qft_err_setf(err, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return qft_err_setf(err, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return qft_err_setf(err, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return qft_err_setf(err, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return 0;
}
