/* The NCCL transport on GPUs, one rank per GPU (run by mpirun with -np 1, or -np 2 where
 * two GPUs are visible). Exits 77 (a skip to meson) where no GPU, or fewer GPUs than ranks,
 * can be used. Every collective is checked against the serial answer computed on the host;
 * NCCL sums in its own order, so sums are compared within 1e-6 of the sum of magnitudes
 * (fp32 rounding of W terms), everything else bit for bit. No Check: an MPI process with a
 * CUDA context must not fork. */
#include "transport.h"
#include "transport_test_util.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_failures;

#define EXPECT(cond, ...)                                                                 \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            g_failures++;                                                                 \
            fprintf(stderr, "%s:%d: rank %d: failed: %s: ", __FILE__, __LINE__, rank, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
        }                                                                                 \
    } while (0)

#define CU(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                    cudaGetErrorString(e_));                                              \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static void *dev_copy(const void *host, size_t bytes) {
    void *d = NULL;
    CU(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes) CU(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void host_copy(void *host, const void *dev, size_t bytes) {
    if (bytes) CU(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}

int main(void) {
    qft_err err = {0};
    qft_transport *host = NULL, *t = NULL;
    int rank = 0;
    if (qft_transport_open("auto", &host, &err)) {
        fprintf(stderr, "cannot open the host transport: %s\n", err.msg);
        return 1;
    }
    rank = host->rank;
    int W = host->world, count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < host->node_size) {
        printf("skip: %d GPU(s) visible, %d rank(s) on this machine\n", count, host->node_size);
        host->vt->close(host);
        return 77;
    }
    if (qft_transport_open_nccl(host, -1, &t, &err)) {
        fprintf(stderr, "cannot open NCCL: %s\n", err.msg);
        return 1;
    }
    EXPECT(!strcmp(t->kind, "nccl") && t->rank == rank && t->world == W, "kind %s", t->kind);
    EXPECT(t->device == host->node_rank, "device %d", t->device);
    EXPECT(t->host == host, "the host transport beside it");

    /* all_gather, odd size */
    size_t bpr = 4099;
    unsigned char *hb = malloc((size_t)W * bpr), *want = malloc((size_t)W * bpr);
    for (int r = 0; r < W; r++) tt_fill_bytes(want + (size_t)r * bpr, bpr, 10, r);
    void *dsend = dev_copy(want + (size_t)rank * bpr, bpr), *drecv = NULL;
    CU(cudaMalloc(&drecv, (size_t)W * bpr));
    EXPECT(qft_transport_all_gather(t, dsend, drecv, bpr, &err) == 0, "%s", err.msg);
    host_copy(hb, drecv, (size_t)W * bpr);
    EXPECT(!memcmp(hb, want, (size_t)W * bpr), "all_gather differs");

    /* broadcast from the last rank: every rank starts from its own bytes */
    tt_fill_bytes(want, bpr, 11, rank);
    tt_fill_bytes(hb, bpr, 11, W - 1);
    void *dbuf = dev_copy(want, bpr);
    EXPECT(qft_transport_broadcast(t, dbuf, bpr, W - 1, &err) == 0, "%s", err.msg);
    host_copy(want, dbuf, bpr);
    EXPECT(!memcmp(hb, want, bpr), "broadcast differs");

    /* all_reduce and reduce_scatter sums, within fp32 rounding of the order */
    size_t n = 10007;
    float *x = malloc((size_t)W * n * sizeof(float)), *got = malloc((size_t)W * n * sizeof(float)),
          *sum = calloc((size_t)W * n, sizeof(float)), *mag = calloc((size_t)W * n, sizeof(float));
    for (int r = 0; r < W; r++) {
        tt_fill_f32(x, (size_t)W * n, 12, r);
        for (size_t i = 0; i < (size_t)W * n; i++) {
            sum[i] += x[i];
            mag[i] += fabsf(x[i]);
        }
    }
    tt_fill_f32(x, (size_t)W * n, 12, rank);
    float *dx = dev_copy(x, (size_t)W * n * sizeof(float)), *dy = NULL;
    CU(cudaMalloc((void **)&dy, n * sizeof(float)));
    EXPECT(qft_transport_reduce_scatter_f32(t, dx, dy, n, &err) == 0, "%s", err.msg);
    host_copy(got, dy, n * sizeof(float));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = (size_t)rank * n + i;
        bad += fabsf(got[i] - sum[k]) > 1e-6f * mag[k] + 1e-30f;
    }
    EXPECT(bad == 0, "reduce_scatter: %d elements off", bad);
    EXPECT(qft_transport_all_reduce_f32(t, dx, (size_t)W * n, QFT_REDUCE_SUM, &err) == 0, "%s",
           err.msg);
    host_copy(got, dx, (size_t)W * n * sizeof(float));
    bad = 0;
    for (size_t i = 0; i < (size_t)W * n; i++) bad += fabsf(got[i] - sum[i]) > 1e-6f * mag[i] + 1e-30f;
    EXPECT(bad == 0, "all_reduce: %d elements off", bad);

    double dv = rank + 0.5, *dd = dev_copy(&dv, sizeof dv);
    EXPECT(qft_transport_all_reduce_f64(t, dd, 1, QFT_REDUCE_MAX, &err) == 0, "%s", err.msg);
    host_copy(&dv, dd, sizeof dv);
    EXPECT(dv == W - 0.5, "max %g", dv);
    EXPECT(qft_transport_barrier(t, &err) == 0, "%s", err.msg);

    /* split by parity */
    qft_transport *sub = NULL;
    EXPECT(qft_transport_split(t, rank % 2, rank, &sub, &err) == 0, "%s", err.msg);
    if (sub) {
        EXPECT(sub->world == (W - rank % 2 + 1) / 2, "sub world %d", sub->world);
        EXPECT(qft_transport_barrier(sub, &err) == 0, "%s", err.msg);
        sub->vt->close(sub);
    }

    const qft_transport_stats *st = t->stats;
    EXPECT(st->calls[QFT_COLL_ALL_REDUCE] == 2 && st->calls[QFT_COLL_BARRIER] == 1, "calls");
    EXPECT(st->bytes_sent[QFT_COLL_ALL_GATHER] == (uint64_t)(W - 1) * bpr, "bytes");

    cudaFree(dsend);
    cudaFree(drecv);
    cudaFree(dbuf);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dd);
    free(hb);
    free(want);
    free(x);
    free(got);
    free(sum);
    free(mag);
    t->vt->close(t);
    double failed = g_failures;
    if (qft_transport_all_reduce_f64(host, &failed, 1, QFT_REDUCE_SUM, &err)) failed = 1;
    if (rank == 0) printf("transport_nccl: %d rank(s): %s\n", W, failed ? "FAILED" : "all passed");
    host->vt->close(host);
    return failed ? 1 : 0;
}
