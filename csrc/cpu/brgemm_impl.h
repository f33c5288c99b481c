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

// Step k of the sequence for this thread's batch rows [r0, r1) and hidden blocks [blk0, blk1); `tile` holds
// kBrgemmTileRows x 4 nb floats. The parallel region, the barrier and the error handling are the caller's
// (brgemm_step.cpp), so that this file emits no shared inline code for its wider ISA.
template <typename S>
void lstm_fwd_brgemm_step(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                          float* tile) {
  constexpr bool kVnni = std::is_same_v<S, c10::BFloat16>;
  const int64_t T = s.T, H = s.H, I = s.I, nb = s.nb;
  const S* x = static_cast<const S*>(s.x);
  const S* hx = static_cast<const S*>(s.hx);
  const S* whh = static_cast<const S*>(s.w_hh);
  const S* wih = static_cast<const S*>(s.w_ih);
  const S* out = static_cast<const S*>(s.out);
  const int64_t t = s.reverse ? T - 1 - k : k, bs = s.batch_sizes[t], off = s.offsets[t];
  const int64_t p = s.reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
  const int64_t with_prev = p < 0 ? 0 : std::min(bs, s.batch_sizes[p]);
  const int64_t end = std::min(r1, bs);
  for (int64_t c0 = r0; c0 < end; c0 += kBrgemmTileRows) {  // rows [c0, c1), a tile at a time
    const int64_t c1 = std::min(end, c0 + kBrgemmTileRows);
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0), N = 4 * nbj;
      const S* bhh = whh + j0 * 4 * s.k_hh;
      // h_prev: the previous step's output rows, or hx for rows that start at this step.
      const int64_t a1 = std::min(c1, with_prev);
      if (a1 > c0)
        at::native::cpublas::brgemm(a1 - c0, N, s.k_hh, H, N, N, false, out + (s.offsets[p] + c0) * H, bhh, tile,
                                    kVnni);
      const int64_t h0 = std::max(c0, with_prev);
      if (c1 > h0)
        at::native::cpublas::brgemm(c1 - h0, N, s.k_hh, H, N, N, false, hx + h0 * H, bhh, tile + (h0 - c0) * N,
                                    kVnni);
      if (wih != nullptr)
        at::native::cpublas::brgemm(c1 - c0, N, s.k_ih, I, N, N, true, x + (off + c0) * I, wih + j0 * 4 * s.k_ih,
                                    tile, kVnni);
      lstm_tile<S>(s, tile, c0, c1, off, j0, nbj);
    }
  }
}

}  // namespace

void lstm_fwd_brgemm_f32(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                         float* tile) {
  lstm_fwd_brgemm_step<float>(s, k, r0, r1, blk0, blk1, tile);
}
void lstm_fwd_brgemm_bf16(const LstmBrgemmSeq& s, int64_t k, int64_t r0, int64_t r1, int64_t blk0, int64_t blk1,
                          float* tile) {
  lstm_fwd_brgemm_step<c10::BFloat16>(s, k, r0, r1, blk0, blk1, tile);
}

}  // namespace fastrnn::cpu::FASTRNN_ISA_NS
