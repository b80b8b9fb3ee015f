/* The qft command end to end: a short training run from a config with falling loss,
 * metrics.jsonl, the saved model folder, `qft plugins`, and config errors that exit
 * non-zero with file, line and key. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[4096];
static const char *g_qft;

/* Runs a shell command, captures stdout+stderr into *out (malloc'ed); returns exit code. */
static int run(const char *cmd, char **out) {
    char full[16384];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *write_file(const char *name, const char *text) {
    static char path[8192];
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static const char *k_small =
    "train_type = \"full\";\n"
    "model: { config = { hidden_size = 64; intermediate_size = 160; num_hidden_layers = 2;\n"
    "  num_attention_heads = 4; num_key_value_heads = 2; max_position_embeddings = 512; }; };\n"
    "tokenizer: { kind = \"byte\"; };\n"
    "data: { plugin = \"synth_math\"; count = 400; context_length = 256; };\n"
    "train: { batch_size = 4; grad_accum = 2; max_steps = 30; lr = 3e-3; schedule = \"cosine\";\n"
    "         grad_clip = 1.0; seed = 7; };\n"
    "output: { save = \"model\"; save_dtype = \"f32\"; };\n";

START_TEST(test_train_loss_falls_and_saves) {
    const char *cfg = write_file("small.cfg", k_small);
    char cmd[16384], *out;
    snprintf(cmd, sizeof cmd, "%s train %s --set output.dir=%s/run -q", g_qft, cfg, g_tmp);
    int code = run(cmd, &out);
    ck_assert_msg(code == 0, "qft train failed (%d): %s", code, out);
    free(out);
    /* metrics.jsonl: one object per step, with the agreed keys, and a falling loss */
    char path[8192];
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", g_tmp);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int rows = 0;
    double first = 0, last = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        ck_assert_msg(o != NULL, "bad JSON line: %s", line);
        ck_assert_int_eq(json_integer_value(json_object_get(o, "step")), rows + 1);
        ck_assert(json_is_number(json_object_get(o, "lr")));
        ck_assert(json_number_value(json_object_get(o, "tokens_per_s")) > 0);
        double loss = json_number_value(json_object_get(o, "loss"));
        if (rows == 0) first = loss;
        last = loss;
        rows++;
        json_decref(o);
    }
    fclose(f);
    ck_assert_int_eq(rows, 30);
    /* byte-level: ln(259) = 5.56 at random init */
    ck_assert_msg(first > 4.5 && first < 6.5, "first loss %f", first);
    ck_assert_msg(last < first - 1.0, "loss did not fall: %f -> %f", first, last);
    /* the saved folder */
    snprintf(path, sizeof path, "%s/run/model/model.safetensors", g_tmp);
    ck_assert_int_eq(access(path, R_OK), 0);
    snprintf(path, sizeof path, "%s/run/model/config.json", g_tmp);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "hidden_size")), 64);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "vocab_size")), 259);
    json_decref(c);
}
END_TEST

START_TEST(test_same_seed_same_run) {
    /* one seed drives every random choice: two runs give identical metrics losses */
    const char *cfg = write_file("seed.cfg", k_small);
    char cmd[16384], *out;
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s train %s --set output.dir=%s/seed%d --set train.max_steps=4 "
                                  "--set output.save=\\\"none\\\" -q", g_qft, cfg, g_tmp, i);
        int code = run(cmd, &out);
        ck_assert_msg(code == 0, "%s", out);
        free(out);
    }
    char a[8192], b[8192];
    snprintf(cmd, sizeof cmd, "cut -d, -f1,2 %s/seed0/metrics.jsonl", g_tmp);
    char *oa, *ob;
    run(cmd, &oa);
    snprintf(cmd, sizeof cmd, "cut -d, -f1,2 %s/seed1/metrics.jsonl", g_tmp);
    run(cmd, &ob);
    ck_assert_str_eq(oa, ob);
    ck_assert_int_gt(strlen(oa), 20);
    (void)a, (void)b;
    free(oa), free(ob);
}
END_TEST

START_TEST(test_plugins_lists_built) {
    char cmd[8192], *out;
    snprintf(cmd, sizeof cmd, "%s plugins", g_qft);
    ck_assert_int_eq(run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "dataset") && strstr(out, "synth_math") && strstr(out, ".so"),
                  "%s", out);
    free(out);
}
END_TEST

START_TEST(test_config_errors_exit_nonzero) {
    char cmd[16384], *out;
    const char *cfg = write_file("bad.cfg", "train_type = \"full\";\n"
                                            "model: { config = { hidden_size = 64; }; };\n"
                                            "train: { lr = 1e-3;\n  batchsize = 4; };\n");
    snprintf(cmd, sizeof cmd, "%s train %s", g_qft, cfg);
    ck_assert_int_ne(run(cmd, &out), 0);
    char want[8192];
    snprintf(want, sizeof want, "%s:4: train.batchsize: unknown key", cfg);
    ck_assert_msg(strstr(out, want), "%s", out);
    free(out);
    /* a plugin that is not here stops the run, naming it and listing those that are */
    cfg = write_file("q.cfg", k_small);
    snprintf(cmd, sizeof cmd, "%s train %s --set train_type=\\\"qlora\\\" "
             "--set adapter.plugin=\\\"lorax\\\" --set output.dir=%s/q", g_qft, cfg, g_tmp);
    ck_assert_int_ne(run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "no adapter plugin named \"lorax\"") && strstr(out, "llama_pro"),
                  "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s train %s --set quant.plugin=\\\"nf5\\\" --set output.dir=%s/q",
             g_qft, cfg, g_tmp);
    ck_assert_int_ne(run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "no quantizer plugin named \"nf5\""), "%s", out);
    free(out);
    /* a missing dataset plugin lists those that exist */
    snprintf(cmd, sizeof cmd, "%s train %s --set data.plugin=\\\"orca_mathh\\\"", g_qft, cfg);
    ck_assert_int_ne(run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "no dataset plugin named \"orca_mathh\"") &&
                      strstr(out, "synth_math"), "%s", out);
    free(out);
}
END_TEST

START_TEST(test_data_show) {
    char cmd[8192], *out;
    snprintf(cmd, sizeof cmd, "%s data --show 2 --set data.count=64", g_qft);
    ck_assert_int_eq(run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "64 rows (0 bad rows skipped); 64 examples used"), "%s", out);
    ck_assert_msg(strstr(out, "--- example 1:"), "%s", out);
    /* the prompt is the masked part, the answer with its EOS the trained part */
    ck_assert_msg(strstr(out, "masked:  \"<s>###Question:\\n"), "%s", out);
    ck_assert_msg(strstr(out, "\\n###Answer:\\n\"\ntrained: \""), "%s", out);
    ck_assert_msg(strstr(out, "</s>\"\n"), "%s", out);
    free(out);
}
END_TEST

START_TEST(test_tokenize_command) {
    char cmd[8192], *out;
    snprintf(cmd, sizeof cmd, "printf 'hi\\n' | %s tokenize --tokenizer byte", g_qft);
    ck_assert_int_eq(run(cmd, &out), 0);
    ck_assert_str_eq(out, "[256, 104, 105]\n");
    free(out);
    snprintf(cmd, sizeof cmd, "printf '\"a\\\\nb\"\\n' | %s tokenize --tokenizer byte --json --no-special", g_qft);
    ck_assert_int_eq(run(cmd, &out), 0);
    ck_assert_str_eq(out, "[97, 10, 98]\n");
    free(out);
    snprintf(cmd, sizeof cmd, "echo '[104, 105, 257]' | %s tokenize --tokenizer byte --decode --no-special", g_qft);
    ck_assert_int_eq(run(cmd, &out), 0);
    ck_assert_str_eq(out, "\"hi\"\n");
    free(out);
}
END_TEST

START_TEST(test_quantize_command) {
    const char *src = getenv("QFT_SOURCE_ROOT"), *ex = getenv("QFT_EXAMPLE_PLUGIN_DIR");
    ck_assert_ptr_nonnull(src);
    ck_assert_ptr_nonnull(ex);
    char cmd[16384], *out;
    snprintf(cmd, sizeof cmd,
             "%s quantize %s/tests/fixtures/io/tiny_llama_f32 --method int8_rowwise -o %s/q8 "
             "--plugin-path %s", g_qft, src, g_tmp, ex);
    ck_assert_int_eq(run(cmd, &out), 0);
    /* 2 layers x 7 linears; int8 codes plus one fp32 scale per row */
    ck_assert_msg(strstr(out, "of 14 linears with int8_rowwise") && strstr(out, "bits per weight"),
                  "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "head -c 20000 %s/q8/model.safetensors | grep -c -a "
                              "'model.layers.1.mlp.down_proj.weight_scale'", g_tmp);
    ck_assert_int_eq(run(cmd, &out), 0);
    free(out);
    /* an unknown method lists the quantizers there are */
    snprintf(cmd, sizeof cmd, "%s quantize %s/tests/fixtures/io/tiny_llama_f32 --method nf3 -o "
                              "%s/q3 --plugin-path %s", g_qft, src, g_tmp, ex);
    ck_assert_int_ne(run(cmd, &out), 0);
    ck_assert_msg(strstr(out, "no quantizer plugin named \"nf3\"") && strstr(out, "int8_rowwise"),
                  "%s", out);
    free(out);
}
END_TEST

/* issue 3's end-to-end check: real data (../shared) through the Llama 3 tokenizer */
START_TEST(test_real_data_llama3) {
    const char *src = getenv("QFT_SOURCE_ROOT");
    char probe[8192];
    snprintf(probe, sizeof probe, "%s/../shared/assets/tokenizers/llama3/tokenizer.json", src);
    if (access(probe, R_OK) != 0) {
        printf("skipped: %s is absent (../shared holds the third-party data)\n", probe);
        return;
    }
    const char *cfgs[] = {"orca_math_llama3", "alpaca_llama3"};
    for (int i = 0; i < 2; i++) {
        char cmd[16384], *out;
        snprintf(cmd, sizeof cmd,
                 "cd %s && %s train configs/%s.cfg --set train.max_steps=4 "
                 "--set output.dir=\\\"%s/%s\\\" -q && cat %s/%s/metrics.jsonl",
                 src, g_qft, cfgs[i], g_tmp, cfgs[i], g_tmp, cfgs[i]);
        ck_assert_msg(run(cmd, &out) == 0, "%s: %s", cfgs[i], out);
        /* a random model over Llama 3's 128,256 tokens starts near ln(128256) = 11.76 */
        const char *l = strstr(out, "\"loss\": ");
        ck_assert_ptr_nonnull(l);
        double first = atof(l + 8);
        ck_assert_msg(first > 11.0 && first < 12.5, "%s: first loss %f", cfgs[i], first);
        ck_assert_msg(strstr(out, "\"step\": 4"), "%s", out);
        free(out);
    }
}
END_TEST

int main(void) {
    g_qft = getenv("QFT_BIN");
    if (!g_qft) return EXIT_FAILURE;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-test-cli-XXXXXX");
    if (!mkdtemp(g_tmp)) return EXIT_FAILURE;
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_train_loss_falls_and_saves);
    tcase_add_test(tc, test_same_seed_same_run);
    tcase_add_test(tc, test_plugins_lists_built);
    tcase_add_test(tc, test_config_errors_exit_nonzero);
    tcase_add_test(tc, test_data_show);
    tcase_add_test(tc, test_tokenize_command);
    tcase_add_test(tc, test_quantize_command);
    tcase_add_test(tc, test_real_data_llama3);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
