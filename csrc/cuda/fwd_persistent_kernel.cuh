// Persistent forward kernels: ONE cooperative launch runs every timestep of a layer's direction. Each block
// owns `units` hidden units (all G gates of each: G*units rows of W_hh), loads that slice of W_hh into
// shared memory once, and keeps it there for the whole sequence; per step it computes h_{t-1} @ W_slice^T
// for the step's batch rows, applies the cell math in registers and writes h_t (and c, the workspace), then
// the grid meets at a grid-wide barrier before the next step reads h_t. Against the step kernels
// (fwd_step_kernel.cuh: one launch per step, W_hh re-read from L2 by every block every step) this removes T
// launches and T re-reads of W_hh; what each step still moves is h_{t-1} (B x K, from L2) into every block.
//
// Launch contract (lstm/gru/rnn_fwd_persistent_kernel<S>; Tr = FwdPersistentTraits<gates_of(cell), acc_t<S>>;
// persistent_launcher.cuh does exactly this):
//   cooperative launch (cudaLaunchCooperativeKernel): every block resident at once, or the launch fails
//   grid   = dim3(Tr::grid(p.H, p.units), 1, 1)    -- blockIdx.x: tile of p.units hidden units
//   block  = dim3(Tr::kThreads, 1, 1)              -- 256 threads
//   dynamic shared memory = Tr::smem_bytes(p.units, p.K)
//   args   = one FwdSeqParams (params.h); p.units a power of two in [1, 32]; p.K == p.H; p.T >= 1
//
// Work split inside a block: thread tid owns unit u = tid % units and batch group bg = tid / units of
// groups = 256 / units; per chunk of groups * kRowsPerThread batch rows it accumulates rows
// b = chunk0 + bg + groups * i (i < kRowsPerThread) for all G gates of its unit, so the epilogue has the
// whole cell of (b, j) in registers. The (b, j) -> thread map is the same at every step, so c (LSTM) is
// updated in place by its one owner.
//
// Memory ordering. h_t rows are written by their owners and read by every block at step t+1, after
// grid_sync() (cooperative_groups' grid barrier, which orders memory across the grid). They are read with
// ld.global.cg (L2, not the SM's non-coherent L1 or the read-only path): an address a block never read
// before cannot be stale in its L1, but nothing here relies on that.
//
// Shared memory: Ws [K][G*units + 1] in the accumulation type (the padded stride keeps a warp's reads of
// one k on distinct banks), Hs [chunk rows][kTileK + 1]: the h_{t-1} tile of one K slice.
#pragma once

#include <cstdint>

#include "../cell_math.h"
#include "device_compat.h"
#include "params.h"

namespace fastrnn::cuda {

constexpr int kPersistentThreads = 256;

template <int kGates_, typename A>
struct FwdPersistentTraits {
  static constexpr int kGates = kGates_;
  static constexpr int kThreads = kPersistentThreads;
  static constexpr int kRowsPerThread = 4;
  static constexpr int kTileK = 32;
  static constexpr int kHStride = kTileK + 1;
  static constexpr int kMaxUnits = 32;

  static constexpr int groups(int units) { return kThreads / units; }
  static constexpr int chunk_rows(int units) { return groups(units) * kRowsPerThread; }
  static constexpr int64_t w_stride(int units) { return int64_t(kGates) * units + 1; }
  static constexpr int64_t smem_bytes(int units, int64_t K) {
    return (K * w_stride(units) + int64_t(chunk_rows(units)) * kHStride) * int64_t(sizeof(A));
  }
  static constexpr int64_t grid(int64_t H, int units) { return (H + units - 1) / units; }
};

template <typename S, Cell C>
using FwdPersistentTraitsFor = FwdPersistentTraits<gates_of(C), acc_t<S>>;

// A global load that bypasses L1 (ld.global.cg): for data another block wrote earlier in the same launch.
template <typename S>
__device__ __forceinline__ S load_cg(const S* p) {
#if defined(FASTRNN_CUDA_EMU)
  return *p;
#else
  return __ldcg(p);
#endif
}

template <typename S, Cell C>
__device__ __forceinline__ void fwd_persistent(const FwdSeqParams& p) {
  using A = acc_t<S>;
  using Tr = FwdPersistentTraitsFor<S, C>;
  constexpr int G = Tr::kGates;
  constexpr int R = Tr::kRowsPerThread;

  const int U = p.units;
  const int NG = Tr::groups(U);
  const int chunk = Tr::chunk_rows(U);
  const int64_t WS = Tr::w_stride(U);
  const int64_t H = p.H, K = p.K, GH = int64_t(G) * p.H, ld = p.ld_out;

  FASTRNN_DYNAMIC_SMEM(A, smem);
  A* Ws = smem;           // [K][WS]
  A* Hs = smem + K * WS;  // [chunk][kHStride]

  const int tid = static_cast<int>(threadIdx.x);
  const int u = tid % U;
  const int bg = tid / U;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  const int64_t j = j0 + u;

  const S* __restrict__ w = static_cast<const S*>(p.w_hh);
  const S* __restrict__ h0 = static_cast<const S*>(p.h_init);
  const S* __restrict__ gx = static_cast<const S*>(p.gx);
  const S* __restrict__ bhh = static_cast<const S*>(p.b_hh);
  S* out = static_cast<S*>(p.out);
  A* __restrict__ ws = static_cast<A*>(p.ws);

  // ---- this block's rows of W_hh, once for the whole sequence: Ws[k][g*U + uu] = W_hh[g*H + j0 + uu][k]
  for (int64_t idx = tid; idx < int64_t(G) * U * K; idx += Tr::kThreads) {
    const int64_t r = idx / K, k = idx % K;  // consecutive threads: consecutive k of one row (coalesced)
    const int64_t jj = j0 + r % U;
    Ws[k * WS + r] = jj < H ? to_float(w[((r / U) * H + jj) * K + k]) : A(0);
  }
  __syncthreads();

  // The bias of the thread's unit stays in registers for the whole sequence.
  A bias[G];
#pragma unroll
  for (int g = 0; g < G; ++g) bias[g] = (bhh != nullptr && j < H) ? to_float(bhh[g * H + j]) : A(0);

  for (int64_t s = 0; s < p.T; ++s) {
    const FwdSeqStep st = p.steps[s];
    const S* hp = out + st.off_prev * ld;  // the previous step's rows (read only for b < st.n_prev)
    for (int64_t c0 = 0; c0 < st.bs; c0 += chunk) {
      A acc[G][R];
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < R; ++i) acc[g][i] = A(0);

      for (int64_t k0 = 0; k0 < K; k0 += Tr::kTileK) {
        // Stage h_{t-1}[c0 .. c0+chunk, k0 .. k0+kTileK): consecutive threads read consecutive k of a row.
        for (int idx = tid; idx < chunk * Tr::kTileK; idx += Tr::kThreads) {
          const int rb = idx / Tr::kTileK, kk = idx % Tr::kTileK;
          const int64_t b = c0 + rb, k = k0 + kk;
          A v = A(0);
          if (b < st.bs && k < K) v = to_float(b < st.n_prev ? load_cg(hp + b * ld + k) : h0[b * K + k]);
          Hs[rb * Tr::kHStride + kk] = v;
        }
        __syncthreads();
        const int kn = K - k0 < Tr::kTileK ? static_cast<int>(K - k0) : Tr::kTileK;
        const A* wk = Ws + k0 * WS + u;
        for (int k = 0; k < kn; ++k) {
          A hv[R];
#pragma unroll
          for (int i = 0; i < R; ++i) hv[i] = Hs[(bg + i * NG) * Tr::kHStride + k];
#pragma unroll
          for (int g = 0; g < G; ++g) {
            const A wv = wk[k * WS + g * U];
#pragma unroll
            for (int i = 0; i < R; ++i) acc[g][i] += wv * hv[i];
          }
        }
        __syncthreads();  // every warp is done with this Hs tile before the next one is staged
      }

      // ---- epilogue: the cell of (b, j) from registers (no early return: every thread reaches grid_sync)
      if (j < H) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int64_t b = c0 + bg + i * NG;
          if (b >= st.bs) continue;
          const int64_t row = st.off + b;
          A ph[G];  // h-side pre-activations W_h* h + b_h*
#pragma unroll
          for (int g = 0; g < G; ++g) ph[g] = acc[g][i] + bias[g];
          const S* gxr = gx + row * GH + j;
          if constexpr (C == Cell::kLstm) {
            A* c = static_cast<A*>(p.c_state) + b * H + j;
            const LstmActs<A> a = lstm_forward<A>(to_float(gxr[0]) + ph[0], to_float(gxr[H]) + ph[1],
                                                  to_float(gxr[2 * H]) + ph[2], to_float(gxr[3 * H]) + ph[3], *c);
            *c = a.c;
            out[row * ld + j] = from_float<S>(a.h);
            if (ws != nullptr) {
              A* wr = ws + row * 5 * H + j;
              wr[0] = a.i;
              wr[H] = a.f;
              wr[2 * H] = a.g;
              wr[3 * H] = a.o;
              wr[4 * H] = a.c;
            }
          } else if constexpr (C == Cell::kGru) {
            const A hprev = to_float(b < st.n_prev ? load_cg(hp + b * ld + j) : h0[b * K + j]);
            const GruActs<A> a = gru_forward<A>(to_float(gxr[0]), to_float(gxr[H]), to_float(gxr[2 * H]), ph[0],
                                                ph[1], ph[2], hprev);
            out[row * ld + j] = from_float<S>(a.h);
            if (ws != nullptr) {
              A* wr = ws + row * 4 * H + j;
              wr[0] = a.r;
              wr[H] = a.z;
              wr[2 * H] = a.n;
              wr[3 * H] = a.hn;
            }
          } else {
            out[row * ld + j] = from_float<S>(rnn_forward<A>(to_float(gxr[0]), ph[0], p.relu != 0));
          }
        }
      }
    }
    // Step s's h rows are complete grid-wide before any block stages them for step s + 1.
#ifndef FASTRNN_EMU_DROP_GRID_SYNC
    ::fastrnn::grid_sync();
#endif
  }
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kPersistentThreads) lstm_fwd_persistent_kernel(const FwdSeqParams p) {
  fwd_persistent<S, Cell::kLstm>(p);
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kPersistentThreads) gru_fwd_persistent_kernel(const FwdSeqParams p) {
  fwd_persistent<S, Cell::kGru>(p);
}

template <typename S>
__global__ void FASTRNN_LAUNCH_BOUNDS(kPersistentThreads) rnn_fwd_persistent_kernel(const FwdSeqParams p) {
  fwd_persistent<S, Cell::kRnn>(p);
}

}  // namespace fastrnn::cuda
