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
constexpr const char* kBidirFwd = "fastrnn::gru_bidir_forward";
constexpr const char* kBidirBwd = "fastrnn::gru_bidir_backward";

// One direction's forward in two parts, begin and end, so that gru_bidir_forward can run both directions'
// recurrences in one persistent launch between them (as lstm_cuda.cpp LstmFwd).
struct GruFwd : DirFwd {
  bool train = false;
  at::Tensor ws;
};

GruFwd gru_fwd_begin(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                     const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                     const std::optional<at::Tensor>& b_hh, bool reverse, bool train) {
  check_cuda(kFwd, "input", input);
  const CellShape s = check_forward_args(kFwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh, b_ih, b_hh, {});
  GruFwd f;
  begin_dir_fwd(f, kFwd, s, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse);
  const int64_t H = f.H;
  f.train = train;
  f.ws = at::empty({train ? f.L.N : 0, train ? 4 * H : 0}, input.options().dtype(acc_dtype(input.scalar_type())));
  f.run = fwd_persistent_run(kFwd, f.L, reverse, H, f.gx, f.b_hh, f.w_hh, f.out, f.h0, nullptr,
                             train ? f.ws.data_ptr() : nullptr, 0, /*projection=*/false);
  return f;
}

// The recurrence (none when `done`: a joint launch ran it) and the results.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_fwd_end(GruFwd& f, bool done) {
  const SeqLayout& L = f.L;
  const int64_t H = f.H;
  if (L.T == 0) return {f.output, f.h0.clone(), f.ws};
  const bool persistent = done || run_fwd_persistent(kFwd, f.dt, Cell::kGru, &f.run, 1);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kFwd, "gru_fwd_step_kernel", fwd_launch_config(f.dt, Cell::kGru, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, f.reverse);
    FwdStepParams p = fwd_step_params(L, t, f.reverse, H, f.gx, f.b_hh, f.w_hh, f.out, f.h0);
    p.ws = f.train ? row_ptr(f.ws, L.offsets[t]) : nullptr;
    launch_fwd_step(f.dt, Cell::kGru, p, stream);
  }
  const at::Tensor hy = f.out.index_select(0, sequence_rows(L, /*last=*/!f.reverse, f.input.device()));
  return {f.output, hy, f.ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool reverse, bool train) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const c10::cuda::CUDAGuard guard = cuda_guard(kFwd, input);
  GruFwd f = gru_fwd_begin(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, train);
  return gru_fwd_end(f, false);
}

// Both directions of a bidirectional layer: their recurrences in one persistent launch where it fits
// (persistent.h FASTRNN_CUDA_BIDIR), else one after the other; the results of two gru_forward calls.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bidir_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& hx_r, const at::Tensor& w_ih_r,
    const at::Tensor& w_hh_r, const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
    bool train) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard = cuda_guard(kBidirFwd, input);
  GruFwd d[2] = {gru_fwd_begin(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, false, train),
                 gru_fwd_begin(input, batch_sizes, hx_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, true, train)};
  return bidir_forward(kBidirFwd, Cell::kGru, d, gru_fwd_end);
}

// One direction's backward in two parts (as GruFwd).
struct GruBwd : DirBwd {
  at::Tensor ws, out, h0, h_step, dph_n, dgh_step;
};

GruBwd gru_bwd_begin(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
                     const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& workspace, bool reverse,
                     bool has_bias) {
  check_cuda(kBwd, "input", input);
  const CellShape s = check_forward_args(kBwd, 3, input, batch_sizes, hx, nullptr, w_ih, w_hh, {}, {}, {});
  const int64_t H = s.hidden_size;
  GruBwd b;
  begin_dir_bwd(b, kBwd, s, grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, reverse, has_bias, 3 * H,
                /*with_carry=*/true, [&](const SeqLayout& L) {
                  check_backward_args(kBwd, input, s.state_size, grad_output, output, grad_hy, hx, &workspace,
                                      {L.N, 4 * H});
                });
  const SeqLayout& L = b.L;
  b.ws = workspace.contiguous();
  // The states the steps started from are read in place (the previous step's rows of out, or hx); only a
  // step whose rows start partly from each (reverse direction, packed) gathers its own into h_step.
  b.out = rows2d(output.contiguous());
  b.h0 = hx.contiguous();
  b.h_step = at::empty({L.B, H}, input.options());
  // The h-side gate gradients equal the x side's for r and z; only n's differs. The kernel writes a step's
  // full h-side rows [dr, dz, dph_n] into one of two one-step buffers (the next launch reads them as its
  // dG_next while writing the other) and dph_n also into dph_n [N, H], kept for the whole sequence (as on the
  // CPU: gru_cpu.cpp).
  b.dph_n = at::empty({L.N, H}, input.options());
  b.dgh_step = at::empty({2, L.B, 3 * H}, input.options());

  // The persistent backward (one cooperative launch) reads the h side [dr, dz, dph_n] from dgx and dph_n directly
  // and leaves grad_hx in carry.
  BwdPersistentArgs pa;
  pa.dg = b.dg.dgx.data_ptr();
  pa.dph_n = b.dph_n.data_ptr();
  pa.ws = b.ws.data_ptr();
  pa.out = b.out.data_ptr();
  pa.h_init = b.h0.data_ptr();
  b.run = bwd_persistent_run(kBwd, L, reverse, H, *b.go, b.w_hh, b.carry, pa, /*projection=*/false);
  return b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bwd_end(GruBwd& b,
                                                                                               bool done) {
  const SeqLayout& L = b.L;
  const int64_t H = b.H;
  const bool reverse = b.reverse;
  const at::Tensor& input = b.input;
  const at::Tensor& dgx = b.dg.dgx;
  const at::Tensor& out = b.out;
  const at::Tensor& h0 = b.h0;
  const StepRows& go = *b.go;
  const bool persistent = done || run_bwd_persistent(kBwd, b.dt, Cell::kGru, &b.run, 1);
  if (!persistent && L.B > 0 && H > 0)
    check_launch(kBwd, "gru_bwd_step_kernel", bwd_launch_config(b.dt, Cell::kGru, H, L.B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k = 0; k < (persistent ? 0 : L.T); ++k) {
    const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    const int64_t nxt = next_step(L, t, reverse);  // processed at k - 1, into dgh_step[(k - 1) % 2]
    const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
    const int64_t prev = L.prev_step(t, reverse), with_prev = L.rows_with_prev(t, reverse);
    const void* h_prev = with_prev == 0 ? h0.data_ptr() : row_ptr(out, L.offsets[prev]);
    if (with_prev > 0 && with_prev < bs) {
      b.h_step.narrow(0, 0, with_prev).copy_(out.narrow(0, L.offsets[prev], with_prev));
      b.h_step.narrow(0, with_prev, bs - with_prev).copy_(h0.narrow(0, with_prev, bs - with_prev));
      h_prev = b.h_step.data_ptr();
    }
    BwdStepParams p;
    p.dg_next = n_next > 0 ? row_ptr(b.dgh_step[(k + 1) % 2], 0) : nullptr;
    p.w_hh = b.w_hh.data_ptr();
    p.grad_out = go.ptr(L, t);
    p.ld_grad_out = go.ld;
    p.carry = b.carry.data_ptr();
    p.ws = row_ptr(b.ws, off);
    p.h_prev = h_prev;
    p.dg = row_ptr(dgx, off);
    p.dgh = row_ptr(b.dgh_step[k % 2], 0);
    p.dph_n = row_ptr(b.dph_n, off);
    p.n_next = n_next;
    p.bs = bs;
    p.H = H;
    launch_bwd_step(b.dt, Cell::kGru, p, stream);
  }
  // dL/dhx[b] = dh*z (left in carry) + dG_h @ W_hh of the step that started from hx[b], its dG_h rebuilt
  // from dgx (r, z) and dph_n (n).
  at::Tensor grad_hx = persistent ? b.carry.to(input.scalar_type()) : b.grad_hy.contiguous().clone();
  if (L.T > 0 && !persistent) {
    const at::Tensor rows = sequence_rows(L, /*last=*/reverse, input.device());
    const at::Tensor dh0 = at::mm(dgx.index_select(0, rows).narrow(1, 0, 2 * H), b.w_hh.narrow(0, 0, 2 * H))
                               .addmm_(b.dph_n.index_select(0, rows), b.w_hh.narrow(0, 2 * H, H));
    grad_hx = (b.carry + dh0.to(b.carry.scalar_type())).to(input.scalar_type());
  }

  SequenceGrads g = sequence_grads(b.dg, b.dph_n, rows2d(input.contiguous()), out, b.hx, L, reverse, b.w_ih,
                                   b.has_bias, input.sizes());
  return {g.grad_input, grad_hx, g.grad_w_ih, g.grad_w_hh, g.grad_b_ih, g.grad_b_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& output, const at::Tensor& workspace, bool reverse, bool has_bias) {
  const NoAutocast no_autocast;  // inner ATen calls keep their inputs' dtypes (sequence.h)
  const c10::cuda::CUDAGuard guard = cuda_guard(kBwd, input);
  GruBwd b = gru_bwd_begin(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, workspace, reverse,
                           has_bias);
  return gru_bwd_end(b, false);
}

// Both directions' backward recurrences in one persistent launch where it fits; the results of two gru_backward
// calls, except that the input gradient is one (the sum of both directions' parts), first.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
gru_bidir_backward(const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_output_r,
                   const at::Tensor& grad_hy_r, const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                   const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
                   const at::Tensor& workspace, const at::Tensor& hx_r, const at::Tensor& w_ih_r,
                   const at::Tensor& w_hh_r, const at::Tensor& output_r, const at::Tensor& workspace_r,
                   bool has_bias) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard = cuda_guard(kBidirBwd, input);
  GruBwd d[2] = {gru_bwd_begin(grad_output, grad_hy, input, batch_sizes, hx, w_ih, w_hh, output, workspace, false,
                               has_bias),
                 gru_bwd_begin(grad_output_r, grad_hy_r, input, batch_sizes, hx_r, w_ih_r, w_hh_r, output_r,
                               workspace_r, true, has_bias)};
  return bidir_backward(kBidirBwd, Cell::kGru, d, gru_bwd_end);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("gru_bidir_forward", &gru_bidir_forward);
  m.impl("gru_bidir_backward", &gru_bidir_backward);
}

}  // namespace fastrnn::cuda
