#include "sequence.h"

#include <c10/util/Exception.h>

namespace fastrnn {

SeqLayout make_layout(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes) {
  SeqLayout l;
  if (batch_sizes.has_value()) {
    const at::Tensor bs = batch_sizes->contiguous();
    l.T = bs.numel();
    l.batch_sizes.assign(bs.data_ptr<int64_t>(), bs.data_ptr<int64_t>() + l.T);
    l.B = l.T > 0 ? l.batch_sizes[0] : 0;
  } else {
    l.T = input.size(0);
    l.B = input.size(1);
    l.batch_sizes.assign(l.T, l.B);
  }
  l.offsets.resize(l.T + 1, 0);
  for (int64_t t = 0; t < l.T; ++t) l.offsets[t + 1] = l.offsets[t] + l.batch_sizes[t];
  l.N = l.offsets[l.T];
  return l;
}

void check_like(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes,
                const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": expected ", name, " of shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": expected ", name, " of dtype ",
                   like.scalar_type(), " (the input's), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": expected ", name, " on ", like.device(),
              " (the input's device), got ", t.device());
}

CellShape check_forward_args(const char* op, int64_t gates, const at::Tensor& input,
                             const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                             const at::Tensor* cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                             const std::optional<at::Tensor>& w_hr) {
  const auto dt = input.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op,
                   ": input must be float32, float64, bfloat16 or float16, got ", dt);
  // Zero sizes are allowed as torch.nn's cells allow them (RNNCell(10, 0), LSTMCell(0, 5)): input_size 0
  // makes W_ih x contribute nothing, hidden_size 0 gives empty outputs; so is proj_size 0 for the raw op.
  TORCH_CHECK_VALUE(w_ih.dim() == 2 && w_ih.size(0) % gates == 0, op, ": w_ih must be [", gates,
                    "*hidden_size, input_size], got ", w_ih.sizes());
  CellShape s{op, gates, w_ih.size(1), w_ih.size(0) / gates, w_ih.size(0) / gates};
  if (w_hr.has_value()) {
    TORCH_CHECK_VALUE(w_hr->dim() == 2 && w_hr->size(1) == s.hidden_size, op,
                      ": w_hr must be [proj_size, hidden_size=", s.hidden_size, "], got ", w_hr->sizes());
    s.state_size = w_hr->size(0);
    check_like(op, "w_hr", *w_hr, w_hr->sizes(), input);
  }
  const int64_t G = gates * s.hidden_size;
  check_like(op, "w_ih", w_ih, w_ih.sizes(), input);
  check_like(op, "w_hh", w_hh, {G, s.state_size}, input);
  if (b_ih.has_value()) check_like(op, "b_ih", *b_ih, {G}, input);
  if (b_hh.has_value()) check_like(op, "b_hh", *b_hh, {G}, input);
  TORCH_CHECK_VALUE(b_ih.has_value() == b_hh.has_value(), op, ": b_ih and b_hh must be given together");

  int64_t B;
  if (batch_sizes.has_value()) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK_VALUE(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
                      ": batch_sizes must be a 1-D int64 CPU tensor (PackedSequence.batch_sizes), got ",
                      bs.scalar_type(), " ", bs.sizes(), " on ", bs.device());
    TORCH_CHECK_VALUE(input.dim() == 2, op, ": packed input (batch_sizes given) must be [N, input_size], got ",
                      input.sizes());
    const at::Tensor bsc = bs.contiguous();
    const int64_t* p = bsc.data_ptr<int64_t>();
    // Each entry is checked against the rows still unclaimed, so the running sum never exceeds the input's
    // row count and cannot overflow (entries of 2^61 would wrap a plain sum around to a "valid" total).
    int64_t remaining = input.size(0);
    for (int64_t t = 0; t < bsc.numel(); ++t) {
      TORCH_CHECK_VALUE(p[t] > 0 && (t == 0 || p[t] <= p[t - 1]), op,
                        ": batch_sizes must be positive and non-increasing, got ", bs);
      TORCH_CHECK_VALUE(p[t] <= remaining, op, ": batch_sizes sum to more than the packed input's ",
                        input.size(0), " rows (exceeded at step ", t, " with batch size ", p[t], ")");
      remaining -= p[t];
    }
    TORCH_CHECK_VALUE(remaining == 0, op, ": batch_sizes sum to ", input.size(0) - remaining,
                      " but the packed input has ", input.size(0), " rows");
    B = bsc.numel() > 0 ? p[0] : 0;
  } else {
    TORCH_CHECK_VALUE(input.dim() == 3, op, ": input must be [seq_len, batch, input_size], got ",
                      input.sizes());
    B = input.size(1);
  }
  TORCH_CHECK_VALUE(input.size(-1) == s.input_size, op, ": input has ", input.size(-1),
                    " features but w_ih expects input_size=", s.input_size);
  check_like(op, "hx", hx, {B, s.state_size}, input);
  if (cx != nullptr) check_like(op, "cx", *cx, {B, s.hidden_size}, input);
  return s;
}

at::Tensor gather_prev(const at::Tensor& seq, const at::Tensor& init, const SeqLayout& l, bool reverse) {
  const NoAutocast no_autocast;
  // Index into cat([seq, init]): rows < N are rows of seq, row N + b is init[b].
  std::vector<int64_t> idx(l.N);
  for (int64_t t = 0; t < l.T; ++t) {
    const int64_t p = l.prev_step(t, reverse);
    const int64_t with_prev = l.rows_with_prev(t, reverse);
    for (int64_t b = 0; b < l.batch_sizes[t]; ++b)
      idx[l.offsets[t] + b] = b < with_prev ? l.offsets[p] + b : l.N + b;
  }
  const at::Tensor index =
      at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(seq.device(), /*non_blocking=*/true);
  return checked_dtype("gather_prev", at::cat({seq, init}, 0).index_select(0, index), seq.scalar_type());
}

at::Tensor input_gates(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih) {
  const NoAutocast no_autocast;
  return checked_dtype("the x-side GEMM", b_ih.has_value() ? at::addmm(*b_ih, x, w_ih.t()) : at::mm(x, w_ih.t()),
                       x.scalar_type());
}

void check_backward_args(const char* op, const at::Tensor& input, int64_t state_size,
                         const at::Tensor& grad_output, const at::Tensor& output,
                         const at::Tensor& grad_hy, const at::Tensor& hx, const at::Tensor* workspace,
                         at::IntArrayRef workspace_sizes) {
  std::vector<int64_t> out_sizes = input.sizes().vec();
  out_sizes.back() = state_size;
  check_like(op, "output", output, out_sizes, hx);
  check_like(op, "grad_output", grad_output, output.sizes(), output);
  check_like(op, "grad_hy", grad_hy, hx.sizes(), hx);
  if (workspace != nullptr) {
    TORCH_CHECK_VALUE(workspace->sizes() == workspace_sizes &&
                          workspace->scalar_type() == acc_dtype(hx.scalar_type()),
                      op, ": workspace must be the ", workspace_sizes, " ", acc_dtype(hx.scalar_type()),
                      " tensor the forward returned with train=True, got ", workspace->scalar_type(), " ",
                      workspace->sizes(), " (was the forward run with train=False?)");
    TORCH_CHECK(workspace->device() == hx.device(), op, ": workspace must be on ", hx.device());
  }
}

SequenceGrads sequence_grads(const at::Tensor& dgx, const at::Tensor& dgh, const at::Tensor& x,
                             const at::Tensor& h_prev, const at::Tensor& w_ih, bool has_bias,
                             at::IntArrayRef input_sizes) {
  const NoAutocast no_autocast;
  const auto dt = dgx.scalar_type();
  SequenceGrads g;
  g.grad_input = checked_dtype("the input-gradient GEMM", at::mm(dgx, w_ih), dt).view(input_sizes);
  g.grad_w_ih = checked_dtype("the w_ih-gradient GEMM", at::mm(dgx.t(), x), dt);
  g.grad_w_hh = checked_dtype("the w_hh-gradient GEMM", at::mm(dgh.t(), h_prev), dt);
  if (has_bias) {
    g.grad_b_ih = dgx.sum(0, /*keepdim=*/false, acc_dtype(dt)).to(dt);
    g.grad_b_hh = dgh.is_same(dgx) ? g.grad_b_ih.clone() : dgh.sum(0, false, acc_dtype(dt)).to(dt);
  } else {
    g.grad_b_ih = at::empty({0}, dgx.options());
    g.grad_b_hh = at::empty({0}, dgx.options());
  }
  return g;
}

}  // namespace fastrnn
