/* Resumable training under `mpirun -np 2` with shard.plugin = "shard_grad_op" (and
 * "full_shard"), where each rank's optimizer owns half of the trainable floats and saves
 * its own file.
 *   - lora and qlora (and qlora on cpu_guard, gradients and optimizer in its memory, under
 *     shard_grad_op and under full_shard, whose units are committed there per gather, with
 *     the shards and optimizer there or in host memory with cpu_offload): 6
 *     steps straight vs 3 steps resumed to 6 (constant schedule, as in
 *     tests/apps/test_resume.c): every step's loss, learning rate and gradient norm equal
 *     exactly, metrics.jsonl continues without duplicates, and the saved adapters and both
 *     ranks' checkpoint-3 and checkpoint-6 optimizer files equal bit for bit;
 *   - the 2-rank checkpoint resumed with -np 3: every rank ends, non-zero, within 60 s, and
 *     the output names the rank and both world sizes;
 *   - rank 1's file cut short: rank 1 fails while rank 0 has gone on to the parameter
 *     gather; the job still ends within 60 s, naming the file.
 * argv: mpirun, then mpirun's flags. $QFT_BIN is the qft command, $QFT_SOURCE_ROOT the
 * tree, $QFT_RESUME_TYPES and $QFT_RESUME_STRATEGIES the train_types and shard plugins
 * this build has. */
#include "run_util.h"

#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char **g_argv;
static int g_argc;
static char g_tmp[4096];
static char g_mpirun[4096];

/* train_type, train.backend (NULL: cpu) and shard.plugin. On cpu_guard gradients and
 * optimizer state stay in its guarded memory (as on a GPU): the checkpoint is staged through
 * host buffers and the resumed slices are gathered over the staged transport (under
 * full_shard nothing is gathered: the resumed pieces are the shards themselves). offload:
 * shard.cpu_offload, the shards and optimizer in host memory, the units on the backend. */
typedef struct resume_case {
    const char *type, *backend, *strategy;
    int offload;
} resume_case;
static const resume_case k_cases[] = {{"lora", NULL, "shard_grad_op", 0},
                                      {"qlora", NULL, "shard_grad_op", 0},
                                      {"qlora", "cpu_guard", "shard_grad_op", 0},
                                      {"qlora", "cpu_guard", "full_shard", 0},
                                      {"qlora", "cpu_guard", "full_shard", 1}};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

/* 16 examples: 8 batches of 2 per epoch, 2 micro-batches per step over the ranks, so the 6
 * steps cross into epoch 1 at step 5. */
static const char *k_overrides =
    "--set data.count=16 --set train.batch_size=2 --set train.grad_accum=1 "
    "--set model.config.hidden_size=64 --set model.config.intermediate_size=128 "
    "--set model.config.num_hidden_layers=2 --set model.config.num_attention_heads=2 "
    "--set model.config.num_key_value_heads=1 --set data.context_length=160 "
    "--set output.save_dtype=\\\"f32\\\" --set train.log_every=1 "
    "--set shard.plugin=\\\"shard_grad_op\\\" --set train.schedule=\\\"constant\\\"";

static int type_built(const char *type) { return ru_type_built("QFT_RESUME_TYPES", type); }

/* timeout 120 mpirun -np W qft train configs/<type>.cfg ... extra; the wait status, and the
 * seconds it took in *secs. */
static int train_ranks(int world, const char *type, const char *extra, char *out, size_t size,
                       double *secs) {
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    ck_assert_msg(qft && root, "QFT_BIN and QFT_SOURCE_ROOT must be set");
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "timeout 120 %s -np %d -x OMP_NUM_THREADS=1 %s train %s/configs/%s.cfg %s %s -q "
             "2>&1",
             g_mpirun, world, qft, root, type, k_overrides, extra);
    const time_t t0 = time(NULL);
    const int st = ru_run(cmd, out, size);
    if (secs) *secs = difftime(time(NULL), t0);
    return st;
}

static void train_ok(const char *type, const char *extra) {
    static char out[1 << 18];
    const int st = train_ranks(2, type, extra, out, sizeof out, NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mpirun -np 2 qft train %s %s failed "
                  "(%d):\n%s", type, extra, st, out);
}

/* The job fails, every rank gone within 60 s (timeout's 124 would mean a hang), and the
 * output holds every string of want (NULL-terminated). */
static void train_fails(int world, const char *type, const char *extra,
                        const char *const *want) {
    static char out[1 << 18];
    double secs = 0;
    const int st = train_ranks(world, type, extra, out, sizeof out, &secs);
    ck_assert_msg(st != 0, "the job succeeded:\n%s", out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 124, "the job hung:\n%s", out);
    ck_assert_msg(secs <= 60, "the job took %.0f s to end:\n%s", secs, out);
    for (const char *const *w = want; *w; w++)
        ck_assert_msg(strstr(out, *w) != NULL, "the output lacks \"%s\":\n%s", *w, out);
    const char *line = strstr(out, want[0] ? want[0] : "rank ");
    while (line && line > out && line[-1] != '\n') line--;
    printf("  -np %d failed in %.0f s, status %d: %.*s\n", world, secs, WEXITSTATUS(st),
           line ? (int)strcspn(line, "\n") : 0, line ? line : "");
}

static void ckpt_dir(char *buf, size_t n, const char *type) {
    snprintf(buf, n, "%s/%s-resumed/checkpoint-3", g_tmp, type);
}

START_TEST(test_resume_two_ranks) {
    const char *type = k_cases[_i].type, *backend = k_cases[_i].backend;
    const char *strategy = k_cases[_i].strategy;
    const int sgo = strcmp(strategy, "shard_grad_op") == 0, offload = k_cases[_i].offload;
    if (!type_built(type) || !ru_type_built("QFT_RESUME_STRATEGIES", strategy)) {
        printf("skip: %s under %s (its plugins are not built)\n", type, strategy);
        return;
    }
    char a[4096], b[4096], extra[16384], pa[8192], pb[8192], be[256];
    /* the first cases' names (lora-resumed, qlora-resumed) are the later tests' inputs */
    snprintf(a, sizeof a, "%s/%s%s%s%s%s%s-straight", g_tmp, type, backend ? "-" : "",
             backend ? backend : "", sgo ? "" : "-", sgo ? "" : strategy,
             offload ? "-offload" : "");
    snprintf(b, sizeof b, "%s/%s%s%s%s%s%s-resumed", g_tmp, type, backend ? "-" : "",
             backend ? backend : "", sgo ? "" : "-", sgo ? "" : strategy,
             offload ? "-offload" : "");
    /* a later --set of a key wins over k_overrides' */
    snprintf(be, sizeof be, "--set shard.plugin=\\\"%s\\\"", strategy);
    if (backend)
        snprintf(be + strlen(be), sizeof be - strlen(be), " --set train.backend=\\\"%s\\\"%s",
                 backend, offload ? " --set shard.cpu_offload=true" : "");
    snprintf(extra, sizeof extra, "--set train.max_steps=6 --set output.save_state_every=3 "
             "--set output.dir=\\\"%s\\\" %s", a, be);
    train_ok(type, extra);
    snprintf(extra, sizeof extra, "--set train.max_steps=3 --set output.save_state_every=3 "
             "--set output.dir=\\\"%s\\\" %s", b, be);
    train_ok(type, extra);
    snprintf(extra, sizeof extra, "--set train.max_steps=6 --set output.save_state_every=3 "
             "--set output.dir=\\\"%s\\\" --set train.resume_from=\\\"%s/checkpoint-3\\\" %s", b,
             b, be);
    train_ok(type, extra);

    const int n = ru_same_resumed(a, b, 2);
    /* each rank saved its half: the slices meet and cover the trainable floats */
    qft_st_file f0, f1;
    qft_err err = {0, ""};
    snprintf(pa, sizeof pa, "%s/checkpoint-3/optimizer-rank0-of-2.safetensors", b);
    snprintf(pb, sizeof pb, "%s/checkpoint-3/optimizer-rank1-of-2.safetensors", b);
    ck_assert_msg(qft_st_open(pa, &f0, &err) == 0, "%s", err.msg);
    ck_assert_msg(qft_st_open(pb, &f1, &err) == 0, "%s", err.msg);
    const long long len0 = atoll(qft_st_meta(&f0, "len"));
    const long long off1 = atoll(qft_st_meta(&f1, "offset"));
    const long long len1 = atoll(qft_st_meta(&f1, "len"));
    const long long total = atoll(qft_st_meta(&f0, "n_trainable"));
    ck_assert_int_eq(atoll(qft_st_meta(&f0, "offset")), 0);
    ck_assert_int_eq(off1, len0);
    ck_assert_int_eq(len0 + len1, total);
    ck_assert_int_eq(len0, total / 2);
    ck_assert_str_eq(qft_st_meta(&f1, "shard_strategy"), strategy);
    qft_st_close(&f0);
    qft_st_close(&f1);
    printf("%s%s%s: -np 2 %s%s, 6 steps straight = 3 steps + resume to 6 (losses, "
           "lr, grad norms; %d adapter tensors; both ranks' optimizer slices of %lld + %lld "
           "floats), bit for bit\n", type, backend ? " on " : "", backend ? backend : "", strategy,
           offload ? " with cpu_offload" : "", n, len0, len1);
}
END_TEST

START_TEST(test_resume_other_world) {
    const char *type = type_built("lora") ? "lora" : type_built("qlora") ? "qlora" : NULL;
    if (!type) {
        printf("skip: neither lora nor qlora is built\n");
        return;
    }
    char dir[4096], extra[16384];
    ckpt_dir(dir, sizeof dir, type);
    ck_assert_msg(ru_exists(dir), "%s is missing (test_resume_two_ranks makes it)", dir);
    snprintf(extra, sizeof extra, "--set train.max_steps=6 --set output.dir=\\\"%s/three\\\" "
             "--set train.resume_from=\\\"%s\\\"", g_tmp, dir);
    const char *want[] = {"of 3: checkpoint", "written by 2 ranks", "this run has 3",
                          "mpirun -np 2", NULL};
    train_fails(3, type, extra, want);
}
END_TEST

START_TEST(test_resume_damaged_rank_file) {
    const char *type = type_built("lora") ? "lora" : type_built("qlora") ? "qlora" : NULL;
    if (!type) {
        printf("skip: neither lora nor qlora is built\n");
        return;
    }
    char src[4096], dir[4096], file[8192], extra[16384];
    ckpt_dir(src, sizeof src, type);
    ck_assert_msg(ru_exists(src), "%s is missing (test_resume_two_ranks makes it)", src);
    snprintf(dir, sizeof dir, "%s/damaged", g_tmp);
    ru_sh("cp -r '%s' '%s'", src, dir);
    snprintf(file, sizeof file, "%s/optimizer-rank1-of-2.safetensors", dir);
    ck_assert_int_eq(truncate(file, 600), 0);
    snprintf(extra, sizeof extra, "--set train.max_steps=6 --set output.dir=\\\"%s/dmg\\\" "
             "--set train.resume_from=\\\"%s\\\"", g_tmp, dir);
    const char *want[] = {"rank 1 of 2", file, NULL};
    train_fails(2, type, extra, want);
}
END_TEST

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MPIRUN [MPIRUN-FLAGS...]\n", argv[0]);
        return 2;
    }
    g_argc = argc, g_argv = argv;
    size_t ml = 0;
    for (int i = 1; i < g_argc; i++)
        ml += (size_t)snprintf(g_mpirun + ml, sizeof g_mpirun - ml, "%s ", g_argv[i]);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-shard-resume-XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("shard_resume");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_resume_two_ranks, 0, N_CASES);
    /* these reuse the first case's checkpoint: CK_NOFORK runs them in order */
    tcase_add_test(tc, test_resume_other_world);
    tcase_add_test(tc, test_resume_damaged_rank_file);
    suite_add_tcase(s, tc);
    return ru_run_suite(s, g_tmp);
}
