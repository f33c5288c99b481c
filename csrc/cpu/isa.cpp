// Run-time choice of the pointwise kernels' instruction set.
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include "pointwise.h"

namespace fastrnn::cpu {

std::atomic<bool> g_fast_math{true};

// FASTRNN_CPU_FAST_MATH=0 turns the polynomial exp/tanh of fast_math.h off (Sleef's instead).
static void refresh_fast_math() {
  const char* env = std::getenv("FASTRNN_CPU_FAST_MATH");
  g_fast_math.store(env == nullptr || std::strcmp(env, "0") != 0, std::memory_order_relaxed);
}

static Isa detected_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

bool cpu_is_amd() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool amd = [] {
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
    char vendor[13];
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    vendor[12] = '\0';
    return std::strcmp(vendor, "AuthenticAMD") == 0;
  }();
  return amd;
#else
  return false;
#endif
}

Isa active_isa() {
  static const Isa best = detected_isa();
  const char* env = std::getenv("FASTRNN_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  Isa asked;
  if (std::strcmp(env, "default") == 0) asked = Isa::kDefault;
  else if (std::strcmp(env, "avx2") == 0) asked = Isa::kAvx2;
  else if (std::strcmp(env, "avx512") == 0) asked = Isa::kAvx512;
  else TORCH_CHECK_VALUE(false, "FASTRNN_CPU_CAPABILITY must be default, avx2 or avx512, got '", env, "'");
  // Never above what the processor runs: asking for more than it has falls back to the best it has.
  return static_cast<int>(asked) < static_cast<int>(best) ? asked : best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

template <typename scalar_t>
const PointwiseKernels<scalar_t>& pointwise_kernels(Isa isa) {
  refresh_fast_math();
  switch (isa) {
    case Isa::kAvx512: return isa_avx512::kernels<scalar_t>();
    case Isa::kAvx2: return isa_avx2::kernels<scalar_t>();
    default: return isa_default::kernels<scalar_t>();
  }
}
SmallGemmFn small_gemm_kernel(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return &isa_avx512::small_gemm;
    case Isa::kAvx2: return &isa_avx2::small_gemm;
    default: return &isa_default::small_gemm;
  }
}

WtGemvFn wt_gemv_kernel(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return &isa_avx512::wt_gemv;
    case Isa::kAvx2: return &isa_avx2::wt_gemv;
    default: return &isa_default::wt_gemv;
  }
}

SmallMmFn small_mm_kernel(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return &isa_avx512::small_mm;
    case Isa::kAvx2: return &isa_avx2::small_mm;
    default: return &isa_default::small_mm;
  }
}

TransposeFn transpose_kernel(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return &isa_avx512::transpose_f32;
    case Isa::kAvx2: return &isa_avx2::transpose_f32;
    default: return &isa_default::transpose_f32;
  }
}

ActivationFn activation_kernel(Isa isa) {
  refresh_fast_math();
  switch (isa) {
    case Isa::kAvx512: return &isa_avx512::activation;
    case Isa::kAvx2: return &isa_avx2::activation;
    default: return &isa_default::activation;
  }
}

template const PointwiseKernels<float>& pointwise_kernels<float>(Isa);
template const PointwiseKernels<double>& pointwise_kernels<double>(Isa);
template const PointwiseKernels<c10::BFloat16>& pointwise_kernels<c10::BFloat16>(Isa);

}  // namespace fastrnn::cpu
