// Host launchers of the step kernels (nvcc only): launch configuration from the kernel traits, the
// shared-memory opt-in above 48 KB, the launch on the caller's stream and C10_CUDA_KERNEL_LAUNCH_CHECK.
// Included by the fwd_<dtype>.cu / bwd_<dtype>.cu files, each of which instantiates one dtype.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "bwd_step_kernel.cuh"
#include "fwd_step_kernel.cuh"
#include "launch.h"

namespace fastrnn::cuda {

template <DType D>
struct StorageOf;
template <>
struct StorageOf<DType::kFloat> {
  using type = float;
};
template <>
struct StorageOf<DType::kDouble> {
  using type = double;
};
template <>
struct StorageOf<DType::kHalf> {
  using type = __half;
};
template <>
struct StorageOf<DType::kBFloat16> {
  using type = __nv_bfloat16;
};

template <typename Traits>
LaunchConfig config_of(int64_t H, int64_t bs) {
  LaunchConfig c;
  c.grid_x = Traits::grid_x(H);
  c.grid_y = Traits::grid_y(bs);
  c.threads = Traits::kThreads;
  c.smem_bytes = Traits::smem_bytes();
  return c;
}

template <typename Params>
void launch_kernel(void (*kernel)(Params), const LaunchConfig& c, const Params& p, cudaStream_t stream) {
  if (c.grid_x <= 0 || c.grid_y <= 0) return;
  constexpr int64_t kDefaultSmem = 48 * 1024;
  if (c.smem_bytes > kDefaultSmem) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(c.smem_bytes)));
  }
  kernel<<<dim3(static_cast<unsigned>(c.grid_x), static_cast<unsigned>(c.grid_y), 1),
           dim3(static_cast<unsigned>(c.threads), 1, 1), static_cast<size_t>(c.smem_bytes), stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <DType D>
LaunchConfig fwd_launch_config(Cell cell, int64_t H, int64_t bs) {
  using S = typename StorageOf<D>::type;
  switch (cell) {
    case Cell::kLstm: return config_of<FwdTraitsFor<S, Cell::kLstm>>(H, bs);
    case Cell::kGru: return config_of<FwdTraitsFor<S, Cell::kGru>>(H, bs);
    case Cell::kRnn: return config_of<FwdTraitsFor<S, Cell::kRnn>>(H, bs);
  }
  return LaunchConfig{};
}

template <DType D>
void launch_fwd_step(Cell cell, const FwdStepParams& p, cudaStream_t stream) {
  using S = typename StorageOf<D>::type;
  if (p.bs <= 0 || p.H <= 0) return;
  const LaunchConfig c = fwd_launch_config<D>(cell, p.H, p.bs);
  switch (cell) {
    case Cell::kLstm: launch_kernel(lstm_fwd_step_kernel<S>, c, p, stream); break;
    case Cell::kGru: launch_kernel(gru_fwd_step_kernel<S>, c, p, stream); break;
    case Cell::kRnn: launch_kernel(rnn_fwd_step_kernel<S>, c, p, stream); break;
  }
}

template <DType D>
LaunchConfig bwd_launch_config(Cell cell, int64_t H, int64_t bs) {
  using S = typename StorageOf<D>::type;
  switch (cell) {
    case Cell::kLstm: return config_of<BwdTraitsFor<S, Cell::kLstm>>(H, bs);
    case Cell::kGru: return config_of<BwdTraitsFor<S, Cell::kGru>>(H, bs);
    case Cell::kRnn: return config_of<BwdTraitsFor<S, Cell::kRnn>>(H, bs);
  }
  return LaunchConfig{};
}

template <DType D>
void launch_bwd_step(Cell cell, const BwdStepParams& p, cudaStream_t stream) {
  using S = typename StorageOf<D>::type;
  if (p.bs <= 0 || p.H <= 0) return;
  const LaunchConfig c = bwd_launch_config<D>(cell, p.H, p.bs);
  switch (cell) {
    case Cell::kLstm: launch_kernel(lstm_bwd_step_kernel<S>, c, p, stream); break;
    case Cell::kGru: launch_kernel(gru_bwd_step_kernel<S>, c, p, stream); break;
    case Cell::kRnn: launch_kernel(rnn_bwd_step_kernel<S>, c, p, stream); break;
  }
}

#define FASTRNN_INSTANTIATE_FWD(D)                                                  \
  template LaunchConfig fwd_launch_config<D>(Cell, int64_t, int64_t);               \
  template void launch_fwd_step<D>(Cell, const FwdStepParams&, cudaStream_t)
#define FASTRNN_INSTANTIATE_BWD(D)                                                  \
  template LaunchConfig bwd_launch_config<D>(Cell, int64_t, int64_t);               \
  template void launch_bwd_step<D>(Cell, const BwdStepParams&, cudaStream_t)

}  // namespace fastrnn::cuda
