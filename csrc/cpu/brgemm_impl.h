// Body of the fused brgemm recurrences (brgemm_step.h) for one instruction set. Included by
// pointwise_avx2.cpp and pointwise_avx512.cpp after pointwise_impl.h, whose load/store helpers and Math<>
// (fast_math.h) it uses: the gate math here is the same code as in the per-step kernels.
#ifndef FASTRNN_ISA_NS
#error "include brgemm_impl.h after pointwise_impl.h"
#endif

#include <ATen/native/CPUBlas.h>

#include <cstring>
#include <type_traits>

#include <c10/util/bit_cast.h>

#include "brgemm_step.h"

namespace fastrnn::cpu::FASTRNN_ISA_NS {
namespace {

// Converts a row of n floats (a brgemm tile's) to S.
template <typename S>
void store_row(const float* src, S* dst, int64_t n) {
  using V = Vectorized<float>;
  for (int64_t u = 0; u < n; u += V::size()) {
    const int64_t m = std::min<int64_t>(V::size(), n - u);
    store(load(src + u, m), dst + u, m);
  }
}

// ------------------------------------------------------------------------- few-row block products
// A step's block product C[M, N] (+)= A[M, K] @ B[K, N], B one packed block (float32 [K][N]; bfloat16 VNNI
// [K/2][N][2]), C the fp32 tile (ldc = N). brgemm runs it as tiles of 16 (AMX) or a register block of rows;
// with one to a few rows (decoding, B = 1..4) most of each tile is empty and the call reads B at about 17 GB/s,
// though each thread's weights sit in its L2 (measured: T=100..400 B=1 H=512 bf16 LSTM, 60 us a step for the
// 1 MB a thread reads; a plain AVX-512 read of 1 MB runs at 30-34 GB/s here). Such products run here instead:
// each vector of B, loaded once, is multiplied into every row's accumulators (R rows x NV vectors in
// registers), at about L2's rate (22-33 us a step at that shape): float32 through the per-step path's
// small_gemm (pointwise_impl.h), bfloat16 through the loop below.
#if defined(CPU_CAPABILITY_AVX512)
// bfloat16: a 64-byte vector of the VNNI block holds 16 columns x (k, k+1); shifting each 32-bit pair left by
// 16 gives the k elements as floats and masking off the low half the k+1 elements (exact), multiplied by
// A[r][k] and A[r][k+1] and accumulated in fp32. The last vector of a chunk may be partial (mask). (An
// AVX512_BF16 dot-product form of this loop, one instruction per vector instead of four, measured the same
// 22-33 us a step at T=100..400 B=1 H=512 on Sapphire Rapids: both read B at about L2's rate, 30-34 GB/s a
// core here; this one runs on every AVX-512 processor.)
template <int R, int NV>
inline void gemv_bf16(const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, int64_t K,
                      float* C, int64_t ldc, bool add, __mmask16 last) {
  auto mask = [&](int v) -> __mmask16 { return v == NV - 1 ? last : __mmask16(0xFFFF); };
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = add ? _mm512_maskz_loadu_ps(mask(v), C + r * ldc + v * 16) : _mm512_setzero_ps();
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t k = 0; k < K; k += 2) {
    __m512 even[NV], odd[NV];
    for (int v = 0; v < NV; ++v) {
      const __m512i w = _mm512_maskz_loadu_epi32(mask(v), B + k * ldb + v * 32);
      even[v] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      odd[v] = _mm512_castsi512_ps(_mm512_and_si512(w, hi));
    }
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      std::memcpy(&pair, A + r * lda + k, sizeof(pair));
      const __m512 a0 = _mm512_set1_ps(c10::bit_cast<float>(pair << 16));
      const __m512 a1 = _mm512_set1_ps(c10::bit_cast<float>(pair & 0xFFFF0000u));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a1, odd[v], _mm512_fmadd_ps(a0, even[v], acc[r][v]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(C + r * ldc + v * 16, mask(v), acc[r][v]);
}

template <int R>
void gemv_rows_bf16(const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t N, int64_t K, float* C,
                    int64_t ldc, bool add) {
  constexpr int kNv = 4;
  int64_t n0 = 0;
  for (; n0 + kNv * 16 <= N; n0 += kNv * 16) gemv_bf16<R, kNv>(A, lda, B + 2 * n0, N, K, C + n0, ldc, add, 0xFFFF);
  const int64_t rest = N - n0;
  if (rest == 0) return;
  const int64_t nv = (rest + 15) / 16;
  const auto last = static_cast<__mmask16>((1u << (rest - 16 * (nv - 1))) - 1u);
  switch (nv) {
    case 3: gemv_bf16<R, 3>(A, lda, B + 2 * n0, N, K, C + n0, ldc, add, last); break;
    case 2: gemv_bf16<R, 2>(A, lda, B + 2 * n0, N, K, C + n0, ldc, add, last); break;
    default: gemv_bf16<R, 1>(A, lda, B + 2 * n0, N, K, C + n0, ldc, add, last); break;
  }
}
// All M rows: groups of 4 (16 accumulators and 8 converted vectors of B within 32 registers), then the rest.
inline void gemv_bf16_all(const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t M, int64_t N,
                          int64_t K, float* C, bool add) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) gemv_rows_bf16<4>(A + m * lda, lda, B, N, K, C + m * N, N, add);
  switch (M - m) {
    case 3: gemv_rows_bf16<3>(A + m * lda, lda, B, N, K, C + m * N, N, add); break;
    case 2: gemv_rows_bf16<2>(A + m * lda, lda, B, N, K, C + m * N, N, add); break;
    case 1: gemv_rows_bf16<1>(A + m * lda, lda, B, N, K, C + m * N, N, add); break;
    default: break;
  }
}
#endif

// ------------------------------------------------------------------------- widened bfloat16
// bf16 on fp32 brgemm (brgemm_bf16_widened): a step's block products read the same few operand rows (the
// previous h, x_t, hx; backward dG) once per block, so each thread converts them to fp32 once per step and keeps
// them, a few entries keyed by (address, rows, K, stride); a new step (the epoch) invalidates them all, since
// the next step may have rewritten the rows at the same address (r_buf, or a later sequence's buffers). The
// buffers are brgemm_step.cpp's (widened_rows_buffer), so that this file emits no shared std::vector code.
struct WidenedKey {  // zero-initialised: epoch 0 matches no step
  const void* src;
  int64_t m, k, lda;
  uint64_t epoch;
};
thread_local WidenedKey widened_keys[kWidenedSlots];
thread_local uint64_t widened_epoch;
thread_local int widened_next;

// A [M, K] (stride lda, bf16) as fp32 rows of stride K, converted at most once per step.
const float* widen_rows(const c10::BFloat16* A, int64_t M, int64_t K, int64_t lda) {
  for (int i = 0; i < kWidenedSlots; ++i) {
    const WidenedKey& e = widened_keys[i];
    if (e.epoch == widened_epoch && e.src == A && e.m == M && e.k == K && e.lda == lda)
      return widened_rows_buffer(i, M * K);
  }
  const int slot = widened_next;
  widened_next = (widened_next + 1) % kWidenedSlots;
  float* buf = widened_rows_buffer(slot, M * K);
  // (bf16 -> fp32 is exact: the bits moved to the high half; a loop the compiler vectorises)
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(A);
  uint32_t* dst = reinterpret_cast<uint32_t*>(buf);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t u = 0; u < K; ++u) dst[r * K + u] = static_cast<uint32_t>(bits[r * lda + u]) << 16;
  widened_keys[slot] = WidenedKey{A, M, K, lda, widened_epoch};
  return buf;
}

// The block product of a step: up to s.gemv_rows rows as vector code (float32 everywhere, bfloat16 on AVX-512
// with an even K, as the VNNI blocks have), more rows through brgemm. W: the packed weight's element type, S's
// own or float (widened bf16: A converted by widen_rows).
template <typename S, typename W = S, typename Seq>
void block_gemm(const Seq& s, int64_t M, int64_t N, int64_t K, int64_t lda, bool add, const S* A, const W* B,
                float* C) {
  constexpr bool kBf16 = std::is_same_v<S, c10::BFloat16>;
  if constexpr (!std::is_same_v<S, W>) {
    static_assert(kBf16 && std::is_same_v<W, float>);
    block_gemm<float, float>(s, M, N, K, K, add, widen_rows(A, M, K, lda), B, C);
  } else {
    if (M <= s.gemv_rows) {
      if constexpr (!kBf16) {
        small_gemm(SmallGemmArgs{A, lda, B, C, N, K, N, add}, 0, M);
        return;
      }
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (kBf16) {
        if (K % 2 == 0) {
          gemv_bf16_all(A, lda, B, M, N, K, C, add);
          return;
        }
      }
#endif
    }
    at::native::cpublas::brgemm(M, N, K, lda, N, N, add, A, B, C, kBf16);
  }
}

// The LSTM gate math on one tile: rows [b0, b1) of the step at packed row offset `off`, hidden units
// [j0, j0 + nbj); tile row r (= b - b0) holds the pre-activations of gate g at columns g * nbj + u.
template <typename S>
void lstm_tile(const LstmBrgemmSeq& s, const float* tile, int64_t b0, int64_t b1, int64_t off, int64_t j0,
               int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H, ldt = 4 * nbj;
  S* out = static_cast<S*>(s.out);
  const S* gx = static_cast<const S*>(s.gx);
  S* h_dst = s.w_hr != nullptr ? static_cast<S*>(s.r_buf) : out;  // with a projection, r = o*tanh(c)
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * ldt;
    float* c = s.c_state + b * H + j0;
    const int64_t row = off + b;
    S* h_row = s.w_hr != nullptr ? h_dst + b * H + j0 : h_dst + row * H + j0;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      auto pre = [&](int64_t g) {
        V v = load(tr + g * nbj + u, n);
        if (gx != nullptr) v = v + load(gx + row * 4 * H + g * H + j0 + u, n);
        if (s.bias != nullptr) v = v + load(s.bias + g * H + j0 + u, n);
        return v;
      };
      const auto a = lstm_forward<V>(pre(0), pre(1), pre(2), pre(3), load(c + u, n));
      store(a.c, c + u, n);
      store(a.h, h_row + u, n);
      if (s.ws != nullptr) {
        float* w = s.ws + row * 5 * H + j0 + u;
        store(a.i, w, n);
        store(a.f, w + H, n);
        store(a.g, w + 2 * H, n);
        store(a.o, w + 3 * H, n);
        store(a.c, w + 4 * H, n);
      }
    }
  }
}

// The GRU gate math on one tile (3 gates; x side from the up-front GEMM gx): h_prev of row b is the previous
// step's output row (b < with_prev) or hx's.
// With the x-projection folded into the step, its products sit in the tile `xtile` (same layout as `tile`)
// instead of gx.
template <typename S>
void gru_tile(const LstmBrgemmSeq& s, const float* tile, const float* xtile, int64_t b0, int64_t b1, int64_t off,
              int64_t prev_off, int64_t with_prev, int64_t j0, int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H, ldt = 3 * nbj;
  S* out = static_cast<S*>(s.out);
  const S* gx = static_cast<const S*>(s.gx);
  const S* hx = static_cast<const S*>(s.hx);
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * ldt;
    const float* txr = gx == nullptr ? xtile + (b - b0) * ldt : nullptr;
    const int64_t row = off + b;
    const S* hp = (b < with_prev ? out + (prev_off + b) * H : hx + b * H) + j0;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      auto xside = [&](int64_t g) {
        V v = gx != nullptr ? load(gx + row * 3 * H + g * H + j0 + u, n) : load(txr + g * nbj + u, n);
        return s.bias != nullptr ? v + load(s.bias + g * H + j0 + u, n) : v;
      };
      auto hside = [&](int64_t g) {
        V v = load(tr + g * nbj + u, n);
        return s.bias_h != nullptr ? v + load(s.bias_h + g * H + j0 + u, n) : v;
      };
      const auto a = gru_forward<V>(xside(0), xside(1), xside(2), hside(0), hside(1), hside(2), load(hp + u, n));
      store(a.h, out + row * H + j0 + u, n);
      if (s.ws != nullptr) {
        float* w = s.ws + row * 4 * H + j0 + u;
        store(a.r, w, n);
        store(a.z, w + H, n);
        store(a.n, w + 2 * H, n);
        store(a.hn, w + 3 * H, n);
      }
    }
  }
}

// The Elman RNN on one tile (1 gate; x side from gx, or already added onto the tile when folded).
template <typename S>
void rnn_tile(const LstmBrgemmSeq& s, const float* tile, int64_t b0, int64_t b1, int64_t off, int64_t j0,
              int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H;
  S* out = static_cast<S*>(s.out);
  const S* gx = static_cast<const S*>(s.gx);
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * nbj;
    const int64_t row = off + b;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      V px = gx != nullptr ? load(gx + row * H + j0 + u, n) : V(0.f);
      if (s.bias != nullptr) px = px + load(s.bias + j0 + u, n);
      V ph = load(tr + u, n);
      if (s.bias_h != nullptr) ph = ph + load(s.bias_h + j0 + u, n);
      store(rnn_forward<V>(px, ph, s.relu), out + row * H + j0 + u, n);
    }
  }
}

// Step k of the sequence for this thread's batch rows [r0, r1) and hidden blocks [blk0, blk1); `tile` holds
// kBrgemmTileRows x gates nb floats (twice that for a GRU with the x-projection folded in). The parallel
// region, the barrier and the error handling are the caller's (brgemm_step.cpp), so that this file emits no
// shared inline code for its wider ISA.
template <typename S, typename W = S>
void fwd_brgemm_step(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                     float* tile) {
  if constexpr (!std::is_same_v<S, W>) ++widened_epoch;  // (first step: 1)
  const int64_t phase = s.w_hr != nullptr ? k % 2 : 0;  // with a projection: gates, then h = r @ W_hr^T
  if (s.w_hr != nullptr) k /= 2;
  const int64_t T = s.T, H = s.H, P = s.P, I = s.I, nb = s.nb, G = s.gates;
  const S* x = static_cast<const S*>(s.x);
  const S* hx = static_cast<const S*>(s.hx);
  const W* whh = static_cast<const W*>(s.w_hh);
  const W* wih = static_cast<const W*>(s.w_ih);
  const S* out = static_cast<const S*>(s.out);
  const int64_t t = s.reverse ? T - 1 - k : k, bs = s.batch_sizes[t], off = s.offsets[t];
  const int64_t p = s.reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
  const int64_t with_prev = p < 0 ? 0 : std::min(bs, s.batch_sizes[p]);
  const int64_t prev_off = p < 0 ? 0 : s.offsets[p];
  const int64_t end = std::min(r1, bs);
  if (phase == 1) {  // out[rows, P] = r[rows, H] @ W_hr^T, this thread's share of the P blocks
    const int64_t nblk = (H + nb - 1) / nb, nblk_p = (P + nb - 1) / nb;
    const int64_t pb0 = nblk_p * blk0 / nblk, pb1 = nblk_p * blk1 / nblk;
    const S* r = static_cast<const S*>(s.r_buf);
    S* o = static_cast<S*>(s.out);
    for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {
      const int64_t c1 = std::min(end, c0 + kBrgemmTileRows);
      for (int64_t pb = pb0; pb < pb1; ++pb) {
        const int64_t p0 = pb * nb, npb = std::min(nb, P - p0);
        block_gemm<S, W>(s, c1 - c0, npb, H, H, false, r + c0 * H, static_cast<const W*>(s.w_hr) + p0 * H, tile);
        for (int64_t b = c0; b < c1; ++b) store_row(tile + (b - c0) * npb, o + (off + b) * P + p0, npb);
      }
    }
    return;
  }
  for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {  // rows [c0, c1), a tile at a time
    const int64_t c1 = std::min(end, c0 + kBrgemmTileRows);
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0), N = G * nbj;
      const W* bhh = whh + j0 * G * s.k_hh;
      // h_prev: the previous step's output rows, or hx for rows that start at this step.
      const int64_t a1 = std::min(c1, with_prev);
      if (a1 > c0)
        block_gemm<S, W>(s, a1 - c0, N, s.k_hh, P, false, out + (prev_off + c0) * P, bhh, tile);
      const int64_t h0 = std::max(c0, with_prev);
      if (c1 > h0)
        block_gemm<S, W>(s, c1 - h0, N, s.k_hh, P, false, hx + h0 * P, bhh, tile + (h0 - c0) * N);
      // The folded x-projection: added onto the tile (LSTM, RNN: the gates take the sum), or for the GRU into
      // a second tile (the reset gate scales the h side of n alone).
      float* xtile = s.cell == BrgemmCell::kGru ? tile + kBrgemmTileRows * N : tile;
      if (wih != nullptr)
        block_gemm<S, W>(s, c1 - c0, N, s.k_ih, I, xtile == tile, x + (off + c0) * I, wih + j0 * G * s.k_ih, xtile);
      switch (s.cell) {
        case BrgemmCell::kLstm: lstm_tile<S>(s, tile, c0, c1, off, j0, nbj); break;
        case BrgemmCell::kGru: gru_tile<S>(s, tile, xtile, c0, c1, off, prev_off, with_prev, j0, nbj); break;
        case BrgemmCell::kRnn: rnn_tile<S>(s, tile, c0, c1, off, j0, nbj); break;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------- backward
// Where the tile functions below find a row's carry: rows b < with_next continue from the step processed
// before (the tile, plus for the GRU the part kept in dh_state); the others start here (dh_state holds
// grad_hy).
struct BwdRows {
  int64_t t, off;        // this step (-1: the extra step after the last) and its first packed row
  int64_t bs;            // its rows
  int64_t with_next;     // rows carried from the step processed before
  int64_t prev_off, with_prev;  // the forward's previous step: its first row, rows that started from it
};

// LSTM: dh = carry + grad_output; dG (i, f, g, o) and dc_prev from the workspace and c_prev.
// With a projection (s.w_hr) the tile holds dr = dh @ W_hr for the rows of this step (the second phase), and
// r = o*tanh(c) goes to r_all.
template <typename S>
void lstm_bwd_tile(const BrgemmBwdSeq& s, const float* tile, int64_t b0, int64_t b1, const BwdRows& R, int64_t j0,
                   int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H;
  const bool proj = s.w_hr != nullptr;
  S* dh_state = static_cast<S*>(s.dh_state);
  S* dg = static_cast<S*>(s.dg);
  const S* go = R.t >= 0 && !proj ? static_cast<const S*>(s.go_step[R.t]) : nullptr;
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * nbj;
    S* dhs = dh_state + b * H + j0;
    const bool carried = proj || b < R.with_next;
    if (b >= R.bs) {  // a row of `next` that starts there: its carry is grad_hx
      store_row(tr, dhs, nbj);
      continue;
    }
    const int64_t row = R.off + b;
    const float* w = s.ws + row * 5 * H + j0;
    const float* cp = b < R.with_prev ? s.ws + (R.prev_off + b) * 5 * H + 4 * H + j0 : s.cx + b * H + j0;
    float* dc = s.dc_state + b * H + j0;
    S* d = dg + row * 4 * H + j0;
    const S* gor = proj ? nullptr : go + b * s.go_ld + j0;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      const V dh = proj ? load(tr + u, n) : (carried ? load(tr + u, n) : load(dhs + u, n)) + load(gor + u, n);
      if (proj) {
        const V o = load(w + 3 * H + u, n), c = load(w + 4 * H + u, n);
        store(o * Math<V>::tanh(c), static_cast<S*>(s.r_all) + row * H + j0 + u, n);
      }
      const auto r = lstm_backward<V>(load(w + u, n), load(w + H + u, n), load(w + 2 * H + u, n),
                                      load(w + 3 * H + u, n), load(w + 4 * H + u, n), load(cp + u, n), dh,
                                      load(dc + u, n));
      store(r.dc_prev, dc + u, n);
      store(r.di, d + u, n);
      store(r.df, d + H + u, n);
      store(r.dg, d + 2 * H + u, n);
      store(r.do_, d + 3 * H + u, n);
    }
  }
}

// LSTM projection, first phase: over P units, dh = carry + grad_output into dh_all (rows of this step), or
// the carry into dh_state (rows of `next` that start there: their grad_hx).
template <typename S>
void proj_dh_tile(const BrgemmBwdSeq& s, const float* tile, int64_t b0, int64_t b1, const BwdRows& R, int64_t p0,
                  int64_t npb) {
  const int64_t P = s.P;
  S* dh_state = static_cast<S*>(s.dh_state);
  S* dh_all = static_cast<S*>(s.dh_all);
  const S* go = R.t >= 0 ? static_cast<const S*>(s.go_step[R.t]) : nullptr;
  using V = Vectorized<float>;
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * npb;
    S* dhs = dh_state + b * P + p0;
    if (b >= R.bs) {
      store_row(tr, dhs, npb);
      continue;
    }
    const bool carried = b < R.with_next;
    const S* gor = go + b * s.go_ld + p0;
    S* dst = dh_all + (R.off + b) * P + p0;
    for (int64_t u = 0; u < npb; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), npb - u);
      store((carried ? load(tr + u, n) : load(dhs + u, n)) + load(gor + u, n), dst + u, n);
    }
  }
}

// GRU: dh = carry + grad_output; dG_x (r, z, n), dG_h's n part, and dh * z kept in dh_state for the next
// carry (or as grad_hx's part for rows that start here).
template <typename S>
void gru_bwd_tile(const BrgemmBwdSeq& s, const float* tile, int64_t b0, int64_t b1, const BwdRows& R, int64_t j0,
                  int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H;
  S* dh_state = static_cast<S*>(s.dh_state);
  S* dgx = static_cast<S*>(s.dg);
  S* dph_n = static_cast<S*>(s.dph_n);
  const S* out = static_cast<const S*>(s.out);
  const S* hx = static_cast<const S*>(s.hx);
  const S* go = R.t >= 0 ? static_cast<const S*>(s.go_step[R.t]) : nullptr;
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * nbj;
    S* dhs = dh_state + b * H + j0;
    const bool carried = b < R.with_next;
    if (b >= R.bs) {
      for (int64_t u = 0; u < nbj; u += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), nbj - u);
        store(load(tr + u, n) + load(dhs + u, n), dhs + u, n);
      }
      continue;
    }
    const int64_t row = R.off + b;
    const float* w = s.ws + row * 4 * H + j0;
    const S* hp = (b < R.with_prev ? out + (R.prev_off + b) * H : hx + b * H) + j0;
    S* dx = dgx + row * 3 * H + j0;
    const S* gor = go + b * s.go_ld + j0;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      V dh = load(dhs + u, n) + load(gor + u, n);
      if (carried) dh = dh + load(tr + u, n);
      const auto r = gru_backward<V>(load(w + u, n), load(w + H + u, n), load(w + 2 * H + u, n),
                                     load(w + 3 * H + u, n), load(hp + u, n), dh);
      store(r.dr, dx + u, n);
      store(r.dz, dx + H + u, n);
      store(r.dpx_n, dx + 2 * H + u, n);
      store(r.dph_n, dph_n + row * H + j0 + u, n);
      store(r.dh_prev, dhs + u, n);
    }
  }
}

// Elman RNN: dG = (carry + grad_output) * act'(h), h the step's output.
template <typename S>
void rnn_bwd_tile(const BrgemmBwdSeq& s, const float* tile, int64_t b0, int64_t b1, const BwdRows& R, int64_t j0,
                  int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H;
  S* dh_state = static_cast<S*>(s.dh_state);
  S* dg = static_cast<S*>(s.dg);
  const S* out = static_cast<const S*>(s.out);
  const S* go = R.t >= 0 ? static_cast<const S*>(s.go_step[R.t]) : nullptr;
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * nbj;
    S* dhs = dh_state + b * H + j0;
    const bool carried = b < R.with_next;
    if (b >= R.bs) {
      store_row(tr, dhs, nbj);
      continue;
    }
    const int64_t row = R.off + b;
    const S* gor = go + b * s.go_ld + j0;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      const V dh = (carried ? load(tr + u, n) : load(dhs + u, n)) + load(gor + u, n);
      store(rnn_backward<V>(load(out + row * H + j0 + u, n), dh, s.relu), dg + row * H + j0 + u, n);
    }
  }
}

// Step k (0..T) of a backward sequence for this thread's rows [r0, r1) and hidden blocks [blk0, blk1);
// `tile` holds kBrgemmTileRows x nb floats.
template <typename S, typename W = S>
void bwd_brgemm_step(const BrgemmBwdSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                     float* tile) {
  if constexpr (!std::is_same_v<S, W>) ++widened_epoch;  // (first step: 1)
  const bool proj = s.w_hr != nullptr;
  const int64_t phase = proj ? k % 2 : 0;  // with a projection: dh, then dr = dh @ W_hr and the gates
  if (proj) k /= 2;
  const int64_t T = s.T, H = s.H, P = s.P, nb = s.nb, G = s.gates;
  const W* wt = static_cast<const W*>(s.w_t);
  // Backward order: k-th processed is forward step T-1-k (reverse direction: k); `next` was processed at k-1.
  const auto fwd_step = [&](int64_t kk) { return s.reverse ? kk : T - 1 - kk; };
  BwdRows R{};
  R.t = k < T ? fwd_step(k) : -1;
  R.bs = R.t >= 0 ? s.batch_sizes[R.t] : 0;
  R.off = R.t >= 0 ? s.offsets[R.t] : 0;
  const int64_t tn = k > 0 ? fwd_step(k - 1) : -1;
  const int64_t bs_next = tn >= 0 ? s.batch_sizes[tn] : 0, off_next = tn >= 0 ? s.offsets[tn] : 0;
  R.with_next = bs_next;  // rows of `next` (those >= bs do not continue; handled in the tile functions)
  if (R.t >= 0) {
    const int64_t p = s.reverse ? (R.t + 1 < T ? R.t + 1 : -1) : R.t - 1;
    R.with_prev = p < 0 ? 0 : std::min(R.bs, s.batch_sizes[p]);
    R.prev_off = p < 0 ? 0 : s.offsets[p];
  }
  const S* dg = static_cast<const S*>(s.dg);
  const S* dph_n = static_cast<const S*>(s.dph_n);
  if (proj) {
    const int64_t nblk = (H + nb - 1) / nb, nblk_p = (P + nb - 1) / nb;
    if (phase == 0) {  // dh over this thread's share of the P units
      const int64_t pb0 = nblk_p * blk0 / nblk, pb1 = nblk_p * blk1 / nblk;
      const int64_t end = std::min(r1, std::max(R.bs, bs_next));
      for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {
        const int64_t c1 = std::min(end, c0 + kBrgemmTileRows), a1 = std::min(c1, bs_next);
        for (int64_t pb = pb0; pb < pb1; ++pb) {
          const int64_t p0 = pb * nb, npb = std::min(nb, P - p0);
          if (a1 > c0)
            block_gemm<S, W>(s, a1 - c0, npb, s.k_w, 4 * H, false, dg + (off_next + c0) * 4 * H,
                          wt + p0 * s.k_w, tile);
          proj_dh_tile<S>(s, tile, c0, c1, R, p0, npb);
        }
      }
    } else {  // dr = dh @ W_hr over this thread's H blocks, then the gates
      const S* dh_all = static_cast<const S*>(s.dh_all);
      const int64_t end = std::min(r1, R.bs);
      for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {
        const int64_t c1 = std::min(end, c0 + kBrgemmTileRows);
        for (int64_t blk = blk0; blk < blk1; ++blk) {
          const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0);
          block_gemm<S, W>(s, c1 - c0, nbj, P, P, false, dh_all + (R.off + c0) * P,
                           static_cast<const W*>(s.w_hr) + j0 * P, tile);
          lstm_bwd_tile<S>(s, tile, c0, c1, R, j0, nbj);
        }
      }
    }
    return;
  }
  const int64_t end = std::min(r1, std::max(R.bs, bs_next));
  for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {
    const int64_t c1 = std::min(end, c0 + kBrgemmTileRows);
    const int64_t a1 = std::min(c1, bs_next);  // rows whose carry the GEMM computes
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0);
      const W* bw = wt + j0 * s.k_w;
      if (a1 > c0) {
        if (s.cell == BrgemmCell::kGru) {  // [dr, dz] from dG_x, then dG_h's n part: K = 2H + H
          block_gemm<S, W>(s, a1 - c0, nbj, 2 * H, 3 * H, false, dg + (off_next + c0) * 3 * H, bw, tile);
          block_gemm<S, W>(s, a1 - c0, nbj, H, H, true, dph_n + (off_next + c0) * H, bw + 2 * H * nbj, tile);
        } else {
          block_gemm<S, W>(s, a1 - c0, nbj, s.k_w, G * H, false, dg + (off_next + c0) * G * H, bw, tile);
        }
      }
      switch (s.cell) {
        case BrgemmCell::kLstm: lstm_bwd_tile<S>(s, tile, c0, c1, R, j0, nbj); break;
        case BrgemmCell::kGru: gru_bwd_tile<S>(s, tile, c0, c1, R, j0, nbj); break;
        case BrgemmCell::kRnn: rnn_bwd_tile<S>(s, tile, c0, c1, R, j0, nbj); break;
      }
    }
  }
}

}  // namespace

void lstm_fwd_brgemm_f32(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                         float* tile) {
  fwd_brgemm_step<float>(s, k, r0, r1, blk0, blk1, tile);
}
void lstm_fwd_brgemm_bf16(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                          float* tile) {
  fwd_brgemm_step<c10::BFloat16>(s, k, r0, r1, blk0, blk1, tile);
}

void bwd_brgemm_f32(const BrgemmBwdSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                    float* tile) {
  bwd_brgemm_step<float>(s, k, r0, r1, blk0, blk1, tile);
}
void bwd_brgemm_bf16(const BrgemmBwdSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                     float* tile) {
  bwd_brgemm_step<c10::BFloat16>(s, k, r0, r1, blk0, blk1, tile);
}
void lstm_fwd_brgemm_bf16w(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                           float* tile) {
  fwd_brgemm_step<c10::BFloat16, float>(s, k, r0, r1, blk0, blk1, tile);
}
void bwd_brgemm_bf16w(const BrgemmBwdSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                      float* tile) {
  bwd_brgemm_step<c10::BFloat16, float>(s, k, r0, r1, blk0, blk1, tile);
}

}  // namespace fastrnn::cpu::FASTRNN_ISA_NS
