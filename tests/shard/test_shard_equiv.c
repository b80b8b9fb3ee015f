/* Multi-rank training equals one process with the same global batch.
 *
 * For each case (train_type, strategy, W ranks, grad_accum G per rank) the test trains a
 * tiny random Llama for 5 steps twice: once as one process with grad_accum W*G, once under
 * `mpirun -np W` with grad_accum G. Rank r trains micro-batches r, r+W, ... of the one
 * process's order, each scaled by 1/(W*G), and the transport sums gradients in rank order,
 * so the runs differ only in float summation order inside a rank's accumulation. Checked:
 *   - every step's loss and gradient norm in metrics.jsonl within 1e-5 relative;
 *   - every saved tensor (the model for full, the PEFT adapter for qlora, both saved in
 *     f32) within 1e-5 relative (plus 1e-7 absolute for values near zero);
 *   - each rank's measured optimizer state (the allocator's bytes, from the log line
 *     "shard: rank R of W (...): optimizer state B bytes for trainable floats [a, b) of n")
 *     against AdamW's 2 * 4 bytes per float of the rank's slice: the whole n for no_shard,
 *     n / W (the last rank also the n mod W tail) for shard_grad_op; for full_shard and
 *     hybrid_shard, the rank's pieces of the padded units;
 *   - each rank's peak of parameters, gradients and optimizer state (resident pages of the
 *     model's buffers, measured at every unit event, plus allocations) against the figure
 *     its strategy implies, and below one process's for every sharding strategy;
 *   - each rank's bytes sent per step (the transport's counters) equal to the strategy's
 *     figure from the model's sizes.
 * The train_types are full, qlora and bnb_dora (QDoRA), the strategies no_shard,
 * shard_grad_op and full_shard under 2 ranks (grad_accum 2 each) and 3 (uneven pieces);
 * hybrid_shard_grad_op and hybrid_shard run 4 ranks on two pretend machines of 2
 * (QFT_TRANSPORT_NODE_SIZE). Cases on the cpu_guard backend keep gradients and optimizer
 * state in its guarded memory (as on a GPU), where the strategies' collectives run over
 * the staged transport; the optimizer state is then measured by that backend's allocator.
 * Full sharding there keeps the units in the backend's memory too (its vm_* entries), so
 * the peak there is the bytes committed to gathered units and their gradients.
 * Dropout is on in qlora.cfg (0.05): equal losses also show that each micro-batch draws
 * the mask one process would give it.
 *
 * argv: mpirun, then mpirun's flags. $QFT_BIN is the qft command, $QFT_SOURCE_ROOT the
 * tree (for configs/). */
#include "run_util.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

static char g_tmp[4096];
static char g_mpirun[4096]; /* mpirun and its flags, from argv */

typedef struct eq_case {
    const char *type;     /* configs/<type>.cfg */
    const char *strategy; /* shard.plugin */
    int world, accum;     /* ranks and grad_accum per rank */
    int node;             /* ranks per pretend machine (QFT_TRANSPORT_NODE_SIZE), 0: real */
    /* train.backend of both runs, NULL: cpu. "cpu_guard" keeps gradients and the optimizer
     * in its guarded memory, so the strategy's collectives go through the staged transport
     * there, as they go through NCCL on GPUs */
    const char *backend;
    /* more --set overrides for both runs, "" none */
    const char *extra;
} eq_case;

/* Frozen dense weights as bf16 on the backend: under full sharding they are cut, gathered
 * and kept there as bf16 (and widened back for a saved whole model, which bf16 saves
 * then hold exactly as the one-process run's rounded originals). */
#define BF16 "--set train.frozen_dtype=\\\"bf16\\\""
#define BF16_SAVE BF16 " --set output.save_dtype=\\\"bf16\\\""
/* The shards and the optimizer in host memory: each gather uploads the rank's pieces and
 * all-gathers them on the backend (over the staged transport, as over NCCL on GPUs) */
#define OFFLOAD "--set shard.cpu_offload=true"
#define EMBED_SHARDED "--set train.embedding_on_host=false"

static const eq_case k_cases[] = {
    {"full", "no_shard", 2, 2, 0, NULL, ""},
    {"full", "shard_grad_op", 2, 2, 0, NULL, ""},
    {"full", "full_shard", 2, 2, 0, NULL, ""},
    {"full", "no_shard", 3, 1, 0, NULL, ""},
    {"full", "shard_grad_op", 3, 1, 0, NULL, ""},
    {"full", "full_shard", 3, 1, 0, NULL, ""},
    {"qlora", "no_shard", 2, 2, 0, NULL, ""},
    {"qlora", "shard_grad_op", 2, 2, 0, NULL, ""},
    {"qlora", "full_shard", 2, 2, 0, NULL, ""},
    {"qlora", "no_shard", 3, 1, 0, NULL, ""},
    {"qlora", "shard_grad_op", 3, 1, 0, NULL, ""},
    {"qlora", "full_shard", 3, 1, 0, NULL, ""},
    {"bnb_dora", "no_shard", 2, 2, 0, NULL, ""},
    {"bnb_dora", "shard_grad_op", 2, 2, 0, NULL, ""},
    {"bnb_dora", "full_shard", 2, 2, 0, NULL, ""},
    {"bnb_dora", "no_shard", 3, 1, 0, NULL, ""},
    {"bnb_dora", "shard_grad_op", 3, 1, 0, NULL, ""},
    {"bnb_dora", "full_shard", 3, 1, 0, NULL, ""},
    /* two pretend machines of two ranks: sharded within, replicated across */
    {"full", "hybrid_shard_grad_op", 4, 1, 2, NULL, ""},
    {"qlora", "hybrid_shard_grad_op", 4, 1, 2, NULL, ""},
    {"bnb_dora", "hybrid_shard_grad_op", 4, 1, 2, NULL, ""},
    {"full", "hybrid_shard", 4, 1, 2, NULL, ""},
    {"qlora", "hybrid_shard", 4, 1, 2, NULL, ""},
    {"bnb_dora", "hybrid_shard", 4, 1, 2, NULL, ""},
    /* gradients, optimizer and collectives on the backend's memory */
    {"qlora", "no_shard", 2, 2, 0, "cpu_guard", ""},
    {"full", "shard_grad_op", 2, 2, 0, "cpu_guard", ""},
    {"bnb_dora", "shard_grad_op", 3, 1, 0, "cpu_guard", ""},
    {"qlora", "hybrid_shard_grad_op", 4, 1, 2, "cpu_guard", ""},
    /* full sharding with the units in the backend's memory: committed at a gather and
     * gone at the release, gathered and reduce-scattered there */
    {"qlora", "full_shard", 2, 2, 0, "cpu_guard", ""},
    {"bnb_dora", "full_shard", 3, 1, 0, "cpu_guard", ""},
    {"full", "full_shard", 2, 2, 0, "cpu_guard", ""},
    {"qlora", "hybrid_shard", 4, 1, 2, "cpu_guard", ""},
    /* full sharding with bf16 frozen weights: a block's dense linears (lora), the head
     * (qlora), frozen blocks saved whole (llama_pro) */
    {"lora", "full_shard", 2, 2, 0, "cpu_guard", BF16},
    {"qlora", "full_shard", 3, 1, 0, "cpu_guard", BF16},
    {"llama_pro", "full_shard", 2, 2, 0, "cpu_guard", BF16_SAVE},
    /* full sharding with cpu_offload: FSDP + QLoRA for shards bigger than the GPUs */
    {"qlora", "full_shard", 2, 2, 0, "cpu_guard", OFFLOAD},
    {"bnb_dora", "hybrid_shard", 4, 1, 2, "cpu_guard", OFFLOAD " " BF16},
    /* ... with the embedding sharded too, as bf16 */
    {"lora", "full_shard", 3, 1, 0, "cpu_guard", OFFLOAD " " BF16 " " EMBED_SHARDED},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))
#define N_STEPS 5
#define MAX_RANKS 4

/* Tiny shapes (hidden 64 so that NF4's blocks of 64 fit), the run's own tiny dataset cut
 * to 72 examples (divisible by every global batch below: 2 * {4, 3}), f32 saves. */
static const char *k_overrides =
    "--set train.max_steps=5 --set data.count=72 --set train.batch_size=2 "
    "--set model.config.hidden_size=64 --set model.config.intermediate_size=128 "
    "--set model.config.num_hidden_layers=2 --set model.config.num_attention_heads=2 "
    "--set model.config.num_key_value_heads=1 --set data.context_length=192 "
    "--set output.save_dtype=\\\"f32\\\" --set train.log_every=1";

static int types_built(const char *type) { return ru_type_built("QFT_SHARD_TYPES", type); }

/* loss[N_STEPS] and the gradient norms before clipping, gnorm[N_STEPS]. */
static void read_losses(const char *dir, double *loss, double *gnorm) {
    ru_row rows[RU_MAX_STEPS];
    const int n = ru_metrics(dir, rows);
    ck_assert_msg(n == N_STEPS, "%s: %d steps logged, expected %d", dir, n, N_STEPS);
    for (int s = 0; s < n; s++) loss[s] = rows[s].loss, gnorm[s] = rows[s].grad_norm;
}

static int is_full(const eq_case *c) {
    return strcmp(c->strategy, "full_shard") == 0 || strcmp(c->strategy, "hybrid_shard") == 0;
}

/* Parses the ranks' optimizer lines and checks them against the strategy's figure: the
 * trainable floats split over the S ranks of a machine (S = W for shard_grad_op, the
 * machine size for the hybrid one), or not at all (no_shard). */
static void check_memory(const eq_case *c, const char *out) {
    size_t bytes[MAX_RANKS] = {0}, lo[MAX_RANKS] = {0}, hi[MAX_RANKS] = {0}, n = 0;
    int seen = 0;
    for (const char *p = strstr(out, "shard: rank "); p; p = strstr(p + 1, "shard: rank ")) {
        int r, w;
        size_t by, a, b, nn;
        char strat[64];
        if (sscanf(p, "shard: rank %d of %d (%63[^)]): optimizer state %zu bytes for trainable "
                      "floats [%zu, %zu) of %zu",
                   &r, &w, strat, &by, &a, &b, &nn) != 7)
            continue;
        ck_assert_int_eq(w, c->world);
        ck_assert_str_eq(strat, c->strategy);
        ck_assert(r >= 0 && r < c->world && !(seen & (1 << r)));
        seen |= 1 << r;
        bytes[r] = by, lo[r] = a, hi[r] = b, n = nn;
    }
    ck_assert_msg(seen == (1 << c->world) - 1, "not every rank reported its optimizer state:\n%s",
                  out);
    const int sharded = strcmp(c->strategy, "no_shard") != 0;
    const int S = c->node > 0 ? c->node : c->world, l_last = S - 1;
    if (is_full(c)) {
        /* the optimizer runs over the rank's pieces of every unit: len floats each, the
         * S ranks of a machine together one padded copy of the trainable floats */
        for (int r = 0; r < c->world; r++) {
            const size_t len = hi[r] - lo[r];
            printf("  %s %s W=%d rank %d: optimizer state %zu bytes measured, %zu expected "
                   "(2 x %zu floats x 4; %zu padded trainable floats)\n",
                   c->type, c->strategy, c->world, r, bytes[r], 2 * len * sizeof(float), len, n);
            ck_assert_uint_eq(len * (size_t)S, n);
            ck_assert_uint_eq(lo[r], (size_t)(r % S) * len);
            ck_assert_uint_eq(bytes[r], 2 * len * sizeof(float));
        }
        return;
    }
    size_t covered = 0, peak = 0;
    for (int r = 0; r < c->world; r++) {
        const size_t len = hi[r] - lo[r];
        const size_t block = n / (size_t)S;
        const int l = r % S; /* the rank's index on its machine */
        const size_t want_len = !sharded ? n : block + (l == l_last ? n % (size_t)S : 0);
        const size_t want_lo = sharded ? (size_t)l * block : 0;
        const size_t expect = 2 * want_len * sizeof(float); // AdamW's m and v, (len) each
        printf("  %s %s W=%d rank %d: optimizer state %zu bytes measured, %zu expected "
               "(2 x %zu floats x 4; %zu trainable, %zu on one process)\n",
               c->type, c->strategy, c->world, r, bytes[r], expect, want_len, n,
               2 * n * sizeof(float));
        ck_assert_uint_eq(lo[r], want_lo);
        ck_assert_uint_eq(len, want_len);
        ck_assert_uint_eq(bytes[r], expect);
        covered += len;
        if (bytes[r] > peak) peak = bytes[r];
    }
    if (sharded) {
        /* every machine covers the buffer once */
        ck_assert_uint_eq(covered, n * (size_t)(c->world / S));
        /* the per-rank peak drops to 1/S of one process's, up to the tail of < S floats */
        ck_assert_uint_le(peak, 2 * (n / S + S) * sizeof(float));
        ck_assert_uint_lt(peak * (size_t)S, 2 * n * sizeof(float) + 8 * S * 4);
    }
}

/* The ranks' "memory: rank R of W (...): ... peaked at X MiB measured, Y MiB expected"
 * lines: every rank's measured peak of parameters, gradients and optimizer state within
 * 2% (+ 16 KiB of page rounding) of the figure its strategy implies; *max_mib the largest
 * measured. */
static void check_rank_memory(const eq_case *c, const char *out, int world, double *max_mib) {
    int seen = 0;
    *max_mib = 0;
    for (const char *p = strstr(out, "memory: rank "); p; p = strstr(p + 1, "memory: rank ")) {
        int r, w;
        double meas, expect;
        char strat[64];
        if (sscanf(p, "memory: rank %d of %d (%63[^)]): parameters, gradients and optimizer "
                      "state peaked at %lf MiB measured, %lf MiB expected",
                   &r, &w, strat, &meas, &expect) != 5)
            continue;
        ck_assert_int_eq(w, world);
        ck_assert_str_eq(strat, c->strategy);
        ck_assert(r >= 0 && r < world && !(seen & (1 << r)));
        seen |= 1 << r;
        ck_assert_msg(fabs(meas - expect) <= 0.02 * expect + 16.0 / 1024,
                      "%s %s rank %d of %d: %.3f MiB measured, %.3f MiB expected", c->type,
                      c->strategy, r, w, meas, expect);
        /* offloaded under full sharding, the line says what of it is on the backend: the
         * units and the backend's buffers, not the shards and AdamW state */
        const char *dev = strstr(p, "MiB expected (");
        const char *eol = strchr(p, '\n');
        const int offloaded = w > 1 && is_full(c) && strstr(c->extra, "cpu_offload") != NULL;
        double on_dev = 0;
        if (dev && (!eol || dev < eol))
            ck_assert_int_eq(sscanf(dev, "MiB expected (%lf MiB of it on backend", &on_dev), 1);
        ck_assert_msg(offloaded ? on_dev > 0 && on_dev < meas : on_dev == 0,
                      "%s %s rank %d: %.3f of %.3f MiB on the backend", c->type, c->strategy,
                      r, on_dev, meas);
        if (offloaded)
            printf("  rank %d: %.3f of its %.3f MiB on the backend\n", r, on_dev, meas);
        if (meas > *max_mib) *max_mib = meas;
    }
    ck_assert_msg(seen == (1 << world) - 1, "not every rank reported its memory:\n%s", out);
}

/* The ranks' "comm: rank R of W (...): B bytes sent per step measured, E expected" lines:
 * the transport's count equals the strategy's figure from the model's sizes. */
static void check_comm(const eq_case *c, const char *out) {
    int seen = 0;
    for (const char *p = strstr(out, "comm: rank "); p; p = strstr(p + 1, "comm: rank ")) {
        int r, w;
        double meas, expect;
        char strat[64];
        if (sscanf(p, "comm: rank %d of %d (%63[^)]): %lf bytes sent per step measured, %lf "
                      "expected",
                   &r, &w, strat, &meas, &expect) != 5)
            continue;
        ck_assert_int_eq(w, c->world);
        ck_assert(r >= 0 && r < w && !(seen & (1 << r)));
        seen |= 1 << r;
        ck_assert_msg(meas > 0 && fabs(meas - expect) <= 1e-6 * expect,
                      "%s %s rank %d: %.0f bytes per step sent, %.0f expected", c->type,
                      c->strategy, r, meas, expect);
        if (r == 0)
            printf("  %s %s W=%d G=%d: %.0f bytes sent per step by rank 0 (expected %.0f)\n",
                   c->type, c->strategy, c->world, c->accum, meas, expect);
    }
    ck_assert_msg(seen == (1 << c->world) - 1, "not every rank reported its traffic:\n%s", out);
}

/* The one-process run's losses (into l1[N_STEPS]) against the ranks': each step's loss
 * and the gradient norm clipping used (train.grad_clip = 1 in the configs) within 1e-5
 * relative; the worst loss difference. */
static double compare_losses(const char *what, const char *one, const char *many, int world,
                             double *l1) {
    double lw[N_STEPS], g1[N_STEPS], gw[N_STEPS], worst = 0;
    read_losses(one, l1, g1);
    read_losses(many, lw, gw);
    for (int s = 0; s < N_STEPS; s++) {
        const double rel = fabs(l1[s] - lw[s]) / fabs(l1[s]);
        ck_assert_msg(rel <= 1e-5, "%s: step %d: loss %.9g (one process) vs %.9g (%d ranks)",
                      what, s + 1, l1[s], lw[s], world);
        if (rel > worst) worst = rel;
        ck_assert_msg(g1[s] > 0 && fabs(g1[s] - gw[s]) <= 1e-5 * g1[s],
                      "%s: step %d: grad norm %.9g (one process) vs %.9g (%d ranks)", what,
                      s + 1, g1[s], gw[s], world);
    }
    return worst;
}

/* The saved results of the one-process run and the ranks' (their adapters, or whole
 * models): every tensor within 1e-5 relative; the worst difference. */
static double compare_saved(const char *one, const char *many, int adapter) {
    const char *file = adapter ? "adapter/adapter_model.safetensors" : "model/model.safetensors";
    char pa[8192], pb[8192];
    snprintf(pa, sizeof pa, "%s/%s", one, file);
    snprintf(pb, sizeof pb, "%s/%s", many, file);
    return ru_compare_tensors(pa, pb, 1e-5, NULL);
}

/* Rank 0's "shard: loaded unit by unit" line under full sharding over groups of G ranks:
 * the load held at most this rank's pieces (the whole over G) and two units whole (the
 * one being cut, and an embedding that a backend keeps whole on the host), never the
 * whole model; and at least most of the largest unit, which was whole when it was cut. */
static void check_load(const char *out, int G) {
    const char *p = strstr(out, "shard: loaded unit by unit: ");
    ck_assert_msg(p != NULL, "no load line:\n%s", out);
    double held, whole, largest;
    ck_assert_int_eq(sscanf(p, "shard: loaded unit by unit: this rank held at most %lf MiB of "
                               "the model's buffers and its pieces (%lf MiB for all its units "
                               "whole, the largest %lf MiB)",
                            &held, &whole, &largest),
                     3);
    const double bound = whole / G + 2 * largest + 2.0 / 1024;
    ck_assert_msg(held <= bound && held < whole && held >= 0.5 * largest,
                  "the load held %.3f MiB (whole model %.3f, largest unit %.3f, bound %.3f)",
                  held, whole, largest, bound);
    printf("  load: at most %.3f MiB held (whole model %.3f MiB, largest unit %.3f, bound "
           "%.3f)\n", held, whole, largest, bound);
}

START_TEST(test_equivalence) {
    const eq_case *c = &k_cases[_i];
    if (!types_built(c->type)) {
        printf("skip: %s (its plugins are not built)\n", c->type);
        return;
    }
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    ck_assert_msg(qft && root, "QFT_BIN and QFT_SOURCE_ROOT must be set");
    char one[4096], many[4096], cmd[16384];
    snprintf(one, sizeof one, "%s/%s-%s-%d-one", g_tmp, c->type, c->strategy, c->world);
    snprintf(many, sizeof many, "%s/%s-%s-%d-ranks", g_tmp, c->type, c->strategy, c->world);
    char node_env[64] = "", backend[96] = "";
    if (c->node > 0)
        snprintf(node_env, sizeof node_env, "-x QFT_TRANSPORT_NODE_SIZE=%d", c->node);
    if (c->backend)
        snprintf(backend, sizeof backend, "--set train.backend=\\\"%s\\\"", c->backend);
    static char out[1 << 20];

    snprintf(cmd, sizeof cmd,
             "%s train %s/configs/%s.cfg %s %s %s --set shard.plugin=\\\"%s\\\" "
             "--set train.grad_accum=%d --set output.dir=\\\"%s\\\" 2>&1",
             qft, root, c->type, k_overrides, backend, c->extra, c->strategy, c->world * c->accum,
             one);
    int st = ru_run(cmd, out, sizeof out);
    ck_assert_msg(st == 0, "one process failed (%d):\n%s\n%s", st, cmd, out);
    double mib_one = 0, mib_rank = 0;
    check_rank_memory(c, out, 1, &mib_one);

    snprintf(cmd, sizeof cmd,
             "%s -np %d -x OMP_NUM_THREADS=1 %s %s train %s/configs/%s.cfg %s %s %s "
             "--set shard.plugin=\\\"%s\\\" --set train.grad_accum=%d "
             "--set output.dir=\\\"%s\\\" 2>&1",
             g_mpirun, c->world, node_env, qft, root, c->type, k_overrides, backend, c->extra,
             c->strategy, c->accum, many);
    st = ru_run(cmd, out, sizeof out);
    ck_assert_msg(st == 0, "mpirun failed (%d):\n%s\n%s", st, cmd, out);
    /* the strategy's buffers went through the transport over the backend's memory */
    char line[128];
    const int offload = strstr(c->extra, "cpu_offload") != NULL;
    snprintf(line, sizeof line, "over %d ranks (%s transport)", c->world,
             c->backend ? "staged" : "mpi");
    ck_assert_msg(strstr(out, line) != NULL, "no \"%s\" in the log:\n%s", line, out);
    /* full sharding on another backend leaves a frozen untied embedding whole on the host
     * (train.embedding_on_host's default); one that trains is a unit like the others. The
     * comm figures below then agree only if it never moved. */
    if (c->backend && is_full(c)) {
        const int kept = strstr(out, "stays whole in host memory on every rank") != NULL;
        ck_assert_msg(kept == (strcmp(c->type, "full") != 0 && !strstr(c->extra, EMBED_SHARDED)),
                      "%s: the embedding %s whole on the host:\n%s", c->type,
                      kept ? "stayed" : "did not stay", out);
    }

    double l1[N_STEPS];
    const double worst_loss = compare_losses(c->type, one, many, c->world, l1);
    /* the run trains: a loss that stays put would hide a missing update */
    ck_assert_msg(l1[N_STEPS - 1] < l1[0], "loss did not fall: %g -> %g", l1[0], l1[N_STEPS - 1]);

    /* full and llama_pro save the whole model, the others their adapter */
    const double worst_t = compare_saved(
        one, many, strcmp(c->type, "full") != 0 && strcmp(c->type, "llama_pro") != 0);
    printf("%s %s W=%d G=%d%s%s%s%s%s%s: losses %.6f -> %.6f, worst relative difference: loss "
           "%.2e, saved tensors %.2e\n",
           c->type, c->strategy, c->world, c->accum, c->node ? " (machines of 2)" : "",
           c->backend ? " on " : "", c->backend ? c->backend : "",
           strstr(c->extra, "bf16") ? " with frozen bf16" : "",
           offload ? " with cpu_offload" : "",
           strstr(c->extra, EMBED_SHARDED) ? " (embedding sharded)" : "", l1[0],
           l1[N_STEPS - 1], worst_loss, worst_t);
    check_memory(c, out);
    if (is_full(c)) check_load(out, c->node ? c->node : c->world);
    check_rank_memory(c, out, c->world, &mib_rank);
    check_comm(c, out);
    printf("  %s %s W=%d: parameters + gradients + optimizer state peak per rank %.3f MiB "
           "(one process %.3f MiB)\n",
           c->type, c->strategy, c->world, mib_rank, mib_one);
    /* sharding strategies hold less per rank than one process; no_shard the same */
    if (strcmp(c->strategy, "no_shard") == 0)
        ck_assert(fabs(mib_rank - mib_one) <= 0.02 * mib_one);
    else
        ck_assert_msg(mib_rank < mib_one, "%s: %.3f MiB per rank, %.3f on one process",
                      c->strategy, mib_rank, mib_one);
    fflush(stdout);
}
END_TEST

/* Full sharding from a Hugging Face checkpoint (model.path), loaded and cut unit by unit:
 * the base is a whole model that one process trained and saved (full.cfg); QLoRA on it
 * (quantized as each block arrives), QLoRA again from the saved adapter (adapter.path,
 * written into the units before they are cut), and Llama-Pro with NF4 originals (each
 * inserted block read from its source block's tensors) train under 2 and 3 ranks as in one
 * process. */
START_TEST(test_checkpoint) {
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    ck_assert_msg(qft && root, "QFT_BIN and QFT_SOURCE_ROOT must be set");
    static char out[1 << 20];
    char cmd[16384], base[4096], base_model[4096];
    snprintf(base, sizeof base, "%s/ckpt-base", g_tmp);
    snprintf(base_model, sizeof base_model, "%s/model", base);
    snprintf(cmd, sizeof cmd, "%s train %s/configs/full.cfg %s --set output.dir=\\\"%s\\\" 2>&1",
             qft, root, k_overrides, base);
    int st = ru_run(cmd, out, sizeof out);
    ck_assert_msg(st == 0, "the base run failed (%d):\n%s\n%s", st, cmd, out);
    static const struct {
        const char *type;
        int world;
        int from_adapter; /* adapter.path = the previous case's one-process adapter */
    } cases[] = {{"qlora", 2, 0}, {"qlora", 2, 1}, {"bnb_llama_pro", 3, 0}};
    char prev_adapter[4096] = "";
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        if (!types_built(cases[k].type)) {
            printf("skip: %s from a checkpoint (its plugins are not built)\n", cases[k].type);
            continue;
        }
        char one[4096], many[4096], sets[8192];
        snprintf(one, sizeof one, "%s/ckpt-%zu-one", g_tmp, k);
        snprintf(many, sizeof many, "%s/ckpt-%zu-ranks", g_tmp, k);
        int n = snprintf(sets, sizeof sets, "%s --set model.path=\\\"%s\\\" "
                                           "--set shard.plugin=\\\"full_shard\\\"",
                         k_overrides, base_model);
        if (cases[k].from_adapter)
            snprintf(sets + n, sizeof sets - (size_t)n, " --set adapter.path=\\\"%s\\\"",
                     prev_adapter);
        const int W = cases[k].world;
        snprintf(cmd, sizeof cmd,
                 "%s train %s/configs/%s.cfg %s --set train.grad_accum=%d "
                 "--set output.dir=\\\"%s\\\" 2>&1",
                 qft, root, cases[k].type, sets, W, one);
        st = ru_run(cmd, out, sizeof out);
        ck_assert_msg(st == 0, "one process failed (%d):\n%s\n%s", st, cmd, out);
        snprintf(cmd, sizeof cmd,
                 "%s -np %d -x OMP_NUM_THREADS=1 %s train %s/configs/%s.cfg %s "
                 "--set train.grad_accum=1 --set output.dir=\\\"%s\\\" 2>&1",
                 g_mpirun, W, qft, root, cases[k].type, sets, many);
        st = ru_run(cmd, out, sizeof out);
        ck_assert_msg(st == 0, "mpirun failed (%d):\n%s\n%s", st, cmd, out);
        check_load(out, W);
        double l1[N_STEPS];
        const double worst = compare_losses(cases[k].type, one, many, W, l1);
        /* the run trains (on a base already trained, the loss need not fall in 5 steps) */
        ck_assert_msg(fabs(l1[N_STEPS - 1] - l1[0]) > 1e-6 * fabs(l1[0]),
                      "the loss stayed at %g", l1[0]);
        const int adapter = strcmp(cases[k].type, "qlora") == 0;
        const double worst_t = compare_saved(one, many, adapter);
        printf("%s from a checkpoint%s, full_shard W=%d: losses %.6f -> %.6f, worst relative "
               "difference: loss %.2e, saved tensors %.2e\n",
               cases[k].type, cases[k].from_adapter ? " and a saved adapter" : "", W, l1[0],
               l1[N_STEPS - 1], worst, worst_t);
        if (adapter) snprintf(prev_adapter, sizeof prev_adapter, "%s/adapter", one);
    }
    fflush(stdout);
}
END_TEST

/* A failure on one rank ends every rank, with the message and the rank, in bounded time:
 * rank 0 alone cannot create output.dir (under a regular file), while the others go on
 * to the first step's collective and would wait there forever without the abort. */
START_TEST(test_one_rank_fails) {
    const char *qft = getenv("QFT_BIN"), *root = getenv("QFT_SOURCE_ROOT");
    ck_assert_msg(qft && root, "QFT_BIN and QFT_SOURCE_ROOT must be set");
    char file[4096], cmd[16384];
    snprintf(file, sizeof file, "%s/not-a-dir", g_tmp);
    FILE *f = fopen(file, "w");
    ck_assert(f != NULL);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "timeout 120 %s -np 3 -x OMP_NUM_THREADS=1 %s train %s/configs/full.cfg %s "
             "--set shard.plugin=\"shard_grad_op\" --set train.grad_accum=1 "
             "--set output.dir=\"%s/run\" 2>&1",
             g_mpirun, qft, root, k_overrides, file);
    static char out[1 << 20];
    const double t0 = (double)time(NULL);
    const int st = ru_run(cmd, out, sizeof out);
    const double secs = (double)time(NULL) - t0;
    ck_assert_msg(st != 0, "the job succeeded although rank 0 could not write:\n%s", out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 124, "the job hung:\n%s", out);
    ck_assert_msg(strstr(out, "rank 0") != NULL && strstr(out, "not-a-dir") != NULL,
                  "no message naming rank 0 and the path:\n%s", out);
    printf("one failing rank: the job ended in %.0f s with status %d\n", secs, WEXITSTATUS(st));
}
END_TEST

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MPIRUN [MPIRUN-FLAGS...]\n", argv[0]);
        return 2;
    }
    size_t ml = 0;
    for (int i = 1; i < argc; i++)
        ml += (size_t)snprintf(g_mpirun + ml, sizeof g_mpirun - ml, "%s ", argv[i]);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qft-shard-XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("equivalence");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_equivalence, 0, N_CASES);
    tcase_add_test(tc, test_checkpoint);
    tcase_add_test(tc, test_one_rank_fails);
    suite_add_tcase(s, tc);
    return ru_run_suite(s, g_tmp);
}
