#include "step_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../sequence.h"
#include "pointwise.h"
#include "scratch.h"

// MKL's packed GEMM (LP64 interface). Declared weak: resolved from libtorch_cpu where it exports them,
// null where it does not, in which case StepGemm never packs.
extern "C" {
__attribute__((weak)) size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
__attribute__((weak)) void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                                            const float* src, int ld, float* dest);
__attribute__((weak)) void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                                               const float* a, int lda, const float* b, int ldb, float beta,
                                               float* c, int ldc);
}

namespace fastrnn::cpu {
namespace {
// CBLAS enumerators (mkl_cblas.h).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

// A runtime switch for A/B measurement: on unless the variable is "0".
bool switched_on(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::strcmp(env, "0") != 0;
}
}  // namespace

// Below this many rows a step's GEMM is (nearly) a GEMV, which MKL runs without repacking anyway: packing
// only adds a copy of the weight. Measured, LSTM H=512 inference, packed vs at::mm: B=1 0.73x (T=10) and
// 0.90x (T=100), B=2 0.98x, B=4 1.44x, B=8 1.46x. FASTRNN_CPU_PACKED_GEMM_MIN_ROWS overrides it.
int64_t packed_gemm_min_rows() {
  const char* env = std::getenv("FASTRNN_CPU_PACKED_GEMM_MIN_ROWS");
  return env != nullptr ? std::atoll(env) : 4;
}

// Weights up to this many elements take the small-GEMM loop for GEMV-like steps (0 turns it off).
int64_t small_gemm_max() {
  const char* env = std::getenv("FASTRNN_CPU_SMALL_GEMM_MAX");
  return env != nullptr ? std::atoll(env) : 65536;
}

bool packed_gemm_enabled() {
  if (cblas_sgemm_pack_get_size == nullptr || cblas_sgemm_pack == nullptr || cblas_sgemm_compute == nullptr)
    return false;
  return switched_on("FASTRNN_CPU_PACKED_GEMM");
}

// A transposed weight takes the small-GEMM loop only for sequences of at least this many steps: its [k, n]
// copy is a pass over W that a few GEMVs do not pay for (decoding one token per call). Measured (2-core Zen 3,
// module inference, interleaved medians, without / with the copy): T=1 B=1 Elman RNN H=256 0.25 / 0.35 ms,
// LSTM H=128 0.45 / 0.56 ms; T=4 RNN H=256 0.35 / 0.40 ms; T=8 level. FASTRNN_CPU_SMALL_GEMM_MIN_STEPS
// overrides it (0: always the loop).
int64_t small_gemm_min_steps() {
  const char* env = std::getenv("FASTRNN_CPU_SMALL_GEMM_MIN_STEPS");
  return env != nullptr ? std::atoll(env) : 8;
}

bool wt_gemv_enabled() { return switched_on("FASTRNN_CPU_WT_GEMV"); }

bool mm_wt_into(const at::Tensor& a, const at::Tensor& w, at::Tensor c, bool accumulate) {
  const int64_t r = a.size(0), k = a.size(1), n = w.size(0);
  const auto dt = a.scalar_type();
  if (r > kWtGemvMaxRows || (dt != at::kFloat && dt != at::kBFloat16) || w.scalar_type() != dt ||
      c.scalar_type() != dt || !w.is_contiguous() || a.stride(1) != 1 || c.stride(1) != 1 || !wt_gemv_enabled())
    return false;
  TORCH_INTERNAL_ASSERT(w.size(1) == k && c.size(0) == r && c.size(1) == n);
  if (r == 0 || n == 0) return true;
  // (bf16 rows to fp32 once here: the loop would convert them again for every 4 output columns)
  const at::Tensor af = dt == at::kBFloat16 ? a.to(at::kFloat) : a;
  TORCH_INTERNAL_ASSERT(af.stride(1) == 1);
  const WtGemvArgs g{af.data_ptr<float>(), af.stride(0), w.data_ptr(), k, c.data_ptr(), c.stride(0), r, k,
                     accumulate, dt == at::kBFloat16};
  const WtGemvFn gemv = wt_gemv_kernel(active_isa());
  // the work: the weight's bytes times the rows that share each of its loads
  const int64_t work = n * k * static_cast<int64_t>(w.element_size()) * r;
  if (work < kWtGemvParallelBytes) {
    gemv(g, 0, n);
    return true;
  }
  // columns in groups of 4 (the loop's unit), at least 128 KB-rows of work per task
  const int64_t quads = (n + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / (4 * k * w.element_size() * r));
  at::parallel_for(0, quads, grain, [&](int64_t q0, int64_t q1) { gemv(g, 4 * q0, std::min(n, 4 * q1)); });
  return true;
}

bool small_mm_into(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add) {
  if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || c.scalar_type() != at::kFloat ||
      a.dim() != 2 || b.dim() != 2 || c.dim() != 2 || b.stride(1) != 1 || c.stride(1) != 1)
    return false;
  const int64_t rows = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_INTERNAL_ASSERT(b.size(0) == k && c.size(0) == rows && c.size(1) == n);
  SmallMmKind kind;
  if (rows <= kSmallMmMaxRows && a.stride(1) == 1)
    kind = SmallMmKind::kNarrow;
  else if (k <= kSmallMmMaxRows && a.stride(0) == 1)
    kind = SmallMmKind::kOuter;
  else
    return false;
  if (!switched_on("FASTRNN_CPU_SMALL_MM")) return false;
  if (rows == 0 || n == 0) return true;
  if (k == 0) {
    if (!add) c.zero_();
    return true;
  }
  const bool narrow = kind == SmallMmKind::kNarrow;
  const SmallMmArgs g{kind, a.data_ptr<float>(), narrow ? a.stride(0) : a.stride(1), b.data_ptr<float>(),
                      b.stride(0), c.data_ptr<float>(), c.stride(0), rows, k, n, add};
  const SmallMmFn fn = small_mm_kernel(active_isa());
  // The parallel unit: blocks of 48 output columns (kNarrow) or single output rows (kOuter); tasks of at least
  // 64K FMAs.
  const int64_t width = narrow ? 48 : 1, total = narrow ? n : rows;
  const int64_t fmas_per_unit = narrow ? rows * k * 48 : k * n;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / fmas_per_unit);
  at::parallel_for(0, (total + width - 1) / width, grain,
                   [&](int64_t u0, int64_t u1) { fn(g, u0 * width, std::min(total, u1 * width)); });
  return true;
}

at::Tensor mm_wt(const at::Tensor& a, const at::Tensor& w) {
  if (a.size(0) <= kWtGemvMaxRows && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16)) {
    at::Tensor c = at::empty({a.size(0), w.size(0)}, a.options());
    if (mm_wt_into(a, w, c, false)) return c;
  }
  return at::mm(a, w.t());
}

StepGemm::StepGemm(const at::Tensor& w, bool transpose_w, int64_t rows, int64_t max_pack_bytes, int64_t steps)
    : w_(transpose_w ? w.t() : w), rows_(rows), k_(w_.size(0)), n_(w_.size(1)) {
  if (w.scalar_type() == at::kFloat && rows < packed_gemm_min_rows() && k_ * n_ <= small_gemm_max() && k_ > 0 &&
      n_ > 0 && (w_.is_contiguous() || steps >= small_gemm_min_steps())) {
    small_ = w_.contiguous();
    return;
  }
  // Few-row steps, and the one step of a call with a small batch, read W in place (mm_wt_into): MKL's packing
  // would not serve the former and costs the latter a copy of W.
  const bool float_or_bf16 = w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16;
  const int64_t few_rows = w.scalar_type() == at::kFloat ? std::min<int64_t>(4, packed_gemm_min_rows()) : 4;
  if (transpose_w && w.is_contiguous() && float_or_bf16 &&
      (rows < few_rows || (steps == 1 && rows <= kWtGemvMaxRows))) {
    wt_ = w;
    return;
  }
  // The one step of a backward with a small batch (a cell's training step): dG @ W_hh with W read in place by
  // small_mm_into, not packed by MKL to be read once.
  if (!transpose_w && w.scalar_type() == at::kFloat && steps == 1 && rows <= kSmallMmMaxRows && w.stride(1) == 1) {
    narrow_ = w;
    return;
  }
  const bool fits_int = rows < INT32_MAX && k_ < INT32_MAX && n_ < INT32_MAX;
  if (w.scalar_type() != at::kFloat || !packed_gemm_enabled() || !fits_int || rows < packed_gemm_min_rows() ||
      k_ == 0 || n_ == 0)
    return;
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, rows, n_, k_);
  if (bytes > static_cast<size_t>(std::max<int64_t>(0, max_pack_bytes))) return;
  const at::Tensor wc = w.contiguous();
  packed_ = scratch_empty(static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float)), at::kFloat);
  cblas_sgemm_pack(kRowMajor, kBMatrix, transpose_w ? kTrans : kNoTrans, rows, n_, k_, 1.0f,
                   wc.data_ptr<float>(), wc.size(1), packed_.data_ptr<float>());
}

void StepGemm::run(const at::Tensor& a, at::Tensor c, bool accumulate) const {
  const int64_t r = a.size(0);
  if (r == 0) return;
  if (small_.defined() && a.stride(1) == 1 && c.stride(1) == 1) {  // rows <= rows_ < 4: GEMV-like
    const SmallGemmArgs g{a.data_ptr<float>(), a.stride(0), small_.data_ptr<float>(), c.data_ptr<float>(),
                          c.stride(0), k_, n_, accumulate};
    small_gemm_kernel(active_isa())(g, 0, r);
    return;
  }
  if (wt_.defined() && mm_wt_into(a, wt_, c, accumulate)) return;
  if (narrow_.defined() && small_mm_into(c, a, narrow_, accumulate)) return;
  if (packed_.defined() && r == rows_ && a.stride(1) == 1 && c.stride(1) == 1) {
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, r, n_, k_, a.data_ptr<float>(), a.stride(0),
                        packed_.data_ptr<float>(), n_, accumulate ? 1.0f : 0.0f, c.data_ptr<float>(), c.stride(0));
  } else if (accumulate) {
    c.addmm_(a, w_);
  } else {
    mm_into(c, a, w_);
  }
}

}  // namespace fastrnn::cpu
