// Kernels that exercise the CUDA emulation harness itself (tests/test_cuda_emu_harness.py).
// Written as ordinary CUDA: they would compile with nvcc too (except the deliberately broken demos).
#pragma once

#include <cstdint>

#ifdef FASTRNN_CUDA_EMU
#include "cuda_emu.h"
#endif
#include "cell_math.h"

#ifdef FASTRNN_CUDA_EMU
#define SELFTEST_DYNAMIC_SMEM(type, name) CUDA_EMU_DYNAMIC_SMEM(type, name)
#else
#define SELFTEST_DYNAMIC_SMEM(type, name)                  \
  extern __shared__ __align__(16) unsigned char smem_[]; \
  type* name = reinterpret_cast<type*>(smem_)
#endif

namespace selftest {

constexpr unsigned kFull = 0xFFFFFFFFu;

// Grid-stride sum with a shared-memory tree per block; one partial sum and one count of x > 0 per block.
template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    block_reduce_kernel(const T* __restrict__ x, std::int64_t n, T* __restrict__ partial, int* __restrict__ positives) {
  __shared__ __align__(16) T s[BLOCK];
  const int tid = threadIdx.x;
  T acc = 0;
  int pos = 0;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * BLOCK + tid; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * BLOCK) {
    acc += x[i];
    pos += x[i] > T(0);
  }
  s[tid] = acc;
  __syncthreads();
  for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
    if (tid < stride) s[tid] += s[tid + stride];
    __syncthreads();
  }
  if (tid == 0) partial[blockIdx.x] = s[0];
  // count of positive elements seen by the block: per-thread counts through a second shared array
  __shared__ int ps[BLOCK];
  ps[tid] = pos;
  __syncthreads();
  if (tid == 0) {
    int total = 0;
    for (int i = 0; i < BLOCK; ++i) total += ps[i];
    positives[blockIdx.x] = total;
  }
}

// __syncthreads_count / _and / _or on a predicate per thread: out[3*block + {0,1,2}].
__global__ void sync_votes_kernel(const int* __restrict__ pred, int* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[i];
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x + 0] = c;
    out[3 * blockIdx.x + 1] = a;
    out[3 * blockIdx.x + 2] = o;
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum_down(T v) {
  for (int o = warpSize / 2; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return v;  // valid in lane 0
}

template <typename T>
__device__ __forceinline__ T warp_sum_xor(T v) {
  for (int o = warpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;  // valid in every lane
}

// Per element i (blockDim.x a multiple of 32):
//   down[warp]  warp sum by __shfl_down_sync        xsum[i]  warp sum by butterfly __shfl_xor_sync
//   scan[i]     inclusive warp scan by __shfl_up    bcast[i] value of lane 3 of the warp (__shfl_sync)
//   seg[i]      sum over the 8-lane segment (width 8) ballot[warp] __ballot_sync(x > 0), any/all in anyall[2*warp]
//   iscan[i]    inclusive scan of int(i % 7) with int shuffles
template <typename T>
__global__ void warp_ops_kernel(const T* __restrict__ x, T* __restrict__ down, T* __restrict__ xsum,
                                T* __restrict__ scan, T* __restrict__ bcast, T* __restrict__ seg,
                                std::int64_t* __restrict__ ballot, int* __restrict__ anyall, int* __restrict__ iscan) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % warpSize;
  const int warp = i / warpSize;
  const T v = x[i];

  const T d = warp_sum_down(v);
  if (lane == 0) down[warp] = d;
  xsum[i] = warp_sum_xor(v);

  T s = v;
  for (int o = 1; o < warpSize; o <<= 1) {
    const T up = __shfl_up_sync(kFull, s, o);
    if (lane >= o) s += up;
  }
  scan[i] = s;
  bcast[i] = __shfl_sync(kFull, v, 3);

  T g = v;
  for (int o = 4; o > 0; o >>= 1) g += __shfl_xor_sync(kFull, g, o, 8);
  seg[i] = g;

  const unsigned b = __ballot_sync(kFull, v > T(0));
  const int any = __any_sync(kFull, v > T(100));
  const int all = __all_sync(kFull, v > T(-100));
  __syncwarp();
  if (lane == 0) {
    ballot[warp] = static_cast<std::int64_t>(b);
    anyall[2 * warp] = any;
    anyall[2 * warp + 1] = all;
  }

  int k = i % 7;
  for (int o = 1; o < warpSize; o <<= 1) {
    const int up = __shfl_up_sync(kFull, k, o);
    if (lane >= o) k += up;
  }
  iscan[i] = k;
}

// Two-level block sum (warp shuffles, then shared memory across warps): one value per block.
template <typename T>
__global__ void block_sum_shfl_kernel(const T* __restrict__ x, std::int64_t n, T* __restrict__ out) {
  __shared__ T warp_sums[32];
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  T v = i < n ? x[i] : T(0);
  v = warp_sum_down(v);
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nw = (blockDim.x + warpSize - 1) / warpSize;
    T w = lane < nw ? warp_sums[lane] : T(0);
    w = warp_sum_down(w);
    if (lane == 0) out[blockIdx.x] = w;
  }
}

// Dynamic shared memory: the block's tile reversed and scaled, plus a per-block int counter stored behind the tile.
template <typename T>
__global__ void tile_reverse_kernel(const T* __restrict__ x, T scale, T* __restrict__ y, int* __restrict__ counts) {
  SELFTEST_DYNAMIC_SMEM(unsigned char, raw);
  T* tile = reinterpret_cast<T*>(raw);
  int* counter = reinterpret_cast<int*>(raw + blockDim.x * sizeof(T));
  const int tid = threadIdx.x;
  const int base = blockIdx.x * blockDim.x;
  if (tid == 0) *counter = 0;
  tile[tid] = x[base + tid];
  __syncthreads();
  y[base + tid] = tile[blockDim.x - 1 - tid] * scale;
  atomicAdd(counter, 1);
  __syncthreads();
  if (tid == 0) counts[blockIdx.x] = *counter;
}

// Reads dynamic shared memory that nobody wrote: the harness poisons it (NaN for floats).
template <typename T>
__global__ void smem_poison_probe_kernel(T* __restrict__ out) {
  SELFTEST_DYNAMIC_SMEM(T, buf);
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// 3-d block and grid: every thread writes its coordinates at its global linear index.
__global__ void indexing_kernel(int* __restrict__ out) {
  const int tpb = blockDim.x * blockDim.y * blockDim.z;
  const int tlin = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int blin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  int* o = out + 6 * (blin * tpb + tlin);
  o[0] = threadIdx.x;
  o[1] = threadIdx.y;
  o[2] = threadIdx.z;
  o[3] = blockIdx.x;
  o[4] = blockIdx.y;
  o[5] = blockIdx.z;
}

// Atomics: a histogram of int(x) mod bins (int), a float/double total, and an atomicMax.
template <typename T>
__global__ void atomics_kernel(const T* __restrict__ x, int n, int bins, int* __restrict__ hist, T* __restrict__ total,
                               int* __restrict__ maxbin) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const int b = static_cast<int>(x[i] < T(0) ? -x[i] : x[i]) % bins;
    atomicAdd(&hist[b], 1);
    atomicAdd(total, x[i]);
    atomicMax(maxbin, b);
  }
}

// The shared gate math of csrc/cell_math.h inside a kernel: LSTM forward on n independent cells.
template <typename T>
__global__ void lstm_pointwise_kernel(const T* __restrict__ gates, const T* __restrict__ c_prev, int n,
                                      T* __restrict__ c, T* __restrict__ h) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const auto a = fastrnn::lstm_forward<T>(gates[4 * i], gates[4 * i + 1], gates[4 * i + 2], gates[4 * i + 3],
                                            c_prev[i]);
    c[i] = a.c;
    h[i] = a.h;
  }
}

// Deliberate hangs the deadlock detector must report (plain variant only).
__global__ void deadlock_early_return_kernel(int* out) {
  if (threadIdx.x >= 32) return;  // threads return while the others wait in __syncthreads: undefined in CUDA
  __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void deadlock_mixed_barriers_kernel(int* out) {
  if (threadIdx.x % 32 < 16)
    out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<int>(threadIdx.x), 1);
  else
    __syncthreads();
}

// Thread 0 waits for a flag nobody sets (like waiting for another block) while the others wait in __syncthreads:
// no barrier is complete-able yet not every thread is in one, so only the barrier timeout can report it.
__global__ void spin_forever_kernel(int* flag) {
  if (threadIdx.x == 0)
    while (atomicAdd(flag, 0) == 0) {
    }
  __syncthreads();
}

#ifdef EMU_RACE_DEMO
// BUG ON PURPOSE: the barrier between filling s[] and the tree reduction is missing. TSan must report a race.
template <typename T, int BLOCK>
__global__ void block_reduce_missing_sync_kernel(const T* __restrict__ x, T* __restrict__ partial) {
  __shared__ T s[BLOCK];
  const int tid = threadIdx.x;
  s[tid] = x[blockIdx.x * BLOCK + tid];
  // __syncthreads();   <- missing
  for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
    if (tid < stride) s[tid] += s[tid + stride];
    __syncthreads();
  }
  if (tid == 0) partial[blockIdx.x] = s[0];
}

// BUG ON PURPOSE (since Volta): the classic "warp-synchronous" last-warp reduction through volatile shared memory,
// relying on lockstep lanes instead of __syncwarp(). The emulator has no lockstep, so TSan reports it.
__global__ void warp_synchronous_reduce_kernel(const float* __restrict__ x, float* __restrict__ out) {
  __shared__ float s[64];
  const int tid = threadIdx.x;
  s[tid] = x[tid] + x[tid + 32];
  volatile float* v = s;
  if (tid < 16) v[tid] = v[tid] + v[tid + 16];
  if (tid < 8) v[tid] = v[tid] + v[tid + 8];
  if (tid < 4) v[tid] = v[tid] + v[tid + 4];
  if (tid < 2) v[tid] = v[tid] + v[tid + 2];
  if (tid < 1) out[0] = v[0] + v[1];
}

// BUG ON PURPOSE: two-level reduction without the __syncthreads between the per-warp results in shared memory and
// warp 0 reading them. The warps' shuffles must not hide this (each warp synchronises only its own lanes).
template <typename T>
__global__ void block_sum_shfl_missing_sync_kernel(const T* __restrict__ x, T* __restrict__ out) {
  __shared__ T warp_sums[32];
  T v = warp_sum_down(x[blockIdx.x * blockDim.x + threadIdx.x]);
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) warp_sums[warp] = v;
  // __syncthreads();   <- missing
  if (warp == 0) {
    T w = lane < static_cast<int>(blockDim.x / warpSize) ? warp_sums[lane] : T(0);
    w = warp_sum_down(w);
    if (lane == 0) out[blockIdx.x] = w;
  }
}
#endif

#ifdef EMU_OOB_DEMO
// BUG ON PURPOSE: the last thread writes one past a static __shared__ array (UBSan bounds check reports it).
template <typename T, int BLOCK>
__global__ void oob_static_shared_kernel(T* out) {
  __shared__ T s[BLOCK];
  const int tid = threadIdx.x;
  s[tid + (tid == BLOCK - 1 ? 1 : 0)] = T(tid);
  __syncthreads();
  if (tid == 0) out[blockIdx.x] = s[0];
}
// BUG ON PURPOSE: one element past the dynamic shared memory of the launch (ASan heap-buffer-overflow).
template <typename T>
__global__ void oob_dynamic_shared_kernel(T* out) {
  SELFTEST_DYNAMIC_SMEM(T, s);
  s[threadIdx.x + 1] = T(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}
// BUG ON PURPOSE: off-by-one bound check on a global array (ASan heap-buffer-overflow).
template <typename T>
__global__ void oob_global_kernel(const T* x, T* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = x[i < n ? i : 0] * T(2);
}
#endif

}  // namespace selftest
