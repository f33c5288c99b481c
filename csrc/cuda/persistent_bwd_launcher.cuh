// Host launchers of the persistent backward kernels (bwd_persistent_kernel.cuh; nvcc only): the unit count from the
// device's SM count and the kernel's occupancy (persistent_plan.h choose_units, as the forward), the shared-memory
// opt-in, and cudaLaunchCooperativeKernel on the caller's stream. FMA for every dtype (fp32 accumulation for the
// 16-bit types, as the step kernels). Included by the pbwd_<dtype>.cu files, each of which instantiates one dtype.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "bwd_persistent_kernel.cuh"
#include "launch.h"
#include "launcher.cuh"
#include "persistent_plan.h"

namespace fastrnn::cuda {

template <typename S, Cell C>
void (*bwd_persistent_kernel_of())(BwdSeqParams) {
  if constexpr (C == Cell::kLstm) return lstm_bwd_persistent_kernel<S>;
  else if constexpr (C == Cell::kGru) return gru_bwd_persistent_kernel<S>;
  else return rnn_bwd_persistent_kernel<S>;
}

template <typename S, Cell C>
PersistentConfig bwd_persistent_config_for(int64_t H) {
  using Tr = BwdPersistentTraitsFor<S, C>;
  int dev = 0, sms = 0, optin = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (!coop) return PersistentConfig{};
  const auto kernel = bwd_persistent_kernel_of<S, C>();
  const int units = choose_units(H, sms, [&](int u) {
    const int64_t smem = Tr::smem_bytes(u, H);
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
  c.smem_bytes = Tr::smem_bytes(units, H);
  return c;
}

template <DType D>
PersistentConfig bwd_persistent_config(Cell cell, int64_t H) {
  using S = typename StorageOf<D>::type;
  switch (cell) {
    case Cell::kLstm: return bwd_persistent_config_for<S, Cell::kLstm>(H);
    case Cell::kGru: return bwd_persistent_config_for<S, Cell::kGru>(H);
    case Cell::kRnn: return bwd_persistent_config_for<S, Cell::kRnn>(H);
  }
  return PersistentConfig{};
}

template <DType D>
cudaError_t launch_bwd_persistent(Cell cell, const BwdSeqParams& p, const PersistentConfig& c, cudaStream_t stream) {
  using S = typename StorageOf<D>::type;
  if (p.T <= 0 || p.H <= 0) return cudaSuccess;
  void (*kernel)(BwdSeqParams) = cell == Cell::kLstm  ? bwd_persistent_kernel_of<S, Cell::kLstm>()
                                 : cell == Cell::kGru ? bwd_persistent_kernel_of<S, Cell::kGru>()
                                                      : bwd_persistent_kernel_of<S, Cell::kRnn>();
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(c.smem_bytes)));
  BwdSeqParams args = p;
  void* argv[] = {&args};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(c.grid)),
                                     dim3(static_cast<unsigned>(c.threads)), argv, static_cast<size_t>(c.smem_bytes),
                                     stream);
}

#define FASTRNN_INSTANTIATE_PERSISTENT_BWD(D)                                                          \
  template PersistentConfig bwd_persistent_config<D>(Cell, int64_t);                                   \
  template cudaError_t launch_bwd_persistent<D>(Cell, const BwdSeqParams&, const PersistentConfig&, cudaStream_t)

}  // namespace fastrnn::cuda
