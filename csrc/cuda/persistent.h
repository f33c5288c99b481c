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

// float32 on TF32 tensor cores exactly when torch.nn's cuDNN RNN would use them (torch.backends.cudnn.allow_tf32,
// True by default; read per call).
inline bool allow_tf32(DType dt) {
  return dt == DType::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::RNN);
}

inline PersistentConfig fwd_persistent_config(DType d, Cell cell, int64_t H, int64_t K, bool tf32) {
  switch (d) {
    case DType::kFloat: return fwd_persistent_config<DType::kFloat>(cell, H, K, tf32);
    case DType::kDouble: return fwd_persistent_config<DType::kDouble>(cell, H, K, tf32);
    case DType::kHalf: return fwd_persistent_config<DType::kHalf>(cell, H, K, tf32);
    case DType::kBFloat16: return fwd_persistent_config<DType::kBFloat16>(cell, H, K, tf32);
  }
  return PersistentConfig{};
}
inline cudaError_t launch_fwd_persistent(DType d, Cell cell, const FwdSeqParams& p, const PersistentConfig& c,
                                         cudaStream_t stream) {
  switch (d) {
    case DType::kFloat: return launch_fwd_persistent<DType::kFloat>(cell, p, c, stream);
    case DType::kDouble: return launch_fwd_persistent<DType::kDouble>(cell, p, c, stream);
    case DType::kHalf: return launch_fwd_persistent<DType::kHalf>(cell, p, c, stream);
    case DType::kBFloat16: return launch_fwd_persistent<DType::kBFloat16>(cell, p, c, stream);
  }
  return cudaErrorInvalidValue;
}

// Runs the whole forward of one direction through the persistent kernel and returns true, or returns false when
// the step kernels must run it instead (auto mode only; a forced persistent path raises instead). gx [N, G*H],
// out [N, H] (rows of every step; also the state the next step reads), h0 [B, H]; c_state (LSTM) [B, H] and ws
// (train) in the accumulation dtype, updated/written as the step path does.
inline bool run_fwd_persistent(const char* op, DType dt, Cell cell, const SeqLayout& L, bool reverse, int64_t H,
                               const at::Tensor& gx, const std::optional<at::Tensor>& b_hh, const at::Tensor& w_hh,
                               const at::Tensor& out, const at::Tensor& h0, void* c_state, void* ws, int relu,
                               bool projection) {
  const Algo algo = requested_algo();
  if (algo == Algo::kStep || L.T == 0 || L.B == 0 || H == 0) return false;
  const bool forced = algo == Algo::kPersistent;
  if (projection) {
    TORCH_CHECK_VALUE(!forced, op, ": FASTRNN_CUDA_ALGO=persistent, but the persistent kernel does not serve an "
                      "LSTM projection (proj_size > 0); unset FASTRNN_CUDA_ALGO or set it to step");
    return false;
  }
  const PersistentConfig config = fwd_persistent_config(dt, cell, H, h0.size(1), allow_tf32(dt));
  if (config.units == 0) {
    TORCH_CHECK(!forced, op, ": FASTRNN_CUDA_ALGO=persistent, but the persistent kernel cannot run hidden_size ",
                H, " on this device (no cooperative launch, or no grid of it fits the device at once); unset "
                "FASTRNN_CUDA_ALGO or set it to step");
    return false;
  }
  const std::vector<FwdSeqStep> steps = fwd_seq_steps(L.batch_sizes, reverse);
  const at::Tensor table =
      at::from_blob(const_cast<FwdSeqStep*>(steps.data()), {static_cast<int64_t>(steps.size() * 4)}, at::kLong)
          .to(gx.device(), /*non_blocking=*/false, /*copy=*/true);
  FwdSeqParams p;
  p.gx = gx.data_ptr();
  p.b_hh = ptr_or_null(b_hh);
  p.w_hh = w_hh.data_ptr();
  p.h_init = h0.data_ptr();
  p.c_state = c_state;
  p.out = out.data_ptr();
  p.ws = ws;
  p.steps = static_cast<const FwdSeqStep*>(table.data_ptr());
  p.T = L.T;
  p.H = H;
  p.K = h0.size(1);
  p.ld_out = out.size(1);
  p.units = config.units;
  p.relu = relu;
  const cudaError_t err = launch_fwd_persistent(dt, cell, p, config, at::cuda::getCurrentCUDAStream());
  if (err == cudaSuccess) return true;
  (void)cudaGetLastError();  // clear the refused launch's error before the step kernels run
  TORCH_CHECK(!forced, op, ": FASTRNN_CUDA_ALGO=persistent, but the cooperative launch of ", config.grid,
              " blocks was refused: ", cudaGetErrorString(err));
  return false;
}

inline PersistentConfig bwd_persistent_config(DType d, Cell cell, int64_t H, bool tf32) {
  switch (d) {
    case DType::kFloat: return bwd_persistent_config<DType::kFloat>(cell, H, tf32);
    case DType::kDouble: return bwd_persistent_config<DType::kDouble>(cell, H, tf32);
    case DType::kHalf: return bwd_persistent_config<DType::kHalf>(cell, H, tf32);
    case DType::kBFloat16: return bwd_persistent_config<DType::kBFloat16>(cell, H, tf32);
  }
  return PersistentConfig{};
}
inline cudaError_t launch_bwd_persistent(DType d, Cell cell, const BwdSeqParams& p, const PersistentConfig& c,
                                         cudaStream_t stream) {
  switch (d) {
    case DType::kFloat: return launch_bwd_persistent<DType::kFloat>(cell, p, c, stream);
    case DType::kDouble: return launch_bwd_persistent<DType::kDouble>(cell, p, c, stream);
    case DType::kHalf: return launch_bwd_persistent<DType::kHalf>(cell, p, c, stream);
    case DType::kBFloat16: return launch_bwd_persistent<DType::kBFloat16>(cell, p, c, stream);
  }
  return cudaErrorInvalidValue;
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

// Runs the whole backward recurrence of one direction through the persistent kernel and returns true, or returns
// false when the step kernels must run it (auto mode only; a forced persistent path raises instead). carry [B, H] in
// the accumulation dtype holds grad_hy and, after a true return, grad_hx (the step path's carry + dG @ W_hh of each
// sequence's first step). go: grad_output read in place.
inline bool run_bwd_persistent(const char* op, DType dt, Cell cell, const SeqLayout& L, bool reverse, int64_t H,
                               const StepRows& go, const at::Tensor& w_hh, const at::Tensor& carry,
                               const BwdPersistentArgs& a, bool projection) {
  const Algo algo = requested_algo();
  if (algo == Algo::kStep || L.T == 0 || L.B == 0 || H == 0) return false;
  const bool forced = algo == Algo::kPersistent;
  if (projection) {
    TORCH_CHECK_VALUE(!forced, op, ": FASTRNN_CUDA_ALGO=persistent, but the persistent kernel does not serve an "
                      "LSTM projection (proj_size > 0); unset FASTRNN_CUDA_ALGO or set it to step");
    return false;
  }
  // float32: TF32 tensor cores exactly when the forward would use them (torch.backends.cudnn.allow_tf32).
  const PersistentConfig config = bwd_persistent_config(dt, cell, H, allow_tf32(dt));
  if (config.units == 0) {
    TORCH_CHECK(!forced, op, ": FASTRNN_CUDA_ALGO=persistent, but the persistent backward kernel cannot run "
                "hidden_size ", H, " on this device (no cooperative launch, or no grid of it fits the device at once); "
                "unset FASTRNN_CUDA_ALGO or set it to step");
    return false;
  }
  static_assert(sizeof(BwdSeqStep) == 8 * sizeof(int64_t), "the step table travels as an int64 tensor");
  const std::vector<BwdSeqStep> steps = bwd_seq_steps(L.batch_sizes, reverse, go.packed, go.t.stride(0));
  const at::Tensor table =
      at::from_blob(const_cast<BwdSeqStep*>(steps.data()), {static_cast<int64_t>(steps.size() * 8)}, at::kLong)
          .to(w_hh.device(), /*non_blocking=*/false, /*copy=*/true);
  BwdSeqParams p;
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
  p.steps = static_cast<const BwdSeqStep*>(table.data_ptr());
  p.T = L.T;
  p.H = H;
  p.ld_grad_out = go.ld;
  p.units = config.units;
  p.relu = a.relu;
  const cudaError_t err = launch_bwd_persistent(dt, cell, p, config, at::cuda::getCurrentCUDAStream());
  if (err == cudaSuccess) return true;
  (void)cudaGetLastError();  // clear the refused launch's error before the step kernels run
  TORCH_CHECK(!forced, op, ": FASTRNN_CUDA_ALGO=persistent, but the cooperative launch of ", config.grid,
              " blocks was refused: ", cudaGetErrorString(err));
  return false;
}

}  // namespace fastrnn::cuda
