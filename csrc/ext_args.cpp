#include "ext_args.h"

#include <c10/util/Exception.h>

namespace fastrnn {
namespace {

// ------------------------------------------------------------------------------------------- both cells
// A tensor of the accumulation dtype (masks, zoneout weights) on the input's device.
void check_acc_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  const auto acc = acc_dtype(like.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, op, ": expected ", name, " of dtype ", acc,
                   " (the accumulation dtype of the input's ", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": expected ", name, " on ", like.device(),
              " (the input's device), got ", t.device());
}

// -------------------------------------------------------------------------------------------------- LSTM
// A parameter row (LayerNorm weight or bias) of `n` elements in the input's dtype.
void check_param(const char* op, const char* name, const std::optional<at::Tensor>& t, int64_t n,
                 const at::Tensor& like) {
  if (t.has_value()) check_like(op, name, *t, {n}, like);
}

// A tensor of the accumulation dtype with the given sizes; `one_ok`: a one-element tensor (the eval constant
// of zoneout) is accepted too.
void check_acc(const char* op, const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef sizes,
               const at::Tensor& like, bool one_ok) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->sizes() == sizes || (one_ok && t->numel() == 1), op, ": expected ", name, " of shape ",
                    sizes, one_ok ? " (or a one-element tensor: the eval constant)" : "", ", got ", t->sizes());
  check_acc_dtype(op, name, *t, like);
}

// The checks both LSTM ops share. `seq` is the op's per-row tensor (gates_x for the forward, output for the
// backward) and `seq_gates` its width in units of H (0: the state width P). Returns {H, P, seq's layout}.
ExtShape check_lstm_seq(const char* op, const at::Tensor& seq, const char* seq_name, int64_t seq_gates,
                        const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr) {
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0, op, ": w_hh must be [4*hidden_size, state_size], got ",
                    w_hh.sizes());
  const int64_t H = w_hh.size(0) / 4;
  TORCH_CHECK_VALUE(!w_hr.has_value() || (w_hr->dim() == 2 && w_hr->size(1) == H), op,
                    ": w_hr must be [proj_size, hidden_size=", H, "], got ",
                    w_hr.has_value() ? w_hr->sizes() : at::IntArrayRef());
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  const int64_t F = seq_gates > 0 ? seq_gates * H : P;
  TORCH_CHECK_VALUE(seq.dim() == (batch_sizes.has_value() ? 2 : 3) && seq.size(-1) == F, op, ": expected ",
                    seq_name, " of shape ", batch_sizes.has_value() ? "[N, " : "[T, B, ", F, "] (w_hh is ",
                    w_hh.sizes(), w_hr.has_value() ? " and w_hr gives the state size" : "", "), got ",
                    seq.sizes());
  // The remaining checks (dtypes, w_hh/w_hr/hx/cx shapes, batch_sizes) are check_forward_args's: `seq` plays
  // the input of an LSTM whose w_ih (an expanded placeholder, no memory) is [4H, F].
  const at::Tensor w_ih = at::empty({1, 1}, seq.options()).expand({4 * H, F});
  check_forward_args(op, 4, seq, batch_sizes, hx, &cx, w_ih, w_hh, {}, {}, w_hr);
  ExtShape s;
  s.H = H;
  s.P = P;
  s.L = make_layout(seq, batch_sizes);
  return s;
}

void check_ln_pair(const char* op, const char* what, const std::optional<at::Tensor>& w,
                   const std::optional<at::Tensor>& b) {
  TORCH_CHECK_VALUE(w.has_value() == b.has_value(), op, ": ", what, "_weight and ", what,
                    "_bias must be given together (both or neither), got only ", what,
                    w.has_value() ? "_weight" : "_bias");
}

// --------------------------------------------------------------------------------------------------- GRU
void check_floating(const char* op, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op,
                   ": gates_x must be float32, float64, bfloat16 or float16, got ", dt);
}

// The layout of `x` (dense [T, B, F] or packed [N, F] with batch_sizes), with batch_sizes checked.
SeqLayout checked_layout(const char* op, const char* name, const at::Tensor& x,
                         const std::optional<at::Tensor>& batch_sizes) {
  if (batch_sizes.has_value()) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK_VALUE(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
                      ": batch_sizes must be a 1-D int64 CPU tensor (PackedSequence.batch_sizes), got ",
                      bs.scalar_type(), " ", bs.sizes(), " on ", bs.device());
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": packed ", name, " (batch_sizes given) must be 2-D [N, features], got ",
                      x.sizes());
    check_batch_sizes_sum(op, bs, x.size(0), name);
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, op, ": ", name, " must be 3-D [seq_len, batch, features] (or packed [N, "
                      "features] with batch_sizes), got ", x.sizes());
  }
  return make_layout(x, batch_sizes);
}

// zoneout_h: the weights of the previous state per row ([T, B, H] dense, [N, H] either way) or one element.
void check_zoneout(const char* op, const std::optional<at::Tensor>& k, const SeqLayout& L, bool packed,
                   int64_t H, const at::Tensor& like) {
  if (!k.has_value()) return;
  check_acc_dtype(op, "zoneout_h", *k, like);
  if (k->numel() == 1) return;
  const bool rows = k->dim() == 2 && k->size(0) == L.N && k->size(1) == H;
  const bool dense = !packed && k->dim() == 3 && k->size(0) == L.T && k->size(1) == L.B && k->size(2) == H;
  TORCH_CHECK_VALUE(rows || dense, op, ": expected zoneout_h of shape ",
                    packed ? at::IntArrayRef({L.N, H}) : at::IntArrayRef({L.T, L.B, H}),
                    " (one weight per row and unit) or a one-element tensor (the eval constant), got ",
                    k->sizes());
}

void check_mask(const char* op, const std::optional<at::Tensor>& m, int64_t B, int64_t H, const at::Tensor& like) {
  if (!m.has_value()) return;
  check_acc_dtype(op, "recurrent_mask", *m, like);
  TORCH_CHECK_VALUE(m->dim() == 2 && m->size(0) == B && m->size(1) == H, op, ": expected recurrent_mask of shape [",
                    B, ", ", H, "] (batch, hidden_size), got ", m->sizes());
}

// The checks both GRU ops share, up to the sequence's features: its dtype, w_hh [3H, H] and the layout of
// `seq` (gates_x or output) with batch_sizes. Returns {H, H, L}.
ExtShape check_gru_seq(const char* op, const at::Tensor& seq, const char* seq_name,
                       const std::optional<at::Tensor>& batch_sizes, const at::Tensor& w_hh) {
  check_floating(op, seq);
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == 3 * w_hh.size(1), op,
                    ": w_hh must be [3*hidden_size, hidden_size], got ", w_hh.sizes());
  check_like(op, "w_hh", w_hh, w_hh.sizes(), seq);
  ExtShape s;
  s.H = s.P = w_hh.size(1);
  s.L = checked_layout(op, seq_name, seq, batch_sizes);
  return s;
}

}  // namespace

// -------------------------------------------------------------------------------------------------- LSTM
ExtShape check_lstm_ext_forward_args(const char* op, const at::Tensor& gates_x,
                                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                                     const at::Tensor& cx, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& w_hr,
                                     const std::optional<at::Tensor>& ln_hh_weight,
                                     const std::optional<at::Tensor>& ln_hh_bias,
                                     const std::optional<at::Tensor>& ln_c_weight,
                                     const std::optional<at::Tensor>& ln_c_bias,
                                     const std::optional<at::Tensor>& zoneout_h,
                                     const std::optional<at::Tensor>& zoneout_c,
                                     const std::optional<at::Tensor>& recurrent_mask) {
  const ExtShape s = check_lstm_seq(op, gates_x, "gates_x", 4, batch_sizes, hx, cx, w_hh, w_hr);
  const int64_t H = s.H, P = s.P;
  check_ln_pair(op, "ln_hh", ln_hh_weight, ln_hh_bias);
  check_ln_pair(op, "ln_c", ln_c_weight, ln_c_bias);
  check_param(op, "ln_hh_weight", ln_hh_weight, 4 * H, gates_x);
  check_param(op, "ln_hh_bias", ln_hh_bias, 4 * H, gates_x);
  check_param(op, "ln_c_weight", ln_c_weight, H, gates_x);
  check_param(op, "ln_c_bias", ln_c_bias, H, gates_x);
  check_acc(op, "zoneout_h", zoneout_h, lead_sizes(gates_x, P), gates_x, true);
  check_acc(op, "zoneout_c", zoneout_c, lead_sizes(gates_x, H), gates_x, true);
  check_acc(op, "recurrent_mask", recurrent_mask, hx.sizes(), gates_x, false);
  return s;
}

ExtShape check_lstm_ext_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                      const at::Tensor& grad_cy, const std::optional<at::Tensor>& batch_sizes,
                                      const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& w_hr,
                                      const std::optional<at::Tensor>& ln_hh_weight,
                                      const std::optional<at::Tensor>& ln_c_weight,
                                      const std::optional<at::Tensor>& zoneout_h,
                                      const std::optional<at::Tensor>& zoneout_c,
                                      const std::optional<at::Tensor>& recurrent_mask, const at::Tensor& output,
                                      const at::Tensor& workspace) {
  const ExtShape s = check_lstm_seq(op, output, "output", 0, batch_sizes, hx, cx, w_hh, w_hr);
  const int64_t H = s.H;
  check_like(op, "grad_output", grad_output, output.sizes(), output);
  check_like(op, "grad_hy", grad_hy, hx.sizes(), hx);
  check_like(op, "grad_cy", grad_cy, cx.sizes(), cx);
  check_param(op, "ln_hh_weight", ln_hh_weight, 4 * H, output);
  check_param(op, "ln_c_weight", ln_c_weight, H, output);
  check_acc(op, "zoneout_h", zoneout_h, output.sizes(), output, true);
  check_acc(op, "zoneout_c", zoneout_c, lead_sizes(output, H), output, true);
  check_acc(op, "recurrent_mask", recurrent_mask, hx.sizes(), output, false);
  const LstmExtWorkspace wl(H, ln_hh_weight.has_value(), ln_c_weight.has_value());
  const auto acc_type = acc_dtype(output.scalar_type());
  TORCH_CHECK_VALUE(workspace.sizes() == at::IntArrayRef({s.L.N, wl.width}) && workspace.scalar_type() == acc_type,
                    op, ": workspace must be the [", s.L.N, ", ", wl.width, "] ", acc_type,
                    " tensor the forward returned with train=True (for these ln_hh/ln_c options), got ",
                    workspace.scalar_type(), " ", workspace.sizes(), " (was the forward run with train=False?)");
  TORCH_CHECK(workspace.device() == output.device(), op, ": expected workspace on ", output.device(),
              " (the input's device), got ", workspace.device());
  return s;
}

// --------------------------------------------------------------------------------------------------- GRU
ExtShape check_gru_ext_forward_args(const char* op, const at::Tensor& gates_x,
                                    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                                    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
                                    const std::optional<at::Tensor>& ln_hh_weight,
                                    const std::optional<at::Tensor>& ln_hh_bias,
                                    const std::optional<at::Tensor>& zoneout_h,
                                    const std::optional<at::Tensor>& recurrent_mask) {
  const ExtShape s = check_gru_seq(op, gates_x, "gates_x", batch_sizes, w_hh);
  const int64_t H = s.H, G = 3 * H;
  TORCH_CHECK_VALUE(gates_x.size(-1) == G, op, ": gates_x has ", gates_x.size(-1),
                    " features but w_hh expects 3*hidden_size=", G);
  check_like(op, "hx", hx, {s.L.B, H}, gates_x);
  if (b_hh.has_value()) check_like(op, "b_hh", *b_hh, {G}, gates_x);
  TORCH_CHECK_VALUE(ln_hh_weight.has_value() == ln_hh_bias.has_value(), op,
                    ": ln_hh_weight and ln_hh_bias must be given together (both or neither), got ",
                    ln_hh_weight.has_value() ? "ln_hh_weight only" : "ln_hh_bias only");
  if (ln_hh_weight.has_value()) {
    check_like(op, "ln_hh_weight", *ln_hh_weight, {G}, gates_x);
    check_like(op, "ln_hh_bias", *ln_hh_bias, {G}, gates_x);
  }
  check_zoneout(op, zoneout_h, s.L, batch_sizes.has_value(), H, gates_x);
  check_mask(op, recurrent_mask, s.L.B, H, gates_x);
  return s;
}

ExtShape check_gru_ext_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                                     const at::Tensor& w_hh, const std::optional<at::Tensor>& ln_hh_weight,
                                     const std::optional<at::Tensor>& zoneout_h,
                                     const std::optional<at::Tensor>& recurrent_mask, const at::Tensor& output,
                                     const at::Tensor& workspace) {
  const ExtShape s = check_gru_seq(op, output, "output", batch_sizes, w_hh);
  const int64_t H = s.H;
  TORCH_CHECK_VALUE(output.size(-1) == H, op, ": output has ", output.size(-1),
                    " features but w_hh expects hidden_size=", H);
  check_like(op, "hx", hx, {s.L.B, H}, output);
  const bool ln = ln_hh_weight.has_value();
  if (ln) check_like(op, "ln_hh_weight", *ln_hh_weight, {3 * H}, output);
  check_backward_args(op, output, H, grad_output, output, grad_hy, hx, &workspace,
                      {s.L.N, gru_ext_ws_width(H, ln)});
  check_zoneout(op, zoneout_h, s.L, batch_sizes.has_value(), H, output);
  check_mask(op, recurrent_mask, s.L.B, H, output);
  return s;
}

}  // namespace fastrnn
