// Elman RNN (tanh or relu) on CUDA: one layer, one direction, a whole (packed) sequence. Same plan as
// lstm_cuda.cpp; the backward needs only the outputs, so the forward saves nothing.
#include <torch/library.h>

#include "cuda_common.h"
#include "persistent.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::rnn_forward";
constexpr const char* kBwd = "fastrnn::rnn_backward";
constexpr const char* kBidirFwd = "fastrnn::rnn_bidir_forward";
constexpr const char* kBidirBwd = "fastrnn::rnn_bidir_backward";

// One direction's forward in two parts, begin and end, so that rnn_bidir_forward can run both directions'
// recurrences in one persistent launch between them (as lstm_cuda.cpp LstmFwd).
struct RnnFwd : DirFwd {
  bool relu = false;
};

RnnFwd rnn_fwd_begin(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                     const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                     const std::optional<at::Tensor>& b_hh, bool relu, bool reverse) {
  check_cuda(kFwd, "input", input);
  const CellShape s = check_forward_args(kFwd, 1, input, batch_sizes, hx, nullptr, w_ih, w_hh, b_ih, b_hh, {});
  RnnFwd f;
  begin_dir_fwd(f, kFwd, s, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse);
  f.relu = relu;
  f.run = fwd_persistent_run(kFwd, f.L, reverse, f.H, f.gx, f.b_hh, f.w_hh, f.out, f.h0, nullptr, nullptr,
                             relu ? 1 : 0, /*projection=*/false);
  return f;
}

// The recurrence (none when `done`: a joint launch ran it) and the results.
std::tuple<at::Tensor, at::Tensor> rnn_fwd_end(RnnFwd& f, bool done) {
  const SeqLayout& L = f.L;
  const int64_t H = f.H;
  if (L.T == 0) return {f.output, f.h0.clone()};
  const bool persistent = done || run_fwd_persistent(kFwd, f.dt, Cell::kRnn, &f.run, 1);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kFwd, "rnn_fwd_step_kernel", fwd_launch_config(f.dt, Cell::kRnn, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    FwdStepParams p = fwd_step_params(L, L.step(k, f.reverse), f.reverse, H, f.gx, f.b_hh, f.w_hh, f.out, f.h0);
    p.relu = f.relu ? 1 : 0;
    launch_fwd_step(f.dt, Cell::kRnn, p, stream);
  }
  const at::Tensor hy = f.out.index_select(0, sequence_rows(L, /*last=*/!f.reverse, f.input.device()));
  return {f.output, hy};
}

std::tuple<at::Tensor, at::Tensor> rnn_forward(const at::Tensor& input,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               const at::Tensor& hx, const at::Tensor& w_ih,
                                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                               const std::optional<at::Tensor>& b_hh, bool relu, bool reverse) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const c10::cuda::CUDAGuard guard = cuda_guard(kFwd, input);
  RnnFwd f = rnn_fwd_begin(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  return rnn_fwd_end(f, false);
}

// Both directions of a bidirectional layer: their recurrences in one persistent launch where it fits
// (persistent.h FASTRNN_CUDA_BIDIR), else one after the other; the results of two rnn_forward calls.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_bidir_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& hx_r, const at::Tensor& w_ih_r,
    const at::Tensor& w_hh_r, const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
    bool relu) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard = cuda_guard(kBidirFwd, input);
  RnnFwd d[2] = {rnn_fwd_begin(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, false),
                 rnn_fwd_begin(input, batch_sizes, hx_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, relu, true)};
  return bidir_forward(kBidirFwd, Cell::kRnn, d, rnn_fwd_end);
}

// One direction's backward in two parts (as RnnFwd).
struct RnnBwd : DirBwd {
  bool relu = false;
  at::Tensor out;
};

RnnBwd rnn_bwd_begin(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
                     const at::Tensor& w_hh, const at::Tensor& output, bool relu, bool reverse, bool has_bias) {
  check_cuda(kBwd, "input", input);
  const CellShape s = check_forward_args(kBwd, 1, input, batch_sizes, hx, nullptr, w_ih, w_hh, {}, {}, {});
  RnnBwd b;
  // dg lives in grad_input's storage when I >= H (gate_grad_buffer)
  begin_dir_bwd(b, kBwd, s, grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, reverse, has_bias,
                s.hidden_size, /*with_carry=*/true, [&](const SeqLayout&) {
                  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, nullptr, {});
                });
  b.relu = relu;
  b.out = rows2d(output.contiguous());
  BwdPersistentArgs pa;  // the persistent backward (one cooperative launch) leaves grad_hx in carry
  pa.dg = b.dg.dgx.data_ptr();
  pa.out = b.out.data_ptr();
  pa.relu = relu ? 1 : 0;
  b.run = bwd_persistent_run(kBwd, b.L, reverse, b.H, *b.go, b.w_hh, b.carry, pa, /*projection=*/false);
  return b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_bwd_end(RnnBwd& b,
                                                                                               bool done) {
  const SeqLayout& L = b.L;
  const int64_t H = b.H;
  const bool reverse = b.reverse;
  const at::Tensor& input = b.input;
  const at::Tensor& dgates = b.dg.dgx;
  const StepRows& go = *b.go;
  const bool persistent = done || run_bwd_persistent(kBwd, b.dt, Cell::kRnn, &b.run, 1);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kBwd, "rnn_bwd_step_kernel", bwd_launch_config(b.dt, Cell::kRnn, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    const int64_t nxt = next_step(L, t, reverse);
    const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
    BwdStepParams p;
    p.dg_next = n_next > 0 ? row_ptr(dgates, L.offsets[nxt]) : nullptr;
    p.w_hh = b.w_hh.data_ptr();
    p.grad_out = go.ptr(L, t);
    p.ld_grad_out = go.ld;
    p.carry = b.carry.data_ptr();
    p.h_cur = row_ptr(b.out, off);
    p.dg = row_ptr(dgates, off);
    p.n_next = n_next;
    p.bs = bs;
    p.H = H;
    p.relu = b.relu ? 1 : 0;
    launch_bwd_step(b.dt, Cell::kRnn, p, stream);
  }
  // The gradient reaching hx[b] through W_hh, from the step that started from it (carry is 0 by now).
  at::Tensor grad_hx =
      persistent ? b.carry.to(input.scalar_type())
      : L.T == 0 ? b.grad_hy.contiguous().clone()
               : at::mm(dgates.index_select(0, sequence_rows(L, /*last=*/reverse, input.device())), b.w_hh);

  // The weight gradient against the states each step started from reads them in place from out and hx.
  SequenceGrads g = sequence_grads(b.dg, at::Tensor(), rows2d(input.contiguous()), b.out, b.hx, L, reverse, b.w_ih,
                                   b.has_bias, input.sizes());
  return {g.grad_input, grad_hx, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& output, bool relu, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const c10::cuda::CUDAGuard guard = cuda_guard(kBwd, input);
  RnnBwd b = rnn_bwd_begin(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, has_bias);
  return rnn_bwd_end(b, false);
}

// Both directions' backward recurrences in one persistent launch where it fits; the results of two rnn_backward
// calls, except that the input gradient is one (the sum of both directions' parts), first.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
rnn_bidir_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_output_r,
                   const at::Tensor& grad_hy_r, const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                   const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                   const at::Tensor& hx_r, const at::Tensor& w_ih_r, const at::Tensor& w_hh_r,
                   const at::Tensor& output_r, bool relu, bool has_bias) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard = cuda_guard(kBidirBwd, input);
  RnnBwd d[2] = {rnn_bwd_begin(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, relu, false,
                               has_bias),
                 rnn_bwd_begin(grad_output_r, grad_hy_r, input, batch_sizes, hx_r, w_ih_r, w_hh_r, output_r, relu,
                               true, has_bias)};
  return bidir_backward(kBidirBwd, Cell::kRnn, d, rnn_bwd_end);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
  m.impl("rnn_bidir_forward", &rnn_bidir_forward);
  m.impl("rnn_bidir_backward", &rnn_bidir_backward);
}

}  // namespace fastrnn::cuda
