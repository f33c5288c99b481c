// ext_kernels_driver.cpp -- runs the REAL pointwise step kernels of the regularised cells (csrc/cuda/
// ext_step_kernel.cuh: lstm_ext_fwd/bwd, gru_ext_fwd/bwd, ext_mix, ext_split) under the CUDA emulation, whole
// sequences at a time, for tests/test_cuda_emu_ext.py.
//
// What is real: the kernels and their launch configuration (ExtTraits: grid = bs blocks, kThreads, smem_bytes),
// as ext_launcher.cuh computes it. What is transcribed: the host loops of csrc/cuda/{lstm,gru}_ext_cuda.cpp --
// per step the recurrent GEMM a = (h * mask) @ W_hh^T into a [bs, G*H] buffer before the launch, the projection
// GEMM r @ W_hr^T and ext_mix after it; in the backward the zoneout split and dh_new @ W_hr before the launch,
// the carry (da @ W_hh) * mask after it, and the whole-sequence gradients (gather_prev, grad_w_hh, grad_w_hr, the
// LayerNorm parameters' column sums) after the loop. The GEMMs are naive loops here (the host uses cuBLAS).
// Float32 and float64 only (S == A here).
//
// Cases (emu_io.h: `driver CASE IN OUT`):
//   run    one sub-case: the forward (train as given), then, with train, the backward from the forward's own
//          output and workspace.
//   batch  `n` sub-cases "k.<name>" in one process (outputs "k.<name>").
// Inputs: cell (0 LSTM, 1 GRU), reverse, H, batch_sizes int64 [T], gx [N, G*H], w_hh [G*H, K], hx [B, K],
//   cx [B, H] (LSTM), w_hr [P, H] (optional, LSTM), b_hh [3H] (optional, GRU), ln_hh_w/ln_hh_b [G*H], ln_c_w/
//   ln_c_b [H] (optional, LSTM), zh [N, K] or [1], zc [N, H] or [1] (LSTM), mask [B, K] (all optional), train;
//   backward: grad_output [N, K], grad_hy [B, K], grad_cy [B, H] (LSTM).
// Outputs: output [N, K], hy, cy, ws [N, W] (train), launches int64 [n, 3] (grid.x, threads, smem per launch);
//   with train: grad_gates_x [N, G*H], grad_hx, grad_cx, grad_w_hh, grad_w_hr, grad_b_hh, grad_ln_hh_w,
//   grad_ln_hh_b, grad_ln_c_w, grad_ln_c_b (those that apply), blaunches.
// Buffers the kernels write are filled with NaN first, so a row or element a kernel fails to write shows up.
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/ext_step_kernel.cuh"
#include "emu_io.h"
#include "host_seq.h"

namespace {

using namespace fastrnn::cuda;
using std::int64_t;

using namespace emu_host;  // host_seq.h: SeqLayout, make_layout, gather_prev, mm, nan_vec


template <class T>
const T* opt(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

// ------------------------------------------------------------------ ext_launcher.cuh, emulated
struct LaunchLog {
  std::vector<int64_t> rows;  // grid.x, threads, smem bytes per launch
};

template <class S, class Params>
void launch_ext(void (*kernel)(Params), const Params& p, int64_t width, LaunchLog& log) {
  using Tr = ExtTraits<acc_t<S>>;
  if (p.bs <= 0 || width <= 0) return;
  const int64_t grid = Tr::grid_x(p.bs), threads = Tr::kThreads, smem = Tr::smem_bytes();
  log.rows.insert(log.rows.end(), {grid, threads, smem});
  ::cuda_emu::launch(dim3(static_cast<unsigned>(grid), 1, 1), dim3(static_cast<unsigned>(threads), 1, 1),
                     static_cast<size_t>(smem), kernel, p);
}

// The zoneout weights of a step (lstm_ext_cuda.cpp zoneout_at): rows from `off`, or the constant, or none.
template <class S>
ExtZoneout zoneout_at(const std::vector<S>& k, int64_t off, int64_t D) {
  ExtZoneout z;
  if (k.empty()) return z;
  if (k.size() == 1) {
    z.k = k.data();
    z.scalar = 1;
  } else {
    z.k = k.data() + off * D;
  }
  return z;
}

// ------------------------------------------------------------------ inputs
template <class S>
struct Problem {
  bool lstm, reverse, train, proj, ln, lnc;
  int64_t H, K, G, W;
  SeqLayout L;
  std::vector<S> gx, w_hh, w_hr, b_hh, hx, cx, lnw, lnb, lcw, lcb, zh, zc, mask;
};

template <class S>
std::vector<S> get_opt(const emu_io::Arrays& in, const char* name) {
  return in.has(name) ? in.get<S>(name) : std::vector<S>();
}

template <class S>
Problem<S> problem(const emu_io::Arrays& in) {
  Problem<S> q;
  const int cell = in.scalar<int>("cell");
  if (cell != 0 && cell != 1) throw std::runtime_error("cell must be 0 (LSTM) or 1 (GRU)");
  q.lstm = cell == 0;
  q.reverse = in.scalar<int>("reverse") != 0;
  q.train = in.scalar<int>("train") != 0;
  q.H = in.scalar<int64_t>("H");
  q.G = (q.lstm ? 4 : 3) * q.H;
  q.L = make_layout(in.get<int64_t>("batch_sizes"));
  q.proj = in.has("w_hr");
  q.K = q.proj ? in.shape("w_hr")[0] : q.H;
  q.gx = in.get<S>("gx");
  q.w_hh = in.get<S>("w_hh");
  q.w_hr = get_opt<S>(in, "w_hr");
  q.b_hh = get_opt<S>(in, "b_hh");
  q.hx = in.get<S>("hx");
  q.cx = get_opt<S>(in, "cx");
  q.lnw = get_opt<S>(in, "ln_hh_w");
  q.lnb = get_opt<S>(in, "ln_hh_b");
  q.lcw = get_opt<S>(in, "ln_c_w");
  q.lcb = get_opt<S>(in, "ln_c_b");
  q.zh = get_opt<S>(in, "zh");
  q.zc = get_opt<S>(in, "zc");
  q.mask = get_opt<S>(in, "mask");
  q.ln = !q.lnw.empty();
  q.lnc = !q.lcw.empty();
  const int64_t H = q.H, N = q.L.N, B = q.L.B;
  q.W = q.lstm ? 6 * H + (q.ln ? 4 * H + 1 : 0) + (q.lnc ? H + 1 : 0) : 4 * H + (q.ln ? 3 * H + 1 : 0);
  auto need = [&](const char* name, std::vector<int64_t> shape) {
    if (in.has(name) && in.shape(name) != shape)
      throw std::runtime_error(std::string("array '") + name + "' has the wrong shape");
  };
  need("gx", {N, q.G});
  need("w_hh", {q.G, q.K});
  need("hx", {B, q.K});
  need("cx", {B, H});
  need("ln_hh_w", {q.G});
  need("ln_hh_b", {q.G});
  need("ln_c_w", {H});
  need("ln_c_b", {H});
  need("mask", {B, q.K});
  need("b_hh", {q.G});
  if (q.lstm && q.cx.empty()) throw std::runtime_error("the LSTM needs cx");
  if (!q.zh.empty() && q.zh.size() != 1 && static_cast<int64_t>(q.zh.size()) != N * q.K)
    throw std::runtime_error("zh must be [N, K] or one element");
  if (!q.zc.empty() && q.zc.size() != 1 && static_cast<int64_t>(q.zc.size()) != N * H)
    throw std::runtime_error("zc must be [N, H] or one element");
  return q;
}

// ------------------------------------------------------------------ forward: {lstm,gru}_ext_forward of *_ext_cuda.cpp
template <class S>
struct FwdResult {
  std::vector<S> output, h_state, c_state, ws;
};

template <class S>
FwdResult<S> forward(const Problem<S>& q, LaunchLog& log) {
  const SeqLayout& L = q.L;
  const int64_t H = q.H, K = q.K, G = q.G, W = q.W;
  FwdResult<S> f;
  f.output = nan_vec<S>(L.N * K);
  f.h_state = q.hx;
  f.c_state = q.cx;  // acc dtype (== S here)
  f.ws = nan_vec<S>(q.train ? L.N * W : 0);
  // hm = hx * mask, the GEMM operand, in the accumulation dtype
  std::vector<S> hm = q.hx;
  if (!q.mask.empty())
    for (size_t e = 0; e < hm.size(); ++e) hm[e] *= q.mask[e];
  std::vector<S> a = nan_vec<S>(L.B * G);
  std::vector<S> r = nan_vec<S>(q.proj ? L.B * H : 0), hnew = nan_vec<S>(q.proj ? L.B * K : 0);
  std::vector<S> scratch = nan_vec<S>(q.lnc ? L.B * 2 * H : 0);

  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t t = L.step(s, q.reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    mm(a.data(), G, hm.data(), K, q.w_hh.data(), bs, K, G, /*trans_b=*/true);  // mm_out(a[:bs], hm[:bs], w^T)
    if (q.lstm) {
      LstmExtFwdParams p;
      p.a = a.data();
      p.gx = q.gx.data() + off * G;
      p.ln_hh_w = opt(q.lnw);
      p.ln_hh_b = opt(q.lnb);
      p.ln_c_w = opt(q.lcw);
      p.ln_c_b = opt(q.lcb);
      if (!q.proj) p.zh = zoneout_at(q.zh, off, K);
      p.zc = zoneout_at(q.zc, off, H);
      p.mask = q.proj ? nullptr : opt(q.mask);
      p.c_state = f.c_state.data();
      p.h_state = q.proj ? nullptr : f.h_state.data();
      p.hm = q.proj ? nullptr : hm.data();
      p.out = q.proj ? nullptr : f.output.data() + off * K;
      p.r_out = q.proj ? r.data() : nullptr;
      p.scratch = q.lnc ? scratch.data() : nullptr;
      p.ws = q.train ? f.ws.data() + off * W : nullptr;
      p.bs = bs;
      p.H = H;
      p.ld_out = K;
      p.ws_width = W;
      p.proj = q.proj ? 1 : 0;
      launch_ext<S>(lstm_ext_fwd_kernel<S>, p, H, log);
      if (q.proj) {
        mm(hnew.data(), K, r.data(), H, q.w_hr.data(), bs, H, K, /*trans_b=*/true);  // mm_out(hnew, r, w_hr^T)
        ExtMixParams m;
        m.hnew = hnew.data();
        m.zh = zoneout_at(q.zh, off, K);
        m.mask = opt(q.mask);
        m.h_state = f.h_state.data();
        m.hm = hm.data();
        m.out = f.output.data() + off * K;
        m.bs = bs;
        m.D = K;
        m.ld_out = K;
        launch_ext<S>(ext_mix_kernel<S>, m, K, log);
      }
    } else {
      GruExtFwdParams p;
      p.a = a.data();
      p.gx = q.gx.data() + off * G;
      p.b_hh = opt(q.b_hh);
      p.ln_hh_w = opt(q.lnw);
      p.ln_hh_b = opt(q.lnb);
      p.zh = zoneout_at(q.zh, off, H);
      p.mask = opt(q.mask);
      p.h_state = f.h_state.data();
      p.hm = hm.data();
      p.out = f.output.data() + off * H;
      p.ws = q.train ? f.ws.data() + off * W : nullptr;
      p.bs = bs;
      p.H = H;
      p.ld_out = H;
      p.ws_width = W;
      launch_ext<S>(gru_ext_fwd_kernel<S>, p, H, log);
    }
  }
  return f;
}

// ------------------------------------------------------------------ backward: {lstm,gru}_ext_backward
// Column sums of x (and of x * y) over the N rows of [N, n] buffers with row strides ldx, ldy.
template <class S>
std::vector<S> colsum(const S* x, int64_t ldx, const S* y, int64_t ldy, int64_t N, int64_t n) {
  std::vector<S> r(static_cast<size_t>(n), S(0));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < n; ++j) r[j] += x[i * ldx + j] * (y ? y[i * ldy + j] : S(1));
  return r;
}

template <class S>
void backward(const Problem<S>& q, const FwdResult<S>& f, const emu_io::Arrays& in, emu_io::Arrays& out,
              LaunchLog& log) {
  const SeqLayout& L = q.L;
  const int64_t H = q.H, K = q.K, G = q.G, W = q.W, N = L.N;
  const std::vector<S> go = in.get<S>("grad_output");
  if (in.shape("grad_output") != std::vector<int64_t>{N, K}) throw std::runtime_error("grad_output must be [N, K]");
  std::vector<S> dh_state = in.get<S>("grad_hy");
  std::vector<S> dc_state = q.lstm ? in.get<S>("grad_cy") : std::vector<S>();
  std::vector<S> dgx = nan_vec<S>(N * G), da_ln = nan_vec<S>(N * G);
  std::vector<S> da_buf = nan_vec<S>(q.ln ? N * G : 0);
  std::vector<S>& da = q.ln ? da_buf : da_ln;
  std::vector<S> dyc = nan_vec<S>(q.lnc ? N * H : 0);
  std::vector<S> dh_new = nan_vec<S>(q.proj ? N * K : 0), dr = nan_vec<S>(q.proj ? L.B * H : 0);
  std::vector<S> tmp(static_cast<size_t>(L.B * K));
  // LSTM: the cell state each row started from (the workspace's c, after zoneout); GRU: the hidden state.
  const std::vector<S> c_prev = q.lstm ? gather_prev(f.ws.data() + 4 * H, W, q.cx, H, L, q.reverse) : std::vector<S>();
  const std::vector<S> h_prev = gather_prev(f.output.data(), K, q.hx, K, L, q.reverse);

  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t t = L.step(s, !q.reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    if (q.lstm) {
      if (q.proj) {
        ExtSplitParams sp;
        sp.grad_out = go.data() + off * K;
        sp.zh = zoneout_at(q.zh, off, K);
        sp.dh_state = dh_state.data();
        sp.dh_new = dh_new.data() + off * K;
        sp.bs = bs;
        sp.D = K;
        sp.ld_grad_out = K;
        launch_ext<S>(ext_split_kernel<S>, sp, K, log);
        mm(dr.data(), H, dh_new.data() + off * K, K, q.w_hr.data(), bs, K, H, false);  // mm_out(dr, dh_new, w_hr)
      }
      LstmExtBwdParams p;
      p.grad_out = q.proj ? nullptr : go.data() + off * K;
      p.dr = q.proj ? dr.data() : nullptr;
      p.ws = f.ws.data() + off * W;
      p.c_prev = c_prev.data() + off * H;
      p.ln_hh_w = opt(q.lnw);
      p.ln_c_w = opt(q.lcw);
      if (!q.proj) p.zh = zoneout_at(q.zh, off, K);
      p.zc = zoneout_at(q.zc, off, H);
      p.dh_state = q.proj ? nullptr : dh_state.data();
      p.dc_state = dc_state.data();
      p.dgx = dgx.data() + off * G;
      p.da_ln = da_ln.data() + off * G;
      p.da = q.ln ? da.data() + off * G : nullptr;
      p.dy_c = q.lnc ? dyc.data() + off * H : nullptr;
      p.bs = bs;
      p.H = H;
      p.ld_grad_out = K;
      p.ws_width = W;
      launch_ext<S>(lstm_ext_bwd_kernel<S>, p, H, log);
    } else {
      GruExtBwdParams p;
      p.grad_out = go.data() + off * H;
      p.ws = f.ws.data() + off * W;
      p.h_prev = h_prev.data() + off * H;
      p.ln_hh_w = opt(q.lnw);
      p.zh = zoneout_at(q.zh, off, H);
      p.dh_state = dh_state.data();
      p.dgx = dgx.data() + off * G;
      p.da_ln = da_ln.data() + off * G;
      p.da = q.ln ? da.data() + off * G : nullptr;
      p.bs = bs;
      p.H = H;
      p.ld_grad_out = H;
      p.ws_width = W;
      launch_ext<S>(gru_ext_bwd_kernel<S>, p, H, log);
    }
    // The carry: dh_state[:bs] += (da[off:off+bs] @ W_hh) * mask[:bs]
    mm(tmp.data(), K, da.data() + off * G, G, q.w_hh.data(), bs, G, K, false);
    for (int64_t e = 0; e < bs * K; ++e) dh_state[e] += q.mask.empty() ? tmp[e] : tmp[e] * q.mask[e];
  }

  // Whole sequence: grad_w_hh = da^T @ (h_prev * mask), the mask row of a row being its batch index.
  std::vector<S> hpm = h_prev;
  if (!q.mask.empty())
    for (int64_t t = 0; t < L.T; ++t)
      for (int64_t b = 0; b < L.batch_sizes[t]; ++b)
        for (int64_t k = 0; k < K; ++k) hpm[(L.offsets[t] + b) * K + k] *= q.mask[b * K + k];
  std::vector<S> gw(static_cast<size_t>(G * K), S(0));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t i = 0; i < G; ++i)
      for (int64_t k = 0; k < K; ++k) gw[i * K + k] += da[r * G + i] * hpm[r * K + k];
  out.put("grad_gates_x", dgx, {N, G});
  out.put("grad_hx", dh_state, {L.B, K});
  out.put("grad_w_hh", gw, {G, K});
  if (q.lstm) out.put("grad_cx", dc_state, {L.B, H});
  if (!q.lstm && !q.b_hh.empty()) out.put("grad_b_hh", colsum<S>(da_ln.data(), G, nullptr, 0, N, G), {G});
  if (q.ln) {
    const int64_t xcol = q.lstm ? 6 * H : 4 * H;
    out.put("grad_ln_hh_w", colsum<S>(da_ln.data(), G, f.ws.data() + xcol, W, N, G), {G});
    out.put("grad_ln_hh_b", colsum<S>(da_ln.data(), G, nullptr, 0, N, G), {G});
  }
  if (q.lnc) {
    const int64_t xcol = 6 * H + (q.ln ? G + 1 : 0);
    out.put("grad_ln_c_w", colsum<S>(dyc.data(), H, f.ws.data() + xcol, W, N, H), {H});
    out.put("grad_ln_c_b", colsum<S>(dyc.data(), H, nullptr, 0, N, H), {H});
  }
  if (q.proj) {  // grad_w_hr = dh_new^T @ r, r = o * tanh(.) from the workspace
    std::vector<S> gr(static_cast<size_t>(K * H), S(0));
    for (int64_t r = 0; r < N; ++r)
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < H; ++j)
          gr[i * H + j] += dh_new[r * K + i] * f.ws[r * W + 3 * H + j] * f.ws[r * W + 5 * H + j];
    out.put("grad_w_hr", gr, {K, H});
  }
}

template <class S>
void run(const emu_io::Arrays& in, emu_io::Arrays& out) {
  const Problem<S> q = problem<S>(in);
  LaunchLog log, blog;
  const FwdResult<S> f = forward(q, log);
  out.put("output", f.output, {q.L.N, q.K});
  out.put("hy", f.h_state, {q.L.B, q.K});
  if (q.lstm) out.put("cy", f.c_state, {q.L.B, q.H});
  if (q.train) out.put("ws", f.ws, {q.L.N, q.W});
  out.put("launches", log.rows, {static_cast<int64_t>(log.rows.size() / 3), 3});
  if (q.train && in.has("grad_output")) {
    backward(q, f, in, out, blog);
    out.put("blaunches", blog.rows, {static_cast<int64_t>(blog.rows.size() / 3), 3});
  }
}

void run_one(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.dtype("w_hh")) {
    case emu_io::DType::F32: run<float>(in, out); break;
    case emu_io::DType::F64: run<double>(in, out); break;
    default: throw std::runtime_error("w_hh must be float32 or float64");
  }
}

void batch(const emu_io::Arrays& in, emu_io::Arrays& out) { emu_io::run_batch(in, out, run_one); }

}  // namespace

int main(int argc, char** argv) { return emu_io::run_cases(argc, argv, {{"run", run_one}, {"batch", batch}}); }
