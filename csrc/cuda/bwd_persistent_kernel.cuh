// Persistent backward kernels: ONE cooperative launch runs every step of a layer's direction's backward recurrence,
// in the opposite order of the forward. Each block owns `units` hidden units j and keeps W_hh[:, its units] (all
// G*H gate rows, the transpose side of the forward's slice) resident in shared memory for the whole sequence; per
// step it computes its units' slice of dh = dG_next @ W_hh for the step's rows (dG_next: the h-side gate gradients
// of the step processed just before, written by the whole grid; GRU: [dr, dz, dph_n]), adds grad_output and the
// carried dh, runs the pointwise backward (bwd_cell_epilogue, shared with the step kernel bwd_step_kernel.cuh),
// writes dG (GRU: dG_x and dph_n) and dc, then the grid meets at a grid-wide barrier before the next step reads dG.
// One iteration past the last step (and, for a reverse layer with packed sequences, the rows of `next` that started
// from h_init at every step: params.h BwdSeqStep) turns the rows that started from hx into grad_hx = carry +
// dG @ W_hh, in place in `carry`: what the step path's driver computes with a GEMM after its last launch.
//
// Launch contract (lstm/gru/rnn_bwd_persistent_kernel<S>; Tr = BwdPersistentTraitsFor<S, C>):
//   cooperative launch (cudaLaunchCooperativeKernel): every block resident at once, or the launch fails
//   grid   = dim3(Tr::grid(p.H, p.units), D, 1)    -- blockIdx.x: tile of p.units hidden units; blockIdx.y: the
//                                                     direction, D = 1 or 2 (a bidirectional layer in one launch)
//   block  = dim3(Tr::kThreads, 1, 1)              -- 256 threads
//   dynamic shared memory = Tr::smem_bytes(p.units, p.H)
//   args   = one BwdSeqLaunch (params.h): p = dir[blockIdx.y]; p.units a power of two in [1, 32]; p.T >= 1; p.steps
//            has T + 1 rows; with D = 2 both directions have the same T, H and units
//            (persistent_plan.h bwd_seq_steps). No LSTM projection (the host keeps the step path for it).
//
// Work split inside a block, as the forward's FMA kernel: thread tid owns unit u = tid % units and batch group
// bg = tid / units of groups = 256 / units; per chunk of groups * kRowsPerThread rows it accumulates rows
// b = chunk0 + bg + groups * i (i < kRowsPerThread). The (b, j) -> thread map is the same at every step, so carry
// and dc (rows of [B, H]) are read and written by their one owner only.
//
// A chunk with fewer rows than that (a batch smaller than the chunk: B = 64 against 256-row chunks at units = 4)
// computes only its live row slots and stages only their rows, and with fewer rows than groups the batch groups
// split the K loop between them instead (Traits::chunk_plan; the partials summed through shared memory afterwards):
// B = 1 keeps all 256 threads on the reduction instead of `units` of them. The shared memory the dead rows leave
// holds a wider K tile, so the G*H reduction takes fewer staged tiles, each of which waits one L2 round trip.
//
// Memory ordering: dG (and dph_n) rows are written by their owners and read by every block at the next iteration,
// after grid_sync() (cooperative_groups' grid barrier); they are read with ld.global.cg (L2), never through the
// read-only path.
//
// Shared memory (accumulation type): Ws [G*H][units]: Ws[g][u] = W_hh[g, j0 + u] (a warp reads one g: consecutive
// units, or one broadcast address); Ds [slots * rg rows][ds] within [chunk rows][kTileK + 1]: the dG_next tile of
// one slice of the G*H reduction (chunk_plan: a warp's loads hit distinct banks), then the split-K partials.
#pragma once

#include <cstdint>
#include <type_traits>

#include "bwd_step_kernel.cuh"
#include "fwd_persistent_kernel.cuh"  // kPersistentThreads, load_cg
#include "params.h"

namespace fastrnn::cuda {

template <int kGates_, typename A>
struct BwdPersistentTraits {
  static constexpr int kGates = kGates_;
  static constexpr int kThreads = kPersistentThreads;
  static constexpr int kRowsPerThread = 4;
  static constexpr int kTileK = 32;
  static constexpr int kDStride = kTileK + 1;
  static constexpr int kMaxUnits = 32;

  static constexpr int groups(int units) { return kThreads / units; }
  static constexpr int chunk_rows(int units) { return groups(units) * kRowsPerThread; }
  static constexpr int64_t smem_bytes(int units, int64_t H) {
    return (int64_t(kGates) * H * units + int64_t(chunk_rows(units)) * kDStride) * int64_t(sizeof(A));
  }
  static constexpr int64_t grid(int64_t H, int units) { return (H + units - 1) / units; }
  static constexpr int kMaxTileK = 4096;  // the widest K tile (G*H of an LSTM at H = 1024)

  // How a chunk of `rows` live rows (1 .. chunk_rows) is computed (chunk_plan; every field block-uniform):
  //   ks     split of the K loop: thread (u, bg) sums the k = phase (mod ks) of each tile, phase = bg % ks, for the
  //          row slot r = bg / ks; ks > 1 only when rows < groups, then rg = groups / ks >= rows and the ks partials
  //          of a row are summed through shared memory afterwards (in a fixed order: deterministic);
  //   rg     rows per slot (groups / ks); slots: live row slots i (thread rows r + i * rg), 1 .. kRowsPerThread;
  //   tk     the K tile: kTileK * 2^n as wide as the shared memory of the chunk_rows * kDStride tile allows for
  //          slots * rg staged rows of stride ds, at most kMaxTileK (fewer tiles: each waits one L2 round trip);
  //   ds     the staged row stride, tk + (ks < 32 ? ks : 1): the 32 / units batch groups of a warp read rows
  //          r * ds + phase whose banks r * ks + phase are distinct (ks >= 32: one row per warp, consecutive k).
  struct ChunkPlan {
    int ks, rg, slots, tk, ds;
  };
  static constexpr ChunkPlan chunk_plan(int rows, int units) {
    const int g = groups(units);
    ChunkPlan c{1, g, 1, kTileK, kTileK + 1};
    if (rows >= g) {
      const int n = (rows + g - 1) / g;
      c.slots = n > kRowsPerThread ? kRowsPerThread : n;
    } else {
      int rg = 1;
      while (rg < rows) rg *= 2;
      c.rg = rg;
      c.ks = g / rg;
    }
    const int pad = c.ks < 32 ? c.ks : 1;
    const int64_t room = int64_t(chunk_rows(units)) * kDStride;
    while (2 * c.tk <= kMaxTileK && int64_t(c.slots) * c.rg * (2 * c.tk + pad) <= room) c.tk *= 2;
    c.ds = c.tk + pad;
    return c;
  }
  static constexpr bool chunk_plans_fit() {
    for (int u = 1; u <= kMaxUnits; u *= 2) {
      if (kThreads > int64_t(chunk_rows(u)) * kDStride) return false;  // the split-K partials, one per thread
      for (int rows = 1; rows <= chunk_rows(u); ++rows) {
        const ChunkPlan c = chunk_plan(rows, u);
        if (int64_t(c.slots) * c.rg * c.ds > int64_t(chunk_rows(u)) * kDStride) return false;  // staged tile
        if (c.ks > 1 && (c.slots != 1 || c.rg * c.ks != groups(u) || c.rg < rows)) return false;
        if (c.ks == 1 && c.slots * groups(u) < rows) return false;
      }
    }
    return true;
  }
  static_assert(kTileK % 32 == 0, "Ds row stride tk + 1 = 1 (mod 32) words");
  static_assert(chunk_plans_fit(), "every chunk plan's staged tile and partials fit the chunk's Ds");
};

template <typename S, Cell C>
using BwdPersistentTraitsFor = BwdPersistentTraits<gates_of(C), acc_t<S>>;

// The cell's row pointers of one step (bwd_cell_epilogue reads them relative to the step's first row).
template <typename S, Cell C>
__device__ __forceinline__ BwdStepParams bwd_step_rows(const BwdSeqParams& p, const BwdSeqStep& st) {
  using A = acc_t<S>;
  const int64_t H = p.H;
  BwdStepParams q;
  q.H = H;
  q.relu = p.relu;
  q.dc_state = p.dc_state;
  q.dg = static_cast<S*>(p.dg) + st.off * int64_t(gates_of(C)) * H;
  if constexpr (C == Cell::kLstm) {
    q.ws = static_cast<const A*>(p.ws) + st.off * 5 * H;
    q.c_prev = static_cast<const A*>(p.c_prev) + st.off * H;
  } else if constexpr (C == Cell::kGru) {
    q.ws = static_cast<const A*>(p.ws) + st.off * 4 * H;
    q.dph_n = static_cast<S*>(p.dph_n) + st.off * H;
  } else {
    q.h_cur = static_cast<const S*>(p.out) + st.off * H;
  }
  return q;
}

// What the epilogue of iteration st reads for the block's units j0 .. j0+units of each of the step's rows, prefetched
// into L2 (as the forward's prefetch_step_gx): its workspace row (LSTM: i, f, g, o, c; GRU: r, z, n, hn), the LSTM's
// c_prev, grad_output, the GRU's h_prev (out or hx) and the RNN's h (out), all written before the launch; a segment
// per thread at a time. The kernels issue it for iteration s + 1 before the grid barrier that ends iteration s (and
// for the first before loading W).
template <typename S, Cell C>
__device__ __forceinline__ void prefetch_bwd_step(const BwdSeqParams& p, const BwdSeqStep& st, int64_t j0, int units,
                                                  int tid, int threads) {
  using A = acc_t<S>;
  constexpr int kWs = C == Cell::kLstm ? 5 : C == Cell::kGru ? 4 : 0;  // workspace segments per row
  constexpr int kSeg = kWs + 2;  // + grad_output, + c_prev (LSTM) / h_prev (GRU) / h (RNN)
  const int64_t H = p.H;
  const int64_t n = H - j0 < units ? H - j0 : units;  // the block's units inside H (j0 < H)
  for (int64_t idx = tid; idx < st.bs * kSeg; idx += threads) {
    const int64_t b = idx / kSeg;
    const int seg = static_cast<int>(idx % kSeg);
    if (seg < kWs) {
      ::fastrnn::prefetch_segment_l2(static_cast<const A*>(p.ws) + (st.off + b) * kWs * H + seg * H + j0, n);
    } else if (seg == kWs) {
      if (p.grad_out != nullptr)
        ::fastrnn::prefetch_segment_l2(static_cast<const S*>(p.grad_out) + st.go_off + b * p.ld_grad_out + j0, n);
    } else if constexpr (C == Cell::kLstm) {
      ::fastrnn::prefetch_segment_l2(static_cast<const A*>(p.c_prev) + (st.off + b) * H + j0, n);
    } else if constexpr (C == Cell::kGru) {
      const S* hp = b < st.n_prev ? static_cast<const S*>(p.out) + (st.off_prev + b) * H
                                  : static_cast<const S*>(p.h_init) + b * H;
      ::fastrnn::prefetch_segment_l2(hp + j0, n);
    } else {
      ::fastrnn::prefetch_segment_l2(static_cast<const S*>(p.out) + (st.off + b) * H + j0, n);
    }
  }
}

// Row b (< max(bs, bs_next)) of unit j at one iteration, given prod = (dG_next @ W_hh)[b, j] (zero for rows past
// bs_next): a row of `next` that started from hx takes grad_hx = carry + prod; a row of the step adds grad_output and
// the carried dh and runs the pointwise backward. Shared by the FMA and the tensor-core kernels.
template <typename S, Cell C>
__device__ __forceinline__ void bwd_persistent_row(const BwdSeqParams& p, const BwdStepParams& q, const BwdSeqStep& st,
                                                   int64_t b, int64_t j, acc_t<S> prod) {
  using A = acc_t<S>;
  const int64_t H = p.H, bj = b * H + j;
  A* carry = static_cast<A*>(p.carry);
  if (b >= st.bs) {
    carry[bj] += prod;
    return;
  }
  A dh = prod + carry[bj];
  if (p.grad_out != nullptr) dh += to_float(static_cast<const S*>(p.grad_out)[st.go_off + b * p.ld_grad_out + j]);
  A h_prev = A(0);
  if constexpr (C == Cell::kGru) {
    const S* hp = b < st.n_prev ? static_cast<const S*>(p.out) + (st.off_prev + b) * H
                                : static_cast<const S*>(p.h_init) + b * H;
    h_prev = to_float(hp[j]);
  }
  carry[bj] = bwd_cell_epilogue<S, C>(q, b, j, dh, h_prev);
}

template <typename S, Cell C>
__device__ __forceinline__ void bwd_persistent(const BwdSeqParams& p) {
  using A = acc_t<S>;
  using Tr = BwdPersistentTraitsFor<S, C>;
  constexpr int G = Tr::kGates;
  constexpr int R = Tr::kRowsPerThread;

  const int U = p.units;
  const int NG = Tr::groups(U);
  const int chunk = Tr::chunk_rows(U);
  const int64_t H = p.H, GH = int64_t(G) * p.H;

  FASTRNN_DYNAMIC_SMEM(A, smem);
  A* Ws = smem;           // [GH][U]
  A* Ds = smem + GH * U;  // [chunk][kDStride]

  const int tid = static_cast<int>(threadIdx.x);
  const int u = tid % U;
  const int bg = tid / U;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  const int64_t j = j0 + u;

  const S* __restrict__ w = static_cast<const S*>(p.w_hh);
  const S* dgx = static_cast<const S*>(p.dg);
  const S* dphn = static_cast<const S*>(p.dph_n);

  prefetch_bwd_step<S, C>(p, p.steps[0], j0, U, tid, Tr::kThreads);
  // ---- W_hh[:, this block's units], once for the whole sequence: Ws[g][uu] = W_hh[g][j0 + uu]
  for (int64_t idx = tid; idx < GH * U; idx += Tr::kThreads) {
    const int64_t g = idx / U, jj = j0 + idx % U;
    Ws[idx] = jj < H ? to_float(w[g * H + jj]) : A(0);
  }
  __syncthreads();

  for (int64_t s = 0; s <= p.T; ++s) {
    const BwdSeqStep st = p.steps[s];
    const BwdStepParams q = bwd_step_rows<S, C>(p, st);
    const int64_t rows = st.bs > st.bs_next ? st.bs : st.bs_next;
    for (int64_t c0 = 0; c0 < rows; c0 += chunk) {
      A acc[R];
#pragma unroll
      for (int i = 0; i < R; ++i) acc[i] = A(0);
      // split, live row slots and K tile of this chunk (block-uniform)
      const typename Tr::ChunkPlan cp = Tr::chunk_plan(rows - c0 < chunk ? static_cast<int>(rows - c0) : chunk, U);
      const int tk = cp.tk, ds = cp.ds, ks = cp.ks, rg = cp.rg, slots = cp.slots;
      const int phase = bg % ks, rslot = bg / ks;

      // ---- acc[i] = sum_g dG_next[b_i, g] * W_hh[g, j] for the rows of `next` (uniform over the block)
      if (c0 < st.bs_next) {
        for (int64_t k0 = 0; k0 < GH; k0 += tk) {
          // Stage dG_next[c0 .. c0 + slots*rg, k0 .. k0+tk): consecutive threads read consecutive k of a row.
          for (int idx = tid; idx < slots * rg * tk; idx += Tr::kThreads) {
            const int rb = idx / tk, kk = idx % tk;
            const int64_t b = c0 + rb, k = k0 + kk, row = st.off_next + b;
            A v = A(0);
            if (b < st.bs_next && k < GH) {
              if constexpr (C == Cell::kGru)  // the h side: [dr, dz] from dG_x, dph_n from its own buffer
                v = to_float(k < 2 * H ? load_cg(dgx + row * GH + k) : load_cg(dphn + row * H + (k - 2 * H)));
              else
                v = to_float(load_cg(dgx + row * GH + k));
            }
            Ds[rb * ds + kk] = v;
          }
          __syncthreads();
          const int kn = GH - k0 < tk ? static_cast<int>(GH - k0) : tk;
          const A* wk = Ws + k0 * U + u;
          for (int k = phase; k < kn; k += ks) {
            const A wv = wk[k * U];
#pragma unroll
            for (int i = 0; i < R; ++i)
              if (i < slots) acc[i] += Ds[(rslot + i * rg) * ds + k] * wv;
          }
          __syncthreads();  // every warp is done with this Ds tile before the next one is staged
        }
        if (ks > 1) {  // the row of batch group bg < rg: its ks partials, from threads (u, bg * ks + phase)
          A* part = Ds;  // [groups][U], one per thread (the last tile's reads ended at the barrier above)
          part[tid] = acc[0];
          __syncthreads();
          if (bg < rg) {
            A sum = A(0);
            for (int ph = 0; ph < ks; ++ph) sum += part[(bg * ks + ph) * U + u];
            acc[0] = sum;
          }
          __syncthreads();  // the partials are read before Ds is staged again
        }
      }

      // ---- epilogue (no early return: every thread reaches grid_sync)
      if (j < H) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int64_t b = c0 + bg + i * NG;
          if (b < rows) bwd_persistent_row<S, C>(p, q, st, b, j, acc[i]);
        }
      }
    }
    if (s < p.T) prefetch_bwd_step<S, C>(p, p.steps[s + 1], j0, U, tid, Tr::kThreads);
    // Step s's dG rows are complete grid-wide before any block stages them at iteration s + 1.
#ifndef FASTRNN_EMU_DROP_GRID_SYNC
    if (s < p.T) ::fastrnn::grid_sync();
#endif
  }
}

// One block per SM is the design (choose_units spreads the grid over the SMs first), so the kernels are built with
// __launch_bounds__(256, 1) as the tensor-core forward kernels: with __launch_bounds__(256) alone ptxas for sm_90 held
// the LSTM and RNN kernels at 64 registers with a 24-byte spill.
#if defined(__CUDACC__)
#define FASTRNN_PERSISTENT_BWD_BOUNDS __launch_bounds__(kPersistentThreads, 1)
#else
#define FASTRNN_PERSISTENT_BWD_BOUNDS
#endif

template <typename S>
__global__ void FASTRNN_PERSISTENT_BWD_BOUNDS lstm_bwd_persistent_kernel(const BwdSeqLaunch a) {
  bwd_persistent<S, Cell::kLstm>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_BWD_BOUNDS gru_bwd_persistent_kernel(const BwdSeqLaunch a) {
  bwd_persistent<S, Cell::kGru>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_BWD_BOUNDS rnn_bwd_persistent_kernel(const BwdSeqLaunch a) {
  bwd_persistent<S, Cell::kRnn>(a.dir[blockIdx.y]);
}


// ================================================================================ tensor-core (mma.sync) kernels
// {lstm,gru,rnn}_bwd_persistent_mma_kernel<S>: the same recurrence, split, rows and barrier as above, with the
// product dG_next @ W_hh[:, units] on the tensor cores. The operands are the other way round from the forward's:
// A = the chunk's rows of dG_next as stored (M = rows, m-tiles of 16; each row's G*H values contiguous; GRU: [dr, dz]
// from dG_x, then dph_n), B = the block's columns of W_hh (N = units, n-tiles of 8), resident in B-fragment order.
// With the units as N a block of 4 units pads its product 2x (to an n-tile of 8) instead of 4x (to an m-tile of 16),
// and the resident fragments are half the forward's layout's size. A chunk of at most 8 rows stages 8 rows and
// feeds zeros as the upper half of each A fragment, so a small batch stages passes as wide as the forward's.
// S = __nv_bfloat16 / __half: m16n8k16 on the stored 16-bit values of W and dG (the FMA kernel multiplies the same
// values: both store dG in S), fp32 accumulation; S = float: m16n8k8 .tf32 (W and dG rounded to TF32 by cvt.rna),
// only when the host allows TF32 (torch.backends.cudnn.allow_tf32, as for the forward); otherwise, and for float64,
// the FMA kernel above.
//
// Launch contract: as the FMA kernel, with Tr = BwdPersistentMmaTraitsFor<S, C> (grid, kThreads = 256,
// smem_bytes(units, H)); p.units a power of two in [1, 32].
//
// Shared memory (b32 words):
//   Wb  [NT][KT][32 lanes][2]: W_hh[:, units] once per launch in the B-fragment order of the PTX ISA (m16n8k16:
//       register i of lane (g, q) holds k = 2q + 8i and the next k as a 16-bit pair, n = g; m16n8k8 .tf32:
//       k = q + 4i, n = g), one 64-bit load per lane, 256 contiguous bytes per warp; KT = ceil(G*H / kK); zeros past
//       the block's units, H and G*H.
//   Hs  the forward's staging buffer (MmaStaging: rows at stride tile_words(rows) + 4 = 4 (mod 32): the
//       A-fragment loads (lane (g, q): word g * stride + q, and + 4, and the rows 8 further) hit 32 distinct banks.
//   Gs  [kGsRows][g_stride] fp32: the partial tiles, [ks][row][unit]; g_stride = 8 (mod 32) makes the fragment
//       stores (lane (g, q): units 2q and 2q + 1 as one 64-bit store, rows g and g + 8) conflict-free.
template <int kGates_, typename S>
struct BwdPersistentMmaTraits {
  static constexpr int kGates = kGates_;
  static constexpr int kThreads = kPersistentThreads;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kRowsPerThread = 4;
  using Staging = MmaStaging<S>;  // the staging buffer and its K passes (tile_words, h_stride_words)
  static constexpr bool kTf32 = Staging::kTf32;
  static constexpr int kElemBytes = Staging::kElemBytes;
  static constexpr int kK = Staging::kK;
  static constexpr int kMaxCols = Staging::kMaxCols;  // rows per chunk
  static constexpr int kHsWords = Staging::kMaxCols * Staging::kHStrideWords;
  static constexpr int kMaxTilesPerWarp = 4;
  static constexpr int kMaxUnits = 32;
  static constexpr int kMinUnits = 8;  // the planner's least units per block: one full n-tile (persistent_plan.h)
  // split-K partials: KS * m-tiles * 16 rows, at most 2 * kMaxCols (tiles * KS <= kWarps whenever KS > 1)
  static constexpr int kGsRows = 2 * kMaxCols;

  static constexpr int groups(int units) { return kThreads / units; }
  static constexpr int chunk_cols(int units) {
    return groups(units) * kRowsPerThread < kMaxCols ? groups(units) * kRowsPerThread : kMaxCols;
  }
  static constexpr int n_tiles(int units) { return (units + 7) / 8; }
  // m-tiles of a chunk of `rows` rows, and the rows it stages (8 when at most 8: the fragments' upper halves are zeros)
  static constexpr int m_tiles(int rows) { return (rows + 15) / 16; }
  static constexpr int staged_rows(int rows) { return rows <= 8 ? 8 : m_tiles(rows) * 16; }
  static constexpr int64_t k_steps(int64_t K) { return (K + kK - 1) / kK; }
  static constexpr int g_stride(int units) { return (units + 31) / 32 * 32 + 8; }
  static constexpr int64_t smem_bytes(int units, int64_t H) {
    return int64_t(n_tiles(units)) * k_steps(kGates * H) * 32 * 8 + int64_t(kHsWords) * 4 +
           int64_t(kGsRows) * g_stride(units) * 4;
  }
  static constexpr int64_t grid(int64_t H, int units) { return (H + units - 1) / units; }
  static constexpr bool tiles_fit() {
    for (int u = 1; u <= kMaxUnits; u *= 2)
      for (int rows = 1; rows <= chunk_cols(u); ++rows) {
        const int tiles = m_tiles(rows) * n_tiles(u);
        if (tiles > kWarps * kMaxTilesPerWarp || staged_rows(rows) > kMaxCols) return false;
        int ks = 1;
        while (2 * ks * tiles <= kWarps) ks *= 2;
        if (ks * m_tiles(rows) * 16 > kGsRows) return false;
      }
    return true;
  }
  static_assert(tiles_fit(), "every chunk's output tiles fit the warps' accumulators and its partials Gs");
  static_assert(g_stride(1) % 32 == 8 && g_stride(32) % 32 == 8, "Gs fragment stores: stride = 8 (mod 32) words");
};

template <typename S, Cell C>
using BwdPersistentMmaTraitsFor = BwdPersistentMmaTraits<gates_of(C), S>;

// One chunk's dG_next @ W_hh[:, units] on the tensor cores: the fp32 partial tiles go to Gs[ks][row][unit] (row <
// ks_rows, the chunk's m-tiles x 16; returned with KS). stage(c, wd, k0): the b32 word wd of row c < nrows in the pass
// from k0, as mma_chunk_partials' (fwd_persistent_kernel.cuh). Every thread of the block calls it; it ends with a
// barrier (Gs readable by any thread), and its first barrier comes before any store to Gs.
struct BwdMmaPartials {
  int ks, ks_rows;
};
template <class Tr, typename S, class Stage>
__device__ __forceinline__ BwdMmaPartials bwd_mma_chunk_partials(const MmaSmem& sm, int NT, int64_t KT, int64_t K,
                                                                 int GS, int nrows, Stage&& stage) {
  constexpr int kK = Tr::kK;
  constexpr int kWordsPerStep = kK * Tr::kElemBytes / 4;  // b32 words of one k-step of one row (8 for both)
  const std::uint32_t* Wb = sm.Wf;
  std::uint32_t* Hs = sm.Hs;
  float* Gs = sm.Gs;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int fg = lane / 4, fq = lane % 4;
  const bool half = nrows <= 8;  // one m-tile of which only rows 0..7 exist: zeros in a[1], a[3]
  const int MT = Tr::m_tiles(nrows);
  const int staged = Tr::staged_rows(nrows);
  const int HSW = Tr::Staging::h_stride_words(staged);
  const int tile_k = Tr::Staging::tile_words(staged) * 4 / Tr::kElemBytes;
  const WarpTiles<Tr::kWarps> wt(MT * NT, KT, warp);
  const int mine = wt.mine;
  int ha_off[Tr::kMaxTilesPerWarp], wb_off[Tr::kMaxTilesPerWarp];  // b32 offsets of its A rows / B fragments
#pragma unroll
  for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t) {
    const int tile = wt.tile(t);
    ha_off[t] = ((tile % MT) * 16 + fg) * HSW + fq;
    wb_off[t] = ((tile / MT) * static_cast<int>(KT) * 32 + lane) * 2;
  }
  float acc[Tr::kMaxTilesPerWarp][4];
#pragma unroll
  for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[t][e] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += tile_k) {
    const int kn = K - k0 < tile_k ? static_cast<int>(K - k0) : tile_k;
    const int nsteps = (kn + kK - 1) / kK;
    const int wn = nsteps * kWordsPerStep;
    for (int idx = tid; idx < staged * wn; idx += Tr::kThreads) {
      const int c = idx / wn, wd = idx % wn;
      Hs[c * HSW + wd] = c < nrows ? stage(c, wd, k0) : 0u;
    }
    __syncthreads();
    const int kt0 = static_cast<int>(k0 / kK);
    for (int kk = wt.ks_w; kk < nsteps; kk += wt.ks) {
      const int a_off = kk * kWordsPerStep, b_off = (kt0 + kk) * 64;
#pragma unroll
      for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t) {
        if (t < mine) {  // warp-uniform
          std::uint32_t a[4], b[2];
          a[0] = Hs[ha_off[t] + a_off];
          a[2] = Hs[ha_off[t] + a_off + 4];
          a[1] = half ? 0u : Hs[ha_off[t] + 8 * HSW + a_off];
          a[3] = half ? 0u : Hs[ha_off[t] + 8 * HSW + a_off + 4];
          load_b_fragment(Wb + wb_off[t] + b_off, b);
          mma_fp32_acc<S>(acc[t], a, b);
        }
      }
    }
    __syncthreads();  // every warp is done with this Hs tile before the next one is staged
  }

  // ---- partial tiles to Gs[ks][row][unit]: units 2q, 2q + 1 of rows g and g + 8 (any earlier reads of Gs ended
  // before the barriers above)
  const int ks_rows = MT * 16;
#pragma unroll
  for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t) {
    const int it = warp + Tr::kWarps * t;
    if (it >= wt.items) break;
    const int tile = it % wt.tiles, ks = it / wt.tiles;
    const int row = ks * ks_rows + (tile % MT) * 16 + fg;
    const int unit = (tile / MT) * 8 + 2 * fq;
    store_float2(Gs + row * GS + unit, acc[t][0], acc[t][1]);
    store_float2(Gs + (row + 8) * GS + unit, acc[t][2], acc[t][3]);
  }
  __syncthreads();
  return BwdMmaPartials{wt.ks, ks_rows};
}

template <typename S, Cell C>
__device__ __forceinline__ void bwd_persistent_mma(const BwdSeqParams& p) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>,
                "tensor cores: bf16, fp16, TF32 (float); float64 stays on the FMA kernel");
  using A = acc_t<S>;
  using Tr = BwdPersistentMmaTraitsFor<S, C>;
  constexpr int G = gates_of(C);
  constexpr int R = Tr::kRowsPerThread;
  constexpr int kK = Tr::kK;

  const int U = p.units;
  const int NG = Tr::groups(U);
  const int chunk = Tr::chunk_cols(U);
  const int NT = Tr::n_tiles(U);
  const int GS = Tr::g_stride(U);
  const int64_t H = p.H, GH = int64_t(G) * p.H;
  const int64_t KT = Tr::k_steps(GH);

  FASTRNN_DYNAMIC_SMEM(std::uint32_t, smem);
  std::uint32_t* Hs = smem + int64_t(NT) * KT * 64;
  const MmaSmem sm{smem, Hs, reinterpret_cast<float*>(Hs + Tr::kHsWords)};  // Wb, Hs, Gs

  const int tid = static_cast<int>(threadIdx.x);
  const int u = tid % U;
  const int bg = tid / U;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  const int64_t j = j0 + u;

  const S* __restrict__ w = static_cast<const S*>(p.w_hh);
  const S* dgx = static_cast<const S*>(p.dg);
  const S* dphn = static_cast<const S*>(p.dph_n);

  prefetch_bwd_step<S, C>(p, p.steps[0], j0, U, tid, Tr::kThreads);
  // ---- B[k][n] = W_hh[k][j0 + n] in B-fragment order, once for the whole sequence (zeros past the block's units,
  // H and G*H)
  auto w_at = [&](int n, int64_t k) -> S {
    const int64_t jj = j0 + n;
    return (n < U && jj < H && k < GH) ? w[k * H + jj] : from_float<S>(A(0));
  };
  for (int64_t idx = tid; idx < int64_t(NT) * KT * 64; idx += Tr::kThreads) {
    const int i = static_cast<int>(idx & 1), l = static_cast<int>((idx >> 1) & 31);
    const int64_t tk = idx >> 6, kt = tk % KT;
    const int n = static_cast<int>(tk / KT) * 8 + (l >> 2);
    if constexpr (Tr::kTf32) {
      sm.Wf[idx] = ::fastrnn::f32_to_tf32(w_at(n, kt * kK + (l & 3) + 4 * i));
    } else {
      const int64_t k = kt * kK + 2 * (l & 3) + 8 * i;
      sm.Wf[idx] = operand_bits(w_at(n, k)) | (operand_bits(w_at(n, k + 1)) << 16);
    }
  }
  __syncthreads();

  // 16-bit dG: a pair of k values in one 32-bit load when every pair is 4-byte aligned (H even: the pairs of a GRU's
  // dph_n part start at an even k too).
  const bool pairs = !Tr::kTf32 && H % 2 == 0 && reinterpret_cast<std::uintptr_t>(dgx) % 4 == 0 &&
                     reinterpret_cast<std::uintptr_t>(dphn) % 4 == 0;

  for (int64_t s = 0; s <= p.T; ++s) {
    const BwdSeqStep st = p.steps[s];
    const BwdStepParams q = bwd_step_rows<S, C>(p, st);
    const int64_t rows = st.bs > st.bs_next ? st.bs : st.bs_next;
    for (int64_t c0 = 0; c0 < rows; c0 += chunk) {
      const int ncols = rows - c0 < chunk ? static_cast<int>(rows - c0) : chunk;
      // the chunk's rows of `next` (block-uniform; none: every product of the chunk is zero)
      const int64_t live = st.bs_next - c0;
      const int nnext = live <= 0 ? 0 : live < ncols ? static_cast<int>(live) : ncols;
      BwdMmaPartials part{0, 0};
      if (nnext > 0) {
        part = bwd_mma_chunk_partials<Tr, S>(sm, NT, KT, GH, GS, nnext,
                                             [&](int c, int wd, int64_t k0) -> std::uint32_t {
          const int64_t row = st.off_next + c0 + c;
          auto dg_at = [&](int64_t k) -> S {  // the h side of dG_next[row][k], zero past G*H
            if (k >= GH) return from_float<S>(A(0));
            if constexpr (C == Cell::kGru)
              if (k >= 2 * H) return load_cg(dphn + row * H + (k - 2 * H));
            return load_cg(dgx + row * GH + k);
          };
          if constexpr (Tr::kTf32) {
            return ::fastrnn::f32_to_tf32(dg_at(k0 + wd));
          } else {
            const int64_t k = k0 + 2 * wd;
            if (pairs && k < GH) {  // both values with one 32-bit load (k, H and G*H even)
              if constexpr (C == Cell::kGru)
                if (k >= 2 * H) return load_cg_b32(dphn + row * H + (k - 2 * H));
              return load_cg_b32(dgx + row * GH + k);
            }
            return operand_bits(dg_at(k)) | (operand_bits(dg_at(k + 1)) << 16);
          }
        });
      }

      // ---- epilogue (no early return: every thread reaches grid_sync)
      if (j < H) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int bl = bg + i * NG;
          if (bl >= ncols) break;
          float prod = 0.f;  // the KS partials in a fixed order (deterministic)
          if (bl < nnext)
            for (int ks = 0; ks < part.ks; ++ks) prod += sm.Gs[(ks * part.ks_rows + bl) * GS + u];
          bwd_persistent_row<S, C>(p, q, st, c0 + bl, j, prod);
        }
      }
    }
    if (s < p.T) prefetch_bwd_step<S, C>(p, p.steps[s + 1], j0, U, tid, Tr::kThreads);
    // Step s's dG rows are complete grid-wide before any block stages them at iteration s + 1 (the grid barrier also
    // ends this step's epilogue reads of Gs before the next step's fragment stores).
#ifndef FASTRNN_EMU_DROP_GRID_SYNC
    if (s < p.T) ::fastrnn::grid_sync();
#endif
  }
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_MMA_BOUNDS lstm_bwd_persistent_mma_kernel(const BwdSeqLaunch a) {
  bwd_persistent_mma<S, Cell::kLstm>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_MMA_BOUNDS gru_bwd_persistent_mma_kernel(const BwdSeqLaunch a) {
  bwd_persistent_mma<S, Cell::kGru>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_MMA_BOUNDS rnn_bwd_persistent_mma_kernel(const BwdSeqLaunch a) {
  bwd_persistent_mma<S, Cell::kRnn>(a.dir[blockIdx.y]);
}

}  // namespace fastrnn::cuda
