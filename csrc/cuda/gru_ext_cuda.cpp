// The GRU with fastrnn's options (layer_norm on W_hh h, zoneout, recurrent dropout) on CUDA:
// fastrnn::gru_ext_forward / gru_ext_backward, one layer and direction of a whole (packed) sequence. Schemas and
// the workspace layout: csrc/fastrnn.cpp; equations: fastrnn/reference.py gru_ext_cell; the argument checks
// (ext_args.h) and the results are those of cpu/gru_ext_cpu.cpp.
//
// Same plan as lstm_ext_cuda.cpp: per step the recurrent GEMM a = (h_{t-1} * m) @ W_hh^T (cuBLAS, accumulation
// dtype) into a [B, 3H] buffer, then ONE launch of gru_ext_fwd_kernel (ext_step_kernel.cuh: one block per row,
// LN statistics with block reductions, gates, zoneout; output, state, masked state, workspace). Backward per step
// in reverse: gru_ext_bwd_kernel (zoneout split, gates, LN backward) then the carry GEMM (da @ W_hh) * m; the
// weight, b_hh and LayerNorm gradients are whole-sequence GEMMs and column sums (at::sum) afterwards.
#include <torch/library.h>

#include "../ext_args.h"
#include "../ext_grads.h"
#include "cuda_common.h"
#include "ext_launch.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::gru_ext_forward";
constexpr const char* kBwd = "fastrnn::gru_ext_backward";

// The workspace columns of a row (ext_args.h gru_ext_ws_width) and the argument checks: ext_args.h (shared
// with cpu/gru_ext_cpu.cpp).

// ----------------------------------------------------------------------------------------------- forward
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_ext_forward(
    const at::Tensor& gates_x, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_hh_bias, const std::optional<at::Tensor>& zoneout_h,
    const std::optional<at::Tensor>& recurrent_mask, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kFwd, "gates_x", gates_x);
  const DType d = dtype_of(kFwd, gates_x.scalar_type());
  const ExtShape s = check_gru_ext_forward_args(kFwd, gates_x, batch_sizes, hx, w_hh, b_hh, ln_hh_weight, ln_hh_bias,
                                                zoneout_h, recurrent_mask);
  const c10::cuda::CUDAGuard guard(gates_x.device());
  const int64_t H = s.H, G = 3 * H;
  const SeqLayout& L = s.L;
  const bool ln = ln_hh_weight.has_value();

  const auto dtype = gates_x.scalar_type();
  const auto acc_type = acc_dtype(dtype);
  const auto acc_opts = gates_x.options().dtype(acc_type);
  const int64_t W = gru_ext_ws_width(H, ln);
  auto out_sizes = gates_x.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, gates_x.options());
  at::Tensor h_state = hx.contiguous().clone();
  at::Tensor ws = at::empty({train ? L.N : 0, train ? W : 0}, acc_opts);
  if (L.N == 0 || H == 0) {
    if (train && ws.numel() > 0) ws.zero_();
    return {output, h_state, ws};
  }

  const at::Tensor gx = rows2d(gates_x.contiguous());
  const at::Tensor out = rows2d(output);
  // The GEMM in the accumulation dtype (the weight converted once per call for half types), as on the CPU.
  const at::Tensor w_acc = w_hh.to(acc_type).contiguous();
  const at::Tensor bh = contiguous_or_undefined(b_hh);
  const at::Tensor lnw = contiguous_or_undefined(ln_hh_weight), lnb = contiguous_or_undefined(ln_hh_bias);
  const at::Tensor kh = contiguous_or_undefined(zoneout_h);
  const at::Tensor mask = contiguous_or_undefined(recurrent_mask);
  // The GEMM's operand: the state (rounded to the input's dtype) times the mask, in the accumulation dtype;
  // rewritten by the kernel for the next step.
  at::Tensor hm = h_state.to(acc_opts, /*non_blocking=*/false, /*copy=*/true);
  if (mask.defined()) hm.mul_(mask);
  const at::Tensor a = at::empty({L.B, G}, acc_opts);

  check_launch(kFwd, "gru_ext_fwd_kernel", ext_launch_config(d, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t t = L.step(s, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    mm_into(a.narrow(0, 0, bs), hm.narrow(0, 0, bs), w_acc.t());
    GruExtFwdParams p;
    p.a = a.data_ptr();
    p.gx = row_ptr(gx, off);
    p.b_hh = ptr_of(bh);
    p.ln_hh_w = ptr_of(lnw);
    p.ln_hh_b = ptr_of(lnb);
    p.zh = zoneout_at(kh, off, H);
    p.mask = ptr_of(mask);
    p.h_state = h_state.data_ptr();
    p.hm = hm.data_ptr();
    p.out = row_ptr(out, off);
    p.ws = train ? row_ptr(ws, off) : nullptr;
    p.bs = bs;
    p.H = H;
    p.ld_out = H;
    p.ws_width = W;
    launch_ext(d, p, stream);
  }
  return {output, h_state, ws};
}

// ---------------------------------------------------------------------------------------------- backward
GruExtBackwardResult gru_ext_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_hh, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& recurrent_mask,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kBwd, "output", output);
  const DType d = dtype_of(kBwd, output.scalar_type());
  const ExtShape s = check_gru_ext_backward_args(kBwd, grad_output, grad_hy, batch_sizes, hx, w_hh, ln_hh_weight,
                                                 zoneout_h, recurrent_mask, output, workspace);
  const c10::cuda::CUDAGuard guard(output.device());
  const int64_t H = s.H, G = 3 * H;
  const SeqLayout& L = s.L;
  const bool packed = batch_sizes.has_value();
  const bool ln = ln_hh_weight.has_value();
  const int64_t W = gru_ext_ws_width(H, ln);

  const auto dtype = output.scalar_type();
  const auto acc_type = acc_dtype(dtype);
  const auto acc_opts = output.options().dtype(acc_type);
  auto gx_sizes = output.sizes().vec();
  gx_sizes.back() = G;
  at::Tensor grad_gates_x = at::empty(gx_sizes, output.options());
  const at::Tensor dgx = rows2d(grad_gates_x);
  at::Tensor dh_state = at::empty({L.B, H}, acc_opts);
  dh_state.copy_(grad_hy);
  // The gradient of the recurrent pre-activation W_hh (h * m) of every row, and with LN that of its normalised
  // value (the gradient of b_hh and of the LN bias: da_ln = [d r, d z, d n * r]).
  at::Tensor da = at::empty({L.N, G}, acc_opts);
  at::Tensor da_ln = ln ? at::empty({L.N, G}, acc_opts) : da;
  const at::Tensor mask = contiguous_or_undefined(recurrent_mask);

  if (L.N > 0 && H > 0) {
    const at::Tensor ws = workspace.contiguous();
    const StepRows go(grad_output, packed);  // read in place
    const at::Tensor w_acc = w_hh.to(acc_type).contiguous();
    const at::Tensor lnw = contiguous_or_undefined(ln_hh_weight);
    const at::Tensor kh = contiguous_or_undefined(zoneout_h);
    const at::Tensor carry = mask.defined() ? at::empty({L.B, H}, acc_opts) : at::Tensor();
    // The state each row started from (z * h and the zoneout path use the unmasked state).
    const at::Tensor h_prev = gather_prev(rows2d(output), hx, L, reverse);
    check_launch(kBwd, "gru_ext_bwd_kernel", ext_launch_config(d, L.B));
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    for (int64_t s = 0; s < L.T; ++s) {
      const int64_t t = L.step(s, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      GruExtBwdParams p;
      p.grad_out = go.ptr(L, t);
      p.ws = row_ptr(ws, off);
      p.h_prev = row_ptr(h_prev, off);
      p.ln_hh_w = ptr_of(lnw);
      p.zh = zoneout_at(kh, off, H);
      p.dh_state = dh_state.data_ptr();
      p.dgx = row_ptr(dgx, off);
      p.da_ln = row_ptr(da_ln, off);
      p.da = ln ? row_ptr(da, off) : nullptr;
      p.bs = bs;
      p.H = H;
      p.ld_grad_out = go.ld;
      p.ws_width = W;
      launch_ext(d, p, stream);
      // The carry into the previous state: (da @ W_hh) * m on top of the direct terms the kernel left.
      add_recurrent_grad(dh_state, da, off, bs, w_acc, mask, carry);
    }
  } else {
    da.zero_();
    da_ln.zero_();
    grad_gates_x.zero_();
  }

  // Whole-sequence: the weight gradient against the masked states the rows started from, the reductions and the
  // returned tuple: ext_grads.h.
  return gru_ext_backward_result(grad_gates_x, dh_state, da, da_ln, output, hx, workspace, recurrent_mask, L, H,
                                 packed, reverse, has_bias, ln);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("gru_ext_forward", &gru_ext_forward);
  m.impl("gru_ext_backward", &gru_ext_backward);
}

}  // namespace fastrnn::cuda
