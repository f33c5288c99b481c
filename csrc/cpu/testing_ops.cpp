// Test-only operators (schemas in fastrnn.cpp, fakes in fastrnn/_testing_ops.py): they expose internals of
// the CPU kernels that no public op shows directly.
#include <torch/library.h>

#include <mutex>
#include <set>
#include <thread>

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

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CompositeExplicitAutograd, m) {
  m.impl("_parallel_threads_used", &parallel_threads_used);
}

}  // namespace fastrnn::cpu
