// Host interface of the launchers of the regularised cells' pointwise step kernels (ext_step_kernel.cuh): what
// the ATen drivers lstm_ext_cuda.cpp / gru_ext_cuda.cpp (host compiler only) call. The launchers live in
// ext_<dtype>.cu, one storage dtype per file (ext_launcher.cuh), so that nvcc compiles them in parallel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ext_params.h"
#include "launch.h"

namespace fastrnn::cuda {

// The launch configuration of a step of `bs` rows: grid_x = bs blocks (one per row), 256 threads, the block
// reductions' shared memory. The same for every kernel of ext_step_kernel.cuh.
template <DType D>
LaunchConfig ext_launch_config(int64_t bs);

// One launch of the kernel of `p`'s type (lstm_ext_fwd/bwd, gru_ext_fwd/bwd, ext_mix, ext_split) on `stream`;
// a no-op when p.bs == 0 or the row width (H, or D for mix/split) is 0.
template <DType D>
void launch_ext(const LstmExtFwdParams& p, cudaStream_t stream);
template <DType D>
void launch_ext(const LstmExtBwdParams& p, cudaStream_t stream);
template <DType D>
void launch_ext(const GruExtFwdParams& p, cudaStream_t stream);
template <DType D>
void launch_ext(const GruExtBwdParams& p, cudaStream_t stream);
template <DType D>
void launch_ext(const ExtMixParams& p, cudaStream_t stream);
template <DType D>
void launch_ext(const ExtSplitParams& p, cudaStream_t stream);

}  // namespace fastrnn::cuda

// The same, dispatched on the runtime dtype (cuda_common.h's FASTRNN_DTYPE_SWITCH), and the host helpers both
// ext drivers share: host compiler only (the ATen drivers). Under nvcc these bodies would instantiate every
// dtype's kernels in every ext_<dtype>.cu.
#if !defined(__CUDACC__)
#include "cuda_common.h"

namespace fastrnn::cuda {

inline LaunchConfig ext_launch_config(DType d, int64_t bs) { FASTRNN_DTYPE_SWITCH(d, ext_launch_config, bs); }
template <typename Params>
void launch_ext(DType d, const Params& p, cudaStream_t s) {
  FASTRNN_DTYPE_SWITCH(d, launch_ext, p, s);
}

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}
inline const void* ptr_of(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.const_data_ptr() : nullptr;
}

// The zoneout weights of the step starting at row `off` (ExtZoneout): rows of the contiguous [N, D] tensor, the
// one-element eval constant (read on the device: no host synchronisation), or none.
inline ExtZoneout zoneout_at(const at::Tensor& k, int64_t off, int64_t D) {
  ExtZoneout z;
  if (!k.defined()) return z;
  if (k.numel() == 1) {
    z.k = k.const_data_ptr();
    z.scalar = 1;
  } else {
    z.k = static_cast<const char*>(k.const_data_ptr()) + off * D * static_cast<int64_t>(k.element_size());
  }
  return z;
}

// The gradient reaching the previous state of a step's `bs` rows through W_hh, (da[off, off + bs) @ w_hh) * m,
// added to what dh_state holds (the direct terms the step kernel left); `carry` [B, *] is scratch for the mask.
inline void add_recurrent_grad(const at::Tensor& dh_state, const at::Tensor& da, int64_t off, int64_t bs,
                               const at::Tensor& w_hh, const at::Tensor& mask, const at::Tensor& carry) {
  if (mask.defined()) {
    mm_into(carry.narrow(0, 0, bs), da.narrow(0, off, bs), w_hh);
    dh_state.narrow(0, 0, bs).addcmul_(carry.narrow(0, 0, bs), mask.narrow(0, 0, bs));
  } else {
    dh_state.narrow(0, 0, bs).addmm_(da.narrow(0, off, bs), w_hh);
  }
}

}  // namespace fastrnn::cuda
#endif  // !__CUDACC__
