// The per-step GEMM of the CPU recurrences: C[rows, n] (=|+=) A[rows, k] @ op(W), with W the same for
// every step of a sequence.
//
// A GEMM library repacks its B operand into its blocked panel format on every call. For the recurrent
// GEMM that repacking (|W| = 4H x P floats) is paid T times for a product whose FLOPs are only B times
// |W|: at B = 64 it costs as much as a tenth of the step, at B <= 8 more than the arithmetic. So for float32
// the weight is packed ONCE per sequence with MKL's packed-GEMM API (cblas_sgemm_pack/_compute, which the
// x86 builds of libtorch_cpu export) and every step computes against the packed panels. Where those
// symbols are absent (other builds), or for other dtypes, or for batches under 4 rows (GEMV-like steps,
// which MKL does not repack), or for steps whose row count differs from the one the panels were packed for
// (packed sequences' shorter steps), it falls back to at::mm.
// Steps of fewer than 4 rows over a float32 weight of at most FASTRNN_CPU_SMALL_GEMM_MAX elements (default
// 65536: 256 KB, L2-resident) skip BLAS: a register-blocked loop (pointwise_impl.h, small_gemm) does them.
// Measured, T=100 H=64 B=1 against at::mm: LSTM inference 1.44x, LSTM training 1.37x, GRU inference 1.56x;
// at B=16 it was 0.91x of MKL, so larger batches keep MKL.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn::cpu {

class StepGemm {
 public:
  // transpose_w: op(W) = W^T with W [n, k] (e.g. h @ W_hh^T); otherwise op(W) = W with W [k, n].
  // rows: the row count most steps have (the batch); packing is done for that count.
  // max_pack_bytes: no packing when MKL's panels would take more (they take at least ~7.5 MiB whatever the
  // weight's size, so a backward passes the size of the sequence buffer it holds anyway, keeping the panels
  // from dominating its peak memory on small sequences).
  // steps: how many steps will run it (a transposed weight's copy for the small-GEMM loop needs a few).
  StepGemm(const at::Tensor& w, bool transpose_w, int64_t rows, int64_t max_pack_bytes = INT64_MAX,
           int64_t steps = INT64_MAX);
  // c = a @ op(W) (accumulate=false) or c += a @ op(W); a [r, k] and c [r, n] row-major with unit column
  // stride (row strides may exceed the width).
  void run(const at::Tensor& a, at::Tensor c, bool accumulate = false) const;
  bool packed() const { return packed_.defined(); }

 private:
  at::Tensor w_;       // op(W) as a [k, n] view, for the fallback
  at::Tensor packed_;  // MKL's packed panels (float32 storage), undefined when not packing
  at::Tensor small_;   // op(W) as a contiguous [k, n] float32 matrix when the small-GEMM loop serves
  int64_t rows_, k_, n_;
};

// Whether the packed path is available and enabled (FASTRNN_CPU_PACKED_GEMM=0 turns it off, for A/B
// measurements and tests of the fallback).
bool packed_gemm_enabled();

}  // namespace fastrnn::cpu
