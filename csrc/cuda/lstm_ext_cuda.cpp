// The LSTM with fastrnn's options (LayerNorm of W_hh h and of c, zoneout, recurrent dropout) on CUDA:
// fastrnn::lstm_ext_forward / lstm_ext_backward, one layer and direction of a whole (packed) sequence. Schemas,
// argument meanings and the workspace layout: csrc/fastrnn.cpp; equations: fastrnn/reference.py lstm_ext_cell;
// the argument checks (ext_args.h) and the results are those of cpu/lstm_ext_cpu.cpp.
//
// The first CUDA step for these options (the persistent kernels will absorb it later), the CPU kernel's plan:
// forward, per step, the recurrent GEMM a = (h_{t-1} * m) @ W_hh^T with cuBLAS (at::mm_out, accumulation dtype)
// into a [B, 4H] buffer, then ONE launch of lstm_ext_fwd_kernel (ext_step_kernel.cuh, one block per row: LN
// statistics, gates, cell, LN_c, zoneout; output, states, workspace). With a projection the kernel writes
// r = o * tanh(u), the host runs r @ W_hr^T and ext_mix_kernel applies zoneout over the P units.
// Backward, per step in reverse: (projection: ext_split_kernel, the zoneout split of dh on P units, and
// dh_new @ W_hr) lstm_ext_bwd_kernel (gates, LN_c and LN_hh backward with block reductions), then the carry GEMM
// (da @ W_hh) * m into dL/dh_{t-1}. The weight and LayerNorm gradients are whole-sequence GEMMs and column sums
// (at::sum, no atomics) afterwards.
#include <torch/library.h>

#include <vector>

#include "../ext_args.h"
#include "../ext_grads.h"
#include "cuda_common.h"
#include "ext_launch.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::lstm_ext_forward";
constexpr const char* kBwd = "fastrnn::lstm_ext_backward";

// The workspace's columns: ext_args.h LstmExtWorkspace; the argument checks: ext_args.h (shared with
// cpu/lstm_ext_cpu.cpp).

// ---------------------------------------------------------------------------------------------- forward
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_ext_forward(
    const at::Tensor& gates_x, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_hh_, const std::optional<at::Tensor>& w_hr_,
    const std::optional<at::Tensor>& ln_hh_weight, const std::optional<at::Tensor>& ln_hh_bias,
    const std::optional<at::Tensor>& ln_c_weight, const std::optional<at::Tensor>& ln_c_bias,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& zoneout_c,
    const std::optional<at::Tensor>& recurrent_mask, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kFwd, "gates_x", gates_x);
  const ExtShape s = check_lstm_ext_forward_args(kFwd, gates_x, batch_sizes, hx, cx, w_hh_, w_hr_, ln_hh_weight,
                                                 ln_hh_bias, ln_c_weight, ln_c_bias, zoneout_h, zoneout_c,
                                                 recurrent_mask);
  const c10::cuda::CUDAGuard guard(gates_x.device());

  const int64_t H = s.H, P = s.P;
  const SeqLayout& L = s.L;
  const bool proj = w_hr_.has_value(), has_ln_hh = ln_hh_weight.has_value(), has_ln_c = ln_c_weight.has_value();
  const LstmExtWorkspace wl(H, has_ln_hh, has_ln_c);
  const auto dt = gates_x.scalar_type();
  const auto acc_type = acc_dtype(dt);
  const auto acc_opts = gates_x.options().dtype(acc_type);
  const DType d = dtype_of(kFwd, dt);
  // The GEMMs run in the accumulation dtype (the weights converted once per call for half types), as on the CPU:
  // W_hh h reaches LN_hh and the projection reaches zoneout unrounded; only the h state is kept in the input's dtype.
  const at::Tensor w_hh = w_hh_.to(acc_type).contiguous();
  const at::Tensor w_hr = proj ? w_hr_->to(acc_type).contiguous() : at::Tensor();
  const at::Tensor lnh_w = contiguous_or_undefined(ln_hh_weight), lnh_b = contiguous_or_undefined(ln_hh_bias);
  const at::Tensor lnc_w = contiguous_or_undefined(ln_c_weight), lnc_b = contiguous_or_undefined(ln_c_bias);
  const at::Tensor kh = contiguous_or_undefined(zoneout_h), kc = contiguous_or_undefined(zoneout_c);
  const at::Tensor mask = contiguous_or_undefined(recurrent_mask);

  at::Tensor output = at::empty(lead_sizes(gates_x, P), gates_x.options());
  const at::Tensor out = rows2d(output);
  const at::Tensor gx = rows2d(gates_x.contiguous());
  at::Tensor h_state = hx.contiguous().clone();
  at::Tensor c_state = cx.to(acc_opts, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor ws = at::empty({train ? L.N : 0, train ? wl.width : 0}, acc_opts);
  // h_{t-1} * m in the accumulation dtype: the GEMM's operand, rewritten by the kernels for the next step.
  at::Tensor hm = h_state.to(acc_opts, /*non_blocking=*/false, /*copy=*/true);
  if (mask.defined()) hm.mul_(mask);
  const at::Tensor a = at::empty({L.B, 4 * H}, acc_opts);
  const at::Tensor r = proj ? at::empty({L.B, H}, acc_opts) : at::Tensor();             // o * tanh(u)
  const at::Tensor hp = proj ? at::empty({L.B, P}, acc_opts) : at::Tensor();            // r @ W_hr^T
  const at::Tensor scratch = has_ln_c ? at::empty({L.B, 2 * H}, acc_opts) : at::Tensor();  // c~, o

  if (L.N > 0 && L.B > 0) check_launch(kFwd, "lstm_ext_fwd_kernel", ext_launch_config(d, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t t = L.step(s, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    mm_into(a.narrow(0, 0, bs), hm.narrow(0, 0, bs), w_hh.t());
    LstmExtFwdParams p;
    p.a = a.data_ptr();
    p.gx = row_ptr(gx, off);
    p.ln_hh_w = ptr_of(lnh_w);
    p.ln_hh_b = ptr_of(lnh_b);
    p.ln_c_w = ptr_of(lnc_w);
    p.ln_c_b = ptr_of(lnc_b);
    if (!proj) p.zh = zoneout_at(kh, off, P);
    p.zc = zoneout_at(kc, off, H);
    p.mask = proj ? nullptr : ptr_of(mask);
    p.c_state = c_state.data_ptr();
    p.h_state = proj ? nullptr : h_state.data_ptr();
    p.hm = proj ? nullptr : hm.data_ptr();
    p.out = proj ? nullptr : row_ptr(out, off);
    p.r_out = proj ? r.data_ptr() : nullptr;
    p.scratch = has_ln_c ? scratch.data_ptr() : nullptr;
    p.ws = train ? row_ptr(ws, off) : nullptr;
    p.bs = bs;
    p.H = H;
    p.ld_out = P;
    p.ws_width = wl.width;
    p.proj = proj ? 1 : 0;
    launch_ext(d, p, stream);
    if (proj) {
      mm_into(hp.narrow(0, 0, bs), r.narrow(0, 0, bs), w_hr.t());
      ExtMixParams m;
      m.hnew = hp.data_ptr();
      m.zh = zoneout_at(kh, off, P);
      m.mask = ptr_of(mask);
      m.h_state = h_state.data_ptr();
      m.hm = hm.data_ptr();
      m.out = row_ptr(out, off);
      m.bs = bs;
      m.D = P;
      m.ld_out = P;
      launch_ext(d, m, stream);
    }
  }
  return {output, h_state, c_state.to(dt), ws};
}

// --------------------------------------------------------------------------------------------- backward
LstmExtBackwardResult lstm_ext_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_hh_,
    const std::optional<at::Tensor>& w_hr_, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_c_weight, const std::optional<at::Tensor>& zoneout_h,
    const std::optional<at::Tensor>& zoneout_c, const std::optional<at::Tensor>& recurrent_mask,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kBwd, "output", output);
  const ExtShape s = check_lstm_ext_backward_args(kBwd, grad_output, grad_hy, grad_cy, batch_sizes, hx, cx, w_hh_,
                                                  w_hr_, ln_hh_weight, ln_c_weight, zoneout_h, zoneout_c,
                                                  recurrent_mask, output, workspace);
  const c10::cuda::CUDAGuard guard(output.device());

  const int64_t H = s.H, P = s.P;
  const SeqLayout& L = s.L;
  const bool proj = w_hr_.has_value(), has_ln_hh = ln_hh_weight.has_value(), has_ln_c = ln_c_weight.has_value();
  const LstmExtWorkspace wl(H, has_ln_hh, has_ln_c);
  const auto dt = output.scalar_type();
  const auto acc_type = acc_dtype(dt);
  const auto acc_opts = output.options().dtype(acc_type);
  const DType d = dtype_of(kBwd, dt);

  const int64_t G = 4 * H, W = wl.width;
  const at::Tensor ws = workspace.contiguous();
  const at::Tensor w_hh = w_hh_.to(acc_type).contiguous();
  const at::Tensor w_hr = proj ? w_hr_->to(acc_type).contiguous() : at::Tensor();
  const at::Tensor lnh_w = contiguous_or_undefined(ln_hh_weight), lnc_w = contiguous_or_undefined(ln_c_weight);
  const at::Tensor kh = contiguous_or_undefined(zoneout_h), kc = contiguous_or_undefined(zoneout_c);
  const at::Tensor mask = contiguous_or_undefined(recurrent_mask);
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place

  at::Tensor dh_state = grad_hy.to(acc_opts, false, /*copy=*/true).contiguous();
  at::Tensor dc_state = grad_cy.to(acc_opts, false, /*copy=*/true).contiguous();
  // grad_gates_x in the input's dtype; the pre-activations' gradient (= LN_hh's output's) in the accumulation
  // dtype for the reductions, and with LN_hh that of a = W_hh (h * m) itself.
  at::Tensor dgx = at::empty({L.N, G}, output.options());
  const at::Tensor dgates = at::empty({L.N, G}, acc_opts);
  const at::Tensor da = has_ln_hh ? at::empty({L.N, G}, acc_opts) : dgates;
  const at::Tensor du = has_ln_c ? at::empty({L.N, H}, acc_opts) : at::Tensor();  // LN_c's output's gradient
  const at::Tensor dht = proj ? at::empty({L.N, P}, acc_opts) : at::Tensor();     // d(r @ W_hr^T) per row
  const at::Tensor dr = proj ? at::empty({L.B, H}, acc_opts) : at::Tensor();
  const at::Tensor carry = mask.defined() ? at::empty({L.B, P}, acc_opts) : at::Tensor();

  if (L.N > 0 && H > 0) {
    // The cell state each row started from: the workspace's c (after zoneout) of the previous step, or cx.
    const at::Tensor c_prev = gather_prev(ws.narrow(1, 4 * H, H), cx.to(acc_type).contiguous(), L, reverse);
    check_launch(kBwd, "lstm_ext_bwd_kernel", ext_launch_config(d, L.B));
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    for (int64_t s = 0; s < L.T; ++s) {
      const int64_t t = L.step(s, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      if (proj) {
        ExtSplitParams sp;
        sp.grad_out = go.ptr(L, t);
        sp.zh = zoneout_at(kh, off, P);
        sp.dh_state = dh_state.data_ptr();
        sp.dh_new = row_ptr(dht, off);
        sp.bs = bs;
        sp.D = P;
        sp.ld_grad_out = go.ld;
        launch_ext(d, sp, stream);
        mm_into(dr.narrow(0, 0, bs), dht.narrow(0, off, bs), w_hr);
      }
      LstmExtBwdParams p;
      p.grad_out = proj ? nullptr : go.ptr(L, t);
      p.dr = proj ? dr.data_ptr() : nullptr;
      p.ws = row_ptr(ws, off);
      p.c_prev = row_ptr(c_prev, off);
      p.ln_hh_w = ptr_of(lnh_w);
      p.ln_c_w = ptr_of(lnc_w);
      if (!proj) p.zh = zoneout_at(kh, off, P);
      p.zc = zoneout_at(kc, off, H);
      p.dh_state = proj ? nullptr : dh_state.data_ptr();
      p.dc_state = dc_state.data_ptr();
      p.dgx = row_ptr(dgx, off);
      p.da_ln = row_ptr(dgates, off);
      p.da = has_ln_hh ? row_ptr(da, off) : nullptr;
      p.dy_c = has_ln_c ? row_ptr(du, off) : nullptr;
      p.bs = bs;
      p.H = H;
      p.ld_grad_out = go.ld;
      p.ws_width = W;
      launch_ext(d, p, stream);
      // dL/dh_{t-1} through W_hh, times the mask, on top of the direct (zoneout) part the kernel left.
      add_recurrent_grad(dh_state, da, off, bs, w_hh, mask, carry);
    }
  } else {
    dgx.zero_();
    dgates.zero_();
    da.zero_();
    if (du.defined()) du.zero_();
    if (dht.defined()) dht.zero_();
  }

  // The whole-sequence weight and LayerNorm gradients and the returned tuple: ext_grads.h.
  return lstm_ext_backward_result(dgx.view(lead_sizes(output, G)), dh_state, dc_state, da, dgates, du, dht, output,
                                  hx, ws, recurrent_mask, L, wl, H, P, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_ext_forward", &lstm_ext_forward);
  m.impl("lstm_ext_backward", &lstm_ext_backward);
}

}  // namespace fastrnn::cuda
