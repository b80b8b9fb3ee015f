/* qft and libqft start where MPI, the CUDA runtime and NCCL are not installed: neither
 * lists them among its needed libraries (readelf -d), nor does the loader pull them in
 * (ldd), and a one-process run (`qft version`, a tiny training run) loads none of them. The
 * transports that need them live in libqft_mpi.so / libqft_nccl.so, dlopened on demand. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static const char *const g_banned[] = {"libmpi", "libcudart", "libnccl"};
static char g_tmp[4096];

/* Runs cmd through the shell; stdout and stderr into *out (caller frees). Exit status. */
static int sh(const char *cmd, char **out) {
    char full[16384];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        if ((n += got) + 1 >= cap) {
            buf = realloc(buf, cap *= 2);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[n] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int have_tool(const char *tool) {
    char cmd[256], *out;
    snprintf(cmd, sizeof cmd, "command -v %s", tool);
    int rc = sh(cmd, &out);
    free(out);
    return rc == 0;
}

static void assert_none_banned(const char *what, const char *listing) {
    for (size_t i = 0; i < sizeof g_banned / sizeof g_banned[0]; i++) {
        ck_assert_msg(!strstr(listing, g_banned[i]), "%s lists %s:\n%s", what, g_banned[i],
                      listing);
    }
}

/* The DT_NEEDED entries of the executable and of libqft themselves. */
START_TEST(t_needed) {
    if (!have_tool("readelf")) {
        printf("t_needed: skipped: readelf not found (binutils)\n");
        return;
    }
    const char *files[] = {getenv("QFT_BIN"), getenv("QFT_LIBQFT")};
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(files[i], "QFT_BIN / QFT_LIBQFT not set by meson");
        char cmd[8192], *out;
        snprintf(cmd, sizeof cmd, "readelf -d '%s' | grep NEEDED", files[i]);
        ck_assert_int_eq(sh(cmd, &out), 0);
        /* A listing that really parsed: libc is always needed. */
        ck_assert_msg(strstr(out, "libc.so"), "%s", out);
        assert_none_banned(files[i], out);
        free(out);
    }
}
END_TEST

/* What the dynamic loader resolves for qft, transitively. */
START_TEST(t_ldd) {
    if (!have_tool("ldd")) {
        printf("t_ldd: skipped: ldd not found\n");
        return;
    }
    char cmd[8192], *out;
    snprintf(cmd, sizeof cmd, "env -u LD_LIBRARY_PATH ldd '%s'", getenv("QFT_BIN"));
    ck_assert_int_eq(sh(cmd, &out), 0);
    ck_assert_msg(strstr(out, "libqft.so") && !strstr(out, "not found"), "%s", out);
    assert_none_banned("ldd qft", out);
    free(out);
}
END_TEST

/* qft runs with no LD_LIBRARY_PATH and outside any launcher; LD_DEBUG=files shows every
 * object the loader maps, so a one-process run must map none of the three. */
START_TEST(t_runs_without) {
    const char *qft = getenv("QFT_BIN");
    const char *clean = "env -u LD_LIBRARY_PATH -u OMPI_COMM_WORLD_SIZE -u OMPI_COMM_WORLD_RANK "
                        "-u PMI_SIZE -u PMI_RANK -u PMIX_SIZE -u PMIX_RANK";
    char cmd[16384], *out;
    snprintf(cmd, sizeof cmd, "%s LD_DEBUG=files '%s' version", clean, qft);
    ck_assert_msg(sh(cmd, &out) == 0, "qft version: %s", out);
    ck_assert_msg(strstr(out, "qft " QFT_VERSION), "%s", out);
    int debug_works = strstr(out, "libqft.so") != NULL;
    if (debug_works) assert_none_banned("qft version (LD_DEBUG=files)", out);
    free(out);
    snprintf(cmd, sizeof cmd, "cat > '%s/run.cfg' <<'EOF'\n"
             "train_type = \"full\";\n"
             "model: { config = { hidden_size = 32; intermediate_size = 64; num_hidden_layers = 1;\n"
             "  num_attention_heads = 2; num_key_value_heads = 1; }; };\n"
             "tokenizer: { kind = \"byte\"; };\n"
             "data: { plugin = \"synth_math\"; count = 64; context_length = 64; };\n"
             "train: { batch_size = 2; max_steps = 3; lr = 1e-3; seed = 5; };\n"
             "output: { dir = \"%s/run\"; save = \"none\"; };\nEOF\n"
             "%s LD_DEBUG=files '%s' train '%s/run.cfg' -q && tail -n 1 '%s/run/metrics.jsonl'",
             g_tmp, g_tmp, clean, qft, g_tmp, g_tmp);
    int rc = sh(cmd, &out);
    ck_assert_msg(rc == 0, "qft train: %s", out);
    ck_assert_msg(strstr(out, "\"step\": 3") || strstr(out, "\"step\":3"), "%s", out);
    if (debug_works) {
        assert_none_banned("qft train (LD_DEBUG=files)", out);
    } else {
        printf("t_runs_without: LD_DEBUG not honoured here; checked the exit status only\n");
    }
    free(out);
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-test-linkage-XXXXXX");
    if (!mkdtemp(g_tmp)) return EXIT_FAILURE;
    Suite *s = suite_create("transport_linkage");
    TCase *tc = tcase_create("linkage");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, t_needed);
    tcase_add_test(tc, t_ldd);
    tcase_add_test(tc, t_runs_without);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
