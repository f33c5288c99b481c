// Host launchers of the regularised cells' pointwise step kernels (nvcc only): the launch configuration from
// ExtTraits (one block of 256 threads per row of the step), the launch on the caller's stream and
// C10_CUDA_KERNEL_LAUNCH_CHECK (launcher.cuh's launch_kernel). Included by ext_<dtype>.cu, each of which
// instantiates one dtype.
#pragma once

#include "ext_launch.h"
#include "ext_step_kernel.cuh"
#include "launcher.cuh"

namespace fastrnn::cuda {

template <DType D>
LaunchConfig ext_launch_config(int64_t bs) {
  using Tr = ExtTraits<acc_t<typename StorageOf<D>::type>>;
  LaunchConfig c;
  c.grid_x = Tr::grid_x(bs);
  c.grid_y = 1;
  c.threads = Tr::kThreads;
  c.smem_bytes = Tr::smem_bytes();
  return c;
}

template <DType D, typename Params>
void launch_ext_kernel(void (*kernel)(Params), const Params& p, int64_t width, cudaStream_t stream) {
  if (p.bs <= 0 || width <= 0) return;
  launch_kernel(kernel, ext_launch_config<D>(p.bs), p, stream);
}

// Each params type's kernel and row width.
template <DType D>
void launch_ext(const LstmExtFwdParams& p, cudaStream_t stream) {
  launch_ext_kernel<D>(lstm_ext_fwd_kernel<typename StorageOf<D>::type>, p, p.H, stream);
}
template <DType D>
void launch_ext(const LstmExtBwdParams& p, cudaStream_t stream) {
  launch_ext_kernel<D>(lstm_ext_bwd_kernel<typename StorageOf<D>::type>, p, p.H, stream);
}
template <DType D>
void launch_ext(const GruExtFwdParams& p, cudaStream_t stream) {
  launch_ext_kernel<D>(gru_ext_fwd_kernel<typename StorageOf<D>::type>, p, p.H, stream);
}
template <DType D>
void launch_ext(const GruExtBwdParams& p, cudaStream_t stream) {
  launch_ext_kernel<D>(gru_ext_bwd_kernel<typename StorageOf<D>::type>, p, p.H, stream);
}
template <DType D>
void launch_ext(const ExtMixParams& p, cudaStream_t stream) {
  launch_ext_kernel<D>(ext_mix_kernel<typename StorageOf<D>::type>, p, p.D, stream);
}
template <DType D>
void launch_ext(const ExtSplitParams& p, cudaStream_t stream) {
  launch_ext_kernel<D>(ext_split_kernel<typename StorageOf<D>::type>, p, p.D, stream);
}

#define FASTRNN_INSTANTIATE_EXT(D)                                     \
  template LaunchConfig ext_launch_config<D>(int64_t);                 \
  template void launch_ext<D>(const LstmExtFwdParams&, cudaStream_t); \
  template void launch_ext<D>(const LstmExtBwdParams&, cudaStream_t); \
  template void launch_ext<D>(const GruExtFwdParams&, cudaStream_t);  \
  template void launch_ext<D>(const GruExtBwdParams&, cudaStream_t);  \
  template void launch_ext<D>(const ExtMixParams&, cudaStream_t);     \
  template void launch_ext<D>(const ExtSplitParams&, cudaStream_t)

}  // namespace fastrnn::cuda
