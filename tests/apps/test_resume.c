/* Resumable training in one process (output.save_state_every, train.resume_from).
 *
 * The runs use the example configs (lora, qlora) with tiny shapes and 16 examples, so an
 * epoch is 4 optimizer steps (batch 2, grad_accum 2) and 6 steps cross into epoch 1:
 *   - stopped: 6 steps straight vs 3 steps (a run that ends there, its checkpoint saved at
 *     the end) resumed to 6 in the same output.dir. A constant schedule, since the two
 *     runs' lengths differ and cosine depends on the length. Losses, learning rates and
 *     gradient norms of every step equal exactly, metrics.jsonl continues (rows 1..6, none
 *     twice), the saved adapters and both runs' checkpoint-3 and checkpoint-6 optimizer
 *     files (parameters, AdamW moments) equal bit for bit;
 *   - interrupted: the configs' cosine schedule; a run of 6 steps saving every 5, and a run
 *     resumed from its checkpoint-5 (inside epoch 1) into a folder holding the first run's
 *     metrics plus a line cut short by the "crash": the same checks;
 *   - layout: trainer_state.json's fields and the optimizer file's metadata; a leftover
 *     checkpoint-3.tmp of an earlier crash is replaced; no *.tmp remains;
 *   - damaged: a missing or truncated rank file, a checkpoint of 2 ranks, another
 *     train_type or another model shape: non-zero exit and a message naming the file or
 *     both values.
 * $QFT_BIN is the qft command, $QFT_SOURCE_ROOT the tree, $QFT_TRAIN_TYPES the train_types
 * this build has plugins for (cases whose plugins are missing are skipped). */
#include "run_util.h"

#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[4096];

static const char *const k_types[] = {"lora", "qlora"};
#define N_TYPES 2

static const char *k_overrides =
    "--set data.count=16 --set train.batch_size=2 --set train.grad_accum=2 "
    "--set model.config.hidden_size=64 --set model.config.intermediate_size=128 "
    "--set model.config.num_hidden_layers=2 --set model.config.num_attention_heads=2 "
    "--set model.config.num_key_value_heads=1 --set data.context_length=160 "
    "--set output.save_dtype=\\\"f32\\\" --set train.log_every=1";

static int type_built(const char *type) { return ru_type_built("QFT_TRAIN_TYPES", type); }

/* qft train configs/<type>.cfg with the tiny overrides and `extra`; returns the status. */
static int train(const char *type, const char *extra, char *out, size_t size) {
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    ck_assert_msg(qft && root, "QFT_BIN and QFT_SOURCE_ROOT must be set");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s train %s/configs/%s.cfg %s %s -q 2>&1", qft, root, type,
             k_overrides, extra);
    return ru_run(cmd, out, size);
}

static void train_ok(const char *type, const char *extra) {
    static char out[1 << 16];
    const int st = train(type, extra, out, sizeof out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "qft train %s %s failed:\n%s", type,
                  extra, out);
}

/* The run fails with a message holding every string of want[] (NULL-terminated). */
static void train_fails(const char *type, const char *extra, const char *const *want) {
    static char out[1 << 16];
    const int st = train(type, extra, out, sizeof out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "qft train %s %s succeeded:\n%s", type,
                  extra, out);
    for (; *want; want++)
        ck_assert_msg(strstr(out, *want) != NULL, "the message lacks \"%s\":\n%s", *want, out);
    printf("  expected failure: %s", strstr(out, "rank 0 of") ? strstr(out, "rank 0 of") : out);
}

START_TEST(test_stopped_and_resumed) {
    const char *type = k_types[_i];
    if (!type_built(type)) {
        printf("skip: %s (its plugins are not built)\n", type);
        return;
    }
    char a[4096], b[4096], extra[16384];
    snprintf(a, sizeof a, "%s/%s-stopped-straight", g_tmp, type);
    snprintf(b, sizeof b, "%s/%s-stopped-resumed", g_tmp, type);
    snprintf(extra, sizeof extra, "--set train.schedule=\\\"constant\\\" --set train.max_steps=6 "
             "--set output.save_state_every=3 --set output.dir=\\\"%s\\\"", a);
    train_ok(type, extra);
    /* a run of 3 steps: the checkpoint comes from the end of training */
    snprintf(extra, sizeof extra, "--set train.schedule=\\\"constant\\\" --set train.max_steps=3 "
             "--set output.save_state_every=3 --set output.dir=\\\"%s\\\"", b);
    train_ok(type, extra);
    snprintf(extra, sizeof extra, "--set train.schedule=\\\"constant\\\" --set train.max_steps=6 "
             "--set output.save_state_every=3 --set output.dir=\\\"%s\\\" "
             "--set train.resume_from=\\\"%s/checkpoint-3\\\"", b, b);
    train_ok(type, extra);

    const int n = ru_same_resumed(a, b, 1);
    printf("%s: 6 steps straight = 3 steps + resume to 6 (losses, lr, grad norms; %d adapter "
           "tensors; checkpoint-3 and -6 optimizer state), bit for bit\n", type, n);
}
END_TEST

START_TEST(test_interrupted_and_resumed) {
    const char *type = k_types[_i];
    if (!type_built(type)) {
        printf("skip: %s (its plugins are not built)\n", type);
        return;
    }
    char a[4096], b[4096], extra[16384], pa[8192], pb[8192];
    snprintf(a, sizeof a, "%s/%s-cosine-straight", g_tmp, type);
    snprintf(b, sizeof b, "%s/%s-cosine-resumed", g_tmp, type);
    snprintf(extra, sizeof extra, "--set train.max_steps=6 --set output.save_state_every=5 "
             "--set output.dir=\\\"%s\\\"", a);
    train_ok(type, extra);
    /* the interrupted run's folder: every row it logged and half a line */
    ck_assert_int_eq(mkdir(b, 0755), 0);
    ru_sh("cp '%s/metrics.jsonl' '%s/metrics.jsonl'", a, b);
    ru_sh("printf '{\"step\": 7, \"lo' >> '%s/metrics.jsonl'%s", b, "");
    snprintf(extra, sizeof extra, "--set train.max_steps=6 --set output.save_state_every=5 "
             "--set output.dir=\\\"%s\\\" --set train.resume_from=\\\"%s/checkpoint-5\\\"", b, a);
    train_ok(type, extra);

    ru_same_metrics(a, b, 6);
    snprintf(pa, sizeof pa, "%s/adapter/adapter_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/adapter/adapter_model.safetensors", b);
    ru_same_tensors(pa, pb);
    snprintf(pa, sizeof pa, "%s/checkpoint-6", a);
    snprintf(pb, sizeof pb, "%s/checkpoint-6", b);
    ru_same_checkpoint(pa, pb, 1);
    /* the resumed run saves from its own steps on, not the checkpoint it came from */
    snprintf(pb, sizeof pb, "%s/checkpoint-5", b);
    ck_assert_msg(!ru_exists(pb), "%s was written by a run that started after step 5", pb);
    printf("%s: cosine, resumed inside epoch 1 from checkpoint-5 = uninterrupted, bit for bit\n",
           type);
}
END_TEST

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    ck_assert_msg(o != NULL, "%s: %s", path, je.text);
    return o;
}

START_TEST(test_layout) {
    if (!type_built("lora")) {
        printf("skip: lora is not built\n");
        return;
    }
    char a[4096], extra[16384], path[8192];
    snprintf(a, sizeof a, "%s/layout", g_tmp);
    /* the leftover of a save that crashed: replaced, never taken for a checkpoint */
    snprintf(path, sizeof path, "%s/checkpoint-3.tmp", a);
    ru_sh("mkdir -p '%s' && echo junk > '%s/trainer_state.json'", path, path);
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.save_state_every=3 "
             "--set output.dir=\\\"%s\\\" --set output.save=\\\"none\\\"", a);
    train_ok("lora", extra);
    ck_assert_msg(!ru_exists(path), "%s is left behind", path);
    snprintf(path, sizeof path, "%s/checkpoint-4.tmp", a);
    ck_assert_msg(!ru_exists(path), "%s is left behind", path);

    snprintf(path, sizeof path, "%s/checkpoint-3/trainer_state.json", a);
    json_t *o = load_json(path);
    ck_assert_str_eq(json_string_value(json_object_get(o, "format")), "qft.trainer_state");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "format_version")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "global_step")), 3);
    /* 3 steps of 2 micro-batches over 8 batches per epoch */
    ck_assert(json_real_value(json_object_get(o, "epoch")) == 0.75);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "world_size")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(o, "shard_strategy")), "no_shard");
    ck_assert_str_eq(json_string_value(json_object_get(o, "train_type")), "lora");
    ck_assert_str_eq(json_string_value(json_object_get(o, "optimizer")), "adamw");
    ck_assert_int_eq(json_integer_value(json_object_get(o, "seed")), 42);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "total_steps")), 4);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(o, "qft_version")));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(o, "config_file")),
                                 "configs/lora.cfg"));
    const long long n = json_integer_value(json_object_get(o, "n_trainable"));
    /* LoRA rank 16 on q,k,v,gate,up,down of 2 layers, hidden 64, kv 32, intermediate 128:
     * per layer A (16, in) and B (out, 16) for each target */
    const long long per_layer = 16LL * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 128) +
                                        (64 + 128) + (128 + 64));
    ck_assert_int_eq(n, 2 * per_layer);
    json_decref(o);

    qft_st_file f;
    qft_err err = {0, ""};
    snprintf(path, sizeof path, "%s/checkpoint-3/optimizer-rank0-of-1.safetensors", a);
    ck_assert_msg(qft_st_open(path, &f, &err) == 0, "%s", err.msg);
    const char *want[][2] = {{"format", "qft.optimizer_state"}, {"format_version", "1"},
                             {"rank", "0"}, {"world_size", "1"}, {"shard_strategy", "no_shard"},
                             {"offset", "0"}, {"step", "3"}, {"optimizer", "adamw"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *v = qft_st_meta(&f, want[i][0]);
        ck_assert_msg(v && strcmp(v, want[i][1]) == 0, "%s: %s = %s, expected %s", path,
                      want[i][0], v ? v : "(none)", want[i][1]);
    }
    ck_assert_int_eq(atoll(qft_st_meta(&f, "len")), n);
    const char *names[] = {"params", "exp_avg", "exp_avg_sq"};
    for (int i = 0; i < 3; i++) {
        const qft_st_entry *e = qft_st_find(&f, names[i]);
        ck_assert_msg(e != NULL, "%s lacks %s", path, names[i]);
        ck_assert_int_eq(e->t.dtype, QFT_DT_F32);
        ck_assert_int_eq((long long)qft_st_numel(&e->t), n);
    }
    qft_st_close(&f);
    printf("layout: trainer_state.json and optimizer-rank0-of-1.safetensors hold %lld trainable "
           "floats at step 3; a leftover checkpoint-3.tmp was replaced\n", n);
}
END_TEST

START_TEST(test_damaged) {
    if (!type_built("lora")) {
        printf("skip: lora is not built\n");
        return;
    }
    char src[4096], dir[4096], extra[16384], file[8192];
    snprintf(src, sizeof src, "%s/damaged-src", g_tmp);
    snprintf(extra, sizeof extra, "--set train.max_steps=2 --set output.save_state_every=2 "
             "--set output.dir=\\\"%s\\\" --set output.save=\\\"none\\\"", src);
    train_ok("lora", extra);

    /* the rank file missing */
    snprintf(dir, sizeof dir, "%s/missing", g_tmp);
    ru_sh("cp -r '%s/checkpoint-2' '%s'", src, dir);
    snprintf(file, sizeof file, "%s/optimizer-rank0-of-1.safetensors", dir);
    ck_assert_int_eq(remove(file), 0);
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set train.resume_from=\\\"%s\\\"", g_tmp, dir);
    const char *want_file[] = {"rank 0 of 1", file, NULL};
    train_fails("lora", extra, want_file);

    /* the rank file cut short */
    snprintf(dir, sizeof dir, "%s/truncated", g_tmp);
    ru_sh("cp -r '%s/checkpoint-2' '%s'", src, dir);
    snprintf(file, sizeof file, "%s/optimizer-rank0-of-1.safetensors", dir);
    ck_assert_int_eq(truncate(file, 500), 0);
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set train.resume_from=\\\"%s\\\"", g_tmp, dir);
    const char *want_trunc[] = {"rank 0 of 1", file, "damaged", NULL};
    train_fails("lora", extra, want_trunc);

    /* written by 2 ranks (trainer_state.json says so): the world sizes are named */
    snprintf(dir, sizeof dir, "%s/two-ranks", g_tmp);
    ru_sh("cp -r '%s/checkpoint-2' '%s'", src, dir);
    snprintf(file, sizeof file, "%s/trainer_state.json", dir);
    ru_sh("sed -i 's/\"world_size\": 1/\"world_size\": 2/' '%s'%s", file, "");
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set train.resume_from=\\\"%s\\\"", g_tmp, dir);
    const char *want_world[] = {"rank 0 of 1", "written by 2 ranks", "this run has 1",
                                "mpirun -np 2", NULL};
    train_fails("lora", extra, want_world);

    /* another model shape: both counts of trainable floats */
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set adapter.rank=8 --set train.resume_from=\\\"%s/checkpoint-2\\\"", g_tmp, src);
    const char *want_n[] = {"holds 28672 trainable floats", "this run has 14336", NULL};
    train_fails("lora", extra, want_n);

    /* no checkpoint there */
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set train.resume_from=\\\"%s/no-such-checkpoint\\\"", g_tmp, g_tmp);
    const char *want_none[] = {"no-such-checkpoint/trainer_state.json", NULL};
    train_fails("lora", extra, want_none);

    /* the keys are checked like any other */
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set output.save_state_every=-1", g_tmp);
    const char *want_key[] = {"output.save_state_every", NULL};
    train_fails("lora", extra, want_key);
    snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
             "--set train.resume_from=3", g_tmp);
    const char *want_str[] = {"train.resume_from", NULL};
    train_fails("lora", extra, want_str);

    if (type_built("qlora")) {
        snprintf(extra, sizeof extra, "--set train.max_steps=4 --set output.dir=\\\"%s/out\\\" "
                 "--set train.resume_from=\\\"%s/checkpoint-2\\\"", g_tmp, src);
        const char *want_type[] = {"train_type \"lora\"", "this run is \"qlora\"", NULL};
        train_fails("qlora", extra, want_type);
    }
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-test-resume-XXXXXX");
    if (!mkdtemp(g_tmp)) return EXIT_FAILURE;
    Suite *s = suite_create("resume");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_stopped_and_resumed, 0, N_TYPES);
    tcase_add_loop_test(tc, test_interrupted_and_resumed, 0, N_TYPES);
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_damaged);
    suite_add_tcase(s, tc);
    return ru_run_suite(s, g_tmp);
}
