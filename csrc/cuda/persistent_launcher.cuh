// Host launchers of the persistent forward kernels (nvcc only): which kernel (tensor cores for bf16/fp16 and for
// float32 with TF32 allowed, FMA otherwise), the unit count from the device's SM count and the kernel's occupancy
// (persistent_plan.h), the shared-memory opt-in, and cudaLaunchCooperativeKernel on the
// caller's stream. Included by the pfwd_<dtype>.cu files, each of which instantiates one dtype.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "fwd_persistent_kernel.cuh"
#include "launch.h"
#include "launcher.cuh"
#include "persistent_plan.h"

namespace fastrnn::cuda {

// The kernel of (storage, cell, tensor cores): the mma kernels for bf16/fp16 and TF32 float, the FMA kernels for
// float64 and exact float32 (fwd_persistent_kernel.cuh).
template <typename S, Cell C, bool kMma>
void (*persistent_kernel_of())(FwdSeqLaunch) {
  if constexpr (kMma) {
    if constexpr (C == Cell::kLstm) return lstm_fwd_persistent_mma_kernel<S>;
    else if constexpr (C == Cell::kGru) return gru_fwd_persistent_mma_kernel<S>;
    else return rnn_fwd_persistent_mma_kernel<S>;
  } else {
    if constexpr (C == Cell::kLstm) return lstm_fwd_persistent_kernel<S>;
    else if constexpr (C == Cell::kGru) return gru_fwd_persistent_kernel<S>;
    else return rnn_fwd_persistent_kernel<S>;
  }
}

template <typename S, Cell C, bool kMma>
PersistentConfig persistent_config_for(int64_t H, int64_t K, int directions) {
  using Tr = std::conditional_t<kMma, FwdPersistentMmaTraitsFor<S, C>, FwdPersistentTraitsFor<S, C>>;
  int dev = 0, sms = 0, optin = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (!coop || K != H) return PersistentConfig{};
  const auto kernel = persistent_kernel_of<S, C, kMma>();
  const int units = choose_units(H, sms, [&](int u) {
    const int64_t smem = Tr::smem_bytes(u, K);
    if (smem > optin) return 0;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Tr::kThreads, static_cast<size_t>(smem)));
    return n;
  }, 1, directions);
  PersistentConfig c;
  if (units == 0) return c;
  c.units = units;
  c.mma = kMma;
  c.directions = directions;
  c.grid = Tr::grid(H, units);
  c.threads = Tr::kThreads;
  c.smem_bytes = Tr::smem_bytes(units, K);
  return c;
}

// Tensor cores for the 16-bit types always, for float32 when the caller allows TF32, never for float64.
template <typename S>
constexpr bool always_mma() {
  return std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>;
}

template <typename S, bool kMma>
PersistentConfig persistent_config_cell(Cell cell, int64_t H, int64_t K, int dirs) {
  switch (cell) {
    case Cell::kLstm: return persistent_config_for<S, Cell::kLstm, kMma>(H, K, dirs);
    case Cell::kGru: return persistent_config_for<S, Cell::kGru, kMma>(H, K, dirs);
    case Cell::kRnn: return persistent_config_for<S, Cell::kRnn, kMma>(H, K, dirs);
  }
  return PersistentConfig{};
}

template <DType D>
PersistentConfig fwd_persistent_config(Cell cell, int64_t H, int64_t K, bool tf32, int dirs) {
  using S = typename StorageOf<D>::type;
  if constexpr (always_mma<S>()) return persistent_config_cell<S, true>(cell, H, K, dirs);
  else if constexpr (std::is_same_v<S, float>)
    return tf32 ? persistent_config_cell<S, true>(cell, H, K, dirs)
                : persistent_config_cell<S, false>(cell, H, K, dirs);
  else return persistent_config_cell<S, false>(cell, H, K, dirs);
}

template <typename S, bool kMma>
void (*persistent_kernel_cell(Cell cell))(FwdSeqLaunch) {
  switch (cell) {
    case Cell::kLstm: return persistent_kernel_of<S, Cell::kLstm, kMma>();
    case Cell::kGru: return persistent_kernel_of<S, Cell::kGru, kMma>();
    case Cell::kRnn: return persistent_kernel_of<S, Cell::kRnn, kMma>();
  }
  return nullptr;
}

template <DType D>
cudaError_t launch_fwd_persistent(Cell cell, const FwdSeqLaunch& a, const PersistentConfig& c, cudaStream_t stream) {
  using S = typename StorageOf<D>::type;
  if (a.dir[0].T <= 0 || a.dir[0].H <= 0) return cudaSuccess;
  void (*kernel)(FwdSeqLaunch) = nullptr;
  if constexpr (always_mma<S>()) kernel = persistent_kernel_cell<S, true>(cell);
  else if constexpr (std::is_same_v<S, float>)
    kernel = c.mma ? persistent_kernel_cell<S, true>(cell) : persistent_kernel_cell<S, false>(cell);
  else kernel = persistent_kernel_cell<S, false>(cell);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(c.smem_bytes)));
  FwdSeqLaunch args = a;
  void* argv[] = {&args};
  return cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel),
      dim3(static_cast<unsigned>(c.grid), static_cast<unsigned>(c.directions)), dim3(static_cast<unsigned>(c.threads)),
      argv, static_cast<size_t>(c.smem_bytes), stream);
}

#define FASTRNN_INSTANTIATE_PERSISTENT(D)                                                        \
  template PersistentConfig fwd_persistent_config<D>(Cell, int64_t, int64_t, bool, int);         \
  template cudaError_t launch_fwd_persistent<D>(Cell, const FwdSeqLaunch&, const PersistentConfig&, \
                                                cudaStream_t)

}  // namespace fastrnn::cuda
