// Host launchers of the persistent forward kernels (nvcc only): the unit count from the device's SM count and the
// kernel's occupancy (persistent_plan.h), the shared-memory opt-in, and cudaLaunchCooperativeKernel on the
// caller's stream. Included by the pfwd_<dtype>.cu files, each of which instantiates one dtype.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "fwd_persistent_kernel.cuh"
#include "launch.h"
#include "launcher.cuh"
#include "persistent_plan.h"

namespace fastrnn::cuda {

template <typename S, Cell C>
void (*persistent_kernel_of())(FwdSeqParams) {
  if constexpr (C == Cell::kLstm) return lstm_fwd_persistent_kernel<S>;
  else if constexpr (C == Cell::kGru) return gru_fwd_persistent_kernel<S>;
  else return rnn_fwd_persistent_kernel<S>;
}

template <typename S, Cell C>
PersistentConfig persistent_config_for(int64_t H, int64_t K) {
  using Tr = FwdPersistentTraitsFor<S, C>;
  int dev = 0, sms = 0, optin = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (!coop || K != H) return PersistentConfig{};
  const auto kernel = persistent_kernel_of<S, C>();
  const int units = choose_units(H, sms, [&](int u) {
    const int64_t smem = Tr::smem_bytes(u, K);
    if (smem > optin) return 0;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Tr::kThreads, static_cast<size_t>(smem)));
    return n;
  });
  PersistentConfig c;
  if (units == 0) return c;
  c.units = units;
  c.grid = Tr::grid(H, units);
  c.threads = Tr::kThreads;
  c.smem_bytes = Tr::smem_bytes(units, K);
  return c;
}

template <DType D>
PersistentConfig fwd_persistent_config(Cell cell, int64_t H, int64_t K) {
  using S = typename StorageOf<D>::type;
  switch (cell) {
    case Cell::kLstm: return persistent_config_for<S, Cell::kLstm>(H, K);
    case Cell::kGru: return persistent_config_for<S, Cell::kGru>(H, K);
    case Cell::kRnn: return persistent_config_for<S, Cell::kRnn>(H, K);
  }
  return PersistentConfig{};
}

template <DType D>
cudaError_t launch_fwd_persistent(Cell cell, const FwdSeqParams& p, const PersistentConfig& c, cudaStream_t stream) {
  using S = typename StorageOf<D>::type;
  if (p.T <= 0 || p.H <= 0) return cudaSuccess;
  void (*kernel)(FwdSeqParams) = nullptr;
  switch (cell) {
    case Cell::kLstm: kernel = persistent_kernel_of<S, Cell::kLstm>(); break;
    case Cell::kGru: kernel = persistent_kernel_of<S, Cell::kGru>(); break;
    case Cell::kRnn: kernel = persistent_kernel_of<S, Cell::kRnn>(); break;
  }
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(c.smem_bytes)));
  FwdSeqParams args = p;
  void* argv[] = {&args};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(c.grid)),
                                     dim3(static_cast<unsigned>(c.threads)), argv, static_cast<size_t>(c.smem_bytes),
                                     stream);
}

#define FASTRNN_INSTANTIATE_PERSISTENT(D)                                                        \
  template PersistentConfig fwd_persistent_config<D>(Cell, int64_t, int64_t);                    \
  template cudaError_t launch_fwd_persistent<D>(Cell, const FwdSeqParams&, const PersistentConfig&, \
                                                cudaStream_t)

}  // namespace fastrnn::cuda
