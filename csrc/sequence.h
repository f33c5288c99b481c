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

// Checks the entries of a packed sequence's batch_sizes (a 1-D int64 CPU tensor) against the `rows` rows of
// `what` (for messages, e.g. "the packed input"): positive, non-increasing, summing to `rows`. Returns B.
int64_t check_batch_sizes_sum(const char* op, const at::Tensor& batch_sizes, int64_t rows, const char* what);

// Checks that `t` has `sizes`, the dtype of `like` and its device.
void check_like(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes,
                const at::Tensor& like);

// The states the rows of a sequence start from, as maximal runs of consecutive rows: rows [row, row + n) start
// from rows [src, src + n) of the sequence's own outputs (init = false) or of the initial state (init = true).
// A dense sequence is two runs (forward: rows B.. from outputs 0.., rows 0..B from init; reverse likewise);
// a packed one adds a run wherever the batch size changes.
struct PrevRun {
  int64_t row, src, n;
  bool init;
};
std::vector<PrevRun> prev_runs(const SeqLayout& layout, bool reverse);

// For every row r (in packed order) the row of `seq` [N, D] that holds the state its step started from,
// or the row of `init` [B, D] where it starts from the initial state. Returns [N, D] (contiguous), copied run
// by run (no intermediate [N + B, D] concatenation).
at::Tensor gather_prev(const at::Tensor& seq, const at::Tensor& init, const SeqLayout& layout, bool reverse);

// How a backend runs the whole-sequence GEMMs: c = a @ b, or c += a @ b with add. The default is ATen's
// (at::mm_out / addmm_); the CPU kernels pass their brgemm GEMM (cpu/seq_gemm.h).
using MatMulInto = void (*)(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add);
void aten_mm_into(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add);

// out [G, D] = a^T @ h_prev for a [N, G] (any strides) and h_prev = gather_prev(seq, init), without
// materialising h_prev: one GEMM per run (prev_runs) on views of seq and init.
void addmm_prev(at::Tensor out, const at::Tensor& a, const at::Tensor& seq, const at::Tensor& init,
                const SeqLayout& layout, bool reverse, MatMulInto mm = &aten_mm_into);

// The x-side pre-activations of every step in one GEMM: x [N, I] @ w_ih^T (+ b_ih), [N, gates*H].
at::Tensor input_gates(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih);

// Checks the tensors a backward op receives besides the forward's arguments.
// `output` must have the input's shape with state_size features.
void check_backward_args(const char* op, const at::Tensor& input, int64_t state_size,
                         const at::Tensor& grad_output, const at::Tensor& output,
                         const at::Tensor& grad_hy, const at::Tensor& hx, const at::Tensor* workspace,
                         at::IntArrayRef workspace_sizes);

// The whole-sequence GEMMs and reductions of a backward, once the per-step pass has produced the gradients
// of the pre-activations of every row, dgx [N, gates*H]: the input gradient, the weight gradients against x
// and against the states each step started from (the rows of `out` [N, S] and `hx` [B, S], read in place
// through addmm_prev), and the bias gradients (a deterministic reduction in the accumulation dtype; empty
// when !has_bias). The h-side gradients equal dgx except, for the GRU, those of n: dgh_n [N, H] (= dgx's n
// part times r) then replaces dgx's last H columns on the h side (w_hh, b_hh); undefined otherwise.
//
// dgx comes from gate_grad_buffer: where the input gradient [N, I] is at least as large as dgx (I >= gates*H:
// an Elman RNN whose input is at least as wide as its state), dgx lives in the input gradient's storage, and
// the input gradient is computed into that storage last, in row chunks from the last to the first (row r's
// input gradient only overwrites dgx rows >= r, already consumed), so the backward's peak holds one [N, *]
// tensor less.
//
// accumulate_into (a bidirectional layer's second direction, cpu/bidir_cpu.cpp): the first direction's input
// gradient, to which sequence_grads adds this direction's (the input's shape, contiguous) and returns, instead
// of a new [N, I] tensor alive next to it at the backward's peak; dgx then has its own storage.
struct GateGradBuffer {
  at::Tensor dgx;              // [N, gates*H], contiguous
  at::Tensor grad_input;       // the input gradient (the input's shape) whose storage holds dgx, or undefined
  at::Tensor accumulate_into;  // see above, or undefined
};
GateGradBuffer gate_grad_buffer(int64_t N, int64_t gates_hidden, const at::Tensor& input,
                                const at::Tensor& accumulate_into = at::Tensor());

struct SequenceGrads {
  at::Tensor grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh;
};
// Where the weight gradients are allocated (the CPU ops pass scratch_result, cpu/scratch.h).
using ResultEmpty = at::Tensor (*)(at::IntArrayRef sizes, const at::TensorOptions& options);
inline at::Tensor plain_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}
SequenceGrads sequence_grads(const GateGradBuffer& dg, const at::Tensor& dgh_n, const at::Tensor& x,
                             const at::Tensor& out, const at::Tensor& hx, const SeqLayout& layout, bool reverse,
                             const at::Tensor& w_ih, bool has_bias, at::IntArrayRef input_sizes,
                             MatMulInto mm = &aten_mm_into, ResultEmpty weight_grad_empty = &plain_empty);

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
//
// The same guard keeps those inner calls below autograd and below ADInplaceOrView, as ATen's own backend kernels
// run: the ops are reached below autograd already (their Autograd kernel is fastrnn/ops.py's), but every inner
// view (narrow, view, t) otherwise still went through ADInplaceOrView and made a differentiable view's
// metadata, a microsecond or two each, a quarter of a decoding step's op.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
  at::AutoDispatchBelowADInplaceOrView below_autograd;
};

// Returns t after checking that an inner ATen call gave it the dtype the kernels will read it as.
inline at::Tensor checked_dtype(const char* what, at::Tensor t, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "fastrnn: ", what, " returned ", t.scalar_type(), " where the kernels read ",
              dtype, " (a dispatch layer such as autocast changed its dtype)");
  return t;
}

// A per-row tensor the backward reads step by step (grad_output: dense [T, B, D] or packed [N, D]), read in
// place whatever its row strides: a batch_first module hands the op a transposed gradient, a bidirectional
// one a slice of the concatenated outputs' gradient, and copying those costs a whole [N, D] buffer. Only a
// strided feature dimension (e.g. a gradient expanded from a scalar) is copied to a contiguous tensor.
struct StepRows {
  at::Tensor t;    // the tensor read: the argument itself, or its contiguous copy
  bool packed;
  int64_t ld = 0;  // row stride within a step, in elements (may be 0: rows expanded from one)
  StepRows(const at::Tensor& x, bool packed_)
      : t(x.size(-1) <= 1 || x.stride(-1) == 1 ? x : x.contiguous()), packed(packed_),
        ld(t.dim() >= 2 ? t.stride(t.dim() - 2) : 0) {}
  // The first row of step `step` (packed: row offsets[step]; dense: t[step]).
  const void* ptr(const SeqLayout& l, int64_t step) const {
    return static_cast<const char*>(t.const_data_ptr()) +
           (packed ? l.offsets[step] : step) * t.stride(0) * static_cast<int64_t>(t.element_size());
  }
  // The same, typed (const_data_ptr<T> checks the dtype).
  template <typename T>
  const T* step(const SeqLayout& l, int64_t s) const {
    return t.const_data_ptr<T>() + (packed ? l.offsets[s] : s) * t.stride(0);
  }
  // The step's rows as a [batch_sizes[s], D] view.
  at::Tensor rows(const SeqLayout& l, int64_t s) const {
    const int64_t n = l.batch_sizes[s];
    return packed ? t.narrow(0, l.offsets[s], n) : t.select(0, s).narrow(0, 0, n);
  }
};

// Views a dense [T, B, D] or packed [N, D] tensor as its [N, D] rows (N counted from the leading sizes, so
// that D = 0 works too).
inline at::Tensor rows2d(const at::Tensor& t) {
  return t.reshape({c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1), t.size(-1)});
}

}  // namespace fastrnn
