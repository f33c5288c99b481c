// host_seq.h -- what the emulation drivers transcribe of the host side, once: csrc/sequence.{h,cpp}'s SeqLayout,
// make_layout and gather_prev, csrc/cuda/cuda_common.h's next_step and sequence_rows, and the GEMMs the ATen
// drivers run on cuBLAS (naive loops here). Included by rnn_kernels_driver.cpp and ext_kernels_driver.cpp inside
// their anonymous namespace's scope (it opens its own).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

namespace emu_host {

using std::int64_t;

struct SeqLayout {  // fastrnn::SeqLayout, built as make_layout does from batch_sizes
  int64_t T = 0, B = 0, N = 0;
  std::vector<int64_t> batch_sizes, offsets;
  int64_t step(int64_t k, bool reverse) const { return reverse ? T - 1 - k : k; }
  int64_t prev_step(int64_t t, bool reverse) const { return reverse ? (t + 1 < T ? t + 1 : -1) : t - 1; }
  int64_t rows_with_prev(int64_t t, bool reverse) const {
    const int64_t p = prev_step(t, reverse);
    return p < 0 ? 0 : std::min(batch_sizes[t], batch_sizes[p]);
  }
};

SeqLayout make_layout(const std::vector<int64_t>& batch_sizes) {
  SeqLayout L;
  L.T = static_cast<int64_t>(batch_sizes.size());
  L.batch_sizes = batch_sizes;
  L.offsets.assign(L.T + 1, 0);
  for (int64_t t = 0; t < L.T; ++t) {
    if (batch_sizes[t] < 0 || (t > 0 && batch_sizes[t] > batch_sizes[t - 1]))
      throw std::runtime_error("batch_sizes must be non-increasing and non-negative");
    L.offsets[t + 1] = L.offsets[t] + batch_sizes[t];
  }
  L.B = L.T > 0 ? batch_sizes[0] : 0;
  L.N = L.offsets[L.T];
  return L;
}

// cuda_common.h next_step: the forward-order successor of step t, or -1.
int64_t next_step(const SeqLayout& L, int64_t t, bool reverse) {
  const int64_t s = reverse ? t - 1 : t + 1;
  return (s >= 0 && s < L.T) ? s : -1;
}

// cuda_common.h sequence_rows: for every sequence b, the packed row of its step at time 0 or at len_b - 1.
std::vector<int64_t> sequence_rows(const SeqLayout& L, bool last) {
  std::vector<int64_t> idx(L.B);
  for (int64_t b = 0; b < L.B; ++b) idx[b] = b;
  if (last) {
    for (int64_t t = 0; t < L.T; ++t)
      for (int64_t b = 0; b < L.batch_sizes[t]; ++b) idx[b] = L.offsets[t] + b;
  }
  return idx;
}

// sequence.cpp gather_prev: row r of the result is the state row r's step started from ([N, D]).
template <class T>
std::vector<T> gather_prev(const T* seq, int64_t ld_seq, const std::vector<T>& init, int64_t D, const SeqLayout& l,
                           bool reverse) {
  std::vector<T> r(static_cast<size_t>(l.N * D));
  for (int64_t t = 0; t < l.T; ++t) {
    const int64_t p = l.prev_step(t, reverse);
    const int64_t with_prev = l.rows_with_prev(t, reverse);
    for (int64_t b = 0; b < l.batch_sizes[t]; ++b) {
      const T* src = b < with_prev ? seq + (l.offsets[p] + b) * ld_seq : init.data() + b * D;
      for (int64_t d = 0; d < D; ++d) r[(l.offsets[t] + b) * D + d] = src[d];
    }
  }
  return r;
}

// ------------------------------------------------------------------ host GEMMs (cuBLAS / at::mm on the host side)
// C[m, n] = A[m, k] @ B  where B is [k, n] (trans_b = false) or B^T with B stored [n, k] (trans_b = true).
template <class T>
void mm(T* C, int64_t ldc, const T* A, int64_t lda, const T* Bm, int64_t m, int64_t k, int64_t n, bool trans_b) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T s = T(0);
      for (int64_t q = 0; q < k; ++q) s += A[i * lda + q] * (trans_b ? Bm[j * k + q] : Bm[q * n + j]);
      C[i * ldc + j] = s;
    }
}

template <class T>
std::vector<T> nan_vec(int64_t n) {
  return std::vector<T>(static_cast<size_t>(n), std::numeric_limits<T>::quiet_NaN());
}

}  // namespace emu_host
