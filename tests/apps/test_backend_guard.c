/* The model on another backend's memory, checked without a device (train.backend =
 * "cpu_guard": the CPU kernels behind a memory guard, core/cpu/cpu_guard.c).
 *
 *   - the guard bites: a host write to its memory outside an op kills the process with
 *     SIGSEGV (in a child), while upload/download round-trip the bytes;
 *   - full (recompute on and off, tied embeddings) and llama_pro train on cpu_guard with
 *     shard.cpu_offload = true exactly as on the cpu backend: the same losses and gradient
 *     norms bit for bit, the same saved model. Any host access to backend memory in the
 *     model or the training loop would have stopped the run;
 *   - the same without cpu_offload, the optimizer and clipping on the backend (AdamW, and
 *     SGD with momentum), and a training-state checkpoint staged through the host and
 *     resumed from there;
 *   - quantized bases and per-linear adapters there (packed weights copied packed and
 *     dequantized by the backend's op; adapters attached again on the backend's copies,
 *     computing through its op table): LoRA with dropout, QLoRA on NF4 and HQQ, Llama-Pro
 *     on NF4 reproduce the cpu backend's bits (also with the head and loss in chunks and
 *     with bf16 residuals) where the BLAS's rounding does not depend on how a GEMM's
 *     columns are split, and agree to rounding where it does (gemm_split_exact); DoRA
 *     computes its norm exactly once per parameter version off the host (the cpu backend
 *     caches an expansion), so it agrees to rounding;
 *     a merged save after training on the backend merges on the host;
 *   - the refusals: cpu_offload and frozen_dtype on the cpu backend, TF32 on cpu_guard,
 *     NCCL over cpu_guard's memory (a quantizer without a packed layout:
 *     tests/quant_example).
 * $QFT_BIN is the qft command, $QFT_SOURCE_ROOT the tree. */
#include "cpu_ops.h"
#include "qft_base.h"
#include "run_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[4096];

/* cpu_guard multiplies by packed and bf16 weights a tile of rows at a time
 * (qft_cpu_qmatmul), the cpu backend's quantized linears in tiles of their own
 * (core/qlinear), so the two runs make the same products as GEMM calls split differently
 * over the output's columns. They agree bit for bit where the BLAS rounds each column the
 * same however the columns are split (OpenBLAS's SkylakeX sgemm does; its Haswell and Zen
 * kernels, on AVX2 machines, do not), and to rounding elsewhere. 1 when this machine's GEMM
 * is of the first kind, probed on tilings like the runs'. */
static int gemm_split_exact(void) {
    enum { M = 384, K = 64, N = 128 };
    static float A[M * K], B[N * K], whole[M * N], split[M * N];
    qft_rng r;
    qft_rng_seed(&r, 7);
    for (int i = 0; i < M * K; i++) A[i] = qft_rng_normal(&r);
    for (int i = 0; i < N * K; i++) B[i] = qft_rng_normal(&r);
    qft_cpu_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, whole, N);
    const int tiles[] = {1, 5, 24, 48, 96};
    for (size_t t = 0; t < sizeof tiles / sizeof tiles[0]; t++) {
        for (int c0 = 0; c0 < N; c0 += tiles[t]) {
            const int n = N - c0 < tiles[t] ? N - c0 : tiles[t];
            qft_cpu_gemm(0, 1, M, n, K, 1.0f, A, K, B + (size_t)c0 * K, K, 0.0f, split + c0, N);
        }
        if (memcmp(whole, split, sizeof whole)) return 0;
    }
    return 1;
}
static int g_split_exact;

START_TEST(test_guard_bites) {
    const qft_ops *o = qft_cpu_guard_ops();
    float host[300], back[300];
    for (int i = 0; i < 300; i++) host[i] = (float)i * 0.37f - 11.0f;
    float *dev = o->alloc(sizeof host, "test"); // (300)
    ck_assert(dev != NULL);
    o->upload(dev, host, sizeof host);
    o->download(back, dev, sizeof back);
    ck_assert_int_eq(memcmp(host, back, sizeof host), 0);
    fflush(NULL);
    const pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would turn the fault into an exit */
        dev[7] = 1.0f;            /* a host write to backend memory */
        _exit(0);
    }
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
                  "a host write to guarded memory did not fault (status %d)", st);
    o->free(dev);
}
END_TEST

/* qft train (under `launch`: "" or an mpirun line) configs/<type>.cfg on `backend`. */
static void train_with(const char *launch, const char *type, const char *backend,
                       int offload, const char *extra, const char *dir) {
    char pre[1024] = "", sets[16384];
    if (*launch) snprintf(pre, sizeof pre, "%s -np 2 -x OMP_NUM_THREADS=1", launch);
    snprintf(sets, sizeof sets, "--set train.backend=\\\"%s\\\" %s %s", backend,
             strcmp(backend, "cpu") && offload ? "--set shard.cpu_offload=true" : "", extra);
    ru_train(pre, type, sets, dir);
}

static void train(const char *type, const char *backend, int offload, const char *extra,
                  const char *dir) {
    train_with("", type, backend, offload, extra, dir);
}

/* offload 1: the optimizer on the host copies; 0: on the backend */
static const struct {
    const char *type, *extra;
    int offload;
} k_cases[] = {
    {"full", "--set train.recompute=true", 1},
    {"full", "--set train.recompute=false --set model.config.tie_word_embeddings=true", 1},
    {"llama_pro", "", 1},
    {"full", "--set train.recompute=true --set train.grad_clip=0.5", 0},
    /* the tied head (training through the embedding) and the loss in chunks of 100 rows */
    {"full", "--set train.recompute=false --set model.config.tie_word_embeddings=true "
             "--set train.loss_chunk_tokens=100", 0},
    {"llama_pro", "", 0},
    {"full", "--set train.optimizer=\\\"sgd\\\" --set train.momentum=0.9 "
             "--set train.weight_decay=0.01 --set train.lr=0.01", 0},
};

static void same_dirs(const char *a, const char *b, const char *what) {
    ru_same_metrics(a, b, 4);
    char pa[8192 + 64], pb[8192 + 64];
    snprintf(pa, sizeof pa, "%s/model/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model/model.safetensors", b);
    const int n = ru_same_tensors(pa, pb);
    printf("%s: 4 steps on cpu_guard equal the cpu backend's bit for bit (%d tensors)\n", what,
           n);
}

START_TEST(test_same_as_cpu) {
    char a[8192], b[8192], what[512];
    snprintf(a, sizeof a, "%s/cpu-%d", g_tmp, _i);
    snprintf(b, sizeof b, "%s/guard-%d", g_tmp, _i);
    train(k_cases[_i].type, "cpu", 1, k_cases[_i].extra, a);
    train(k_cases[_i].type, "cpu_guard", k_cases[_i].offload, k_cases[_i].extra, b);
    snprintf(what, sizeof what, "%s %s, %s", k_cases[_i].type, k_cases[_i].extra,
             k_cases[_i].offload ? "cpu_offload" : "optimizer on the backend");
    same_dirs(a, b, what);
}
END_TEST

/* exact 1: bit for bit; 2: bit for bit where the GEMM's column splits do not change its
 * rounding (gemm_split_exact: a packed base), else within 1e-4 (metrics) and 5e-3 of each
 * tensor's scale; 0: within 1e-5 (metrics) and 1e-4 element by element (tensors) */
static const struct {
    const char *type, *extra;
    int offload, exact;
} k_adapter_cases[] = {
    {"lora", "", 0, 1},
    {"qlora", "--set train.recompute=true --set train.loss_chunk_tokens=100", 0, 2},
    {"qlora", "--set train.recompute=false", 1, 2},
    {"hqq_lora", "--set train.residual_dtype=\\\"bf16\\\"", 0, 2},
    {"bnb_llama_pro", "", 0, 2},
    {"bnb_dora", "--set output.save=\\\"model\\\"", 0, 0},
    {"hqq_dora", "--set adapter.dropout=0.1", 0, 0},
};

/* The file a run saved: the merged model, or the adapter. */
static void saved_file(const char *dir, char *path, size_t size) {
    snprintf(path, size, "%s/model/model.safetensors", dir);
    if (!ru_exists(path)) snprintf(path, size, "%s/adapter/adapter_model.safetensors", dir);
}

START_TEST(test_adapters_same_as_cpu) {
    const char *type = k_adapter_cases[_i].type, *extra = k_adapter_cases[_i].extra;
    if (!ru_type_built("QFT_TRAIN_TYPES", type)) {
        printf("skip: train_type %s is not built\n", type);
        return;
    }
    char a[8192], b[8192], pa[8192 + 64], pb[8192 + 64];
    snprintf(a, sizeof a, "%s/acpu-%d", g_tmp, _i);
    snprintf(b, sizeof b, "%s/aguard-%d", g_tmp, _i);
    train(type, "cpu", 1, extra, a);
    train(type, "cpu_guard", k_adapter_cases[_i].offload, extra, b);
    saved_file(a, pa, sizeof pa);
    saved_file(b, pb, sizeof pb);
    const char *where = k_adapter_cases[_i].offload ? "cpu_offload" : "optimizer on the backend";
    const int exact = k_adapter_cases[_i].exact;
    if (exact == 1 || (exact == 2 && g_split_exact)) {
        ru_same_metrics(a, b, 4);
        const int n = ru_same_tensors(pa, pb);
        printf("%s %s, %s: cpu_guard equals cpu bit for bit (%d tensors)\n", type, extra, where,
               n);
    } else { /* DoRA: element by element. Split GEMMs: metrics to 1e-4, tensors to 5e-3 of
              * their scale, since AdamW's early steps (about lr times the gradient's sign)
              * carry a rounding of a near-zero gradient into an element whole, and with
              * bf16 residuals a rounding flips a residual's last bit (seen: 5e-6 and 7e-4) */
        const double dm = ru_close_metrics(a, b, 4, exact == 2 ? 1e-4 : 1e-5);
        int n = 0;
        const double dt = exact == 2 ? ru_compare_tensors_as(pa, pb, 5e-3, 1, &n)
                                     : ru_compare_tensors(pa, pb, 1e-4, &n);
        printf("%s %s, %s: cpu_guard vs cpu: metrics within %.2g, %d tensors within %.2g%s\n",
               type, extra, where, dm, n, dt,
               exact == 2 ? " of their scale (this machine's GEMM rounds split columns differently)"
                          : "");
    }
}
END_TEST

/* train.frozen_dtype = "bf16": the frozen dense linears and head kept as bf16 on the
 * backend. From a checkpoint saved in bf16 (as Hugging Face ones are) that loses nothing:
 * LoRA and Llama-Pro on cpu_guard equal the cpu backend's fp32 runs bit for bit. */
START_TEST(test_frozen_bf16) {
    char base[8192], a[8192], b[8192], extra[8192 + 256], pa[8192 + 64], pb[8192 + 64];
    snprintf(base, sizeof base, "%s/bf16-base", g_tmp);
    train("full", "cpu", 1,
          "--set train.max_steps=1 --set output.save=\\\"model\\\" "
          "--set output.save_dtype=\\\"bf16\\\"",
          base);
    /* settings under which 4 (8) steps from this base lower the loss */
    const char *types[] = {"lora", "llama_pro"};
    const char *sets[] = {"--set train.lr=0.01 --set train.loss_chunk_tokens=100",
                          "--set train.lr=0.003 --set train.max_steps=8 --set data.count=40"};
    const int steps[] = {4, 8};
    for (int i = 0; i < 2; i++) {
        if (!ru_type_built("QFT_TRAIN_TYPES", types[i])) continue;
        snprintf(a, sizeof a, "%s/bf16-cpu-%d", g_tmp, i);
        snprintf(b, sizeof b, "%s/bf16-guard-%d", g_tmp, i);
        snprintf(extra, sizeof extra, "--set \"model={ path = \\\"%s/model\\\"; }\" %s", base,
                 sets[i]);
        train(types[i], "cpu", 1, extra, a);
        strncat(extra, " --set train.frozen_dtype=\\\"bf16\\\"", sizeof extra - strlen(extra) - 1);
        train(types[i], "cpu_guard", 0, extra, b);
        saved_file(a, pa, sizeof pa);
        saved_file(b, pb, sizeof pb);
        if (g_split_exact) {
            ru_same_metrics(a, b, steps[i]);
            const int n = ru_same_tensors(pa, pb);
            printf("%s from a bf16 checkpoint, frozen weights bf16 on cpu_guard: equals cpu bit "
                   "for bit (%d tensors)\n", types[i], n);
        } else { /* the bf16 weights go through qmatmul's tiles (gemm_split_exact) */
            const double dm = ru_close_metrics(a, b, steps[i], 1e-5);
            int n = 0;
            const double dt = ru_compare_tensors_as(pa, pb, 1e-3, 1, &n);
            printf("%s from a bf16 checkpoint, frozen weights bf16 on cpu_guard: metrics within "
                   "%.2g, %d tensors within %.2g of their scale of cpu's (this machine's GEMM "
                   "rounds split columns differently)\n", types[i], dm, n, dt);
        }
    }
}
END_TEST

/* The optimizer on the backend, with a training-state checkpoint after step 2 (staged
 * through host memory) and a run resumed from it: the cpu backend's uninterrupted bits. */
START_TEST(test_backend_resume) {
    char a[8192], b[8192], extra[8192 + 128];
    snprintf(a, sizeof a, "%s/resume-cpu", g_tmp);
    snprintf(b, sizeof b, "%s/resume-guard", g_tmp);
    train("full", "cpu", 1, "--set output.save_state_every=2", a);
    train("full", "cpu_guard", 0, "--set output.save_state_every=2", b);
    snprintf(extra, sizeof extra,
             "--set output.save_state_every=2 --set train.resume_from=\\\"%s/checkpoint-2\\\"",
             b);
    train("full", "cpu_guard", 0, extra, b);
    same_dirs(a, b, "full, optimizer on the backend, resumed from checkpoint-2");
}
END_TEST

/* qft train (under `launch`, "" for none) ... expecting failure with `want` in the output */
static void refused_with(const char *launch, const char *type, const char *sets,
                         const char *want) {
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    char cmd[16384];
    static char out[1 << 16];
    snprintf(cmd, sizeof cmd,
             "%s %s train %s/configs/%s.cfg %s %s --set output.dir=\\\"%s/x\\\" 2>&1",
             launch, qft, root, type, RU_TINY_LLAMA, sets, g_tmp);
    const int st = ru_run(cmd, out, sizeof out);
    ck_assert_msg(st != 0, "accepted: %.2000s\n%.4000s", cmd, out);
    ck_assert_msg(strstr(out, want) != NULL, "no \"%s\" in:\n%.4000s", want, out);
}

static void refused(const char *type, const char *sets, const char *want) {
    refused_with("", type, sets, want);
}

START_TEST(test_refusals) {
    refused("full", "--set shard.cpu_offload=true", "keeps everything in host memory already");
    refused("lora", "--set train.frozen_dtype=\\\"bf16\\\"", "the cpu backend computes on the host");
    refused("full", "--set train.backend=\\\"cpu_guard\\\" --set train.matmul_precision=\\\"high\\\"",
            "is a CUDA setting");
}
END_TEST

/* Under mpirun ($QFT_MPIRUN and its flags, when the build has MPI): 2 ranks with
 * shard_grad_op and no_shard on cpu_guard, the strategies working on the host copies
 * (cpu_offload) or on the backend's memory (the staged transport), equal the cpu backend's
 * run bit for bit (full sharding there, with fp32 or bf16 frozen weights: tests/shard);
 * NCCL is refused there with a message. */
START_TEST(test_ranks) {
    const char *mpirun = getenv("QFT_MPIRUN");
    if (!mpirun || !*mpirun) {
        printf("skip: no mpirun in this build\n");
        return;
    }
    const char *strategies[] = {"no_shard", "shard_grad_op"};
    for (int i = 0; i < 2; i++) {
        /* the optimizer on the host copies (cpu_offload), and on the backend, where the
         * strategy's collectives run over the staged transport */
        char a[8192], b[8192], c[8192], extra[256];
        snprintf(a, sizeof a, "%s/ranks-cpu-%d", g_tmp, i);
        snprintf(b, sizeof b, "%s/ranks-guard-%d", g_tmp, i);
        snprintf(c, sizeof c, "%s/ranks-guard-dev-%d", g_tmp, i);
        snprintf(extra, sizeof extra, "--set shard.plugin=\\\"%s\\\"", strategies[i]);
        train_with(mpirun, "full", "cpu", 1, extra, a);
        train_with(mpirun, "full", "cpu_guard", 1, extra, b);
        train_with(mpirun, "full", "cpu_guard", 0, extra, c);
        ru_same_metrics(a, b, 4);
        ru_same_metrics(a, c, 4);
        char pa[8192 + 64], pb[8192 + 64];
        snprintf(pa, sizeof pa, "%s/model/model.safetensors", a);
        snprintf(pb, sizeof pb, "%s/model/model.safetensors", b);
        ru_same_tensors(pa, pb);
        snprintf(pb, sizeof pb, "%s/model/model.safetensors", c);
        ru_same_tensors(pa, pb);
        printf("full, 2 ranks, %s: cpu_guard with the optimizer on the host copies and on "
               "the backend equals cpu bit for bit\n", strategies[i]);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s -np 2 -x OMP_NUM_THREADS=1", mpirun);
    /* NCCL moves GPU memory only; cpu_guard's goes through the staged transport */
    refused_with(cmd, "full",
                 "--set train.backend=\\\"cpu_guard\\\" --set shard.device_transport=\\\"nccl\\\"",
                 "shard.device_transport = \"nccl\" moves GPU memory");
}
END_TEST

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-guard-XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    g_split_exact = gemm_split_exact();
    printf("this machine's GEMM %s its rounding when the output's columns are split\n",
           g_split_exact ? "keeps" : "changes");
    Suite *s = suite_create("backend_guard");
    TCase *tc = tcase_create("guard");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_guard_bites);
    tcase_add_loop_test(tc, test_same_as_cpu, 0, (int)(sizeof k_cases / sizeof k_cases[0]));
    tcase_add_loop_test(tc, test_adapters_same_as_cpu, 0,
                        (int)(sizeof k_adapter_cases / sizeof k_adapter_cases[0]));
    tcase_add_test(tc, test_frozen_bf16);
    tcase_add_test(tc, test_backend_resume);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_ranks);
    suite_add_tcase(s, tc);
    return ru_run_suite(s, g_tmp);
}
