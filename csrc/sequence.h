// Host-side helpers shared by every backend: argument checks with messages that name the argument, the
// time/batch layout of a (possibly packed) sequence, and the gathers that line up each step with the state
// it started from. Everything here is plain ATen, so it runs on whatever device the tensors live on.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/accumulate.h>

#include <optional>
#include <vector>

namespace fastrnn {

// Steps of one sequence batch. Dense [T, B, *] input is the packed layout with every batch size equal to B,
// so both are walked the same way: step t covers rows offsets[t] .. offsets[t] + batch_sizes[t].
struct SeqLayout {
  int64_t T = 0;  // number of steps
  int64_t B = 0;  // number of sequences (= batch_sizes[0])
  int64_t N = 0;  // number of rows = sum of batch_sizes
  std::vector<int64_t> batch_sizes;
  std::vector<int64_t> offsets;  // T + 1 entries

  // The steps in the order a direction visits them.
  int64_t step(int64_t k, bool reverse) const { return reverse ? T - 1 - k : k; }
  // The step whose state step t starts from (-1: the initial state), and how many of step t's rows have
  // such a predecessor; the rest (reverse direction only) start from the initial state.
  int64_t prev_step(int64_t t, bool reverse) const { return reverse ? (t + 1 < T ? t + 1 : -1) : t - 1; }
  int64_t rows_with_prev(int64_t t, bool reverse) const {
    const int64_t p = prev_step(t, reverse);
    return p < 0 ? 0 : std::min(batch_sizes[t], batch_sizes[p]);
  }
};

SeqLayout make_layout(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes);

// Describes one op call for the checks: the cell's gate count and the sizes every tensor must have.
struct CellShape {
  const char* op;      // for messages, e.g. "fastrnn::lstm_forward"
  int64_t gates;       // 4 (LSTM), 3 (GRU), 1 (RNN)
  int64_t input_size;  // I
  int64_t hidden_size; // H
  int64_t state_size;  // size of the recurrent h: P with an LSTM projection, else H
};

// Checks the weights (and derives I, H, P from them), input, batch_sizes and states; throws a c10::Error
// naming the offending argument. `cx` and `w_hr` are passed only by the LSTM.
CellShape check_forward_args(const char* op, int64_t gates, const at::Tensor& input,
                             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                             const at::Tensor* cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                             const std::optional<at::Tensor>& w_hr);

// Checks that `t` has `sizes`, the dtype of `like` and its device.
void check_like(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes,
                const at::Tensor& like);

// For every row r (in packed order) the row of `seq` [N, D] that holds the state its step started from,
// or the row of `init` [B, D] where it starts from the initial state. Returns [N, D] (contiguous).
at::Tensor gather_prev(const at::Tensor& seq, const at::Tensor& init, const SeqLayout& layout, bool reverse);

// The x-side pre-activations of every step in one GEMM: x [N, I] @ w_ih^T (+ b_ih), [N, gates*H].
at::Tensor input_gates(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih);

// Checks the tensors a backward op receives besides the forward's arguments.
// `output` must have the input's shape with state_size features.
void check_backward_args(const char* op, const at::Tensor& input, int64_t state_size,
                         const at::Tensor& grad_output, const at::Tensor& output,
                         const at::Tensor& grad_hy, const at::Tensor& hx, const at::Tensor* workspace,
                         at::IntArrayRef workspace_sizes);

// The whole-sequence GEMMs and reductions of a backward, once the per-step pass has produced the
// gradients of the x-side (dgx) and h-side (dgh) pre-activations of every row [N, gates*H]:
// the input gradient, the weight gradients against x and the states each step started from (h_prev), and
// the bias gradients (a deterministic reduction in the accumulation dtype; undefined when !has_bias).
struct SequenceGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
};
SequenceGrads sequence_grads(const at::Tensor& dgx, const at::Tensor& dgh, const at::Tensor& x,
                             const at::Tensor& h_prev, const at::Tensor& w_ih, bool has_bias,
                             at::IntArrayRef input_sizes);

// The dtype in which gates are computed and the cell state and saved activations are kept.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

// out = a @ b, written into `out` (often a narrowed view of a buffer).
inline void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

// Opened first in every op implementation (CPU and CUDA) and in the helpers above: the ATen calls inside
// (the GEMMs, gathers, reductions) run with autocast excluded, so each returns its inputs' dtype. Under
// torch.autocast an at::mm would otherwise come back in the autocast dtype while the kernels read it through
// a raw pointer as the input's dtype. The ops' own autocast kernels (fastrnn/ops.py) cast the op's inputs
// first; this covers every other way in (C++ callers, a redispatch to the backend key).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// Returns t after checking that an inner ATen call gave it the dtype the kernels will read it as.
inline at::Tensor checked_dtype(const char* what, at::Tensor t, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "fastrnn: ", what, " returned ", t.scalar_type(), " where the kernels read ",
              dtype, " (a dispatch layer such as autocast changed its dtype)");
  return t;
}

// Views a dense [T, B, D] or packed [N, D] tensor as its [N, D] rows (N counted from the leading sizes, so
// that D = 0 works too).
inline at::Tensor rows2d(const at::Tensor& t) {
  return t.reshape({c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1), t.size(-1)});
}

}  // namespace fastrnn
