// Per-call scratch buffers that the next call on the same thread reuses instead of taking fresh memory.
//
// The fused brgemm steps pack their weights once per call (pack_gate_blocks: W_hh, and W_ih where the
// x-projection is folded; the backward packs W_hh^T), and the whole-sequence GEMMs and MKL's packed GEMM pack
// theirs: 1 to 16 MB per weight, dead at the end of the call. From malloc such a buffer is often fresh memory:
// glibc's dynamic mmap and trim thresholds hand a freed multi-MB block back to the kernel whenever it ends up at
// the top of the heap, and the next call faults it in again page by page. Whether that happens depends on
// what else the process has allocated: on a 2-core Zen 3 VM a T=1 B=8 H=512 GRU call (6 MB packed) ran 0.8 ms
// in some processes and 5.5 ms, 1,500 page faults per call, in others.
//
// scratch_empty serves such buffers from a small pool per thread: a buffer is handed out again only while no
// tensor but the pool's own refers to its storage, so a buffer still in use (re-entrancy, a view that escaped)
// is never shared; the pool holds at most kScratchPoolBytes per thread, and buffers outside
// [kScratchMinBytes, kScratchMaxBytes] come from at::empty. FASTRNN_CPU_SCRATCH=0 turns the pool off (A/B).
#pragma once

#include <ATen/ATen.h>

namespace fastrnn::cpu {

// An uninitialised 1-D tensor of numel elements of dtype on the CPU, from the calling thread's pool where it
// applies (see above). The caller must not keep it past the call (the pool does not rely on that: a buffer
// kept alive is simply not reused).
at::Tensor scratch_empty(int64_t numel, at::ScalarType dtype);

// The same pool for a result the op returns whose caller usually drops it soon: a weight gradient, which
// autograd adds into .grad and frees (a decoder's single-step training loop: two 3 MB gradients per GRUCell step
// at H = 512 were faulted in afresh at every step, half of the step's time, where torch.nn's autograd holds one
// at a time). A plain contiguous tensor of `sizes` sharing a pooled buffer's storage (not a view: nothing links
// it to the pool's tensor), so it is handed out again only once every tensor the caller made from it is gone.
at::Tensor scratch_result(at::IntArrayRef sizes, const at::TensorOptions& options);

constexpr int64_t kScratchMinBytes = int64_t{256} << 10;  // below: malloc's heap serves them well
constexpr int64_t kScratchMaxBytes = int64_t{32} << 20;   // above: their own mapping (huge_pages.h)
constexpr int64_t kScratchPoolBytes = int64_t{64} << 20;  // held per thread at most
constexpr size_t kScratchPoolBuffers = 6;

}  // namespace fastrnn::cpu
