// LSTM (optionally with projection) on the CPU: one layer, one direction, a whole (packed) sequence.
//
// Forward: the x half of the [h_{t-1}, x_t] @ [W_hh | W_ih]^T product is one GEMM over all steps up front
// (measured: a single [N, I] x [I, 4H] GEMM runs near MKL's peak, while folding x_t into every step's
// GEMM doubles the number of small GEMM calls on the sequential path); each step then does the h half as
// one GEMM into a [B, 4H] buffer that stays in cache, and one fused pointwise pass (bias, gates, cell
// update, output and the activations for backward).
// Backward: per step, the fused pointwise pass and the recurrent GEMM for dh_{t-1}; afterwards the input
// and weight gradients as whole-sequence GEMMs and the bias gradients as a column sum.
#include <torch/library.h>

#include <optional>

#include "brgemm_step.h"
#include "cells_cpu.h"
#include "huge_pages.h"
#include "scratch.h"
#include "seq_gemm.h"
#include "step_gemm.h"
#include "step_loop.h"

namespace fastrnn::cpu {
namespace {

constexpr const char* kFwd = "fastrnn::lstm_forward";
constexpr const char* kBwd = "fastrnn::lstm_backward";

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih_, const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih_,
    const std::optional<at::Tensor>& b_hh_, const std::optional<at::Tensor>& w_hr_, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kFwd, 4, input, batch_sizes, hx, &cx, w_ih_, w_hh_, b_ih_, b_hh_, w_hr_);
  if (auto fused = lstm_forward_brgemm(input, batch_sizes, hx, cx, w_ih_, w_hh_, b_ih_, b_hh_, w_hr_, reverse, train))
    return *fused;  // the fused brgemm path (brgemm_step.h); below, the per-step path
  const std::optional<at::Tensor> b_ih = contiguous(b_ih_), b_hh = contiguous(b_hh_);
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size, P = s.state_size;
  const bool proj = w_hr_.has_value();
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = proj ? w_hr_->contiguous() : at::Tensor();
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));

  auto out_sizes = input.sizes().vec();
  out_sizes.back() = P;
  at::Tensor output = at::empty(out_sizes, input.options());
  const at::Tensor out = rows2d(output);
  at::Tensor h_state = hx.contiguous().clone();
  at::Tensor c_state = cx.to(acc_opts, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor ws = empty_on_huge_pages({train ? L.N : 0, train ? 5 * H : 0}, acc_opts);
  const at::Tensor gx = checked_dtype("the x-side GEMM", mm_wt(rows2d(input.contiguous()), w_ih_.contiguous()),
                                     input.scalar_type());  // biases: in the pointwise pass
  const at::Tensor gh = at::empty({L.B, 4 * H}, input.options());
  const at::Tensor r = proj ? at::empty({L.B, H}, input.options()) : at::Tensor();

  const StepGemm gemm_hh(w_hh, /*transpose_w=*/true, L.B, INT64_MAX, L.T);
  // (none without a projection: a stand-in StepGemm would copy W_hh^T for its small-GEMM loop on every call)
  std::optional<StepGemm> gemm_hr;
  if (proj) gemm_hr.emplace(w_hr, /*transpose_w=*/true, L.B, INT64_MAX, L.T);
  FASTRNN_CPU_DISPATCH(input.scalar_type(), kFwd, [&] {
    const auto& K = pointwise_kernels<scalar_t>(active_isa());
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      gemm_hh.run(h_state.narrow(0, 0, bs), gh.narrow(0, 0, bs));
      LstmFwdArgs<scalar_t> a{gx.data_ptr<scalar_t>() + off * 4 * H,
                              gh.data_ptr<scalar_t>(),
                              ptr_or_null<scalar_t>(b_ih),
                              ptr_or_null<scalar_t>(b_hh),
                              c_state.data_ptr<acc_t<scalar_t>>(),
                              proj ? r.data_ptr<scalar_t>() : out.data_ptr<scalar_t>() + off * P,
                              proj ? H : P,
                              proj ? nullptr : h_state.data_ptr<scalar_t>(),
                              train ? ws.data_ptr<acc_t<scalar_t>>() + off * 5 * H : nullptr,
                              H};
      for_rows(bs, 4 * H, [&](int64_t b0, int64_t b1) { K.lstm_fwd(a, b0, b1); });
      if (proj) {
        at::Tensor out_t = out.narrow(0, off, bs);
        gemm_hr->run(r.narrow(0, 0, bs), out_t);
        h_state.narrow(0, 0, bs).copy_(out_t);
      }
    }
  });
  return {output, h_state, c_state.to(input.scalar_type()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
              const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
              const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh_,
              const std::optional<at::Tensor>& w_hr_, const at::Tensor& output, const at::Tensor& workspace,
              bool reverse, bool has_bias, const at::Tensor& accumulate_grad_input) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kBwd, 4, input, batch_sizes, hx, &cx, w_ih, w_hh_, {}, {}, w_hr_);
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size, P = s.state_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, &workspace, {L.N, 5 * H});
  check_like(kBwd, "grad_cy", grad_cy, cx.sizes(), cx);
  const bool proj = w_hr_.has_value();
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = proj ? w_hr_->contiguous() : at::Tensor();
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));

  const at::Tensor ws = workspace.contiguous();
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place (a transposed or sliced gradient too)
  at::Tensor dh_state = grad_hy.contiguous().clone();
  at::Tensor dc_state = grad_cy.to(acc_opts, false, /*copy=*/true).contiguous();
  const GateGradBuffer dg = gate_grad_buffer(L.N, 4 * H, input, accumulate_grad_input);
  advise_huge_pages_gate_grads(dg);
  const at::Tensor& dgates = dg.dgx;
  const at::Tensor out = rows2d(output.contiguous());
  // With a projection: dL/dh of every row (for dW_hr), the projection inputs r, and a step's dL/dr.
  at::Tensor dh_all = proj ? at::empty({L.N, P}, input.options()) : at::Tensor();
  at::Tensor r_all = proj ? at::empty({L.N, H}, input.options()) : at::Tensor();
  at::Tensor dr = proj ? at::empty({L.B, H}, input.options()) : at::Tensor();

  // The fused brgemm recurrence (brgemm_step.h) where it applies; otherwise the per-step loop below.
  const bool fused = backward_recurrence_brgemm({BrgemmCell::kLstm, false, reverse, input, batch_sizes, w_hh, ws, out,
                                                 hx, cx, grad_output, dh_state, dc_state, dgates, at::Tensor(),
                                                 w_hr, dh_all, r_all});
  if (!fused) {  // scoped: the packed weights are freed before the whole-sequence GEMMs allocate their results
    const at::Tensor c_prev = gather_prev(ws.narrow(1, 4 * H, H), cx.to(acc_opts), L, reverse);
    const StepGemm gemm_hh(w_hh, /*transpose_w=*/false, L.B, dgates.nbytes(), L.T);
    std::optional<StepGemm> gemm_hr;
    if (proj) gemm_hr.emplace(w_hr, /*transpose_w=*/false, L.B, dgates.nbytes());
    FASTRNN_CPU_DISPATCH(input.scalar_type(), kBwd, [&] {
      const auto& K = pointwise_kernels<scalar_t>(active_isa());
      for (int64_t k = 0; k < L.T; ++k) {
        const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        const scalar_t* dh_a = dh_state.data_ptr<scalar_t>();
        const scalar_t* dh_b = go.step<scalar_t>(L, t);
        if (proj) {
          at::Tensor dh_t = dh_all.narrow(0, off, bs);
          at::add_out(dh_t, dh_state.narrow(0, 0, bs), go.rows(L, t));  // dh_t: a named lvalue view
          gemm_hr->run(dh_t, dr.narrow(0, 0, bs));
          dh_a = dr.data_ptr<scalar_t>();
          dh_b = nullptr;
        }
        LstmBwdArgs<scalar_t> a{ws.data_ptr<acc_t<scalar_t>>() + off * 5 * H,
                                c_prev.data_ptr<acc_t<scalar_t>>() + off * H,
                                dh_a,
                                dh_b,
                                dc_state.data_ptr<acc_t<scalar_t>>(),
                                dgates.data_ptr<scalar_t>() + off * 4 * H,
                                proj ? r_all.data_ptr<scalar_t>() + off * H : nullptr,
                                H,
                                go.ld};
        for_rows(bs, 4 * H, [&](int64_t b0, int64_t b1) { K.lstm_bwd(a, b0, b1); });
        gemm_hh.run(dgates.narrow(0, off, bs), dh_state.narrow(0, 0, bs));
      }
    });
  }

  // The weight gradient against the states each step started from reads them in place from output and hx.
  SequenceGrads g = sequence_grads(dg, at::Tensor(), rows2d(input.contiguous()), out, hx, L, reverse, w_ih,
                                   has_bias, input.sizes(), &seq_mm_into, &scratch_result);
  at::Tensor grad_w_hr = proj ? scratch_result({P, H}, input.options()) : at::empty({0}, input.options());
  if (proj) seq_mm_into(grad_w_hr, dh_all.t(), r_all, false);
  return {g.grad_input, dh_state, dc_state.to(input.scalar_type()), g.grad_w_ih, g.grad_w_hh,
          g.grad_b_ih, g.grad_b_hh, grad_w_hr};
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", [](const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                             const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                             const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                             const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
    return lstm_backward(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                         workspace, reverse, has_bias, at::Tensor());
  });
}

}  // namespace fastrnn::cpu
