// Elman RNN (tanh or relu) on the CPU: one layer, one direction, a whole (packed) sequence. Same plan as
// lstm_cpu.cpp; the backward needs only the outputs, so the forward saves nothing.
#include <torch/library.h>

#include "brgemm_step.h"
#include "cells_cpu.h"
#include "huge_pages.h"
#include "scratch.h"
#include "seq_gemm.h"
#include "step_gemm.h"
#include "step_loop.h"

namespace fastrnn::cpu {
namespace {

constexpr const char* kFwd = "fastrnn::rnn_forward";
constexpr const char* kBwd = "fastrnn::rnn_backward";

}  // namespace

std::tuple<at::Tensor, at::Tensor> rnn_forward(const at::Tensor& input,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               const at::Tensor& hx, const at::Tensor& w_ih,
                                               const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih_,
                                               const std::optional<at::Tensor>& b_hh_, bool relu, bool reverse) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kFwd, 1, input, batch_sizes, hx, nullptr, w_ih, w_hh_, b_ih_, b_hh_, {});
  if (auto fused = rnn_forward_brgemm(input, batch_sizes, hx, w_ih, w_hh_, b_ih_, b_hh_, relu, reverse))
    return *fused;  // the fused brgemm path (brgemm_step.h); below, the per-step path
  const std::optional<at::Tensor> b_ih = contiguous(b_ih_), b_hh = contiguous(b_hh_);
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  const at::Tensor w_hh = w_hh_.contiguous();
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, input.options());
  const at::Tensor out = rows2d(output);
  at::Tensor h_state = hx.contiguous().clone();
  const at::Tensor gx = checked_dtype("the x-side GEMM", mm_wt(rows2d(input.contiguous()), w_ih.contiguous()),
                                     input.scalar_type());  // biases: in the pointwise pass
  const at::Tensor gh = at::empty({L.B, H}, input.options());

  const StepGemm gemm_hh(w_hh, /*transpose_w=*/true, L.B, INT64_MAX, L.T);
  FASTRNN_CPU_DISPATCH(input.scalar_type(), kFwd, [&] {
    const auto& K = pointwise_kernels<scalar_t>(active_isa());
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      gemm_hh.run(h_state.narrow(0, 0, bs), gh.narrow(0, 0, bs));
      RnnFwdArgs<scalar_t> a{gx.data_ptr<scalar_t>() + off * H, gh.data_ptr<scalar_t>(),
                             ptr_or_null<scalar_t>(b_ih), ptr_or_null<scalar_t>(b_hh),
                             out.data_ptr<scalar_t>() + off * H, H, h_state.data_ptr<scalar_t>(), H, relu};
      for_rows(bs, H, [&](int64_t b0, int64_t b1) { K.rnn_fwd(a, b0, b1); });
    }
  });
  return {output, h_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh_, const at::Tensor& output, bool relu, bool reverse, bool has_bias,
    const at::Tensor& accumulate_grad_input) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kBwd, 1, input, batch_sizes, hx, nullptr, w_ih, w_hh_, {}, {}, {});
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, nullptr, {});
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor out = rows2d(output.contiguous());
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place (a transposed or sliced gradient too)
  at::Tensor dh_state = grad_hy.contiguous().clone();
  // in grad_input's storage when I >= H (and the input gradient is not accumulated into another)
  const GateGradBuffer dg = gate_grad_buffer(L.N, H, input, accumulate_grad_input);
  advise_huge_pages_gate_grads(dg);
  const at::Tensor& dgates = dg.dgx;

  // The fused brgemm recurrence (brgemm_step.h) where it applies; otherwise the per-step loop below.
  const bool fused = backward_recurrence_brgemm({BrgemmCell::kRnn, relu, reverse, input, batch_sizes, w_hh, out,
                                                 out, hx, hx, grad_output, dh_state, dh_state, dgates, dgates,
                                                 at::Tensor(), at::Tensor(), at::Tensor()});
  if (!fused) {  // scoped: the packed weight is freed before the whole-sequence GEMMs allocate their results
    const StepGemm gemm_hh(w_hh, /*transpose_w=*/false, L.B, dgates.nbytes(), L.T);
    FASTRNN_CPU_DISPATCH(input.scalar_type(), kBwd, [&] {
      const auto& K = pointwise_kernels<scalar_t>(active_isa());
      for (int64_t k = 0; k < L.T; ++k) {
        const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        RnnBwdArgs<scalar_t> a{out.data_ptr<scalar_t>() + off * H, H, dh_state.data_ptr<scalar_t>(),
                               go.step<scalar_t>(L, t), dgates.data_ptr<scalar_t>() + off * H, H, relu, go.ld};
        for_rows(bs, H, [&](int64_t b0, int64_t b1) { K.rnn_bwd(a, b0, b1); });
        gemm_hh.run(dgates.narrow(0, off, bs), dh_state.narrow(0, 0, bs));
      }
    });
  }

  // The weight gradient against the states each step started from reads them in place from out and hx.
  SequenceGrads g = sequence_grads(dg, at::Tensor(), rows2d(input.contiguous()), out, hx, L, reverse, w_ih,
                                   has_bias, input.sizes(), &seq_mm_into, &scratch_result);
  return {g.grad_input, dh_state, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", [](const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                            const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output, bool relu,
                            bool reverse, bool has_bias) {
    return rnn_backward(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, has_bias,
                        at::Tensor());
  });
}

}  // namespace fastrnn::cpu
