// LSTM (optionally with projection) on CUDA: one layer, one direction, a whole (packed) sequence. Returns
// exactly what lstm_cpu.cpp returns (shapes, dtypes, workspace [N, 5H] = i, f, g, o, c in the accumulation
// dtype); float16/bfloat16 compute in fp32 and keep c and the workspace in fp32.
//
// Forward: the x half of [h_{t-1}, x_t] @ [W_hh | W_ih]^T for all steps is one cuBLAS GEMM up front
// (input_gates): it has no sequential dependency, so one large GEMM at full occupancy beats doing it inside
// every step. Then one fused step kernel per timestep (fwd_step_kernel.cuh). With a projection the step
// kernel writes r = o*tanh(c) to a [B, H] buffer and h = r @ W_hr^T is a cuBLAS GEMM (at::mm_out) straight
// into the step's output rows, which the next step reads as its h_{t-1}.
// Backward without a projection: the persistent kernel (bwd_persistent_kernel.cuh, one cooperative launch for every
// step; persistent.h says when) or one fused step kernel per timestep (bwd_step_kernel.cuh) computing dh = dG_next @ W_hh for its
// units plus grad_output and the carried dh, then the pointwise backward. With a projection, dh and
// dr = dh @ W_hr and dh_{t-1} = dG_t @ W_hh are GEMMs between the launches (as in the CPU code) and the step
// kernel runs its pointwise part only. Weight, input and bias gradients: sequence_grads (GEMMs and
// deterministic reductions; no atomics anywhere).
#include <torch/library.h>

#include "cuda_common.h"
#include "persistent.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::lstm_forward";
constexpr const char* kBwd = "fastrnn::lstm_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh_, const std::optional<at::Tensor>& w_hr_, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kFwd, "input", input);
  const CellShape s = check_forward_args(kFwd, 4, input, batch_sizes, hx, &cx, w_ih, w_hh_, b_ih, b_hh_, w_hr_);
  const c10::cuda::CUDAGuard guard(input.device());
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size, P = s.state_size;
  const bool proj = w_hr_.has_value();
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = proj ? w_hr_->contiguous() : at::Tensor();
  const std::optional<at::Tensor> b_hh =
      b_hh_.has_value() ? std::optional<at::Tensor>(b_hh_->contiguous()) : std::nullopt;
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  const DType dt = dtype_of(kFwd, input.scalar_type());

  auto out_sizes = input.sizes().vec();
  out_sizes.back() = P;
  at::Tensor output = at::empty(out_sizes, input.options());
  const at::Tensor out = rows2d(output);
  const at::Tensor h0 = hx.contiguous();
  at::Tensor c_state = cx.to(acc_opts, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor ws = at::empty({train ? L.N : 0, train ? 5 * H : 0}, acc_opts);
  const at::Tensor gx = input_gates(rows2d(input.contiguous()), w_ih, b_ih).contiguous();
  const at::Tensor r = proj ? at::empty({L.B, H}, input.options()) : at::Tensor();
  if (L.T == 0) return {output, h0.clone(), cx.contiguous().clone(), ws};

  const bool persistent = run_fwd_persistent(kFwd, dt, Cell::kLstm, L, reverse, H, gx, b_hh, w_hh, out, h0,
                                             c_state.data_ptr(), train ? ws.data_ptr() : nullptr, 0, proj);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kFwd, "lstm_fwd_step_kernel", fwd_launch_config(dt, Cell::kLstm, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    FwdStepParams p = fwd_step_params(L, t, reverse, H, gx, b_hh, w_hh, out, h0);
    p.c_state = c_state.data_ptr();
    p.ws = train ? row_ptr(ws, off) : nullptr;
    if (proj) {  // the kernel writes r = o*tanh(c); the GEMM below projects it into the output rows
      p.h_out = r.data_ptr();
      p.ld_out = H;
    }
    launch_fwd_step(dt, Cell::kLstm, p, stream);
    if (proj) {
      // The projection h = r @ W_hr^T as a cuBLAS GEMM into the step's output rows.
      mm_into(out.narrow(0, off, bs), r.narrow(0, 0, bs), w_hr.t());
    }
  }
  const at::Tensor hy = out.index_select(0, sequence_rows(L, /*last=*/!reverse, input.device()));
  return {output, hy, c_state.to(input.scalar_type()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
              const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
              const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh_,
              const std::optional<at::Tensor>& w_hr_, const at::Tensor& output, const at::Tensor& workspace,
              bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kBwd, "input", input);
  const CellShape s = check_forward_args(kBwd, 4, input, batch_sizes, hx, &cx, w_ih, w_hh_, {}, {}, w_hr_);
  const c10::cuda::CUDAGuard guard(input.device());
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size, P = s.state_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, &workspace, {L.N, 5 * H});
  check_like(kBwd, "grad_cy", grad_cy, cx.sizes(), cx);
  const bool proj = w_hr_.has_value();
  const at::Tensor w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = proj ? w_hr_->contiguous() : at::Tensor();
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  const DType dt = dtype_of(kBwd, input.scalar_type());

  const at::Tensor ws = workspace.contiguous();
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place (a transposed or sliced gradient too)
  at::Tensor dc_state = grad_cy.to(acc_opts, false, /*copy=*/true).contiguous();
  const at::Tensor c_prev = gather_prev(ws.narrow(1, 4 * H, H), cx.to(acc_opts), L, reverse).contiguous();
  const GateGradBuffer dg = gate_grad_buffer(L.N, 4 * H, input);
  const at::Tensor& dgates = dg.dgx;
  at::Tensor grad_hx;
  at::Tensor dh_all = proj ? at::empty({L.N, P}, input.options()) : at::Tensor();
  at::Tensor r_all = proj ? at::empty({L.N, H}, input.options()) : at::Tensor();

  // The persistent backward (one cooperative launch; no projection): carry leaves as grad_hx.
  at::Tensor carry = proj ? at::Tensor() : grad_hy.to(acc_opts, false, /*copy=*/true).contiguous();
  BwdPersistentArgs pa;
  pa.dg = dgates.data_ptr();
  pa.ws = ws.data_ptr();
  pa.c_prev = c_prev.data_ptr();
  pa.dc_state = dc_state.data_ptr();
  const bool persistent = run_bwd_persistent(kBwd, dt, Cell::kLstm, L, reverse, H, go, w_hh, carry, pa, proj);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kBwd, "lstm_bwd_step_kernel", bwd_launch_config(dt, Cell::kLstm, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (persistent) {
    grad_hx = carry.to(input.scalar_type());
  } else if (!proj) {
    // carry: the part of dL/dh not yet sent through W_hh: grad_hy for rows that end at a step, then 0.
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      const int64_t nxt = next_step(L, t, reverse);
      const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
      BwdStepParams p;
      p.dg_next = n_next > 0 ? row_ptr(dgates, L.offsets[nxt]) : nullptr;
      p.w_hh = w_hh.data_ptr();
      p.grad_out = go.ptr(L, t);
      p.ld_grad_out = go.ld;
      p.carry = carry.data_ptr();
      p.ws = row_ptr(ws, off);
      p.c_prev = row_ptr(c_prev, off);
      p.dc_state = dc_state.data_ptr();
      p.dg = row_ptr(dgates, off);
      p.n_next = n_next;
      p.bs = bs;
      p.H = H;
      launch_bwd_step(dt, Cell::kLstm, p, stream);
    }
    // The gradient reaching hx[b] through W_hh, from the step that started from it (carry is 0 by now).
    grad_hx = L.T == 0 ? grad_hy.contiguous().clone()
                       : at::mm(dgates.index_select(0, sequence_rows(L, /*last=*/reverse, input.device())), w_hh);
  } else {
    at::Tensor dh_state = grad_hy.contiguous().clone();
    at::Tensor dr = at::empty({L.B, H}, input.options());
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      at::Tensor dh_t = dh_all.narrow(0, off, bs);
      at::add_out(dh_t, dh_state.narrow(0, 0, bs), go.rows(L, t));
      mm_into(dr.narrow(0, 0, bs), dh_t, w_hr);
      BwdStepParams p;
      p.w_hh = w_hh.data_ptr();
      p.dh_ext = dr.data_ptr();
      p.ws = row_ptr(ws, off);
      p.c_prev = row_ptr(c_prev, off);
      p.dc_state = dc_state.data_ptr();
      p.dg = row_ptr(dgates, off);
      p.r_out = row_ptr(r_all, off);
      p.bs = bs;
      p.H = H;
      launch_bwd_step(dt, Cell::kLstm, p, stream);
      mm_into(dh_state.narrow(0, 0, bs), dgates.narrow(0, off, bs), w_hh);
    }
    grad_hx = dh_state;
  }

  // The weight gradient against the states each step started from reads them in place from output and hx.
  SequenceGrads g = sequence_grads(dg, at::Tensor(), rows2d(input.contiguous()), rows2d(output.contiguous()),
                                   hx, L, reverse, w_ih, has_bias, input.sizes());
  at::Tensor grad_w_hr = proj ? at::mm(dh_all.t(), r_all) : at::empty({0}, input.options());
  return {g.grad_input, grad_hx, dc_state.to(input.scalar_type()), g.grad_w_ih, g.grad_w_hh,
          g.grad_b_ih, g.grad_b_hh, grad_w_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}

}  // namespace fastrnn::cuda
