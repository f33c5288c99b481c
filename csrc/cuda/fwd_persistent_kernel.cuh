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
//   grid   = dim3(Tr::grid(p.H, p.units), D, 1)    -- blockIdx.x: tile of p.units hidden units; blockIdx.y: the
//                                                     direction, D = 1 or 2 (a bidirectional layer in one launch)
//   block  = dim3(Tr::kThreads, 1, 1)              -- 256 threads
//   dynamic shared memory = Tr::smem_bytes(p.units, p.K)
//   args   = one FwdSeqLaunch (params.h): p = dir[blockIdx.y]; p.units a power of two in [1, 32]; p.K == p.H;
//            p.T >= 1; with D = 2 both directions have the same T, H and units (the barrier counts steps of both)
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
//
// Two kernels per cell (the host picks one, persistent_launcher.cuh):
//   {lstm,gru,rnn}_fwd_persistent_kernel<S>      fp32/fp64 FMA: float64, and float32 with TF32 not allowed
//                                                (torch.backends.cudnn.allow_tf32 False): exact fp32 products.
//   {lstm,gru,rnn}_fwd_persistent_mma_kernel<S>  tensor cores (below): bf16 and fp16 (mma.sync m16n8k16, fp32
//                                                accumulation), float32 with TF32 allowed (m16n8k8 .tf32).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// The cell of (row b of step st, unit j) from its h-side pre-activations ph = W_h* h_{t-1} + b_h* (one per gate):
// reads gx (and, GRU, h_{t-1}), applies cell_math.h, writes h, c (LSTM) and the workspace (train). Shared by the
// FMA and the tensor-core kernels, so both compute the same cell from the same pre-activations.
template <typename S, Cell C>
__device__ __forceinline__ void fwd_cell_epilogue(const FwdSeqParams& p, const FwdSeqStep& st, int64_t b, int64_t j,
                                                  const acc_t<S> (&ph)[gates_of(C)]) {
  using A = acc_t<S>;
  const int64_t H = p.H, K = p.K, GH = int64_t(gates_of(C)) * p.H, ld = p.ld_out;
  const int64_t row = st.off + b;
  S* out = static_cast<S*>(p.out);
  A* __restrict__ ws = static_cast<A*>(p.ws);
  const S* gxr = static_cast<const S*>(p.gx) + row * GH + j;
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
    const S* hp = out + st.off_prev * ld;
    const A hprev = to_float(b < st.n_prev ? load_cg(hp + b * ld + j) : static_cast<const S*>(p.h_init)[b * K + j]);
    const GruActs<A> a =
        gru_forward<A>(to_float(gxr[0]), to_float(gxr[H]), to_float(gxr[2 * H]), ph[0], ph[1], ph[2], hprev);
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

// The x-side pre-activations the epilogue of step st reads for the block's units j0 .. j0+units (G segments of at most
// `units` elements per row), prefetched into L2, a segment per thread at a time. The kernels issue it for step s + 1 before the grid barrier that ends step s (and for the
// first step before loading W), so the HBM latency of those loads overlaps the barrier and the next product instead
// of following them (gx is written before the launch, never in it).
template <typename S, Cell C>
__device__ __forceinline__ void prefetch_step_gx(const FwdSeqParams& p, const FwdSeqStep& st, int64_t j0, int units,
                                                 int tid, int threads) {
  constexpr int G = gates_of(C);
  const int64_t H = p.H, GH = G * p.H;
  const int64_t n = H - j0 < units ? H - j0 : units;  // the block's units inside H (j0 < H)
  const S* gx = static_cast<const S*>(p.gx);
  for (int64_t idx = tid; idx < st.bs * G; idx += threads)
    ::fastrnn::prefetch_segment_l2(gx + (st.off + idx / G) * GH + (idx % G) * H + j0, n);
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
  const int64_t H = p.H, K = p.K, ld = p.ld_out;

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
  const S* __restrict__ bhh = static_cast<const S*>(p.b_hh);
  const S* out = static_cast<const S*>(p.out);

  prefetch_step_gx<S, C>(p, p.steps[0], j0, U, tid, Tr::kThreads);
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
          A ph[G];  // h-side pre-activations W_h* h + b_h*
#pragma unroll
          for (int g = 0; g < G; ++g) ph[g] = acc[g][i] + bias[g];
          fwd_cell_epilogue<S, C>(p, st, b, j, ph);
        }
      }
    }
    if (s + 1 < p.T) prefetch_step_gx<S, C>(p, p.steps[s + 1], j0, U, tid, Tr::kThreads);
    // Step s's h rows are complete grid-wide before any block stages them for step s + 1.
#ifndef FASTRNN_EMU_DROP_GRID_SYNC
    ::fastrnn::grid_sync();
#endif
  }
}

// __launch_bounds__(256, 2): at most 128 registers, the budget (register_budget.txt), which still keeps 2 blocks per SM
// for the planner's fallback of several blocks per SM. With __launch_bounds__(256) alone ptxas held the float32 GRU
// (sm_80) and the float64 RNN kernels at 64-80 registers with an 8-40 byte stack once the direction came from the
// launch's grid row (FwdSeqLaunch).
#if defined(__CUDACC__)
#define FASTRNN_PERSISTENT_FWD_BOUNDS __launch_bounds__(kPersistentThreads, 2)
#else
#define FASTRNN_PERSISTENT_FWD_BOUNDS
#endif

template <typename S>
__global__ void FASTRNN_PERSISTENT_FWD_BOUNDS lstm_fwd_persistent_kernel(const FwdSeqLaunch a) {
  fwd_persistent<S, Cell::kLstm>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_FWD_BOUNDS gru_fwd_persistent_kernel(const FwdSeqLaunch a) {
  fwd_persistent<S, Cell::kGru>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_FWD_BOUNDS rnn_fwd_persistent_kernel(const FwdSeqLaunch a) {
  fwd_persistent<S, Cell::kRnn>(a.dir[blockIdx.y]);
}

// ================================================================================ tensor-core (mma.sync) kernels
// {lstm,gru,rnn}_fwd_persistent_mma_kernel<S>: the same sequence, split and barrier as above, with
// h_{t-1} @ W_slice^T on the tensor cores. S = __nv_bfloat16 / __half: mma.sync.m16n8k16 on the stored 16-bit
// values (exact products), fp32 accumulation. S = float: mma.sync.m16n8k8 .tf32 (W and h rounded to TF32 by
// cvt.rna, fp32 accumulation): what torch.backends.cudnn.allow_tf32 allows; with it off the host launches the FMA
// kernel above instead (persistent_launcher.cuh). The cell math is fwd_cell_epilogue, shared with the FMA kernel.
//
// Launch contract: as the FMA kernel, with Tr = FwdPersistentMmaTraitsFor<S, C> (grid, kThreads = 256,
// smem_bytes(units, K)); p.units a power of two in [1, 32].
//
// The product is D = W_slice (M = G*units rows, row r = gate*units + u) x h_{t-1}^T (N = batch rows): W is the A
// operand (rows padded to m-tiles of 16 with zeros), h the B operand ("col": each batch row's k values are
// contiguous, as h is stored), so a batch of up to 8 rows is one n-tile: the small-batch case wastes no MMA width.
// Per chunk of up to kMaxCols batch rows the block's MT x NT output tiles go to its 8 warps (at most
// kMaxTilesPerWarp each); when there are fewer than 8 tiles the k-steps are split between warps too (split-K by
// k-step index modulo KS), so a small batch still keeps all 8 warps on the K loop. Each warp stores its fp32 partial
// tiles in Gs [KS][cols][row]; after a barrier the epilogue threads (unit u, batch group bg, as in the FMA kernel)
// sum the KS partials in a fixed order (deterministic), add b_hh and run the cell.
//
// Shared memory (b32 words):
//   Wf  [MT][KT][32 lanes][4]: W_slice once per launch in the A-fragment order of the PTX ISA (m16n8k16: register i
//       of lane (g = lane/4, q = lane%4) holds row g + 8*(i&1), k = 2q + 8*(i>>1) and the next k as a bf16x2/f16x2
//       pair; m16n8k8 .tf32: row g + 8*(i&1), k = q + 4*(i>>1)), so each lane reads its whole A fragment with one
//       128-bit load and a warp reads 512 contiguous bytes: no bank conflicts. KT = ceil(K / kK) k-steps, the
//       k >= K and row >= M entries are zeros.
//   Hs  kMaxCols x kHStrideWords words: a pass of K of each batch row (16-bit pairs or TF32 bits), staged from L2
//       with ld.global.cg: 256 bytes of each of 64 rows, wider for fewer rows (tile_words: 2 KB at 8 rows); the row
//       stride is tile + 4 = 4 (mod 32) words, so the B-fragment loads (lane (g, q) reads word g*stride + q) hit 32
//       distinct banks. Rows beyond the chunk's rows and k >= K are zeros.
//   Gs  [kMaxCols][g_stride] fp32: the partial tiles; g_stride = 4 (mod 32) makes the fragment stores (lane (g, q):
//       column 2q (+1), row g (+8)) conflict-free; the epilogue's reads are at most 2-way conflicted.
//
// MmaStaging<S>: the staging buffer Hs of both tensor-core products (this forward's B operand, the backward's A
// operand: bwd_persistent_kernel.cuh) and its K passes, which depend on the operand type only.
template <typename S>
struct MmaStaging {
  static constexpr int kThreads = kPersistentThreads;
  static constexpr int kWarps = kThreads / 32;
  static constexpr bool kTf32 = sizeof(S) == 4;      // float: TF32 operands; the 16-bit types: their own bits
  static constexpr int kElemBytes = kTf32 ? 4 : 2;    // bytes of one operand element in shared memory
  static constexpr int kK = kTf32 ? 8 : 16;           // k of one mma
  static constexpr int kTileK = 256 / kElemBytes;     // k elements of each row staged per pass of a full chunk: 256 B
  static constexpr int kHStrideWords = kTileK * kElemBytes / 4 + 4;  // 68 = 4 (mod 32)
  static constexpr int kTileWords = kTileK * kElemBytes / 4;         // 64
  static constexpr int kMaxTileWords = 512;  // 2 KB of each row: the widest pass (8 rows fill the staging buffer)
  static constexpr int kMaxCols = 64;                 // batch rows per chunk: 8 n-tiles

  // The K pass of a chunk whose rows fill `rows` (a multiple of 8: its n-tiles) staged rows: kTileWords * 2^n b32
  // words of each row, as wide as the staging buffer (kMaxCols rows of kHStrideWords) holds at a row stride of
  // tile + 4 words, at most kMaxTileWords. A chunk of few rows (small batch) takes fewer, wider passes, each of which
  // waits one L2 round trip: at 8 rows 2 KB per row (512 TF32 / 1024 bf16 k), 8x the full chunk's 256 B. Every
  // stride is = 4 (mod 32) words: the B-fragment loads (lane (g, q): word g * stride + q) hit 32 distinct banks.
  static constexpr int tile_words(int rows) {
    int tw = kTileWords;
    while (2 * tw <= kMaxTileWords && rows * (2 * tw + 4) <= kMaxCols * kHStrideWords) tw *= 2;
    return tw;
  }
  static constexpr int h_stride_words(int rows) { return tile_words(rows) + 4; }
  static constexpr bool tiles_of_every_chunk_fit() {
    for (int rows = 8; rows <= kMaxCols; rows += 8)
      if (rows * h_stride_words(rows) > kMaxCols * kHStrideWords || h_stride_words(rows) % 32 != 4 ||
          tile_words(rows) % kTileWords != 0)
        return false;
    return true;
  }
  static_assert(kTileK % (kWarps * kK) == 0, "split-K by k-step index needs whole groups of 8 k-steps per pass");
  static_assert(kHStrideWords % 32 == 4, "B-fragment loads: row stride = 4 (mod 32) words");
  static_assert(tiles_of_every_chunk_fit(), "every chunk's K pass fits the staging buffer at a conflict-free stride");
};

// kRowsPerUnit: the A operand's rows per hidden unit (the forward's G gate rows of W_hh).
template <int kRowsPerUnit_, typename S>
struct PersistentMmaTraits : MmaStaging<S> {
  using Staging = MmaStaging<S>;
  static constexpr int kRowsPerUnit = kRowsPerUnit_;
  static constexpr int kThreads = Staging::kThreads;
  static constexpr int kWarps = Staging::kWarps;
  static constexpr int kMaxCols = Staging::kMaxCols;
  static constexpr int kHStrideWords = Staging::kHStrideWords;
  static constexpr int kK = Staging::kK;
  static constexpr int kRowsPerThread = 4;
  static constexpr int kMaxTilesPerWarp = 4;
  static constexpr int kMaxUnits = 32;

  static constexpr int groups(int units) { return kThreads / units; }
  static constexpr int chunk_cols(int units) {
    return groups(units) * kRowsPerThread < kMaxCols ? groups(units) * kRowsPerThread : kMaxCols;
  }
  static constexpr int m_tiles(int units) { return (kRowsPerUnit * units + 15) / 16; }
  static constexpr int64_t k_steps(int64_t K) { return (K + kK - 1) / kK; }
  static constexpr int g_stride(int units) { return (kRowsPerUnit * units + 31) / 32 * 32 + 4; }
  static constexpr int64_t smem_bytes(int units, int64_t K) {
    return int64_t(m_tiles(units)) * k_steps(K) * 32 * 16 + int64_t(kMaxCols) * kHStrideWords * 4 +
           int64_t(kMaxCols) * g_stride(units) * 4;
  }
  static constexpr int64_t grid(int64_t H, int units) { return (H + units - 1) / units; }
  // Every power-of-two unit count has at most kWarps * kMaxTilesPerWarp output tiles per chunk.
  static constexpr bool tiles_fit() {
    for (int u = 1; u <= kMaxUnits; u *= 2)
      if (m_tiles(u) * (chunk_cols(u) / 8) > kWarps * kMaxTilesPerWarp) return false;
    return true;
  }
  static_assert(tiles_fit(), "a chunk has more output tiles than the warps hold accumulators for");
};

template <int kGates_, typename S>
using FwdPersistentMmaTraits = PersistentMmaTraits<kGates_, S>;

template <typename S, Cell C>
using FwdPersistentMmaTraitsFor = FwdPersistentMmaTraits<gates_of(C), S>;

// The 16 bits of a bf16/fp16 value (the mma operand), and the TF32 operand of a float (cvt.rna).
__device__ __forceinline__ std::uint32_t operand_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ std::uint32_t operand_bits(__half x) { return __half_as_ushort(x); }

template <typename S>
__device__ __forceinline__ void mma_fp32_acc(float d[4], const std::uint32_t a[4], const std::uint32_t b[2]) {
  if constexpr (std::is_same_v<S, __nv_bfloat16>) ::fastrnn::mma_m16n8k16_bf16(d, a, b, d);
  else if constexpr (std::is_same_v<S, __half>) ::fastrnn::mma_m16n8k16_f16(d, a, b, d);
  else ::fastrnn::mma_m16n8k8_tf32(d, a, b, d);
}

// Two adjacent 16-bit values (the lower k in the low half, as the mma operands pack them) with one 32-bit load, from
// memory written earlier in the same launch (ld.global.cg) or not (plain load); p is 4-byte aligned.
template <typename S>
__device__ __forceinline__ std::uint32_t load_cg_b32(const S* p) {
  static_assert(sizeof(S) == 2, "pairs of 16-bit values");
#if defined(FASTRNN_CUDA_EMU)
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return __ldcg(reinterpret_cast<const unsigned int*>(p));
#endif
}
template <typename S>
__device__ __forceinline__ std::uint32_t load_b32(const S* p) {
  static_assert(sizeof(S) == 2, "pairs of 16-bit values");
#if defined(FASTRNN_CUDA_EMU)
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return *reinterpret_cast<const unsigned int*>(p);
#endif
}

// One lane's A fragment: four b32 words, one 128-bit shared-memory load on the GPU.
__device__ __forceinline__ void load_a_fragment(const std::uint32_t* p, std::uint32_t a[4]) {
#if defined(__CUDACC__)
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  a[0] = v.x;
  a[1] = v.y;
  a[2] = v.z;
  a[3] = v.w;
#else
  for (int i = 0; i < 4; ++i) a[i] = p[i];
#endif
}

// One lane's B fragment (m16n8k16 / m16n8k8): two b32 words, one 64-bit shared-memory load on the GPU (p 8-byte
// aligned).
__device__ __forceinline__ void load_b_fragment(const std::uint32_t* p, std::uint32_t b[2]) {
#if defined(__CUDACC__)
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  b[0] = v.x;
  b[1] = v.y;
#else
  b[0] = p[0];
  b[1] = p[1];
#endif
}

// Two adjacent fp32 values with one 64-bit shared-memory store on the GPU; p 8-byte aligned.
__device__ __forceinline__ void store_float2(float* p, float x, float y) {
#if defined(__CUDACC__)
  *reinterpret_cast<float2*>(p) = make_float2(x, y);
#else
  p[0] = x;
  p[1] = y;
#endif
}

// How one chunk's output tiles go to the block's warps, in both tensor-core products: K is split between the warps
// while the tiles leave warps idle (ks a power of two, tiles * ks <= kWarps, at most one per k-step); warp w takes the
// items w, w + kWarps, .. (item = k phase * tiles + tile: with ks > 1 only the first, at k-step phase ks_w).
template <int kWarps>
struct WarpTiles {
  int tiles, ks, items, mine, ks_w, warp;
  __device__ __forceinline__ WarpTiles(int tiles_, int64_t k_steps, int warp_) : tiles(tiles_), ks(1), warp(warp_) {
    while (2 * ks * tiles <= kWarps && 2 * ks <= k_steps) ks *= 2;
    items = tiles * ks;
    mine = warp < items ? (items - warp + kWarps - 1) / kWarps : 0;
    ks_w = warp / tiles;  // 0 when ks == 1 and the warp has tiles
  }
  // the tile of the warp's t-th item (0 past its items: an offset to a valid fragment, never used)
  __device__ __forceinline__ int tile(int t) const { return t < mine ? (warp + kWarps * t) % tiles : 0; }
};

// The tensor-core kernels' shared memory, in the order of the layout above: Wf (MT m-tiles x KT k-steps of A
// fragments), Hs (the staging buffer of B rows), Gs (the fp32 partial tiles).
struct MmaSmem {
  std::uint32_t* Wf;
  std::uint32_t* Hs;
  float* Gs;
};
template <class Tr>
__device__ __forceinline__ MmaSmem mma_smem(std::uint32_t* smem, int MT, int64_t KT) {
  std::uint32_t* Hs = smem + int64_t(MT) * KT * 128;
  return MmaSmem{smem, Hs, reinterpret_cast<float*>(Hs + Tr::kMaxCols * Tr::kHStrideWords)};
}

// The block's resident A operand in fragment order (the Wf layout above), once per launch: a_at(r, k) is A's element
// at row r < MT * 16 and k < KT * kK, zero outside the operand (rows past the block's, k past K).
template <class Tr, typename S, class AAt>
__device__ __forceinline__ void load_a_fragments(std::uint32_t* Wf, int MT, int64_t KT, AAt&& a_at) {
  constexpr int kK = Tr::kK;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t idx = tid; idx < int64_t(MT) * KT * 128; idx += Tr::kThreads) {
    const int i = static_cast<int>(idx & 3), l = static_cast<int>((idx >> 2) & 31);
    const int64_t tk = idx >> 7, kt = tk % KT;
    const int mt = static_cast<int>(tk / KT);
    const int r = mt * 16 + (l >> 2) + 8 * (i & 1);
    if constexpr (Tr::kTf32) {
      const int64_t k = kt * kK + (l & 3) + 4 * (i >> 1);
      Wf[idx] = ::fastrnn::f32_to_tf32(a_at(r, k));
    } else {
      const int64_t k = kt * kK + 2 * (l & 3) + 8 * (i >> 1);
      Wf[idx] = operand_bits(a_at(r, k)) | (operand_bits(a_at(r, k + 1)) << 16);
    }
  }
}

// One chunk's product of the forward on the tensor cores (the backward's, with the operands the other way round, is
// bwd_mma_chunk_partials in bwd_persistent_kernel.cuh): the fp32 partial tiles of D = A
// (sm.Wf: MT m-tiles x KT k-steps, resident) x B^T, B the chunk's ncols (1 .. chunk_cols) rows of K elements, go to
// sm.Gs[ks][col][row] (ks < KS, col < NT * 8, NT = ceil(ncols / 8)); returns KS. B is staged tile_words(NT * 8) words
// of each row per pass (Traits::tile_words: wider for fewer rows): stage(c, wd, k0) is the b32 word wd of row c < ncols
// in the pass from k0 (a pair of 16-bit values, the lower k in the low half, or the TF32 bits of one float), zero past
// K; rows c >= ncols are zeros here. Every thread of the block calls it (it holds block barriers) and it ends with one:
// on return any thread may read Gs. Gs may still be read by a previous epilogue when it is called: its first barrier
// comes before any store to Gs.
template <class Tr, typename S, class Stage>
__device__ __forceinline__ int mma_chunk_partials(const MmaSmem& sm, int MT, int64_t KT, int64_t K, int GS,
                                                  int ncols, Stage&& stage) {
  const std::uint32_t* Wf = sm.Wf;
  std::uint32_t* Hs = sm.Hs;
  float* Gs = sm.Gs;
  constexpr int kK = Tr::kK;
  constexpr int kWordsPerStep = kK * Tr::kElemBytes / 4;  // b32 words of one k-step of one B row (8 for both)
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int fg = lane / 4, fq = lane % 4;  // the fragment coordinates of the PTX ISA (groupID, threadID_in_group)
  const int NT = (ncols + 7) / 8;
  const int HSW = Tr::h_stride_words(NT * 8);                   // this chunk's K pass (Traits::tile_words)
  const int tile_k = Tr::tile_words(NT * 8) * 4 / Tr::kElemBytes;  // k elements per pass, a multiple of 8 k-steps
  const WarpTiles<Tr::kWarps> wt(MT * NT, KT, warp);
  const int mine = wt.mine;
  int wa_off[Tr::kMaxTilesPerWarp], hb_off[Tr::kMaxTilesPerWarp];  // b32 offsets of its A / B fragments
#pragma unroll
  for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t) {
    const int tile = wt.tile(t);
    wa_off[t] = ((tile % MT) * static_cast<int>(KT) * 32 + lane) * 4;
    hb_off[t] = ((tile / MT) * 8 + fg) * HSW + fq;
  }
  float acc[Tr::kMaxTilesPerWarp][4];
#pragma unroll
  for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[t][e] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += tile_k) {
    const int kn = K - k0 < tile_k ? static_cast<int>(K - k0) : tile_k;
    const int nsteps = (kn + kK - 1) / kK;
    const int wn = nsteps * kWordsPerStep;  // words of each staged row this pass
    // Stage B[.., k0 ..): consecutive threads, consecutive words of one row (coalesced, no bank conflicts).
    for (int idx = tid; idx < NT * 8 * wn; idx += Tr::kThreads) {
      const int c = idx / wn, wd = idx % wn;
      Hs[c * HSW + wd] = c < ncols ? stage(c, wd, k0) : 0u;
    }
    __syncthreads();
    const int kt0 = static_cast<int>(k0 / kK);
    // k-steps outer, the warp's tiles inner: up to 4 independent mma chains in flight.
    for (int kk = wt.ks_w; kk < nsteps; kk += wt.ks) {
      const int a_off = (kt0 + kk) * 128, b_off = kk * kWordsPerStep;
#pragma unroll
      for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t) {
        if (t < mine) {  // warp-uniform: every lane of the warp takes part in each mma or none
          std::uint32_t a[4], bfrag[2];
          load_a_fragment(Wf + wa_off[t] + a_off, a);
          bfrag[0] = Hs[hb_off[t] + b_off];
          bfrag[1] = Hs[hb_off[t] + b_off + 4];
          mma_fp32_acc<S>(acc[t], a, bfrag);
        }
      }
    }
    __syncthreads();  // every warp is done with this Hs tile before the next one is staged
  }

  // ---- partial tiles to Gs[ks][col][row] (any earlier reads of Gs ended before the barriers above)
#pragma unroll
  for (int t = 0; t < Tr::kMaxTilesPerWarp; ++t) {
    const int it = warp + Tr::kWarps * t;
    if (it >= wt.items) break;
    const int tile = it % wt.tiles, ks = it / wt.tiles;
    const int row = (tile % MT) * 16 + fg;
    const int col = ks * NT * 8 + (tile / MT) * 8 + 2 * fq;
    Gs[col * GS + row] = acc[t][0];
    Gs[(col + 1) * GS + row] = acc[t][1];
    Gs[col * GS + row + 8] = acc[t][2];
    Gs[(col + 1) * GS + row + 8] = acc[t][3];
  }
  __syncthreads();
  return wt.ks;
}

template <typename S, Cell C>
__device__ __forceinline__ void fwd_persistent_mma(const FwdSeqParams& p) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>,
                "tensor cores: bf16, fp16, TF32 (float); float64 stays on the FMA kernel");
  using A = acc_t<S>;
  using Tr = FwdPersistentMmaTraitsFor<S, C>;
  constexpr int G = gates_of(C);
  constexpr int R = Tr::kRowsPerThread;

  const int U = p.units;
  const int NG = Tr::groups(U);
  const int chunk = Tr::chunk_cols(U);
  const int M = G * U;
  const int MT = Tr::m_tiles(U);
  const int GS = Tr::g_stride(U);
  const int64_t H = p.H, K = p.K, ld = p.ld_out;
  const int64_t KT = Tr::k_steps(K);

  FASTRNN_DYNAMIC_SMEM(std::uint32_t, smem);
  const MmaSmem sm = mma_smem<Tr>(smem, MT, KT);

  const int tid = static_cast<int>(threadIdx.x);
  const int u = tid % U;
  const int bg = tid / U;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  const int64_t j = j0 + u;

  const S* __restrict__ w = static_cast<const S*>(p.w_hh);
  const S* __restrict__ h0 = static_cast<const S*>(p.h_init);
  const S* __restrict__ bhh = static_cast<const S*>(p.b_hh);
  const S* out = static_cast<const S*>(p.out);

  prefetch_step_gx<S, C>(p, p.steps[0], j0, U, tid, Tr::kThreads);
  // ---- W_slice in A-fragment order, once for the whole sequence (zeros outside the M x K slice).
  load_a_fragments<Tr, S>(sm.Wf, MT, KT, [&](int r, int64_t k) -> S {
    const int64_t jj = j0 + r % U;
    return (r < M && jj < H && k < K) ? w[((r / U) * H + jj) * K + k] : from_float<S>(A(0));
  });
  __syncthreads();

  A bias[G];
#pragma unroll
  for (int g = 0; g < G; ++g) bias[g] = (bhh != nullptr && j < H) ? to_float(bhh[g * H + j]) : A(0);
  // 16-bit h: a pair of k values in one 32-bit load when every pair is 4-byte aligned.
  const bool pairs = !Tr::kTf32 && K % 2 == 0 && ld % 2 == 0 && reinterpret_cast<std::uintptr_t>(out) % 4 == 0 &&
                     reinterpret_cast<std::uintptr_t>(h0) % 4 == 0;

  for (int64_t s = 0; s < p.T; ++s) {
    const FwdSeqStep st = p.steps[s];
    const S* hp = out + st.off_prev * ld;  // the previous step's rows (read only for b < st.n_prev)
    auto h_at = [&](int64_t b, int64_t k) -> S {  // h_{t-1}[b][k] of a staged row b < st.bs, zero past K
      if (k >= K) return from_float<S>(A(0));
      return b < st.n_prev ? load_cg(hp + b * ld + k) : h0[b * K + k];
    };
    for (int64_t c0 = 0; c0 < st.bs; c0 += chunk) {
      const int ncols = st.bs - c0 < chunk ? static_cast<int>(st.bs - c0) : chunk;
      const int KS = mma_chunk_partials<Tr, S>(sm, MT, KT, K, GS, ncols,
                                               [&](int c, int wd, int64_t k0) -> std::uint32_t {
        const int64_t b = c0 + c;
        if constexpr (Tr::kTf32) {
          return ::fastrnn::f32_to_tf32(h_at(b, k0 + wd));
        } else {
          const int64_t k = k0 + 2 * wd;
          if (pairs)  // both values with one 32-bit load (k is even, K and the row strides are even)
            return k >= K ? 0u : b < st.n_prev ? load_cg_b32(hp + b * ld + k) : load_b32(h0 + b * K + k);
          return operand_bits(h_at(b, k)) | (operand_bits(h_at(b, k + 1)) << 16);
        }
      });
      const int NT8 = (ncols + 7) / 8 * 8;

      // ---- epilogue: the cell of (b, j), the same code as the FMA kernel's
      if (j < H) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          const int bl = bg + i * NG;
          if (bl >= ncols) break;
          A ph[G];
#pragma unroll
          for (int g = 0; g < G; ++g) {
            float sum = 0.f;
            for (int ks = 0; ks < KS; ++ks) sum += sm.Gs[(ks * NT8 + bl) * GS + g * U + u];
            ph[g] = sum + bias[g];
          }
          fwd_cell_epilogue<S, C>(p, st, c0 + bl, j, ph);
        }
      }
    }
    if (s + 1 < p.T) prefetch_step_gx<S, C>(p, p.steps[s + 1], j0, U, tid, Tr::kThreads);
    // Step s's h rows are complete grid-wide before any block stages them for step s + 1 (the grid barrier also
    // ends this step's epilogue reads of Gs before the next step's fragment stores).
#ifndef FASTRNN_EMU_DROP_GRID_SYNC
    ::fastrnn::grid_sync();
#endif
  }
}

// The tensor-core kernels run one block per SM by design (persistent_plan.h): __launch_bounds__(256, 1) lets ptxas
// use the registers that allows (measured 102-126) instead of spilling to keep 3 blocks resident (without it, ptxas
// for sm_90 held the float32 RNN kernel at 80 registers with a 32-byte spill).
#if defined(__CUDACC__)
#define FASTRNN_PERSISTENT_MMA_BOUNDS __launch_bounds__(kPersistentThreads, 1)
#else
#define FASTRNN_PERSISTENT_MMA_BOUNDS
#endif

template <typename S>
__global__ void FASTRNN_PERSISTENT_MMA_BOUNDS lstm_fwd_persistent_mma_kernel(const FwdSeqLaunch a) {
  fwd_persistent_mma<S, Cell::kLstm>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_MMA_BOUNDS gru_fwd_persistent_mma_kernel(const FwdSeqLaunch a) {
  fwd_persistent_mma<S, Cell::kGru>(a.dir[blockIdx.y]);
}

template <typename S>
__global__ void FASTRNN_PERSISTENT_MMA_BOUNDS rnn_fwd_persistent_mma_kernel(const FwdSeqLaunch a) {
  fwd_persistent_mma<S, Cell::kRnn>(a.dir[blockIdx.y]);
}

}  // namespace fastrnn::cuda
