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
// A transposed weight (h @ W_hh^T) that the small-GEMM loop does not take (over the size, or a sequence too
// short to pay for its copy: decoding a token per call) is read in place by mm_wt_into below for steps of
// fewer than 4 rows. Measured (2-core Zen 3, T=1 B=1 module inference, interleaved medians vs torch.nn, at::mm ->
// mm_wt_into): GRU H=1024 1.03x -> 1.36x, Elman RNN H=1024 1.32x -> 1.58x, LSTM H=1024 7.2x -> 8.9x, GRU H=256
// 0.93x -> 0.97x; there the weights come from DRAM (18 GB/s on 2 threads), so the gain is both cores' share.
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
  at::Tensor wt_;      // W [n, k] itself (float32 or bf16, contiguous) when few-row steps read it in place
  at::Tensor narrow_;  // W [k, n] itself (float32, unit column stride) for the one step of a short backward
  int64_t rows_, k_, n_;
};

// c (=|+=) a @ w^T, a [r, k] and c [r, n] with unit column strides, w [n, k] contiguous, all float32 or all
// bfloat16 (fp32 sums, c rounded once), for r <= kWtGemvMaxRows rows (a decoding step, or the one step of a
// call with a small batch): w is read in place by a vector loop of dot products (wt_gemv in pointwise.h), streamed
// once whatever r, its output columns split over the threads from kWtGemvParallelBytes of weight-bytes x rows
// up. Returns false, having done nothing, where that does not apply (the caller
// runs at::mm). MKL's GEMV ran at 13 GFLOP/s on an L2-resident 256 x 256 weight, and on one thread from memory,
// on a 2-core Zen 3. FASTRNN_CPU_WT_GEMV=0 turns it off (A/B).
bool mm_wt_into(const at::Tensor& a, const at::Tensor& w, at::Tensor c, bool accumulate);
constexpr int64_t kWtGemvParallelBytes = int64_t{512} << 10;
constexpr int64_t kWtGemvMaxRows = 8;

// c = a @ b (add: c += a @ b) for the two float32 products of a short sequence's backward that MKL runs far below
// the machine's rate (pointwise.h SmallMmArgs): a with at most kSmallMmMaxRows rows and unit column stride (the
// input gradient dG @ W_ih: b read in place), or a = m^T with m [k, rows] row-major, k <= kSmallMmMaxRows (the
// weight gradients dG^T @ x). b and c with unit column stride. Returns false, nothing written, for any other
// product or with FASTRNN_CPU_SMALL_MM=0 (A/B). Measured (2-core Zen 3, interleaved medians, through the test op
// _cpu_small_mm, c added to, at::mm's MKL / this): [8 x 1536] @ [1536 x 512] 1.56x, [8 x 768] @ [768 x 256] 1.78x,
// [8 x 256] @ [256 x 256] 1.64x, [8 x 4096] @ [4096 x 1024] 1.50x; weight gradients [1536 x 8] @ [8 x 512] 0.93x
// (both bound by writing the 3 MB result), [256 x 8] @ [8 x 256] 1.28x, [4096 x 8] @ [8 x 1024] 1.44x. A GRU's
// T=1 B=8 H=512 backward op: 2.15 ms with these against 3.67 ms with MKL.
constexpr int64_t kSmallMmMaxRows = 8;
bool small_mm_into(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add);

// a @ w^T as a new tensor (the up-front x-projection of the per-step paths): mm_wt_into where it applies.
at::Tensor mm_wt(const at::Tensor& a, const at::Tensor& w);

// Whether the packed path is available and enabled (FASTRNN_CPU_PACKED_GEMM=0 turns it off, for A/B
// measurements and tests of the fallback).
bool packed_gemm_enabled();

}  // namespace fastrnn::cpu
