// Large per-call buffers on transparent huge pages (Linux), so that writing them for the first time costs
// one page fault per 2 MB instead of one per 4 KB.
//
// A training forward writes its workspace (an LSTM's: 5H floats per row, 65 MB at T=100 B=64 H=512) and the
// backward its gate gradients (52 MB) into memory fresh from mmap: every call faults it in page by page, and in
// a virtual machine each fault is dear. Measured on a 2-core AMD EPYC (Zen 3, KVM), writing 65 MB of fresh
// memory on one thread: 49 ms on 4 KB pages, 10 ms on huge pages, 7.5 ms rewriting memory already mapped.
// PyTorch's own allocator does the same for every allocation when THP_MEM_ALLOC_ENABLE=1 is set; fastrnn asks
// for its own large buffers only.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn::cpu {

// at::empty(sizes, options), with its 2 MB-aligned interior advised MADV_HUGEPAGE before anything touches it,
// when it is at least kHugePageMinBytes (32 MB: glibc's largest default mmap threshold, so such a buffer is
// normally its own mapping, released on free) and FASTRNN_CPU_HUGE_PAGES is not 0. Not always: deep into a
// long test run one 34 MB buffer landed in a mapping an earlier call had advised, so later allocations can
// reuse advised memory (eligible for huge pages, as under PyTorch's THP_MEM_ALLOC_ENABLE=1; no number
// changes). Elsewhere (other systems, smaller buffers) a plain at::empty.
at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options);

// The same advice for a tensor that at::empty has just made (nothing has written it yet), e.g. a buffer another
// helper allocated; a no-op below kHugePageMinBytes.
void advise_huge_pages(const at::Tensor& fresh);

// A backward's gate-gradient buffer (sequence.h's GateGradBuffer, fresh from gate_grad_buffer): the input
// gradient it lies in, or its own.
template <typename GateGrads>
void advise_huge_pages_gate_grads(const GateGrads& dg) {
  advise_huge_pages(dg.grad_input.defined() ? dg.grad_input : dg.dgx);
}

constexpr int64_t kHugePageMinBytes = int64_t{32} << 20;

}  // namespace fastrnn::cpu
