/* Run configs: composition of train_types, --set overrides, and errors that name the
 * file, the line and the key. */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[4096];

/* Writes text to a fresh file in the test's temporary folder and returns its path. */
static const char *write_cfg(const char *name, const char *text) {
    static char path[8192];
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static const char *k_base =
    "train_type = \"qlora\";\n"                                   /* 1 */
    "model: { path = \"models/tiny\"; };\n"                       /* 2 */
    "data: { plugin = \"orca_math\"; context_length = 256; };\n"  /* 3 */
    "train: { lr = 2e-4; batch_size = 4; betas = [0.9, 0.99];\n"  /* 4 */
    "         schedule = \"cosine\"; };\n"                        /* 5 */
    "shard: { plugin = \"ddp\"; };\n";                            /* 6 */

START_TEST(test_compose_and_resolve) {
    qft_run_config rc;
    qft_err err = {0};
    const char *p = write_cfg("base.cfg", k_base);
    ck_assert_msg(qft_config_load(&rc, p, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(rc.quant_plugin, "bnb_nf4");
    ck_assert_str_eq(rc.adapter_plugin, "lora");
    ck_assert_str_eq(rc.model.path, "models/tiny");
    ck_assert_str_eq(rc.tokenizer.path, "models/tiny"); /* defaults to model.path */
    ck_assert_int_eq(rc.data.context_length, 256);
    ck_assert_double_eq_tol(rc.train.lr, 2e-4, 1e-12);
    ck_assert_double_eq_tol(rc.train.beta2, 0.99, 1e-12);
    ck_assert_int_eq(rc.train.batch_size, 4);
    ck_assert_str_eq(rc.train.schedule, "cosine");
    ck_assert_str_eq(rc.shard.plugin, "no_shard"); /* ddp is the seed's name for it */
    ck_assert_str_eq(rc.train.optimizer, "adamw");
    ck_assert_int_eq(rc.train.embedding_on_host, 1); /* a frozen embedding leaves the GPU */
    qft_config_free(&rc);
}
END_TEST

START_TEST(test_aliases_and_user_types) {
    qft_run_config rc;
    qft_err err = {0};
    const char *p = write_cfg("alias.cfg",
                              "train_type = \"custom_qlora\";\n"
                              "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n");
    ck_assert_msg(qft_config_load(&rc, p, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(rc.quant_plugin, "bnb_nf4");
    ck_assert_str_eq(rc.adapter_plugin, "lora");
    qft_config_free(&rc);
    p = write_cfg("user.cfg",
                  "train_type = \"int8_lora\";\n"
                  "train_types = { int8_lora = { quant = \"int8_rowwise\"; adapter = \"lora\"; }; };\n"
                  "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n");
    ck_assert_msg(qft_config_load(&rc, p, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(rc.quant_plugin, "int8_rowwise");
    qft_config_free(&rc);
    /* a section's plugin key overrides the train_type's choice */
    p = write_cfg("override.cfg",
                  "train_type = \"bnb_dora\";\nquant: { plugin = \"hqq\"; };\n"
                  "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n");
    ck_assert_msg(qft_config_load(&rc, p, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(rc.quant_plugin, "hqq");
    ck_assert_str_eq(rc.adapter_plugin, "dora");
    qft_config_free(&rc);
}
END_TEST

START_TEST(test_unknown_train_type_lists_names) {
    qft_run_config rc;
    qft_err err = {0};
    const char *p = write_cfg("badtype.cfg", "train_type = \"qdora\";\nmodel: { path = \"m\"; };\n"
                                             "data: { plugin = \"alpaca\"; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "train_type \"qdora\" is not defined"));
    ck_assert_ptr_nonnull(strstr(err.msg, "bnb_dora"));
    qft_config_free(&rc);
}
END_TEST

START_TEST(test_set_overrides) {
    qft_run_config rc;
    qft_err err = {0};
    const char *p = write_cfg("base.cfg", k_base);
    const char *sets[] = {"train.lr=2e-5", "train.batch_size=16", "model.path=other/dir",
                          "train.recompute=true", "train.betas=[0.8, 0.9]",
                          "train.embedding_on_host=false"};
    ck_assert_msg(qft_config_load(&rc, p, NULL, sets, 6, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rc.train.embedding_on_host, 0);
    ck_assert_double_eq_tol(rc.train.lr, 2e-5, 1e-15);
    ck_assert_int_eq(rc.train.batch_size, 16);
    ck_assert_str_eq(rc.model.path, "other/dir"); /* a bare word is a string */
    ck_assert_int_eq(rc.train.recompute, 1);
    ck_assert_double_eq_tol(rc.train.beta1, 0.8, 1e-12);
    qft_config_free(&rc);
    /* an override that introduces an unknown key is refused, naming it */
    const char *bad[] = {"train.learning_rate=1e-4"};
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, bad, 1, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "--set train.learning_rate: unknown key"));
    qft_config_free(&rc);
    const char *malformed[] = {"train.lr"};
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, malformed, 1, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected section.key=value"));
    qft_config_free(&rc);
}
END_TEST

START_TEST(test_errors_name_file_line_key) {
    qft_run_config rc;
    qft_err err = {0};
    char want[8192];
    /* unknown key in a section */
    const char *p = write_cfg("unknown.cfg", "model: { path = \"m\"; };\n"
                                             "data: { plugin = \"alpaca\"; };\n"
                                             "train: { lr = 1e-4;\n  lrr = 2e-4; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s:4: train.lrr: unknown key", p);
    ck_assert_msg(strstr(err.msg, want), "got: %s", err.msg);
    qft_config_free(&rc);
    /* unknown top-level section */
    p = write_cfg("top.cfg", "model: { path = \"m\"; };\noptimiser: { lr = 1; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s:2: optimiser: unknown key", p);
    ck_assert_msg(strstr(err.msg, want), "got: %s", err.msg);
    qft_config_free(&rc);
    /* mistyped value */
    p = write_cfg("typed.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n"
                               "train: {\n  lr = \"fast\"; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s:4: train.lr: expected a number, got a string", p);
    ck_assert_msg(strstr(err.msg, want), "got: %s", err.msg);
    qft_config_free(&rc);
    /* out of range and a wrong choice */
    p = write_cfg("range.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n"
                               "train: { batch_size = 0; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s:3: train.batch_size: 0 is out of range", p);
    ck_assert_msg(strstr(err.msg, want), "got: %s", err.msg);
    qft_config_free(&rc);
    p = write_cfg("choice.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n"
                                "train: { schedule = \"cosin\"; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_msg(strstr(err.msg, "train.schedule: \"cosin\" is not one of"), "got: %s", err.msg);
    qft_config_free(&rc);
    /* shard.device_transport: "auto" unless set, and only its three values */
    p = write_cfg("devt.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n");
    ck_assert_int_eq(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_str_eq(rc.shard.device_transport, "auto");
    ck_assert_int_eq(rc.shard.pin_memory, 1); /* cpu_offload's buffers page-locked unless off */
    qft_config_free(&rc);
    p = write_cfg("pin.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n"
                             "shard: { cpu_offload = true; pin_memory = false; };\n");
    ck_assert_int_eq(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_int_eq(rc.shard.pin_memory, 0);
    ck_assert_int_eq(rc.shard.cpu_offload, 1);
    qft_config_free(&rc);
    p = write_cfg("pin2.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n"
                              "shard: { pin_memory = \"yes\"; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_msg(strstr(err.msg, "shard.pin_memory"), "got: %s", err.msg);
    qft_config_free(&rc);
    p = write_cfg("devt2.cfg", "model: { path = \"m\"; };\ndata: { plugin = \"alpaca\"; };\n"
                              "shard: { device_transport = \"mpi\"; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_msg(strstr(err.msg, "shard.device_transport: \"mpi\" is not one of"), "got: %s",
                  err.msg);
    qft_config_free(&rc);
    /* syntax error: libconfig's own message, with file and line */
    p = write_cfg("syntax.cfg", "model: { path = \"m\"; };\ntrain: { lr = ; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s:2: ", p);
    ck_assert_msg(strstr(err.msg, want), "got: %s", err.msg);
    qft_config_free(&rc);
    /* a required key missing */
    p = write_cfg("nodata.cfg", "model: { path = \"m\"; };\n");
    ck_assert_int_ne(qft_config_load(&rc, p, NULL, NULL, 0, &err), 0);
    ck_assert_msg(strstr(err.msg, "data.plugin is required"), "got: %s", err.msg);
    qft_config_free(&rc);
}
END_TEST

START_TEST(test_plugin_keys_checked) {
    qft_run_config rc;
    qft_err err = {0};
    const char *p = write_cfg("pk.cfg", "model: { path = \"m\"; };\n"
                                        "data: { plugin = \"orca_math\"; path = \"x.jsonl\";\n"
                                        "  colour = \"blue\"; };\n");
    ck_assert_msg(qft_config_load(&rc, p, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    const char *const plugin_keys[] = {"path", NULL};
    char want[8192];
    ck_assert_int_ne(qft_config_check_keys(rc.sec_data, plugin_keys, &err), 0);
    snprintf(want, sizeof want, "%s:3: data.colour: unknown key", p);
    ck_assert_msg(strstr(err.msg, want), "got: %s", err.msg);
    ck_assert_ptr_nonnull(strstr(err.msg, "context_length")); /* lists what is known */
    qft_config_free(&rc);
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-test-config-XXXXXX");
    if (!mkdtemp(g_tmp)) return EXIT_FAILURE;
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_compose_and_resolve);
    tcase_add_test(tc, test_aliases_and_user_types);
    tcase_add_test(tc, test_unknown_train_type_lists_names);
    tcase_add_test(tc, test_set_overrides);
    tcase_add_test(tc, test_errors_name_file_line_key);
    tcase_add_test(tc, test_plugin_keys_checked);
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
