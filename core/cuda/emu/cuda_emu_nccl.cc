// The emulator's NCCL: the calls the NCCL transport (core/transport/transport_nccl.c) makes,
// with their real signatures (from nccl.h), between the processes of one machine, each rank
// a process with its own emulated device(s) as under mpirun.
//
// A communicator is a POSIX shared-memory segment named by the unique id (rank 0 makes the
// name; the host transport broadcasts the id): a header (a barrier, an abort flag, each
// rank's device and split arguments) and one staging slot per rank. A collective moves its
// data a slot at a time: every rank copies its part from device memory into its slot, all
// meet at the barrier, each reads what it needs from every slot into its device buffer,
// and all meet again before the slots are reused. Everything completes inside the call,
// as a non-blocking communicator may; nothing is ever in flight on a stream.
//
// What a real NCCL refuses is refused here, with ncclGetLastError saying why: buffers that
// are not memory of the communicator's device, two ranks on one device, a communicator
// used before ncclCommGetAsyncError reported its creation finished (a non-blocking one's
// rule), a config without NCCL_CONFIG_INITIALIZER, send and receive buffers that overlap
// other than in NCCL's in-place layout (undefined there), a type or an operation outside the
// ones modelled. Sums run in a different rank order for each slot's worth of elements (the same
// on every rank), as a ring's do, so a caller that relies on rank order sees it. A rank
// that waits longer than $QFT_COLLECTIVE_TIMEOUT (default 300 s) for the others fails the
// call with ncclSystemError instead of hanging; one that aborts makes the others' waits
// fail with ncclRemoteError.
#include "cuda_emu_internal.h"

#include <nccl.h>

#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

using namespace qft_emu;

namespace {

const int MAX_RANKS = 64;
const size_t HEADER = 4096;

// Staging bytes per rank and round: 1 MiB, or $QFT_NCCL_EMU_SLOT_BYTES (at least 64, a
// multiple of 8), which tests set small so that every collective takes several rounds.
size_t slot_bytes() {
    const char *e = getenv("QFT_NCCL_EMU_SLOT_BYTES");
    const long v = e && *e ? atol(e) : 0;
    return v >= 64 ? (size_t)v / 8 * 8 : (size_t)1 << 20;
}

struct shared_header {
    uint32_t arrived, generation; // the barrier (sense by generation)
    uint32_t aborted;             // set by ncclCommAbort: the others' waits fail
    uint64_t slot;                // the first rank's slot size; all must agree
    int32_t device[MAX_RANKS];    // each rank's device, for the duplicate check
    int32_t color[MAX_RANKS], key[MAX_RANKS]; // ncclCommSplit's arguments
};
static_assert(sizeof(shared_header) <= HEADER, "the header fits its page");

} // namespace

struct ncclComm {
    char name[64];       // the segment's name (also the unique id's text)
    int rank, world, device;
    shared_header *hdr;
    unsigned char *slots; // world * slot bytes after the header
    size_t slot;
    size_t map_bytes;
    int unpolled;        // creation not yet observed finished by ncclCommGetAsyncError
    ncclResult_t async;  // an error that ends the communicator
    unsigned splits;     // splits made from it, for the children's names
    unsigned rounds;     // collectives' slot rounds, for the order of sums
    char last[256];
};

namespace {

char g_last[256]; // ncclGetLastError(NULL): errors before a communicator exists

ncclResult_t say(ncclComm_t c, ncclResult_t r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
ncclResult_t say(ncclComm_t c, ncclResult_t r, const char *fmt, ...) {
    char *to = c ? c->last : g_last;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(to, sizeof g_last, fmt, ap);
    va_end(ap);
    fprintf(stderr, "qft nccl emulator: rank %d: %s\n", c ? c->rank : -1, to);
    return r;
}

double now() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double timeout_s() {
    const char *e = getenv("QFT_COLLECTIVE_TIMEOUT");
    const double v = e && *e ? atof(e) : 0.0;
    return v > 0 ? v : 300.0;
}

// All ranks of c meet; fails when one aborted or the others do not come in time.
ncclResult_t meet(ncclComm_t c, const char *what) {
    shared_header *h = c->hdr;
    const uint32_t gen = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&h->arrived, 1, __ATOMIC_ACQ_REL) == (uint32_t)c->world) {
        __atomic_store_n(&h->arrived, 0, __ATOMIC_RELAXED);
        __atomic_add_fetch(&h->generation, 1, __ATOMIC_RELEASE);
        return ncclSuccess;
    }
    const double t0 = now(), limit = timeout_s();
    for (long spins = 0; __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE) == gen; spins++) {
        if (__atomic_load_n(&h->aborted, __ATOMIC_ACQUIRE))
            return c->async = say(c, ncclRemoteError, "%s: another rank aborted the communicator", what);
        if (spins > 1000) {
            if (now() - t0 > limit) {
                __atomic_store_n(&h->aborted, 1, __ATOMIC_RELEASE);
                return c->async = say(c, ncclSystemError, "%s: waited %.0f s for the other ranks "
                                      "(QFT_COLLECTIVE_TIMEOUT)", what, limit);
            }
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        } else {
            sched_yield();
        }
    }
    return ncclSuccess;
}

// Maps the segment `name` for rank of world, on the calling thread's current device.
ncclResult_t attach(const char *name, int world, int rank, ncclComm_t *out) {
    *out = NULL;
    if (world < 1 || world > MAX_RANKS || rank < 0 || rank >= world)
        return say(NULL, ncclInvalidArgument, "rank %d of %d: the emulator takes 1 to %d ranks", rank,
                   world, MAX_RANKS);
    // a reduce-scatter round stages at least one element of every rank's block
    const size_t slot = slot_bytes() > (size_t)world * 8 ? slot_bytes() : (size_t)world * 8;
    const size_t bytes = HEADER + (size_t)world * slot;
    const int fd = shm_open(name, O_RDWR | O_CREAT, 0600);
    if (fd < 0) return say(NULL, ncclSystemError, "shm_open %s failed", name);
    if (ftruncate(fd, (off_t)bytes)) { // every rank sets the same size; the contents stay
        close(fd);
        return say(NULL, ncclSystemError, "ftruncate of %s failed", name);
    }
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return say(NULL, ncclSystemError, "mmap of %s failed", name);
    ncclComm_t c = (ncclComm_t)calloc(1, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->rank = rank, c->world = world, c->device = current_device();
    c->hdr = (shared_header *)m;
    c->slots = (unsigned char *)m + HEADER;
    c->slot = slot;
    c->map_bytes = bytes;
    uint64_t first = 0;
    __atomic_compare_exchange_n(&c->hdr->slot, &first, (uint64_t)slot, false, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
    c->unpolled = 1;
    c->hdr->device[rank] = c->device;
    ncclResult_t r = meet(c, "ncclCommInitRank");
    if (r == ncclSuccess) {
        if (rank == 0) shm_unlink(name); // every rank has it mapped: the name can go
        if (c->hdr->slot != slot)
            r = say(c, ncclInvalidUsage, "the ranks disagree on QFT_NCCL_EMU_SLOT_BYTES");
        for (int i = 0; i < world && r == ncclSuccess; i++)
            if (i != rank && c->hdr->device[i] == c->device)
                r = say(c, ncclInvalidUsage, "Duplicate GPU detected: rank %d and rank %d both on "
                        "device %d", rank, i, c->device);
    }
    if (r != ncclSuccess) {
        if (r == ncclInvalidUsage) snprintf(g_last, sizeof g_last, "%s", c->last);
        munmap(m, bytes);
        free(c);
        return r;
    }
    *out = c;
    return ncclSuccess;
}

// Whether c may run a collective now (its creation seen finished, no error).
ncclResult_t usable(ncclComm_t c, const char *what) {
    if (!c) return say(NULL, ncclInvalidArgument, "%s: no communicator", what);
    if (c->async != ncclSuccess) return say(c, ncclInvalidUsage, "%s: the communicator failed before", what);
    if (c->unpolled)
        return say(c, ncclInvalidUsage, "%s: called before ncclCommGetAsyncError reported the "
                   "non-blocking communicator's creation finished", what);
    return ncclSuccess;
}

ncclResult_t check_buffer(ncclComm_t c, const char *what, const char *which, const void *p, size_t bytes) {
    if (!bytes || mem_on(p, bytes, c->device)) return ncclSuccess;
    const int at = mem_where(p, bytes, NULL);
    if (at >= 0)
        return say(c, ncclInvalidArgument, "%s: %s (%p, %zu bytes) is device %d's memory, the "
                   "communicator's device is %d", what, which, p, bytes, at, c->device);
    return say(c, ncclInvalidArgument, "%s: %s (%p, %zu bytes) is not device memory (or not "
               "all of it)", what, which, p, bytes);
}

// NCCL defines a collective's result for disjoint buffers and for its one in-place layout
// (send at `in_place` inside recv); any other overlap reads data it is overwriting.
ncclResult_t check_overlap(ncclComm_t c, const char *what, const void *send, size_t send_bytes,
                           const void *recv, size_t recv_bytes, const void *in_place) {
    const char *s = (const char *)send, *r = (const char *)recv;
    if (!send_bytes || !recv_bytes || s + send_bytes <= r || r + recv_bytes <= s || send == in_place)
        return ncclSuccess;
    return say(c, ncclInvalidArgument, "%s: sendbuff %p (%zu bytes) overlaps recvbuff %p (%zu "
               "bytes) other than in place (sendbuff at %p): the result is undefined", what, send,
               send_bytes, recv, recv_bytes, in_place);
}

size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0; // half, bfloat16, fp8: not modelled
    }
}

template <typename T> T combine(T a, T b, ncclRedOp_t op) {
    switch (op) {
    case ncclSum: return a + b;
    case ncclProd: return a * b;
    case ncclMax: return a > b ? a : b; // NaN handling aside, as NCCL's
    default: return a < b ? a : b;      // ncclMin
    }
}

// out[i] = the reduction over ranks r of element i at byte `at` of r's slot, taken in the
// order first, first + 1, ... (mod world), first moving on every round.
template <typename T>
void reduce_slots(const ncclComm_t c, size_t at, size_t n, ncclRedOp_t op, T *out) {
    const int first = (int)(c->rounds % (unsigned)c->world);
    for (size_t i = 0; i < n; i++) {
        T acc = ((const T *)(c->slots + (size_t)first * c->slot + at))[i];
        for (int k = 1; k < c->world; k++) {
            const int r = (first + k) % c->world;
            acc = combine(acc, ((const T *)(c->slots + (size_t)r * c->slot + at))[i], op);
        }
        out[i] = acc;
    }
}

void reduce_any(const ncclComm_t c, size_t at, size_t n, ncclDataType_t t, ncclRedOp_t op, void *out) {
    switch (t) {
    case ncclInt8: reduce_slots(c, at, n, op, (int8_t *)out); break;
    case ncclUint8: reduce_slots(c, at, n, op, (uint8_t *)out); break;
    case ncclInt32: reduce_slots(c, at, n, op, (int32_t *)out); break;
    case ncclUint32: reduce_slots(c, at, n, op, (uint32_t *)out); break;
    case ncclInt64: reduce_slots(c, at, n, op, (int64_t *)out); break;
    case ncclUint64: reduce_slots(c, at, n, op, (uint64_t *)out); break;
    case ncclFloat32: reduce_slots(c, at, n, op, (float *)out); break;
    default: reduce_slots(c, at, n, op, (double *)out); break;
    }
}

ncclResult_t check_reduce(ncclComm_t c, const char *what, ncclDataType_t t, ncclRedOp_t op) {
    if (!type_size(t)) return say(c, ncclInvalidArgument, "%s: data type %d is not modelled by the emulator", what, (int)t);
    if (op != ncclSum && op != ncclProd && op != ncclMax && op != ncclMin)
        return say(c, ncclInvalidArgument, "%s: reduction %d is not modelled by the emulator", what, (int)op);
    return ncclSuccess;
}

unsigned char *my_slot(ncclComm_t c) { return c->slots + (size_t)c->rank * c->slot; }

// One round: the data copies run as a device section (device memory is open only there).
void copy_device(void *dst, const void *src, size_t n) {
    device_enter();
    memmove(dst, src, n);
    device_leave();
}

} // namespace

extern "C" {

ncclResult_t ncclGetVersion(int *version) {
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) { return comm ? comm->last : g_last; }

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static unsigned serial;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "/qft-nccl-emu-%d-%u-%ld", (int)getpid(),
             __atomic_add_fetch(&serial, 1, __ATOMIC_RELAXED), (long)ts.tv_nsec);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config) {
    *comm = NULL;
    if (config && (config->magic != 0xcafebeef || config->size != sizeof(ncclConfig_t)))
        return say(NULL, ncclInvalidArgument, "ncclCommInitRankConfig: the config was not set "
                   "from NCCL_CONFIG_INITIALIZER");
    if (strncmp(id.internal, "/qft-nccl-emu-", 14) || !memchr(id.internal, 0, sizeof id.internal))
        return say(NULL, ncclInvalidArgument, "ncclCommInitRankConfig: the unique id is not one "
                   "ncclGetUniqueId made (not broadcast to this rank?)");
    return attach(id.internal, nranks, rank, comm);
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    return ncclCommInitRankConfig(comm, nranks, id, rank, NULL);
}

// Creation (and a split) finishes inside the call; the first poll says so, as NCCL's first
// poll after a finished creation does. Until then the communicator refuses collectives.
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
    if (!comm) return ncclInvalidArgument;
    comm->unpolled = 0;
    *async = comm->async;
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    *count = comm->world;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    *rank = comm->rank;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
    *device = comm->device;
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    munmap(comm->hdr, comm->map_bytes);
    free(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    __atomic_store_n(&comm->hdr->aborted, 1, __ATOMIC_RELEASE);
    return ncclCommDestroy(comm);
}

// The members of a color, ordered by key then by parent rank, make the child; its segment's
// name is the parent's with the split's serial and the color.
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config) {
    *newcomm = NULL;
    ncclResult_t r = usable(comm, "ncclCommSplit");
    if (r != ncclSuccess) return r;
    if (config && (config->magic != 0xcafebeef || config->size != sizeof(ncclConfig_t)))
        return say(comm, ncclInvalidArgument, "ncclCommSplit: the config was not set from NCCL_CONFIG_INITIALIZER");
    if (color < 0 && color != NCCL_SPLIT_NOCOLOR)
        return say(comm, ncclInvalidArgument, "ncclCommSplit: color %d", color);
    comm->hdr->color[comm->rank] = color, comm->hdr->key[comm->rank] = key;
    if ((r = meet(comm, "ncclCommSplit")) != ncclSuccess) return r;
    int colors[MAX_RANKS], keys[MAX_RANKS];
    memcpy(colors, comm->hdr->color, sizeof colors);
    memcpy(keys, comm->hdr->key, sizeof keys);
    if ((r = meet(comm, "ncclCommSplit")) != ncclSuccess) return r; // arrays free again
    const unsigned serial = comm->splits++;
    if (color == NCCL_SPLIT_NOCOLOR) return ncclSuccess;
    int world = 0, rank = 0;
    for (int i = 0; i < comm->world; i++) {
        if (colors[i] != color) continue;
        world++;
        if (keys[i] < key || (keys[i] == key && i < comm->rank)) rank++;
    }
    char name[64];
    snprintf(name, sizeof name, "%.40s-s%u-c%d", comm->name, serial, color);
    r = attach(name, world, rank, newcomm);
    if (r != ncclSuccess) snprintf(comm->last, sizeof comm->last, "%s", g_last);
    return r;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    if (context_broken()) return ncclUnhandledCudaError;
    stream_enqueued(stream);
    const char *what = "ncclAllReduce";
    ncclResult_t r = usable(comm, what);
    if (r == ncclSuccess) r = check_reduce(comm, what, datatype, op);
    const size_t es = type_size(datatype), bytes = count * es;
    if (r == ncclSuccess) r = check_buffer(comm, what, "sendbuff", sendbuff, bytes);
    if (r == ncclSuccess) r = check_buffer(comm, what, "recvbuff", recvbuff, bytes);
    if (r == ncclSuccess) r = check_overlap(comm, what, sendbuff, bytes, recvbuff, bytes, recvbuff);
    if (r != ncclSuccess) return r;
    const size_t per = comm->slot / es;
    for (size_t at = 0; at < count; at += per, comm->rounds++) {
        const size_t n = count - at < per ? count - at : per;
        copy_device(my_slot(comm), (const char *)sendbuff + at * es, n * es);
        if ((r = meet(comm, what)) != ncclSuccess) return r;
        device_enter();
        reduce_any(comm, 0, n, datatype, op, (char *)recvbuff + at * es);
        device_leave();
        if ((r = meet(comm, what)) != ncclSuccess) return r;
    }
    return ncclSuccess;
}

// recv (recvcount) = the reduction of every rank's block `rank` of send (world * recvcount).
ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    if (context_broken()) return ncclUnhandledCudaError;
    stream_enqueued(stream);
    const char *what = "ncclReduceScatter";
    ncclResult_t r = usable(comm, what);
    if (r == ncclSuccess) r = check_reduce(comm, what, datatype, op);
    const size_t es = type_size(datatype), bytes = recvcount * es;
    if (r == ncclSuccess) r = check_buffer(comm, what, "sendbuff", sendbuff, bytes * (size_t)comm->world);
    if (r == ncclSuccess) r = check_buffer(comm, what, "recvbuff", recvbuff, bytes);
    if (r == ncclSuccess)
        r = check_overlap(comm, what, sendbuff, bytes * (size_t)comm->world, recvbuff, bytes,
                          (const char *)recvbuff - (size_t)comm->rank * bytes);
    if (r != ncclSuccess) return r;
    // each round stages elements [at, at + n) of every block: block j at j * n in the slot
    const size_t per = comm->slot / es / (size_t)comm->world;
    for (size_t at = 0; at < recvcount; at += per, comm->rounds++) {
        const size_t n = recvcount - at < per ? recvcount - at : per;
        for (int j = 0; j < comm->world; j++)
            copy_device(my_slot(comm) + (size_t)j * n * es,
                        (const char *)sendbuff + ((size_t)j * recvcount + at) * es, n * es);
        if ((r = meet(comm, what)) != ncclSuccess) return r;
        device_enter();
        reduce_any(comm, (size_t)comm->rank * n * es, n, datatype, op, (char *)recvbuff + at * es);
        device_leave();
        if ((r = meet(comm, what)) != ncclSuccess) return r;
    }
    return ncclSuccess;
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    if (context_broken()) return ncclUnhandledCudaError;
    stream_enqueued(stream);
    const char *what = "ncclAllGather";
    ncclResult_t r = usable(comm, what);
    const size_t es = type_size(datatype), bytes = sendcount * es;
    if (r == ncclSuccess && !es) r = say(comm, ncclInvalidArgument, "%s: data type %d is not modelled", what, (int)datatype);
    if (r == ncclSuccess) r = check_buffer(comm, what, "sendbuff", sendbuff, bytes);
    if (r == ncclSuccess) r = check_buffer(comm, what, "recvbuff", recvbuff, bytes * (size_t)comm->world);
    if (r == ncclSuccess)
        r = check_overlap(comm, what, sendbuff, bytes, recvbuff, bytes * (size_t)comm->world,
                          (const char *)recvbuff + (size_t)comm->rank * bytes);
    if (r != ncclSuccess) return r;
    for (size_t at = 0; at < bytes; at += comm->slot) {
        const size_t n = bytes - at < comm->slot ? bytes - at : comm->slot;
        copy_device(my_slot(comm), (const char *)sendbuff + at, n);
        if ((r = meet(comm, what)) != ncclSuccess) return r;
        for (int j = 0; j < comm->world; j++)
            copy_device((char *)recvbuff + (size_t)j * bytes + at, comm->slots + (size_t)j * comm->slot, n);
        if ((r = meet(comm, what)) != ncclSuccess) return r;
    }
    return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    if (context_broken()) return ncclUnhandledCudaError;
    stream_enqueued(stream);
    const char *what = "ncclBroadcast";
    ncclResult_t r = usable(comm, what);
    const size_t es = type_size(datatype), bytes = count * es;
    if (r == ncclSuccess && !es) r = say(comm, ncclInvalidArgument, "%s: data type %d is not modelled", what, (int)datatype);
    if (r == ncclSuccess && (root < 0 || root >= comm->world))
        r = say(comm, ncclInvalidArgument, "%s: root %d of %d ranks", what, root, comm->world);
    if (r == ncclSuccess && comm->rank == root) r = check_buffer(comm, what, "sendbuff", sendbuff, bytes);
    if (r == ncclSuccess) r = check_buffer(comm, what, "recvbuff", recvbuff, bytes);
    if (r == ncclSuccess && comm->rank == root)
        r = check_overlap(comm, what, sendbuff, bytes, recvbuff, bytes, recvbuff);
    if (r != ncclSuccess) return r;
    for (size_t at = 0; at < bytes; at += comm->slot) {
        const size_t n = bytes - at < comm->slot ? bytes - at : comm->slot;
        if (comm->rank == root) copy_device(my_slot(comm), (const char *)sendbuff + at, n);
        if ((r = meet(comm, what)) != ncclSuccess) return r;
        copy_device((char *)recvbuff + at, comm->slots + (size_t)root * comm->slot, n);
        if ((r = meet(comm, what)) != ncclSuccess) return r;
    }
    return ncclSuccess;
}

} // extern "C"
