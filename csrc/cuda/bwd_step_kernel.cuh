// Fused backward step kernels: one launch per timestep (visited in the opposite order of the forward)
// computes, for a tile of hidden units and the step's batch rows, the units' slice of the recurrent matmul
// dh = dG_next @ W_hh (dG_next: the h-side gate gradients of the step that continued this one in the
// forward, written by the previous launch), adds grad_output rows and the carried dh, and runs the
// pointwise backward of cell_math.h from the saved workspace, writing the step's gate gradients and, for
// the LSTM, the dc state.
//
// Launch contract (the same for lstm_bwd_step_kernel<S>, gru_bwd_step_kernel<S>, rnn_bwd_step_kernel<S>;
// Tr = BwdStepTraits<gates_of(cell), acc_t<S>>; the launcher in launcher.cuh does exactly this):
//   grid   = dim3(Tr::grid_x(p.H), Tr::grid_y(p.bs), 1)   -- blockIdx.x: 32 hidden units, blockIdx.y: 32 rows
//   block  = dim3(Tr::kThreads, 1, 1)                      -- 256 threads = 8 warps
//   dynamic shared memory = Tr::smem_bytes() bytes         -- below 48 KB for every dtype
//   args   = one BwdStepParams (params.h), by value
//   Not launched when p.bs == 0 or p.H == 0.
//
// Work split. Lane l of warp w owns hidden unit j = blockIdx.x*32 + l and batch rows
// b = blockIdx.y*32 + w + 8*i (i < 4): 4 accumulators per thread.
//
// Matmul scheme. Here the reduction runs over the G*H rows of W_hh [G*H, H] and the output index j is the
// contiguous one, so no transpose is needed: a K-tile Ws[k][u] = W_hh[k0+k, j0+u] is loaded coalesced along
// j and read by lane u (conflict free); the dG_next tile Ds[row][k] (row stride 33) is loaded coalesced
// along k and read as a broadcast. Blocks whose rows all lack a successor (b0 >= n_next) skip the matmul;
// that test is uniform over the block, so the __syncthreads inside stay uniform.
//
// Race freedom: the step reads dG_next (written by the previous launch) and writes dG_t (other rows);
// carry and dc_state element (b, j) are read and written by the same thread only.
#pragma once

#include <cstdint>

#include "../cell_math.h"
#include "device_compat.h"
#include "fwd_step_kernel.cuh"  // kStepThreads
#include "params.h"

namespace fastrnn::cuda {

template <int kGates_, typename A>
struct BwdStepTraits {
  static constexpr int kGates = kGates_;
  static constexpr int kUnits = 32;  // hidden units per block, one per lane
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerThread = 4;
  static constexpr int kBatchRows = kWarps * kRowsPerThread;
  static constexpr int kTileK = 32;            // tile of the G*H reduction
  static constexpr int kWStride = kUnits;      // Ws[k][u]
  static constexpr int kDStride = kTileK + 1;  // Ds[batch row][k]
  static_assert(kUnits == 32, "a lane owns one hidden unit");
  static_assert(kThreads == kStepThreads, "the kernels' __launch_bounds__");

  static constexpr int64_t smem_bytes() {
    return int64_t(kTileK * kWStride + kBatchRows * kDStride) * int64_t(sizeof(A));
  }
  static constexpr int64_t grid_x(int64_t H) { return (H + kUnits - 1) / kUnits; }
  static constexpr int64_t grid_y(int64_t bs) { return (bs + kBatchRows - 1) / kBatchRows; }
};

template <typename S, Cell C>
using BwdTraitsFor = BwdStepTraits<gates_of(C), acc_t<S>>;

// The pointwise backward of (row b of the step, unit j) from its full dh (everything that reaches h_t): reads
// the workspace row (and, LSTM, c_prev and dc_state; RNN, h_cur), writes the gate gradients (GRU: dG_x, and
// dG_h / dph_n where given), dc_state (LSTM) and r_out (LSTM with projection), and returns what is carried to
// h_{t-1} outside W_hh (GRU: dh*z; else 0). p's row pointers (ws, c_prev, dg, dgh, dph_n, r_out, h_cur) start at
// the step's first row; dc_state is [>= bs, H]. h_prev (GRU): the state row b started from. Shared by the step
// kernel (below) and the persistent backward (bwd_persistent_kernel.cuh), so both compute the same cell.
template <typename S, Cell C>
__device__ __forceinline__ acc_t<S> bwd_cell_epilogue(const BwdStepParams& p, int64_t b, int64_t j, acc_t<S> dh,
                                                      acc_t<S> h_prev) {
  using A = acc_t<S>;
  const int64_t H = p.H, bj = b * H + j;
  if constexpr (C == Cell::kLstm) {
    const A* wr = static_cast<const A*>(p.ws) + b * 5 * H + j;
    const A gi = wr[0], gf = wr[H], gg = wr[2 * H], go_ = wr[3 * H], c = wr[4 * H];
    A* dc = static_cast<A*>(p.dc_state) + bj;
    const LstmGrads<A> d = lstm_backward<A>(gi, gf, gg, go_, c, static_cast<const A*>(p.c_prev)[bj], dh, *dc);
    *dc = d.dc_prev;
    S* dg = static_cast<S*>(p.dg) + b * 4 * H + j;
    dg[0] = from_float<S>(d.di);
    dg[H] = from_float<S>(d.df);
    dg[2 * H] = from_float<S>(d.dg);
    dg[3 * H] = from_float<S>(d.do_);
    if (p.r_out != nullptr) static_cast<S*>(p.r_out)[bj] = from_float<S>(go_ * Math<A>::tanh(c));
    return A(0);
  } else if constexpr (C == Cell::kGru) {
    const A* wr = static_cast<const A*>(p.ws) + b * 4 * H + j;
    const GruGrads<A> d = gru_backward<A>(wr[0], wr[H], wr[2 * H], wr[3 * H], h_prev, dh);
    S* dgx = static_cast<S*>(p.dg) + b * 3 * H + j;
    dgx[0] = from_float<S>(d.dr);
    dgx[H] = from_float<S>(d.dz);
    dgx[2 * H] = from_float<S>(d.dpx_n);
    if (p.dgh != nullptr) {
      S* dgh = static_cast<S*>(p.dgh) + b * 3 * H + j;
      dgh[0] = from_float<S>(d.dr);
      dgh[H] = from_float<S>(d.dz);
      dgh[2 * H] = from_float<S>(d.dph_n);
    }
    if (p.dph_n != nullptr) static_cast<S*>(p.dph_n)[bj] = from_float<S>(d.dph_n);
    return d.dh_prev;
  } else {
    const A h = to_float(static_cast<const S*>(p.h_cur)[bj]);
    static_cast<S*>(p.dg)[bj] = from_float<S>(rnn_backward<A>(h, dh, p.relu != 0));
    return A(0);
  }
}

template <typename S, Cell C>
__device__ __forceinline__ void bwd_step(const BwdStepParams& p) {
  using A = acc_t<S>;
  using Tr = BwdTraitsFor<S, C>;
  constexpr int G = Tr::kGates;
  constexpr int R = Tr::kRowsPerThread;

  FASTRNN_DYNAMIC_SMEM(A, smem);
  A* Ws = smem;                             // [kTileK][kWStride]
  A* Ds = smem + Tr::kTileK * Tr::kWStride;  // [kBatchRows][kDStride]

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int64_t j0 = int64_t(blockIdx.x) * Tr::kUnits;
  const int64_t b0 = int64_t(blockIdx.y) * Tr::kBatchRows;
  const int64_t H = p.H, GH = int64_t(G) * p.H, bs = p.bs, n_next = p.n_next;

  A acc[R];
#pragma unroll
  for (int i = 0; i < R; ++i) acc[i] = A(0);

  // ---- recurrent matmul: acc[i] = sum_g dG_next[b_i, g] * W_hh[g, j]   (rows b_i < n_next only)
  if (p.dg_next != nullptr && b0 < n_next) {
    const S* __restrict__ w = static_cast<const S*>(p.w_hh);
    const S* __restrict__ dn = static_cast<const S*>(p.dg_next);
    for (int64_t k0 = 0; k0 < GH; k0 += Tr::kTileK) {
      static_assert((Tr::kTileK * Tr::kUnits) % Tr::kThreads == 0 && (Tr::kBatchRows * Tr::kTileK) % Tr::kThreads == 0,
                    "tile loads cover the tiles exactly");
      // Fixed trip counts, fully unrolled: with a loop starting at tid, ptxas kept a 64-bit index in local
      // memory across iterations on sm_90 (an 8-byte spill).
#pragma unroll
      for (int m = 0; m < Tr::kTileK * Tr::kUnits / Tr::kThreads; ++m) {
        const int e = tid + m * Tr::kThreads;
        const int k = e / Tr::kUnits, u = e % Tr::kUnits;
        const int64_t g = k0 + k, j = j0 + u;
        Ws[k * Tr::kWStride + u] = (g < GH && j < H) ? to_float(w[g * H + j]) : A(0);
      }
#pragma unroll
      for (int m = 0; m < Tr::kBatchRows * Tr::kTileK / Tr::kThreads; ++m) {
        const int e = tid + m * Tr::kThreads;
        const int rb = e / Tr::kTileK, k = e % Tr::kTileK;
        const int64_t b = b0 + rb, g = k0 + k;
        Ds[rb * Tr::kDStride + k] = (b < n_next && g < GH) ? to_float(dn[b * GH + g]) : A(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < Tr::kTileK; ++k) {
        const A wv = Ws[k * Tr::kWStride + lane];
#pragma unroll
        for (int i = 0; i < R; ++i) acc[i] += Ds[(warp + i * Tr::kWarps) * Tr::kDStride + k] * wv;
      }
      __syncthreads();
    }
  }

  // ---- epilogue: the full dh of (b_i, j), then the cell's pointwise backward
  const int64_t j = j0 + lane;
  if (j >= H) return;
  A* __restrict__ carry = static_cast<A*>(p.carry);
  const S* __restrict__ go = static_cast<const S*>(p.grad_out);
  const int64_t ld_go = p.ld_grad_out >= 0 ? p.ld_grad_out : H;
  const S* __restrict__ dh_ext = static_cast<const S*>(p.dh_ext);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t b = b0 + warp + i * Tr::kWarps;
    if (b >= bs) continue;
    const int64_t bj = b * H + j;
    A dh = acc[i];
    if (carry != nullptr) dh += carry[bj];
    if (go != nullptr) dh += to_float(go[b * ld_go + j]);
    if (dh_ext != nullptr) dh += to_float(dh_ext[bj]);
    const A h_prev = C == Cell::kGru ? to_float(static_cast<const S*>(p.h_prev)[bj]) : A(0);
    const A new_carry = bwd_cell_epilogue<S, C>(p, b, j, dh, h_prev);
    if (carry != nullptr) carry[bj] = new_carry;
  }
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kStepThreads) lstm_bwd_step_kernel(const BwdStepParams p) {
  bwd_step<S, Cell::kLstm>(p);
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kStepThreads) gru_bwd_step_kernel(const BwdStepParams p) {
  bwd_step<S, Cell::kGru>(p);
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kStepThreads) rnn_bwd_step_kernel(const BwdStepParams p) {
  bwd_step<S, Cell::kRnn>(p);
}

}  // namespace fastrnn::cuda
