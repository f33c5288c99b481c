// Test-only operators (schemas in fastrnn.cpp, fakes in fastrnn/_testing_ops.py): they expose internals of
// the CPU kernels that no public op shows directly.
#include <torch/library.h>

#include <exception>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "../sequence.h"
#include "brgemm_step.h"
#include "scratch.h"
#include "seq_gemm.h"
#include "step_gemm.h"
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

// x.t() made by the active instruction set's transpose kernel (pointwise.h), into a buffer whose rows are
// `pad` floats longer than they need to be (strided source and destination, as pack_gate_blocks uses it).
at::Tensor cpu_transpose(const at::Tensor& x, int64_t pad) {
  constexpr const char* op = "fastrnn::_cpu_transpose";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.stride(1) == 1, op, ": x must be 2-D with unit column stride, got sizes ",
                    x.sizes(), " strides ", x.strides());
  TORCH_CHECK_VALUE(pad >= 0, op, ": pad must be non-negative, got ", pad);
  const int64_t m = x.size(0), n = x.size(1);
  at::Tensor out = at::full({n, m + pad}, -1.0f, x.options());
  transpose_kernel(active_isa())(x.data_ptr<float>(), x.stride(0), out.data_ptr<float>(), m + pad, m, n);
  return out;
}

// The scratch pool (scratch.h) on a new thread (an empty pool): two buffers of `bytes` taken at once must be
// distinct, and one taken after the first is released must be the first's memory. Returns both answers.
std::tuple<bool, bool> cpu_scratch_probe(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes > 0, "fastrnn::_cpu_scratch_probe: bytes must be positive, got ", bytes);
  bool distinct = false, reused = false;
  std::exception_ptr error;
  std::thread([&] {
    try {
      at::Tensor a = scratch_empty(bytes, at::kByte);
      const at::Tensor b = scratch_empty(bytes, at::kByte);
      const void* first = a.data_ptr();
      distinct = first != b.data_ptr();
      a = at::Tensor();
      reused = scratch_empty(bytes, at::kByte).data_ptr() == first;
    } catch (...) {
      error = std::current_exception();  // (a bad FASTRNN_CPU_SCRATCH: raised on the caller's thread)
    }
  }).join();
  if (error) std::rethrow_exception(error);
  return {distinct, reused};
}

bool cpu_brgemm_enabled(at::ScalarType dtype) { return brgemm_enabled(dtype); }

// c (+)= a @ b through `product`, at::mm where it declines: (the result in a copy of c, whether `product` served).
std::tuple<at::Tensor, bool> gemm_through(const char* op, bool (*product)(at::Tensor, const at::Tensor&,
                                                                          const at::Tensor&, bool),
                                          const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool add) {
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && c.dim() == 2 && a.size(1) == b.size(0) &&
                        c.size(0) == a.size(0) && c.size(1) == b.size(1),
                    op, ": needs a [M, K], b [K, N], c [M, N], got ", a.sizes(), ", ", b.sizes(), ", ", c.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == c.scalar_type() && b.scalar_type() == c.scalar_type(), op,
                   ": a, b and c must have one dtype");
  at::Tensor out = c.clone();
  const bool served = product(out, a, b, add);
  if (!served) aten_mm_into(out, a, b, add);
  return {out, served};
}

std::tuple<at::Tensor, bool> cpu_seq_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool add) {
  return gemm_through("fastrnn::_cpu_seq_gemm", &seq_gemm_brgemm, a, b, c, add);
}

std::tuple<at::Tensor, bool> cpu_small_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool add) {
  return gemm_through("fastrnn::_cpu_small_mm", &small_mm_into, a, b, c, add);
}

std::tuple<at::Tensor, bool> cpu_mm_wt(const at::Tensor& a, const at::Tensor& w) {
  constexpr const char* op = "fastrnn::_cpu_mm_wt";
  TORCH_CHECK_VALUE(a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(1), op, ": needs a [M, K] and w [N, K], got ",
                    a.sizes(), ", ", w.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == w.scalar_type(), op, ": a and w must have one dtype");
  at::Tensor out = at::empty({a.size(0), w.size(0)}, a.options());
  const bool in_place = mm_wt_into(a.contiguous(), w.contiguous(), out, /*accumulate=*/false);
  if (!in_place) at::mm_out(out, a, w.t());
  return {out, in_place};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CompositeExplicitAutograd, m) {
  m.impl("_parallel_threads_used", &parallel_threads_used);
  m.impl("_cpu_brgemm_enabled", &cpu_brgemm_enabled);
  m.impl("_cpu_scratch_probe", &cpu_scratch_probe);
}
TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("_cpu_activation", &cpu_activation);
  m.impl("_cpu_seq_gemm", &cpu_seq_gemm);
  m.impl("_cpu_small_mm", &cpu_small_mm);
  m.impl("_cpu_transpose", &cpu_transpose);
  m.impl("_cpu_mm_wt", &cpu_mm_wt);
}

}  // namespace fastrnn::cpu
