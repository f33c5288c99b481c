#include "scratch.h"

#include <c10/util/strides.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace fastrnn::cpu {
namespace {

// FASTRNN_CPU_SCRATCH=0 turns the pool off (A/B measurement); unset or 1: on.
bool enabled() {
  const char* env = std::getenv("FASTRNN_CPU_SCRATCH");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "1") == 0) return true;
  TORCH_CHECK_VALUE(std::strcmp(env, "0") == 0, "FASTRNN_CPU_SCRATCH must be 0 or 1, got '", env, "'");
  return false;
}

// Byte buffers; a buffer is free when the pool's tensor is the only holder of its storage.
struct Pool {
  std::vector<at::Tensor> buffers;
  int64_t bytes = 0;
};

bool is_free(const at::Tensor& b) { return b.storage().use_count() == 1; }

at::Tensor typed_view(const at::Tensor& bytes_buf, int64_t numel, at::ScalarType dtype) {
  return bytes_buf.narrow(0, 0, numel * static_cast<int64_t>(c10::elementSize(dtype))).view(dtype);
}

}  // namespace

at::Tensor scratch_empty(int64_t numel, at::ScalarType dtype) {
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  const bool on = enabled();  // (read first: a bad value raises whatever the size)
  if (!on || bytes < kScratchMinBytes || bytes > kScratchMaxBytes) return at::empty({numel}, at::dtype(dtype));
  thread_local Pool pool;
  // The smallest free buffer that holds it.
  at::Tensor* best = nullptr;
  for (at::Tensor& b : pool.buffers)
    if (is_free(b) && b.numel() >= bytes && (best == nullptr || b.numel() < best->numel())) best = &b;
  if (best != nullptr) return typed_view(*best, numel, dtype);
  // None: a new buffer (rounded up to 64 KB, so sizes that creep up between calls do not each make one), added
  // while the pool has room, else in place of the largest free one (every free one is too small).
  const int64_t size = (bytes + (int64_t{1} << 16) - 1) >> 16 << 16;
  at::Tensor fresh = at::empty({size}, at::dtype(at::kByte));
  auto victim = pool.buffers.end();
  for (auto it = pool.buffers.begin(); it != pool.buffers.end(); ++it)
    if (is_free(*it) && (victim == pool.buffers.end() || it->numel() > victim->numel())) victim = it;
  if (pool.buffers.size() < kScratchPoolBuffers && pool.bytes + size <= kScratchPoolBytes) {
    pool.buffers.push_back(fresh);
    pool.bytes += size;
  } else if (victim != pool.buffers.end() && pool.bytes - victim->numel() + size <= kScratchPoolBytes) {
    pool.bytes += size - victim->numel();
    *victim = fresh;
  }  // (else not pooled: at::empty's memory, freed with the caller's tensor)
  return typed_view(fresh, numel, dtype);
}

at::Tensor scratch_result(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  const at::Tensor buf = scratch_empty(c10::multiply_integers(sizes), c10::typeMetaToScalarType(options.dtype()));
  at::Tensor out = at::empty({0}, options);
  out.set_(buf.storage(), 0, sizes, c10::contiguous_strides(sizes));
  return out;
}

}  // namespace fastrnn::cpu
