// Body of the CPU pointwise step kernels. Included once per instruction set by pointwise_<isa>.cpp with
// FASTRNN_ISA_NS naming the namespace; at::vec::Vectorized then has that instruction set's width.
// Each function walks rows [b0, b1) and, inside a row, hidden units a vector at a time, feeding
// cell_math.h the pre-activations and storing what it returns: the gates never leave registers between
// the bias add and the state/output write.
#ifndef FASTRNN_ISA_NS
#error "define FASTRNN_ISA_NS before including pointwise_impl.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "../cell_math.h"
#include "fast_math.h"
#include "pointwise.h"

namespace fastrnn {

// Math<> for vectors of this instruction set: float32 exp/tanh from fast_math.h (polynomial) on AVX2/AVX-512,
// ATen's (Sleef) otherwise.
template <typename A>
struct Math<at::vec::Vectorized<A>> {
  using V = at::vec::Vectorized<A>;
  static V exp(const V& x) { return cpu::FASTRNN_ISA_NS::fast::exp(x); }
  static V tanh(const V& x) { return cpu::FASTRNN_ISA_NS::fast::tanh(x); }
  static V recip(const V& x) { return V(A(1)) / x; }
  static V relu(const V& x) { return V::blendv(x, V(A(0)), x < V(A(0))); }  // NaN < 0 is false: NaN kept
  // y <= 0 ? 0 : dh, as torch's threshold_backward: NaN <= 0 is false, so a NaN output passes dh through.
  static V relu_backward(const V& y, const V& dh) { return V::blendv(dh, V(A(0)), y <= V(A(0))); }
};

namespace cpu::FASTRNN_ISA_NS {
namespace {

using at::vec::Vectorized;

// Loads n <= V::size() elements as the accumulation type; stores likewise, rounding where needed.
template <typename A>
inline Vectorized<A> load(const A* p, int64_t n) {
  return n == Vectorized<A>::size() ? Vectorized<A>::loadu(p) : Vectorized<A>::loadu(p, n);
}
inline Vectorized<float> load(const c10::BFloat16* p, int64_t n) {
  return std::get<0>(at::vec::convert_to_float<c10::BFloat16>(Vectorized<c10::BFloat16>::loadu(p, n)));
}
template <typename A>
inline void store(const Vectorized<A>& v, A* p, int64_t n) {
  if (n == Vectorized<A>::size()) v.store(p); else v.store(p, n);
}
inline void store(const Vectorized<float>& v, c10::BFloat16* p, int64_t n) {
  at::vec::convert_from_float<c10::BFloat16>(v, v).store(p, n);
}
// Loads the sum of two rows, the second optional (a bias, or the gradient from the output).
template <typename S>
inline auto load_sum(const S* a, const S* b, int64_t n) {
  auto v = load(a, n);
  return b != nullptr ? v + load(b, n) : v;
}

template <typename S>
void lstm_fwd(const LstmFwdArgs<S>& a, int64_t b0, int64_t b1) {
  using V = Vectorized<acc_t<S>>;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    const S* gx = a.gx + b * 4 * H;
    const S* gh = a.gh + b * 4 * H;
    acc_t<S>* c = a.c_state + b * H;
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), H - j);
      auto pre = [&](int64_t k) {
        const int64_t o = k * H + j;
        return load_sum(gx + o, a.b_x ? a.b_x + o : nullptr, n) + load_sum(gh + o, a.b_h ? a.b_h + o : nullptr, n);
      };
      const auto s = lstm_forward<V>(pre(0), pre(1), pre(2), pre(3), load(c + j, n));
      store(s.c, c + j, n);
      store(s.h, a.h_out + b * a.ld_h_out + j, n);
      if (a.h_out2) store(s.h, a.h_out2 + b * H + j, n);
      if (a.ws) {
        acc_t<S>* w = a.ws + b * 5 * H + j;
        store(s.i, w, n);
        store(s.f, w + H, n);
        store(s.g, w + 2 * H, n);
        store(s.o, w + 3 * H, n);
        store(s.c, w + 4 * H, n);
      }
    }
  }
}

template <typename S>
void lstm_bwd(const LstmBwdArgs<S>& a, int64_t b0, int64_t b1) {
  using V = Vectorized<acc_t<S>>;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    const acc_t<S>* w = a.ws + b * 5 * H;
    acc_t<S>* dc = a.dc_state + b * H;
    S* dg = a.dgates + b * 4 * H;
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), H - j);
      const V i = load(w + j, n), f = load(w + H + j, n), g = load(w + 2 * H + j, n), o = load(w + 3 * H + j, n);
      const V c = load(w + 4 * H + j, n);
      const V dh = load_sum(a.dh_a + b * H + j, a.dh_b ? a.dh_b + b * a.ld_dh_b + j : nullptr, n);
      const auto d = lstm_backward<V>(i, f, g, o, c, load(a.c_prev + b * H + j, n), dh, load(dc + j, n));
      store(d.dc_prev, dc + j, n);
      store(d.di, dg + j, n);
      store(d.df, dg + H + j, n);
      store(d.dg, dg + 2 * H + j, n);
      store(d.do_, dg + 3 * H + j, n);
      if (a.r_out) store(o * Math<V>::tanh(c), a.r_out + b * H + j, n);
    }
  }
}

template <typename S>
void gru_fwd(const GruFwdArgs<S>& a, int64_t b0, int64_t b1) {
  using V = Vectorized<acc_t<S>>;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    const S* gx = a.gx + b * 3 * H;
    const S* gh = a.gh + b * 3 * H;
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), H - j);
      auto xside = [&](int64_t k) { return load_sum(gx + k * H + j, a.b_x ? a.b_x + k * H + j : nullptr, n); };
      auto hside = [&](int64_t k) { return load_sum(gh + k * H + j, a.b_h ? a.b_h + k * H + j : nullptr, n); };
      const auto s = gru_forward<V>(xside(0), xside(1), xside(2), hside(0), hside(1), hside(2),
                                    load(a.h_prev + b * H + j, n));
      store(s.h, a.h_out + b * a.ld_h_out + j, n);
      if (a.h_out2) store(s.h, a.h_out2 + b * H + j, n);
      if (a.ws) {
        acc_t<S>* w = a.ws + b * 4 * H + j;
        store(s.r, w, n);
        store(s.z, w + H, n);
        store(s.n, w + 2 * H, n);
        store(s.hn, w + 3 * H, n);
      }
    }
  }
}

template <typename S>
void gru_bwd(const GruBwdArgs<S>& a, int64_t b0, int64_t b1) {
  using V = Vectorized<acc_t<S>>;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    const acc_t<S>* w = a.ws + b * 4 * H;
    S* dgx = a.dgx + b * 3 * H;
    S* dgh = a.dgh + b * 3 * H;
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), H - j);
      const V dh = load_sum(a.dh_a + b * H + j, a.dh_b ? a.dh_b + b * a.ld_dh_b + j : nullptr, n);
      const auto d = gru_backward<V>(load(w + j, n), load(w + H + j, n), load(w + 2 * H + j, n),
                                     load(w + 3 * H + j, n), load(a.h_prev + b * H + j, n), dh);
      store(d.dr, dgx + j, n);
      store(d.dz, dgx + H + j, n);
      store(d.dpx_n, dgx + 2 * H + j, n);
      store(d.dr, dgh + j, n);
      store(d.dz, dgh + H + j, n);
      store(d.dph_n, dgh + 2 * H + j, n);
      if (a.dph_n) store(d.dph_n, a.dph_n + b * H + j, n);
      store(d.dh_prev, a.dh_direct + b * H + j, n);
    }
  }
}

template <typename S>
void rnn_fwd(const RnnFwdArgs<S>& a, int64_t b0, int64_t b1) {
  using V = Vectorized<acc_t<S>>;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), H - j);
      const int64_t o = b * H + j;
      const V h = rnn_forward<V>(load_sum(a.gx + o, a.b_x ? a.b_x + j : nullptr, n),
                                 load_sum(a.gh + o, a.b_h ? a.b_h + j : nullptr, n), a.relu);
      store(h, a.h_out + b * a.ld_h_out + j, n);
      if (a.h_out2) store(h, a.h_out2 + o, n);
    }
  }
}

template <typename S>
void rnn_bwd(const RnnBwdArgs<S>& a, int64_t b0, int64_t b1) {
  using V = Vectorized<acc_t<S>>;
  const int64_t H = a.H;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), H - j);
      const int64_t o = b * H + j;
      const V dh = load_sum(a.dh_a + o, a.dh_b ? a.dh_b + b * a.ld_dh_b + j : nullptr, n);
      store(rnn_backward<V>(load(a.h + b * a.ld_h + j, n), dh, a.relu), a.dgates + o, n);
    }
  }
}

}  // namespace

namespace {

// Rows [b, b + R) of the small GEMM over columns [n0, n0 + NV vectors): each vector of wt, loaded once, is
// multiplied into every row's accumulators (R x NV in registers).
template <int R, int NV>
inline void small_gemm_block(const SmallGemmArgs& g, int64_t b, int64_t n0) {
  using V = Vectorized<float>;
  const int64_t lda = g.lda, ldc = g.ldc, k = g.k, n = g.n;  // (locals: kept in registers across the loop)
  const float* a = g.a + b * lda;
  const float* wt = g.wt + n0;
  float* c = g.c + b * ldc + n0;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = g.accumulate ? V::loadu(c + r * ldc + v * V::size()) : V(0.f);
  for (int64_t kk = 0; kk < k; ++kk) {
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = V::loadu(wt + kk * n + v * V::size());
    for (int r = 0; r < R; ++r) {
      const V av(a[r * lda + kk]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v].store(c + r * ldc + v * V::size());
}

// Rows [b, b + R) over all columns: chunks of 4 vectors, the remaining whole vectors, then the part of one.
template <int R>
void small_gemm_rows(const SmallGemmArgs& g, int64_t b) {
  using V = Vectorized<float>;
  constexpr int kNv = 4;
  int64_t n0 = 0;
  for (; n0 + kNv * V::size() <= g.n; n0 += kNv * V::size()) small_gemm_block<R, kNv>(g, b, n0);
  switch ((g.n - n0) / V::size()) {
    case 3: small_gemm_block<R, 3>(g, b, n0); n0 += 3 * V::size(); break;
    case 2: small_gemm_block<R, 2>(g, b, n0); n0 += 2 * V::size(); break;
    case 1: small_gemm_block<R, 1>(g, b, n0); n0 += V::size(); break;
    default: break;
  }
  if (n0 == g.n) return;
  const int64_t m = g.n - n0;
  for (int r = 0; r < R; ++r) {
    const float* a = g.a + (b + r) * g.lda;
    float* c = g.c + (b + r) * g.ldc + n0;
    V acc = g.accumulate ? load(c, m) : V(0.f);
    for (int64_t kk = 0; kk < g.k; ++kk) acc = at::vec::fmadd(V(a[kk]), load(g.wt + kk * g.n + n0, m), acc);
    store(acc, c, m);
  }
}

}  // namespace

// Rows in groups that share each loaded vector of wt: 4 (16 accumulators) where vectors are 16 floats wide and
// there are 32 registers, 2 within AVX2's 16; the same sums in the same order as one row at a time.
void small_gemm(const SmallGemmArgs& g, int64_t r0, int64_t r1) {
  constexpr int kRows = Vectorized<float>::size() >= 16 ? 4 : 2;
  int64_t b = r0;
  for (; b + kRows <= r1; b += kRows) small_gemm_rows<kRows>(g, b);
  switch (r1 - b) {
    case 3: if constexpr (kRows > 3) small_gemm_rows<3>(g, b); break;
    case 2: if constexpr (kRows > 2) small_gemm_rows<2>(g, b); break;
    case 1: small_gemm_rows<1>(g, b); break;
    default: break;
  }
}

namespace {

// The sum of a vector's lanes (through memory: ATen's vec_reduce_all trips GCC 12's uninitialised-use warning
// under AVX-512).
inline float lane_sum(const Vectorized<float>& v) {
  alignas(64) float lanes[Vectorized<float>::size()];
  v.store(lanes);
  float sum = 0.f;
  for (int i = 0; i < Vectorized<float>::size(); ++i) sum += lanes[i];
  return sum;
}

// out[j] = the sum of acc[j]'s lanes, j < 4: with horizontal adds on AVX2/AVX-512 (three hadds and one add give
// the four sums in one vector), not four stores to memory and a chain of scalar adds each.
inline void lane_sums4(const Vectorized<float> acc[4], float out[4]) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  __m256 v[4];
  for (int j = 0; j < 4; ++j) {
#if defined(CPU_CAPABILITY_AVX512)
    // the two 256-bit halves added, through memory: GCC 12's 512 -> 256-bit casts and extracts read an
    // "uninitialized" operand (GCC bug 105593) that -Werror turns into a build failure
    alignas(64) float halves[16];
    acc[j].store(halves);
    v[j] = _mm256_add_ps(_mm256_load_ps(halves), _mm256_load_ps(halves + 8));
#else
    v[j] = acc[j];
#endif
  }
  // per 128-bit half: [v0 01, v0 23, v1 01, v1 23], then [v0 0123, v1 0123, v2 0123, v3 0123]
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
#else
  for (int j = 0; j < 4; ++j) out[j] = lane_sum(acc[j]);
#endif
}

// c = sum (+ c when accumulating), rounded to S.
template <typename S>
inline void put(S* c, float sum, bool accumulate) {
  *c = static_cast<S>(accumulate ? static_cast<float>(*c) + sum : sum);
}

// Rows [r0, r0 + R) and output columns [n, n + 4): the four weight rows' dot products with each row of a, along k
// in vectors (each weight vector loaded once for all R rows), reduced at the end.
template <typename S, int R>
inline void wt_gemv_quad(const WtGemvArgs& g, int64_t n, int64_t r0) {
  using V = Vectorized<float>;
  const int64_t k = g.k;
  const float* a = g.a + r0 * g.lda;
  const S* w = static_cast<const S*>(g.w) + n * g.ldw;
  V acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = V(0.f);
  int64_t kk = 0;
  if constexpr (std::is_same_v<S, c10::BFloat16>) {  // whole bf16 vectors (two float vectors each), converted
    using BV = Vectorized<c10::BFloat16>;
    for (; kk + BV::size() <= k; kk += BV::size()) {
      V wlo[4], whi[4];
      for (int j = 0; j < 4; ++j)
        std::tie(wlo[j], whi[j]) = at::vec::convert_to_float<c10::BFloat16>(BV::loadu(w + j * g.ldw + kk));
      for (int r = 0; r < R; ++r) {
        const V alo = V::loadu(a + r * g.lda + kk), ahi = V::loadu(a + r * g.lda + kk + V::size());
        for (int j = 0; j < 4; ++j)
          acc[r][j] = at::vec::fmadd(ahi, whi[j], at::vec::fmadd(alo, wlo[j], acc[r][j]));
      }
    }
  }
  for (; kk < k; kk += V::size()) {  // float32 throughout; bf16's last part
    const int64_t m = std::min<int64_t>(V::size(), k - kk);
    V wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = load(w + j * g.ldw + kk, m);
    for (int r = 0; r < R; ++r) {
      const V av = load(a + r * g.lda + kk, m);
      for (int j = 0; j < 4; ++j) acc[r][j] = at::vec::fmadd(av, wv[j], acc[r][j]);
    }
  }
  S* c = static_cast<S*>(g.c) + r0 * g.ldc;
  for (int r = 0; r < R; ++r) {
    float sums[4];
    lane_sums4(acc[r], sums);
    for (int j = 0; j < 4; ++j) put(c + r * g.ldc + n + j, sums[j], g.accumulate);
  }
}

// One output column, all rows (the last n % 4 columns).
template <typename S>
inline void wt_gemv_one(const WtGemvArgs& g, int64_t n) {
  using V = Vectorized<float>;
  const float* a = g.a;
  const S* w = static_cast<const S*>(g.w) + n * g.ldw;
  for (int64_t r = 0; r < g.rows; ++r) {
    V acc(0.f);
    for (int64_t kk = 0; kk < g.k; kk += V::size()) {
      const int64_t m = std::min<int64_t>(V::size(), g.k - kk);
      acc = at::vec::fmadd(load(a + r * g.lda + kk, m), load(w + kk, m), acc);
    }
    put(static_cast<S*>(g.c) + r * g.ldc + n, lane_sum(acc), g.accumulate);
  }
}

// Rows in groups of 3 (12 accumulators and 4 weight vectors: AVX2's 16 registers) inside each quad of columns:
// the quad's 4 weight rows (4 * k elements) come from memory for the first group and from L1 for the others, so
// W is streamed once whatever the row count.
template <typename S>
void wt_gemv_typed(const WtGemvArgs& g, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    int64_t r = 0;
    for (; r + 3 <= g.rows; r += 3) wt_gemv_quad<S, 3>(g, n, r);
    switch (g.rows - r) {
      case 2: wt_gemv_quad<S, 2>(g, n, r); break;
      case 1: wt_gemv_quad<S, 1>(g, n, r); break;
      default: break;
    }
  }
  for (; n < n1; ++n) wt_gemv_one<S>(g, n);
}

// c (+)= v, n <= V::size() elements.
inline void put_vec(float* c, Vectorized<float> v, int64_t n, bool accumulate) {
  store(accumulate ? v + load(c, n) : v, c, n);
}

// kNarrow, rows [r0, r0 + R) and the NV vectors of columns from n (the last one m <= V::size() wide): along k, NV
// vectors of b's row k times each row's a[r][k], broadcast. R * NV accumulators (4 x 3 on AVX2's 16 registers).
template <int R, int NV>
inline void narrow_block(const SmallMmArgs& g, int64_t r0, int64_t n, int64_t m) {
  using V = Vectorized<float>;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V(0.f);
  const float* a = g.a + r0 * g.lda;
  const float* b = g.b + n;
  for (int64_t kk = 0; kk < g.k; ++kk, b += g.ldb) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = v + 1 < NV ? V::loadu(b + v * V::size()) : load(b + v * V::size(), m);
    for (int r = 0; r < R; ++r) {
      const V av(a[r * g.lda + kk]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
  float* c = g.c + r0 * g.ldc + n;
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      put_vec(c + r * g.ldc + v * V::size(), acc[r][v], v + 1 < NV ? V::size() : m, g.accumulate);
}

// Rows in groups of 4 inside each block of columns: the block's slice of b (k x 3 vectors) streams from memory for
// the first group and from L2 for the others.
template <int NV>
inline void narrow_rows(const SmallMmArgs& g, int64_t n, int64_t m) {
  int64_t r = 0;
  for (; r + 4 <= g.rows; r += 4) narrow_block<4, NV>(g, r, n, m);
  switch (g.rows - r) {
    case 3: narrow_block<3, NV>(g, r, n, m); break;
    case 2: narrow_block<2, NV>(g, r, n, m); break;
    case 1: narrow_block<1, NV>(g, r, n, m); break;
    default: break;
  }
}

void small_mm_narrow(const SmallMmArgs& g, int64_t n0, int64_t n1) {
  constexpr int64_t VS = Vectorized<float>::size();
  int64_t n = n0;
  for (; n + 3 * VS <= n1; n += 3 * VS) narrow_rows<3>(g, n, VS);
  for (; n < n1; n += VS) narrow_rows<1>(g, n, std::min(VS, n1 - n));
}

// kOuter, output rows [m0, m1) with K = g.k terms: each row's K coefficients a[kk][row] broadcast once, then along
// the columns in pairs of vectors, sum over kk of coefficient x b's row kk (b: K rows, in L1 after the first row).
template <int K>
void outer_rows(const SmallMmArgs& g, int64_t m0, int64_t m1) {
  using V = Vectorized<float>;
  constexpr int64_t VS = V::size();
  for (int64_t row = m0; row < m1; ++row) {
    V coef[K];
    for (int kk = 0; kk < K; ++kk) coef[kk] = V(g.a[kk * g.lda + row]);
    float* c = g.c + row * g.ldc;
    int64_t n = 0;
    for (; n + 2 * VS <= g.n; n += 2 * VS) {
      V s0 = coef[0] * V::loadu(g.b + n), s1 = coef[0] * V::loadu(g.b + n + VS);
      for (int kk = 1; kk < K; ++kk) {
        s0 = at::vec::fmadd(coef[kk], V::loadu(g.b + kk * g.ldb + n), s0);
        s1 = at::vec::fmadd(coef[kk], V::loadu(g.b + kk * g.ldb + n + VS), s1);
      }
      put_vec(c + n, s0, VS, g.accumulate);
      put_vec(c + n + VS, s1, VS, g.accumulate);
    }
    for (; n < g.n; n += VS) {
      const int64_t w = std::min(VS, g.n - n);
      V s = coef[0] * load(g.b + n, w);
      for (int kk = 1; kk < K; ++kk) s = at::vec::fmadd(coef[kk], load(g.b + kk * g.ldb + n, w), s);
      put_vec(c + n, s, w, g.accumulate);
    }
  }
}

void small_mm_outer(const SmallMmArgs& g, int64_t m0, int64_t m1) {
  switch (g.k) {
    case 1: return outer_rows<1>(g, m0, m1);
    case 2: return outer_rows<2>(g, m0, m1);
    case 3: return outer_rows<3>(g, m0, m1);
    case 4: return outer_rows<4>(g, m0, m1);
    case 5: return outer_rows<5>(g, m0, m1);
    case 6: return outer_rows<6>(g, m0, m1);
    case 7: return outer_rows<7>(g, m0, m1);
    case 8: return outer_rows<8>(g, m0, m1);
    default: break;  // small_mm_into serves 1 <= k <= kSmallMmMaxRows only (no check here: this file is compiled
                     // for a wider ISA, and c10's message helpers would be emitted as shared inline code)
  }
}

}  // namespace

void small_mm(const SmallMmArgs& g, int64_t p0, int64_t p1) {
  if (g.kind == SmallMmKind::kNarrow)
    small_mm_narrow(g, p0, p1);
  else
    small_mm_outer(g, p0, p1);
}

void wt_gemv(const WtGemvArgs& g, int64_t n0, int64_t n1) {
  if (g.bf16)
    wt_gemv_typed<c10::BFloat16>(g, n0, n1);
  else
    wt_gemv_typed<float>(g, n0, n1);
}

template <typename scalar_t>
const PointwiseKernels<scalar_t>& kernels() {
  static const PointwiseKernels<scalar_t> table{&lstm_fwd<scalar_t>, &lstm_bwd<scalar_t>, &gru_fwd<scalar_t>,
                                                &gru_bwd<scalar_t>,  &rnn_fwd<scalar_t>,  &rnn_bwd<scalar_t>};
  return table;
}
template const PointwiseKernels<float>& kernels<float>();
template const PointwiseKernels<double>& kernels<double>();
template const PointwiseKernels<c10::BFloat16>& kernels<c10::BFloat16>();

void activation(const float* x, float* y, int64_t n, Activation fn) {
  using V = Vectorized<float>;
  for (int64_t i = 0; i < n; i += V::size()) {
    const int64_t m = std::min<int64_t>(V::size(), n - i);
    const V v = load(x + i, m);
    store(fn == Activation::kSigmoid ? sigmoid(v) : Math<V>::tanh(v), y + i, m);
  }
}

#if defined(CPU_CAPABILITY_AVX2)
namespace {
// dst[j][i] = src[i][j] for an 8 x 8 block, in registers (unpack pairs, shuffle quads, swap 128-bit halves)
inline void transpose_8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
}  // namespace
#endif

void transpose_f32(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t m, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  // 8 x 8 register transposes, the ragged edges element by element. (ATen's transpose_mxn is a plain loop
  // under AVX2: packing a GRU's 3 MB W_hh took 0.5 ms, over half of a T=1 B=8 H=512 brgemm call on Zen 3.)
  const int64_t m8 = m / 8 * 8, n8 = n / 8 * 8;
  for (int64_t i = 0; i < m8; i += 8)
    for (int64_t j = 0; j < n8; j += 8) transpose_8x8(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = i < m8 ? n8 : 0; j < n; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
  return;
#endif
  // ATen's: 16 x 16 register transposes under AVX-512, a plain loop otherwise; in pieces that fit its int sizes
  constexpr int64_t kPiece = int64_t{1} << 14;
  for (int64_t i = 0; i < m; i += kPiece)
    for (int64_t j = 0; j < n; j += kPiece)
      at::vec::transpose_mxn<float>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                                    static_cast<int>(std::min(kPiece, m - i)), static_cast<int>(std::min(kPiece, n - j)));
}

}  // namespace cpu::FASTRNN_ISA_NS
}  // namespace fastrnn
