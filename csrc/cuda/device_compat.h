// What the fastrnn device code (*_kernel.cuh) needs beyond standard C++, in one place, so that the same
// kernels compile with nvcc and with a plain host compiler under the CUDA-emulation harness
// (tests/cuda_emu/: FASTRNN_CUDA_EMU defined, cuda_emu.h provides __global__, __device__, __shared__,
// __syncthreads, threadIdx, ... and ::cuda_emu::dynamic_smem()).
//
// Defined here for both worlds:
//   FASTRNN_DYNAMIC_SMEM(type, name)  declares `type* name` pointing at the block's dynamic shared memory.
//   FASTRNN_LAUNCH_BOUNDS(n)          __launch_bounds__(n) under nvcc, nothing under the emulation.
//   Scalar<S>, acc_t<S>, to_float(S), from_float<S>(acc_t<S>): the storage type S of a tensor and the
//   accumulation type the kernels compute in (float for __half and __nv_bfloat16, else S itself).
//   (__half and __nv_bfloat16 come from cuda_fp16.h / cuda_bf16.h under nvcc, from the emulation's bit-exact
//   cuda_emu_half.h under FASTRNN_CUDA_EMU.)
// Device-only wrappers in namespace fastrnn (below), one spelling for both worlds: the nvcc branch is the real
// instruction (inline PTX / cooperative groups, sm_80+), the FASTRNN_CUDA_EMU branch calls the emulation, which
// checks what the hardware would only get wrong silently (every lane in the mma, every thread in the grid sync,
// reads of a cp.async destination before its wait). Every lane of a warp must call the mma wrappers with the same
// instruction; grid_sync only inside a cooperative launch. See tests/cuda_emu/README.md for what is emulated how.
//   mma_m16n8k16_bf16 / mma_m16n8k16_f16 / mma_m16n8k8_tf32(d, a, b, c)   D = A B + C, fp32 accumulators
//   f32_to_tf32(x)                        cvt.rna.tf32.f32 (nearest, ties away), the .tf32 operand bits
//   pack_bf16x2(lo, hi), pack_f16x2(lo, hi)   two 16-bit values in one b32 operand register (lo = lower k/col)
//   grid_sync()                           cooperative_groups::this_grid().sync()
//   prefetch_l2(p)                        prefetch.global.L2 (a hint; the emulation reads the byte, for ASan)
//   prefetch_segment_l2(first, n)         prefetch_l2 of every line of n consecutive elements
//   ld_acquire(p), st_release(p, v), atomic_add_release(p, v)   ld.acquire.gpu / st.release.gpu /
//                                         atom.release.gpu.add on 32/64-bit integers in global memory
//   cp_async_ca<4|8|16>(smem, gmem), cp_async_cg16(smem, gmem), cp_async_cg16_zfill(smem, gmem, src_bytes),
//   cp_async_commit(), cp_async_wait<N>(), cp_async_wait_all()
#pragma once

#include <cstdint>
#include <type_traits>

#include "../cell_math.h"  // FASTRNN_HD

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define FASTRNN_DYNAMIC_SMEM(type, name)                                       \
  extern __shared__ __align__(16) unsigned char fastrnn_smem_raw[];            \
  type* name = reinterpret_cast<type*>(fastrnn_smem_raw)
#define FASTRNN_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#elif defined(FASTRNN_CUDA_EMU)
// The harness (tests/cuda_emu/cuda_emu.h) defines __global__, __device__, __shared__, __forceinline__, dim3,
// threadIdx, __syncthreads, ... : nothing of those is redefined here.
#include "cuda_emu.h"
#define FASTRNN_DYNAMIC_SMEM(type, name) CUDA_EMU_DYNAMIC_SMEM(type, name)
#define FASTRNN_LAUNCH_BOUNDS(n)
#else
// Plain host compilation (no nvcc, no emulation): the kernels cannot be compiled, only this header's types.
#define FASTRNN_LAUNCH_BOUNDS(n)
#endif

namespace fastrnn::cuda {

// Storage type S <-> accumulation type. Loads widen with to_float, stores round (to nearest) with from_float.
template <typename S>
struct Scalar;

template <>
struct Scalar<float> {
  using acc = float;
  static FASTRNN_HD float to_acc(float x) { return x; }
  static FASTRNN_HD float from_acc(float x) { return x; }
};

template <>
struct Scalar<double> {
  using acc = double;
  static FASTRNN_HD double to_acc(double x) { return x; }
  static FASTRNN_HD double from_acc(double x) { return x; }
};

#if defined(__CUDACC__) || defined(FASTRNN_CUDA_EMU)
template <>
struct Scalar<__half> {
  using acc = float;
  static FASTRNN_HD float to_acc(__half x) { return __half2float(x); }
  static FASTRNN_HD __half from_acc(float x) { return __float2half_rn(x); }
};

template <>
struct Scalar<__nv_bfloat16> {
  using acc = float;
  static FASTRNN_HD float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
  static FASTRNN_HD __nv_bfloat16 from_acc(float x) { return __float2bfloat16_rn(x); }
};
#endif

template <typename S>
using acc_t = typename Scalar<S>::acc;

template <typename S>
FASTRNN_HD acc_t<S> to_float(S x) {
  return Scalar<S>::to_acc(x);
}

template <typename S>
FASTRNN_HD S from_float(acc_t<S> x) {
  return Scalar<S>::from_acc(x);
}

}  // namespace fastrnn::cuda

#if defined(__CUDACC__) || defined(FASTRNN_CUDA_EMU)
namespace fastrnn {

// The real instructions exist for sm_80+ only: an older device pass traps, the host pass sees no body.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FASTRNN_SM80 1
#endif

// D (16x8) = A (16x16, row) * B (16x8, col) + C, bf16 inputs, fp32 accumulation. Fragment layouts: PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type" (also in tests/cuda_emu/cuda_emu.h, mma_sync).
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const std::uint32_t a[4], const std::uint32_t b[2],
                                                  const float c[4]) {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::mma_sync(::cuda_emu::MmaKind::M16N8K16_BF16, d, a, b, c);
#elif defined(FASTRNN_SM80)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// The same with fp16 inputs.
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const std::uint32_t a[4], const std::uint32_t b[2],
                                                 const float c[4]) {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::mma_sync(::cuda_emu::MmaKind::M16N8K16_F16, d, a, b, c);
#elif defined(FASTRNN_SM80)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// D (16x8) = A (16x8, row) * B (8x8, col) + C with .tf32 operands (fp32 bit patterns, one per register; convert
// with f32_to_tf32 first, or the tensor cores drop the low 13 mantissa bits), fp32 accumulation.
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const std::uint32_t a[4], const std::uint32_t b[2],
                                                 const float c[4]) {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::mma_sync(::cuda_emu::MmaKind::M16N8K8_TF32, d, a, b, c);
#elif defined(FASTRNN_SM80)
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// cvt.rna.tf32.f32: round to the 10-bit TF32 mantissa, nearest with ties away from zero; the operand bits.
__device__ __forceinline__ std::uint32_t f32_to_tf32(float x) {
#if defined(FASTRNN_CUDA_EMU)
  return std::bit_cast<std::uint32_t>(::cuda_emu::tf32_rna(x));
#elif defined(FASTRNN_SM80)
  std::uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  __trap();  // pre-sm_80 device pass (the host pass generates no device code)
  return __float_as_uint(x);
#endif
}

__device__ __forceinline__ std::uint32_t pack_bf16x2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<std::uint32_t>(__bfloat16_as_ushort(lo)) |
         (static_cast<std::uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}
__device__ __forceinline__ std::uint32_t pack_f16x2(__half lo, __half hi) {
  return static_cast<std::uint32_t>(__half_as_ushort(lo)) | (static_cast<std::uint32_t>(__half_as_ushort(hi)) << 16);
}

// prefetch.global.L2: the line holding p into L2, a hint (no register, nothing waits for it, no effect on any value).
// Only for memory no thread of the launch writes. Under the emulation it reads the byte at p, so that ASan checks
// that every address a kernel prefetches is one it may read.
__device__ __forceinline__ void prefetch_l2(const void* p) {
#if defined(FASTRNN_CUDA_EMU)
  (void)*static_cast<const volatile unsigned char*>(p);
#elif defined(FASTRNN_SM80)
  asm volatile("prefetch.global.L2 [%0];\n" : : "l"(p));
#else
  (void)p;
#endif
}

// Every 128-byte line of the n >= 1 consecutive elements at `first`, prefetched into L2 (prefetch_l2).
template <typename T>
__device__ __forceinline__ void prefetch_segment_l2(const T* first, int64_t n) {
  const std::uintptr_t last = reinterpret_cast<std::uintptr_t>(first + (n - 1));
  for (std::uintptr_t a = reinterpret_cast<std::uintptr_t>(first); (a >> 7) <= (last >> 7); a += 128)
    prefetch_l2(reinterpret_cast<const void*>((a >> 7) == (last >> 7) ? last : a));
}

// Grid-wide barrier of a cooperative launch (cudaLaunchCooperativeKernel); orders memory across the grid.
__device__ __forceinline__ void grid_sync() {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::grid_sync();
#else
  cooperative_groups::this_grid().sync();
#endif
}

// Acquire load / release store / release fetch-add at GPU scope on a 32- or 64-bit integer in global memory.
template <typename T>
__device__ __forceinline__ T ld_acquire(const T* p) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "32/64-bit integers");
#if defined(FASTRNN_CUDA_EMU)
  return ::cuda_emu::ld_acquire(p);
#elif defined(FASTRNN_SM80)
  if constexpr (sizeof(T) == 4) {
    std::uint32_t v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return static_cast<T>(v);
  } else {
    std::uint64_t v;
    asm volatile("ld.acquire.gpu.global.b64 %0, [%1];\n" : "=l"(v) : "l"(p) : "memory");
    return static_cast<T>(v);
  }
#else
  __trap();
  return *p;
#endif
}
template <typename T>
__device__ __forceinline__ void st_release(T* p, T v) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "32/64-bit integers");
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::st_release(p, v);
#elif defined(FASTRNN_SM80)
  if constexpr (sizeof(T) == 4)
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(static_cast<std::uint32_t>(v)) : "memory");
  else
    asm volatile("st.release.gpu.global.b64 [%0], %1;\n" ::"l"(p), "l"(static_cast<std::uint64_t>(v)) : "memory");
#else
  __trap();
  (void)p;
  (void)v;
#endif
}
template <typename T>
__device__ __forceinline__ T atomic_add_release(T* p, T v) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "32/64-bit integers");
#if defined(FASTRNN_CUDA_EMU)
  return ::cuda_emu::atomic_add_release(p, v);
#elif defined(FASTRNN_SM80)
  if constexpr (sizeof(T) == 4) {
    std::uint32_t old;
    asm volatile("atom.release.gpu.global.add.u32 %0, [%1], %2;\n"
                 : "=r"(old)
                 : "l"(p), "r"(static_cast<std::uint32_t>(v))
                 : "memory");
    return static_cast<T>(old);
  } else {
    std::uint64_t old;
    asm volatile("atom.release.gpu.global.add.u64 %0, [%1], %2;\n"
                 : "=l"(old)
                 : "l"(p), "l"(static_cast<std::uint64_t>(v))
                 : "memory");
    return static_cast<T>(old);
  }
#else
  __trap();
  (void)v;
  return *p;
#endif
}

// cp.async global -> shared. ca: cached in L1, 4/8/16 bytes; cg: L2 only, 16 bytes; _zfill: copies src_bytes
// (0..16) and zero-fills the rest. Both addresses aligned to the copy size. The data is there only after a
// cp_async_wait<N> / cp_async_wait_all of the issuing thread that covers its group, and visible to other threads
// only after a __syncthreads that follows that wait.
template <int BYTES>
__device__ __forceinline__ void cp_async_ca(void* smem, const void* gmem) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::cp_async(smem, gmem, BYTES, BYTES, "cp.async.ca");
#elif defined(FASTRNN_SM80)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(gmem), "n"(BYTES) : "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_cg16(void* smem, const void* gmem) {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::cp_async(smem, gmem, 16, 16, "cp.async.cg");
#elif defined(FASTRNN_SM80)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_cg16_zfill(void* smem, const void* gmem, int src_bytes) {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::cp_async(smem, gmem, 16, static_cast<unsigned>(src_bytes), "cp.async.cg (src-size)");
#elif defined(FASTRNN_SM80)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::cp_async_commit();
#elif defined(FASTRNN_SM80)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::cp_async_wait(N);
#elif defined(FASTRNN_SM80)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(FASTRNN_CUDA_EMU)
  ::cuda_emu::cp_async_wait_all();
#elif defined(FASTRNN_SM80)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

#undef FASTRNN_SM80
}  // namespace fastrnn
#endif  // __CUDACC__ || FASTRNN_CUDA_EMU
