// GRU on CUDA: one layer, one direction, a whole (packed) sequence. Same plan as lstm_cuda.cpp; returns
// exactly what gru_cpu.cpp returns (workspace [N, 4H] = r, z, n, W_hn h + b_hn in the accumulation dtype).
// The h-side pre-activations stay separate from the x side up to the pointwise math (the reset gate
// multiplies W_hn h + b_hn alone), so the backward writes dG_x and dG_h separately; the recurrent matmul of
// the backward reads the successor step's dG_h, and dh*z is carried to the previous step directly.
#include <torch/library.h>

#include "cuda_common.h"
#include "persistent.h"

namespace fastrnn::cuda {
namespace {

constexpr const char* kFwd = "fastrnn::gru_forward";
constexpr const char* kBwd = "fastrnn::gru_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh_, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kFwd, "input", input);
  const CellShape s = check_forward_args(kFwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh_, b_ih, b_hh_, {});
  const c10::cuda::CUDAGuard guard(input.device());
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  const at::Tensor w_hh = w_hh_.contiguous();
  const std::optional<at::Tensor> b_hh =
      b_hh_.has_value() ? std::optional<at::Tensor>(b_hh_->contiguous()) : std::nullopt;
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  const DType dt = dtype_of(kFwd, input.scalar_type());

  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, input.options());
  const at::Tensor out = rows2d(output);
  const at::Tensor h0 = hx.contiguous();
  at::Tensor ws = at::empty({train ? L.N : 0, train ? 4 * H : 0}, acc_opts);
  // x-side pre-activations of every step in one GEMM (no sequential dependency).
  const at::Tensor gx = input_gates(rows2d(input.contiguous()), w_ih, b_ih).contiguous();
  if (L.T == 0) return {output, h0.clone(), ws};

  const bool persistent = run_fwd_persistent(kFwd, dt, Cell::kGru, L, reverse, H, gx, b_hh, w_hh, out, h0, nullptr,
                                             train ? ws.data_ptr() : nullptr, 0, /*projection=*/false);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kFwd, "gru_fwd_step_kernel", fwd_launch_config(dt, Cell::kGru, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, reverse);
    FwdStepParams p = fwd_step_params(L, t, reverse, H, gx, b_hh, w_hh, out, h0);
    p.ws = train ? row_ptr(ws, L.offsets[t]) : nullptr;
    launch_fwd_step(dt, Cell::kGru, p, stream);
  }
  const at::Tensor hy = out.index_select(0, sequence_rows(L, /*last=*/!reverse, input.device()));
  return {output, hy, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh_, const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  check_cuda(kBwd, "input", input);
  const CellShape s = check_forward_args(kBwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh_, {}, {}, {});
  const c10::cuda::CUDAGuard guard(input.device());
  const SeqLayout L = make_layout(input, batch_sizes);
  const int64_t H = s.hidden_size;
  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, &workspace, {L.N, 4 * H});
  const at::Tensor w_hh = w_hh_.contiguous();
  const auto acc_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  const DType dt = dtype_of(kBwd, input.scalar_type());
  const at::Tensor ws = workspace.contiguous();
  const StepRows go(grad_output, batch_sizes.has_value());  // read in place (a transposed or sliced gradient too)
  // The states the steps started from are read in place (the previous step's rows of out, or hx); only a
  // step whose rows start partly from each (reverse direction, packed) gathers its own into h_step.
  const at::Tensor out = rows2d(output.contiguous());
  const at::Tensor h0 = hx.contiguous();
  const at::Tensor h_step = at::empty({L.B, H}, input.options());
  at::Tensor carry = grad_hy.to(acc_opts, false, /*copy=*/true).contiguous();
  const GateGradBuffer dg = gate_grad_buffer(L.N, 3 * H, input);
  const at::Tensor& dgx = dg.dgx;
  // The h-side gate gradients equal the x side's for r and z; only n's differs. The kernel writes a step's
  // full h-side rows [dr, dz, dph_n] into one of two one-step buffers (the next launch reads them as its
  // dG_next while writing the other) and dph_n also into dph_n [N, H], kept for the whole sequence (as on the
  // CPU: gru_cpu.cpp).
  at::Tensor dph_n = at::empty({L.N, H}, input.options());
  const at::Tensor dgh_step = at::empty({2, L.B, 3 * H}, input.options());

  // The persistent backward (one cooperative launch) reads the h side [dr, dz, dph_n] from dgx and dph_n directly
  // and leaves grad_hx in carry.
  BwdPersistentArgs pa;
  pa.dg = dgx.data_ptr();
  pa.dph_n = dph_n.data_ptr();
  pa.ws = ws.data_ptr();
  pa.out = out.data_ptr();
  pa.h_init = h0.data_ptr();
  const bool persistent =
      run_bwd_persistent(kBwd, dt, Cell::kGru, L, reverse, H, go, w_hh, carry, pa, /*projection=*/false);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kBwd, "gru_bwd_step_kernel", bwd_launch_config(dt, Cell::kGru, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    const int64_t nxt = next_step(L, t, reverse);  // processed at k - 1, into dgh_step[(k - 1) % 2]
    const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
    const int64_t prev = L.prev_step(t, reverse), with_prev = L.rows_with_prev(t, reverse);
    const void* h_prev = with_prev == 0 ? h0.data_ptr() : row_ptr(out, L.offsets[prev]);
    if (with_prev > 0 && with_prev < bs) {
      h_step.narrow(0, 0, with_prev).copy_(out.narrow(0, L.offsets[prev], with_prev));
      h_step.narrow(0, with_prev, bs - with_prev).copy_(h0.narrow(0, with_prev, bs - with_prev));
      h_prev = h_step.data_ptr();
    }
    BwdStepParams p;
    p.dg_next = n_next > 0 ? row_ptr(dgh_step[(k + 1) % 2], 0) : nullptr;
    p.w_hh = w_hh.data_ptr();
    p.grad_out = go.ptr(L, t);
    p.ld_grad_out = go.ld;
    p.carry = carry.data_ptr();
    p.ws = row_ptr(ws, off);
    p.h_prev = h_prev;
    p.dg = row_ptr(dgx, off);
    p.dgh = row_ptr(dgh_step[k % 2], 0);
    p.dph_n = row_ptr(dph_n, off);
    p.n_next = n_next;
    p.bs = bs;
    p.H = H;
    launch_bwd_step(dt, Cell::kGru, p, stream);
  }
  // dL/dhx[b] = dh*z (left in carry) + dG_h @ W_hh of the step that started from hx[b], its dG_h rebuilt
  // from dgx (r, z) and dph_n (n).
  at::Tensor grad_hx = persistent ? carry.to(input.scalar_type()) : grad_hy.contiguous().clone();
  if (L.T > 0 && !persistent) {
    const at::Tensor rows = sequence_rows(L, /*last=*/reverse, input.device());
    const at::Tensor dh0 = at::mm(dgx.index_select(0, rows).narrow(1, 0, 2 * H), w_hh.narrow(0, 0, 2 * H))
                               .addmm_(dph_n.index_select(0, rows), w_hh.narrow(0, 2 * H, H));
    grad_hx = (carry + dh0.to(acc_opts.dtype())).to(input.scalar_type());
  }

  SequenceGrads g = sequence_grads(dg, dph_n, rows2d(input.contiguous()), out, hx, L, reverse, w_ih, has_bias,
                                   input.sizes());
  return {g.grad_input, grad_hx, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}

}  // namespace fastrnn::cuda
