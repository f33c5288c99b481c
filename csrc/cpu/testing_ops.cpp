// Test-only operators (schemas in fastrnn.cpp, fakes in fastrnn/_testing_ops.py): they expose internals of
// the CPU kernels that no public op shows directly.
#include <torch/library.h>

#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "../sequence.h"
#include "brgemm_step.h"
#include "seq_gemm.h"
#include "step_loop.h"

namespace fastrnn::cpu {
namespace {

// Runs the drivers' row-parallel loop (for_rows) over `rows` rows wide enough for one row per task and
// returns how many distinct threads ran a chunk.
int64_t parallel_threads_used(int64_t rows) {
  TORCH_CHECK_VALUE(rows > 0, "fastrnn::_parallel_threads_used: rows must be positive, got ", rows);
  std::mutex mu;
  std::set<std::thread::id> ids;
  for_rows(rows, /*width=*/int64_t{1} << 20, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(ids.size());
}

at::Tensor cpu_activation(const at::Tensor& x, c10::string_view fn) {
  constexpr const char* op = "fastrnn::_cpu_activation";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(fn == "sigmoid" || fn == "tanh", op, ": fn must be 'sigmoid' or 'tanh', got '", fn, "'");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const auto kernel = activation_kernel(active_isa());
  const Activation a = fn == "sigmoid" ? Activation::kSigmoid : Activation::kTanh;
  kernel(xc.data_ptr<float>(), y.data_ptr<float>(), xc.numel(), a);
  return y;
}

bool cpu_brgemm_enabled(at::ScalarType dtype) { return brgemm_enabled(dtype); }

std::tuple<at::Tensor, bool> cpu_seq_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool add) {
  constexpr const char* op = "fastrnn::_cpu_seq_gemm";
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && c.dim() == 2 && a.size(1) == b.size(0) &&
                        c.size(0) == a.size(0) && c.size(1) == b.size(1),
                    op, ": needs a [M, K], b [K, N], c [M, N], got ", a.sizes(), ", ", b.sizes(), ", ", c.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == c.scalar_type() && b.scalar_type() == c.scalar_type(), op,
                   ": a, b and c must have one dtype");
  at::Tensor out = c.clone();
  const bool on_brgemm = seq_gemm_brgemm(out, a, b, add);
  if (!on_brgemm) aten_mm_into(out, a, b, add);
  return {out, on_brgemm};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CompositeExplicitAutograd, m) {
  m.impl("_parallel_threads_used", &parallel_threads_used);
  m.impl("_cpu_brgemm_enabled", &cpu_brgemm_enabled);
}
TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("_cpu_activation", &cpu_activation);
  m.impl("_cpu_seq_gemm", &cpu_seq_gemm);
}

}  // namespace fastrnn::cpu
