#include "ext_grads.h"

namespace fastrnn {

LstmExtBackwardResult lstm_ext_backward_result(const at::Tensor& grad_gates_x, const at::Tensor& dh_state,
                                               const at::Tensor& dc_state, const at::Tensor& da,
                                               const at::Tensor& dgates, const at::Tensor& du,
                                               const at::Tensor& dht, const at::Tensor& output,
                                               const at::Tensor& hx, const at::Tensor& ws,
                                               const std::optional<at::Tensor>& recurrent_mask,
                                               const SeqLayout& L, const LstmExtWorkspace& wl, int64_t H, int64_t P,
                                               bool reverse) {
  const int64_t G = 4 * H;
  const bool proj = dht.defined(), has_ln_hh = wl.ln_hh >= 0, has_ln_c = wl.ln_c >= 0;
  const auto dt = output.scalar_type();
  const auto acc_type = acc_dtype(dt);
  const auto acc_opts = output.options().dtype(acc_type);
  // Whole-sequence weight gradients, against the states each step started from (rows of output and hx).
  const at::Tensor out_acc = rows2d(output.contiguous()).to(acc_type);
  const at::Tensor hx_acc = hx.to(acc_type).contiguous();
  at::Tensor grad_w_hh = at::empty({G, P}, acc_opts);
  if (recurrent_mask.has_value()) {
    const at::Tensor mask = recurrent_mask->contiguous();
    at::Tensor h_prev = gather_prev(out_acc, hx_acc, L, reverse);
    for (int64_t t = 0; t < L.T; ++t)
      h_prev.narrow(0, L.offsets[t], L.batch_sizes[t]).mul_(mask.narrow(0, 0, L.batch_sizes[t]));
    mm_into(grad_w_hh, da.t(), h_prev);
  } else {
    addmm_prev(grad_w_hh, da, out_acc, hx_acc, L, reverse);
  }
  const auto empty = [&] { return at::empty({0}, output.options()); };
  at::Tensor grad_w_hr = empty();
  if (proj) grad_w_hr = at::mm(dht.t(), ws.narrow(1, 3 * H, H) * ws.narrow(1, 5 * H, H)).to(dt);
  at::Tensor g_lnh_w = empty(), g_lnh_b = empty(), g_lnc_w = empty(), g_lnc_b = empty();
  if (has_ln_hh) {
    g_lnh_w = (dgates * ws.narrow(1, wl.ln_hh, G)).sum(0).to(dt);
    g_lnh_b = dgates.sum(0).to(dt);
  }
  if (has_ln_c) {
    g_lnc_w = (du * ws.narrow(1, wl.ln_c, H)).sum(0).to(dt);
    g_lnc_b = du.sum(0).to(dt);
  }
  return {grad_gates_x, dh_state.to(dt), dc_state.to(dt), grad_w_hh.to(dt), grad_w_hr,
          g_lnh_w, g_lnh_b, g_lnc_w, g_lnc_b};
}

GruExtBackwardResult gru_ext_backward_result(const at::Tensor& grad_gates_x, const at::Tensor& dh_state,
                                             const at::Tensor& da, const at::Tensor& da_ln, const at::Tensor& output,
                                             const at::Tensor& hx, const at::Tensor& workspace,
                                             const std::optional<at::Tensor>& recurrent_mask, const SeqLayout& L,
                                             int64_t H, bool packed, bool reverse, bool has_bias, bool ln) {
  const int64_t G = 3 * H;
  const auto dtype = output.scalar_type();
  const auto empty = [&] { return at::empty({0}, output.options()); };
  // The weight gradient against the masked states the rows started from, and the reductions.
  at::Tensor hp = gather_prev(rows2d(output), hx, L, reverse).to(acc_dtype(dtype));
  if (recurrent_mask.has_value() && hp.numel() > 0) {
    const at::Tensor m = recurrent_mask->contiguous();
    if (!packed) {
      hp.view({L.T, L.B, H}).mul_(m);
    } else {
      for (int64_t t = 0; t < L.T; ++t)
        hp.narrow(0, L.offsets[t], L.batch_sizes[t]).mul_(m.narrow(0, 0, L.batch_sizes[t]));
    }
  }
  const at::Tensor grad_w_hh = at::mm(da.t(), hp).to(dtype);
  const at::Tensor grad_b_hh = has_bias ? da_ln.sum(0).to(dtype) : empty();
  at::Tensor grad_ln_w = empty(), grad_ln_b = empty();
  if (ln) {
    const at::Tensor xhat = workspace.narrow(1, 4 * H, G);
    grad_ln_w = (da_ln * xhat).sum(0).to(dtype);
    grad_ln_b = da_ln.sum(0).to(dtype);
  }
  return {grad_gates_x, dh_state.to(dtype), grad_w_hh, grad_b_hh, grad_ln_w, grad_ln_b};
}

}  // namespace fastrnn
