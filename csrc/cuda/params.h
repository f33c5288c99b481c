// Arguments of the per-timestep kernels: plain structs of raw pointers and integers, shared by the device
// code (*_kernel.cuh), the host launchers (*.cu), the ATen drivers (*_cuda.cpp) and the CUDA-emulation
// tests. Pointers are untyped here; a kernel instantiated for storage type S reads the tensors marked S as
// S and those marked A as acc_t<S> (float for float16/bfloat16, else S). Every matrix is row-major with
// the row stride given. Sizes are int64_t so that row * stride never overflows.
#pragma once

#include <cstdint>

namespace fastrnn::cuda {

enum class Cell : int { kLstm = 0, kGru = 1, kRnn = 2 };

// Gates per hidden unit: 4 (i, f, g, o), 3 (r, z, n), 1.
constexpr int gates_of(Cell c) { return c == Cell::kLstm ? 4 : c == Cell::kGru ? 3 : 1; }

// One forward step of one direction: rows b in [0, bs) of timestep t.
//   gates = gx[b] + h_prev[b] @ w_hh^T + b_hh, then the cell's pointwise math (cell_math.h).
// The state the step starts from is row b of the previous step's output (b < n_prev) or of the initial
// state h_init (n_prev <= b < bs): the previous step's output rows are never written by this step, which
// is what makes the step race-free (see fwd_step_kernel.cuh).
struct FwdStepParams {
  const void* gx = nullptr;      // S [bs, G*H]: x-side pre-activations x W_ih^T + b_ih of the step's rows
  const void* b_hh = nullptr;    // S [G*H] or nullptr
  const void* w_hh = nullptr;    // S [G*H, K]
  const void* h_prev = nullptr;  // S rows b < n_prev, row stride K; nullptr when n_prev == 0
  const void* h_init = nullptr;  // S [>= bs, K]: the initial state hx
  void* c_state = nullptr;       // A [>= bs, H] (LSTM): c_{t-1} in, c_t out, rows < bs; untouched beyond
  void* h_out = nullptr;         // S rows b < bs, row stride ld_out: h_t (LSTM with projection: o*tanh(c))
  void* ws = nullptr;            // A [bs, ws_width] (train) or nullptr: LSTM i,f,g,o,c (5H); GRU r,z,n,hn (4H)
  int64_t n_prev = 0;            // rows of the step that continue the previous step
  int64_t bs = 0;                // rows of the step
  int64_t H = 0;                 // hidden size
  int64_t K = 0;                 // size of the recurrent state (H, or proj_size with an LSTM projection)
  int64_t ld_out = 0;            // row stride of h_out
  int relu = 0;                  // RNN: relu instead of tanh
};

// One backward step: rows b in [0, bs) of timestep t, visited in the opposite order of the forward.
//   dh[b] = carry[b] + grad_out[b] + dh_ext[b] + (b < n_next ? dg_next[b] @ w_hh : 0)   (each term optional)
// where dg_next are the h-side gate gradients of the step that continued step t in the forward (written
// by the previous launch), then the cell's pointwise backward from the saved workspace.
// `carry` is the part of dL/dh_{t-1} that does not go through W_hh: it enters as grad_hy for rows that
// end at this step, and leaves as 0 (LSTM, RNN) or dh*z (GRU).
struct BwdStepParams {
  const void* dg_next = nullptr;  // S rows b < n_next, row stride G*H; nullptr when n_next == 0
  const void* w_hh = nullptr;     // S [G*H, H]
  const void* grad_out = nullptr; // S [bs, H] or nullptr: the step's rows of grad_output, row stride ld_grad_out
  const void* dh_ext = nullptr;   // S [bs, H] or nullptr: a dh computed outside (LSTM with projection)
  void* carry = nullptr;          // A [>= bs, H] or nullptr, read and replaced for rows < bs
  const void* ws = nullptr;       // A [bs, ws_width]: the forward's workspace rows (LSTM 5H, GRU 4H)
  const void* c_prev = nullptr;   // A [bs, H] (LSTM): the cell state each row started from
  void* dc_state = nullptr;       // A [>= bs, H] (LSTM): dL/dc_t in, dL/dc_{t-1} out
  const void* h_prev = nullptr;   // S [bs, H] (GRU): the hidden state each row started from
  const void* h_cur = nullptr;    // S [bs, H] (RNN): the step's outputs
  void* dg = nullptr;             // S [bs, G*H]: gate gradients (GRU: of the x-side pre-activations)
  void* dgh = nullptr;            // S [bs, 3H] (GRU): gradients of the h-side pre-activations
  void* dph_n = nullptr;          // S [bs, H] or nullptr (GRU): dgh's n part again (kept for every row)
  void* r_out = nullptr;          // S [bs, H] or nullptr (LSTM with projection): o*tanh(c)
  int64_t n_next = 0;
  int64_t bs = 0;
  int64_t H = 0;
  int64_t ld_grad_out = -1;       // row stride of grad_out (may be 0 or exceed H); -1: H
  int relu = 0;
};

// The persistent forward kernel (fwd_persistent_kernel.cuh) runs every step of a sequence in one
// cooperative launch. Step s of the launch (processing order: t = s forward, t = T-1-s in reverse) is
// described by one row of a small device table: its first packed row, its row count, and the rows it
// continues from (those of the step processed before it, b < n_prev; the others start from h_init).
struct FwdSeqStep {
  int64_t off = 0;       // first row of the step in gx / out / ws
  int64_t bs = 0;        // rows of the step
  int64_t off_prev = 0;  // first row of the previously processed step (meaningful when n_prev > 0)
  int64_t n_prev = 0;    // rows that continue the previously processed step
};

struct FwdSeqParams {
  const void* gx = nullptr;       // S [N, G*H]: x W_ih^T + b_ih of every row
  const void* b_hh = nullptr;     // S [G*H] or nullptr
  const void* w_hh = nullptr;     // S [G*H, K]
  const void* h_init = nullptr;   // S [B, K]
  void* c_state = nullptr;        // A [B, H] (LSTM): c0 in, c_n out
  void* out = nullptr;            // S [N, ld_out]: h of every row (also the state the next step reads)
  void* ws = nullptr;             // A [N, ws_width] (train) or nullptr
  const FwdSeqStep* steps = nullptr;  // [T], device memory
  int64_t T = 0;
  int64_t H = 0;
  int64_t K = 0;                  // == H (the persistent path serves no LSTM projection)
  int64_t ld_out = 0;
  int units = 0;                  // hidden units per block (a power of two <= 32)
  int relu = 0;
};

// The argument of a persistent forward launch: the directions it runs, one per grid row (blockIdx.y). A one-direction
// launch (gridDim.y = 1) reads dir[0] only; a bidirectional layer runs both directions in ONE launch (gridDim.y = 2:
// both directions' steps at once on their own blocks, one launch's overhead). Every block meets the grid barrier once
// per step, so both directions must have the same T (the same batch_sizes, as a layer's two directions do) and the
// same units; persistent.h checks that before it launches.
struct FwdSeqLaunch {
  FwdSeqParams dir[2];
};

// The persistent backward kernel (bwd_persistent_kernel.cuh) runs every step of a backward recurrence in one
// cooperative launch, visiting the steps in the opposite order of the forward. Row s < T of its table describes
// the step processed at iteration s, and its neighbours: `next` is the step processed just before it (the one that
// continued it in the forward; its h-side gate gradients dG_next feed this step's dh through W_hh for rows
// b < n_next), `prev` the step it continued in the forward (its rows b < n_prev started from that step's outputs,
// the others from h_init). Row T has bs = 0 and names the last processed step as `next`: its rows all started from
// h_init, and iteration T turns them into grad_hx. At every iteration the rows n_next <= b < bs_next of `next`
// started from h_init too (a reverse layer with packed sequences), and also become grad_hx there.
struct BwdSeqStep {
  int64_t off = 0;       // first row of the step in ws / dg / out (and packed grad_out)
  int64_t bs = 0;        // rows of the step (0 in row T)
  int64_t off_next = 0;  // first row of `next` (meaningful when bs_next > 0)
  int64_t bs_next = 0;   // rows of `next` (0 at iteration 0)
  int64_t n_next = 0;    // rows of this step that `next` continued: min(bs, bs_next)
  int64_t off_prev = 0;  // first row of `prev` (meaningful when n_prev > 0)
  int64_t n_prev = 0;    // rows of this step that continued `prev`
  int64_t go_off = 0;    // offset of the step's first grad_output row, in elements
};

struct BwdSeqParams {
  void* dg = nullptr;              // S [N, G*H]: gate gradients (GRU: of the x-side pre-activations), written
  void* dph_n = nullptr;           // S [N, H] (GRU): the gradient of W_hn h + b_hn, written
  const void* w_hh = nullptr;      // S [G*H, H]
  const void* grad_out = nullptr;  // S, step rows at go_off with row stride ld_grad_out; or nullptr
  const void* ws = nullptr;        // A [N, ws_width] (LSTM 5H, GRU 4H): the forward's workspace
  const void* c_prev = nullptr;    // A [N, H] (LSTM): the cell state each row started from
  void* dc_state = nullptr;        // A [B, H] (LSTM): grad_cy in, grad_cx out
  const void* out = nullptr;       // S [N, H] (GRU: h_prev of continuing rows; RNN: h_cur): the forward's output
  const void* h_init = nullptr;    // S [B, H] (GRU): hx
  void* carry = nullptr;           // A [B, H]: grad_hy in, grad_hx out
  const BwdSeqStep* steps = nullptr;  // [T + 1], device memory
  int64_t T = 0;
  int64_t H = 0;
  int64_t ld_grad_out = 0;
  int units = 0;                   // hidden units per block (a power of two <= 32)
  int relu = 0;
};

// The argument of a persistent backward launch: as FwdSeqLaunch, one direction per grid row (blockIdx.y).
struct BwdSeqLaunch {
  BwdSeqParams dir[2];
};

}  // namespace fastrnn::cuda
