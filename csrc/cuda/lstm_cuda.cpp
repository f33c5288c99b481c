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
constexpr const char* kBidirFwd = "fastrnn::lstm_bidir_forward";
constexpr const char* kBidirBwd = "fastrnn::lstm_bidir_backward";

// One direction's forward in two parts: begin (checks, allocations, the input GEMM, the persistent run's arguments)
// and end (the recurrence, unless a launch of both directions already ran it, and the final states), so that
// lstm_bidir_forward can run the recurrences of both directions in one persistent launch between them.
struct LstmFwd : DirFwd {
  bool proj = false, train = false;
  at::Tensor cx, w_hr, c_state, ws, r;
};

LstmFwd lstm_fwd_begin(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                       const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                       const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                       const std::optional<at::Tensor>& w_hr, bool reverse, bool train) {
  check_cuda(kFwd, "input", input);
  const CellShape s = check_forward_args(kFwd, 4, input, batch_sizes, hx, &cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  LstmFwd f;
  begin_dir_fwd(f, kFwd, s, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse);
  const SeqLayout& L = f.L;
  const int64_t H = f.H;
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  f.proj = w_hr.has_value();
  f.train = train;
  f.cx = cx;
  f.w_hr = f.proj ? w_hr->contiguous() : at::Tensor();
  f.c_state = cx.to(acc_opts, /*non_blocking=*/false, /*copy=*/true).contiguous();
  f.ws = at::empty({train ? L.N : 0, train ? 5 * H : 0}, acc_opts);
  f.r = f.proj ? at::empty({L.B, H}, input.options()) : at::Tensor();
  f.run = fwd_persistent_run(kFwd, L, reverse, H, f.gx, f.b_hh, f.w_hh, f.out, f.h0, f.c_state.data_ptr(),
                             train ? f.ws.data_ptr() : nullptr, 0, f.proj);
  return f;
}

// The recurrence (the persistent kernel or the step kernels; none when `done`: a joint launch ran it) and the results.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_end(LstmFwd& f, bool done) {
  const SeqLayout& L = f.L;
  const int64_t H = f.H;
  const bool reverse = f.reverse, proj = f.proj;
  const at::Tensor& out = f.out;
  if (L.T == 0) return {f.output, f.h0.clone(), f.cx.contiguous().clone(), f.ws};

  const bool persistent = done || run_fwd_persistent(kFwd, f.dt, Cell::kLstm, &f.run, 1);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kFwd, "lstm_fwd_step_kernel", fwd_launch_config(f.dt, Cell::kLstm, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    FwdStepParams p = fwd_step_params(L, t, reverse, H, f.gx, f.b_hh, f.w_hh, out, f.h0);
    p.c_state = f.c_state.data_ptr();
    p.ws = f.train ? row_ptr(f.ws, off) : nullptr;
    if (proj) {  // the kernel writes r = o*tanh(c); the GEMM below projects it into the output rows
      p.h_out = f.r.data_ptr();
      p.ld_out = H;
    }
    launch_fwd_step(f.dt, Cell::kLstm, p, stream);
    if (proj) {
      // The projection h = r @ W_hr^T as a cuBLAS GEMM into the step's output rows.
      mm_into(out.narrow(0, off, bs), f.r.narrow(0, 0, bs), f.w_hr.t());
    }
  }
  const at::Tensor hy = out.index_select(0, sequence_rows(L, /*last=*/!reverse, f.input.device()));
  return {f.output, hy, f.c_state.to(f.input.scalar_type()), f.ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const c10::cuda::CUDAGuard guard = cuda_guard(kFwd, input);
  LstmFwd f = lstm_fwd_begin(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train);
  return lstm_fwd_end(f, false);
}

// Both directions of a bidirectional layer: their recurrences in one persistent launch where it fits
// (persistent.h FASTRNN_CUDA_BIDIR), else one after the other; the results of two lstm_forward calls.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_bidir_forward(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                   const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                   const std::optional<at::Tensor>& w_hr, const at::Tensor& hx_r, const at::Tensor& cx_r,
                   const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const std::optional<at::Tensor>& b_ih_r,
                   const std::optional<at::Tensor>& b_hh_r, const std::optional<at::Tensor>& w_hr_r, bool train) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard = cuda_guard(kBidirFwd, input);
  LstmFwd d[2] = {lstm_fwd_begin(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, false, train),
                  lstm_fwd_begin(input, batch_sizes, hx_r, cx_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_hr_r, true, train)};
  return bidir_forward(kBidirFwd, Cell::kLstm, d, lstm_fwd_end);
}

// One direction's backward in two parts (as LstmFwd): begin (checks, buffers, the persistent run's arguments) and end
// (the recurrence unless a joint launch ran it, then the whole-sequence gradients).
struct LstmBwd : DirBwd {
  bool proj = false;
  at::Tensor w_hr, output, ws, dc_state, c_prev, dh_all, r_all;
};

LstmBwd lstm_bwd_begin(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                       const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                       const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                       const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& workspace,
                       bool reverse, bool has_bias) {
  check_cuda(kBwd, "input", input);
  const CellShape s = check_forward_args(kBwd, 4, input, batch_sizes, hx, &cx, w_ih, w_hh, {}, {}, w_hr);
  const int64_t H = s.hidden_size, P = s.state_size;
  LstmBwd b;
  b.proj = w_hr.has_value();
  // The persistent backward (no projection) leaves grad_hx in the carry.
  begin_dir_bwd(b, kBwd, s, grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, reverse, has_bias, 4 * H,
                /*with_carry=*/!b.proj, [&](const SeqLayout& L) {
                  check_backward_args(kBwd, input, P, grad_output, output, grad_hy, hx, &workspace, {L.N, 5 * H});
                  check_like(kBwd, "grad_cy", grad_cy, cx.sizes(), cx);
                });
  const SeqLayout& L = b.L;
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  b.output = output;
  b.w_hr = b.proj ? w_hr->contiguous() : at::Tensor();
  b.ws = workspace.contiguous();
  b.dc_state = grad_cy.to(acc_opts, false, /*copy=*/true).contiguous();
  b.c_prev = gather_prev(b.ws.narrow(1, 4 * H, H), cx.to(acc_opts), L, reverse).contiguous();
  b.dh_all = b.proj ? at::empty({L.N, P}, input.options()) : at::Tensor();
  b.r_all = b.proj ? at::empty({L.N, H}, input.options()) : at::Tensor();
  BwdPersistentArgs pa;
  pa.dg = b.dg.dgx.data_ptr();
  pa.ws = b.ws.data_ptr();
  pa.c_prev = b.c_prev.data_ptr();
  pa.dc_state = b.dc_state.data_ptr();
  b.run = bwd_persistent_run(kBwd, L, reverse, H, *b.go, b.w_hh, b.carry, pa, b.proj);
  return b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_bwd_end(LstmBwd& b, bool done) {
  const SeqLayout& L = b.L;
  const int64_t H = b.H;
  const bool reverse = b.reverse, proj = b.proj;
  const at::Tensor& input = b.input;
  const at::Tensor& dgates = b.dg.dgx;
  const StepRows& go = *b.go;
  at::Tensor& carry = b.carry;
  at::Tensor grad_hx;

  const bool persistent = done || run_bwd_persistent(kBwd, b.dt, Cell::kLstm, &b.run, 1);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kBwd, "lstm_bwd_step_kernel", bwd_launch_config(b.dt, Cell::kLstm, H, L.B));
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
      p.w_hh = b.w_hh.data_ptr();
      p.grad_out = go.ptr(L, t);
      p.ld_grad_out = go.ld;
      p.carry = carry.data_ptr();
      p.ws = row_ptr(b.ws, off);
      p.c_prev = row_ptr(b.c_prev, off);
      p.dc_state = b.dc_state.data_ptr();
      p.dg = row_ptr(dgates, off);
      p.n_next = n_next;
      p.bs = bs;
      p.H = H;
      launch_bwd_step(b.dt, Cell::kLstm, p, stream);
    }
    // The gradient reaching hx[b] through W_hh, from the step that started from it (carry is 0 by now).
    grad_hx = L.T == 0 ? b.grad_hy.contiguous().clone()
                       : at::mm(dgates.index_select(0, sequence_rows(L, /*last=*/reverse, input.device())), b.w_hh);
  } else {
    at::Tensor dh_state = b.grad_hy.contiguous().clone();
    at::Tensor dr = at::empty({L.B, H}, input.options());
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      at::Tensor dh_t = b.dh_all.narrow(0, off, bs);
      at::add_out(dh_t, dh_state.narrow(0, 0, bs), go.rows(L, t));
      mm_into(dr.narrow(0, 0, bs), dh_t, b.w_hr);
      BwdStepParams p;
      p.w_hh = b.w_hh.data_ptr();
      p.dh_ext = dr.data_ptr();
      p.ws = row_ptr(b.ws, off);
      p.c_prev = row_ptr(b.c_prev, off);
      p.dc_state = b.dc_state.data_ptr();
      p.dg = row_ptr(dgates, off);
      p.r_out = row_ptr(b.r_all, off);
      p.bs = bs;
      p.H = H;
      launch_bwd_step(b.dt, Cell::kLstm, p, stream);
      mm_into(dh_state.narrow(0, 0, bs), dgates.narrow(0, off, bs), b.w_hh);
    }
    grad_hx = dh_state;
  }

  // The weight gradient against the states each step started from reads them in place from output and hx.
  SequenceGrads g = sequence_grads(b.dg, at::Tensor(), rows2d(input.contiguous()), rows2d(b.output.contiguous()),
                                   b.hx, L, reverse, b.w_ih, b.has_bias, input.sizes());
  at::Tensor grad_w_hr = proj ? at::mm(b.dh_all.t(), b.r_all) : at::empty({0}, input.options());
  return {g.grad_input, grad_hx, b.dc_state.to(input.scalar_type()), g.grad_w_ih, g.grad_w_hh,
          g.grad_b_ih, g.grad_b_hh, grad_w_hr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
              const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
              const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
              const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& workspace,
              bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const c10::cuda::CUDAGuard guard = cuda_guard(kBwd, input);
  LstmBwd b = lstm_bwd_begin(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                             workspace, reverse, has_bias);
  return lstm_bwd_end(b, false);
}

// Both directions' backward recurrences in one persistent launch where it fits (as lstm_bidir_forward); the results
// of two lstm_backward calls, except that the input gradient is one (the sum of both directions' parts), first.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_bidir_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                    const at::Tensor& grad_output_r, const at::Tensor& grad_hy_r, const at::Tensor& grad_cy_r,
                    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& workspace,
                    const at::Tensor& hx_r, const at::Tensor& cx_r, const at::Tensor& w_ih_r,
                    const at::Tensor& w_hh_r, const std::optional<at::Tensor>& w_hr_r, const at::Tensor& output_r,
                    const at::Tensor& workspace_r, bool has_bias) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard = cuda_guard(kBidirBwd, input);
  LstmBwd d[2] = {lstm_bwd_begin(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                                 workspace, false, has_bias),
                  lstm_bwd_begin(grad_output_r, grad_hy_r, grad_cy_r, input, batch_sizes, hx_r, cx_r, w_ih_r, w_hh_r,
                                 w_hr_r, output_r, workspace_r, true, has_bias)};
  return bidir_backward(kBidirBwd, Cell::kLstm, d, lstm_bwd_end);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("lstm_bidir_forward", &lstm_bidir_forward);
  m.impl("lstm_bidir_backward", &lstm_bidir_backward);
}

}  // namespace fastrnn::cuda
