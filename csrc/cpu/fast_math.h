// Fast vectorised exp, and through it sigmoid and tanh, for the float32 gate math of the CPU kernels.
//
// ATen's Vectorized<float>::exp()/tanh() call Sleef's 1-ulp functions, about 10 ns per hidden unit of an
// LSTM step; a Cephes-style exp (range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for
// e^r, 2^n through the exponent bits) is a handful of FMAs. sigmoid(x) = 1 / (1 + exp(-x)) (cell_math.h)
// and tanh(x) = 1 - 2 / (1 + exp(2x)) then cost one exp and one division each.
//
// Accuracy (float32, against float64 torch.sigmoid/torch.tanh on a dense grid of [-100, 100], +-1e30, +-inf
// and NaN; tests/test_cpu_fast_math.py): max abs error 8.9e-8 for sigmoid and 1.8e-7 for tanh (Sleef's:
// 8.9e-8 and 6.0e-8), asserted <= 1e-6. Large |x|: the argument is clamped to [-87.3, 88.3] (e^x stays a
// normal float, 2^n a valid exponent), so exp never overflows: sigmoid(-inf) = 1/(1 + 2.2e38), a denormal
// or 0 (torch: 0), and tanh(+-inf) = +-1. NaN passes through (comparisons with NaN are false, so the clamp
// keeps it, and the polynomial propagates it).
//
// Compiled only into the AVX2 and AVX-512 kernels (the default build keeps Sleef/libm); double and the
// other types keep ATen's functions. FASTRNN_CPU_FAST_MATH=0 selects Sleef's for A/B measurements and
// tests (read on every op call, see pointwise_kernels()).
//
// Included by the per-ISA kernel headers after FASTRNN_ISA_NS is defined; everything lives in that
// namespace, so no symbol of one instruction set leaks into another's objects.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <atomic>

namespace fastrnn::cpu {
// Whether the AVX2/AVX-512 float32 kernels use the polynomial functions below (isa.cpp; refreshed from
// FASTRNN_CPU_FAST_MATH by every pointwise_kernels() call, i.e. once per op call).
extern std::atomic<bool> g_fast_math;
}  // namespace fastrnn::cpu

#ifndef FASTRNN_ISA_NS
#error "define FASTRNN_ISA_NS before including fast_math.h"
#endif

namespace fastrnn::cpu::FASTRNN_ISA_NS::fast {

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kHavePoly = true;

// e^x for float32 vectors (Cephes expf coefficients).
inline at::vec::Vectorized<float> exp_poly(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  using Vi = at::vec::Vectorized<int32_t>;
  const V hi(88.3f), lo(-87.3f);  // round(x log2 e) stays in [-126, 127]: 2^n is a normal float
  x = V::blendv(x, hi, x > hi);
  x = V::blendv(x, lo, x < lo);
  const V n = (x * V(1.44269504088896341f)).round();
  // r = x - n ln2, with ln2 split in two (the first part exact in n * C1 for |n| <= 127).
  V r = at::vec::fmadd(n, V(-0.693359375f), x);
  r = at::vec::fmadd(n, V(2.12194440e-4f), r);
  V p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, V(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r + V(1.f));  // e^r = 1 + r + r^2 p(r)
  const Vi bits = (at::vec::convert_to_int_of_same_size(n) + Vi(127)) << Vi(23);
  return p * at::vec::cast<float>(bits);
}
#else
constexpr bool kHavePoly = false;
#endif

template <typename V>
inline V exp(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) {
    if (g_fast_math.load(std::memory_order_relaxed)) return exp_poly(x);
  }
#endif
  return x.exp();
}

template <typename V>
inline V tanh(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) {
    if (g_fast_math.load(std::memory_order_relaxed)) {
      // 1 - 2/(1 + e^{2x}): exact 0 at 0, +-1 at +-inf, abs error < 4e-7 (the subtraction's rounding near
      // 0 is 6e-8 absolute, well inside the 1e-5 parity tolerance).
      return V(1.f) - V(2.f) / (V(1.f) + exp_poly(x + x));
    }
  }
#endif
  return x.tanh();
}

}  // namespace fastrnn::cpu::FASTRNN_ISA_NS::fast
