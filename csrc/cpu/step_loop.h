// What the three CPU cells' drivers share: the dtype dispatch, the row-parallel launch of a pointwise
// step, and raw pointers into optional tensors.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../sequence.h"
#include "pointwise.h"
#include "step_gemm.h"

namespace fastrnn::cpu {

// Dispatches on the CPU dtypes the kernels are built for, with a clear error for the others.
#define FASTRNN_CPU_DISPATCH(TYPE, OP, ...)                                                               \
  [&] {                                                                                                    \
    TORCH_CHECK_TYPE((TYPE) != at::kHalf, OP, ": float16 is not supported on the CPU (use bfloat16 or "     \
                     "float32); it is supported on CUDA");                                                 \
    return AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, OP, __VA_ARGS__);                          \
  }()

// Runs fn(b0, b1) over the rows [0, rows) of a step, in parallel once a step holds enough work
// (`width` elements per row) to pay for waking the other threads.
template <typename F>
inline void for_rows(int64_t rows, int64_t width, const F& fn) {
  constexpr int64_t kElementsPerTask = 16384;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, width));
  at::parallel_for(0, rows, grain, fn);
}

template <typename T>
inline T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
// Raw pointer of an optional bias; the kernels read it as a dense row, so it must be contiguous.
template <typename T>
inline const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return nullptr;
  TORCH_INTERNAL_ASSERT(t->is_contiguous(), "fastrnn: bias rows must be made contiguous by the driver");
  return t->data_ptr<T>();
}
inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

}  // namespace fastrnn::cpu
