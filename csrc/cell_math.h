// Pointwise gate math of the LSTM, GRU and Elman RNN cells, forward and backward.
//
// One definition serves every backend: the CPU kernels instantiate it with at::vec::Vectorized<acc_t>
// (see cpu/vec_math.h), the CUDA kernels and the CUDA-emulation tests with float or double. Everything a
// function needs beyond + - * / comes from Math<T>, which each backend specialises for its types.
//
// Conventions, exactly as torch.nn:
//   LSTM gates are stacked i, f, g, o;  c' = f*c + i*g;  h' = o*tanh(c')
//   GRU gates are stacked r, z, n;      n = tanh(x_n + r*(W_hn h + b_hn));  h' = (1-z)*n + z*h
//   RNN                                 h' = tanh(x + W h) or relu(x + W h)
// "px_*" are the input-side pre-activations (W_i* x + b_i*), "ph_*" the hidden-side ones (W_h* h + b_h*).
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline
#endif

namespace fastrnn {

// Transcendentals and comparisons per value type. Scalars here; vector types in the backend that owns them.
template <typename T>
struct Math;

template <>
struct Math<float> {
  static FASTRNN_HD float exp(float x) { return ::expf(x); }
  // 1/x correctly rounded. On the GPU __frcp_rn gives the same bits as 1.f/x without the IEEE division's
  // out-of-line slow path, whose call made ptxas spill the values live across it.
#if defined(__CUDA_ARCH__)
  static FASTRNN_HD float recip(float x) { return __frcp_rn(x); }
#else
  static FASTRNN_HD float recip(float x) { return 1.f / x; }
#endif
  static FASTRNN_HD float tanh(float x) { return ::tanhf(x); }
  // NaN stays NaN (a NaN compares false), as torch.relu does.
  static FASTRNN_HD float relu(float x) { return x < 0.f ? 0.f : x; }
  // torch's relu backward (threshold_backward(dh, y, 0)): y <= 0 ? 0 : dh. A NaN output passes dh through,
  // and dh does not leak where y <= 0 (a NaN or inf dh there still gives exactly 0, not NaN).
  static FASTRNN_HD float relu_backward(float y, float dh) { return y <= 0.f ? 0.f : dh; }
};

template <>
struct Math<double> {
  static FASTRNN_HD double exp(double x) { return ::exp(x); }
#if defined(__CUDA_ARCH__)
  static FASTRNN_HD double recip(double x) { return __drcp_rn(x); }
#else
  static FASTRNN_HD double recip(double x) { return 1. / x; }
#endif
  static FASTRNN_HD double tanh(double x) { return ::tanh(x); }
  static FASTRNN_HD double relu(double x) { return x < 0. ? 0. : x; }
  static FASTRNN_HD double relu_backward(double y, double dh) { return y <= 0. ? 0. : dh; }
};

// 1 / (1 + e^-x): saturates to exactly 0 and 1 without overflow trouble (e^-x = inf gives 0) and keeps NaN.
template <typename T>
FASTRNN_HD T sigmoid(T x) {
  return Math<T>::recip(T(1) + Math<T>::exp(T(0) - x));
}

// ---------------------------------------------------------------------------------------------- LSTM
template <typename T>
struct LstmActs {
  T i, f, g, o;  // gates after their nonlinearities
  T c;           // new cell state
  T h;           // new hidden state before any projection: o * tanh(c)
};

template <typename T>
FASTRNN_HD LstmActs<T> lstm_forward(T pi, T pf, T pg, T po, T c_prev) {
  LstmActs<T> a;
  a.i = sigmoid(pi);
  a.f = sigmoid(pf);
  a.g = Math<T>::tanh(pg);
  a.o = sigmoid(po);
  a.c = a.f * c_prev + a.i * a.g;
  a.h = a.o * Math<T>::tanh(a.c);
  return a;
}

template <typename T>
struct LstmGrads {
  T di, df, dg, do_;  // gradients of the pre-activations (the same for the x and the h side)
  T dc_prev;
};

// dh: gradient reaching h (pre-projection); dc: gradient reaching c from the next step.
template <typename T>
FASTRNN_HD LstmGrads<T> lstm_backward(T i, T f, T g, T o, T c, T c_prev, T dh, T dc) {
  const T one(1);
  const T tc = Math<T>::tanh(c);
  const T dc_total = dc + dh * o * (one - tc * tc);
  LstmGrads<T> d;
  d.do_ = dh * tc * o * (one - o);
  d.di = dc_total * g * i * (one - i);
  d.df = dc_total * c_prev * f * (one - f);
  d.dg = dc_total * i * (one - g * g);
  d.dc_prev = dc_total * f;
  return d;
}

// ----------------------------------------------------------------------------------------------- GRU
template <typename T>
struct GruActs {
  T r, z, n;
  T hn;  // W_hn h + b_hn, kept because dr needs it
  T h;
};

template <typename T>
FASTRNN_HD GruActs<T> gru_forward(T px_r, T px_z, T px_n, T ph_r, T ph_z, T ph_n, T h_prev) {
  GruActs<T> a;
  a.r = sigmoid(px_r + ph_r);
  a.z = sigmoid(px_z + ph_z);
  a.hn = ph_n;
  a.n = Math<T>::tanh(px_n + a.r * ph_n);
  a.h = (T(1) - a.z) * a.n + a.z * h_prev;
  return a;
}

template <typename T>
struct GruGrads {
  T dr, dz;     // pre-activation gradients of r and z (x side and h side alike)
  T dpx_n;      // gradient of the x-side pre-activation of n
  T dph_n;      // gradient of W_hn h + b_hn (= dpx_n * r)
  T dh_prev;    // the part of dh_prev that does not go through W_hh (= dh * z)
};

template <typename T>
FASTRNN_HD GruGrads<T> gru_backward(T r, T z, T n, T hn, T h_prev, T dh) {
  const T one(1);
  GruGrads<T> d;
  d.dpx_n = dh * (one - z) * (one - n * n);
  d.dph_n = d.dpx_n * r;
  d.dr = d.dpx_n * hn * r * (one - r);
  d.dz = dh * (h_prev - n) * z * (one - z);
  d.dh_prev = dh * z;
  return d;
}

// ------------------------------------------------------------------------------------------ Elman RNN
template <typename T>
FASTRNN_HD T rnn_forward(T px, T ph, bool relu) {
  return relu ? Math<T>::relu(px + ph) : Math<T>::tanh(px + ph);
}

// The derivative is written in terms of the output h, so the backward needs nothing saved but the outputs.
template <typename T>
FASTRNN_HD T rnn_backward(T h, T dh, bool relu) {
  return relu ? Math<T>::relu_backward(h, dh) : dh * (T(1) - h * h);
}

}  // namespace fastrnn
