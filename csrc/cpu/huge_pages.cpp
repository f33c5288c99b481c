#include "huge_pages.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastrnn::cpu {
namespace {

// FASTRNN_CPU_HUGE_PAGES=0 turns the advice off (A/B measurement); unset or 1: on.
bool enabled() {
  const char* env = std::getenv("FASTRNN_CPU_HUGE_PAGES");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "1") == 0) return true;
  TORCH_CHECK_VALUE(std::strcmp(env, "0") == 0, "FASTRNN_CPU_HUGE_PAGES must be 0 or 1, got '", env, "'");
  return false;
}

}  // namespace

void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!enabled()) return;  // (read first: a bad value raises whatever the size)
  const auto bytes = static_cast<int64_t>(t.nbytes());  // (t is contiguous: at::empty made it)
  if (bytes >= kHugePageMinBytes) {
    constexpr uintptr_t kHuge = uintptr_t{1} << 21;
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
    // (advice only: where the kernel declines, the buffer is as at::empty made it)
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
}

at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

}  // namespace fastrnn::cpu
