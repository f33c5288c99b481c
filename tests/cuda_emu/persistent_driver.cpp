// persistent_driver.cpp -- runs the REAL persistent forward kernels of csrc/cuda/fwd_persistent_kernel.cuh under
// the CUDA emulation as one cooperative launch per sequence (every block at once, the grid barrier between
// steps), for tests/test_cuda_emu_persistent.py.
//
// Real here: the six __global__ kernels (FMA and tensor-core), their traits (grid, smem_bytes), the step table
// and the choice of units per block (persistent_plan.h, the same header the ATen drivers use). Transcribed: the driver's
// gathering of h_n (cuda_common.h sequence_rows). The x-side pre-activations gx come from the test.
//
// Cases (emu_io.h: `driver CASE IN OUT`):
//   forward  in:  storage (0 float32, 1 float64, 2 float16, 3 bfloat16; half types travel as float32 arrays
//                 holding values the storage type represents exactly), cell (0 LSTM, 1 GRU, 2 RNN), relu,
//                 reverse, train, units, num_sms (the emulated device's SM count), tf32 (optional, float32 only:
//                 1 = torch.backends.cudnn.allow_tf32, the tensor-core kernel; 0 = the exact FMA kernel; the
//                 16-bit types always take the tensor-core kernel, float64 the FMA kernel), batch_sizes int64 [T],
//                 w_hh [G*H, H], hx [B, H], gx [N, G*H], b_hh [G*H] (optional), cx [B, H] (LSTM)
//            out: err (the launch's cudaError_t), output [N, H], hy [B, H], cy [B, H] (LSTM), ws (train)
//            directions (optional, default 1): 2 runs both directions of a bidirectional layer in ONE launch (grid
//            rows, params.h FwdSeqLaunch): the first as `reverse` says, the second the other way in time, from
//            the arrays named with "_r" (w_hh_r, hx_r, gx_r, b_hh_r, cx_r); its results named so too
//   plan     in:  storage, cell, H, num_sms, tf32 (optional), directions (optional)
//            out: units (choose_units with the emulated occupancy), grid (of one direction), smem
//   backward in:  storage, cell, relu, reverse, units, num_sms, batch_sizes, w_hh [G*H, H], hx [B, H], out [N, H]
//                 (the forward's output), ws [N, 5H | 4H] (LSTM/GRU: the forward's workspace), cx [B, H] (LSTM),
//                 grad_out ([N, H] packed, or [T, B, H] with go_dense = 1), grad_hy [B, H], grad_cy [B, H] (LSTM)
//            out: err, dg [N, G*H] (GRU: dG_x), dph_n [N, H] (GRU), grad_hx [B, H], grad_cx [B, H] (LSTM)
//            mma (optional): 1 the tensor-core kernel (float32 as TF32, float16, bfloat16), 0 the FMA kernel.
//            directions (optional): as the forward's (the second direction's arrays and results named with "_r").
//            The persistent backward kernels (bwd_persistent_kernel.cuh). Transcribed: the ATen driver's c_prev
//            (cuda_common.h gather_prev).
//   bplan    in: storage, cell, H, num_sms, mma (optional: tensor cores allowed), directions (optional); out: units,
//            mma (the kernel persistent_plan.h choose_bwd_kernel picks), grid, smem
//   bchunk   in: nothing; out: the backward kernel's chunk plans for every unit and row count (bchunk above)
//   mtile    in: nothing; out: the tensor-core kernels' K pass for every chunk's staged rows (mtile above)
//   batch    several forward/backward sub-cases in one process ("k.<name>" arrays, `n` sub-cases; a sub-case with
//            an array "backward" runs the backward case).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/bwd_persistent_kernel.cuh"
#include "cuda/fwd_persistent_kernel.cuh"
#include "cuda/persistent_plan.h"
#include "emu_io.h"

namespace {

using fastrnn::cuda::acc_t;
using fastrnn::cuda::Cell;
using fastrnn::cuda::FwdPersistentTraitsFor;
using fastrnn::cuda::FwdSeqParams;
using fastrnn::cuda::FwdSeqStep;
using fastrnn::cuda::from_float;
using fastrnn::cuda::gates_of;
using fastrnn::cuda::to_float;
using std::int64_t;

// The kernel the host launcher picks (persistent_launcher.cuh): tensor cores for bf16/fp16 and for float32 with
// TF32 allowed (kMma), FMA for float64 and exact float32.
template <class S, Cell C, bool kMma>
void (*kernel_of())(fastrnn::cuda::FwdSeqLaunch) {
  if constexpr (kMma) {
    if constexpr (C == Cell::kLstm) return fastrnn::cuda::lstm_fwd_persistent_mma_kernel<S>;
    else if constexpr (C == Cell::kGru) return fastrnn::cuda::gru_fwd_persistent_mma_kernel<S>;
    else return fastrnn::cuda::rnn_fwd_persistent_mma_kernel<S>;
  } else {
    if constexpr (C == Cell::kLstm) return fastrnn::cuda::lstm_fwd_persistent_kernel<S>;
    else if constexpr (C == Cell::kGru) return fastrnn::cuda::gru_fwd_persistent_kernel<S>;
    else return fastrnn::cuda::rnn_fwd_persistent_kernel<S>;
  }
}
template <class S, Cell C, bool kMma>
using TraitsOf = std::conditional_t<kMma, fastrnn::cuda::FwdPersistentMmaTraitsFor<S, C>, FwdPersistentTraitsFor<S, C>>;

// The array as the storage type S (IO: the emu_io element type carrying it).
template <class S, class IO>
std::vector<S> to_storage(const std::vector<IO>& v) {
  std::vector<S> r;
  r.reserve(v.size());
  for (IO x : v) r.push_back(from_float<S>(static_cast<acc_t<S>>(x)));
  return r;
}
template <class IO, class T>
std::vector<IO> to_io(const std::vector<T>& v) {
  std::vector<IO> r;
  r.reserve(v.size());
  for (const T& x : v) r.push_back(static_cast<IO>(to_float(x)));
  return r;
}

// One direction of a forward case: its inputs as the storage type, what the kernel writes, and its kernel arguments.
// suffix: "" (the first direction) or "_r" (a bidirectional case's second direction, the other way in time).
template <class S, Cell C>
struct FwdDir {
  using A = acc_t<S>;
  std::vector<S> w_hh, hx, gx, b_hh, output;
  std::vector<A> c_state, ws;
  std::vector<FwdSeqStep> steps;
  FwdSeqParams p;
  bool reverse = false;

  template <class IO>
  void load(const emu_io::Arrays& in, const std::string& sfx, bool rev, int units) {
    const int64_t H = in.scalar<int64_t>("H");
    const bool train = in.scalar<int>("train") != 0;
    const std::vector<int64_t> bsz = in.get<int64_t>("batch_sizes");
    int64_t N = 0;
    for (int64_t b : bsz) N += b;
    reverse = rev;
    w_hh = to_storage<S>(in.get<IO>("w_hh" + sfx)), hx = to_storage<S>(in.get<IO>("hx" + sfx));
    gx = to_storage<S>(in.get<IO>("gx" + sfx));
    if (in.has("b_hh" + sfx)) b_hh = to_storage<S>(in.get<IO>("b_hh" + sfx));
    if (C == Cell::kLstm)
      for (IO x : in.get<IO>("cx" + sfx)) c_state.push_back(static_cast<A>(x));
    const int64_t ws_width = C == Cell::kLstm ? 5 * H : C == Cell::kGru ? 4 * H : 0;
    // What the kernel writes starts as NaN, so a row it fails to write shows up.
    output.assign(static_cast<size_t>(N * H), from_float<S>(std::numeric_limits<A>::quiet_NaN()));
    ws.assign(train ? static_cast<size_t>(N * ws_width) : 0, std::numeric_limits<A>::quiet_NaN());
    steps = fastrnn::cuda::fwd_seq_steps(bsz, reverse);
    p.gx = gx.data();
    p.b_hh = b_hh.empty() ? nullptr : b_hh.data();
    p.w_hh = w_hh.data();
    p.h_init = hx.data();
    p.c_state = c_state.empty() ? nullptr : c_state.data();
    p.out = output.data();
    p.ws = ws.empty() ? nullptr : ws.data();
    p.steps = steps.data();
    p.T = static_cast<int64_t>(bsz.size());
    p.H = H;
    p.K = H;
    p.ld_out = H;
    p.units = units;
    p.relu = in.scalar<int>("relu");
  }

  template <class IO>
  void put(emu_io::Arrays& out, const std::string& sfx, const std::vector<int64_t>& bsz, bool train) const {
    const int64_t H = p.H, T = p.T, B = T > 0 ? bsz[0] : 0;
    const int64_t N = static_cast<int64_t>(output.size()) / (H > 0 ? H : 1);
    // h_n: each sequence's row at its last processed step (forward: time len_b - 1; reverse: time 0).
    std::vector<int64_t> rows(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) rows[b] = b;
    if (!reverse) {
      int64_t off = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = 0; b < bsz[t]; ++b) rows[b] = off + b;
        off += bsz[t];
      }
    }
    std::vector<S> hy(static_cast<size_t>(B * H));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) hy[b * H + j] = output[rows[b] * H + j];
    out.put("output" + sfx, to_io<IO>(output), {N, H});
    out.put("hy" + sfx, to_io<IO>(hy), {B, H});
    if (C == Cell::kLstm) out.put("cy" + sfx, to_io<IO>(c_state), {B, H});
    const int64_t ws_width = C == Cell::kLstm ? 5 * H : C == Cell::kGru ? 4 * H : 0;
    if (train) out.put("ws" + sfx, to_io<IO>(ws), {N, ws_width});
  }
};

// directions (optional, default 1): 2 runs a bidirectional layer in ONE launch (grid rows, params.h FwdSeqLaunch): the
// first direction as `reverse` says, the second the other way in time, from the arrays named with "_r".
int directions_of(const emu_io::Arrays& in) { return in.has("directions") ? in.scalar<int>("directions") : 1; }

template <class S, class IO, Cell C, bool kMma>
void forward(const emu_io::Arrays& in, emu_io::Arrays& out) {
  using Tr = TraitsOf<S, C, kMma>;
  const int64_t H = in.scalar<int64_t>("H");
  const bool reverse = in.scalar<int>("reverse") != 0, train = in.scalar<int>("train") != 0;
  const int units = in.scalar<int>("units"), D = directions_of(in);
  const std::vector<int64_t> bsz = in.get<int64_t>("batch_sizes");
  const int64_t T = static_cast<int64_t>(bsz.size());
  std::vector<FwdDir<S, C>> dirs(static_cast<size_t>(D));
  fastrnn::cuda::FwdSeqLaunch a;
  for (int d = 0; d < D; ++d) {
    dirs[d].template load<IO>(in, d == 0 ? "" : "_r", reverse != (d == 1), units);
    a.dir[d] = dirs[d].p;
  }

  ::cuda_emu::device().num_sms = static_cast<unsigned>(in.scalar<int64_t>("num_sms"));
  const cudaError_t err =
      T > 0 && H > 0
          ? ::cuda_emu::launch_cooperative(dim3(static_cast<unsigned>(Tr::grid(H, units)), static_cast<unsigned>(D)),
                                           dim3(Tr::kThreads), static_cast<size_t>(Tr::smem_bytes(units, H)),
                                           kernel_of<S, C, kMma>(), a)
          : cudaSuccess;
  out.put("err", std::vector<int64_t>{static_cast<int64_t>(err)});
  for (int d = 0; d < D; ++d) dirs[d].template put<IO>(out, d == 0 ? "" : "_r", bsz, train);
}

template <class S, class IO, bool kMma>
void forward_cell(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("cell")) {
    case 0: return forward<S, IO, Cell::kLstm, kMma>(in, out);
    case 1: return forward<S, IO, Cell::kGru, kMma>(in, out);
    case 2: return forward<S, IO, Cell::kRnn, kMma>(in, out);
  }
  throw std::runtime_error("cell must be 0 (LSTM), 1 (GRU) or 2 (RNN)");
}

// tf32 (float32 only): the host's at::globalContext().allowTF32CuDNN(), i.e. torch.backends.cudnn.allow_tf32.
bool tf32_of(const emu_io::Arrays& in) { return in.has("tf32") && in.scalar<int>("tf32") != 0; }

void forward_any(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("storage")) {
    case 0: return tf32_of(in) ? forward_cell<float, float, true>(in, out) : forward_cell<float, float, false>(in, out);
    case 1: return forward_cell<double, double, false>(in, out);
    case 2: return forward_cell<__half, float, true>(in, out);
    case 3: return forward_cell<__nv_bfloat16, float, true>(in, out);
  }
  throw std::runtime_error("storage must be 0 (float32), 1 (float64), 2 (float16) or 3 (bfloat16)");
}

template <class S, Cell C, bool kMma>
void plan_for(const emu_io::Arrays& in, emu_io::Arrays& out) {
  using Tr = TraitsOf<S, C, kMma>;
  const int64_t H = in.scalar<int64_t>("H");
  ::cuda_emu::device().num_sms = static_cast<unsigned>(in.scalar<int64_t>("num_sms"));
  const int u = fastrnn::cuda::choose_units(H, ::cuda_emu::device().num_sms, [&](int units) {
    return static_cast<int>(::cuda_emu::occupancy_max_active_blocks_per_sm(
        Tr::kThreads, static_cast<size_t>(Tr::smem_bytes(units, H))));
  }, 1, directions_of(in));
  out.put("units", std::vector<int64_t>{u});
  out.put("grid", std::vector<int64_t>{u > 0 ? Tr::grid(H, u) : 0});
  out.put("smem", std::vector<int64_t>{u > 0 ? Tr::smem_bytes(u, H) : 0});
}

template <class S, bool kMma>
void plan_cell(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("cell")) {
    case 0: return plan_for<S, Cell::kLstm, kMma>(in, out);
    case 1: return plan_for<S, Cell::kGru, kMma>(in, out);
    case 2: return plan_for<S, Cell::kRnn, kMma>(in, out);
  }
  throw std::runtime_error("cell must be 0 (LSTM), 1 (GRU) or 2 (RNN)");
}

void plan(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("storage")) {
    case 0: return tf32_of(in) ? plan_cell<float, true>(in, out) : plan_cell<float, false>(in, out);
    case 1: return plan_cell<double, false>(in, out);
    case 2: return plan_cell<__half, true>(in, out);
    case 3: return plan_cell<__nv_bfloat16, true>(in, out);
  }
  throw std::runtime_error("storage must be 0 (float32), 1 (float64), 2 (float16) or 3 (bfloat16)");
}

// The backward kernel of (storage, cell, tensor cores): persistent_bwd_launcher.cuh's choice is made by the test here
// (mma = 1: the tensor-core kernel, bf16/fp16/TF32 float; 0: the FMA kernel, every dtype).
template <class S, Cell C, bool kMma>
void (*bwd_kernel_of())(fastrnn::cuda::BwdSeqLaunch) {
  if constexpr (kMma) {
    if constexpr (C == Cell::kLstm) return fastrnn::cuda::lstm_bwd_persistent_mma_kernel<S>;
    else if constexpr (C == Cell::kGru) return fastrnn::cuda::gru_bwd_persistent_mma_kernel<S>;
    else return fastrnn::cuda::rnn_bwd_persistent_mma_kernel<S>;
  } else {
    if constexpr (C == Cell::kLstm) return fastrnn::cuda::lstm_bwd_persistent_kernel<S>;
    else if constexpr (C == Cell::kGru) return fastrnn::cuda::gru_bwd_persistent_kernel<S>;
    else return fastrnn::cuda::rnn_bwd_persistent_kernel<S>;
  }
}

template <class S, Cell C, bool kMma>
using BwdTraitsOf = std::conditional_t<kMma, fastrnn::cuda::BwdPersistentMmaTraitsFor<S, C>,
                                       fastrnn::cuda::BwdPersistentTraitsFor<S, C>>;

// One direction of a backward case (as FwdDir): inputs, what the kernel writes, kernel arguments.
template <class S, Cell C>
struct BwdDir {
  using A = acc_t<S>;
  std::vector<S> w_hh, hx, output, go, dg, dph_n;
  std::vector<A> ws, c_prev, dc, carry;
  std::vector<fastrnn::cuda::BwdSeqStep> steps;
  fastrnn::cuda::BwdSeqParams p;

  template <class IO>
  void load(const emu_io::Arrays& in, const std::string& sfx, bool reverse, int units) {
    constexpr int G = gates_of(C);
    const int64_t H = in.scalar<int64_t>("H");
    const bool dense = in.has("go_dense") && in.scalar<int>("go_dense") != 0;
    const std::vector<int64_t> bsz = in.get<int64_t>("batch_sizes");
    const int64_t T = static_cast<int64_t>(bsz.size()), B = T > 0 ? bsz[0] : 0;
    int64_t N = 0;
    for (int64_t b : bsz) N += b;
    std::vector<int64_t> offs(static_cast<size_t>(T) + 1, 0);
    for (int64_t t = 0; t < T; ++t) offs[t + 1] = offs[t] + bsz[t];

    w_hh = to_storage<S>(in.get<IO>("w_hh" + sfx)), hx = to_storage<S>(in.get<IO>("hx" + sfx));
    output = to_storage<S>(in.get<IO>("out" + sfx));
    go = to_storage<S>(in.get<IO>("grad_out" + sfx));
    const int64_t ws_width = C == Cell::kLstm ? 5 * H : C == Cell::kGru ? 4 * H : 0;
    if (ws_width > 0)
      for (IO x : in.get<IO>("ws" + sfx)) ws.push_back(static_cast<A>(x));
    for (IO x : in.get<IO>("grad_hy" + sfx)) carry.push_back(static_cast<A>(x));
    if (C == Cell::kLstm) {
      for (IO x : in.get<IO>("grad_cy" + sfx)) dc.push_back(static_cast<A>(x));
      // c_prev (transcribed from the ATen driver's gather_prev): row b of step t started from the c of the forward's
      // previous step (rows b < rows_with_prev) or from cx.
      const std::vector<IO> cx = in.get<IO>("cx" + sfx);
      c_prev.assign(static_cast<size_t>(N * H), A(0));
      for (int64_t t = 0; t < T; ++t) {
        const int64_t prev = reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
        const int64_t n_prev = prev >= 0 ? std::min(bsz[t], bsz[prev]) : 0;
        for (int64_t b = 0; b < bsz[t]; ++b)
          for (int64_t j = 0; j < H; ++j)
            c_prev[(offs[t] + b) * H + j] =
                b < n_prev ? ws[(offs[prev] + b) * ws_width + 4 * H + j] : static_cast<A>(cx[b * H + j]);
      }
    }
    dg.assign(static_cast<size_t>(N * G * H), from_float<S>(std::numeric_limits<A>::quiet_NaN()));
    dph_n.assign(C == Cell::kGru ? static_cast<size_t>(N * H) : 0, from_float<S>(std::numeric_limits<A>::quiet_NaN()));
    steps = fastrnn::cuda::bwd_seq_steps(bsz, reverse, !dense, dense ? B * H : H);

    p.dg = dg.data();
    p.dph_n = dph_n.empty() ? nullptr : dph_n.data();
    p.w_hh = w_hh.data();
    p.grad_out = go.data();
    p.ws = ws.empty() ? nullptr : ws.data();
    p.c_prev = c_prev.empty() ? nullptr : c_prev.data();
    p.dc_state = dc.empty() ? nullptr : dc.data();
    p.out = output.data();
    p.h_init = hx.data();
    p.carry = carry.data();
    p.steps = steps.data();
    p.T = T;
    p.H = H;
    p.ld_grad_out = H;
    p.units = units;
    p.relu = in.scalar<int>("relu");
  }

  template <class IO>
  void put(emu_io::Arrays& out, const std::string& sfx) const {
    constexpr int G = gates_of(C);
    const int64_t H = p.H, B = static_cast<int64_t>(carry.size()) / (H > 0 ? H : 1);
    const int64_t N = static_cast<int64_t>(dg.size()) / (G * H > 0 ? G * H : 1);
    out.put("dg" + sfx, to_io<IO>(dg), {N, G * H});
    if (C == Cell::kGru) out.put("dph_n" + sfx, to_io<IO>(dph_n), {N, H});
    out.put("grad_hx" + sfx, to_io<IO>(carry), {B, H});
    if (C == Cell::kLstm) out.put("grad_cx" + sfx, to_io<IO>(dc), {B, H});
  }
};

template <class S, class IO, Cell C, bool kMma>
void backward(const emu_io::Arrays& in, emu_io::Arrays& out) {
  using Tr = BwdTraitsOf<S, C, kMma>;
  const int64_t H = in.scalar<int64_t>("H");
  const bool reverse = in.scalar<int>("reverse") != 0;
  const int units = in.scalar<int>("units"), D = directions_of(in);
  const int64_t T = static_cast<int64_t>(in.get<int64_t>("batch_sizes").size());
  std::vector<BwdDir<S, C>> dirs(static_cast<size_t>(D));
  fastrnn::cuda::BwdSeqLaunch a;
  for (int d = 0; d < D; ++d) {
    dirs[d].template load<IO>(in, d == 0 ? "" : "_r", reverse != (d == 1), units);
    a.dir[d] = dirs[d].p;
  }

  ::cuda_emu::device().num_sms = static_cast<unsigned>(in.scalar<int64_t>("num_sms"));
  const cudaError_t err =
      T > 0 && H > 0
          ? ::cuda_emu::launch_cooperative(dim3(static_cast<unsigned>(Tr::grid(H, units)), static_cast<unsigned>(D)),
                                           dim3(Tr::kThreads), static_cast<size_t>(Tr::smem_bytes(units, H)),
                                           bwd_kernel_of<S, C, kMma>(), a)
          : cudaSuccess;
  out.put("err", std::vector<int64_t>{static_cast<int64_t>(err)});
  for (int d = 0; d < D; ++d) dirs[d].template put<IO>(out, d == 0 ? "" : "_r");
}

template <class S, class IO, bool kMma>
void backward_cell(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("cell")) {
    case 0: return backward<S, IO, Cell::kLstm, kMma>(in, out);
    case 1: return backward<S, IO, Cell::kGru, kMma>(in, out);
    case 2: return backward<S, IO, Cell::kRnn, kMma>(in, out);
  }
  throw std::runtime_error("cell must be 0 (LSTM), 1 (GRU) or 2 (RNN)");
}

bool mma_of(const emu_io::Arrays& in) { return in.has("mma") && in.scalar<int>("mma") != 0; }

template <class S, class IO>
void backward_mma_or_fma(const emu_io::Arrays& in, emu_io::Arrays& out) {
  return mma_of(in) ? backward_cell<S, IO, true>(in, out) : backward_cell<S, IO, false>(in, out);
}

void backward_any(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("storage")) {
    case 0: return backward_mma_or_fma<float, float>(in, out);
    case 1:
      if (mma_of(in)) throw std::runtime_error("float64 has no tensor-core backward (mma must be 0)");
      return backward_cell<double, double, false>(in, out);
    case 2: return backward_mma_or_fma<__half, float>(in, out);
    case 3: return backward_mma_or_fma<__nv_bfloat16, float>(in, out);
  }
  throw std::runtime_error("storage must be 0 (float32), 1 (float64), 2 (float16) or 3 (bfloat16)");
}

template <class S, Cell C>
void bplan_for(const emu_io::Arrays& in, emu_io::Arrays& out) {
  using Fma = fastrnn::cuda::BwdPersistentTraitsFor<S, C>;
  using Mma = fastrnn::cuda::BwdPersistentMmaTraitsFor<S, C>;
  const int64_t H = in.scalar<int64_t>("H");
  ::cuda_emu::device().num_sms = static_cast<unsigned>(in.scalar<int64_t>("num_sms"));
  auto occupancy = [&](int threads, int64_t smem) {
    return static_cast<int>(::cuda_emu::occupancy_max_active_blocks_per_sm(threads, static_cast<size_t>(smem)));
  };
  const fastrnn::cuda::BwdKernelChoice c = fastrnn::cuda::choose_bwd_kernel(
      H, ::cuda_emu::device().num_sms, mma_of(in) && !std::is_same_v<S, double>, Mma::kMinUnits,
      [&](int units) { return occupancy(Mma::kThreads, Mma::smem_bytes(units, H)); },
      [&](int units) { return occupancy(Fma::kThreads, Fma::smem_bytes(units, H)); }, directions_of(in));
  const int u = c.units;
  out.put("units", std::vector<int64_t>{u});
  out.put("mma", std::vector<int64_t>{c.mma ? 1 : 0});
  out.put("grid", std::vector<int64_t>{u > 0 ? Fma::grid(H, u) : 0});
  out.put("smem", std::vector<int64_t>{u == 0 ? 0 : c.mma ? Mma::smem_bytes(u, H) : Fma::smem_bytes(u, H)});
}

template <class S>
void bplan_cell(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("cell")) {
    case 0: return bplan_for<S, Cell::kLstm>(in, out);
    case 1: return bplan_for<S, Cell::kGru>(in, out);
    case 2: return bplan_for<S, Cell::kRnn>(in, out);
  }
  throw std::runtime_error("cell must be 0 (LSTM), 1 (GRU) or 2 (RNN)");
}

void bplan(const emu_io::Arrays& in, emu_io::Arrays& out) {
  switch (in.scalar<int>("storage")) {
    case 0: return bplan_cell<float>(in, out);
    case 1: return bplan_cell<double>(in, out);
    case 2: return bplan_cell<__half>(in, out);
    case 3: return bplan_cell<__nv_bfloat16>(in, out);
  }
  throw std::runtime_error("storage must be 0 (float32), 1 (float64), 2 (float16) or 3 (bfloat16)");
}

// The backward kernel's chunk plans (BwdPersistentTraits::chunk_plan; independent of the cell and dtype) for every
// unit count and every row count of a chunk: arrays over (units = 1, 2, .., 32) x (rows = 1 .. chunk_rows).
void bchunk(const emu_io::Arrays&, emu_io::Arrays& out) {
  using Tr = fastrnn::cuda::BwdPersistentTraitsFor<float, Cell::kLstm>;
  std::vector<int64_t> units, rows, ks, rg, slots, tk, ds;
  for (int u = 1; u <= Tr::kMaxUnits; u *= 2)
    for (int r = 1; r <= Tr::chunk_rows(u); ++r) {
      const auto c = Tr::chunk_plan(r, u);
      units.push_back(u), rows.push_back(r), ks.push_back(c.ks), rg.push_back(c.rg), slots.push_back(c.slots);
      tk.push_back(c.tk), ds.push_back(c.ds);
    }
  out.put("units", units), out.put("rows", rows), out.put("ks", ks), out.put("rg", rg), out.put("slots", slots);
  out.put("tk", tk), out.put("ds", ds);
  out.put("threads", std::vector<int64_t>{Tr::kThreads});
  out.put("room", std::vector<int64_t>{Tr::kDStride});  // Ds elements per chunk row
}

void batch(const emu_io::Arrays& in, emu_io::Arrays& out) {
  emu_io::run_batch(in, out, [](const emu_io::Arrays& sub, emu_io::Arrays& sub_out) {
    if (sub.has("backward")) backward_any(sub, sub_out);
    else forward_any(sub, sub_out);
  });
}

}  // namespace

// The tensor-core kernels' K passes (MmaStaging::tile_words) for every chunk of 8 .. kMaxCols staged rows:
// arrays over rows, for TF32 (4-byte operands) and the 16-bit types; plus the staging buffer's size in words.
void mtile(const emu_io::Arrays&, emu_io::Arrays& out) {
  using T32 = fastrnn::cuda::MmaStaging<float>;
  using T16 = fastrnn::cuda::MmaStaging<__nv_bfloat16>;
  std::vector<int64_t> rows, words32, stride32, words16, stride16;
  for (int r = 8; r <= T32::kMaxCols; r += 8) {
    rows.push_back(r);
    words32.push_back(T32::tile_words(r));
    stride32.push_back(T32::h_stride_words(r));
    words16.push_back(T16::tile_words(r));
    stride16.push_back(T16::h_stride_words(r));
  }
  out.put("rows", rows);
  out.put("tile_words_tf32", words32);
  out.put("stride_tf32", stride32);
  out.put("tile_words_16", words16);
  out.put("stride_16", stride16);
  out.put("buffer_words", std::vector<int64_t>{int64_t(T32::kMaxCols) * T32::kHStrideWords});
  out.put("k_per_word", std::vector<int64_t>{1, 2});  // TF32: one k per word; 16-bit: a pair
}

int main(int argc, char** argv) {
  return emu_io::run_cases(argc, argv, {{"forward", forward_any}, {"plan", plan}, {"backward", backward_any},
                                        {"bplan", bplan},
                                        {"bchunk", bchunk}, {"mtile", mtile}, {"batch", batch}});
}
