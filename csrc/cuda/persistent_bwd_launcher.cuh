// Host launchers of the persistent backward kernels (bwd_persistent_kernel.cuh; nvcc only): which kernel (tensor
// cores for bf16/fp16 and for float32 with TF32 allowed where they fit, FMA otherwise: persistent_plan.h
// choose_bwd_kernel), the unit count from the device's SM count and the kernel's occupancy (choose_units, as the
// forward), the shared-memory opt-in, and cudaLaunchCooperativeKernel on the caller's stream. Included by the
// pbwd_<dtype>.cu files, each of which instantiates one dtype.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "bwd_persistent_kernel.cuh"
#include "launch.h"
#include "launcher.cuh"
#include "persistent_plan.h"

namespace fastrnn::cuda {

// The kernel of (storage, cell, tensor cores): the mma kernels exist for bf16/fp16 and float (TF32), not float64.
template <typename S, Cell C, bool kMma>
void (*bwd_persistent_kernel_of())(BwdSeqLaunch) {
  if constexpr (kMma) {
    static_assert(!std::is_same_v<S, double>, "float64 has no tensor-core backward");
    if constexpr (C == Cell::kLstm) return lstm_bwd_persistent_mma_kernel<S>;
    else if constexpr (C == Cell::kGru) return gru_bwd_persistent_mma_kernel<S>;
    else return rnn_bwd_persistent_mma_kernel<S>;
  } else {
    if constexpr (C == Cell::kLstm) return lstm_bwd_persistent_kernel<S>;
    else if constexpr (C == Cell::kGru) return gru_bwd_persistent_kernel<S>;
    else return rnn_bwd_persistent_kernel<S>;
  }
}

// Blocks per SM of one kernel with `units` units per block (0 when its shared memory exceeds the opt-in limit);
// sets the kernel's dynamic shared-memory limit as a side effect, as the occupancy query needs.
template <typename S, Cell C, bool kMma>
int bwd_blocks_per_sm(int units, int64_t H, int optin) {
  using Tr = std::conditional_t<kMma, BwdPersistentMmaTraitsFor<S, C>, BwdPersistentTraitsFor<S, C>>;
  const auto kernel = bwd_persistent_kernel_of<S, C, kMma>();
  const int64_t smem = Tr::smem_bytes(units, H);
  if (smem > optin) return 0;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Tr::kThreads, static_cast<size_t>(smem)));
  return n;
}

// Tensor cores for the 16-bit types always, for float32 when the caller allows TF32 (tf32), never for float64.
template <typename S>
constexpr bool has_bwd_mma() {
  return !std::is_same_v<S, double>;
}

template <typename S, Cell C>
PersistentConfig bwd_persistent_config_for(int64_t H, bool tf32, int directions) {
  int dev = 0, sms = 0, optin = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (!coop) return PersistentConfig{};
  const bool mma_allowed = has_bwd_mma<S>() && (!std::is_same_v<S, float> || tf32);
  const BwdKernelChoice choice = choose_bwd_kernel(
      H, sms, mma_allowed, BwdPersistentMmaTraitsFor<S, C>::kMinUnits,
      [&](int u) {
        if constexpr (has_bwd_mma<S>()) return bwd_blocks_per_sm<S, C, true>(u, H, optin);
        else return 0;
      },
      [&](int u) { return bwd_blocks_per_sm<S, C, false>(u, H, optin); }, directions);
  PersistentConfig c;
  if (choice.units == 0) return c;
  c.units = choice.units;
  c.mma = choice.mma;
  c.directions = directions;
  c.grid = BwdPersistentTraitsFor<S, C>::grid(H, c.units);
  c.threads = kPersistentThreads;
  if constexpr (has_bwd_mma<S>())
    if (c.mma) {
      c.smem_bytes = BwdPersistentMmaTraitsFor<S, C>::smem_bytes(c.units, H);
      return c;
    }
  c.smem_bytes = BwdPersistentTraitsFor<S, C>::smem_bytes(c.units, H);
  return c;
}

template <DType D>
PersistentConfig bwd_persistent_config(Cell cell, int64_t H, bool tf32, int dirs) {
  using S = typename StorageOf<D>::type;
  switch (cell) {
    case Cell::kLstm: return bwd_persistent_config_for<S, Cell::kLstm>(H, tf32, dirs);
    case Cell::kGru: return bwd_persistent_config_for<S, Cell::kGru>(H, tf32, dirs);
    case Cell::kRnn: return bwd_persistent_config_for<S, Cell::kRnn>(H, tf32, dirs);
  }
  return PersistentConfig{};
}

template <typename S, bool kMma>
void (*bwd_persistent_kernel_cell(Cell cell))(BwdSeqLaunch) {
  switch (cell) {
    case Cell::kLstm: return bwd_persistent_kernel_of<S, Cell::kLstm, kMma>();
    case Cell::kGru: return bwd_persistent_kernel_of<S, Cell::kGru, kMma>();
    case Cell::kRnn: return bwd_persistent_kernel_of<S, Cell::kRnn, kMma>();
  }
  return nullptr;
}

template <DType D>
cudaError_t launch_bwd_persistent(Cell cell, const BwdSeqLaunch& a, const PersistentConfig& c, cudaStream_t stream) {
  using S = typename StorageOf<D>::type;
  if (a.dir[0].T <= 0 || a.dir[0].H <= 0) return cudaSuccess;
  void (*kernel)(BwdSeqLaunch) = bwd_persistent_kernel_cell<S, false>(cell);
  if constexpr (has_bwd_mma<S>())
    if (c.mma) kernel = bwd_persistent_kernel_cell<S, true>(cell);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(c.smem_bytes)));
  BwdSeqLaunch args = a;
  void* argv[] = {&args};
  return cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel),
      dim3(static_cast<unsigned>(c.grid), static_cast<unsigned>(c.directions)), dim3(static_cast<unsigned>(c.threads)),
      argv, static_cast<size_t>(c.smem_bytes), stream);
}

#define FASTRNN_INSTANTIATE_PERSISTENT_BWD(D)                                                          \
  template PersistentConfig bwd_persistent_config<D>(Cell, int64_t, bool, int);                        \
  template cudaError_t launch_bwd_persistent<D>(Cell, const BwdSeqLaunch&, const PersistentConfig&, cudaStream_t)

}  // namespace fastrnn::cuda
