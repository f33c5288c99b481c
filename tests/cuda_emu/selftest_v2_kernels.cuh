// Self-test kernels for what the persistent tensor-core kernels need from the emulation (tests/test_cuda_emu_harness.py):
// __half/__nv_bfloat16, mma.sync, the concurrent/cooperative grid (grid sync, acquire/release flags), cp.async.
// They use the device wrappers of csrc/cuda/device_compat.h, the spelling the fastrnn kernels use.
#pragma once

#include <cstdint>

#include "cuda/device_compat.h"

namespace selftest_v2 {

// ------------------------------------------------------------------------------------------------ half / bfloat16
// Conversions of n floats (grid-stride), every form of the API: *_rn, the plain name, the 2-vector form (the second
// lane gets -x). h2f/b2f: the float bits of all 65536 half / bfloat16 patterns.
__global__ void half_convert_kernel(const float* __restrict__ x, int n, int* __restrict__ h_rn, int* __restrict__ h_plain,
                                    int* __restrict__ h_vec, int* __restrict__ b_rn, int* __restrict__ b_plain,
                                    int* __restrict__ b_vec, int* __restrict__ h2f, int* __restrict__ b2f) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = x[i];
    h_rn[i] = __half_as_ushort(__float2half_rn(v));
    h_plain[i] = __half_as_ushort(__float2half(v));
    const __half2 h2 = __floats2half2_rn(v, -v);
    h_vec[i] = static_cast<int>(fastrnn::pack_f16x2(__low2half(h2), __high2half(h2)));
    b_rn[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    b_plain[i] = __bfloat16_as_ushort(__float2bfloat16(v));
    const __nv_bfloat162 b2 = __floats2bfloat162_rn(v, -v);
    b_vec[i] = static_cast<int>(fastrnn::pack_bf16x2(__low2bfloat16(b2), __high2bfloat16(b2)));
  }
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < 65536; i += stride) {
    const unsigned short u = static_cast<unsigned short>(i);
    h2f[i] = __float_as_int(__half2float(__ushort_as_half(u)));
    b2f[i] = __float_as_int(__bfloat162float(__ushort_as_bfloat16(u)));
    // the 2-vector widening agrees with the scalar one
    const float2 f2 = __half22float2(__halves2half2(__ushort_as_half(u), __ushort_as_half(u)));
    const float2 g2 = __bfloat1622float2(__halves2bfloat162(__ushort_as_bfloat16(u), __ushort_as_bfloat16(u)));
    if (__float_as_int(f2.y) != h2f[i] || __float_as_int(g2.x) != b2f[i]) h2f[i] = 0x12345678;
  }
}

// out[4*i + {0,1,2,3}] = bits of a+b, a-b, a*b, fma(a,b,c) (16-bit patterns in the low half); vec[4*i + ...]: the
// 2-vector forms with (a, b, c) in the low lane and (b, a, c) in the high lane, packed.
template <typename H>
__device__ unsigned short bits_of(H h);
template <>
__device__ unsigned short bits_of<__half>(__half h) { return __half_as_ushort(h); }
template <>
__device__ unsigned short bits_of<__nv_bfloat16>(__nv_bfloat16 h) { return __bfloat16_as_ushort(h); }
template <typename H>
__device__ H of_bits(unsigned short u);
template <>
__device__ __half of_bits<__half>(unsigned short u) { return __ushort_as_half(u); }
template <>
__device__ __nv_bfloat16 of_bits<__nv_bfloat16>(unsigned short u) { return __ushort_as_bfloat16(u); }

template <typename H, typename H2>
__global__ void half_arith_kernel(const int* __restrict__ a, const int* __restrict__ b, const int* __restrict__ c, int n,
                                  int* __restrict__ out, int* __restrict__ vec) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const H x = of_bits<H>(static_cast<unsigned short>(a[i])), y = of_bits<H>(static_cast<unsigned short>(b[i])),
            z = of_bits<H>(static_cast<unsigned short>(c[i]));
    out[4 * i + 0] = bits_of(__hadd(x, y));
    out[4 * i + 1] = bits_of(__hsub(x, y));
    out[4 * i + 2] = bits_of(__hmul(x, y));
    out[4 * i + 3] = bits_of(__hfma(x, y, z));
    const H2 p(x, y), q(y, x), r(z, z);
    const H2 rs[4] = {__hadd2(p, q), __hsub2(p, q), __hmul2(p, q), __hfma2(p, q, r)};
    for (int k = 0; k < 4; ++k) vec[4 * i + k] = static_cast<int>(bits_of(rs[k].x) | (unsigned(bits_of(rs[k].y)) << 16));
  }
}

// ------------------------------------------------------------------------------------------------ mma.sync
// One 16x8 tile per warp: lane l of warp w loads its fragments a_regs[w][l][0..3], b_regs[w][l][0..1], c[w][l][0..3]
// (built by the test from the PTX ISA layouts), runs one mma and stores d[w][l][0..3]. kind: 0 bf16 m16n8k16,
// 1 f16 m16n8k16, 2 tf32 m16n8k8. Bug demos: lane `skip_lane` of warp 0 returns before the mma; lane
// `diverge_lane` of warp 0 runs a shuffle instead.
__global__ void mma_tiles_kernel(int kind, const std::int64_t* __restrict__ a_regs, const std::int64_t* __restrict__ b_regs,
                                 const float* __restrict__ c, float* __restrict__ d, int skip_lane, int diverge_lane) {
  const int lane = threadIdx.x % 32;
  const std::int64_t w = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const std::int64_t base = w * 32 + lane;
  std::uint32_t a[4], b[2];
  float cc[4], dd[4];
  for (int i = 0; i < 4; ++i) a[i] = static_cast<std::uint32_t>(a_regs[4 * base + i]);
  for (int i = 0; i < 2; ++i) b[i] = static_cast<std::uint32_t>(b_regs[2 * base + i]);
  for (int i = 0; i < 4; ++i) cc[i] = c[4 * base + i];
  if (w == 0 && lane == skip_lane) return;
  if (w == 0 && lane == diverge_lane) {
    d[4 * base] = __shfl_sync(0xFFFFFFFFu, cc[0], 0);
    return;
  }
  if (kind == 0) fastrnn::mma_m16n8k16_bf16(dd, a, b, cc);
  else if (kind == 1) fastrnn::mma_m16n8k16_f16(dd, a, b, cc);
  else fastrnn::mma_m16n8k8_tf32(dd, a, b, cc);
  for (int i = 0; i < 4; ++i) d[4 * base + i] = dd[i];
}

__global__ void tf32_convert_kernel(const float* __restrict__ x, int n, int* __restrict__ bits) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    bits[i] = static_cast<int>(fastrnn::f32_to_tf32(x[i]));
}

// ------------------------------------------------------------------------------------------------ grid
// A persistent recurrence like the persistent RNN kernels: hs[t+1][i] = tanh(sum_j W[i][j] hs[t][j] + u[t][i]) for
// t < T, hs[0] = h0. Each block owns blockDim.x units; every step reads all units of the previous step (staged in
// the block's dynamic shared memory), so steps are separated by a grid sync. use_sync = 0 removes the grid syncs:
// blocks then read rows other blocks have not written yet (a data race TSan must report).
__global__ void grid_recurrence_kernel(const float* __restrict__ W, const float* __restrict__ u,
                                       const float* __restrict__ h0, float* hs, int H, int T, int use_sync) {
  FASTRNN_DYNAMIC_SMEM(float, hprev);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < H) hs[i] = h0[i];
  if (use_sync) fastrnn::grid_sync();
  for (int t = 0; t < T; ++t) {
    for (int j = threadIdx.x; j < H; j += blockDim.x) hprev[j] = hs[static_cast<std::int64_t>(t) * H + j];
    __syncthreads();
    if (i < H) {
      float acc = u[static_cast<std::int64_t>(t) * H + i];
      for (int j = 0; j < H; ++j) acc += W[static_cast<std::int64_t>(i) * H + j] * hprev[j];
      hs[static_cast<std::int64_t>(t + 1) * H + i] = tanhf(acc);
    }
    __syncthreads();
    if (use_sync) fastrnn::grid_sync();
  }
}

// Blocks hand a running sum down a chain with flags: block b waits for flags[b-1], sets
// data[b][k] = data[b-1][k] + b + k, publishes flags[b]. use_acquire = 1: ld_acquire / st_release (correct);
// 0: relaxed atomics (atomicAdd(flag, 0) / atomicExch) without fences, so the data reads are not ordered after the
// writes of the previous block: a race TSan must report.
__global__ void flag_chain_kernel(float* data, unsigned* flags, int n, int use_acquire) {
  const unsigned b = blockIdx.x;
  if (b > 0 && threadIdx.x == 0) {
    if (use_acquire)
      while (fastrnn::ld_acquire(&flags[b - 1]) == 0u) {
      }
    else
      while (atomicAdd(&flags[b - 1], 0u) == 0u) {
      }
  }
  __syncthreads();
  for (int k = threadIdx.x; k < n; k += blockDim.x)
    data[b * n + k] = (b ? data[(b - 1) * n + k] : 0.f) + static_cast<float>(b) + static_cast<float>(k);
  __syncthreads();
  if (threadIdx.x == 0) {
    if (use_acquire) fastrnn::st_release(&flags[b], 1u);
    else atomicExch(&flags[b], 1u);
  }
}

// Misuses of the grid sync the emulator must report instead of hanging:
//   mode 0: block 1 returns without the grid sync the others wait in;
//   mode 1: block 1 spins on a flag nobody sets (only the timeout / watchdog can tell);
//   mode 2: thread 3 of block 0 waits in __syncthreads while the rest of the grid is in the grid sync;
//   mode 3: a grid sync in a launch that is not cooperative;
//   mode 4: every thread spins on a flag nobody sets (no thread in any barrier: only the watchdog can tell).
__global__ void grid_misuse_kernel(int mode, unsigned* flag) {
  if (mode == 0 && blockIdx.x == 1) return;
  if ((mode == 1 && blockIdx.x == 1) || mode == 4)
    while (fastrnn::ld_acquire(flag) == 0u) {
    }
  if (mode == 2 && blockIdx.x == 0 && threadIdx.x == 3) {
    __syncthreads();
    return;
  }
  fastrnn::grid_sync();
}

// ------------------------------------------------------------------------------------------------ cp.async
// out[tid] = sum over tiles k of tile_k[TILE - 4 - 4*tid .. +3] (a tile is 4*blockDim floats, zero padded past n):
// double-buffered, tile k+1 copied while tile k is summed, the elements read were copied by another thread.
// Copy forms vary by thread (cg 16 B, 2 x ca 8 B, 4 x ca 4 B); the last tile uses the zero-filling form.
// mode 0: correct (wait_group 1, then __syncthreads); 1: BUG reads its own copy before any wait;
// 2: BUG wait_group 2 (the tile being summed may still be in flight).
__global__ void cp_async_sum_kernel(const float* __restrict__ x, int n, int ntiles, float* __restrict__ out, int mode) {
  FASTRNN_DYNAMIC_SMEM(float, buf);  // 2 tiles
  const int tid = threadIdx.x, tile = 4 * blockDim.x;
  auto issue = [&](int k) {
    float* dst = buf + (k & 1) * tile + 4 * tid;
    const std::int64_t e = static_cast<std::int64_t>(k) * tile + 4 * tid;
    if (k == ntiles - 1) {
      const std::int64_t left = n - e;
      const int bytes = left <= 0 ? 0 : (left >= 4 ? 16 : static_cast<int>(left) * 4);
      fastrnn::cp_async_cg16_zfill(dst, bytes ? x + e : x, bytes);
    } else if (tid % 3 == 0) {
      fastrnn::cp_async_cg16(dst, x + e);
    } else if (tid % 3 == 1) {
      fastrnn::cp_async_ca<8>(dst, x + e);
      fastrnn::cp_async_ca<8>(dst + 2, x + e + 2);
    } else {
      for (int q = 0; q < 4; ++q) fastrnn::cp_async_ca<4>(dst + q, x + e + q);
    }
  };
  float acc = 0.f;
  issue(0);
  fastrnn::cp_async_commit();
  for (int k = 0; k < ntiles; ++k) {
    if (k + 1 < ntiles) issue(k + 1);
    fastrnn::cp_async_commit();  // possibly empty: keeps "the newest group is tile k+1"
    const float* cur = buf + (k & 1) * tile;
    if (mode == 1) acc += cur[4 * tid];  // BUG: before any wait
    else if (mode == 2) fastrnn::cp_async_wait<2>();  // BUG: too weak
    else fastrnn::cp_async_wait<1>();
    __syncthreads();
    for (int q = 0; q < 4; ++q) acc += cur[tile - 4 - 4 * tid + q];
    __syncthreads();  // everyone is done with this buffer before it is refilled
  }
  fastrnn::cp_async_wait_all();
  out[blockIdx.x * blockDim.x + tid] = acc;
}

}  // namespace selftest_v2
