// Private to the CUDA emulator's runtime (core/cuda/emu/*.cc).
#ifndef QFT_CUDA_EMU_INTERNAL_H
#define QFT_CUDA_EMU_INTERNAL_H

#include "cuda_emu.h"

#include <stddef.h>

namespace qft_emu {

// Prints "qft cuda emulator: msg" and a backtrace, and aborts: what would be a fault or a
// hang on a GPU.
[[noreturn]] void fatal(const char *msg);

// ---- device memory (cuda_emu_mem.cc) ------------------------------------------------------
// Device memory is host memory kept PROT_NONE while host code runs, so a host access to
// it faults and is reported; kernels, copies and GEMMs run between device_enter and
// device_leave, when a fault opens the allocation it hit (and an access past its end, into
// the guard page, or to an uncommitted virtual range is reported).
void device_enter();
void device_leave();
// A new allocation of `bytes` on `device` (256-aligned, poisoned with 0xff: NaN as
// floats), NULL when that emulated device is full.
void *mem_alloc(size_t bytes, int device);
// 0, or -1 when p is not an allocation's start.
int mem_free(void *p);
// Whether [p, p + bytes) lies in device memory (an allocation or a committed range), of
// any device; mem_on: memory that `device` may access (its own allocations, and committed
// ranges cuMemSetAccess opened to it). Without peer access (never enabled here) a kernel
// on one GPU faults on another's allocation.
bool mem_is_device(const void *p, size_t bytes);
bool mem_on(const void *p, size_t bytes, int device);
// The device holding [p, p + bytes), or -1 when it is not device memory.
int mem_where(const void *p, size_t bytes, unsigned *access);
size_t mem_live_bytes(int device);
size_t mem_total_bytes(); // each device's

// Virtual memory (the driver's cuMem* entries): a reservation, then ranges of it committed
// (granularity-aligned), opened to the device, and released.
void *vm_reserve(size_t bytes);
int vm_free(void *p, size_t bytes);
int vm_map(void *p, size_t bytes, int device);
// read/write for `devices` (a bit each): whole mapped chunks
int vm_set_access(void *p, size_t bytes, unsigned devices);
int vm_unmap(void *p, size_t bytes);
size_t vm_granularity();

// ---- devices (cuda_emu_runtime.cc) -------------------------------------------------------
// $QFT_CUDA_EMU_DEVICES of them (1 to MAX_DEVICES, default 1), alike; each host thread has
// its current device, 0 until cudaSetDevice, as with the CUDA runtime.
const int MAX_DEVICES = 8;
int device_count();
int current_device();

// ---- launches (cuda_emu_sched.cc, cuda_emu_runtime.cc) ----------------------------------
size_t smem_limit(const void *fn);           // the kernel's dynamic shared memory limit
void record_launch_error(cudaError_t e, const char *msg); // for the next cudaGetLastError
// Work was queued on stream s: its next cudaStreamQuery answers cudaErrorNotReady, once,
// and that answer stays the thread's last error, as CUDA's runtime keeps it (a poller must
// clear it, or the next launch check takes it for a failure). Everything here is
// synchronous, so one "not ready" is all a poll sees.
void stream_enqueued(cudaStream_t s);
// With $QFT_CUDA_EMU_FAULT_STICKY=1, the fault QFT_CUDA_EMU_FAULT_AT_SYNC injects breaks the
// context, as an illegal address breaks a real one: from then on every runtime, driver,
// cuBLASLt and NCCL call fails (cudaErrorIllegalAddress or its kind's code), launches run
// nothing, and cudaGetLastError keeps answering the fault. For the callers' teardown.
bool context_broken();
// A runtime call in that broken context: the fault's error, kept as the last one (quietly:
// the fault was reported when it came).
cudaError_t broken_context_error();
// A runtime call's failure: "qft cuda emulator: call: why" on stderr, e kept for the next
// cudaGetLastError (as the runtime keeps a call's error), and e returned.
cudaError_t runtime_fail(cudaError_t e, const char *call, const char *why);

} // namespace qft_emu

#endif
