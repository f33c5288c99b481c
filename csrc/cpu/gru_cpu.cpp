// GRU on the CPU: one layer, one direction, a whole (packed) sequence. Same plan as lstm_cpu.cpp; the
// h-side pre-activations stay separate from the x side up to the pointwise pass because the reset gate
// multiplies W_hn h + b_hn alone (torch.nn's formulation).
#include <torch/library.h>

#include "brgemm_step.h"
#include "step_loop.h"

namespace fastrnn::cpu {
namespace {

constexpr const char* kFwd = "fastrnn::gru_forward";
constexpr const char* kBwd = "fastrnn::gru_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih_,
    const std::optional<at::Tensor>& b_hh_, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kFwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh_, b_ih_, b_hh_, {});
  if (auto fused = gru_forward_brgemm(input, batch_sizes, hx, w_ih, w_hh_, b_ih_, b_hh_, reverse, train))
    return *fused;  // the fused brgemm path (brgemm_step.h); below, the per-step path
  const std::optional<at::Tensor> b_ih = contiguous(b_ih_), b_hh = contiguous(b_hh_);
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  const at::Tensor w_hh = w_hh_.contiguous();
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));

  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, input.options());
  const at::Tensor out = rows2d(output);
  at::Tensor h_state = hx.contiguous().clone();
  at::Tensor ws = at::empty({train ? L.N : 0, train ? 4 * H : 0}, acc_opts);
  const at::Tensor gx = checked_dtype("the x-side GEMM", at::mm(rows2d(input.contiguous()), w_ih.t()),
                                     input.scalar_type());  // biases: in the pointwise pass
  const at::Tensor gh = at::empty({L.B, 3 * H}, input.options());

  const StepGemm gemm_hh(w_hh, /*transpose_w=*/true, L.B);
  FASTRNN_CPU_DISPATCH(input.scalar_type(), kFwd, [&] {
    const auto& K = pointwise_kernels<scalar_t>(active_isa());
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      gemm_hh.run(h_state.narrow(0, 0, bs), gh.narrow(0, 0, bs));
      // h_prev and h_out2 are both h_state: each element is read before it is overwritten.
      GruFwdArgs<scalar_t> a{gx.data_ptr<scalar_t>() + off * 3 * H,
                             gh.data_ptr<scalar_t>(),
                             ptr_or_null<scalar_t>(b_ih),
                             ptr_or_null<scalar_t>(b_hh),
                             h_state.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>() + off * H,
                             H,
                             h_state.data_ptr<scalar_t>(),
                             train ? ws.data_ptr<acc_t<scalar_t>>() + off * 4 * H : nullptr,
                             H};
      for_rows(bs, 3 * H, [&](int64_t b0, int64_t b1) { K.gru_fwd(a, b0, b1); });
    }
  });
  return {output, h_state, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh_, const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kBwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh_, {}, {}, {});
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, &workspace, {L.N, 4 * H});
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor ws = workspace.contiguous();
  const at::Tensor go = rows2d(grad_output.contiguous());
  const at::Tensor h_prev = gather_prev(rows2d(output.contiguous()), hx, L, reverse);
  at::Tensor dh_state = grad_hy.contiguous().clone();
  at::Tensor dgx = at::empty({L.N, 3 * H}, input.options());
  at::Tensor dgh = at::empty({L.N, 3 * H}, input.options());

  const StepGemm gemm_hh(w_hh, /*transpose_w=*/false, L.B);
  FASTRNN_CPU_DISPATCH(input.scalar_type(), kBwd, [&] {
    const auto& K = pointwise_kernels<scalar_t>(active_isa());
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      GruBwdArgs<scalar_t> a{ws.data_ptr<acc_t<scalar_t>>() + off * 4 * H,
                             h_prev.data_ptr<scalar_t>() + off * H,
                             dh_state.data_ptr<scalar_t>(),
                             go.data_ptr<scalar_t>() + off * H,
                             dgx.data_ptr<scalar_t>() + off * 3 * H,
                             dgh.data_ptr<scalar_t>() + off * 3 * H,
                             dh_state.data_ptr<scalar_t>(),
                             H};
      for_rows(bs, 3 * H, [&](int64_t b0, int64_t b1) { K.gru_bwd(a, b0, b1); });
      gemm_hh.run(dgh.narrow(0, off, bs), dh_state.narrow(0, 0, bs), /*accumulate=*/true);
    }
  });

  SequenceGrads g = sequence_grads(dgx, dgh, rows2d(input.contiguous()), h_prev, w_ih, has_bias, input.sizes());
  return {g.grad_input, dh_state, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}

}  // namespace fastrnn::cpu
