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
// The half types are included and specialised only under nvcc: the emulation instantiates the kernels for
// float and double.
#pragma once

#include "../cell_math.h"  // FASTRNN_HD

#if defined(__CUDACC__)
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

#if defined(__CUDACC__)
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
