// The emulated NCCL's own checks (core/cuda/emu/cuda_emu_nccl.cc), driven by
// test_cuda_emu_nccl.c: ranks as threads of one process (each thread its own current
// device, as with the CUDA runtime), calling NCCL as the transport does.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

namespace {

struct rank_job {
    ncclUniqueId id;
    int rank, world, device;
    int what;            // 0: sum all-reduces of one float; 1: rank 1 aborts meanwhile
    int calls;           // all-reduces, each of `value` again
    float value, result[4];
    ncclResult_t rc;
    char msg[256];
};

// Creates a non-blocking communicator and waits for it, as transport_nccl.c does.
ncclResult_t open_comm(rank_job *j, ncclComm_t *comm) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(comm, j->world, j->id, j->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) return r;
    ncclResult_t async = ncclInProgress;
    while (async == ncclInProgress) {
        if ((r = ncclCommGetAsyncError(*comm, &async)) != ncclSuccess) return r;
    }
    return async;
}

void *run_rank(void *arg) {
    rank_job *j = (rank_job *)arg;
    ncclComm_t comm = NULL;
    float *d = NULL;
    cudaSetDevice(j->device);
    j->rc = open_comm(j, &comm);
    if (j->rc != ncclSuccess) {
        snprintf(j->msg, sizeof j->msg, "%s", ncclGetLastError(comm));
        return NULL;
    }
    if (j->what == 1 && j->rank == 1) {
        ncclCommAbort(comm);
        return NULL;
    }
    cudaMalloc((void **)&d, sizeof(float));
    for (int k = 0; k < j->calls && j->rc == ncclSuccess; k++) {
        cudaMemcpy(d, &j->value, sizeof(float), cudaMemcpyHostToDevice);
        j->rc = ncclAllReduce(d, d, 1, ncclFloat32, ncclSum, comm, 0);
        cudaMemcpy(&j->result[k], d, sizeof(float), cudaMemcpyDeviceToHost);
    }
    snprintf(j->msg, sizeof j->msg, "%s", j->rc == ncclSuccess ? "" : ncclGetLastError(comm));
    cudaFree(d);
    ncclCommDestroy(comm);
    return NULL;
}

} // namespace

extern "C" {

// `world` ranks on devices[rank], each all-reducing values[rank] `calls` times (at most 4)
// on one communicator; what = 1: rank 1 aborts instead. Fills results (rank r's call k at
// r * calls + k), rcs and the first failing rank's message.
void emu_st_nccl_ranks(int world, const int *devices, const float *values, int what, int calls,
                       float *results, int *rcs, char *msg, size_t cap) {
    rank_job jobs[8];
    pthread_t th[8];
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    for (int r = 0; r < world; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].id = id, jobs[r].rank = r, jobs[r].world = world, jobs[r].device = devices[r];
        jobs[r].what = what, jobs[r].calls = calls, jobs[r].value = values[r];
        pthread_create(&th[r], NULL, run_rank, &jobs[r]);
    }
    msg[0] = 0;
    for (int r = 0; r < world; r++) {
        pthread_join(th[r], NULL);
        for (int k = 0; k < calls; k++) results[r * calls + k] = jobs[r].result[k];
        rcs[r] = (int)jobs[r].rc;
        if (jobs[r].rc != ncclSuccess && !msg[0]) snprintf(msg, cap, "%s", jobs[r].msg);
    }
}

// One rank's misuse of a communicator on device 0; returns NCCL's answer and its message.
//   0: a collective before ncclCommGetAsyncError said the creation finished
//   1: a buffer of device 1; 2: a host buffer; 3: a config not from the initializer;
//   4: bfloat16, which the emulator does not model; 5: send and receive buffers
//   overlapping other than in place
int emu_st_nccl_misuse(int what, char *msg, size_t cap) {
    cudaSetDevice(0);
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    ncclComm_t comm = NULL;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    if (what == 3) config.magic = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm, 1, id, 0, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
        snprintf(msg, cap, "%s", ncclGetLastError(NULL));
        return (int)r;
    }
    ncclResult_t async;
    if (what != 0) ncclCommGetAsyncError(comm, &async);
    float host_buf[4] = {0};
    float *d = NULL;
    if (what == 1) cudaSetDevice(1);
    cudaMalloc((void **)&d, sizeof host_buf);
    cudaSetDevice(0);
    void *buf = what == 2 ? (void *)host_buf : (void *)d;
    if (what == 5)
        r = ncclAllReduce(d, d + 1, 2, ncclFloat32, ncclSum, comm, 0);
    else
        r = ncclAllReduce(buf, buf, 4, what == 4 ? ncclBfloat16 : ncclFloat32, ncclSum, comm, 0);
    snprintf(msg, cap, "%s", ncclGetLastError(comm));
    cudaFree(d);
    ncclCommDestroy(comm);
    return (int)r;
}

} // extern "C"
