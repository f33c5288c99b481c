// The in-place gate activation of the CPU drivers of the regularised cells (gru_ext_cpu.cpp, lstm_ext_cpu.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "pointwise.h"

namespace fastrnn::cpu {

// y = sigmoid(y) or tanh(y) over n elements in place: float32 (also bfloat16's accumulation dtype) through
// the step kernels' vectorised activations of the active instruction set (pointwise.h: FASTRNN_CPU_CAPABILITY
// and FASTRNN_CPU_FAST_MATH apply, as in the other ops), double with libm.
template <typename acc>
inline void activate(ActivationFn act, acc* y, int64_t n, Activation fn) {
  if constexpr (std::is_same_v<acc, float>) {
    act(y, y, n, fn);
  } else {
    for (int64_t i = 0; i < n; ++i)
      y[i] = fn == Activation::kSigmoid ? acc(1) / (acc(1) + std::exp(-y[i])) : std::tanh(y[i]);
  }
}

}  // namespace fastrnn::cpu
