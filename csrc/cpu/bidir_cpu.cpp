// The two directions of a bidirectional layer, in one call: at once, one per thread (issue 9: "bidirectional:
// the two directions on different threads"), where that pays; in turn elsewhere. At once, each direction runs
// the one-direction kernel (cells_cpu.h) on one thread: no per-step barrier (a one-direction call with fewer
// than 16 batch rows splits its hidden blocks over the threads and meets them after every step) and each core
// keeps its own direction's weights in its L2. The numbers are those of the one-direction ops (the same code,
// on fewer threads): the ops' results are two one-direction calls' (tests/test_cpu_bidir.py), except that the
// backward returns the input's whole gradient, the sum of both directions' parts.
//
// At once when the caller is not already in a parallel region, torch runs exactly two threads (the 2-core
// machines this project measures on: one direction per core) and the batch has fewer than 16 rows. From 16 rows
// a one-direction call splits the batch rows without barriers, and at once measured level with in turn while it
// holds both directions' temporaries at the same time (a bidirectional GRU training step at B=128,
// tests/test_memory.py: 1.14x torch.nn's peak memory, 0.86x in turn). In turn, the second direction's backward
// adds its input gradient into the first's instead of allocating its own (sequence.h, GateGradBuffer), so the
// backward's peak is the one-direction ops'. With more than two threads each direction keeps all of them in
// turn (the inner loops do not nest thread teams); with one, in turn.
// FASTRNN_CPU_BIDIR=concurrent|sequential forces either (A/B measurement, tests), =auto or unset: the rule
// above; any other value is a ValueError.
//
// Measured (2-core AMD EPYC Zen 3, float32, interleaved medians of 15, at once against in turn;
// `python benchmarks/ab_cpu.py --cases lstm:100:1:256:256:1:bi,... --variants torch,fast,
// fast:FASTRNN_CPU_BIDIR=sequential`), T=100 I=H=256: B=1 LSTM 1.43x inference / 1.44x training, GRU 1.25x /
// 1.21x; B=8 LSTM 0.98x / 1.05x; forced at B=16, GRU 1.06x / 1.08x, and at the benchmark's B=64 two-layer
// stacks level within the noise (0.97x to 1.16x).
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/ParallelGuard.h>
#include <omp.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cells_cpu.h"

namespace fastrnn::cpu {
namespace {

constexpr int64_t kAtOnceMaxRows = 15;

bool at_once(int64_t rows) {
  const char* env = std::getenv("FASTRNN_CPU_BIDIR");
  bool forced = false;
  if (env != nullptr && *env != '\0' && std::strcmp(env, "auto") != 0) {
    const bool sequential = std::strcmp(env, "sequential") == 0;
    TORCH_CHECK_VALUE(sequential || std::strcmp(env, "concurrent") == 0,
                      "FASTRNN_CPU_BIDIR must be auto, concurrent or sequential, got '", env, "'");
    if (sequential) return false;
    forced = true;
  }
  at::internal::lazy_init_num_threads();
  return !at::in_parallel_region() && at::get_num_threads() == 2 && (forced || rows <= kAtOnceMaxRows);
}

// Runs fwd() and rev() on two threads and returns both results. The second thread runs with the caller's
// thread-local state (grad mode, dispatch key exclusions, autocast off: what the kernels' ATen calls must
// see), and both as "in a parallel region", so the kernels' own parallel loops and GEMMs stay on their
// thread. An exception in either is rethrown after both finished (the forward direction's, if both).
template <typename F, typename R>
std::pair<std::invoke_result_t<F>, std::invoke_result_t<R>> on_two_threads(F&& fwd, R&& rev) {
  std::optional<std::invoke_result_t<F>> a;
  std::optional<std::invoke_result_t<R>> b;
  std::exception_ptr err[2];
  const at::ThreadLocalState tls;
#pragma omp parallel num_threads(2)
  {
    const at::ThreadLocalStateGuard tls_guard(tls);
    const c10::ParallelGuard in_region(true);
    const int nt = omp_get_num_threads();
    for (int d = omp_get_thread_num(); d < 2; d += nt) {  // a team of one (OMP_DYNAMIC) runs both
      try {
        if (d == 0) {
          a.emplace(fwd());
        } else {
          b.emplace(rev());
        }
      } catch (...) {
        err[d] = std::current_exception();
      }
    }
  }
  for (const auto& e : err)
    if (e) std::rethrow_exception(e);
  return {std::move(*a), std::move(*b)};
}

// The forwards: both directions' results, forward direction first.
template <typename F, typename R>
auto both_forwards(int64_t rows, F&& fwd, R&& rev) {
  if (at_once(rows)) {
    auto r = on_two_threads(fwd, rev);
    return std::tuple_cat(std::move(r.first), std::move(r.second));
  }
  auto a = fwd();
  return std::tuple_cat(std::move(a), rev());
}

// The backwards: fwd(acc) / rev(acc) run one direction's backward, adding its input gradient into acc when
// acc is defined. Returns the input's gradient (both parts), then the rest of each direction's results.
template <typename Tuple, size_t... I>
auto tail(Tuple&& t, std::index_sequence<I...>) {
  return std::make_tuple(std::get<I + 1>(std::forward<Tuple>(t))...);
}
template <typename F, typename R>
auto both_backwards(int64_t rows, F&& fwd, R&& rev) {
  using Res = std::invoke_result_t<F, const at::Tensor&>;
  constexpr size_t n = std::tuple_size_v<Res>;
  Res a, b;
  at::Tensor grad_input;
  if (at_once(rows)) {
    std::tie(a, b) = on_two_threads([&] { return fwd(at::Tensor()); }, [&] { return rev(at::Tensor()); });
    grad_input = std::get<0>(a).add_(std::get<0>(b));
  } else {
    a = fwd(at::Tensor());
    b = rev(std::get<0>(a));  // adds into the forward direction's input gradient
    grad_input = std::get<0>(b);
  }
  return std::tuple_cat(std::make_tuple(grad_input), tail(std::move(a), std::make_index_sequence<n - 1>()),
                        tail(std::move(b), std::make_index_sequence<n - 1>()));
}

// The batch rows of a call: those of the initial state hx [B, *] (the kernels check it against the input).
int64_t rows_of(const at::Tensor& hx) { return hx.dim() > 0 ? hx.size(0) : 0; }

using Opt = std::optional<at::Tensor>;
using T = at::Tensor;

auto lstm_bidir_forward(const T& input, const Opt& batch_sizes, const T& hx, const T& cx, const T& w_ih,
                        const T& w_hh, const Opt& b_ih, const Opt& b_hh, const Opt& w_hr, const T& hx_r,
                        const T& cx_r, const T& w_ih_r, const T& w_hh_r, const Opt& b_ih_r, const Opt& b_hh_r,
                        const Opt& w_hr_r, bool train) {
  return both_forwards(
      rows_of(hx),
      [&] { return lstm_forward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, false, train); },
      [&] {
        return lstm_forward(input, batch_sizes, hx_r, cx_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_hr_r, true, train);
      });
}

auto lstm_bidir_backward(const T& grad_output, const T& grad_hy, const T& grad_cy, const T& grad_output_r,
                         const T& grad_hy_r, const T& grad_cy_r, const T& input, const Opt& batch_sizes, const T& hx,
                         const T& cx, const T& w_ih, const T& w_hh, const Opt& w_hr, const T& output,
                         const T& workspace, const T& hx_r, const T& cx_r, const T& w_ih_r, const T& w_hh_r,
                         const Opt& w_hr_r, const T& output_r, const T& workspace_r, bool has_bias) {
  return both_backwards(
      rows_of(hx),
      [&](const T& acc) {
        return lstm_backward(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                             workspace, false, has_bias, acc);
      },
      [&](const T& acc) {
        return lstm_backward(grad_output_r, grad_hy_r, grad_cy_r, input, batch_sizes, hx_r, cx_r, w_ih_r, w_hh_r,
                             w_hr_r, output_r, workspace_r, true, has_bias, acc);
      });
}

auto gru_bidir_forward(const T& input, const Opt& batch_sizes, const T& hx, const T& w_ih, const T& w_hh,
                       const Opt& b_ih, const Opt& b_hh, const T& hx_r, const T& w_ih_r, const T& w_hh_r,
                       const Opt& b_ih_r, const Opt& b_hh_r, bool train) {
  return both_forwards(
      rows_of(hx), [&] { return gru_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, false, train); },
      [&] { return gru_forward(input, batch_sizes, hx_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, true, train); });
}

auto gru_bidir_backward(const T& grad_output, const T& grad_hy, const T& grad_output_r, const T& grad_hy_r,
                        const T& input, const Opt& batch_sizes, const T& hx, const T& w_ih, const T& w_hh,
                        const T& output, const T& workspace, const T& hx_r, const T& w_ih_r, const T& w_hh_r,
                        const T& output_r, const T& workspace_r, bool has_bias) {
  return both_backwards(
      rows_of(hx),
      [&](const T& acc) {
        return gru_backward(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, workspace, false,
                            has_bias, acc);
      },
      [&](const T& acc) {
        return gru_backward(grad_output_r, grad_hy_r, input, batch_sizes, hx_r, w_ih_r, w_hh_r, output_r,
                            workspace_r, true, has_bias, acc);
      });
}

auto rnn_bidir_forward(const T& input, const Opt& batch_sizes, const T& hx, const T& w_ih, const T& w_hh,
                       const Opt& b_ih, const Opt& b_hh, const T& hx_r, const T& w_ih_r, const T& w_hh_r,
                       const Opt& b_ih_r, const Opt& b_hh_r, bool relu) {
  return both_forwards(
      rows_of(hx), [&] { return rnn_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, false); },
      [&] { return rnn_forward(input, batch_sizes, hx_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, relu, true); });
}

auto rnn_bidir_backward(const T& grad_output, const T& grad_hy, const T& grad_output_r, const T& grad_hy_r,
                        const T& input, const Opt& batch_sizes, const T& hx, const T& w_ih, const T& w_hh,
                        const T& output, const T& hx_r, const T& w_ih_r, const T& w_hh_r, const T& output_r,
                        bool relu, bool has_bias) {
  return both_backwards(
      rows_of(hx),
      [&](const T& acc) {
        return rnn_backward(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, relu, false,
                            has_bias, acc);
      },
      [&](const T& acc) {
        return rnn_backward(grad_output_r, grad_hy_r, input, batch_sizes, hx_r, w_ih_r, w_hh_r, output_r, relu,
                            true, has_bias, acc);
      });
}

// Test-only: how many distinct threads the ops run their two directions on now for `rows` batch rows.
int64_t bidir_threads_used(int64_t rows) {
  if (!at_once(rows)) return 1;
  const auto r = on_two_threads([] { return omp_get_thread_num(); }, [] { return omp_get_thread_num(); });
  return r.first == r.second ? 1 : 2;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_bidir_forward", &lstm_bidir_forward);
  m.impl("lstm_bidir_backward", &lstm_bidir_backward);
  m.impl("gru_bidir_forward", &gru_bidir_forward);
  m.impl("gru_bidir_backward", &gru_bidir_backward);
  m.impl("rnn_bidir_forward", &rnn_bidir_forward);
  m.impl("rnn_bidir_backward", &rnn_bidir_backward);
}

TORCH_LIBRARY_IMPL(fastrnn, CompositeExplicitAutograd, m) {
  m.impl("_cpu_bidir_threads_used", &bidir_threads_used);
}

}  // namespace fastrnn::cpu
