// The GRU with fastrnn's options (layer_norm on W_hh h, zoneout, recurrent dropout) on CUDA:
// fastrnn::gru_ext_forward / gru_ext_backward, one layer and direction of a whole (packed) sequence. Schemas and
// the workspace layout: csrc/fastrnn.cpp; equations: fastrnn/reference.py gru_ext_cell; the argument checks and
// the results are those of cpu/gru_ext_cpu.cpp (same messages).
//
// Same plan as lstm_ext_cuda.cpp: per step the recurrent GEMM a = (h_{t-1} * m) @ W_hh^T (cuBLAS, accumulation
// dtype) into a [B, 3H] buffer, then ONE launch of gru_ext_fwd_kernel (ext_step_kernel.cuh: one block per row,
// LN statistics with block reductions, gates, zoneout; output, state, masked state, workspace). Backward per step
// in reverse: gru_ext_bwd_kernel (zoneout split, gates, LN backward) then the carry GEMM (da @ W_hh) * m; the
// weight, b_hh and LayerNorm gradients are whole-sequence GEMMs and column sums (at::sum) afterwards.
#include <torch/library.h>

#include "cuda_common.h"
#include "ext_launch.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::gru_ext_forward";
constexpr const char* kBwd = "fastrnn::gru_ext_backward";

// Workspace columns of a row: r, z, n, the n-gate's recurrent term, then with ln_hh xhat [3H] and 1/sigma.
inline int64_t ws_width(int64_t H, bool ln) { return 4 * H + (ln ? 3 * H + 1 : 0); }

// ------------------------------------------------------------------------------------------------ checks
// (cpu/gru_ext_cpu.cpp's, message for message)
SeqLayout checked_layout(const char* op, const char* name, const at::Tensor& x,
                         const std::optional<at::Tensor>& batch_sizes) {
  if (batch_sizes.has_value()) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK_VALUE(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
                      ": batch_sizes must be a 1-D int64 CPU tensor (PackedSequence.batch_sizes), got ",
                      bs.scalar_type(), " ", bs.sizes(), " on ", bs.device());
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": packed ", name, " (batch_sizes given) must be 2-D [N, features], got ",
                      x.sizes());
    const at::Tensor bsc = bs.contiguous();
    const int64_t* p = bsc.data_ptr<int64_t>();
    int64_t remaining = x.size(0);
    for (int64_t t = 0; t < bsc.numel(); ++t) {
      TORCH_CHECK_VALUE(p[t] > 0 && (t == 0 || p[t] <= p[t - 1]), op,
                        ": batch_sizes must be positive and non-increasing, got ", bs);
      TORCH_CHECK_VALUE(p[t] <= remaining, op, ": batch_sizes sum to more than ", name, "'s ", x.size(0),
                        " rows (exceeded at step ", t, " with batch size ", p[t], ")");
      remaining -= p[t];
    }
    TORCH_CHECK_VALUE(remaining == 0, op, ": batch_sizes sum to ", x.size(0) - remaining, " but ", name, " has ",
                      x.size(0), " rows");
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, op, ": ", name, " must be 3-D [seq_len, batch, features] (or packed [N, "
                      "features] with batch_sizes), got ", x.sizes());
  }
  return make_layout(x, batch_sizes);
}

void check_acc(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  const auto acc = acc_dtype(like.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, op, ": expected ", name, " of dtype ", acc,
                   " (the accumulation dtype of the input's ", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": expected ", name, " on ", like.device(),
              " (the input's device), got ", t.device());
}

void check_zoneout(const char* op, const std::optional<at::Tensor>& k, const SeqLayout& L, bool packed,
                   int64_t H, const at::Tensor& like) {
  if (!k.has_value()) return;
  check_acc(op, "zoneout_h", *k, like);
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
  check_acc(op, "recurrent_mask", *m, like);
  TORCH_CHECK_VALUE(m->dim() == 2 && m->size(0) == B && m->size(1) == H, op, ": expected recurrent_mask of shape [",
                    B, ", ", H, "] (batch, hidden_size), got ", m->sizes());
}

int64_t check_w_hh(const char* op, const at::Tensor& w_hh, const at::Tensor& like) {
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == 3 * w_hh.size(1), op,
                    ": w_hh must be [3*hidden_size, hidden_size], got ", w_hh.sizes());
  check_like(op, "w_hh", w_hh, w_hh.sizes(), like);
  return w_hh.size(1);
}

// ---------------------------------------------------------------------------------------------- helpers
at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}
const void* ptr_of(const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t.const_data_ptr() : nullptr; }

// The zoneout weights of the step starting at row `off`: rows of the contiguous tensor, the one-element eval
// constant (read on the device: no host synchronisation), or none.
ExtZoneout zoneout_at(const at::Tensor& k, int64_t off, int64_t D) {
  ExtZoneout z;
  if (!k.defined()) return z;
  if (k.numel() == 1) {
    z.k = k.const_data_ptr();
    z.scalar = 1;
  } else {
    z.k = static_cast<const char*>(k.const_data_ptr()) + off * D * static_cast<int64_t>(k.element_size());
  }
  return z;
}

// ----------------------------------------------------------------------------------------------- forward
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_ext_forward(
    const at::Tensor& gates_x, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& ln_hh_bias, const std::optional<at::Tensor>& zoneout_h,
    const std::optional<at::Tensor>& recurrent_mask, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kFwd, "gates_x", gates_x);
  const DType d = dtype_of(kFwd, gates_x.scalar_type());
  const int64_t H = check_w_hh(kFwd, w_hh, gates_x), G = 3 * H;
  const bool packed = batch_sizes.has_value();
  const SeqLayout L = checked_layout(kFwd, "gates_x", gates_x, batch_sizes);
  TORCH_CHECK_VALUE(gates_x.size(-1) == G, kFwd, ": gates_x has ", gates_x.size(-1),
                    " features but w_hh expects 3*hidden_size=", G);
  check_like(kFwd, "hx", hx, {L.B, H}, gates_x);
  if (b_hh.has_value()) check_like(kFwd, "b_hh", *b_hh, {G}, gates_x);
  TORCH_CHECK_VALUE(ln_hh_weight.has_value() == ln_hh_bias.has_value(), kFwd,
                    ": ln_hh_weight and ln_hh_bias must be given together (both or neither), got ",
                    ln_hh_weight.has_value() ? "ln_hh_weight only" : "ln_hh_bias only");
  const bool ln = ln_hh_weight.has_value();
  if (ln) {
    check_like(kFwd, "ln_hh_weight", *ln_hh_weight, {G}, gates_x);
    check_like(kFwd, "ln_hh_bias", *ln_hh_bias, {G}, gates_x);
  }
  check_zoneout(kFwd, zoneout_h, L, packed, H, gates_x);
  check_mask(kFwd, recurrent_mask, L.B, H, gates_x);
  const c10::cuda::CUDAGuard guard(gates_x.device());

  const auto dtype = gates_x.scalar_type();
  const auto acc_type = acc_dtype(dtype);
  const auto acc_opts = gates_x.options().dtype(acc_type);
  const int64_t W = ws_width(H, ln);
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
    launch_gru_ext_fwd(d, p, stream);
  }
  return {output, h_state, ws};
}

// ---------------------------------------------------------------------------------------------- backward
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_ext_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_hh, const std::optional<at::Tensor>& ln_hh_weight,
    const std::optional<at::Tensor>& zoneout_h, const std::optional<at::Tensor>& recurrent_mask,
    const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kBwd, "output", output);
  const DType d = dtype_of(kBwd, output.scalar_type());
  const int64_t H = check_w_hh(kBwd, w_hh, output), G = 3 * H;
  const bool packed = batch_sizes.has_value();
  const SeqLayout L = checked_layout(kBwd, "output", output, batch_sizes);
  TORCH_CHECK_VALUE(output.size(-1) == H, kBwd, ": output has ", output.size(-1),
                    " features but w_hh expects hidden_size=", H);
  check_like(kBwd, "hx", hx, {L.B, H}, output);
  const bool ln = ln_hh_weight.has_value();
  if (ln) check_like(kBwd, "ln_hh_weight", *ln_hh_weight, {G}, output);
  const int64_t W = ws_width(H, ln);
  check_backward_args(kBwd, output, H, grad_output, output, grad_hy, hx, &workspace, {L.N, W});
  check_zoneout(kBwd, zoneout_h, L, packed, H, output);
  check_mask(kBwd, recurrent_mask, L.B, H, output);
  const c10::cuda::CUDAGuard guard(output.device());

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
  const auto empty = [&] { return at::empty({0}, output.options()); };
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
      launch_gru_ext_bwd(d, p, stream);
      // The carry into the previous state: (da @ W_hh) * m on top of the direct terms the kernel left.
      if (mask.defined()) {
        mm_into(carry.narrow(0, 0, bs), da.narrow(0, off, bs), w_acc);
        dh_state.narrow(0, 0, bs).addcmul_(carry.narrow(0, 0, bs), mask.narrow(0, 0, bs));
      } else {
        dh_state.narrow(0, 0, bs).addmm_(da.narrow(0, off, bs), w_acc);
      }
    }
  } else {
    da.zero_();
    da_ln.zero_();
    grad_gates_x.zero_();
  }

  // Whole-sequence: the weight gradient against the masked states the rows started from, and the reductions.
  at::Tensor hp = gather_prev(rows2d(output), hx, L, reverse).to(acc_type);
  if (mask.defined() && hp.numel() > 0) {
    if (!packed) {
      hp.view({L.T, L.B, H}).mul_(mask);
    } else {
      for (int64_t t = 0; t < L.T; ++t)
        hp.narrow(0, L.offsets[t], L.batch_sizes[t]).mul_(mask.narrow(0, 0, L.batch_sizes[t]));
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

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("gru_ext_forward", &gru_ext_forward);
  m.impl("gru_ext_backward", &gru_ext_backward);
}

}  // namespace fastrnn::cuda
