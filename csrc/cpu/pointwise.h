// The fused per-timestep pointwise passes of the CPU kernels, for one block of rows [b0, b1) of a step.
//
// They are compiled once per instruction set (pointwise_{default,avx2,avx512}.cpp, each with at::vec of
// that width) and picked at run time by pointwise_kernels<scalar_t>(). All pointers are row-major with the
// row strides given; scalar_t is the tensor dtype, acc_t the dtype gates and cell states are computed in.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace fastrnn::cpu {

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

// The biases come as two optional rows, b_x (= b_ih) added to the x side gx and b_h (= b_hh) to the h side
// gh, here rather than in the GEMMs: gx is then a plain GEMM, without the pass that pre-fills its [N, G*H]
// output with the bias (a third of the x-side GEMM's time at H=64), and the GRU needs them apart anyway.
//
// LSTM step: gates = gx + b_x + gh + b_h (rows of 4H), c_state updated in place, h = o*tanh(c) written to
// h_out (row stride ld_h_out) and, if h_out2 is set, to h_out2 (stride H). ws (train only, stride 5H)
// receives i, f, g, o, c.
template <typename scalar_t>
struct LstmFwdArgs {
  const scalar_t* gx;
  const scalar_t* gh;
  const scalar_t* b_x;  // nullable
  const scalar_t* b_h;  // nullable
  acc_t<scalar_t>* c_state;
  scalar_t* h_out;
  int64_t ld_h_out;
  scalar_t* h_out2;        // nullable
  acc_t<scalar_t>* ws;     // nullable
  int64_t H;
};

// LSTM backward step: dh = dh_a (+ dh_b, row stride ld_dh_b: the step's rows of grad_output, read in place
// whatever the module's layout), reading ws (stride 5H) and c_prev (stride H); dc_state in place
// (in: gradient reaching c from later steps; out: gradient reaching c_prev); dgates (stride 4H) written;
// r_out (nullable, stride H) receives o*tanh(c), the projection's input.
template <typename scalar_t>
struct LstmBwdArgs {
  const acc_t<scalar_t>* ws;
  const acc_t<scalar_t>* c_prev;
  const scalar_t* dh_a;
  const scalar_t* dh_b;  // nullable
  acc_t<scalar_t>* dc_state;
  scalar_t* dgates;
  scalar_t* r_out;  // nullable
  int64_t H;
  int64_t ld_dh_b;
};

// GRU step: gx, gh rows of 3H, h_prev rows (stride H); h written to h_out / h_out2 as for the LSTM;
// ws (train only, stride 4H) receives r, z, n, W_hn h + b_hn.
template <typename scalar_t>
struct GruFwdArgs {
  const scalar_t* gx;
  const scalar_t* gh;
  const scalar_t* b_x;  // nullable: b_ih
  const scalar_t* b_h;  // nullable: b_hh
  const scalar_t* h_prev;
  scalar_t* h_out;
  int64_t ld_h_out;
  scalar_t* h_out2;     // nullable
  acc_t<scalar_t>* ws;  // nullable
  int64_t H;
};

// GRU backward step: dh = dh_a + dh_b (dh_b nullable, row stride ld_dh_b). Writes dgx and dgh (stride 3H: the gradients of
// the x-side and h-side pre-activations), dh_direct = dh * z (stride H), the part of dh_prev that does
// not pass through W_hh, and, if set, dph_n (stride H) = dgh's n part again (the only part of dgh that
// differs from dgx; the driver keeps it for every row while dgh is a one-step buffer). dh_direct may alias
// dh_a.
template <typename scalar_t>
struct GruBwdArgs {
  const acc_t<scalar_t>* ws;
  const scalar_t* h_prev;
  const scalar_t* dh_a;
  const scalar_t* dh_b;  // nullable
  scalar_t* dgx;
  scalar_t* dgh;
  scalar_t* dh_direct;
  int64_t H;
  scalar_t* dph_n;  // nullable
  int64_t ld_dh_b;
};

// RNN step: h = act(gx + b_x + gh + b_h) to h_out / h_out2.
template <typename scalar_t>
struct RnnFwdArgs {
  const scalar_t* gx;
  const scalar_t* gh;
  const scalar_t* b_x;  // nullable
  const scalar_t* b_h;  // nullable
  scalar_t* h_out;
  int64_t ld_h_out;
  scalar_t* h_out2;  // nullable
  int64_t H;
  bool relu;
};

// RNN backward step: dgates = (dh_a + dh_b) * act'(h), h being the step's output (stride ld_h), dh_b's row
// stride ld_dh_b.
template <typename scalar_t>
struct RnnBwdArgs {
  const scalar_t* h;
  int64_t ld_h;
  const scalar_t* dh_a;
  const scalar_t* dh_b;  // nullable
  scalar_t* dgates;
  int64_t H;
  bool relu;
  int64_t ld_dh_b;
};

// Small float32 GEMM of a step, c[r, :] (=|+=) a[r, :] @ wt for rows [r0, r1): wt is op(W) as a contiguous
// [k, n] matrix. Serves single-sequence (GEMV-like) steps over an L2-resident weight; see step_gemm.h.
struct SmallGemmArgs {
  const float* a;
  int64_t lda;
  const float* wt;
  float* c;
  int64_t ldc;
  int64_t k, n;
  bool accumulate;
};

// A few rows times a row-major weight's transpose, c[r, n] (=|+=) sum_k a[r, k] * w[n, k] for r < rows (at
// most 3) and output columns [n0, n1): the x-projection and recurrent product of a decoding step (T*B < 4
// rows) over a weight too large for the small-GEMM loop's transposed copy to pay (step_gemm.h), read in place.
// w and c are both float32 or both bfloat16 (bf16: products and sums in fp32, c rounded once, as a bf16 GEMM
// with fp32 accumulation); a is float32 (a bf16 step's rows converted once by the caller, not once per 4 columns).
struct WtGemvArgs {
  const float* a;
  int64_t lda;
  const void* w;
  int64_t ldw;
  void* c;
  int64_t ldc;
  int64_t rows, k;
  bool accumulate;
  bool bf16;
};

// The two products of a short sequence's backward that MKL runs far below the machine's rate (a cell's step:
// N = B <= 8 rows of gate gradients), float32, c with unit column stride:
//  - kNarrow: c [r, n] (+)= a [r, k] @ b [k, n], r <= kSmallMmMaxRows (the input gradient dG @ W_ih), b read in place;
//  - kOuter:  c [m, n] (+)= a^T @ b with a [k, m] and b [k, n] row-major, k <= kSmallMmMaxRows (the weight
//    gradients dG^T @ x, dG^T @ h_prev): each output row sums k rows of b, which stay in L1.
enum class SmallMmKind { kNarrow = 0, kOuter = 1 };
struct SmallMmArgs {
  SmallMmKind kind;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int64_t rows, k, n;  // kNarrow: rows of a and c; kOuter: rows of c (columns of a); k; columns of b and c
  bool accumulate;
};

template <typename scalar_t>
struct PointwiseKernels {
  void (*lstm_fwd)(const LstmFwdArgs<scalar_t>&, int64_t b0, int64_t b1);
  void (*lstm_bwd)(const LstmBwdArgs<scalar_t>&, int64_t b0, int64_t b1);
  void (*gru_fwd)(const GruFwdArgs<scalar_t>&, int64_t b0, int64_t b1);
  void (*gru_bwd)(const GruBwdArgs<scalar_t>&, int64_t b0, int64_t b1);
  void (*rnn_fwd)(const RnnFwdArgs<scalar_t>&, int64_t b0, int64_t b1);
  void (*rnn_bwd)(const RnnBwdArgs<scalar_t>&, int64_t b0, int64_t b1);
};

// The instruction sets the kernels are built for, best last.
enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this processor runs, lowered by FASTRNN_CPU_CAPABILITY=default|avx2|avx512
// (read on every call, so tests can run every variant in one process).
Isa active_isa();
const char* isa_name(Isa isa);
// Whether the processor is AMD's (some defaults follow what measured faster on each vendor's processors).
bool cpu_is_amd();

template <typename scalar_t>
const PointwiseKernels<scalar_t>& pointwise_kernels(Isa isa);

using SmallGemmFn = void (*)(const SmallGemmArgs&, int64_t r0, int64_t r1);
SmallGemmFn small_gemm_kernel(Isa isa);
using WtGemvFn = void (*)(const WtGemvArgs&, int64_t n0, int64_t n1);
WtGemvFn wt_gemv_kernel(Isa isa);
// kNarrow: output columns [p0, p1); kOuter: output rows [p0, p1).
using SmallMmFn = void (*)(const SmallMmArgs&, int64_t p0, int64_t p1);
SmallMmFn small_mm_kernel(Isa isa);

// The gate activations exactly as the step kernels of an instruction set compute them on float32 (for the
// accuracy test of fast_math.h through the test-only op fastrnn::_cpu_activation).
enum class Activation { kSigmoid = 0, kTanh = 1 };
using ActivationFn = void (*)(const float* x, float* y, int64_t n, Activation fn);
ActivationFn activation_kernel(Isa isa);

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < m, j < n (the weight packing of brgemm_step.cpp).
using TransposeFn = void (*)(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t m, int64_t n);
TransposeFn transpose_kernel(Isa isa);

// Defined once per instruction set in pointwise_<isa>.cpp.
#define FASTRNN_DECLARE_ISA(NS)                                                        \
  namespace NS {                                                                       \
  template <typename scalar_t>                                                         \
  const PointwiseKernels<scalar_t>& kernels();                                         \
  extern template const PointwiseKernels<float>& kernels<float>();                     \
  extern template const PointwiseKernels<double>& kernels<double>();                   \
  extern template const PointwiseKernels<c10::BFloat16>& kernels<c10::BFloat16>();     \
  void small_gemm(const SmallGemmArgs&, int64_t r0, int64_t r1);                       \
  void wt_gemv(const WtGemvArgs&, int64_t n0, int64_t n1);                             \
  void small_mm(const SmallMmArgs&, int64_t p0, int64_t p1);                           \
  void activation(const float* x, float* y, int64_t n, Activation fn);                 \
  void transpose_f32(const float* src, int64_t ld_src, float* dst, int64_t ld_dst,     \
                     int64_t m, int64_t n);                                            \
  }
FASTRNN_DECLARE_ISA(isa_default)
FASTRNN_DECLARE_ISA(isa_avx2)
FASTRNN_DECLARE_ISA(isa_avx512)
#undef FASTRNN_DECLARE_ISA

}  // namespace fastrnn::cpu
