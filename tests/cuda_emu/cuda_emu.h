// cuda_emu.h -- run CUDA device code on the CPU, for tests on machines without a GPU.
//
// Header-only, C++20, g++ (or clang++). Include it instead of the CUDA runtime headers (csrc/cuda/device_compat.h
// does this when FASTRNN_CUDA_EMU is defined), write the kernel as usual, and launch it with
//     ::cuda_emu::launch(grid, block, dynamic_smem_bytes, kernel, args...);
// instead of kernel<<<grid, block, smem>>>(args...).
//
// Execution model
//   * Blocks run one after another, in blockIdx order (x fastest). A launch is serialised with every other launch.
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
//     set) through a shuffle.
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
//   * Memory ordering and visibility bugs between blocks: blocks are sequential, so every block sees all writes of
//     earlier blocks and none of later ones. A kernel that waits for another block (spin on a flag, grid-wide sync,
//     cooperative groups) hangs here. __threadfence() is a seq_cst fence; TSan does not model fences, so use
//     atomics for flags.
//   * Per-block resource limits at launch: registers, the static shared-memory size, the 48 KiB default dynamic
//     shared memory limit without cudaFuncSetAttribute opt-in (only the 227 KiB hardware cap is checked).
//   * Uninitialised static `__shared__` memory: statics start zeroed and keep the previous block's values. Only
//     dynamic shared memory is poisoned. Out-of-bounds indexing of a static `__shared__` array is caught by UBSan's
//     bounds check (asan variant) when the array is indexed directly; g++ gives no ASan redzones to statics of
//     templates, so overruns through a pointer into a static __shared__ array in a template kernel go unseen.
//   * Floating point: intrinsics (__expf, __fdividef, rsqrtf, ...) are the exact host functions, not the fast
//     approximations, and FMA contraction differs; compare with tolerances. No tensor-core (mma/wmma) instructions,
//     no inline PTX, no __half/__nv_bfloat16, no textures, no `extern __shared__` arrays, no dynamic parallelism,
//     no streams/events. __CUDA_ARCH__ is not defined.
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

struct BlockCtx;

// What a thread of the block is doing, for deadlock detection and reports.
enum class Where : unsigned char { Running, SyncThreads, Warp, Exited };

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
  std::uint64_t slots[2][kWarpSize] = {};  // exchange buffer, double-buffered by the lanes' operation parity
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
  // deadlock bookkeeping: threads waiting in a barrier that has not released them (returned threads included)
  std::atomic<unsigned> blocked{0};
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

  [[noreturn]] void deadlock(const char* why, unsigned long long blk) const {
    fatal(std::string("DEADLOCK (") + why + ") in " + describe(blk));
  }

  // A thread is about to wait in a barrier it did not complete. If now every thread waits, none can complete any
  // barrier: deadlock. (Sound with relaxed atomics: a released thread is un-counted by its releaser before it can
  // run again, and all counting is on the one atomic.)
  void enter_wait(unsigned t, Where w, unsigned long long seq, unsigned long long blk) {
    where_seq[t].store(seq, std::memory_order_relaxed);
    set_where(t, w);
    if (blocked.fetch_add(1, std::memory_order_relaxed) + 1 == nthreads)
      deadlock("every thread waits in a barrier that can never complete; divergent __syncthreads / warp intrinsic, "
               "or a thread returned early while others wait",
               blk);
  }
  void release(unsigned count) { blocked.fetch_sub(count, std::memory_order_relaxed); }

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
    b.cv_block.notify_all();
  } else {
    b.enter_wait(t.linear, Where::SyncThreads, t.sync_ops, t.block_linear);
    b.wait(lk, b.cv_block, [&] { return b.sync_gen != my_gen; }, "__syncthreads", t.block_linear);
  }
  ++t.sync_ops;
  return b.sync_result[my_gen & 1];
}

inline unsigned warp_lanes_mask(unsigned lanes) { return lanes >= 32 ? 0xFFFFFFFFu : ((1u << lanes) - 1u); }

// Warp barrier with exchange: every lane deposits `bits`, waits for all lanes of its warp, and gets a pointer to
// the 32 deposited slots (valid until this lane's next warp operation).
inline const std::uint64_t* warp_exchange(unsigned mask, std::uint64_t bits, const char* op) {
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
  w.slots[parity][t.lane] = bits;
  const unsigned long long my_gen = w.gen;
  if (w.arrived == 0) w.op.store(op, std::memory_order_relaxed);
  if (++w.arrived == w.lanes) {
    w.arrived = 0;
    const unsigned first = t.warp * kWarpSize;
    for (unsigned i = first; i < first + w.lanes; ++i)
      if (b.where[i].load(std::memory_order_relaxed) == Where::Warp) b.set_where(i, Where::Running);
    b.release(w.lanes - 1);
    ++w.gen;
    w.cv.notify_all();
  } else {
    b.enter_wait(t.linear, Where::Warp, t.warp_ops, t.block_linear);
    b.wait(lk, w.cv, [&] { return w.gen != my_gen; }, op, t.block_linear);
  }
  ++t.warp_ops;
  return w.slots[parity];
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
  const std::uint64_t* slots = warp_exchange(mask, to_bits(v), op);
  ThreadState& t = tls();
  const int src = src_of(static_cast<int>(t.lane));
  if (src < 0 || src == static_cast<int>(t.lane)) return v;
  const unsigned lanes = t.blk->warps[t.warp].lanes;
  if (static_cast<unsigned>(src) >= lanes) return from_bits<T>(~std::uint64_t{0});  // non-existent lane: poison
  return from_bits<T>(slots[src]);
}

inline unsigned vote_ballot(unsigned mask, int pred, const char* op) {
  const std::uint64_t* slots = warp_exchange(mask, pred ? 1 : 0, op);
  const unsigned lanes = tls().blk->warps[tls().warp].lanes;
  unsigned r = 0;
  for (unsigned i = 0; i < lanes; ++i)
    if (slots[i]) r |= 1u << i;
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
  b.blocked.store(0, std::memory_order_relaxed);
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
    job.call(job.ctx);
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

// The launch machinery proper, type-erased so that each kernel instantiation only adds a trampoline.
inline void launch_erased(dim3 grid, dim3 block, size_t dynamic_smem_bytes, void (*call)(void*), void* ctx) {
  validate_launch(grid, block, dynamic_smem_bytes);
  if (tls().blk) fatal("cuda_emu::launch called from inside a kernel (dynamic parallelism is not emulated)");
  std::lock_guard<std::mutex> launch_lock(launch_mutex());

  BlockCtx b;
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
  {
    std::lock_guard<std::mutex> lk(b.m);
    setup_block_locked(b, 0);
  }

  LaunchJob job{&b, call, ctx};
  ThreadPool::instance().run(b.nthreads, run_cuda_thread, &job);
}

// Runs kernel(args...) for every thread of every block; see the top of this file. Arguments are copied once and
// shared (read-only) by all threads, like kernel parameters.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Kernel kernel, Args... args) {
  auto invoke = [&kernel, &args...]() { kernel(args...); };
  launch_erased(grid, block, dynamic_smem_bytes,
                [](void* c) { (*static_cast<decltype(invoke)*>(c))(); }, &invoke);
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
