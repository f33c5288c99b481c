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

int64_t check_batch_sizes_sum(const char* op, const at::Tensor& bs, int64_t rows, const char* what) {
  const at::Tensor bsc = bs.contiguous();
  const int64_t* p = bsc.data_ptr<int64_t>();
  // Each entry is checked against the rows still unclaimed, so the running sum never exceeds the row count
  // and cannot overflow (entries of 2^61 would wrap a plain sum around to a "valid" total).
  int64_t remaining = rows;
  for (int64_t t = 0; t < bsc.numel(); ++t) {
    TORCH_CHECK_VALUE(p[t] > 0 && (t == 0 || p[t] <= p[t - 1]), op,
                      ": batch_sizes must be positive and non-increasing, got ", bs);
    TORCH_CHECK_VALUE(p[t] <= remaining, op, ": batch_sizes sum to more than ", what, "'s ", rows,
                      " rows (exceeded at step ", t, " with batch size ", p[t], ")");
    remaining -= p[t];
  }
  TORCH_CHECK_VALUE(remaining == 0, op, ": batch_sizes sum to ", rows - remaining, " but ", what, " has ", rows,
                    " rows");
  return bsc.numel() > 0 ? p[0] : 0;
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
    B = check_batch_sizes_sum(op, bs, input.size(0), "the packed input");
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

std::vector<PrevRun> prev_runs(const SeqLayout& l, bool reverse) {
  std::vector<PrevRun> runs;
  auto add = [&](int64_t row, int64_t src, int64_t n, bool init) {
    if (n <= 0) return;
    if (!runs.empty()) {
      PrevRun& r = runs.back();
      if (r.init == init && r.row + r.n == row && r.src + r.n == src) {
        r.n += n;
        return;
      }
    }
    runs.push_back({row, src, n, init});
  };
  for (int64_t t = 0; t < l.T; ++t) {
    const int64_t p = l.prev_step(t, reverse), with_prev = l.rows_with_prev(t, reverse);
    add(l.offsets[t], p < 0 ? 0 : l.offsets[p], with_prev, false);
    add(l.offsets[t] + with_prev, with_prev, l.batch_sizes[t] - with_prev, true);
  }
  return runs;
}

at::Tensor gather_prev(const at::Tensor& seq, const at::Tensor& init, const SeqLayout& l, bool reverse) {
  const NoAutocast no_autocast;
  at::Tensor h = at::empty({l.N, seq.size(1)}, seq.options());
  for (const PrevRun& r : prev_runs(l, reverse))
    h.narrow(0, r.row, r.n).copy_((r.init ? init : seq).narrow(0, r.src, r.n));
  return checked_dtype("gather_prev", h, seq.scalar_type());
}

void aten_mm_into(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add) {
  if (add)
    c.addmm_(a, b);
  else
    at::mm_out(c, a, b);
}

void addmm_prev(at::Tensor out, const at::Tensor& a, const at::Tensor& seq, const at::Tensor& init,
                const SeqLayout& l, bool reverse, MatMulInto mm) {
  const NoAutocast no_autocast;
  bool first = true;
  for (const PrevRun& r : prev_runs(l, reverse)) {
    const at::Tensor a_t = a.narrow(0, r.row, r.n).t(), h = (r.init ? init : seq).narrow(0, r.src, r.n);
    mm(out, a_t, h, /*add=*/!first);
    first = false;
  }
  if (first) out.zero_();
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

GateGradBuffer gate_grad_buffer(int64_t N, int64_t gates_hidden, const at::Tensor& input,
                                const at::Tensor& accumulate_into) {
  const int64_t I = input.size(-1);
  GateGradBuffer b;
  if (accumulate_into.defined()) {
    TORCH_CHECK(accumulate_into.sizes() == input.sizes() && accumulate_into.is_contiguous() &&
                    accumulate_into.scalar_type() == input.scalar_type(),
                "gate_grad_buffer: accumulate_into must be a contiguous tensor of the input's shape and dtype");
    b.accumulate_into = accumulate_into;
    b.dgx = at::empty({N, gates_hidden}, input.options());
  } else if (I >= gates_hidden && N * gates_hidden > 0) {
    b.grad_input = at::empty(input.sizes(), input.options());
    b.dgx = b.grad_input.view({-1}).narrow(0, 0, N * gates_hidden).view({N, gates_hidden});
  } else {
    b.dgx = at::empty({N, gates_hidden}, input.options());
  }
  return b;
}

SequenceGrads sequence_grads(const GateGradBuffer& dg, const at::Tensor& dgh_n, const at::Tensor& x,
                             const at::Tensor& out, const at::Tensor& hx, const SeqLayout& layout, bool reverse,
                             const at::Tensor& w_ih, bool has_bias, at::IntArrayRef input_sizes,
                             MatMulInto mm, ResultEmpty weight_grad_empty) {
  const NoAutocast no_autocast;
  const at::Tensor& dgx = dg.dgx;
  const auto dt = dgx.scalar_type();
  const int64_t GH = dgx.size(1), Hn = dgh_n.defined() ? dgh_n.size(1) : 0;
  SequenceGrads g;
  g.grad_w_ih = weight_grad_empty({GH, x.size(1)}, dgx.options());
  mm(g.grad_w_ih, dgx.t(), x, false);
  g.grad_w_hh = weight_grad_empty({GH, out.size(1)}, dgx.options());
  addmm_prev(g.grad_w_hh.narrow(0, 0, GH - Hn), dgx.narrow(1, 0, GH - Hn), out, hx, layout, reverse, mm);
  if (Hn > 0) addmm_prev(g.grad_w_hh.narrow(0, GH - Hn, Hn), dgh_n, out, hx, layout, reverse, mm);
  if (has_bias) {
    g.grad_b_ih = dgx.sum(0, /*keepdim=*/false, acc_dtype(dt)).to(dt);
    g.grad_b_hh = g.grad_b_ih.clone();
    if (Hn > 0) g.grad_b_hh.narrow(0, GH - Hn, Hn).copy_(dgh_n.sum(0, false, acc_dtype(dt)));
  } else {
    g.grad_b_ih = at::empty({0}, dgx.options());
    g.grad_b_hh = at::empty({0}, dgx.options());
  }
  // Last: the largest result, so that it is not alive during the others (and, in dgx's storage, once
  // everything else has read dgx).
  if (dg.accumulate_into.defined()) {
    mm(dg.accumulate_into.view({dgx.size(0), w_ih.size(1)}), dgx, w_ih, /*add=*/true);
    g.grad_input = dg.accumulate_into;
    return g;
  }
  if (!dg.grad_input.defined()) {
    at::Tensor gi = at::empty({dgx.size(0), w_ih.size(1)}, dgx.options());
    mm(gi, dgx, w_ih, false);
    g.grad_input = gi.view(input_sizes);
    return g;
  }
  // Eighths of the rows (the temporary holds one), but at least 256: a short sequence (a cell's step: N = B)
  // in one GEMM, not in GEMVs of a row each (8 MKL calls took a third of an RNNCell step's backward at B=8).
  const int64_t N = dgx.size(0), chunk = std::max<int64_t>(std::min<int64_t>(N, 256), (N + 7) / 8);
  const at::Tensor gi = dg.grad_input.view({N, w_ih.size(1)});
  const at::Tensor tmp = at::empty({std::min(chunk, N), w_ih.size(1)}, dgx.options());
  for (int64_t r1 = N; r1 > 0; r1 -= chunk) {
    const int64_t r0 = std::max<int64_t>(0, r1 - chunk);
    at::Tensor t = tmp.narrow(0, 0, r1 - r0);
    mm(t, dgx.narrow(0, r0, r1 - r0), w_ih, false);
    gi.narrow(0, r0, r1 - r0).copy_(t);
  }
  g.grad_input = dg.grad_input;
  return g;
}

}  // namespace fastrnn
