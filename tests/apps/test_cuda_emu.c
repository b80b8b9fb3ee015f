/* The CUDA backend's own code trained on the CPU: qft train with train.backend = "cuda" and
 * QFT_CUDA_LIB pointing at libqft_cuda_emu.so, the same core/cuda sources compiled for the
 * CUDA emulator (core/cuda/emu: every kernel launch run by fibers, cuBLASLt by a reference
 * GEMM, device memory guarded so that any host access to it, or a kernel's access past an
 * allocation, aborts the run). Against the cpu backend, the runs of scripts/gpu-check.sh's
 * parity step, with its bf16 tolerances (losses 1e-3, tensors 1e-2 of their scale) where the
 * GPU computes in bf16 or TF32 and tighter ones where it computes in fp32 (1e-5, 1e-3: the
 * emulated GEMM sums in OpenBLAS's order, and AdamW's first steps magnify that in LoRA's B):
 *   - every train_type (full, llama_pro, lora, dense DoRA, qlora, hqq_lora, QDoRA, hqq_dora,
 *     Llama-Pro on NF4), with the optimizer on the device and with cpu_offload;
 *   - the flash attention kernels instead of the GEMM attention, bf16 residuals, frozen
 *     weights as bf16, TF32 and bf16 GEMMs, the quantized linear decoded on chip (WMMA),
 *     the attention on bf16 tensor cores (WMMA);
 *   - 2 ranks against one process, when the build has mpirun: full sharding on one
 *     emulated device (CUDA virtual memory, the staged transport), and over NCCL on 2
 *     emulated devices (the emulator's NCCL under transport_nccl.c).
 * The emulator's own checks are tested in tests/cuda (cuda_emu_self).
 * $QFT_BIN is the qft command, $QFT_SOURCE_ROOT the tree, $QFT_CUDA_EMU_LIB the library. */
#include "run_util.h"

#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[4096];

/* SGD for the bf16 and TF32 cases: AdamW's first steps move each weight by about lr times
 * its gradient's sign, so rounding flips near-zero updates (LoRA's B starts at 0) */
#define SGD "--set train.optimizer=\\\"sgd\\\" --set train.lr=0.05 "

static const struct {
    const char *name, *type;
    const char *sets;      /* both runs */
    const char *cuda_sets; /* the emulated CUDA run only */
    const char *env;       /* the emulated CUDA run's environment */
    double loss_rel, tensor_rel;
} k_cases[] = {
    {"full", "full", "--set train.recompute=true", "", "", 1e-5, 1e-3},
    {"full, cpu_offload", "full", "--set train.recompute=false", "--set shard.cpu_offload=true",
     "", 1e-5, 1e-3},
    {"llama_pro", "llama_pro", "", "", "", 1e-5, 1e-3},
    {"lora", "lora", "", "", "", 1e-5, 1e-3},
    {"dora", "lora", "--set adapter.plugin=\\\"dora\\\"", "", "", 1e-5, 1e-3},
    {"qlora", "qlora", "--set train.loss_chunk_tokens=100", "", "", 1e-5, 1e-3},
    {"hqq_lora", "hqq_lora", "", "", "", 1e-5, 1e-3},
    {"QDoRA", "bnb_dora", "", "", "", 1e-5, 1e-3},
    {"hqq_dora", "hqq_dora", "--set adapter.dropout=0.1", "", "", 1e-5, 1e-3},
    {"bnb_llama_pro", "bnb_llama_pro", "", "", "", 1e-5, 1e-3},
    /* both sides round the residual stream to bf16, and a last-bit difference before it
     * can round one value a bf16 step apart: bf16 tolerances */
    {"qlora, bf16 residuals", "qlora", "--set train.residual_dtype=\\\"bf16\\\"", "", "", 1e-3,
     1e-2},
    {"lora, flash attention", "lora", "", "", "QFT_CUDA_ATTENTION=flash", 1e-5, 1e-3},
    {"lora, frozen bf16", "lora", SGD, "--set train.frozen_dtype=\\\"bf16\\\"", "", 1e-3, 1e-2},
    {"llama_pro, frozen bf16", "llama_pro", SGD, "--set train.frozen_dtype=\\\"bf16\\\"", "",
     1e-3, 1e-2},
    {"qlora, TF32", "qlora", SGD, "--set train.matmul_precision=\\\"high\\\"", "", 1e-3, 1e-2},
    {"qlora, bf16 GEMMs", "qlora", SGD, "--set train.matmul_precision=\\\"medium\\\"", "", 1e-3,
     1e-2},
    {"qlora, on-chip dequantization", "qlora", SGD, "--set train.matmul_precision=\\\"medium\\\"",
     "QFT_CUDA_QMATMUL=onchip", 1e-3, 1e-2},
    {"hqq_lora, on-chip dequantization", "hqq_lora", SGD,
     "--set train.matmul_precision=\\\"medium\\\"", "QFT_CUDA_QMATMUL=onchip", 1e-3, 1e-2},
    {"qlora, tensor-core attention", "qlora", SGD, "--set train.matmul_precision=\\\"medium\\\"",
     "QFT_CUDA_ATTENTION=tc", 1e-3, 1e-2},
};

/* The saved file of a run: the merged model, or the adapter. */
static void saved_file(const char *dir, char *path, size_t size) {
    snprintf(path, size, "%s/model/model.safetensors", dir);
    if (!ru_exists(path)) snprintf(path, size, "%s/adapter/adapter_model.safetensors", dir);
}

static void emu_pre(char *pre, size_t size, const char *env) {
    snprintf(pre, size, "QFT_CUDA_LIB=%s %s", getenv("QFT_CUDA_EMU_LIB"), env);
}

/* 1 when train_type `type` is built; otherwise says the test skips. */
static int built(const char *type) {
    if (ru_type_built("QFT_TRAIN_TYPES", type)) return 1;
    printf("skip: train_type %s is not built\n", type);
    return 0;
}

/* The build's mpirun command, or NULL after saying the test skips. */
static const char *mpirun_or_skip(void) {
    const char *mpirun = getenv("QFT_MPIRUN");
    if (mpirun && *mpirun) return mpirun;
    printf("skip: no mpirun in this build\n");
    return NULL;
}

START_TEST(test_same_as_cpu) {
    if (!built(k_cases[_i].type)) return;
    char a[8192], b[8192], sets[4096], pre[8192], pa[8192 + 64], pb[8192 + 64];
    snprintf(a, sizeof a, "%s/cpu-%d", g_tmp, _i);
    snprintf(b, sizeof b, "%s/emu-%d", g_tmp, _i);
    ru_train("", k_cases[_i].type, k_cases[_i].sets, a);
    snprintf(sets, sizeof sets, "%s %s --set train.backend=\\\"cuda\\\"", k_cases[_i].sets,
             k_cases[_i].cuda_sets);
    emu_pre(pre, sizeof pre, k_cases[_i].env);
    ru_train(pre, k_cases[_i].type, sets, b);
    const double dm = ru_close_metrics(a, b, 4, k_cases[_i].loss_rel);
    saved_file(a, pa, sizeof pa);
    saved_file(b, pb, sizeof pb);
    int n = 0;
    const double dt = ru_compare_tensors_as(pa, pb, k_cases[_i].tensor_rel, 1, &n);
    printf("%s on the emulated CUDA backend vs cpu: losses and gradient norms within %.2g, %d "
           "tensors within %.2g of their scale\n", k_cases[_i].name, dm, n, dt);
}
END_TEST

/* Several ranks on the emulated CUDA backend, each rank its own process and emulator,
 * against one process accumulating the ranks' micro-batches (the same step), to rounding:
 *   - full sharding of QLoRA, its units in CUDA virtual memory committed per gather, the
 *     pieces moved by the staged transport; each rank its own pretend machine, so both
 *     take device 0, as gpu-check.sh runs 2 ranks on one GPU; with the shards on the device
 *     and with cpu_offload;
 *   - over NCCL (core/transport/transport_nccl.c built over the emulator's CUDA runtime and
 *     NCCL: libqft_nccl_emu.so), 2 ranks of one machine on 2 emulated devices, as on a
 *     machine with 2 GPUs: full sharding of QLoRA, and a dense full finetune whose
 *     gradients no_shard all-reduces on the devices. */
static const struct {
    const char *name, *type, *sets;
    int nccl; /* 0: the staged transport on pretend machines of one rank */
} k_ranks[] = {
    {"qlora, full_shard", "qlora", "--set shard.plugin=\\\"full_shard\\\"", 0},
    {"qlora, full_shard with cpu_offload", "qlora",
     "--set shard.plugin=\\\"full_shard\\\" --set shard.cpu_offload=true", 0},
    {"qlora, full_shard over NCCL", "qlora", "--set shard.plugin=\\\"full_shard\\\"", 1},
    {"full, no_shard over NCCL", "full", "--set shard.plugin=\\\"no_shard\\\"", 1},
};

START_TEST(test_ranks) {
    const char *mpirun = mpirun_or_skip();
    if (!mpirun) return;
    if (!built(k_ranks[_i].type)) return;
    const char *nccl_lib = getenv("QFT_NCCL_EMU_LIB");
    if (k_ranks[_i].nccl && (!nccl_lib || !*nccl_lib)) {
        printf("skip: this build's emulator has no NCCL (nccl.h not found)\n");
        return;
    }
    char a[8192], b[8192], pre[8192], launch[8192], sets[2048], pa[8192 + 64], pb[8192 + 64];
    snprintf(a, sizeof a, "%s/ranks-one-%d", g_tmp, _i);
    snprintf(b, sizeof b, "%s/ranks-two-%d", g_tmp, _i);
    emu_pre(pre, sizeof pre, "");
    /* one process accumulating 2 micro-batches is the 2 ranks' step */
    ru_train(pre, k_ranks[_i].type, "--set train.backend=\\\"cuda\\\" --set train.grad_accum=2", a);
    if (k_ranks[_i].nccl)
        snprintf(launch, sizeof launch,
                 "QFT_CUDA_EMU_DEVICES=2 %s -np 2 -x OMP_NUM_THREADS=1 -x QFT_CUDA_EMU_DEVICES "
                 "-x QFT_CUDA_LIB=%s -x QFT_NCCL_LIB=%s", mpirun, getenv("QFT_CUDA_EMU_LIB"),
                 nccl_lib);
    else
        snprintf(launch, sizeof launch,
                 "QFT_TRANSPORT_NODE_SIZE=1 %s -np 2 -x OMP_NUM_THREADS=1 "
                 "-x QFT_TRANSPORT_NODE_SIZE -x QFT_CUDA_LIB=%s", mpirun, getenv("QFT_CUDA_EMU_LIB"));
    snprintf(sets, sizeof sets,
             "--set train.backend=\\\"cuda\\\" --set shard.device_transport=\\\"%s\\\" "
             "--set train.grad_accum=1 %s", k_ranks[_i].nccl ? "nccl" : "staged", k_ranks[_i].sets);
    ru_train(launch, k_ranks[_i].type, sets, b);
    const double dm = ru_close_metrics(a, b, 4, 1e-5);
    saved_file(a, pa, sizeof pa);
    saved_file(b, pb, sizeof pb);
    int n = 0;
    const double dt = ru_compare_tensors_as(pa, pb, 1e-4, 1, &n);
    printf("%s, 2 ranks on the emulated CUDA backend vs one process: metrics within %.2g, %d "
           "tensors within %.2g of their scale\n", k_ranks[_i].name, dm, n, dt);
}
END_TEST

/* shard.cpu_offload's host buffers page-locked for the device (cudaHostRegister, which the
 * emulator books as the driver does and refuses where a range overlaps another, is not
 * mapped writable, or was unmapped before it was unregistered):
 *   - full with cpu_offload: the trainable parameters and their gradients, 2 x 4 bytes x
 *     107200 floats (the tiny Llama: vocab 259 x hidden 64 twice, untied; 2 layers of
 *     36992: q, o 64 x 64, k, v 32 x 64, gate, up, down 64 x 128, two norms; the final
 *     norm) = 0.818 MiB, logged;
 *   - registration refused (QFT_CUDA_EMU_HOST_REGISTER=0, as where a sandbox has none): a
 *     warning with the bytes and the driver's reason, and the same weights bit for bit;
 *   - shard.pin_memory = false: neither line, the same weights. */
START_TEST(test_offload_pinned) {
    if (!built("full")) return;
    static const char *const sets[] = {
        "--set train.backend=\\\"cuda\\\" --set shard.cpu_offload=true",
        "--set train.backend=\\\"cuda\\\" --set shard.cpu_offload=true",
        "--set train.backend=\\\"cuda\\\" --set shard.cpu_offload=true --set shard.pin_memory=false"};
    static const char *const env[] = {"", "QFT_CUDA_EMU_HOST_REGISTER=0", ""};
    const char *locked = "shard.cpu_offload: 0.818 MiB of host buffers page-locked";
    const char *pageable = "shard.cpu_offload: rank 0: 0.818 MiB of host buffers stay pageable";
    char dir[3][8192], pre[8192], path[3][8192 + 64];
    for (int k = 0; k < 3; k++) {
        snprintf(dir[k], sizeof dir[k], "%s/pinned-%d", g_tmp, k);
        emu_pre(pre, sizeof pre, env[k]);
        const char *out = NULL;
        const int st = ru_train_run(pre, "full", sets[k], dir[k], 0, &out);
        if (st != 0) fputs(out, stdout);
        ck_assert_msg(st == 0, "run %d failed (%d)", k, st);
        ck_assert_msg((strstr(out, locked) != NULL) == (k == 0), "run %d: \"%s\" %s in:\n%s", k,
                      locked, k == 0 ? "missing" : "present", out);
        ck_assert_msg((strstr(out, pageable) != NULL) == (k == 1), "run %d: \"%s\" %s in:\n%s",
                      k, pageable, k == 1 ? "missing" : "present", out);
        if (k == 1)
            ck_assert_msg(strstr(out, "cudaHostRegister: operation not supported"),
                          "no reason in:\n%s", out);
        saved_file(dir[k], path[k], sizeof path[k]);
    }
    ru_same_tensors(path[0], path[1]);
    const int n = ru_same_tensors(path[0], path[2]);
    printf("cpu_offload: 0.818 MiB page-locked, or refused and pageable, or not asked for: the "
           "same %d tensors bit for bit\n", n);
}
END_TEST

/* A device fault ends the run. QFT_CUDA_EMU_FAULT_AT_SYNC=n fails the run's n-th
 * synchronizing call with an illegal address, where a GPU's host first sees a kernel's
 * fault; for every n from the first to past the run's last, the run (2 steps, a training
 * checkpoint after each) must exit non-zero with the backend's message and where it
 * happened (moving the model there, the passes, the optimizer step, a checkpoint's
 * download, the end-of-run check after the final downloads), and write neither the model
 * nor the failing step's checkpoint; the first n
 * past the last trains as usual. Before the op table's status entry (ABI 9) such a run
 * trained on from the lost copy's loss and saved its weights with exit 0. Twice: with the
 * fault alone, and with the context broken from then on (QFT_CUDA_EMU_FAULT_STICKY=1, as an
 * illegal address leaves a real one: every later call fails, the teardown's too), where the
 * run must still end with exit 1 (no crash, no hang) and print the backend's failures in
 * two lines, not one per failing free. */
START_TEST(test_device_fault) {
    if (!built("qlora")) return;
    static const char *const where[] = {"in the forward and backward passes at step ",
                                        "in the optimizer step at step ",
                                        "bringing the checkpoint's state to the host at step ",
                                        "failed by the end of training",
                                        "failed moving the model there"};
    enum { W = 5, STEPPED = 3 };
    const int sticky = _i;
    int seen[W] = {0}, n;
    char dir[8192], env[96], pre[8192], path[8192 + 64], ckpt[8192 + 64];
    for (n = 1; n <= 200; n++) {
        snprintf(dir, sizeof dir, "%s/fault-%d-%d", g_tmp, sticky, n);
        snprintf(env, sizeof env, "%sQFT_CUDA_EMU_FAULT_AT_SYNC=%d",
                 sticky ? "QFT_CUDA_EMU_FAULT_STICKY=1 " : "", n);
        emu_pre(pre, sizeof pre, env);
        const char *out = NULL;
        const int st = ru_train_run(pre, "qlora",
                                    "--set train.backend=\\\"cuda\\\" --set train.max_steps=2 "
                                    "--set output.save_state_every=1",
                                    dir, 1, &out);
        saved_file(dir, path, sizeof path);
        if (st == 0) {
            ck_assert_msg(ru_exists(path), "fault at %d: exit 0 and nothing saved", n);
            break;
        }
        ck_assert_msg(strstr(out, "qft: backend \"cuda\" failed ") &&
                          strstr(out, "an illegal memory access was encountered"),
                      "fault at sync %d: no backend message in:\n%s", n, out);
        ck_assert_msg(!ru_exists(path), "fault at sync %d: %s was saved", n, path);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "fault at sync %d: wait status %d",
                      n, st);
        int lines = 0;
        for (const char *at = out; (at = strstr(at, "qft cuda: ")) != NULL; at++) lines++;
        ck_assert_msg(lines >= 1 && lines <= 2, "fault at sync %d: %d lines of CUDA failures:\n%s",
                      n, lines, out);
        for (int w = 0; w < W; w++) {
            const char *at = strstr(out, where[w]);
            if (!at) continue;
            seen[w]++;
            /* a step's fault: that step wrote no checkpoint (the earlier ones stand) */
            const long step = w < STEPPED ? atol(at + strlen(where[w])) : 0;
            snprintf(ckpt, sizeof ckpt, "%s/checkpoint-%ld", dir, step);
            ck_assert_msg(!step || !ru_exists(ckpt), "fault at sync %d: %s was written", n,
                          ckpt);
        }
    }
    ck_assert_msg(n > 1 && n <= 200, "%d runs", n);
    ck_assert_msg(seen[0] && seen[1] && seen[2] && seen[3] && seen[4],
                  "faults seen in the passes %d, the optimizer %d, the checkpoint %d, the end "
                  "%d, the model's move %d times", seen[0], seen[1], seen[2], seen[3], seen[4]);
    printf("a %sfault at each of the run's %d synchronizing calls ended it (exit 1) with the "
           "backend's message (%d moving the model there, %d in the passes, %d in the optimizer "
           "step, %d in a checkpoint's download, %d by the end), the failing step's checkpoint "
           "and the model not written\n", sticky ? "context-breaking " : "", n - 1, seen[4],
           seen[0], seen[1], seen[2], seen[3]);
}
END_TEST

/* A fault on one rank of two keeps the other from saving. Full sharding of QLoRA on one
 * emulated device (the staged transport, pretend machines): rank 1's backend fails at one
 * of its last three synchronizing calls (the end-of-run check's wait and the final
 * downloads, counted with QFT_CUDA_EMU_COUNT_SYNCS in a clean run first), after every
 * per-step check has passed. Rank 0 is healthy and would save the model gathered from
 * rank 1's failed copies; the run's last check is collective, so the job must fail with
 * rank 1's message and nothing saved (with a rank-local check rank 0 saved the adapter). */
START_TEST(test_rank_fault) {
    const char *mpirun = mpirun_or_skip();
    if (!mpirun) return;
    if (!built("qlora")) return;
    const char *sets = "--set train.backend=\\\"cuda\\\" --set shard.device_transport=\\\"staged\\\" "
                       "--set shard.plugin=\\\"full_shard\\\" --set train.max_steps=2";
    char dir[8192], pre[8192], path[8192 + 64];
    long total = 0;
    for (long n = 0; n <= 3; n++) {
        /* n = 0: the clean run that counts rank 1's calls; then the last, and the two before */
        char env[64];
        if (n == 0)
            snprintf(env, sizeof env, "QFT_CUDA_EMU_COUNT_SYNCS=1");
        else
            snprintf(env, sizeof env, "QFT_CUDA_EMU_FAULT_AT_SYNC=%ld", total - (n - 1));
        snprintf(dir, sizeof dir, "%s/rank-fault-%ld", g_tmp, n);
        snprintf(pre, sizeof pre,
                 "QFT_TRANSPORT_NODE_SIZE=1 %s -np 2 -x OMP_NUM_THREADS=1 -x QFT_TRANSPORT_NODE_SIZE "
                 "-x QFT_CUDA_LIB=%s sh -c 'test $OMPI_COMM_WORLD_RANK = 1 && export %s; exec "
                 "\"$0\" \"$@\"'", mpirun, getenv("QFT_CUDA_EMU_LIB"), env);
        const char *out = NULL;
        const int st = ru_train_run(pre, "qlora", sets, dir, 1, &out);
        saved_file(dir, path, sizeof path);
        if (n == 0) {
            if (st != 0) fputs(out, stdout);
            ck_assert_msg(st == 0 && ru_exists(path), "the clean 2-rank run failed (%d)", st);
            const char *at = strstr(out, "qft cuda emulator: ");
            ck_assert_msg(at && sscanf(at, "qft cuda emulator: %ld synchronizing calls", &total) == 1,
                          "no count of rank 1's synchronizing calls in:\n%s", out);
            ck_assert_int_gt(total, 3);
            continue;
        }
        ck_assert_msg(st != 0, "rank 1 faulted at its sync %ld of %ld, yet the job exited 0:\n%s",
                      total - (n - 1), total, out);
        ck_assert_msg(strstr(out, "rank 1: backend \"cuda\" failed by the end of training"),
                      "no message of rank 1 in:\n%s", out);
        ck_assert_msg(!ru_exists(path), "rank 1 faulted at its sync %ld of %ld and %s was saved",
                      total - (n - 1), total, path);
    }
    printf("rank 1's fault at each of its last 3 of %ld synchronizing calls failed the job, "
           "nothing saved\n", total);
}
END_TEST

int main(void) {
    if (!getenv("QFT_CUDA_EMU_LIB")) {
        printf("skip: this build has no CUDA emulator (no CUDA headers)\n");
        return 77;
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-cuda-emu-XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    Suite *s = suite_create("cuda_emu");
    TCase *tc = tcase_create("emu");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_same_as_cpu, 0, (int)(sizeof k_cases / sizeof k_cases[0]));
    tcase_add_loop_test(tc, test_ranks, 0, (int)(sizeof k_ranks / sizeof k_ranks[0]));
    tcase_add_test(tc, test_offload_pinned);
    tcase_add_loop_test(tc, test_device_fault, 0, 2); /* the fault alone; the context broken */
    tcase_add_test(tc, test_rank_fault);
    suite_add_tcase(s, tc);
    return ru_run_suite(s, g_tmp);
}
