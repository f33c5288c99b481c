// Arguments of the per-timestep pointwise kernels of the regularised cells (fastrnn::lstm_ext_* /
// gru_ext_*: layer_norm, zoneout, recurrent_dropout; ext_step_kernel.cuh). Plain structs of raw pointers
// and integers shared by the device code, the launchers (ext_launcher.cuh), the ATen drivers
// (lstm_ext_cuda.cpp, gru_ext_cuda.cpp) and the CUDA-emulation tests (tests/cuda_emu/ext_kernels_driver.cpp).
//
// Unlike the fused step kernels (params.h), these kernels do no matmul: per step the host computes the
// recurrent pre-activations a = (h_{t-1} * mask) @ W_hh^T with cuBLAS into a [bs, G*H] buffer, and one
// launch of one block per batch row does everything else of the step (LayerNorm statistics with block
// reductions, gates, cell, LN_c, zoneout, the state and workspace writes). Pointers are untyped; a kernel
// instantiated for storage type S reads/writes the ones marked S as S and those marked A as acc_t<S>.
// Row b of a per-step buffer is at base + b * (its row width) unless a stride is given.
//
// The op semantics and the workspace layout are the comment block of csrc/fastrnn.cpp ("lstm_ext_forward");
// the equations fastrnn/reference.py (lstm_ext_cell, gru_ext_cell).
#pragma once

#include <cstdint>

namespace fastrnn::cuda {

// Zoneout weights k of the previous state (h_t = k * h_{t-1} + (1 - k) * h~_t) as a kernel reads them:
// rows [bs, D] of the step (A, row stride D), or one element (the eval constant, read on the device so that
// the host never synchronises for it), or none.
struct ExtZoneout {
  const void* k = nullptr;  // A: the step's first row, or the one element; nullptr: no zoneout
  int scalar = 0;           // 1: k points at one element used for every row and unit
};

// LSTM forward, rows b < bs of one step. Without projection (proj == 0) the kernel ends the step: output,
// h state, masked state hm. With projection it writes r = o * tanh(LN_c(c~) or c~) to r_out and the host
// runs r @ W_hr^T followed by ext_mix_kernel (ExtMixParams) on the P units.
struct LstmExtFwdParams {
  const void* a = nullptr;        // A [bs, 4H]: W_hh (h_{t-1} * mask) of the step's rows
  const void* gx = nullptr;       // S [bs, 4H]: gates_x rows of the step
  const void* ln_hh_w = nullptr;  // S [4H] or nullptr (then ln_hh_b is nullptr too): LN over the 4H of a row
  const void* ln_hh_b = nullptr;  // S [4H]
  const void* ln_c_w = nullptr;   // S [H] or nullptr: LN of c~ before the tanh
  const void* ln_c_b = nullptr;   // S [H]
  ExtZoneout zh;                  // over the H units (no projection only)
  ExtZoneout zc;                  // over the H units of c
  const void* mask = nullptr;     // A [>= bs, H] or nullptr: recurrent mask, hm = h * mask (no projection)
  void* c_state = nullptr;        // A [>= bs, H]: c_{t-1} in, c_t out (after zoneout), rows < bs
  void* h_state = nullptr;        // S [>= bs, H]: h_{t-1} in, h_t out (no projection)
  void* hm = nullptr;             // A [>= bs, H]: h_t * mask (or h_t), the next step's GEMM operand (no projection)
  void* out = nullptr;            // S rows of the step's output, row stride ld_out (no projection)
  void* r_out = nullptr;          // A [bs, H] (projection): o * tanh(...)
  void* scratch = nullptr;        // A [>= bs, 2H] (with ln_c): c~ and o between the passes over a row
  void* ws = nullptr;             // A [bs, ws_width] (train) or nullptr: the workspace rows (fastrnn.cpp)
  int64_t bs = 0;
  int64_t H = 0;
  int64_t ld_out = 0;
  int64_t ws_width = 0;
  int proj = 0;
};

// The end of an LSTM-with-projection step on the P units: h_t = k * h_{t-1} + (1 - k) * hnew.
struct ExtMixParams {
  const void* hnew = nullptr;  // A [bs, D]: r @ W_hr^T
  ExtZoneout zh;
  const void* mask = nullptr;  // A [>= bs, D] or nullptr
  void* h_state = nullptr;     // S [>= bs, D]: h_{t-1} in, h_t out
  void* hm = nullptr;          // A [>= bs, D]: h_t * mask
  void* out = nullptr;         // S rows of the step's output, row stride ld_out
  int64_t bs = 0;
  int64_t D = 0;
  int64_t ld_out = 0;
};

// The start of an LSTM-with-projection backward step on the P units: dh = grad_out + dh_state,
// dhnew = (1 - k) * dh (the gradient of r @ W_hr^T, to dh_new), dh_state = k * dh (the direct part of dL/dh_{t-1}).
struct ExtSplitParams {
  const void* grad_out = nullptr;  // S rows, row stride ld_grad_out, or nullptr
  ExtZoneout zh;
  void* dh_state = nullptr;        // A [>= bs, D]
  void* dh_new = nullptr;          // A [bs, D]
  int64_t bs = 0;
  int64_t D = 0;
  int64_t ld_grad_out = 0;
};

// LSTM backward, rows b < bs of one step, visited in reverse order. dh_state holds dL/dh_t (rows < bs) on
// entry; the kernel leaves its direct part k_h * dh there (no projection) and the host adds the carry
// (da @ W_hh) * mask. dc_state: dL/dc_t in, dL/dc_{t-1} out.
struct LstmExtBwdParams {
  const void* grad_out = nullptr;  // S rows, row stride ld_grad_out, or nullptr (no projection)
  const void* dr = nullptr;        // A [bs, H] (projection): dL/dr = dh_new @ W_hr
  const void* ws = nullptr;        // A [bs, ws_width]: the forward's workspace rows
  const void* c_prev = nullptr;    // A [bs, H]: the cell state each row started from
  const void* ln_hh_w = nullptr;   // S [4H] or nullptr
  const void* ln_c_w = nullptr;    // S [H] or nullptr
  ExtZoneout zh;                   // no projection only (with it, ext_split_kernel applied it)
  ExtZoneout zc;
  void* dh_state = nullptr;        // A [>= bs, H] (no projection)
  void* dc_state = nullptr;        // A [>= bs, H]
  void* dgx = nullptr;             // S [bs, 4H]: grad_gates_x rows
  void* da_ln = nullptr;           // A [bs, 4H]: gradient of the pre-activations (= of LN_hh's output);
                                   //   without ln_hh the gradient of a itself (da == da_ln)
  void* da = nullptr;              // A [bs, 4H] (with ln_hh): gradient of a = W_hh (h * mask)
  void* dy_c = nullptr;            // A [bs, H] (with ln_c): gradient of LN_c's output
  int64_t bs = 0;
  int64_t H = 0;
  int64_t ld_grad_out = 0;
  int64_t ws_width = 0;
};

// GRU forward, rows b < bs of one step.
struct GruExtFwdParams {
  const void* a = nullptr;        // A [bs, 3H]: W_hh (h_{t-1} * mask)
  const void* gx = nullptr;       // S [bs, 3H]
  const void* b_hh = nullptr;     // S [3H] or nullptr (added after LN)
  const void* ln_hh_w = nullptr;  // S [3H] or nullptr
  const void* ln_hh_b = nullptr;  // S [3H]
  ExtZoneout zh;
  const void* mask = nullptr;     // A [>= bs, H] or nullptr
  void* h_state = nullptr;        // S [>= bs, H]: h_{t-1} in, h_t out
  void* hm = nullptr;             // A [>= bs, H]
  void* out = nullptr;            // S rows, row stride ld_out
  void* ws = nullptr;             // A [bs, ws_width] or nullptr
  int64_t bs = 0;
  int64_t H = 0;
  int64_t ld_out = 0;
  int64_t ws_width = 0;
};

// GRU backward, rows b < bs of one step. dh_state: dL/dh_t in, its direct part (zoneout and z * h) out.
struct GruExtBwdParams {
  const void* grad_out = nullptr;  // S rows, row stride ld_grad_out, or nullptr
  const void* ws = nullptr;        // A [bs, ws_width]
  const void* h_prev = nullptr;    // S [bs, H]: the state each row started from
  const void* ln_hh_w = nullptr;   // S [3H] or nullptr
  ExtZoneout zh;
  void* dh_state = nullptr;        // A [>= bs, H]
  void* dgx = nullptr;             // S [bs, 3H]
  void* da_ln = nullptr;           // A [bs, 3H]: [dr, dz, dn * r], the gradient of LN's output (+ b_hh)
  void* da = nullptr;              // A [bs, 3H] (with ln_hh): the gradient of a
  int64_t bs = 0;
  int64_t H = 0;
  int64_t ld_grad_out = 0;
  int64_t ws_width = 0;
};

}  // namespace fastrnn::cuda
