/* Small shared services of the engine: accounted aligned allocation, the run's random
 * stream, clocks, atomic file writing and dtype conversion. Everything else in core/
 * builds on these. */
#ifndef QFT_BASE_H
#define QFT_BASE_H

#include "qft_sdk.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- memory: 64-byte aligned, counted per category for the run's memory report ------ */
void *qft_mem_alloc(size_t bytes, const char *what); /* NULL on failure */
void *qft_mem_calloc(size_t bytes, const char *what);
void qft_mem_free(void *p);
size_t qft_mem_current(void); /* bytes now held through qft_mem_alloc */
size_t qft_mem_peak(void);    /* high-water mark of qft_mem_current */
void qft_mem_reset_peak(void); /* starts a new high-water mark at the current level */
size_t qft_mem_peak_rss(void); /* the process's peak resident set, bytes (getrusage) */

/* Reserved address space with releasable pages (vm.c): stable pointers whose physical
 * memory can be handed back between uses. */
void *qft_vm_reserve(size_t bytes, qft_err *err); /* zero-filled; NULL with err */
void qft_vm_free(void *p, size_t bytes);
/* [p, p + bytes) reads as zeros afterwards; its whole pages stop being resident. */
void qft_vm_release(void *p, size_t bytes);
/* Bytes of the pages overlapping [p, p + bytes) that are resident now (mincore). */
size_t qft_vm_resident(const void *p, size_t bytes);
size_t qft_vm_page(void); /* the page size */

/* ---- random numbers: xoshiro256** seeded by splitmix64 ------------------------------ */
void qft_rng_seed(qft_rng *r, uint64_t seed);
uint64_t qft_rng_next(qft_rng *r);
double qft_rng_uniform(qft_rng *r);          /* [0, 1) */
float qft_rng_normal(qft_rng *r);            /* N(0, 1), Box-Muller */
/* Two independent N(0, 1) draws from one Box-Muller step: half the cost per value of
 * qft_rng_normal, for bulk fills (random model init). */
void qft_rng_normal_pair(qft_rng *r, float *a, float *b);
/* A child stream for a named purpose, so adding a draw in one place does not shift
 * another place's numbers. */
void qft_rng_fork(const qft_rng *parent, const char *purpose, qft_rng *child);

/* ---- logging to stderr, filtered by level (QFT_LOG_* from qft_sdk.h) ---------------- */
void qft_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void qft_log_set_level(int level);

/* ---- clocks ------------------------------------------------------------------------- */
double qft_time_now(void); /* seconds, monotonic */

/* ---- files: write to a temporary name, fsync, rename, fsync the directory ----------- */
typedef struct qft_atomic_file {
    FILE *f;
    char final_path[4096];
    char tmp_path[4096];
} qft_atomic_file;
int qft_atomic_open(qft_atomic_file *af, const char *path, qft_err *err);
int qft_atomic_commit(qft_atomic_file *af, qft_err *err); /* flush, fsync, rename */
void qft_atomic_abort(qft_atomic_file *af);               /* remove the temporary */
/* The whole of a small file (a config.json, a copied tokenizer file) in one atomic write. */
int qft_atomic_write(const char *path, const void *data, size_t len, qft_err *err);
int qft_mkdir_p(const char *path, qft_err *err);
/* Reads a whole file into a NUL-terminated buffer the caller frees. */
int qft_file_read_all(const char *path, char **out, size_t *len, qft_err *err);

/* ---- dtypes ------------------------------------------------------------------------- */
size_t qft_dtype_size(qft_dtype dt);
const char *qft_dtype_name(qft_dtype dt);            /* safetensors spelling: "F32", "BF16" */
int qft_dtype_from_name(const char *name, qft_dtype *out); /* 0 ok, -1 unknown */
float qft_bf16_to_f32(uint16_t h);
uint16_t qft_f32_to_bf16(float f);                   /* round to nearest even, like torch */
float qft_f16_to_f32(uint16_t h);
uint16_t qft_f32_to_f16(float f);                    /* round to nearest even */
/* Converts n elements of a float tensor (F32, BF16, F16, F64) to fp32. */
int qft_convert_to_f32(float *dst, const void *src, qft_dtype dt, size_t n, qft_err *err);
int qft_convert_from_f32(void *dst, qft_dtype dt, const float *src, size_t n, qft_err *err);

#endif
