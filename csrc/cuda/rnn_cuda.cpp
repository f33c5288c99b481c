// Elman RNN (tanh or relu) on CUDA: one layer, one direction, a whole (packed) sequence. Same plan as
// lstm_cuda.cpp; the backward needs only the outputs, so the forward saves nothing.
#include <torch/library.h>

#include "cuda_common.h"
#include "persistent.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::rnn_forward";
constexpr const char* kBwd = "fastrnn::rnn_backward";

std::tuple<at::Tensor, at::Tensor> rnn_forward(const at::Tensor& input,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               const at::Tensor& hx, const at::Tensor& w_ih,
                                               const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih,
                                               const std::optional<at::Tensor>& b_hh_, bool relu, bool reverse) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kFwd, "input", input);
  const CellShape s = check_forward_args(kFwd, 1, input, batch_sizes, hx, nullptr, w_ih, w_hh_, b_ih, b_hh_, {});
  const c10::cuda::CUDAGuard guard(input.device());
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  const at::Tensor w_hh = w_hh_.contiguous();
  const std::optional<at::Tensor> b_hh =
      b_hh_.has_value() ? std::optional<at::Tensor>(b_hh_->contiguous()) : std::nullopt;
  const DType dt = dtype_of(kFwd, input.scalar_type());
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, input.options());
  const at::Tensor out = rows2d(output);
  const at::Tensor h0 = hx.contiguous();
  // x-side pre-activations of every step in one GEMM (no sequential dependency).
  const at::Tensor gx = input_gates(rows2d(input.contiguous()), w_ih, b_ih).contiguous();
  if (L.T == 0) return {output, h0.clone()};

  const bool persistent = run_fwd_persistent(kFwd, dt, Cell::kRnn, L, reverse, H, gx, b_hh, w_hh, out, h0, nullptr,
                                             nullptr, relu ? 1 : 0, /*projection=*/false);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kFwd, "rnn_fwd_step_kernel", fwd_launch_config(dt, Cell::kRnn, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    FwdStepParams p = fwd_step_params(L, L.step(k, reverse), reverse, H, gx, b_hh, w_hh, out, h0);
    p.relu = relu ? 1 : 0;
    launch_fwd_step(dt, Cell::kRnn, p, stream);
  }
  const at::Tensor hy = out.index_select(0, sequence_rows(L, /*last=*/!reverse, input.device()));
  return {output, hy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh_, const at::Tensor& output, bool relu, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kBwd, "input", input);
  const CellShape s = check_forward_args(kBwd, 1, input, batch_sizes, hx, nullptr, w_ih, w_hh_, {}, {}, {});
  const c10::cuda::CUDAGuard guard(input.device());
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, nullptr, {});
  const at::Tensor w_hh = w_hh_.contiguous();
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  const DType dt = dtype_of(kBwd, input.scalar_type());
  const at::Tensor out = rows2d(output.contiguous());
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place (a transposed or sliced gradient too)
  at::Tensor carry = grad_hy.to(acc_opts, false, /*copy=*/true).contiguous();
  const GateGradBuffer dg = gate_grad_buffer(L.N, H, input);  // in grad_input's storage when I >= H
  const at::Tensor& dgates = dg.dgx;

  BwdPersistentArgs pa;  // the persistent backward (one cooperative launch) leaves grad_hx in carry
  pa.dg = dgates.data_ptr();
  pa.out = out.data_ptr();
  pa.relu = relu ? 1 : 0;
  const bool persistent =
      run_bwd_persistent(kBwd, dt, Cell::kRnn, L, reverse, H, go, w_hh, carry, pa, /*projection=*/false);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kBwd, "rnn_bwd_step_kernel", bwd_launch_config(dt, Cell::kRnn, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    const int64_t nxt = next_step(L, t, reverse);
    const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
    BwdStepParams p;
    p.dg_next = n_next > 0 ? row_ptr(dgates, L.offsets[nxt]) : nullptr;
    p.w_hh = w_hh.data_ptr();
    p.grad_out = go.ptr(L, t);
    p.ld_grad_out = go.ld;
    p.carry = carry.data_ptr();
    p.h_cur = row_ptr(out, off);
    p.dg = row_ptr(dgates, off);
    p.n_next = n_next;
    p.bs = bs;
    p.H = H;
    p.relu = relu ? 1 : 0;
    launch_bwd_step(dt, Cell::kRnn, p, stream);
  }
  // The gradient reaching hx[b] through W_hh, from the step that started from it (carry is 0 by now).
  at::Tensor grad_hx =
      persistent ? carry.to(input.scalar_type())
      : L.T == 0 ? grad_hy.contiguous().clone()
               : at::mm(dgates.index_select(0, sequence_rows(L, /*last=*/reverse, input.device())), w_hh);

  // The weight gradient against the states each step started from reads them in place from out and hx.
  SequenceGrads g = sequence_grads(dg, at::Tensor(), rows2d(input.contiguous()), out, hx, L, reverse, w_ih,
                                   has_bias, input.sizes());
  return {g.grad_input, grad_hx, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
}

}  // namespace fastrnn::cuda
