// Choice between the per-step kernels and the persistent kernels for a forward or a backward pass, and the persistent
// runs themselves (host code of the ATen drivers lstm_cuda.cpp / gru_cuda.cpp / rnn_cuda.cpp). The backward's
// persistent kernels (bwd_persistent_kernel.cuh) have the same precision and follow the same FASTRNN_CUDA_ALGO rules
// (tensor cores where their shared memory fits, else the FMA kernel).
//
// FASTRNN_CUDA_ALGO (read at every call, for tests and benchmarks):
// Precision of the persistent kernel (fwd_persistent_kernel.cuh): bf16/fp16 on tensor cores (mma.sync m16n8k16, fp32
// accumulation); float32 on TF32 tensor cores when torch.backends.cudnn.allow_tf32 is True (torch's default), exact
// fp32 FMA when it is False; float64 FMA.
//
//   unset or "auto"  the persistent kernel where it serves the call (no LSTM projection, the device supports
//                    cooperative launches, some unit count gives a co-resident grid: persistent_plan.h) and the
//                    cooperative launch is accepted; otherwise, and whenever the launch is refused (MPS, MIG, a busy
//                    device), the step kernels. Never a hang: a cooperative launch either starts with every block
//                    resident or fails at once.
//   "step"           always the step kernels.
//   "persistent"     the persistent kernel or a clear error saying why it cannot serve the call.
#pragma once

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_common.h"
#include "persistent_plan.h"

namespace fastrnn::cuda {

static_assert(sizeof(FwdSeqStep) == 4 * sizeof(int64_t), "the step table travels as an int64 tensor");

enum class Algo { kAuto, kStep, kPersistent };

inline Algo requested_algo() {
  const char* v = std::getenv("FASTRNN_CUDA_ALGO");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Algo::kAuto;
  if (std::strcmp(v, "step") == 0) return Algo::kStep;
  if (std::strcmp(v, "persistent") == 0) return Algo::kPersistent;
  TORCH_CHECK_VALUE(false, "FASTRNN_CUDA_ALGO must be auto, step or persistent, got '", v, "'");
  return Algo::kAuto;
}

// FASTRNN_CUDA_BIDIR (read at every call): the two directions of a bidirectional layer (the *_bidir_* ops)
//   unset or "auto"  in one persistent launch (each direction on its own blocks, both at once) where a grid of both
//                    is co-resident; otherwise each direction on its own path, one after the other
//   "sequential"     always one after the other (A/B measurement)
//   "concurrent"     in one launch, or a clear error saying why not
enum class Bidir { kAuto, kSequential, kConcurrent };

inline Bidir requested_bidir() {
  const char* v = std::getenv("FASTRNN_CUDA_BIDIR");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Bidir::kAuto;
  if (std::strcmp(v, "sequential") == 0) return Bidir::kSequential;
  if (std::strcmp(v, "concurrent") == 0) return Bidir::kConcurrent;
  TORCH_CHECK_VALUE(false, "FASTRNN_CUDA_BIDIR must be auto, sequential or concurrent, got '", v, "'");
  return Bidir::kAuto;
}

// float32 on TF32 tensor cores exactly when torch.nn's cuDNN RNN would use them (torch.backends.cudnn.allow_tf32,
// True by default; read per call).
inline bool allow_tf32(DType dt) {
  return dt == DType::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::RNN);
}

inline PersistentConfig fwd_persistent_config(DType d, Cell cell, int64_t H, int64_t K, bool tf32, int dirs) {
  switch (d) {
    case DType::kFloat: return fwd_persistent_config<DType::kFloat>(cell, H, K, tf32, dirs);
    case DType::kDouble: return fwd_persistent_config<DType::kDouble>(cell, H, K, tf32, dirs);
    case DType::kHalf: return fwd_persistent_config<DType::kHalf>(cell, H, K, tf32, dirs);
    case DType::kBFloat16: return fwd_persistent_config<DType::kBFloat16>(cell, H, K, tf32, dirs);
  }
  return PersistentConfig{};
}
inline cudaError_t launch_fwd_persistent(DType d, Cell cell, const FwdSeqLaunch& a, const PersistentConfig& c,
                                         cudaStream_t stream) {
  switch (d) {
    case DType::kFloat: return launch_fwd_persistent<DType::kFloat>(cell, a, c, stream);
    case DType::kDouble: return launch_fwd_persistent<DType::kDouble>(cell, a, c, stream);
    case DType::kHalf: return launch_fwd_persistent<DType::kHalf>(cell, a, c, stream);
    case DType::kBFloat16: return launch_fwd_persistent<DType::kBFloat16>(cell, a, c, stream);
  }
  return cudaErrorInvalidValue;
}
inline PersistentConfig bwd_persistent_config(DType d, Cell cell, int64_t H, bool tf32, int dirs) {
  switch (d) {
    case DType::kFloat: return bwd_persistent_config<DType::kFloat>(cell, H, tf32, dirs);
    case DType::kDouble: return bwd_persistent_config<DType::kDouble>(cell, H, tf32, dirs);
    case DType::kHalf: return bwd_persistent_config<DType::kHalf>(cell, H, tf32, dirs);
    case DType::kBFloat16: return bwd_persistent_config<DType::kBFloat16>(cell, H, tf32, dirs);
  }
  return PersistentConfig{};
}
inline cudaError_t launch_bwd_persistent(DType d, Cell cell, const BwdSeqLaunch& a, const PersistentConfig& c,
                                         cudaStream_t stream) {
  switch (d) {
    case DType::kFloat: return launch_bwd_persistent<DType::kFloat>(cell, a, c, stream);
    case DType::kDouble: return launch_bwd_persistent<DType::kDouble>(cell, a, c, stream);
    case DType::kHalf: return launch_bwd_persistent<DType::kHalf>(cell, a, c, stream);
    case DType::kBFloat16: return launch_bwd_persistent<DType::kBFloat16>(cell, a, c, stream);
  }
  return cudaErrorInvalidValue;
}

// One direction's persistent run: the kernel's arguments (units and the step table's device pointer are set when it is
// launched) and its step table on the host (params.h FwdSeqStep / BwdSeqStep rows as int64 words), copied to `device`
// only by a launch that goes ahead (launch_persistent), so a call the step kernels take pays no copy. `none` when the
// persistent kernel does not serve it at all (the step path runs it): an empty sequence (nothing to launch), or `why`
// (FASTRNN_CUDA_ALGO=step, an LSTM projection).
template <class Params>
struct PersistentRun {
  bool none = true;
  const char* why = nullptr;
  Params p;
  std::vector<int64_t> steps;
  at::Device device = at::kCPU;
};

// A step table's rows as the int64 words the kernel reads.
template <class Step>
std::vector<int64_t> step_words(const std::vector<Step>& steps) {
  static_assert(sizeof(Step) % sizeof(int64_t) == 0, "the step table travels as an int64 tensor");
  const auto* w = reinterpret_cast<const int64_t*>(steps.data());
  return std::vector<int64_t>(w, w + steps.size() * (sizeof(Step) / sizeof(int64_t)));
}
using FwdPersistentRun = PersistentRun<FwdSeqParams>;
using BwdPersistentRun = PersistentRun<BwdSeqParams>;

// Whether the persistent kernel serves a direction's call; if not, r stays `none` with the reason in r.why (none for
// an empty sequence). A forced persistent path (FASTRNN_CUDA_ALGO=persistent) raises for an LSTM projection instead.
template <class Run>
bool serves_persistent(Run& r, const char* op, const SeqLayout& L, int64_t H, bool projection) {
  const Algo algo = requested_algo();
  if (L.T == 0 || L.B == 0 || H == 0) return false;
  if (algo == Algo::kStep) {
    r.why = "FASTRNN_CUDA_ALGO=step";
    return false;
  }
  if (projection) {
    TORCH_CHECK_VALUE(algo != Algo::kPersistent, op, ": FASTRNN_CUDA_ALGO=persistent, but the persistent kernel does "
                      "not serve an LSTM projection (proj_size > 0); unset FASTRNN_CUDA_ALGO or set it to step");
    r.why = "an LSTM projection (proj_size > 0)";
    return false;
  }
  return true;
}

// The forward's run of one direction. gx [N, G*H], out [N, H] (rows of every step; also the state the next step
// reads), h0 [B, H]; c_state (LSTM) [B, H] and ws (train) in the accumulation dtype, updated/written as the step path
// does.
inline FwdPersistentRun fwd_persistent_run(const char* op, const SeqLayout& L, bool reverse, int64_t H,
                                           const at::Tensor& gx, const std::optional<at::Tensor>& b_hh,
                                           const at::Tensor& w_hh, const at::Tensor& out, const at::Tensor& h0,
                                           void* c_state, void* ws, int relu, bool projection) {
  FwdPersistentRun r;
  if (!serves_persistent(r, op, L, H, projection)) return r;
  r.steps = step_words(fwd_seq_steps(L.batch_sizes, reverse));
  r.device = gx.device();
  FwdSeqParams& p = r.p;
  p.gx = gx.data_ptr();
  p.b_hh = ptr_or_null(b_hh);
  p.w_hh = w_hh.data_ptr();
  p.h_init = h0.data_ptr();
  p.c_state = c_state;
  p.out = out.data_ptr();
  p.ws = ws;
  p.T = L.T;
  p.H = H;
  p.K = h0.size(1);
  p.ld_out = out.size(1);
  p.relu = relu;
  r.none = false;
  return r;
}

// The pointers of one persistent backward run (params.h BwdSeqParams; the caller's tensors, already contiguous).
struct BwdPersistentArgs {
  void* dg = nullptr;             // S [N, G*H] (GRU: dG_x)
  void* dph_n = nullptr;          // S [N, H] (GRU)
  const void* ws = nullptr;       // A [N, 5H | 4H] (LSTM, GRU)
  const void* c_prev = nullptr;   // A [N, H] (LSTM)
  void* dc_state = nullptr;       // A [B, H] (LSTM): grad_cy in, grad_cx out
  const void* out = nullptr;      // S [N, H] (GRU, RNN): the forward's output rows
  const void* h_init = nullptr;   // S [B, H] (GRU): hx
  int relu = 0;
};

// The backward's run of one direction. go: grad_output read in place; carry [B, H] in the accumulation dtype holds
// grad_hy and, after the launch, grad_hx (the step path's carry + dG @ W_hh of each sequence's first step).
inline BwdPersistentRun bwd_persistent_run(const char* op, const SeqLayout& L, bool reverse, int64_t H,
                                           const StepRows& go, const at::Tensor& w_hh, const at::Tensor& carry,
                                           const BwdPersistentArgs& a, bool projection) {
  BwdPersistentRun r;
  if (!serves_persistent(r, op, L, H, projection)) return r;
  static_assert(sizeof(BwdSeqStep) == 8 * sizeof(int64_t), "the step table travels as an int64 tensor");
  r.steps = step_words(bwd_seq_steps(L.batch_sizes, reverse, go.packed, go.t.stride(0)));
  r.device = w_hh.device();
  BwdSeqParams& p = r.p;
  p.dg = a.dg;
  p.dph_n = a.dph_n;
  p.w_hh = w_hh.data_ptr();
  p.grad_out = go.t.const_data_ptr();
  p.ws = a.ws;
  p.c_prev = a.c_prev;
  p.dc_state = a.dc_state;
  p.out = a.out;
  p.h_init = a.h_init;
  p.carry = carry.data_ptr();
  p.T = L.T;
  p.H = H;
  p.ld_grad_out = go.ld;
  p.relu = a.relu;
  r.none = false;
  return r;
}

// Plans and launches one direction (n = 1) or both directions of a layer at once (n = 2), the kernel's params and
// config from the directions' runs; true when the launch was accepted. One direction: false when the step kernels
// must run it instead (auto mode only; FASTRNN_CUDA_ALGO=persistent raises instead). Both: false whenever the pair
// cannot run in one launch (a direction the persistent kernel does not serve, no co-resident grid of both, a refused
// launch, FASTRNN_CUDA_BIDIR=sequential), never an error except with FASTRNN_CUDA_BIDIR=concurrent: the caller then
// runs each direction on its own.
template <class Launch, class Run, class Config, class LaunchFn>
bool launch_persistent(const char* op, const char* what, Run* runs, int n, Config&& config_of, LaunchFn&& launch) {
  const bool forced = n == 1 ? requested_algo() == Algo::kPersistent : requested_bidir() == Bidir::kConcurrent;
  const char* knob = n == 1 ? "FASTRNN_CUDA_ALGO=persistent" : "FASTRNN_CUDA_BIDIR=concurrent";
  for (int d = 0; d < n; ++d) {
    if (!runs[d].none) continue;
    TORCH_CHECK_VALUE(!(forced && n == 2 && runs[d].why != nullptr), op, ": ", knob, ", but the persistent ", what,
                      " kernel does not serve this call (", runs[d].why, "); unset FASTRNN_CUDA_BIDIR");
    return false;
  }
  if (n == 2) {
    if (requested_bidir() == Bidir::kSequential) return false;
    // Both directions step in lockstep (one grid barrier per step): the same steps and shape, or no joint launch.
    TORCH_CHECK(runs[0].p.T == runs[1].p.T && runs[0].p.H == runs[1].p.H, op, ": the two directions of a "
                "bidirectional layer must have the same sequence length and hidden size");
  }
  const PersistentConfig config = config_of(n);
  if (config.units == 0) {
    TORCH_CHECK(!forced, op, ": ", knob, ", but the persistent ", what, " kernel cannot run hidden_size ",
                runs[0].p.H, n == 2 ? " for both directions at once" : "", " on this device (no cooperative "
                "launch, or no grid of it fits the device at once); unset the variable");
    return false;
  }
  // The step tables on the device. Freed when this returns, as the caching allocator frees memory in use on the
  // current stream: a later allocation reuses it only after the launch on that stream.
  at::Tensor tables[2];
  Launch a;
  for (int d = 0; d < n; ++d) {
    std::vector<int64_t>& steps = runs[d].steps;
    tables[d] = at::from_blob(steps.data(), {static_cast<int64_t>(steps.size())}, at::kLong)
                    .to(runs[d].device, /*non_blocking=*/false, /*copy=*/true);
    a.dir[d] = runs[d].p;
    a.dir[d].units = config.units;
    a.dir[d].steps = static_cast<decltype(a.dir[d].steps)>(tables[d].data_ptr());
  }
  const cudaError_t err = launch(a, config);
  if (err == cudaSuccess) return true;
  (void)cudaGetLastError();  // clear the refused launch's error before another path runs
  TORCH_CHECK(!forced, op, ": ", knob, ", but the cooperative launch of ", config.grid * n, " blocks was refused: ",
              cudaGetErrorString(err));
  return false;
}

inline bool run_fwd_persistent(const char* op, DType dt, Cell cell, FwdPersistentRun* runs, int n) {
  const int64_t H = runs[0].p.H, K = runs[0].p.K;
  return launch_persistent<FwdSeqLaunch>(
      op, "forward", runs, n, [&](int dirs) { return fwd_persistent_config(dt, cell, H, K, allow_tf32(dt), dirs); },
      [&](const FwdSeqLaunch& a, const PersistentConfig& c) {
        return launch_fwd_persistent(dt, cell, a, c, at::cuda::getCurrentCUDAStream());
      });
}

// float32: TF32 tensor cores exactly when the forward would use them (torch.backends.cudnn.allow_tf32).
inline bool run_bwd_persistent(const char* op, DType dt, Cell cell, BwdPersistentRun* runs, int n) {
  const int64_t H = runs[0].p.H;
  return launch_persistent<BwdSeqLaunch>(
      op, "backward", runs, n, [&](int dirs) { return bwd_persistent_config(dt, cell, H, allow_tf32(dt), dirs); },
      [&](const BwdSeqLaunch& a, const PersistentConfig& c) {
        return launch_bwd_persistent(dt, cell, a, c, at::cuda::getCurrentCUDAStream());
      });
}

// What each cell's one-direction forward driver (lstm/gru/rnn_cuda.cpp) holds between its begin and its end, and how
// every cell sets it (begin_dir_fwd, after the cell's argument checks): the layout, the contiguous W_hh and b_hh, the
// output [..., state_size] and its rows, h0, and the x-side pre-activations of every step in one GEMM (no sequential
// dependency). The cell adds its own state and its PersistentRun.
struct DirFwd {
  SeqLayout L;
  int64_t H = 0;
  bool reverse = false;
  DType dt = DType::kFloat;
  at::Tensor input, w_hh, output, out, h0, gx;
  std::optional<at::Tensor> b_hh;
  FwdPersistentRun run;
};
inline void begin_dir_fwd(DirFwd& f, const char* op, const CellShape& s, const at::Tensor& input,
                          const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
                          const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                          const std::optional<at::Tensor>& b_hh, bool reverse) {
  f.L = make_layout(input, batch_sizes);
  f.H = s.hidden_size;
  f.reverse = reverse;
  f.dt = dtype_of(op, input.scalar_type());
  f.input = input;
  f.w_hh = w_hh.contiguous();
  f.b_hh = b_hh.has_value() ? std::optional<at::Tensor>(b_hh->contiguous()) : std::nullopt;
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = s.state_size;
  f.output = at::empty(out_sizes, input.options());
  f.out = rows2d(f.output);
  f.h0 = hx.contiguous();
  f.gx = input_gates(rows2d(input.contiguous()), w_ih, b_ih).contiguous();
}

// The backward's (begin_dir_bwd): the layout, then the cell's checks of its backward arguments against it (`check`),
// then the fields every cell sets alike: grad_output read in place (a transposed or sliced gradient too), the gate
// gradients' buffer of dg_width columns, and (with_carry) the carry in the accumulation dtype, grad_hy in and grad_hx
// out.
struct DirBwd {
  SeqLayout L;
  int64_t H = 0;
  bool reverse = false, has_bias = false;
  DType dt = DType::kFloat;
  at::Tensor input, grad_hy, hx, w_ih, w_hh, carry;
  std::optional<StepRows> go;
  GateGradBuffer dg;
  BwdPersistentRun run;
};
template <class Check>
void begin_dir_bwd(DirBwd& b, const char* op, const CellShape& s, const at::Tensor& grad_output,
                   const at::Tensor& grad_hy, const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                   const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, bool reverse, bool has_bias,
                   int64_t dg_width, bool with_carry, Check&& check) {
  b.L = make_layout(input, batch_sizes);
  b.H = s.hidden_size;
  check(b.L);
  b.reverse = reverse;
  b.has_bias = has_bias;
  b.dt = dtype_of(op, input.scalar_type());
  b.input = input;
  b.grad_hy = grad_hy;
  b.hx = hx;
  b.w_ih = w_ih;
  b.w_hh = w_hh.contiguous();
  b.go.emplace(grad_output, batch_sizes.has_value());
  b.dg = gate_grad_buffer(b.L.N, dg_width, input);
  if (with_carry)
    b.carry = grad_hy.to(input.options().dtype(acc_dtype(input.scalar_type())), false, /*copy=*/true).contiguous();
}

// A bidirectional layer's two directions (the *_bidir_* ops of lstm_cuda.cpp, gru_cuda.cpp, rnn_cuda.cpp): each
// direction's driver in two parts, begin (checks, buffers, its PersistentRun `run` and DType `dt`) already run into
// d[0] (forward in time) and d[1] (reverse), and end(d, done), which runs the direction's recurrence unless `done` and
// returns its results. Both recurrences in one launch where it fits (FASTRNN_CUDA_BIDIR), else one after the other;
// the results of both directions in a row.
template <class Dir, class End>
auto bidir_forward(const char* op, Cell cell, Dir (&d)[2], End&& end) {
  FwdPersistentRun runs[2] = {d[0].run, d[1].run};
  const bool joint = run_fwd_persistent(op, d[0].dt, cell, runs, 2);
  return std::tuple_cat(end(d[0], joint), end(d[1], joint));
}
// The backward's: as bidir_forward, except that the input's gradient (each direction's first result) is one, the
// sum of both directions' parts.
template <class Dir, class End>
auto bidir_backward(const char* op, Cell cell, Dir (&d)[2], End&& end) {
  BwdPersistentRun runs[2] = {d[0].run, d[1].run};
  const bool joint = run_bwd_persistent(op, d[0].dt, cell, runs, 2);
  auto f = end(d[0], joint);
  auto r = end(d[1], joint);
  std::get<0>(f).add_(std::get<0>(r));
  return std::tuple_cat(f, drop_first(r));
}

}  // namespace fastrnn::cuda
