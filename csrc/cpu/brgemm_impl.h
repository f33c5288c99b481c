// Body of the fused brgemm recurrences (brgemm_step.h) for one instruction set. Included by
// pointwise_avx2.cpp and pointwise_avx512.cpp after pointwise_impl.h, whose load/store helpers and Math<>
// (fast_math.h) it uses: the gate math here is the same code as in the per-step kernels.
#ifndef FASTRNN_ISA_NS
#error "include brgemm_impl.h after pointwise_impl.h"
#endif

#include <ATen/native/CPUBlas.h>

#include <type_traits>

#include "brgemm_step.h"

namespace fastrnn::cpu::FASTRNN_ISA_NS {
namespace {

// The LSTM gate math on one tile: rows [b0, b1) of the step at packed row offset `off`, hidden units
// [j0, j0 + nbj); tile row r (= b - b0) holds the pre-activations of gate g at columns g * nbj + u.
template <typename S>
void lstm_tile(const LstmBrgemmSeq& s, const float* tile, int64_t b0, int64_t b1, int64_t off, int64_t j0,
               int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H, ldt = 4 * nbj;
  S* out = static_cast<S*>(s.out);
  const S* gx = static_cast<const S*>(s.gx);
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * ldt;
    float* c = s.c_state + b * H + j0;
    const int64_t row = off + b;
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
      store(a.h, out + row * H + j0 + u, n);
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
template <typename S>
void gru_tile(const LstmBrgemmSeq& s, const float* tile, int64_t b0, int64_t b1, int64_t off, int64_t prev_off,
              int64_t with_prev, int64_t j0, int64_t nbj) {
  using V = Vectorized<float>;
  const int64_t H = s.H, ldt = 3 * nbj;
  S* out = static_cast<S*>(s.out);
  const S* gx = static_cast<const S*>(s.gx);
  const S* hx = static_cast<const S*>(s.hx);
  for (int64_t b = b0; b < b1; ++b) {
    const float* tr = tile + (b - b0) * ldt;
    const int64_t row = off + b;
    const S* hp = (b < with_prev ? out + (prev_off + b) * H : hx + b * H) + j0;
    for (int64_t u = 0; u < nbj; u += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), nbj - u);
      auto xside = [&](int64_t g) {
        V v = load(gx + row * 3 * H + g * H + j0 + u, n);
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

// The Elman RNN on one tile (1 gate; x side from gx).
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
      V px = load(gx + row * H + j0 + u, n);
      if (s.bias != nullptr) px = px + load(s.bias + j0 + u, n);
      V ph = load(tr + u, n);
      if (s.bias_h != nullptr) ph = ph + load(s.bias_h + j0 + u, n);
      store(rnn_forward<V>(px, ph, s.relu), out + row * H + j0 + u, n);
    }
  }
}

// Step k of the sequence for this thread's batch rows [r0, r1) and hidden blocks [blk0, blk1); `tile` holds
// kBrgemmTileRows x gates nb floats. The parallel region, the barrier and the error handling are the
// caller's (brgemm_step.cpp), so that this file emits no shared inline code for its wider ISA.
template <typename S>
void fwd_brgemm_step(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                     float* tile) {
  constexpr bool kVnni = std::is_same_v<S, c10::BFloat16>;
  const int64_t T = s.T, H = s.H, I = s.I, nb = s.nb, G = s.gates;
  const S* x = static_cast<const S*>(s.x);
  const S* hx = static_cast<const S*>(s.hx);
  const S* whh = static_cast<const S*>(s.w_hh);
  const S* wih = static_cast<const S*>(s.w_ih);
  const S* out = static_cast<const S*>(s.out);
  const int64_t t = s.reverse ? T - 1 - k : k, bs = s.batch_sizes[t], off = s.offsets[t];
  const int64_t p = s.reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
  const int64_t with_prev = p < 0 ? 0 : std::min(bs, s.batch_sizes[p]);
  const int64_t prev_off = p < 0 ? 0 : s.offsets[p];
  const int64_t end = std::min(r1, bs);
  for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {  // rows [c0, c1), a tile at a time
    const int64_t c1 = std::min(end, c0 + kBrgemmTileRows);
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0), N = G * nbj;
      const S* bhh = whh + j0 * G * s.k_hh;
      // h_prev: the previous step's output rows, or hx for rows that start at this step.
      const int64_t a1 = std::min(c1, with_prev);
      if (a1 > c0)
        at::native::cpublas::brgemm(a1 - c0, N, s.k_hh, H, N, N, false, out + (prev_off + c0) * H, bhh, tile,
                                    kVnni);
      const int64_t h0 = std::max(c0, with_prev);
      if (c1 > h0)
        at::native::cpublas::brgemm(c1 - h0, N, s.k_hh, H, N, N, false, hx + h0 * H, bhh, tile + (h0 - c0) * N,
                                    kVnni);
      if (wih != nullptr)
        at::native::cpublas::brgemm(c1 - c0, N, s.k_ih, I, N, N, true, x + (off + c0) * I, wih + j0 * G * s.k_ih,
                                    tile, kVnni);
      switch (s.cell) {
        case BrgemmCell::kLstm: lstm_tile<S>(s, tile, c0, c1, off, j0, nbj); break;
        case BrgemmCell::kGru: gru_tile<S>(s, tile, c0, c1, off, prev_off, with_prev, j0, nbj); break;
        case BrgemmCell::kRnn: rnn_tile<S>(s, tile, c0, c1, off, j0, nbj); break;
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

}  // namespace fastrnn::cpu::FASTRNN_ISA_NS
