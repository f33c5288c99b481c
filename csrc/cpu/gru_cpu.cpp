// GRU on the CPU: one layer, one direction, a whole (packed) sequence. Same plan as lstm_cpu.cpp; the
// h-side pre-activations stay separate from the x side up to the pointwise pass because the reset gate
// multiplies W_hn h + b_hn alone (torch.nn's formulation).
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

constexpr const char* kFwd = "fastrnn::gru_forward";
constexpr const char* kBwd = "fastrnn::gru_backward";

}  // namespace

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
  at::Tensor ws = empty_on_huge_pages({train ? L.N : 0, train ? 4 * H : 0}, acc_opts);
  const at::Tensor gx = checked_dtype("the x-side GEMM", mm_wt(rows2d(input.contiguous()), w_ih.contiguous()),
                                     input.scalar_type());  // biases: in the pointwise pass
  const at::Tensor gh = at::empty({L.B, 3 * H}, input.options());

  const StepGemm gemm_hh(w_hh, /*transpose_w=*/true, L.B, INT64_MAX, L.T);
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
    const at::Tensor& w_hh_, const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias,
    const at::Tensor& accumulate_grad_input) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const CellShape s = check_forward_args(kBwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh_, {}, {}, {});
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, &workspace, {L.N, 4 * H});
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor ws = workspace.contiguous();
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place (a transposed or sliced gradient too)
  // The states the steps started from are read in place: the previous step's rows of out, or hx.
  const at::Tensor out = rows2d(output.contiguous());
  const at::Tensor h0 = hx.contiguous();
  at::Tensor dh_state = grad_hy.contiguous().clone();
  const GateGradBuffer dg = gate_grad_buffer(L.N, 3 * H, input, accumulate_grad_input);
  advise_huge_pages_gate_grads(dg);
  const at::Tensor& dgx = dg.dgx;
  // The h-side gate gradients equal the x side's for r and z; only n's differs (dph_n = dpx_n * r). So the
  // whole sequence keeps dph_n alone [N, H], and a step's full h-side rows [dr, dz, dph_n], which its
  // recurrent GEMM reads, live in a one-step buffer.
  at::Tensor dph_n = at::empty({L.N, H}, input.options());

  // The fused brgemm recurrence (brgemm_step.h) where it applies; otherwise the per-step loop below.
  const bool fused = backward_recurrence_brgemm({BrgemmCell::kGru, false, reverse, input, batch_sizes, w_hh, ws, out,
                                                 h0, h0, grad_output, dh_state, dh_state, dgx, dph_n, at::Tensor(),
                                                 at::Tensor(), at::Tensor()});
  if (!fused) {  // scoped: the step buffer and the packed weight are freed before the whole-sequence GEMMs
    const at::Tensor dgh_step = at::empty({L.B, 3 * H}, input.options());
    const StepGemm gemm_hh(w_hh, /*transpose_w=*/false, L.B, dgx.nbytes(), L.T);
    FASTRNN_CPU_DISPATCH(input.scalar_type(), kBwd, [&] {
      const auto& K = pointwise_kernels<scalar_t>(active_isa());
      for (int64_t k = 0; k < L.T; ++k) {
        const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        const int64_t prev = L.prev_step(t, reverse), with_prev = L.rows_with_prev(t, reverse);
        // Rows b < with_prev started from row b of the previous step, the others from hx[b].
        GruBwdArgs<scalar_t> a{ws.data_ptr<acc_t<scalar_t>>() + off * 4 * H,
                               with_prev > 0 ? out.data_ptr<scalar_t>() + L.offsets[prev] * H : h0.data_ptr<scalar_t>(),
                               dh_state.data_ptr<scalar_t>(),
                               go.step<scalar_t>(L, t),
                               dgx.data_ptr<scalar_t>() + off * 3 * H,
                               dgh_step.data_ptr<scalar_t>(),
                               dh_state.data_ptr<scalar_t>(),
                               H,
                               dph_n.data_ptr<scalar_t>() + off * H,
                               go.ld};
        GruBwdArgs<scalar_t> a_init = a;
        a_init.h_prev = h0.data_ptr<scalar_t>();
        for_rows(bs, 3 * H, [&](int64_t b0, int64_t b1) {
          if (b0 < with_prev) K.gru_bwd(a, b0, std::min(b1, with_prev));
          if (b1 > with_prev) K.gru_bwd(a_init, std::max(b0, with_prev), b1);
        });
        gemm_hh.run(dgh_step.narrow(0, 0, bs), dh_state.narrow(0, 0, bs), /*accumulate=*/true);
      }
    });
  }

  SequenceGrads g = sequence_grads(dg, dph_n, rows2d(input.contiguous()), out, hx, L, reverse, w_ih, has_bias,
                                   input.sizes(), &seq_mm_into, &scratch_result);
  return {g.grad_input, dh_state, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", [](const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                            const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                            const at::Tensor& workspace, bool reverse, bool has_bias) {
    return gru_backward(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, workspace, reverse,
                        has_bias, at::Tensor());
  });
}

}  // namespace fastrnn::cpu
