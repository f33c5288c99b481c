// The fused brgemm recurrence of the CPU kernels (issue 9): a whole sequence of one layer in one parallel
// region, each step's GEMMs run as at::native::cpublas::brgemm calls into a small float32 tile per block of
// hidden units, and the gate math applied to the tile while it is in L1. Forward (below) and backward
// (BrgemmBwdSeq: the carried dh from dG_next @ W_hh the same way) alike; an LSTM projection adds a second
// phase per step (h = r @ W_hr^T forward, dr = dh @ W_hr backward).
//
// Weights. W_hh (and, when the x-projection is folded into the step, W_ih) are packed once per call into
// blocks of nb hidden units with the gates of a unit side by side: block j is the [K, G*nb] matrix whose
// column g*nb + u is row g*H + j0 + u of W (G gates). float32 blocks are plain row-major; bfloat16 blocks are
// in the pair-interleaved (VNNI) layout brgemm takes, [K/2][G*nb][2], packed by fastrnn itself (cpublas::pack
// exists only where AMX does). One step of block j is then
//     tile[M, G*nb] = h_prev[M, K] @ Whh_j (+ x_t[M, I] @ Wih_j)
// in float32 (bf16 products accumulate in fp32 too), and the pointwise pass reads the tile, the biases (one
// fp32 row, b_ih + b_hh, in the same blocked order) and, when the x-projection was done up front as one
// large GEMM, that GEMM's row. The GRU keeps a folded x side in a second tile (its reset gate scales the h
// side of n alone). Which of the two an x-projection takes: fold_x_projection in brgemm_step.cpp.
//
// Threads. One parallel region per sequence (OpenMP; the extension is built with it). B >= 16: each thread
// owns a contiguous range of batch rows for the whole sequence and needs no synchronisation at all (rows of
// an RNN are independent). B < 16: each thread owns a range of hidden blocks (its part of the weights stays
// in its own L2) and the threads meet at one barrier per step (OpenMP's, which spins briefly and then
// sleeps, so it holds up under load), or, when a step is too small to pay for the barrier, one thread runs
// them all (run_sequence in brgemm_step.cpp). The previous step's h is read straight from the output rows of
// that step (or from hx for rows starting there), so no state is copied between steps.
//
// Availability. Used for float32 and bfloat16 when the processor runs the AVX2 or AVX-512 kernels, brgemm
// passed a probe against a reference product (it raises, or silently falls back to a plain GEMM on the wrong
// layout, where oneDNN's ukernel is missing), and FASTRNN_CPU_BRGEMM is not 0. bfloat16 runs natively on
// AVX-512 (bf16 brgemm) and widened onto fp32 brgemm elsewhere (brgemm_bf16_widened below). Otherwise, and for
// what it does not cover (native bf16 with an odd I, H or proj_size), the callers run their older per-step path
// (step_gemm.h + pointwise kernels).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "pointwise.h"

namespace fastrnn::cpu {

enum class BrgemmCell { kLstm, kGru, kRnn };

// One forward sequence of one cell, in raw pointers (see brgemm_impl.h for the loop).
struct LstmBrgemmSeq {
  BrgemmCell cell;
  int64_t gates;       // 4, 3, 1
  bool relu;           // RNN only
  int64_t T, B, I, H;
  const int64_t* batch_sizes;  // [T]
  const int64_t* offsets;      // [T + 1]
  bool reverse;
  const void* x;       // [N, I] (scalar_t)
  const void* hx;      // [B, H] (scalar_t)
  const void* w_hh;    // packed blocks, block j at w_hh_elems * j0 (j0 = its first unit)
  const void* w_ih;    // packed blocks (folded x-projection) or nullptr
  const void* gx;      // [N, G*H] x-projection done up front (scalar_t) or nullptr (folded: w_ih set)
  const float* bias;   // [G*H] fp32: LSTM b_ih + b_hh; GRU and RNN b_ih; or nullptr
  const float* bias_h; // [G*H] fp32: GRU and RNN b_hh, or nullptr
  int64_t nb;          // hidden units per block (the last block may have fewer)
  int64_t k_hh, k_ih;  // K of the packed weights (padded to even for bf16)
  float* c_state;      // [B, H], updated in place
  void* out;           // [N, H] (scalar_t)
  float* ws;           // train: LSTM [N, 5H] (i, f, g, o, c), GRU [N, 4H] (r, z, n, hn); else nullptr
  bool split_batch;    // threads own batch rows (true) or hidden blocks (false)
  // LSTM projection (h = r @ W_hr^T, r = o*tanh(c)): P is h's width (= H without one), the state the step
  // reads and out's rows. With w_hr set, each step runs in two phases (steps 2k and 2k+1 of the region, a
  // barrier between them when threads split hidden blocks): the gates write r into r_buf, then
  // out[rows, P] = r_buf[rows, H] @ W_hr^T from W_hr packed in blocks of nb output columns (K = H).
  int64_t P = 0;
  const void* w_hr = nullptr;  // packed blocks, or nullptr
  void* r_buf = nullptr;       // [B, H] (scalar_t)
  int64_t gemv_rows = 0;       // block products of up to this many rows skip brgemm (brgemm_impl.h)
};

// One backward sequence of one cell: the recurrent part (gate gradients, the carried dh and dc); the weight,
// input and bias gradients stay whole-sequence GEMMs afterwards (sequence_grads). Steps run in the order
// opposite to the forward's. Step k (k = 0..T) first completes the carry of the rows of the step processed
// before it, `next`: dh_carry = dG_next @ W_hh (+ the GRU's dh_next * z_next, kept in dh_state) as a tile of
// hidden units per block, from W_hh^T packed in blocks of nb units (the block's columns are those units, its
// K = G*H rows the gate rows). Rows of this step then add grad_output and run the pointwise backward on the
// tile while it is in L1; rows of `next` that do not continue (reverse packed sequences, and every row at
// the extra step k = T) write the carry to dh_state: their grad_hx.
struct BrgemmBwdSeq {
  BrgemmCell cell;
  int64_t gates;
  bool relu;
  int64_t T, B, H;
  const int64_t* batch_sizes;  // [T]
  const int64_t* offsets;      // [T + 1]
  bool reverse;
  const void* w_t;             // W_hh^T in blocks (pack_gate_blocks of W_hh^T with one gate)
  int64_t nb, k_w;             // units per block; K of the packed blocks (G*H, even)
  const float* ws;             // LSTM [N, 5H] (i, f, g, o, c), GRU [N, 4H] (r, z, n, hn); RNN nullptr
  const float* cx;             // LSTM [B, H] fp32: the initial cell state
  const void* hx;              // GRU [B, H] (scalar_t): the initial state
  const void* out;             // [N, H] the forward's output (scalar_t)
  const void* const* go_step;  // [T] first row of each step of grad_output (scalar_t), rows go_ld apart
  int64_t go_ld;
  void* dh_state;              // [B, H] (scalar_t): in grad_hy; out grad_hx. GRU: also dh * z between steps
  float* dc_state;             // LSTM [B, H]: in grad_cy, out grad_cx
  void* dg;                    // [N, G*H] (scalar_t) gate gradients (GRU: of the x side)
  void* dph_n;                 // GRU [N, H] (scalar_t): dG_h's n part
  bool split_batch;
  // LSTM projection: P is h's width (= H without one; dh_state, grad_output and the carry are P wide, and
  // w_t's blocks then cover P units). With w_hr set, step k runs as two phases (2k, 2k+1; a barrier between
  // them when threads split hidden blocks): the carry and grad_output give dh = dL/dh (kept in dh_all for
  // dW_hr), then dr = dh @ W_hr from W_hr^T packed in blocks of nb of the H units (K = P) feeds the gates.
  int64_t P = 0;
  const void* w_hr = nullptr;  // packed blocks, or nullptr
  void* dh_all = nullptr;      // [N, P] (scalar_t)
  void* r_all = nullptr;       // [N, H] (scalar_t): o*tanh(c) of every row, for dW_hr
  int64_t gemv_rows = 0;       // as LstmBrgemmSeq's
};

// Runs the LSTM forward on the brgemm path when it applies (see above); std::nullopt otherwise, and the caller
// runs its older path. Same arguments and results as fastrnn::lstm_forward (checked by the caller).
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> lstm_forward_brgemm(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse, bool train);

// The same for the GRU (always with the x-projection up front: the reset gate multiplies the h side of n
// alone) and the Elman RNN.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> gru_forward_brgemm(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool reverse, bool train);
std::optional<std::tuple<at::Tensor, at::Tensor>> rnn_forward_brgemm(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool relu, bool reverse);

// The tensors of a backward recurrence (see BrgemmBwdSeq): runs it on the brgemm path and returns true when
// the path applies, else returns false having done nothing (the caller runs its per-step loop).
struct BrgemmBwdTensors {
  BrgemmCell cell;
  bool relu, reverse;
  const at::Tensor& input;   // the dtype and the sequence layout
  const std::optional<at::Tensor>& batch_sizes;
  const at::Tensor& w_hh;
  const at::Tensor& ws;      // LSTM, GRU (contiguous fp32)
  const at::Tensor& out;     // [N, H] contiguous
  const at::Tensor& hx;      // GRU (contiguous)
  const at::Tensor& cx;      // LSTM (any dtype)
  const at::Tensor& grad_output;
  at::Tensor& dh_state;      // [B, H] contiguous
  at::Tensor& dc_state;      // LSTM [B, H] contiguous fp32
  const at::Tensor& dg;      // [N, G*H] contiguous
  const at::Tensor& dph_n;   // GRU [N, H] contiguous
  const at::Tensor& w_hr;    // LSTM projection [P, H], or undefined
  const at::Tensor& dh_all;  // with w_hr: [N, P] contiguous, receives dL/dh of every row
  const at::Tensor& r_all;   // with w_hr: [N, H] contiguous, receives o*tanh(c) of every row
};
bool backward_recurrence_brgemm(const BrgemmBwdTensors& a);

// Whether brgemm serves `dtype` on this processor with the active instruction set and switches
// (FASTRNN_CPU_BRGEMM=0 turns the path off; read on every call).
bool brgemm_enabled(at::ScalarType dtype);

// How bfloat16 runs on brgemm: natively (false: VNNI-packed bf16 weights, bf16 dot products with fp32
// accumulation; AVX-512 with avx512_bf16, or AMX), or widened (true: the weights packed as fp32, each step's
// bf16 operand rows converted to fp32 once per step, fp32 brgemm: the same products, exact in fp32, and the
// same fp32 accumulation, so the same numbers up to summation order; every AVX2 processor). std::nullopt: bf16
// has no brgemm path. FASTRNN_CPU_BRGEMM_BF16=native|widen forces one (where the processor runs it; A/B and
// tests); read on every call.
std::optional<bool> brgemm_bf16_widened();

// Packs W [G*H, K] (row-major, scalar_t) into the blocked layout above; bf16 in VNNI pairs, K padded to
// even with zeros. Returns the packed tensor (1-D) and sets *k_out to the padded K.
at::Tensor pack_gate_blocks(const at::Tensor& w, int64_t gates, int64_t nb, int64_t* k_out);

// The integer value of the environment variable `name` (the CPU kernels' tuning switches), or dflt when unset.
int64_t env_int(const char* name, int64_t dflt);

// Rows of one brgemm call: the tile [rows, 4 nb] fp32 then stays within L1 (16 KB at nb = 32).
constexpr int64_t kBrgemmTileRows = 32;

// The calling thread's buffer `slot` (< kWidenedSlots) of at least `floats` floats, for the widened bf16 steps'
// fp32 operand rows; kept until release_widened_rows_buffers (run_sequence calls it in each thread at the end
// of the sequence's parallel region).
constexpr int kWidenedSlots = 4;  // h_prev, hx, x (forward); dG and the GRU's dph_n (backward)
float* widened_rows_buffer(int slot, int64_t floats);
void release_widened_rows_buffers();

// Step k of a sequence for batch rows [r0, r1) and hidden blocks [blk0, blk1), with a tile of
// kBrgemmTileRows x 4 nb floats. The *_bf16w steps run bf16 widened (brgemm_bf16_widened): their packed weights
// are fp32, and each thread keeps its step's operand rows converted to fp32 in widened_rows_buffer's slots. Defined per instruction set in brgemm_impl.h (compiled into
// pointwise_avx2.cpp / pointwise_avx512.cpp); the parallel region around the steps is brgemm_step.cpp's.
using LstmBrgemmStepFn = void (*)(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0,
                                  int64_t blk1, float* tile);
#define FASTRNN_DECLARE_BRGEMM_ISA(NS)                                                                  \
  namespace NS {                                                                                        \
  void lstm_fwd_brgemm_f32(const LstmBrgemmSeq&, int64_t k, int64_t r0, int64_t r1, int64_t blk0,       \
                           int64_t blk1, float* tile);                                                  \
  void lstm_fwd_brgemm_bf16(const LstmBrgemmSeq&, int64_t k, int64_t r0, int64_t r1, int64_t blk0,      \
                            int64_t blk1, float* tile);                                                 \
  void bwd_brgemm_f32(const BrgemmBwdSeq&, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,   \
                      float* tile);                                                                     \
  void bwd_brgemm_bf16(const BrgemmBwdSeq&, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,  \
                       float* tile);                                                                    \
  void lstm_fwd_brgemm_bf16w(const LstmBrgemmSeq&, int64_t k, int64_t r0, int64_t r1, int64_t blk0,     \
                             int64_t blk1, float* tile);                                                \
  void bwd_brgemm_bf16w(const BrgemmBwdSeq&, int64_t k, int64_t r0, int64_t r1, int64_t blk0,           \
                        int64_t blk1, float* tile);                                                     \
  }
FASTRNN_DECLARE_BRGEMM_ISA(isa_avx2)
FASTRNN_DECLARE_BRGEMM_ISA(isa_avx512)
#undef FASTRNN_DECLARE_BRGEMM_ISA

}  // namespace fastrnn::cpu
