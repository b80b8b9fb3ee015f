// The emulator's thread scheduler: a launch runs its blocks one after another, and a
// block's threads as fibers, on the thread that launched it (launches are serialised). A
// fiber runs until it reaches a barrier (__syncthreads, a warp barrier under __syncwarp, a shuffle or a WMMA
// call) or returns; when every fiber is waiting, the barriers whose members have all
// arrived are released. A barrier that can never be released (some threads of the block or
// warp took another path) is a deadlock on a GPU too, and is reported as one.
#include "cuda_emu_internal.h"

#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <pthread.h>

// The race check (QFT_EMU_TSAN: the emulator built for ThreadSanitizer, meson option
// qft_emu_racecheck). Each emulated thread is a TSan fiber, switched to without
// synchronisation, so TSan orders two threads' accesses only where the CUDA memory model
// does: __syncthreads among a block's threads, __syncwarp among its mask's lanes, and the
// launch boundaries. Shuffles and WMMA calls order nothing (CUDA promises no memory ordering
// for them), so shared memory written by one lane and read by another without a barrier
// between is reported, as compute-sanitizer's racecheck reports it. This file itself is not
// instrumented: its bookkeeping is the emulator's, not the kernel's.
#ifdef QFT_EMU_TSAN
#include <sanitizer/tsan_interface.h>
#define TSAN_ONLY(x) x
#else
#define TSAN_ONLY(x)
#endif

namespace qft_emu {

uint3 cur_thread, cur_block;
dim3 cur_block_dim, cur_grid_dim;

namespace {

// A fiber's stack: a kernel's locals (WMMA tiles, per-thread arrays) take a few KiB. The
// stacks lie back to back in one region advised onto huge pages: a block switches among
// hundreds of them, which would otherwise cost a TLB miss a switch. A canary at each
// stack's bottom, checked after every block, catches a kernel that ran past it.
const size_t STACK_BYTES = 64 << 10;
// stacks this far apart: not a power of two, so their tops (touched at every switch) fall
// in different cache sets instead of fighting over one
const size_t STACK_STRIDE = STACK_BYTES + 17 * 64;
const unsigned MAX_THREADS = 1024;
const uint64_t CANARY = 0x71f7c0dec0ffee11ull;
const size_t DYN_SMEM_MAX = 232448; // sm_90's opt-in maximum, as the device reports
const size_t STATIC_SMEM_MAX = 48 << 10; // a kernel's static __shared__, as nvcc limits it
const unsigned MAX_SITES = 32;           // static __shared__ declarations in one kernel
// A block runs in one of SLOTS slots (block i of a launch in slot i % SLOTS), each with its
// own fibers, stacks, shared memory and (race check) synchronisation objects. The race check
// orders a slot's next block after its previous one, through the host, and nothing else
// between the blocks of a launch: blocks fewer than SLOTS apart run unordered, as a GPU's
// blocks do, and a race between them (two blocks writing one element of global memory, a
// block reading what another wrote) is reported. Two slots: neighbouring blocks race; more
// would see further, but TSan's vector clocks grow with the fibers (4 slots took the op
// tests' race check from 141 s to 212 s). Without the race check one slot does.
#ifdef QFT_EMU_TSAN
const unsigned SLOTS = 2;
#else
const unsigned SLOTS = 1;
#endif

enum fiber_state { RUNNING, AT_BLOCK, AT_WARP, DONE };

struct fiber {
    void *sp; // saved stack pointer while switched out
    char *stack;
    fiber_state st;
    uint3 tid;
    void *tsan; // its TSan fiber (race check), made at its first use
};

// What a block has of its own: its threads' fibers and stacks, its shared memory (dynamic,
// and an arena for the static declarations, placed as their sites are first reached), and
// the race check's synchronisation objects (see worker).
struct slot {
    fiber fibers[MAX_THREADS];
    unsigned char *smem, *static_smem;
    size_t static_used, static_hw; // this block's, and the most any block of the slot took
    const void *site[MAX_SITES];
    size_t site_off[MAX_SITES], site_bytes[MAX_SITES];
    unsigned n_sites;
    char block_in, block_out, block_bar[2], warp_bar[32][2];
};

// The running block's bookkeeping: fibers to run this round, and who waits where.
struct worker {
    slot slots[SLOTS];
    slot *s; // the running block's
    unsigned runq[MAX_THREADS], n_run, q_pos; // this round's fibers; the next to run
    bool descending;                          // the order of the next round (order_round)
    unsigned at_block, done, n;
    unsigned warp_wait[32], warp_mask[32], warp_alive[32]; // lanes, by warp
    unsigned warps_waiting[32], n_warps_waiting;          // warps with a waiting lane
    void *sched_sp;
    int cur;
    void (*body)(void *);
    void *ctx;
    uint64_t exch[32 * 32]; // the warps' exchange slots, 32 lanes a warp
    // Race check: the launching host thread's TSan context; the addresses TSan's acquire and
    // release name are the slot's. A block's fibers acquire block_in (released by the host
    // once the block's shared memory is reset) and release block_out (acquired by the host
    // before the slot's next block and when the launch ends), so the host's work before the
    // launch happens before the kernel's and the kernel's before the host's after it, while
    // no fiber's start is ordered after another fiber's end, nor a block after the SLOTS - 1
    // before it. A barrier's members release into, then acquire from, the barrier episode's
    // object; two per barrier, by parity of the episode, since a fast member reaches the next
    // episode before a slow one has left this one.
    void *tsan_host;
    unsigned block_epoch, warp_epoch[32];
};

worker *me;
pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;

extern "C" void qft_emu_switch(void **save_sp, void *new_sp);
extern "C" void qft_emu_fiber_start(void);

// The context switch: the callee-saved registers go on the old stack, the stack pointer
// changes, and the new stack's come off it. The floating-point control words are not
// switched: no kernel changes them, so every fiber shares the host thread's. A new
// fiber's stack is laid out as if it had switched out just before qft_emu_fiber_start,
// which calls fiber_main (r13) with the worker (r12).
asm(".text\n"
    ".globl qft_emu_switch\n"
    ".type qft_emu_switch,@function\n"
    "qft_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size qft_emu_switch, .-qft_emu_switch\n"
    ".globl qft_emu_fiber_start\n"
    ".type qft_emu_fiber_start,@function\n"
    "qft_emu_fiber_start:\n"
    "  movq %r12, %rdi\n  callq *%r13\n  ud2\n"
    ".size qft_emu_fiber_start, .-qft_emu_fiber_start\n");

// The fiber after the current one, which has just stopped (at a barrier, or returned): the
// round's next, or, when the round is over, the first of those the barriers release; -1
// when every fiber has returned.
int next_fiber(worker *w);

// The switch, told to TSan first (race check) without synchronisation: running one fiber
// after another orders nothing on a GPU.
void switch_to(void **save_sp, void *new_sp, void *tsan_fiber) {
    TSAN_ONLY(__tsan_switch_to_fiber(tsan_fiber, __tsan_switch_to_fiber_no_sync));
    (void)tsan_fiber;
    qft_emu_switch(save_sp, new_sp);
}

// Hands the thread to the next fiber (directly: one switch, not two through the
// scheduler), or back to the scheduler when the block is over. Returns when this fiber is
// released and runs again.
void yield_to_next(worker *w) {
    const int cur = w->cur, nx = next_fiber(w);
    if (nx == cur) return; // released again at once: the only one runnable
    void *to = nx < 0 ? w->sched_sp : w->s->fibers[nx].sp;
    void *tsan_to = nx < 0 ? w->tsan_host : w->s->fibers[nx].tsan;
    if (nx >= 0) w->cur = nx, cur_thread = w->s->fibers[nx].tid;
    switch_to(&w->s->fibers[cur].sp, to, tsan_to);
}

void fiber_main(worker *w) {
    TSAN_ONLY(__tsan_acquire(&w->s->block_in));
    w->body(w->ctx);
    TSAN_ONLY(__tsan_release(&w->s->block_out));
    fiber &f = w->s->fibers[w->cur];
    f.st = DONE;
    w->done++;
    w->warp_alive[w->cur / 32] &= ~(1u << (w->cur % 32));
    yield_to_next(w);
    abort(); // a finished fiber is never resumed
}

void fiber_reset(fiber &f) {
    uintptr_t top = ((uintptr_t)f.stack + STACK_BYTES) & ~(uintptr_t)15;
    uint64_t *s = (uint64_t *)top;
    // the ret lands in qft_emu_fiber_start with rsp = top (16-aligned), so its call enters
    // fiber_main with rsp = 8 mod 16, as the ABI wants
    *--s = (uint64_t)(uintptr_t)qft_emu_fiber_start; // ret target
    *--s = 0;                                        // rbp
    *--s = 0;                                        // rbx
    *--s = (uint64_t)(uintptr_t)me;                  // r12: the worker
    *--s = (uint64_t)(uintptr_t)fiber_main;          // r13
    *--s = 0;                                        // r14
    *--s = 0;                                        // r15
    f.sp = s;
    f.st = RUNNING;
}

worker *worker_get() {
    if (me) return me;
    me = new worker();
    const size_t bytes = STACK_STRIDE * MAX_THREADS * SLOTS;
    char *m = (char *)mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fatal("cannot map the fibers' stacks");
    madvise(m, bytes, MADV_HUGEPAGE);
    for (unsigned k = 0; k < SLOTS; k++) {
        slot &sl = me->slots[k];
        // a GPU's shared memory starts aligned (WMMA's 256-bit rule holds at its base)
        sl.smem = (unsigned char *)aligned_alloc(128, DYN_SMEM_MAX);
        sl.static_smem = (unsigned char *)aligned_alloc(128, STATIC_SMEM_MAX);
        if (!sl.smem || !sl.static_smem) fatal("cannot allocate the blocks' shared memory");
        memset(sl.static_smem, 0xff, STATIC_SMEM_MAX);
        for (unsigned i = 0; i < MAX_THREADS; i++) {
            sl.fibers[i].stack = m + ((size_t)k * MAX_THREADS + i) * STACK_STRIDE;
            memcpy(sl.fibers[i].stack, &CANARY, sizeof CANARY);
        }
    }
    return me;
}

unsigned linear(const uint3 &t, const dim3 &b) { return t.x + b.x * (t.y + b.y * t.z); }

[[noreturn]] void deadlock(const worker *w, uint3 bid) {
    char msg[256];
    unsigned at_warp = 0;
    for (unsigned i = 0; i < w->n; i++) at_warp += w->s->fibers[i].st == AT_WARP;
    snprintf(msg, sizeof msg,
             "deadlock in block (%u,%u,%u): %u threads at __syncthreads, %u at a warp barrier "
             "(shuffle, __syncwarp or WMMA), %u returned, of %u",
             bid.x, bid.y, bid.z, w->at_block, at_warp, w->done, w->n);
    fatal(msg);
}

// Rounds run their fibers in ascending and descending order by turns (and a block's first
// round one way or the other by the block's parity), so that two threads that exchange
// data through memory with no barrier between them see each other's writes in one order
// here and the other there: a race that one fixed order would hide shows up as results
// that disagree with the CPU's.
void order_round(worker *w) {
    if (w->descending)
        for (unsigned a = 0, b = w->n_run; a + 1 < b; a++, b--) {
            const unsigned t = w->runq[a];
            w->runq[a] = w->runq[b - 1], w->runq[b - 1] = t;
        }
    w->descending = !w->descending;
}

int next_fiber(worker *w) {
    for (;;) {
        if (w->q_pos < w->n_run) return (int)w->runq[w->q_pos++];
        if (w->done == w->n) return -1;
        // the round is over: the warp barriers whose live lanes (of the mask) have all
        // arrived are released; when none is and every live thread waits at
        // __syncthreads, that one is
        w->n_run = 0, w->q_pos = 0;
        unsigned keep = 0;
        for (unsigned q = 0; q < w->n_warps_waiting; q++) {
            const unsigned k = w->warps_waiting[q], waiting = w->warp_wait[k];
            if ((w->warp_mask[k] & w->warp_alive[k]) != waiting) {
                w->warps_waiting[keep++] = k; // still waiting
                continue;
            }
            for (unsigned l = 0; l < 32; l++)
                if (waiting >> l & 1) {
                    w->s->fibers[k * 32 + l].st = RUNNING;
                    w->runq[w->n_run++] = k * 32 + l;
                }
            w->warp_wait[k] = 0;
            w->warp_epoch[k]++;
        }
        w->n_warps_waiting = keep;
        if (!w->n_run) {
            if (w->at_block != w->n - w->done) deadlock(w, cur_block);
            for (unsigned i = 0; i < w->n; i++)
                if (w->s->fibers[i].st == AT_BLOCK) {
                    w->s->fibers[i].st = RUNNING;
                    w->runq[w->n_run++] = i;
                }
            w->at_block = 0;
            w->block_epoch++;
        }
        order_round(w);
    }
}

// One block of c in slot k: every fiber from the start, in rounds (next_fiber), until all
// return.
void run_block(worker *w, const launch_cfg &c, uint3 bid, unsigned k) {
    const unsigned n = c.block.x * c.block.y * c.block.z;
    slot &sl = w->slots[k];
    w->s = &sl;
    // the slot's previous block happens before this one (its memory is reused)
    TSAN_ONLY(__tsan_acquire(&sl.block_out));
    cur_block = bid;
    cur_block_dim = c.block;
    cur_grid_dim = c.grid;
    w->n = n, w->at_block = 0, w->done = 0, w->n_warps_waiting = 0;
    for (unsigned i = 0; i < n; i++) {
        fiber &f = w->s->fibers[i];
        fiber_reset(f);
#ifdef QFT_EMU_TSAN
        if (!f.tsan) {
            f.tsan = __tsan_create_fiber(0);
            char name[64];
            snprintf(name, sizeof name, "emulated thread %u of a block (slot %u)", i, k);
            __tsan_set_fiber_name(f.tsan, name);
        }
#endif
        f.tid = uint3{i % c.block.x, (i / c.block.x) % c.block.y, i / (c.block.x * c.block.y)};
        w->runq[i] = i;
    }
    w->n_run = n, w->q_pos = 0;
    w->descending = ((bid.x ^ bid.y ^ bid.z) & 1) != 0;
    order_round(w);
    for (unsigned q = 0; q < 32; q++) {
        const unsigned lanes = n > q * 32 ? n - q * 32 : 0;
        w->warp_alive[q] = lanes >= 32 ? ~0u : (1u << lanes) - 1u;
        w->warp_wait[q] = 0;
    }
    // shared memory starts as garbage: NaN here (past static_hw the arena is still as
    // allocated, all ones)
    memset(sl.smem, 0xff, c.smem);
    memset(sl.static_smem, 0xff, sl.static_hw);
    sl.static_used = 0, sl.n_sites = 0;
    w->block_epoch = 0;
    memset(w->warp_epoch, 0, sizeof w->warp_epoch);
    TSAN_ONLY(__tsan_release(&sl.block_in));
    const int first = next_fiber(w);
    w->cur = first;
    cur_thread = w->s->fibers[first].tid;
    // back when every fiber has returned
    switch_to(&w->sched_sp, w->s->fibers[first].sp, w->s->fibers[first].tsan);
    for (unsigned i = 0; i < n; i++)
        if (memcmp(w->s->fibers[i].stack, &CANARY, sizeof CANARY))
            fatal("a kernel's locals ran past the emulator's 64 KiB fiber stack");
}

} // namespace

void fatal(const char *msg) {
    fprintf(stderr, "qft cuda emulator: %s\n", msg);
    fflush(stderr);
    // where: the caller's frames (a kernel's, up to its fiber's start, when a fiber stops here)
    void *frames[48];
    backtrace_symbols_fd(frames, backtrace(frames, 48), 2);
    abort();
}

void *dyn_smem() { return me->s->smem; }

void *static_smem(const void *site, size_t bytes, size_t align) {
    if (!me || me->cur < 0) fatal("static __shared__ memory outside a kernel");
    slot &sl = *me->s;
    for (unsigned i = 0; i < sl.n_sites; i++)
        if (sl.site[i] == site) {
            if (sl.site_bytes[i] != bytes) fatal("one __shared__ declaration of two sizes");
            return sl.static_smem + sl.site_off[i];
        }
    if (sl.n_sites == MAX_SITES) fatal("more than 32 static __shared__ declarations in a kernel");
    if (!align || (align & (align - 1)) || align > 128) fatal("a __shared__ alignment the emulator does not place");
    const size_t off = (sl.static_used + align - 1) & ~(align - 1);
    if (off + bytes > STATIC_SMEM_MAX)
        fatal("more than 48 KiB of static __shared__ memory in a kernel (nvcc refuses it)");
    sl.site[sl.n_sites] = site, sl.site_off[sl.n_sites] = off, sl.site_bytes[sl.n_sites] = bytes;
    sl.n_sites++;
    sl.static_used = off + bytes;
    if (sl.static_used > sl.static_hw) sl.static_hw = sl.static_used;
    return sl.static_smem + off;
}

void sync_block() {
    if (!me || me->cur < 0) fatal("__syncthreads outside a kernel");
    me->s->fibers[me->cur].st = AT_BLOCK;
    me->at_block++;
    char *bar = &me->s->block_bar[me->block_epoch & 1];
    TSAN_ONLY(__tsan_release(bar));
    yield_to_next(me);
    TSAN_ONLY(__tsan_acquire(bar));
    (void)bar;
}

namespace {
// A warp barrier; `orders` when it is __syncwarp's, which orders the lanes' memory
// accesses (the race check's happens-before), not a shuffle's or a WMMA call's.
void warp_barrier(unsigned mask, bool orders) {
    if (!me || me->cur < 0) fatal("a warp barrier outside a kernel");
    const unsigned t = (unsigned)me->cur, k = t / 32;
    if (!(mask >> (t % 32) & 1)) fatal("a warp barrier (shuffle, __syncwarp) whose mask leaves out the calling lane");
    if (me->warp_wait[k] && me->warp_mask[k] != mask)
        fatal("lanes of one warp wait at warp barriers of different masks (the emulator models one at a time)");
    me->s->fibers[t].st = AT_WARP;
    if (!me->warp_wait[k]) me->warps_waiting[me->n_warps_waiting++] = k;
    me->warp_wait[k] |= 1u << (t % 32);
    me->warp_mask[k] = mask;
    char *bar = &me->s->warp_bar[k][me->warp_epoch[k] & 1];
    TSAN_ONLY(if (orders) __tsan_release(bar));
    yield_to_next(me);
    TSAN_ONLY(if (orders) __tsan_acquire(bar));
    (void)bar, (void)orders;
}
} // namespace

void sync_warp(unsigned mask) { warp_barrier(mask, true); }
void warp_collective(unsigned mask) { warp_barrier(mask, false); }

uint64_t warp_exchange(unsigned mask, uint64_t v, int src) {
    const unsigned t = linear(cur_thread, cur_block_dim);
    const unsigned warp = t / 32, lane = t % 32;
    if (warp >= 32) fatal("a block of more than 1024 threads");
    uint64_t *slots = me->exch + warp * 32;
    slots[lane] = v;
    warp_collective(mask);
    // a source lane that did not offer a value (outside the mask, returned, or past the
    // block) gives an undefined value on a GPU: all ones here (NaN as a float), so that a
    // kernel that reads one shows it
    const bool offered = src >= 0 && src < 32 && (mask >> src & 1) && me->s->fibers[warp * 32 + src].st != DONE &&
                         warp * 32 + (unsigned)src < me->n;
    const uint64_t r = offered ? slots[src] : ~(uint64_t)0;
    warp_collective(mask);
    return r;
}

int launch_check(const void *fn, const launch_cfg &c, unsigned max_threads) {
    const unsigned long long threads =
        (unsigned long long)c.block.x * c.block.y * c.block.z;
    const char *why = NULL;
    cudaError_t e = cudaErrorInvalidConfiguration;
    if (context_broken()) {
        record_launch_error(cudaErrorIllegalAddress, "launch refused: the context is broken by an earlier fault");
        return -1;
    }
    if (threads == 0 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0)
        why = "an empty grid or block";
    else if (threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
        why = "more than 1024 threads in a block (or a block dimension past its limit)";
    else if (max_threads && threads > max_threads)
        why = "more threads in a block than the kernel's __launch_bounds__",
        e = cudaErrorLaunchOutOfResources; // "too many resources requested for launch"
    else if (c.grid.y > 65535 || c.grid.z > 65535 || c.grid.x > 0x7fffffffu)
        why = "a grid dimension past its limit";
    else if (c.smem > smem_limit(fn))
        why = "more dynamic shared memory than the kernel may use (cudaFuncSetAttribute)";
    if (why) {
        char msg[320];
        snprintf(msg, sizeof msg,
                 "launch refused: %s (grid %u,%u,%u; block %u,%u,%u; %zu bytes of dynamic "
                 "shared memory)",
                 why, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z, c.smem);
        record_launch_error(e, msg);
        return -1;
    }
    return 0;
}

void launch_run(const launch_cfg &c, void (*body)(void *), void *ctx) {
    const unsigned n = c.block.x * c.block.y * c.block.z;
    pthread_mutex_lock(&launch_lock);
    device_enter();
    worker *w = worker_get();
    if (n > MAX_THREADS) fatal("a block of more than 1024 threads");
    TSAN_ONLY(w->tsan_host = __tsan_get_current_fiber());
    w->body = body, w->ctx = ctx;
    // blocks in ascending and descending order by turns: a kernel whose blocks depend on
    // each other's order (no such ordering exists on a GPU) gives two answers
    static bool descending;
    const unsigned long long blocks = (unsigned long long)c.grid.x * c.grid.y * c.grid.z;
    for (unsigned long long i = 0; i < blocks; i++) {
        const unsigned long long b = descending ? blocks - 1 - i : i;
        run_block(w, c,
                  uint3{(unsigned)(b % c.grid.x), (unsigned)(b / c.grid.x % c.grid.y),
                        (unsigned)(b / ((unsigned long long)c.grid.x * c.grid.y))},
                  (unsigned)(i % SLOTS));
    }
    // every block happens before the host's work after the launch
    for (unsigned k = 0; k < SLOTS; k++) TSAN_ONLY(__tsan_acquire(&w->slots[k].block_out));
    descending = !descending;
    w->cur = -1;
    device_leave();
    pthread_mutex_unlock(&launch_lock);
}

} // namespace qft_emu
