// rnn_kernels_driver.cpp -- runs the REAL fused step kernels of csrc/cuda (fwd_step_kernel.cuh,
// bwd_step_kernel.cuh) under the CUDA emulation, whole sequences at a time, for tests/test_cuda_emu_kernels.py.
//
// What is real here: the six __global__ kernels (lstm/gru/rnn x fwd/bwd) and their launch configuration, taken
// from the kernels' own traits (FwdTraitsFor / BwdTraitsFor: grid_x, grid_y, kThreads, smem_bytes), exactly as
// launcher.cuh's config_of + launch_kernel compute it. What is transcribed: the host side of the ATen drivers
// (csrc/cuda/{lstm,gru,rnn}_cuda.cpp) -- the per-step loop, which rows/pointers/n_prev/n_next each launch gets,
// the projection GEMMs between launches, gather_prev / sequence_rows / next_step (csrc/sequence.{h,cpp},
// csrc/cuda/cuda_common.h) and the GEMMs after the loop (grad_hx). The GEMMs are naive loops here (the host uses
// cuBLAS); everything else keeps the ATen code's structure line by line, so the kernels execute as launched.
// The x-side pre-activations gx = x W_ih^T + b_ih (input_gates, one GEMM with no sequential dependency) are
// computed by the test in Python and passed in.
//
// Cases (emu_io.h: `driver CASE IN OUT`):
//   forward   one whole-sequence forward  (inputs below; dtype of every float array = dtype of w_hh)
//   backward  one whole-sequence backward
//   batch     several of the above in one process: `n` sub-cases, sub-case k's arrays named "k.<name>", its
//             `pass` (0 forward, 1 backward) says which; outputs come back as "k.<name>". Saves process starts
//             (each one spins up a 256-thread pool, which is slow under TSan).
// Common inputs: cell (0 LSTM, 1 GRU, 2 RNN), relu (RNN), reverse, H, batch_sizes int64 [T] (dense input:
// [B]*T), w_hh [G*H, K] (K = P with an LSTM projection, else H), hx [B, K].
// forward:  gx [N, G*H], b_hh [G*H] (optional), cx [B, H] (LSTM), w_hr [P, H] (optional, LSTM), train.
//           out: output [N, K], hy [B, K], cy [B, H] (LSTM), ws [N, 5H | 4H] (LSTM | GRU, train),
//                launches int64 [n, 3] (grid.x, grid.y, smem bytes of every launch).
// backward: grad_output [N, K], grad_hy [B, K], grad_cy [B, H] (LSTM), cx [B, H] (LSTM), output [N, K],
//           ws (LSTM, GRU), w_hr (optional, LSTM).
//           out: dg [N, G*H] (GRU: the x-side dG_x), dgh [N, 3H] (GRU), grad_hx [B, K], grad_cx [B, H] (LSTM),
//                dh_all [N, P] and r_all [N, H] (LSTM projection), launches.
// Buffers the kernels write are filled with NaN first, so a row or element a kernel fails to write shows up.
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/bwd_step_kernel.cuh"
#include "cuda/fwd_step_kernel.cuh"
#include "emu_io.h"
#include "host_seq.h"

namespace {

using fastrnn::cuda::BwdStepParams;
using fastrnn::cuda::Cell;
using fastrnn::cuda::FwdStepParams;
using fastrnn::cuda::gates_of;
using std::int64_t;

using namespace emu_host;  // host_seq.h: SeqLayout, make_layout, gather_prev, mm, nan_vec, ...


// Row `row` of a row-major buffer with `ld` elements per row (cuda_common.h row_ptr: nullptr when empty).
template <class T>
T* row_ptr(std::vector<T>& v, int64_t row, int64_t ld) {
  return v.empty() ? nullptr : v.data() + row * ld;
}
template <class T>
const T* row_ptr(const std::vector<T>& v, int64_t row, int64_t ld) {
  return v.empty() ? nullptr : v.data() + row * ld;
}

// ------------------------------------------------------------------ launcher.cuh, emulated
struct LaunchLog {
  std::vector<int64_t> rows;  // grid.x, grid.y, smem bytes per launch
  void put(emu_io::Arrays& out) const {
    out.put("launches", rows, {static_cast<int64_t>(rows.size() / 3), 3});
  }
};

// launch_{fwd,bwd}_step + config_of + launch_kernel: no launch when bs == 0 or H == 0, grid
// (Tr::grid_x(H), Tr::grid_y(bs), 1), block (Tr::kThreads, 1, 1), Tr::smem_bytes() of dynamic shared memory.
template <class Tr, class Params>
void launch_step(void (*kernel)(Params), const Params& p, LaunchLog& log) {
  if (p.bs <= 0 || p.H <= 0) return;
  const int64_t grid_x = Tr::grid_x(p.H), grid_y = Tr::grid_y(p.bs), threads = Tr::kThreads,
                smem = Tr::smem_bytes();
  if (grid_x <= 0 || grid_y <= 0) return;
  log.rows.insert(log.rows.end(), {grid_x, grid_y, smem});
  ::cuda_emu::launch(dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), 1),
                     dim3(static_cast<unsigned>(threads), 1, 1), static_cast<size_t>(smem), kernel, p);
}

template <class S>
void launch_fwd_step(Cell cell, const FwdStepParams& p, LaunchLog& log) {
  using namespace fastrnn::cuda;
  switch (cell) {
    case Cell::kLstm: launch_step<FwdTraitsFor<S, Cell::kLstm>>(lstm_fwd_step_kernel<S>, p, log); break;
    case Cell::kGru: launch_step<FwdTraitsFor<S, Cell::kGru>>(gru_fwd_step_kernel<S>, p, log); break;
    case Cell::kRnn: launch_step<FwdTraitsFor<S, Cell::kRnn>>(rnn_fwd_step_kernel<S>, p, log); break;
  }
}

template <class S>
void launch_bwd_step(Cell cell, const BwdStepParams& p, LaunchLog& log) {
  using namespace fastrnn::cuda;
  switch (cell) {
    case Cell::kLstm: launch_step<BwdTraitsFor<S, Cell::kLstm>>(lstm_bwd_step_kernel<S>, p, log); break;
    case Cell::kGru: launch_step<BwdTraitsFor<S, Cell::kGru>>(gru_bwd_step_kernel<S>, p, log); break;
    case Cell::kRnn: launch_step<BwdTraitsFor<S, Cell::kRnn>>(rnn_bwd_step_kernel<S>, p, log); break;
  }
}

// ------------------------------------------------------------------ inputs
struct Common {
  Cell cell;
  int G;
  bool reverse, relu, proj;
  int64_t H, K;
  SeqLayout L;
};

Common common(const emu_io::Arrays& in) {
  Common c;
  const int cell = in.scalar<int>("cell");
  if (cell < 0 || cell > 2) throw std::runtime_error("cell must be 0 (LSTM), 1 (GRU) or 2 (RNN)");
  c.cell = static_cast<Cell>(cell);
  c.G = gates_of(c.cell);
  c.reverse = in.scalar<int>("reverse") != 0;
  c.relu = in.has("relu") && in.scalar<int>("relu") != 0;
  c.proj = in.has("w_hr");
  if (c.proj && c.cell != Cell::kLstm) throw std::runtime_error("w_hr is for the LSTM only");
  c.H = in.scalar<int64_t>("H");
  c.L = make_layout(in.get<int64_t>("batch_sizes"));
  c.K = c.proj ? in.shape("w_hr")[0] : c.H;
  auto need = [&](const char* name, std::vector<int64_t> shape) {
    if (in.shape(name) != shape) throw std::runtime_error(std::string("array '") + name + "' has the wrong shape");
  };
  need("w_hh", {c.G * c.H, c.K});
  need("hx", {c.L.B, c.K});
  if (c.proj) need("w_hr", {c.K, c.H});
  if (c.cell == Cell::kLstm) need("cx", {c.L.B, c.H});
  return c;
}

// ------------------------------------------------------------------ forward: {lstm,gru,rnn}_forward of *_cuda.cpp
template <class S>
void forward(const emu_io::Arrays& in, emu_io::Arrays& out) {
  const Common c = common(in);
  const SeqLayout& L = c.L;
  const int64_t H = c.H, P = c.K, G = c.G;
  const bool proj = c.proj, reverse = c.reverse;
  const bool train = in.scalar<int>("train") != 0;
  if (in.shape("gx") != std::vector<int64_t>{L.N, G * H}) throw std::runtime_error("gx must be [N, G*H]");
  const std::vector<S> gx = in.get<S>("gx");
  const std::vector<S> w_hh = in.get<S>("w_hh");
  const std::vector<S> w_hr = proj ? in.get<S>("w_hr") : std::vector<S>();
  const std::vector<S> b_hh = in.has("b_hh") ? in.get<S>("b_hh") : std::vector<S>();
  if (!b_hh.empty() && static_cast<int64_t>(b_hh.size()) != G * H) throw std::runtime_error("b_hh must be [G*H]");
  const std::vector<S> h0 = in.get<S>("hx");
  const int64_t ws_width = c.cell == Cell::kLstm ? 5 * H : c.cell == Cell::kGru ? 4 * H : 0;

  std::vector<S> output = nan_vec<S>(L.N * P);  // out = rows2d(output), row stride P
  std::vector<S> c_state = c.cell == Cell::kLstm ? in.get<S>("cx") : std::vector<S>();  // acc_t<S> == S here
  std::vector<S> ws = nan_vec<S>(train && ws_width > 0 ? L.N * ws_width : 0);
  std::vector<S> r = nan_vec<S>(proj ? L.B * H : 0);
  LaunchLog log;

  for (int64_t k = 0; k < L.T; ++k) {
    const int64_t t = L.step(k, reverse), bs = L.batch_sizes[t], off = L.offsets[t];
    const int64_t prev = L.prev_step(t, reverse), n_prev = L.rows_with_prev(t, reverse);
    FwdStepParams p;
    p.gx = row_ptr(gx, off, G * H);
    p.b_hh = b_hh.empty() ? nullptr : b_hh.data();  // ptr_or_null(b_hh)
    p.w_hh = w_hh.data();
    p.h_prev = n_prev > 0 ? row_ptr(output, L.offsets[prev], P) : nullptr;
    p.h_init = h0.data();
    p.c_state = c.cell == Cell::kLstm ? c_state.data() : nullptr;  // only lstm_cuda.cpp sets it
    p.h_out = proj ? r.data() : row_ptr(output, off, P);
    p.ws = train ? row_ptr(ws, off, ws_width) : nullptr;  // rnn_cuda.cpp: never (no workspace)
    p.n_prev = n_prev;
    p.bs = bs;
    p.H = H;
    p.K = P;
    p.ld_out = proj ? H : P;
    p.relu = c.cell == Cell::kRnn && c.relu ? 1 : 0;
    launch_fwd_step<S>(c.cell, p, log);
    if (proj) {
      // mm_into(out.narrow(0, off, bs), r.narrow(0, 0, bs), w_hr.t())
      mm(output.data() + off * P, P, r.data(), H, w_hr.data(), bs, H, P, /*trans_b=*/true);
    }
  }
  // hy = out.index_select(0, sequence_rows(L, /*last=*/!reverse))
  std::vector<S> hy(static_cast<size_t>(L.B * P));
  if (L.T == 0) {
    hy = h0;
  } else {
    const std::vector<int64_t> rows = sequence_rows(L, !reverse);
    for (int64_t b = 0; b < L.B; ++b)
      for (int64_t q = 0; q < P; ++q) hy[b * P + q] = output[rows[b] * P + q];
  }
  out.put("output", output, {L.N, P});
  out.put("hy", hy, {L.B, P});
  if (c.cell == Cell::kLstm) out.put("cy", c_state, {L.B, H});
  if (!ws.empty()) out.put("ws", ws, {L.N, ws_width});
  log.put(out);
}

// ------------------------------------------------------------------ backward: {lstm,gru,rnn}_backward of *_cuda.cpp
template <class S>
void backward(const emu_io::Arrays& in, emu_io::Arrays& out) {
  const Common c = common(in);
  const SeqLayout& L = c.L;
  const int64_t H = c.H, P = c.K, G = c.G;
  const bool reverse = c.reverse;
  const std::vector<S> w_hh = in.get<S>("w_hh");
  const std::vector<S> go = in.get<S>("grad_output");  // rows2d(grad_output), row stride P
  const std::vector<S> grad_hy = in.get<S>("grad_hy");
  const std::vector<S> hx = in.get<S>("hx");
  const std::vector<S> output = in.get<S>("output");
  if (in.shape("grad_output") != std::vector<int64_t>{L.N, P} || in.shape("output") != std::vector<int64_t>{L.N, P} ||
      in.shape("grad_hy") != std::vector<int64_t>{L.B, P})
    throw std::runtime_error("grad_output/output must be [N, K], grad_hy [B, K]");
  LaunchLog log;

  if (c.cell == Cell::kLstm) {
    // lstm_backward (lstm_cuda.cpp)
    const bool proj = c.proj;
    const std::vector<S> ws = in.get<S>("ws");
    if (in.shape("ws") != std::vector<int64_t>{L.N, 5 * H}) throw std::runtime_error("ws must be [N, 5H]");
    const std::vector<S> w_hr = proj ? in.get<S>("w_hr") : std::vector<S>();
    std::vector<S> dc_state = in.get<S>("grad_cy");
    // c_prev = gather_prev(ws.narrow(1, 4 * H, H), cx, L, reverse)
    const std::vector<S> c_prev = gather_prev(ws.data() + 4 * H, 5 * H, in.get<S>("cx"), H, L, reverse);
    std::vector<S> dgates = nan_vec<S>(L.N * 4 * H);
    std::vector<S> grad_hx;
    std::vector<S> dh_all = nan_vec<S>(proj ? L.N * P : 0);
    std::vector<S> r_all = nan_vec<S>(proj ? L.N * H : 0);
    if (!proj) {
      std::vector<S> carry = grad_hy;
      for (int64_t k = 0; k < L.T; ++k) {
        const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        const int64_t nxt = next_step(L, t, reverse);
        const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
        BwdStepParams p;
        p.dg_next = n_next > 0 ? row_ptr(dgates, L.offsets[nxt], 4 * H) : nullptr;
        p.w_hh = w_hh.data();
        p.grad_out = row_ptr(go, off, P);
        p.carry = carry.data();
        p.ws = row_ptr(ws, off, 5 * H);
        p.c_prev = row_ptr(c_prev, off, H);
        p.dc_state = dc_state.data();
        p.dg = row_ptr(dgates, off, 4 * H);
        p.n_next = n_next;
        p.bs = bs;
        p.H = H;
        launch_bwd_step<S>(Cell::kLstm, p, log);
      }
      // grad_hx = mm(dgates.index_select(0, sequence_rows(L, /*last=*/reverse)), w_hh)
      if (L.T == 0) {
        grad_hx = grad_hy;
      } else {
        grad_hx.assign(static_cast<size_t>(L.B * H), S(0));
        const std::vector<int64_t> rows = sequence_rows(L, reverse);
        for (int64_t b = 0; b < L.B; ++b)
          mm(grad_hx.data() + b * H, H, dgates.data() + rows[b] * 4 * H, 4 * H, w_hh.data(), 1, 4 * H, H, false);
      }
    } else {
      std::vector<S> dh_state = grad_hy;  // [B, P]
      std::vector<S> dr = nan_vec<S>(L.B * H);
      for (int64_t k = 0; k < L.T; ++k) {
        const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
        // at::add_out(dh_t, dh_state.narrow(0, 0, bs), go.narrow(0, off, bs))
        S* dh_t = dh_all.data() + off * P;
        for (int64_t e = 0; e < bs * P; ++e) dh_t[e] = dh_state[e] + go[off * P + e];
        mm(dr.data(), H, dh_t, P, w_hr.data(), bs, P, H, /*trans_b=*/false);  // mm_into(dr[:bs], dh_t, w_hr)
        BwdStepParams p;
        p.w_hh = w_hh.data();
        p.dh_ext = dr.data();
        p.ws = row_ptr(ws, off, 5 * H);
        p.c_prev = row_ptr(c_prev, off, H);
        p.dc_state = dc_state.data();
        p.dg = row_ptr(dgates, off, 4 * H);
        p.r_out = row_ptr(r_all, off, H);
        p.bs = bs;
        p.H = H;
        launch_bwd_step<S>(Cell::kLstm, p, log);
        // mm_into(dh_state.narrow(0, 0, bs), dgates.narrow(0, off, bs), w_hh)
        mm(dh_state.data(), P, dgates.data() + off * 4 * H, 4 * H, w_hh.data(), bs, 4 * H, P, false);
      }
      grad_hx = dh_state;
    }
    out.put("dg", dgates, {L.N, 4 * H});
    out.put("grad_hx", grad_hx, {L.B, P});
    out.put("grad_cx", dc_state, {L.B, H});
    if (proj) {
      out.put("dh_all", dh_all, {L.N, P});
      out.put("r_all", r_all, {L.N, H});
    }
  } else if (c.cell == Cell::kGru) {
    // gru_backward (gru_cuda.cpp)
    const std::vector<S> ws = in.get<S>("ws");
    if (in.shape("ws") != std::vector<int64_t>{L.N, 4 * H}) throw std::runtime_error("ws must be [N, 4H]");
    const std::vector<S> h_prev = gather_prev(output.data(), H, hx, H, L, reverse);
    std::vector<S> carry = grad_hy;
    std::vector<S> dgx = nan_vec<S>(L.N * 3 * H);
    std::vector<S> dgh = nan_vec<S>(L.N * 3 * H);
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      const int64_t nxt = next_step(L, t, reverse);
      const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
      BwdStepParams p;
      p.dg_next = n_next > 0 ? row_ptr(dgh, L.offsets[nxt], 3 * H) : nullptr;
      p.w_hh = w_hh.data();
      p.grad_out = row_ptr(go, off, H);
      p.carry = carry.data();
      p.ws = row_ptr(ws, off, 4 * H);
      p.h_prev = row_ptr(h_prev, off, H);
      p.dg = row_ptr(dgx, off, 3 * H);
      p.dgh = row_ptr(dgh, off, 3 * H);
      p.n_next = n_next;
      p.bs = bs;
      p.H = H;
      launch_bwd_step<S>(Cell::kGru, p, log);
    }
    // grad_hx = carry + mm(dgh.index_select(0, sequence_rows(L, /*last=*/reverse)), w_hh)
    std::vector<S> grad_hx = grad_hy;
    if (L.T > 0) {
      const std::vector<int64_t> rows = sequence_rows(L, reverse);
      std::vector<S> tmp(static_cast<size_t>(H));
      for (int64_t b = 0; b < L.B; ++b) {
        mm(tmp.data(), H, dgh.data() + rows[b] * 3 * H, 3 * H, w_hh.data(), 1, 3 * H, H, false);
        for (int64_t j = 0; j < H; ++j) grad_hx[b * H + j] = carry[b * H + j] + tmp[j];
      }
    }
    out.put("dg", dgx, {L.N, 3 * H});
    out.put("dgh", dgh, {L.N, 3 * H});
    out.put("grad_hx", grad_hx, {L.B, H});
  } else {
    // rnn_backward (rnn_cuda.cpp)
    std::vector<S> carry = grad_hy;
    std::vector<S> dgates = nan_vec<S>(L.N * H);
    for (int64_t k = 0; k < L.T; ++k) {
      const int64_t t = L.step(k, !reverse), bs = L.batch_sizes[t], off = L.offsets[t];
      const int64_t nxt = next_step(L, t, reverse);
      const int64_t n_next = nxt < 0 ? 0 : L.rows_with_prev(nxt, reverse);
      BwdStepParams p;
      p.dg_next = n_next > 0 ? row_ptr(dgates, L.offsets[nxt], H) : nullptr;
      p.w_hh = w_hh.data();
      p.grad_out = row_ptr(go, off, H);
      p.carry = carry.data();
      p.h_cur = row_ptr(output, off, H);
      p.dg = row_ptr(dgates, off, H);
      p.n_next = n_next;
      p.bs = bs;
      p.H = H;
      p.relu = c.relu ? 1 : 0;
      launch_bwd_step<S>(Cell::kRnn, p, log);
    }
    // grad_hx = mm(dgates.index_select(0, sequence_rows(L, /*last=*/reverse)), w_hh)
    std::vector<S> grad_hx = grad_hy;
    if (L.T > 0) {
      const std::vector<int64_t> rows = sequence_rows(L, reverse);
      for (int64_t b = 0; b < L.B; ++b)
        mm(grad_hx.data() + b * H, H, dgates.data() + rows[b] * H, H, w_hh.data(), 1, H, H, false);
    }
    out.put("dg", dgates, {L.N, H});
    out.put("grad_hx", grad_hx, {L.B, H});
  }
  log.put(out);
}

// ------------------------------------------------------------------ dispatch
void run_one(const emu_io::Arrays& in, emu_io::Arrays& out, bool bwd) {
  switch (in.dtype("w_hh")) {
    case emu_io::DType::F32: bwd ? backward<float>(in, out) : forward<float>(in, out); break;
    case emu_io::DType::F64: bwd ? backward<double>(in, out) : forward<double>(in, out); break;
    default: throw std::runtime_error("w_hh must be float32 or float64");
  }
}

void batch(const emu_io::Arrays& in, emu_io::Arrays& out) {
  emu_io::run_batch(in, out, [](const emu_io::Arrays& sub, emu_io::Arrays& sub_out) {
    run_one(sub, sub_out, sub.scalar<int>("pass") != 0);
  });
}

}  // namespace

int main(int argc, char** argv) {
  return emu_io::run_cases(argc, argv,
                           {{"forward", [](const emu_io::Arrays& in, emu_io::Arrays& out) { run_one(in, out, false); }},
                            {"backward", [](const emu_io::Arrays& in, emu_io::Arrays& out) { run_one(in, out, true); }},
                            {"batch", batch}});
}
