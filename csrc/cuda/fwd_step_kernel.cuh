// Fused forward step kernels: one launch per timestep computes, for the step's batch rows, the recurrent
// matmul h_{t-1} @ W_hh^T for a tile of hidden units (all gates of those units), and in the epilogue,
// straight from registers, adds gx + b_hh, applies the cell math of cell_math.h, and writes h (and c, and
// the workspace when training). The gate pre-activations never go to global memory.
//
// Launch contract (the same for lstm_fwd_step_kernel<S>, gru_fwd_step_kernel<S>, rnn_fwd_step_kernel<S>;
// Tr = FwdStepTraits<gates_of(cell), acc_t<S>>; the launcher in launcher.cuh does exactly this):
//   grid   = dim3(Tr::grid_x(p.H), Tr::grid_y(p.bs), 1)   -- blockIdx.x: tile of kUnits hidden units,
//                                                           blockIdx.y: tile of kBatchRows batch rows
//   block  = dim3(Tr::kThreads, 1, 1)                      -- 256 threads = 8 warps
//   dynamic shared memory = Tr::smem_bytes() bytes         -- below 48 KB for every dtype
//   args   = one FwdStepParams (params.h), by value
//   Not launched when p.bs == 0 or p.H == 0.
//
// Work split. Lane l of warp w owns hidden unit j = blockIdx.x*32 + l and the batch rows
// b = blockIdx.y*32 + w + 8*i (i < 4), for all G gates of unit j: G*4 fp32 accumulators per thread, which
// is what lets the epilogue run the whole cell for (b, j) from registers.
//
// Matmul scheme. W_hh is [G*H, K] row-major, contiguous along the reduction dimension K. Rather than have a
// warp cooperate along K for each gate row and reduce with shuffles (one shuffle tree per (row, batch row)
// output, i.e. per accumulator), the block stages a K-tile of its G*32 weight rows in shared memory
// *transposed* (Ws[k][row], row stride G*32+1): the global loads stay coalesced along K, the padded store
// is bank-conflict free (stride = 1 mod 32), and in the inner loop the 32 lanes of a warp read 32
// consecutive rows of one k (conflict free) while the h_{t-1} value of a batch row is a broadcast. Each
// weight element is read from global memory once per block, each h element once per block.
//
// Race freedom without a grid-wide barrier: h_{t-1} is read from the previous step's rows of the output
// tensor (p.h_prev) or from hx (p.h_init), never from a buffer this step writes; the step writes its own
// output rows (or, with an LSTM projection, the r buffer). The two are distinct memory, so the output
// tensor itself plays the role of the ping-pong state buffers and no copy of the tail rows is needed.
// c (LSTM) is updated in place: element (b, j) is read and written by the same thread only.
#pragma once

#include <cstdint>

#include "../cell_math.h"
#include "device_compat.h"
#include "params.h"

#if defined(FASTRNN_EMU_DROP_SYNC) && !defined(FASTRNN_CUDA_EMU)
#error "FASTRNN_EMU_DROP_SYNC (drops a __syncthreads, see fwd_step) is for the CUDA-emulation tests only"
#endif

namespace fastrnn::cuda {

constexpr int kStepThreads = 256;  // threads per block of every step kernel (forward and backward)

template <int kGates_, typename A>
struct FwdStepTraits {
  static constexpr int kGates = kGates_;
  static constexpr int kUnits = 32;  // hidden units per block, one per lane
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerThread = 4;
  static constexpr int kBatchRows = kWarps * kRowsPerThread;  // batch rows per block
  static constexpr int kTileK = 32;                           // reduction tile
  static constexpr int kGateRows = kGates * kUnits;           // weight rows a block owns
  static constexpr int kWStride = kGateRows + 1;              // Ws[k][row]
  static constexpr int kHStride = kTileK + 1;                 // Hs[batch row][k]
  static_assert(kUnits == 32, "a lane owns one hidden unit");
  static_assert(kThreads == kStepThreads, "the kernels' __launch_bounds__");

  static constexpr int64_t smem_bytes() {
    return int64_t(kTileK * kWStride + kBatchRows * kHStride) * int64_t(sizeof(A));
  }
  static constexpr int64_t grid_x(int64_t H) { return (H + kUnits - 1) / kUnits; }
  static constexpr int64_t grid_y(int64_t bs) { return (bs + kBatchRows - 1) / kBatchRows; }
};

template <typename S, Cell C>
using FwdTraitsFor = FwdStepTraits<gates_of(C), acc_t<S>>;

template <typename S, Cell C>
__device__ __forceinline__ void fwd_step(const FwdStepParams& p) {
  using A = acc_t<S>;
  using Tr = FwdTraitsFor<S, C>;
  constexpr int G = Tr::kGates;
  constexpr int R = Tr::kRowsPerThread;

  FASTRNN_DYNAMIC_SMEM(A, smem);
  A* Ws = smem;                              // [kTileK][kWStride]
  A* Hs = smem + Tr::kTileK * Tr::kWStride;  // [kBatchRows][kHStride]

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int64_t j0 = int64_t(blockIdx.x) * Tr::kUnits;
  const int64_t b0 = int64_t(blockIdx.y) * Tr::kBatchRows;
  const int64_t H = p.H, K = p.K, GH = int64_t(G) * p.H, bs = p.bs, n_prev = p.n_prev;
  const S* __restrict__ w = static_cast<const S*>(p.w_hh);
  const S* __restrict__ hp = static_cast<const S*>(p.h_prev);
  const S* __restrict__ h0 = static_cast<const S*>(p.h_init);

  A acc[G][R];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < R; ++i) acc[g][i] = A(0);

  // ---- recurrent matmul: acc[g][i] = sum_k h_{t-1}[b_i, k] * W_hh[g*H + j, k]
  // Tile loads: thread tid loads column k = tid % kTileK of rows tid / kTileK + m * (kThreads / kTileK).
  constexpr int kRowStep = Tr::kThreads / Tr::kTileK;
  static_assert(Tr::kThreads % Tr::kTileK == 0 && Tr::kGateRows % kRowStep == 0 && Tr::kBatchRows % kRowStep == 0,
                "tile loads cover the tiles exactly");
  const int lk = tid % Tr::kTileK, lr = tid / Tr::kTileK;
  for (int64_t k0 = 0; k0 < K; k0 += Tr::kTileK) {
    const int64_t kk = k0 + lk;
    const bool k_ok = kk < K;
    // A fixed trip count, unrolled by 4 (one gate's rows per unrolled body): the loop from lr made ptxas
    // keep its indices in local memory on sm_90 (a 12-byte spill in the GRU kernel), and a full unroll
    // keeps every load in flight (LSTM: 16, over the 128-register budget).
#pragma unroll 4
    for (int m = 0; m < Tr::kGateRows / kRowStep; ++m) {
      const int r = lr + m * kRowStep;
      const int64_t j = j0 + r % Tr::kUnits;
      A v = A(0);
      if (j < H && k_ok) v = to_float(w[(int64_t(r / Tr::kUnits) * H + j) * K + kk]);
      Ws[lk * Tr::kWStride + r] = v;
    }
#pragma unroll
    for (int m = 0; m < Tr::kBatchRows / kRowStep; ++m) {
      const int rb = lr + m * kRowStep;
      const int64_t b = b0 + rb;
      A v = A(0);
      if (b < bs && k_ok) v = to_float(b < n_prev ? hp[b * K + kk] : h0[b * K + kk]);
      Hs[rb * Tr::kHStride + lk] = v;
    }
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < Tr::kTileK; ++k) {
      A hv[R];
#pragma unroll
      for (int i = 0; i < R; ++i) hv[i] = Hs[(warp + i * Tr::kWarps) * Tr::kHStride + k];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const A wv = Ws[k * Tr::kWStride + g * Tr::kUnits + lane];
#pragma unroll
        for (int i = 0; i < R; ++i) acc[g][i] += wv * hv[i];
      }
    }
    // Every warp is done reading this K tile before the next iteration overwrites Ws/Hs. The macro exists only
    // for tests/test_cuda_emu_kernels.py, which builds the kernel without this barrier under the CUDA emulation
    // and expects ThreadSanitizer to report the race; never define it for a real build.
#ifndef FASTRNN_EMU_DROP_SYNC
    __syncthreads();
#endif
  }

  // ---- epilogue: bias, cell math, state/output/workspace writes, all for (b_i, j) from registers
  const int64_t j = j0 + lane;
  if (j >= H) return;
  const S* __restrict__ gx = static_cast<const S*>(p.gx);
  const S* __restrict__ bhh = static_cast<const S*>(p.b_hh);
  S* __restrict__ h_out = static_cast<S*>(p.h_out);
  A* __restrict__ ws = static_cast<A*>(p.ws);
  // GRU: h_{t-1}[b_i, j] for z*h, loaded before any transcendental: the math's slow paths are calls, and
  // keeping the h_prev/h_init addressing live across them cost spills (double, sm_80).
  A hprev[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t b = b0 + warp + i * Tr::kWarps;
    hprev[i] = A(0);
    if (C == Cell::kGru && b < bs) hprev[i] = to_float(b < n_prev ? hp[b * K + j] : h0[b * K + j]);
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t b = b0 + warp + i * Tr::kWarps;
    if (b >= bs) continue;
    A ph[G];  // h-side pre-activations W_h* h + b_h*
#pragma unroll
    for (int g = 0; g < G; ++g) ph[g] = acc[g][i] + (bhh != nullptr ? to_float(bhh[g * H + j]) : A(0));
    const S* gxr = gx + b * GH + j;
    if constexpr (C == Cell::kLstm) {
      A* c = static_cast<A*>(p.c_state) + b * H + j;
      const LstmActs<A> a = lstm_forward<A>(to_float(gxr[0]) + ph[0], to_float(gxr[H]) + ph[1],
                                            to_float(gxr[2 * H]) + ph[2], to_float(gxr[3 * H]) + ph[3], *c);
      *c = a.c;
      h_out[b * p.ld_out + j] = from_float<S>(a.h);
      if (ws != nullptr) {
        A* wr = ws + b * 5 * H + j;
        wr[0] = a.i;
        wr[H] = a.f;
        wr[2 * H] = a.g;
        wr[3 * H] = a.o;
        wr[4 * H] = a.c;
      }
    } else if constexpr (C == Cell::kGru) {
      const GruActs<A> a = gru_forward<A>(to_float(gxr[0]), to_float(gxr[H]), to_float(gxr[2 * H]), ph[0],
                                          ph[1], ph[2], hprev[i]);
      h_out[b * p.ld_out + j] = from_float<S>(a.h);
      if (ws != nullptr) {
        A* wr = ws + b * 4 * H + j;
        wr[0] = a.r;
        wr[H] = a.z;
        wr[2 * H] = a.n;
        wr[3 * H] = a.hn;
      }
    } else {
      h_out[b * p.ld_out + j] = from_float<S>(rnn_forward<A>(to_float(gxr[0]), ph[0], p.relu != 0));
    }
  }
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kStepThreads) lstm_fwd_step_kernel(const FwdStepParams p) {
  fwd_step<S, Cell::kLstm>(p);
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kStepThreads) gru_fwd_step_kernel(const FwdStepParams p) {
  fwd_step<S, Cell::kGru>(p);
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kStepThreads) rnn_fwd_step_kernel(const FwdStepParams p) {
  fwd_step<S, Cell::kRnn>(p);
}

}  // namespace fastrnn::cuda
