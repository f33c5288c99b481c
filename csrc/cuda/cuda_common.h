// What the three CUDA drivers (lstm_cuda.cpp, gru_cuda.cpp, rnn_cuda.cpp) share: device checks, the dtype
// and launch-config plumbing to the .cu launchers, raw row pointers, and the per-sequence row indices of
// the first and last step. Host code only (the host compiler never sees the device code).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>
#include <vector>

#include "../sequence.h"
#include "launch.h"

namespace fastrnn::cuda {

inline DType dtype_of(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, op, ": input must be float32, float64, float16 or bfloat16 on CUDA, got ", t);
  return DType::kFloat;
}

// return F<D>(args...) for the runtime dtype D: the host-side dispatch to the .cu launchers, which instantiate
// each dtype in its own file (also ext_launch.h's).
#define FASTRNN_DTYPE_SWITCH(D, F, ...)                             \
  switch (D) {                                                      \
    case DType::kFloat: return F<DType::kFloat>(__VA_ARGS__);       \
    case DType::kDouble: return F<DType::kDouble>(__VA_ARGS__);     \
    case DType::kHalf: return F<DType::kHalf>(__VA_ARGS__);         \
    case DType::kBFloat16: return F<DType::kBFloat16>(__VA_ARGS__); \
  }                                                                 \
  return F<DType::kFloat>(__VA_ARGS__)

inline LaunchConfig fwd_launch_config(DType d, Cell cell, int64_t H, int64_t bs) {
  FASTRNN_DTYPE_SWITCH(d, fwd_launch_config, cell, H, bs);
}
inline void launch_fwd_step(DType d, Cell cell, const FwdStepParams& p, cudaStream_t stream) {
  FASTRNN_DTYPE_SWITCH(d, launch_fwd_step, cell, p, stream);
}
inline LaunchConfig bwd_launch_config(DType d, Cell cell, int64_t H, int64_t bs) {
  FASTRNN_DTYPE_SWITCH(d, bwd_launch_config, cell, H, bs);
}
inline void launch_bwd_step(DType d, Cell cell, const BwdStepParams& p, cudaStream_t stream) {
  FASTRNN_DTYPE_SWITCH(d, launch_bwd_step, cell, p, stream);
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": expected ", name, " on a CUDA device, got ", t.device());
}

// The device guard of an op's call on the input's device, after checking that the input is on a CUDA device (the
// dispatcher sends a call here when any argument is: a CPU input gets this error, not the guard's).
inline c10::cuda::CUDAGuard cuda_guard(const char* op, const at::Tensor& input) {
  check_cuda(op, "input", input);
  return c10::cuda::CUDAGuard(input.device());
}

// Checks a step kernel's largest launch (all B rows) against the current device's limits.
inline void check_launch(const char* op, const char* kernel, const LaunchConfig& c) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(c.threads <= prop->maxThreadsPerBlock, op, ": ", kernel, " needs ", c.threads,
              " threads per block, the device allows ", prop->maxThreadsPerBlock);
  TORCH_CHECK(c.smem_bytes <= static_cast<int64_t>(prop->sharedMemPerBlockOptin), op, ": ", kernel, " needs ",
              c.smem_bytes, " bytes of shared memory per block, the device allows ", prop->sharedMemPerBlockOptin);
  TORCH_CHECK(c.grid_x <= prop->maxGridSize[0], op, ": hidden_size too large for ", kernel, " (", c.grid_x,
              " blocks along x, the device allows ", prop->maxGridSize[0], ")");
  TORCH_CHECK(c.grid_y <= prop->maxGridSize[1], op, ": batch too large for ", kernel, " (", c.grid_y,
              " blocks along y, the device allows ", prop->maxGridSize[1], ")");
}

// Address of row `row` of a 2-D tensor with unit column stride (nullptr for an empty or undefined tensor).
inline void* row_ptr(const at::Tensor& t, int64_t row) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  return static_cast<char*>(t.data_ptr()) + row * t.stride(0) * t.element_size();
}
inline const void* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->numel() > 0 ? t->data_ptr() : nullptr;
}

// The forward-step arguments every cell sets alike for step t: its gx rows, b_hh, W_hh, the rows it starts
// from (the previous step's output rows, h0 for rows without a predecessor), its output rows and sizes.
// K = h0's width (the recurrent state: P with an LSTM projection); h_out defaults to the step's rows of
// `out` (stride out.size(1)). The caller adds the cell's own fields (c_state, ws, relu, a projection's
// h_out/ld_out).
inline FwdStepParams fwd_step_params(const SeqLayout& L, int64_t t, bool reverse, int64_t H, const at::Tensor& gx,
                                     const std::optional<at::Tensor>& b_hh, const at::Tensor& w_hh,
                                     const at::Tensor& out, const at::Tensor& h0) {
  const int64_t prev = L.prev_step(t, reverse), off = L.offsets[t];
  FwdStepParams p;
  p.n_prev = L.rows_with_prev(t, reverse);
  p.gx = row_ptr(gx, off);
  p.b_hh = ptr_or_null(b_hh);
  p.w_hh = w_hh.data_ptr();
  p.h_prev = p.n_prev > 0 ? row_ptr(out, L.offsets[prev]) : nullptr;
  p.h_init = h0.data_ptr();
  p.h_out = row_ptr(out, off);
  p.bs = L.batch_sizes[t];
  p.H = H;
  p.K = h0.size(1);
  p.ld_out = out.size(1);
  return p;
}

// For every sequence b < B, the packed row of its step at time 0 (last = false) or at time len_b - 1
// (last = true). A direction's final state hy[b] is the output row at time len_b - 1 (forward) or 0
// (reverse); the step that starts from hx[b] is the other one.
inline at::Tensor sequence_rows(const SeqLayout& L, bool last, const at::Device& device) {
  std::vector<int64_t> idx(L.B);
  for (int64_t b = 0; b < L.B; ++b) idx[b] = b;
  if (last) {
    for (int64_t t = 0; t < L.T; ++t)
      for (int64_t b = 0; b < L.batch_sizes[t]; ++b) idx[b] = L.offsets[t] + b;
  }
  return at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(device, /*non_blocking=*/true);
}

// The forward-order successor of step t (the step that starts from step t's state), or -1.
inline int64_t next_step(const SeqLayout& L, int64_t t, bool reverse) {
  const int64_t s = reverse ? t - 1 : t + 1;
  return (s >= 0 && s < L.T) ? s : -1;
}

// The elements of a tuple after its first (a bidirectional backward's second direction: its input gradient is
// added into the first's).
template <class First, class... Rest>
std::tuple<Rest...> drop_first(const std::tuple<First, Rest...>& t) {
  return std::apply([](const First&, const Rest&... rest) { return std::tuple<Rest...>(rest...); }, t);
}

}  // namespace fastrnn::cuda
