// cuda_emu.h -- run CUDA device code on the CPU, for tests on machines without a GPU.
//
// Header-only, C++20, g++ (or clang++). Include it instead of the CUDA runtime headers (csrc/cuda/device_compat.h
// does this when FASTRNN_CUDA_EMU is defined), write the kernel as usual, and launch it with
//     ::cuda_emu::launch(grid, block, dynamic_smem_bytes, kernel, args...);
// instead of kernel<<<grid, block, smem>>>(args...), or, with all blocks running at once,
//     ::cuda_emu::launch_concurrent(grid, block, smem, kernel, args...);            (an ordinary launch)
//     cudaError_t e = ::cuda_emu::launch_cooperative(grid, block, smem, kernel, args...);  (cudaLaunchCooperativeKernel)
//
// Execution model
//   * launch(): blocks run one after another, in blockIdx order (x fastest). Every launch is serialised with every
//     other launch.
//   * launch_concurrent() / launch_cooperative(): every thread of every block is a host thread and all run at once
//     (at most kMaxConcurrentThreads = 4096 CUDA threads). Only a cooperative launch may call the grid sync
//     (cooperative_groups::this_grid().sync(), fastrnn::grid_sync): one barrier over the whole grid that orders
//     every thread after every other (TSan sees it). A cooperative grid larger than
//     occupancy_max_active_blocks_per_sm(block, smem) * device().num_sms returns cudaErrorCooperativeLaunchTooLarge
//     ("too many blocks in cooperative launch") and runs nothing, as the driver does; device() (default: H100,
//     132 SMs) can be shrunk by a test. Nothing orders the blocks except the grid sync, the acquire/release
//     operations (ld_acquire/st_release/atomic_add_release, std::atomic_ref with those orders) and the launch
//     itself, so a missing grid sync or a flag read with relaxed atomics is a TSan race. Deadlocks: a grid sync
//     that some thread returned without (or skipped), threads of a block split between the grid sync and a
//     block barrier, every thread waiting: reported at once; a grid sync waiting longer than the barrier timeout
//     is reported; a watchdog aborts a grid where nothing progresses (no barrier completes, no thread returns, no
//     release store) for twice the barrier timeout (all threads spinning on a flag nobody sets).
//     `__shared__` statics are ONE copy for all blocks here: kernels launched concurrently must keep their shared
//     memory in dynamic shared memory (FASTRNN_DYNAMIC_SMEM), which every block gets its own of.
//   * The threads of a block run concurrently as real host threads (one std::thread per CUDA thread, from a pool
//     kept for the process and reused by every block and launch), so ThreadSanitizer sees the accesses of different
//     CUDA threads as different threads, and __syncthreads()/__syncwarp()/shuffles as synchronisation (they are
//     built on std::mutex and std::condition_variable, which TSan models exactly). The harness adds no other
//     ordering between the threads of a block: __syncthreads orders the whole block, a warp intrinsic only the lanes
//     of its warp (each warp has its own mutex), and the bookkeeping shared between them is relaxed atomics. So a
//     missing __syncthreads between warps is a TSan race even when the warps shuffle. Note that shuffles and votes
//     order memory among their lanes like __syncwarp does; CUDA only promises that for __syncwarp.
//   * `__shared__` is `static`: valid because only one block exists at a time; the block-end barrier orders the
//     last accesses of block b before the first ones of block b+1.
//   * Dynamic shared memory (::cuda_emu::dynamic_smem(), FASTRNN_DYNAMIC_SMEM) is malloc'ed afresh for every block
//     with exactly the launch's byte count (ASan sees overruns) and filled with 0xFF bytes (a NaN for float/double,
//     -1 for integers), so reads of never-written shared memory show up as NaN in results.
//   * Warps are the groups of 32 consecutive linear thread ids (x fastest). Warp intrinsics are a per-warp exchange
//     buffer plus a per-warp barrier; only masks covering every lane of the warp are accepted (anything else aborts).
//     Lanes that do not exist (last warp of a block whose size is no multiple of 32) read a poison value (all bits
//     set) through a shuffle. Lanes of one warp in different collectives (one in a shuffle, the others in an mma)
//     are reported at once.
//   * mma.sync (mma_sync(): m16n8k16 bf16/f16, m16n8k8 tf32, fp32 accumulation) is a warp collective over a full
//     warp with the PTX ISA fragment layouts (see mma_sync below for the layouts and the numerics).
//   * cp.async (cp_async / cp_async_commit / cp_async_wait / cp_async_wait_all): the destination holds the 0xFF
//     poison from the issue until a wait of the issuing thread covers the copy's group.
//   * __half / __nv_bfloat16 (cuda_emu_half.h): bit-exact conversions and correctly rounded arithmetic.
//   * Deadlocks are detected: when every thread of the block waits in some barrier (or has returned) and none of the
//     barriers can complete (threads in different __syncthreads/warp calls, a thread returned while others wait in
//     __syncthreads, ...), the emulator prints where each thread is and aborts. A barrier that waits longer than
//     CUDA_EMU_BARRIER_TIMEOUT_S seconds (environment, default 20) also aborts with that report.
//   * launch() validates the configuration like the driver would for sm_90 and throws std::invalid_argument:
//     block <= 1024 threads (x, y <= 1024, z <= 64), grid y, z <= 65535, dynamic smem <= 227 KiB.
//
// What the emulation CANNOT see (test these on a GPU):
//   * Warp lockstep / implicit warp-synchronous behaviour: lanes are independent threads. Code that relies on
//     lanes of a warp executing together without __syncwarp (pre-Volta style "warp-synchronous" reductions) is a
//     data race here (TSan will report it, which is the correct verdict for sm_70+), but code that is merely
//     divergent runs fine here.
//   * Shared-memory ordering that relies on a __shfl_sync/__ballot_sync alone (without __syncwarp) is accepted here
//     (they synchronise the warp's lanes for TSan); CUDA does not guarantee it.
//   * Divergence and its cost, bank conflicts, coalescing, occupancy, timing of any kind.
//   * With launch(), memory ordering and visibility bugs between blocks: blocks are sequential, so every block sees
//     all writes of earlier blocks and none of later ones, and a kernel that waits for another block hangs (use
//     launch_cooperative for those). Even concurrently, TSan finds unordered accesses, not weak-memory outcomes:
//     host threads on x86 never see the stale values a GPU's L1 can return, so reading data written in the same
//     launch through __ldg (the read-only path) is not caught. __threadfence() is a seq_cst fence; TSan does not
//     model fences, so fence + relaxed-atomic flag protocols are reported as races here: use the acquire/release
//     operations.
//   * Per-block resource limits at launch: registers, the static shared-memory size, the 48 KiB default dynamic
//     shared memory limit without cudaFuncSetAttribute opt-in (only the 227 KiB hardware cap is checked).
//   * Uninitialised static `__shared__` memory: statics start zeroed and keep the previous block's values. Only
//     dynamic shared memory is poisoned. Out-of-bounds indexing of a static `__shared__` array is caught by UBSan's
//     bounds check (asan variant) when the array is indexed directly; g++ gives no ASan redzones to statics of
//     templates, so overruns through a pointer into a static __shared__ array in a template kernel go unseen.
//   * Floating point: intrinsics (__expf, __fdividef, rsqrtf, ...) are the exact host functions, not the fast
//     approximations, and FMA contraction differs; compare with tolerances. mma.sync sums exactly and rounds once
//     (the tensor cores' internal precision and order differ by a few fp32 ulps). No wmma, no other inline PTX
//     (only the wrappers of csrc/cuda/device_compat.h), no ldmatrix, no textures, no `extern __shared__` arrays, no
//     dynamic parallelism, no streams/events. __CUDA_ARCH__ is not defined.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.h is for host compilers only; nvcc has the real thing"
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// ------------------------------------------------------------------------------------------- vector types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }

// __half, __nv_bfloat16 and their intrinsics; the TF32 roundings (cuda_emu::tf32_rna, tf32_truncate).
#include "cuda_emu_half.h"

namespace cuda_emu {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimX = 1024, kMaxBlockDimY = 1024, kMaxBlockDimZ = 64;
constexpr unsigned long long kMaxGridDimX = 2147483647ull, kMaxGridDimYZ = 65535ull;
constexpr size_t kMaxDynamicSmemBytes = 227u * 1024u;  // sm_90 opt-in maximum per block
constexpr unsigned char kSmemPoisonByte = 0xFF;

[[noreturn]] inline void fatal(const std::string& msg) {
  std::fprintf(stderr, "cuda_emu: FATAL: %s\n", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

inline double barrier_timeout_s() {
  static const double t = [] {
    const char* e = std::getenv("CUDA_EMU_BARRIER_TIMEOUT_S");
    double v = e ? std::atof(e) : 0.0;
    return v > 0 ? v : 20.0;
  }();
  return t;
}

// Forward progress of all launches (barriers completed, threads returned, release stores): what the watchdog of a
// concurrent launch looks at. Relaxed: no happens-before for TSan.
inline std::atomic<unsigned long long>& progress() {
  static std::atomic<unsigned long long> p{0};
  return p;
}
inline void note_progress() { progress().fetch_add(1, std::memory_order_relaxed); }

struct BlockCtx;
struct GridCtx;

// What a thread of the block is doing, for deadlock detection and reports.
enum class Where : unsigned char { Running, SyncThreads, Warp, Exited, GridSync };

constexpr unsigned kSlotWords = 5;  // 64-bit words one lane deposits in a warp exchange (mma.sync: 10 x 32 bits)

// Synchronisation inside the harness must not create happens-before edges that CUDA does not have, or TSan would
// miss real races: __syncthreads and the block end use the block's mutex (they order the whole block anyway), each
// warp's intrinsics use that warp's own mutex (they order only its lanes), and the deadlock bookkeeping shared by
// both is relaxed atomics (no happens-before for TSan).
struct WarpState {
  unsigned lanes = 0;     // lanes that exist in this warp
  std::mutex m;
  std::condition_variable cv;
  unsigned arrived = 0;   // lanes waiting in the current warp barrier (guarded by m)
  unsigned long long gen = 0;
  std::uint64_t slots[2][kWarpSize][kSlotWords] = {};  // exchange buffer, double-buffered by operation parity
  std::atomic<const char*> op{nullptr};    // name of the intrinsic the first arriving lane is in (for reports)
};

struct BlockCtx {
  // launch configuration (written before the threads start)
  dim3 grid, block;
  size_t dyn_bytes = 0;
  unsigned nthreads = 0, nwarps = 0;
  unsigned long long nblocks = 0;

  std::mutex m;  // block barrier, block end, block setup
  // current block: written by the thread that completes the block end, read by every thread after it
  unsigned long long block_linear = 0;
  void* dyn = nullptr;
  // block barrier (__syncthreads*)
  std::condition_variable cv_block;
  unsigned sync_arrived = 0;
  unsigned long long sync_gen = 0;
  int sync_accum = 0;
  int sync_result[2] = {0, 0};
  // block end (every thread returned from the kernel)
  std::condition_variable cv_end;
  unsigned exited = 0;
  unsigned long long end_gen = 0;
  // deadlock bookkeeping, one atomic so every check sees one consistent snapshot: threads waiting in a barrier that
  // has not released them (returned threads included) in bits 0-20, of those the ones in a grid sync in bits 21-41,
  // the returned ones in bits 42-62.
  static constexpr std::uint64_t kGridOne = std::uint64_t{1} << 21, kExitOne = std::uint64_t{1} << 42,
                                 kField = (std::uint64_t{1} << 21) - 1;
  std::atomic<std::uint64_t> state{0};
  GridCtx* gctx = nullptr;  // the grid of a concurrent launch (nullptr: blocks run one after another)
  std::unique_ptr<std::atomic<Where>[]> where;
  std::unique_ptr<std::atomic<unsigned long long>[]> where_seq;  // barriers of that kind the thread passed before
  std::unique_ptr<WarpState[]> warps;

  void set_where(unsigned t, Where w) { where[t].store(w, std::memory_order_relaxed); }

  std::string describe(unsigned long long blk) const {
    std::string s;
    char buf[256];
    unsigned long long bx = blk % grid.x, by = (blk / grid.x) % grid.y,
                       bz = blk / (static_cast<unsigned long long>(grid.x) * grid.y);
    std::snprintf(buf, sizeof buf, "block (%llu,%llu,%llu) of grid (%u,%u,%u), blockDim (%u,%u,%u):\n", bx, by, bz,
                  grid.x, grid.y, grid.z, block.x, block.y, block.z);
    s += buf;
    auto label = [&](unsigned t) {
      const unsigned long long seq = where_seq[t].load(std::memory_order_relaxed) + 1;
      switch (where[t].load(std::memory_order_relaxed)) {
        case Where::Running: return std::string("running");
        case Where::Exited: return std::string("returned from the kernel");
        case Where::SyncThreads: return "in __syncthreads (its #" + std::to_string(seq) + ")";
        case Where::GridSync: return "in grid sync (its #" + std::to_string(seq) + ")";
        case Where::Warp: {
          const char* op = warps[t / kWarpSize].op.load(std::memory_order_relaxed);
          return std::string("in warp ") + std::to_string(t / kWarpSize) + " " + (op ? op : "?") + " (its #" +
                 std::to_string(seq) + " warp op)";
        }
      }
      return std::string("?");
    };
    unsigned start = 0;
    std::string cur = label(0);
    for (unsigned t = 1; t <= nthreads; ++t) {
      std::string l = t < nthreads ? label(t) : std::string();
      if (t == nthreads || l != cur) {
        std::snprintf(buf, sizeof buf, "  linear threads %u..%u: ", start, t - 1);
        s += buf;
        s += cur;
        s += "\n";
        start = t;
        cur = l;
      }
    }
    return s;
  }

  [[noreturn]] void deadlock(const char* why, unsigned long long blk) const;

  // A thread is about to wait in a barrier it did not complete (or returned from the kernel). If now every thread
  // of the block waits, no block-level barrier can complete: deadlock, unless they all wait in the grid sync (other
  // blocks can complete it) or all returned. (Sound with relaxed atomics: a released thread is un-counted by its
  // releaser before it can run again, and all counting of a block is on the one atomic.) Defined below GridCtx.
  void enter_wait(unsigned t, Where w, unsigned long long seq, unsigned long long blk);
  // `count` threads released from a barrier, `in_grid` of them from the grid sync.
  void release(unsigned count, unsigned in_grid = 0);

  template <class Pred>
  void wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, Pred done, const char* what,
            unsigned long long blk) {
    const auto timeout = std::chrono::duration<double>(barrier_timeout_s());
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
    while (!done()) {
      if (cv.wait_until(lk, deadline) == std::cv_status::timeout && !done()) {
        std::string msg = std::string("barrier timeout after ") + std::to_string(barrier_timeout_s()) + " s in " + what;
        deadlock(msg.c_str(), blk);
      }
    }
  }
};

// The grid of a concurrent launch (launch_concurrent / launch_cooperative): every block has its BlockCtx and all
// blocks run at once. The grid sync is one barrier over all threads of the grid (its mutex orders the whole grid,
// as cooperative_groups::grid_group::sync() does); its deadlock bookkeeping is again one relaxed atomic.
struct GridCtx {
  bool cooperative = false;
  unsigned nthreads = 0;  // per block
  unsigned long long nblocks = 0, total = 0;
  std::unique_ptr<BlockCtx[]> blocks;
  // grid sync
  std::mutex m;
  std::condition_variable cv;
  unsigned long long arrived = 0, gen = 0;
  // threads waiting anywhere or returned (bits 0-31), returned ones (bits 32-63)
  static constexpr std::uint64_t kExitOne = std::uint64_t{1} << 32, kField = (std::uint64_t{1} << 32) - 1;
  std::atomic<std::uint64_t> state{0};
  // start gate: no thread starts the kernel before every thread of the grid has been handed its job (see
  // run_cuda_thread_concurrent)
  std::mutex gate_m;
  std::condition_variable gate_cv;
  unsigned long long gate_arrived = 0;
  // watchdog
  std::mutex wd_m;
  std::condition_variable wd_cv;
  bool done = false;

  std::string describe_all() const {
    std::string s;
    for (unsigned long long i = 0; i < nblocks; ++i) s += blocks[i].describe(i);
    return s;
  }
  [[noreturn]] void deadlock(const std::string& why) const {
    fatal("DEADLOCK (" + why + ") in the concurrent grid of " + std::to_string(nblocks) + " blocks:\n" +
          describe_all());
  }
  void enter_wait(bool exited) {
    const std::uint64_t add = 1 + (exited ? kExitOne : 0);
    const std::uint64_t s = state.fetch_add(add, std::memory_order_relaxed) + add;
    if ((s & kField) == total && (s >> 32) != total)
      deadlock("every thread of the grid waits or has returned, and the grid sync can never complete: a block "
               "returned (or skipped a grid sync) while others wait in one");
  }
  void release(unsigned long long count) { state.fetch_sub(count, std::memory_order_relaxed); }
};

inline void BlockCtx::deadlock(const char* why, unsigned long long blk) const {
  if (gctx) gctx->deadlock(std::string(why) + "; first seen in block " + std::to_string(blk));
  fatal(std::string("DEADLOCK (") + why + ") in " + describe(blk));
}

inline void BlockCtx::enter_wait(unsigned t, Where w, unsigned long long seq, unsigned long long blk) {
  where_seq[t].store(seq, std::memory_order_relaxed);
  set_where(t, w);
  const std::uint64_t add = 1 + (w == Where::GridSync ? kGridOne : 0) + (w == Where::Exited ? kExitOne : 0);
  const std::uint64_t s = state.fetch_add(add, std::memory_order_relaxed) + add;
  if ((s & kField) == nthreads) {
    const std::uint64_t in_grid = (s >> 21) & kField, exited = s >> 42;
    if (in_grid == nthreads || (exited == nthreads && gctx)) {
      // the whole block waits in the grid sync, or has returned (concurrent launches): not a block-level deadlock
    } else if (in_grid != 0) {
      deadlock("some threads of the block wait in the grid sync while the others wait in a block barrier or "
               "returned: every thread of the grid must reach the grid sync",
               blk);
    } else {
      deadlock("every thread waits in a barrier that can never complete; divergent __syncthreads / warp intrinsic, "
               "or a thread returned early while others wait",
               blk);
    }
  }
  if (gctx) gctx->enter_wait(w == Where::Exited);
}

inline void BlockCtx::release(unsigned count, unsigned in_grid) {
  state.fetch_sub(count + in_grid * kGridOne, std::memory_order_relaxed);
  if (gctx) gctx->release(count);
}

struct CpAsyncCopy {
  void* dst;
  unsigned bytes;
  unsigned char data[16];
};

struct ThreadState {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  BlockCtx* blk = nullptr;
  unsigned long long block_linear = 0;
  void* dyn = nullptr;  // this block's dynamic shared memory
  unsigned linear = 0, lane = 0, warp = 0;
  unsigned long long warp_ops = 0;   // warp operations this thread did in the current block
  unsigned long long sync_ops = 0;   // __syncthreads this thread did in the current block
  unsigned long long grid_ops = 0;   // grid syncs this thread did
  std::vector<CpAsyncCopy> cp_uncommitted;               // cp.async issued since the last commit_group
  std::vector<std::vector<CpAsyncCopy>> cp_groups;       // committed, not yet waited for (oldest first)
};

inline ThreadState& tls() {
  thread_local ThreadState s;
  return s;
}

inline BlockCtx& current_block(const char* what) {
  BlockCtx* b = tls().blk;
  if (!b) fatal(std::string(what) + " called outside a kernel launched by cuda_emu::launch");
  return *b;
}

// Dynamic shared memory of the current block (nullptr if the launch asked for 0 bytes).
inline void* dynamic_smem() {
  current_block("dynamic_smem()");
  return tls().dyn;
}

// __syncthreads and friends: returns the number of threads of the block whose `pred` was non-zero.
inline int block_barrier(int pred) {
  ThreadState& t = tls();
  BlockCtx& b = current_block("__syncthreads()");
  std::unique_lock<std::mutex> lk(b.m);
  const unsigned long long my_gen = b.sync_gen;
  b.sync_accum += pred ? 1 : 0;
  if (++b.sync_arrived == b.nthreads) {
    b.sync_result[my_gen & 1] = b.sync_accum;
    b.sync_accum = 0;
    b.sync_arrived = 0;
    for (unsigned i = 0; i < b.nthreads; ++i)
      if (b.where[i].load(std::memory_order_relaxed) == Where::SyncThreads) b.set_where(i, Where::Running);
    b.release(b.nthreads - 1);
    ++b.sync_gen;
    note_progress();
    b.cv_block.notify_all();
  } else {
    b.enter_wait(t.linear, Where::SyncThreads, t.sync_ops, t.block_linear);
    b.wait(lk, b.cv_block, [&] { return b.sync_gen != my_gen; }, "__syncthreads", t.block_linear);
  }
  ++t.sync_ops;
  return b.sync_result[my_gen & 1];
}

inline unsigned warp_lanes_mask(unsigned lanes) { return lanes >= 32 ? 0xFFFFFFFFu : ((1u << lanes) - 1u); }

using WarpSlots = const std::uint64_t (*)[kSlotWords];

// Warp barrier with exchange: every lane deposits `nwords` words, waits for all lanes of its warp, and gets a
// pointer to the 32 lanes' deposited words (valid until this lane's next warp operation). Every lane must be in the
// same operation (`op`): lanes of one warp in different warp collectives are reported at once.
inline WarpSlots warp_exchange_words(unsigned mask, const std::uint64_t* words, unsigned nwords, const char* op) {
  ThreadState& t = tls();
  BlockCtx& b = current_block(op);
  WarpState& w = b.warps[t.warp];
  const unsigned need = warp_lanes_mask(w.lanes);
  if ((mask & need) != need) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s with mask 0x%08x in warp %u whose %u lanes need 0x%08x: only full-warp masks "
                  "are emulated", op, mask, t.warp, w.lanes, need);
    fatal(buf);
  }
  const unsigned parity = t.warp_ops & 1;
  std::unique_lock<std::mutex> lk(w.m);
  for (unsigned i = 0; i < nwords; ++i) w.slots[parity][t.lane][i] = words[i];
  const unsigned long long my_gen = w.gen;
  if (w.arrived == 0) {
    w.op.store(op, std::memory_order_relaxed);
  } else if (const char* other = w.op.load(std::memory_order_relaxed); std::strcmp(other, op) != 0) {
    lk.unlock();
    b.deadlock((std::string("divergent warp collectives: lane ") + std::to_string(t.lane) + " of warp " +
                std::to_string(t.warp) + " calls " + op + " while other lanes of its warp wait in " + other +
                " (every lane must execute the same collective)")
                   .c_str(),
               t.block_linear);
  }
  if (++w.arrived == w.lanes) {
    w.arrived = 0;
    const unsigned first = t.warp * kWarpSize;
    for (unsigned i = first; i < first + w.lanes; ++i)
      if (b.where[i].load(std::memory_order_relaxed) == Where::Warp) b.set_where(i, Where::Running);
    b.release(w.lanes - 1);
    ++w.gen;
    note_progress();
    w.cv.notify_all();
  } else {
    b.enter_wait(t.linear, Where::Warp, t.warp_ops, t.block_linear);
    b.wait(lk, w.cv, [&] { return w.gen != my_gen; }, op, t.block_linear);
  }
  ++t.warp_ops;
  return w.slots[parity];
}
inline WarpSlots warp_exchange(unsigned mask, std::uint64_t bits, const char* op) {
  return warp_exchange_words(mask, &bits, 1, op);
}

template <class T>
inline std::uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp exchange of types up to 8 bytes");
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(std::uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Generic shuffle: src_of(lane) gives the source lane, or -1 for "keep own value".
template <class T, class F>
inline T shuffle(unsigned mask, T v, F src_of, const char* op) {
  WarpSlots slots = warp_exchange(mask, to_bits(v), op);
  ThreadState& t = tls();
  const int src = src_of(static_cast<int>(t.lane));
  if (src < 0 || src == static_cast<int>(t.lane)) return v;
  const unsigned lanes = t.blk->warps[t.warp].lanes;
  if (static_cast<unsigned>(src) >= lanes) return from_bits<T>(~std::uint64_t{0});  // non-existent lane: poison
  return from_bits<T>(slots[src][0]);
}

inline unsigned vote_ballot(unsigned mask, int pred, const char* op) {
  WarpSlots slots = warp_exchange(mask, pred ? 1 : 0, op);
  const unsigned lanes = tls().blk->warps[tls().warp].lanes;
  unsigned r = 0;
  for (unsigned i = 0; i < lanes; ++i)
    if (slots[i][0]) r |= 1u << i;
  return r & mask;
}

// ------------------------------------------------------------------------------------------- launch
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline void validate_launch(dim3 grid, dim3 block, size_t dyn_bytes) {
  auto bad = [&](const std::string& what) {
    char buf[128];
    std::snprintf(buf, sizeof buf, " (grid (%u,%u,%u), block (%u,%u,%u), dynamic smem %zu bytes)", grid.x, grid.y,
                  grid.z, block.x, block.y, block.z, dyn_bytes);
    throw std::invalid_argument("cuda_emu::launch: " + what + buf);
  };
  if (block.x == 0 || block.y == 0 || block.z == 0) bad("empty block");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad("empty grid");
  if (block.x > kMaxBlockDimX || block.y > kMaxBlockDimY || block.z > kMaxBlockDimZ) bad("block dimension too large");
  if (static_cast<unsigned long long>(block.x) * block.y * block.z > kMaxThreadsPerBlock)
    bad("more than 1024 threads per block");
  if (grid.x > kMaxGridDimX || grid.y > kMaxGridDimYZ || grid.z > kMaxGridDimYZ) bad("grid dimension too large");
  if (dyn_bytes > kMaxDynamicSmemBytes) bad("dynamic shared memory above the 227 KiB sm_90 limit");
}

// Must hold b.m, with every thread of the block in the block-end barrier (or not started). Frees the previous
// block's dynamic smem, sets up block `linear`.
inline void setup_block_locked(BlockCtx& b, unsigned long long linear) {
  std::free(b.dyn);
  b.dyn = nullptr;
  b.block_linear = linear;
  if (b.dyn_bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 128, b.dyn_bytes) != 0) fatal("out of memory for dynamic shared memory");
    std::memset(p, kSmemPoisonByte, b.dyn_bytes);
    b.dyn = p;
  }
  for (unsigned i = 0; i < b.nthreads; ++i) b.set_where(i, Where::Running);
  b.sync_arrived = 0;
  b.sync_accum = 0;
  b.exited = 0;
  b.state.store(0, std::memory_order_relaxed);
}

// Host threads, kept for the whole process and reused by every launch: creating a thread costs ~1 ms under TSan.
// run(n, fn, ctx) calls fn(ctx, i) on workers i = 0..n-1 concurrently and returns when all have returned. The hand-off
// goes through the pool's mutex, so TSan orders each launch after the previous one.
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }
  void run(unsigned n, void (*fn)(void*, unsigned), void* ctx) {
    std::unique_lock<std::mutex> lk(m_);
    while (workers_.size() < n) {
      const unsigned id = static_cast<unsigned>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
    }
    fn_ = fn;
    ctx_ = ctx;
    active_ = n;
    done_ = 0;
    ++gen_;
    cv_work_.notify_all();
    cv_done_.wait(lk, [&] { return done_ == active_; });
    fn_ = nullptr;
    ctx_ = nullptr;
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& w : workers_) w.join();
  }

 private:
  void loop(unsigned id) {
    unsigned long long seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_work_.wait(lk, [&] { return stop_ || gen_ != seen; });
      if (stop_) return;
      seen = gen_;
      if (id >= active_) continue;
      auto fn = fn_;
      void* ctx = ctx_;
      lk.unlock();
      fn(ctx, id);
      lk.lock();
      if (++done_ == active_) cv_done_.notify_one();
    }
  }
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  void (*fn_)(void*, unsigned) = nullptr;
  void* ctx_ = nullptr;
  unsigned active_ = 0, done_ = 0;
  unsigned long long gen_ = 0;
  bool stop_ = false;
};

// One CUDA thread (linear id `linear`) for every block of the launch, in block order.
struct LaunchJob {
  BlockCtx* b;
  void (*call)(void*);
  void* ctx;
};

inline void run_cuda_thread(void* job_ptr, unsigned linear) {
  const LaunchJob& job = *static_cast<const LaunchJob*>(job_ptr);
  BlockCtx& b = *job.b;
  ThreadState& t = tls();
  t.blk = &b;
  t.linear = linear;
  t.lane = linear % kWarpSize;
  t.warp = linear / kWarpSize;
  t.block_dim = b.block;
  t.grid_dim = b.grid;
  t.thread_idx = {linear % b.block.x, (linear / b.block.x) % b.block.y, linear / (b.block.x * b.block.y)};
  // Block 0 was set up before the pool handed out the job, which orders it before us; later blocks are set up by
  // the thread completing the block-end barrier. No other lock is taken here: any would order this thread after
  // whatever another thread of the block did before releasing it, and hide races from TSan.
  unsigned long long blk = b.block_linear;
  void* dyn = b.dyn;
  for (;;) {
    t.block_linear = blk;
    t.dyn = dyn;
    t.block_idx = {static_cast<unsigned>(blk % b.grid.x), static_cast<unsigned>((blk / b.grid.x) % b.grid.y),
                   static_cast<unsigned>(blk / (static_cast<unsigned long long>(b.grid.x) * b.grid.y))};
    t.warp_ops = 0;
    t.sync_ops = 0;
    t.cp_uncommitted.clear();
    t.cp_groups.clear();
    job.call(job.ctx);
    note_progress();
    // block end barrier: the last thread to return sets up the next block
    std::unique_lock<std::mutex> lk(b.m);
    const unsigned long long my_gen = b.end_gen;
    if (++b.exited == b.nthreads) {
      if (blk + 1 < b.nblocks) {
        setup_block_locked(b, blk + 1);
      } else {
        std::free(b.dyn);
        b.dyn = nullptr;
      }
      ++b.end_gen;
      b.cv_end.notify_all();
    } else {
      b.enter_wait(linear, Where::Exited, 0, blk);
      b.wait(lk, b.cv_end, [&] { return b.end_gen != my_gen; }, "block end", blk);
    }
    if (blk + 1 >= b.nblocks) break;
    blk = b.block_linear;
    dyn = b.dyn;
  }
  t = ThreadState{};
}

// Concurrent launches: one host thread per CUDA thread of the whole grid, `worker` = block * nthreads + linear.
struct GridJob {
  GridCtx* g;
  void (*call)(void*);
  void* ctx;
};

inline void run_cuda_thread_concurrent(void* job_ptr, unsigned worker) {
  const GridJob& job = *static_cast<const GridJob*>(job_ptr);
  GridCtx& g = *job.g;
  const unsigned long long blk = worker / g.nthreads;
  const unsigned linear = worker % g.nthreads;
  BlockCtx& b = g.blocks[blk];
  ThreadState& t = tls();
  t.blk = &b;
  t.linear = linear;
  t.lane = linear % kWarpSize;
  t.warp = linear / kWarpSize;
  t.block_dim = b.block;
  t.grid_dim = b.grid;
  t.thread_idx = {linear % b.block.x, (linear / b.block.x) % b.block.y, linear / (b.block.x * b.block.y)};
  t.block_linear = blk;
  t.dyn = b.dyn;
  t.block_idx = {static_cast<unsigned>(blk % b.grid.x), static_cast<unsigned>((blk / b.grid.x) % b.grid.y),
                 static_cast<unsigned>(blk / (static_cast<unsigned long long>(b.grid.x) * b.grid.y))};
  // Start gate: the pool hands out work under its mutex, and a worker that picks up its job after another worker
  // finished the kernel would be ordered after that worker's whole kernel (hiding every race between them from
  // TSan, e.g. when early blocks finish before late ones start). Waiting here until every thread has its job
  // puts all pool hand-offs before any kernel code; the gate orders only what happened before the kernel.
  {
    std::unique_lock<std::mutex> lk(g.gate_m);
    if (++g.gate_arrived == g.total) g.gate_cv.notify_all();
    else g.gate_cv.wait(lk, [&] { return g.gate_arrived == g.total; });
  }
  job.call(job.ctx);
  note_progress();
  // No block-end barrier (nothing to set up after the block): the thread is only counted as returned, so a thread
  // that returns while others of its block or grid wait for it is reported.
  b.enter_wait(linear, Where::Exited, 0, blk);
  t = ThreadState{};
}

// The emulated device, for the co-residency limit of cooperative launches (cudaOccupancyMaxActiveBlocksPerMultiprocessor
// x cudaDevAttrMultiProcessorCount). Defaults: H100 SXM (sm_90, 132 SMs). Tests shrink num_sms so that a grid the
// emulator can run (every CUDA thread a host thread) is still "the whole device".
struct Device {
  unsigned num_sms = 132;
  unsigned max_threads_per_sm = 2048;
  unsigned max_blocks_per_sm = 32;
  size_t smem_per_sm = 228u * 1024u;               // shared memory per SM usable by blocks
  size_t reserved_smem_per_block = 1024u;          // the driver's per-block reservation (sm_80+)
  unsigned regs_per_sm = 65536;
  unsigned regs_per_thread = 0;                    // registers the kernel is assumed to use; 0: not a limit
  size_t static_smem_bytes = 0;                    // static __shared__ bytes the kernel is assumed to use
};
inline Device& device() {
  static Device d;
  return d;
}

// cudaOccupancyMaxActiveBlocksPerMultiprocessor for the emulated device (threads, shared memory, registers with
// the 256-register per-warp allocation granularity, the per-SM block limit). An approximation of the driver's
// calculation: it does not model register-file banking or the shared-memory carveout steps.
inline unsigned occupancy_max_active_blocks_per_sm(unsigned block_threads, size_t dynamic_smem_bytes) {
  const Device& d = device();
  const unsigned warps = (block_threads + kWarpSize - 1) / kWarpSize;
  unsigned n = std::min(d.max_blocks_per_sm, (d.max_threads_per_sm / kWarpSize) / warps);
  const size_t smem = dynamic_smem_bytes + d.static_smem_bytes + d.reserved_smem_per_block;
  n = std::min<unsigned>(n, static_cast<unsigned>(d.smem_per_sm / smem));
  if (d.regs_per_thread) {
    const unsigned per_warp = (d.regs_per_thread * kWarpSize + 255) / 256 * 256;
    n = std::min(n, (d.regs_per_sm / per_warp) / warps);
  }
  return n;
}

// The most CUDA threads a concurrent launch may have (each is a host thread; TSan allows about 8000 at once).
constexpr unsigned long long kMaxConcurrentThreads = 4096;

enum class Mode { Sequential, Concurrent, Cooperative };

// The launch machinery proper, type-erased so that each kernel instantiation only adds a trampoline.
inline void launch_erased(dim3 grid, dim3 block, size_t dynamic_smem_bytes, void (*call)(void*), void* ctx,
                          Mode mode = Mode::Sequential) {
  validate_launch(grid, block, dynamic_smem_bytes);
  if (tls().blk) fatal("cuda_emu::launch called from inside a kernel (dynamic parallelism is not emulated)");
  std::lock_guard<std::mutex> launch_lock(launch_mutex());

  auto init_block = [&](BlockCtx& b) {
    b.grid = grid;
    b.block = block;
    b.dyn_bytes = dynamic_smem_bytes;
    b.nthreads = block.x * block.y * block.z;
    b.nwarps = (b.nthreads + kWarpSize - 1) / kWarpSize;
    b.nblocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
    b.warps = std::make_unique<WarpState[]>(b.nwarps);
    for (unsigned w = 0; w < b.nwarps; ++w) b.warps[w].lanes = std::min(kWarpSize, b.nthreads - w * kWarpSize);
    b.where = std::make_unique<std::atomic<Where>[]>(b.nthreads);
    b.where_seq = std::make_unique<std::atomic<unsigned long long>[]>(b.nthreads);
  };

  if (mode == Mode::Sequential) {
    BlockCtx b;
    init_block(b);
    {
      std::lock_guard<std::mutex> lk(b.m);
      setup_block_locked(b, 0);
    }
    LaunchJob job{&b, call, ctx};
    ThreadPool::instance().run(b.nthreads, run_cuda_thread, &job);
    return;
  }

  GridCtx g;
  g.cooperative = mode == Mode::Cooperative;
  g.nthreads = block.x * block.y * block.z;
  g.nblocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
  g.total = g.nblocks * g.nthreads;
  if (g.total > kMaxConcurrentThreads)
    throw std::invalid_argument("cuda_emu::launch_concurrent/launch_cooperative: " + std::to_string(g.total) +
                                " CUDA threads, more than the " + std::to_string(kMaxConcurrentThreads) +
                                " host threads the emulator runs at once (use a smaller grid or emulated device)");
  g.blocks = std::make_unique<BlockCtx[]>(g.nblocks);
  for (unsigned long long i = 0; i < g.nblocks; ++i) {
    BlockCtx& b = g.blocks[i];
    init_block(b);
    b.gctx = &g;
    std::lock_guard<std::mutex> lk(b.m);
    setup_block_locked(b, i);
  }
  // Watchdog: a grid where no barrier completes, no thread returns and no release store happens for twice
  // CUDA_EMU_BARRIER_TIMEOUT_S (e.g. every thread spinning on a flag nobody sets) is reported and aborted. (Twice:
  // a thread waiting in a barrier reports first, and more precisely, through the barrier timeout.)
  std::thread watchdog([&g] {
    std::unique_lock<std::mutex> lk(g.wd_m);
    unsigned long long last = progress().load(std::memory_order_relaxed);
    const auto period = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::duration<double>(2 * barrier_timeout_s()));
    while (!g.done) {
      if (g.wd_cv.wait_for(lk, period) == std::cv_status::timeout && !g.done) {
        const unsigned long long now = progress().load(std::memory_order_relaxed);
        if (now == last)
          g.deadlock("watchdog: no barrier completed, no thread returned and no release store for " +
                     std::to_string(2 * barrier_timeout_s()) + " s (threads spinning on a flag nobody sets?)");
        last = now;
      }
    }
  });
  GridJob job{&g, call, ctx};
  ThreadPool::instance().run(static_cast<unsigned>(g.total), run_cuda_thread_concurrent, &job);
  {
    std::lock_guard<std::mutex> lk(g.wd_m);
    g.done = true;
  }
  g.wd_cv.notify_all();
  watchdog.join();
  for (unsigned long long i = 0; i < g.nblocks; ++i) {
    std::free(g.blocks[i].dyn);
    g.blocks[i].dyn = nullptr;
  }
}

// Runs kernel(args...) for every thread of every block; see the top of this file. Arguments are copied once and
// shared (read-only) by all threads, like kernel parameters.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Kernel kernel, Args... args) {
  auto invoke = [&kernel, &args...]() { kernel(args...); };
  launch_erased(grid, block, dynamic_smem_bytes,
                [](void* c) { (*static_cast<decltype(invoke)*>(c))(); }, &invoke);
}

// All blocks of the grid at once (at most kMaxConcurrentThreads CUDA threads). No co-residency check and no grid
// sync: what an ordinary launch on a device with room for the whole grid does.
template <class Kernel, class... Args>
void launch_concurrent(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Kernel kernel, Args... args) {
  auto invoke = [&kernel, &args...]() { kernel(args...); };
  launch_erased(grid, block, dynamic_smem_bytes,
                [](void* c) { (*static_cast<decltype(invoke)*>(c))(); }, &invoke, Mode::Concurrent);
}

}  // namespace cuda_emu

// The runtime's error codes that the emulated launches return (the values of driver_types.h).
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
  }
  return "cudaErrorUnknown";
}
// The strings of libcudart's cudaGetErrorString.
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
  }
  return "unknown error";
}

namespace cuda_emu {

// cudaLaunchCooperativeKernel: all blocks at once, grid sync allowed. A grid larger than
// occupancy_max_active_blocks_per_sm(block, smem) * device().num_sms is refused with
// cudaErrorCooperativeLaunchTooLarge (nothing runs), as the driver does. Other invalid configurations throw
// std::invalid_argument like launch().
template <class Kernel, class... Args>
cudaError_t launch_cooperative(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Kernel kernel, Args... args) {
  validate_launch(grid, block, dynamic_smem_bytes);
  const unsigned long long nblocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
  const unsigned per_sm = occupancy_max_active_blocks_per_sm(block.x * block.y * block.z, dynamic_smem_bytes);
  if (nblocks > static_cast<unsigned long long>(per_sm) * device().num_sms) return cudaErrorCooperativeLaunchTooLarge;
  auto invoke = [&kernel, &args...]() { kernel(args...); };
  launch_erased(grid, block, dynamic_smem_bytes,
                [](void* c) { (*static_cast<decltype(invoke)*>(c))(); }, &invoke, Mode::Cooperative);
  return cudaSuccess;
}

// ------------------------------------------------------------------------------------------- grid sync
// cooperative_groups::this_grid().sync(): every thread of the grid must arrive (count-based, like the hardware's
// barrier); one mutex for the whole grid, so TSan sees it order every thread after every other, as grid.sync()
// orders memory. Only inside launch_cooperative (CUDA requires cudaLaunchCooperativeKernel).
inline void grid_sync() {
  ThreadState& t = tls();
  BlockCtx& b = current_block("grid sync");
  GridCtx* g = b.gctx;
  if (!g || !g->cooperative)
    fatal("grid sync (cooperative_groups::this_grid().sync(), fastrnn::grid_sync) in a launch that is not "
          "cooperative: CUDA requires cudaLaunchCooperativeKernel (cuda_emu::launch_cooperative)");
  std::unique_lock<std::mutex> lk(g->m);
  const unsigned long long my_gen = g->gen;
  if (++g->arrived == g->total) {
    g->arrived = 0;
    for (unsigned long long i = 0; i < g->nblocks; ++i) {
      BlockCtx& bi = g->blocks[i];
      for (unsigned j = 0; j < bi.nthreads; ++j)
        if (bi.where[j].load(std::memory_order_relaxed) == Where::GridSync) bi.set_where(j, Where::Running);
      const unsigned n = &bi == &b ? bi.nthreads - 1 : bi.nthreads;
      bi.release(n, n);
    }
    ++g->gen;
    note_progress();
    g->cv.notify_all();
  } else {
    b.enter_wait(t.linear, Where::GridSync, t.grid_ops, t.block_linear);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                                 std::chrono::duration<double>(barrier_timeout_s()));
    while (g->gen == my_gen) {
      if (g->cv.wait_until(lk, deadline) == std::cv_status::timeout && g->gen == my_gen)
        g->deadlock("grid sync timeout after " + std::to_string(barrier_timeout_s()) + " s");
    }
  }
  ++t.grid_ops;
}

// ------------------------------------------------------------------------------------------- acquire / release
// ld.acquire.gpu / st.release.gpu / atom.release.gpu.add on 32- or 64-bit integers: std::atomic_ref with the same
// orders, which TSan models (a flag protocol built on them is race-free for TSan exactly when it is correct).
// Relaxed atomics plus __threadfence() are NOT understood by TSan (it ignores fences): use these for flags.
template <class T>
inline T ld_acquire(const T* p) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "32/64-bit integers");
  return std::atomic_ref<T>(*const_cast<T*>(p)).load(std::memory_order_acquire);
}
template <class T>
inline void st_release(T* p, T v) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "32/64-bit integers");
  std::atomic_ref<T>(*p).store(v, std::memory_order_release);
  note_progress();
}
template <class T>
inline T atomic_add_release(T* p, T v) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "32/64-bit integers");
  const T old = std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_release);
  note_progress();
  return old;
}

// ------------------------------------------------------------------------------------------- mma.sync
// mma.sync.aligned.{m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, m16n8k8.row.col.f32.tf32.tf32.f32} as a warp
// collective: every lane of a full warp deposits its fragments (a: 4 x b32, b: 2 x b32, c: 4 x f32), the warp
// barrier completes, and each lane computes its 4 elements of D from the whole tiles. Fragment layouts of the PTX
// ISA ("Matrix Fragments for mma.m16n8k16 with floating point type" / "for mma.m16n8k8", .tf32), with
// g = lane >> 2, q = lane % 4:
//   m16n8k16 A (16x16, row): a_i, i = 0..7 (register i/2, low half = even i): row g + 8*((i>>1)&1),
//                            col 2q + (i&1) + 8*(i>=4)
//            B (16x8, col):  b_i, i = 0..3 (register i/2, low half = even i): row 2q + (i&1) + 8*(i>=2), col g
//   m16n8k8 .tf32 A (16x8):  a_i, i = 0..3: row g + 8*(i&1), col q + 4*(i>=2)
//                 B (8x8):   b_i, i = 0..1: row q + 4*i, col g
//   C, D (16x8 f32), both shapes: c_i, i = 0..3: row g + 8*(i>=2), col 2q + (i&1)
// Numerics: bf16/f16 operands exactly (subnormals too); .tf32 operands with the low 13 mantissa bits dropped
// (truncation: what the tensor cores do with an fp32 pattern that was not rounded by cvt.rna.tf32.f32 first).
// Products are exact, the k products and c are summed in double and rounded once to fp32 (nearest even). The
// hardware adds with its own internal precision and order (partial sums truncated), so real results can differ from
// these by a few fp32 ulps of the largest term: compare with tolerances, never bit-exactly.
enum class MmaKind { M16N8K16_BF16, M16N8K16_F16, M16N8K8_TF32 };

inline void mma_sync(MmaKind kind, float d[4], const std::uint32_t* a, const std::uint32_t* b, const float c[4]) {
  const char* op = kind == MmaKind::M16N8K16_BF16  ? "mma.sync.m16n8k16.f32.bf16.bf16.f32"
                   : kind == MmaKind::M16N8K16_F16 ? "mma.sync.m16n8k16.f32.f16.f16.f32"
                                                   : "mma.sync.m16n8k8.f32.tf32.tf32.f32";
  BlockCtx& blk = current_block(op);
  ThreadState& t = tls();
  if (blk.warps[t.warp].lanes != kWarpSize)
    fatal(std::string(op) + " in warp " + std::to_string(t.warp) + " of a block of " + std::to_string(blk.nthreads) +
          " threads: that warp has only " + std::to_string(blk.warps[t.warp].lanes) +
          " lanes; mma.sync needs all 32 lanes of a full warp");
  const bool k16 = kind != MmaKind::M16N8K8_TF32;
  const int na = 4, nb = 2;
  std::uint32_t mine[10];
  for (int i = 0; i < na; ++i) mine[i] = a[i];
  for (int i = 0; i < nb; ++i) mine[na + i] = b[i];
  for (int i = 0; i < 4; ++i) mine[6 + i] = std::bit_cast<std::uint32_t>(c[i]);
  std::uint64_t words[kSlotWords];
  for (unsigned w = 0; w < kSlotWords; ++w) words[w] = mine[2 * w] | (std::uint64_t{mine[2 * w + 1]} << 32);
  WarpSlots s = warp_exchange_words(0xFFFFFFFFu, words, kSlotWords, op);
  auto reg = [&](unsigned lane, unsigned i) -> std::uint32_t {
    return static_cast<std::uint32_t>(s[lane][i / 2] >> (32 * (i % 2)));
  };
  auto elem16 = [&](std::uint32_t bits16) -> double {
    return kind == MmaKind::M16N8K16_BF16 ? Bf16Fmt::to_double(static_cast<std::uint16_t>(bits16))
                                          : HalfFmt::to_double(static_cast<std::uint16_t>(bits16));
  };
  const int K = k16 ? 16 : 8;
  double A[16][16], B[16][8], C[16][8];
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    const unsigned g = lane >> 2, q = lane & 3;
    if (k16) {
      for (unsigned i = 0; i < 8; ++i) {
        const std::uint32_t h = (reg(lane, i / 2) >> (16 * (i & 1))) & 0xFFFFu;
        A[g + 8 * ((i >> 1) & 1)][2 * q + (i & 1) + 8 * (i >= 4)] = elem16(h);
      }
      for (unsigned i = 0; i < 4; ++i) {
        const std::uint32_t h = (reg(lane, 4 + i / 2) >> (16 * (i & 1))) & 0xFFFFu;
        B[2 * q + (i & 1) + 8 * (i >= 2)][g] = elem16(h);
      }
    } else {
      for (unsigned i = 0; i < 4; ++i)
        A[g + 8 * (i & 1)][q + 4 * (i >= 2)] = tf32_truncate(std::bit_cast<float>(reg(lane, i)));
      for (unsigned i = 0; i < 2; ++i) B[q + 4 * i][g] = tf32_truncate(std::bit_cast<float>(reg(lane, 4 + i)));
    }
    for (unsigned i = 0; i < 4; ++i) C[g + 8 * (i >= 2)][2 * q + (i & 1)] = std::bit_cast<float>(reg(lane, 6 + i));
  }
  const unsigned g = t.lane >> 2, q = t.lane & 3;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i >= 2), col = 2 * q + (i & 1);
    double acc = C[row][col];
    for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
    d[i] = static_cast<float>(acc);
  }
}

// ------------------------------------------------------------------------------------------- cp.async
// cp.async.{ca,cg}.shared.global: the source is read when the copy is issued, the destination is filled with the
// 0xFF poison at once (a NaN for float/half/bfloat16, -1 for integers) and gets the data only when a
// cp.async.wait_group / wait_all of the issuing thread covers the copy's group. So a read of the destination
// before the right wait reads poison, and (TSan) a read by another thread without wait + __syncthreads is a race.
// Copies never waited for are dropped when the thread returns.
inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes, const char* op) {
  ThreadState& t = tls();
  current_block(op);
  if (bytes != 4 && bytes != 8 && bytes != 16) fatal(std::string(op) + ": copy size must be 4, 8 or 16 bytes");
  if (src_bytes > bytes) fatal(std::string(op) + ": src-size larger than the copy size");
  if (reinterpret_cast<std::uintptr_t>(dst) % bytes || reinterpret_cast<std::uintptr_t>(src) % bytes)
    fatal(std::string(op) + ": misaligned address (source and destination must be aligned to the copy size)");
  CpAsyncCopy c{dst, bytes, {}};
  if (src_bytes) std::memcpy(c.data, src, src_bytes);
  std::memset(c.data + src_bytes, 0, bytes - src_bytes);  // the zero fill of the src-size form
  std::memset(dst, kSmemPoisonByte, bytes);
  t.cp_uncommitted.push_back(c);
}
inline void cp_async_commit() {
  ThreadState& t = tls();
  current_block("cp.async.commit_group");
  t.cp_groups.push_back(std::move(t.cp_uncommitted));
  t.cp_uncommitted.clear();
}
// cp.async.wait_group n: every committed group but the newest n has landed. (Uncommitted copies are not waited for.)
inline void cp_async_wait(unsigned n) {
  ThreadState& t = tls();
  current_block("cp.async.wait_group");
  while (t.cp_groups.size() > n) {
    for (const CpAsyncCopy& c : t.cp_groups.front()) std::memcpy(c.dst, c.data, c.bytes);
    t.cp_groups.erase(t.cp_groups.begin());
  }
}
// cp.async.wait_all == cp.async.commit_group; cp.async.wait_group 0.
inline void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait(0);
}

}  // namespace cuda_emu

// ------------------------------------------------------------------------------------------- CUDA spellings
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__ static
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a g++/clang++ keyword already.

// `type* name` pointing at the block's dynamic shared memory (what FASTRNN_DYNAMIC_SMEM expands to under emulation).
#define CUDA_EMU_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::cuda_emu::dynamic_smem())

#define threadIdx (::cuda_emu::tls().thread_idx)
#define blockIdx (::cuda_emu::tls().block_idx)
#define blockDim (::cuda_emu::tls().block_dim)
#define gridDim (::cuda_emu::tls().grid_dim)
// A run-time value in CUDA (not usable in constant expressions), so not constexpr here either.
namespace cuda_emu {
inline int warp_size_value() { return static_cast<int>(kWarpSize); }
}  // namespace cuda_emu
#define warpSize (::cuda_emu::warp_size_value())

inline void __syncthreads() { ::cuda_emu::block_barrier(0); }
inline int __syncthreads_count(int pred) { return ::cuda_emu::block_barrier(pred); }
inline int __syncthreads_and(int pred) {
  return ::cuda_emu::block_barrier(pred) == static_cast<int>(::cuda_emu::current_block("__syncthreads_and").nthreads);
}
inline int __syncthreads_or(int pred) { return ::cuda_emu::block_barrier(pred) != 0; }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { ::cuda_emu::warp_exchange(mask, 0, "__syncwarp"); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  return ::cuda_emu::shuffle(mask, v, [&](int lane) { return (lane & ~(width - 1)) + (src_lane & (width - 1)); },
                             "__shfl_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::cuda_emu::shuffle(
      mask, v, [&](int lane) { return (lane & (width - 1)) < static_cast<int>(delta) ? -1 : lane - static_cast<int>(delta); },
      "__shfl_up_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::cuda_emu::shuffle(
      mask, v,
      [&](int lane) { return (lane & (width - 1)) + static_cast<int>(delta) >= width ? -1 : lane + static_cast<int>(delta); },
      "__shfl_down_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  return ::cuda_emu::shuffle(
      mask, v,
      [&](int lane) {
        const int src = lane ^ lane_mask;
        return src >= ((lane + width) & ~(width - 1)) ? -1 : src;
      },
      "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::cuda_emu::vote_ballot(mask, pred, "__ballot_sync"); }
inline int __any_sync(unsigned mask, int pred) { return ::cuda_emu::vote_ballot(mask, pred, "__any_sync") != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return ::cuda_emu::vote_ballot(mask, pred, "__all_sync") == (mask & ::cuda_emu::warp_lanes_mask(
                                                                          ::cuda_emu::tls().blk->warps[::cuda_emu::tls().warp].lanes));
}
inline unsigned __activemask() {
  return ::cuda_emu::warp_lanes_mask(::cuda_emu::current_block("__activemask").warps[::cuda_emu::tls().warp].lanes);
}

// Atomics: relaxed, like CUDA's. Return the old value.
template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed); }
template <class T>
inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v, std::memory_order_relaxed); }
template <class T>
inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed); }
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;  // old value either way
}
template <class T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { ::cuda_emu::fatal("__trap() called in device code"); }

// Math intrinsics: exact host functions (not the fast approximations).
inline float __expf(float x) { return ::expf(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __sinf(float x) { return ::sinf(x); }
inline float __cosf(float x) { return ::cosf(x); }
inline float __powf(float x, float y) { return ::powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return ::fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return ::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __float2int_rn(float x) { return static_cast<int>(::nearbyintf(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <class T>
inline T __ldg(const T* p) { return *p; }
// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return ::fminf(a, b); }
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline double min(double a, double b) { return ::fmin(a, b); }
inline double max(double a, double b) { return ::fmax(a, b); }

// cooperative_groups::this_grid().sync() (no <cooperative_groups.h> under the emulation).
namespace cooperative_groups {
struct grid_group {
  void sync() const { ::cuda_emu::grid_sync(); }
  bool is_valid() const {
    const ::cuda_emu::BlockCtx* b = ::cuda_emu::tls().blk;
    return b && b->gctx && b->gctx->cooperative;
  }
  unsigned long long num_threads() const {
    const ::cuda_emu::ThreadState& t = ::cuda_emu::tls();
    return static_cast<unsigned long long>(t.block_dim.x) * t.block_dim.y * t.block_dim.z * t.grid_dim.x *
           t.grid_dim.y * t.grid_dim.z;
  }
  unsigned long long thread_rank() const {
    const ::cuda_emu::ThreadState& t = ::cuda_emu::tls();
    return t.block_linear * (static_cast<unsigned long long>(t.block_dim.x) * t.block_dim.y * t.block_dim.z) + t.linear;
  }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

