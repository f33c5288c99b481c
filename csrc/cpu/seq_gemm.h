// The whole-sequence float32 GEMMs of the CPU backward (the input gradient dG @ W_ih and the weight gradients
// dG^T @ x, dG^T @ h_prev, sequence.h's sequence_grads) on oneDNN's brgemm ukernel instead of at::mm.
//
// Why: at::mm in float32 is MKL's sgemm, which on AMD processors runs its AVX2 code
// (mkl_blas_def_sgemm_kernel_0_zen, 42-45% of an LSTM's or GRU's training time at T=100 B=64 H=512 on a 2-core
// Zen 4) where brgemm runs oneDNN's AVX-512 JIT code. Blocked as a GEMM library would (seq_gemm.cpp), it measured
// against at::mm (2-core AMD EPYC Zen 4, interleaved medians): dG @ W 1.12x-1.23x, dG^T @ x 1.00x-1.12x with a
// large result (0.86x at [256 x 16000] x [16000 x 64]), x @ W^T 0.95x-1.07x; so it takes the first two, the
// third stays with MKL. Training, interleaved vs torch.nn, MKL -> brgemm: LSTM T=100 B=64 H=512 0.98x -> 1.00x,
// bidir2 1.05x -> 1.13x, T=1000 B=16 H=64 1.71x -> 1.90x, B=1 1.10x -> 1.19x; GRU H=1024 1.34x -> 1.38x.
// Intel's MKL runs AVX-512 code and was not measured against it: there at::mm stays. On an AMD processor without
// AVX-512 (Zen 3) MKL's AVX2 code is the best there is, and brgemm's lost to it: training T=100 B=64 H=512 on a
// 2-core EPYC Zen 3, interleaved vs torch.nn, MKL -> brgemm: LSTM 0.98x -> 0.84x, GRU 1.21x -> 1.08x.
//
// FASTRNN_CPU_SEQ_GEMM: unset = brgemm on AMD processors with AVX-512 (where measured), ATen elsewhere;
// "brgemm" = the same
// choice on any processor; "always" = every float32 product through brgemm whatever its size or layout (tests);
// "aten" = at::mm always.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn::cpu {

// c [M, N] = a [M, K] @ b [K, N] (add: c += ...), float32, any strides of a and b, c with unit column stride.
// b is packed once into panels of 64 columns; a is read in place when its rows are contiguous (else copied
// block by block, transposed by register shuffles); each thread takes a range of row blocks and runs them against
// a group of panels that stays in its L2 before moving to the next group; one brgemm call per (row block, K
// chunk, panel). Returns false (nothing written) where it does not apply: another dtype, the switch, brgemm
// unavailable, or a product the choice above leaves to MKL.
bool seq_gemm_brgemm(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add);

// c = a @ b (or c += a @ b): seq_gemm_brgemm where it applies, else sequence.h's aten_mm_into; a MatMulInto.
void seq_mm_into(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add);

}  // namespace fastrnn::cpu
